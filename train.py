"""Train pix2pix: a U-Net generator against a conditional PatchGAN (Isola et al., CVPR 2017, arXiv 1611.07004).

    python train.py                                   # built-in synthetic labels->photo set, paper settings
    python train.py --PRESET=facades --TRAIN_DIR=data/facades/train --VAL_DIR=data/facades/val
    torchrun --standalone --nproc_per_node=2 train.py # several GPUs (or CPU processes) with DDP

Settings live in config.py; any of them can be overridden with --KEY=value. Stop at any time with Ctrl-C:
a resumable checkpoint is written, and running the same command again continues where it stopped (bit-exactly on
the CPU, and on GPUs with --DETERMINISTIC=True).
"""
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dataset import AugmentationSampler, DatasetError, build_datasets, ensure_default_data, sample_batch
from distributed import (barrier, check_ranks_agree, gather_from_ranks, max_flags_over_ranks, max_over_ranks,
                         setup_distributed, sum_over_ranks, without_sync_bn)
from interrupts import StopRequest, ignore_stop_signals, resume_command, shut_down_workers
from run_log import RunLog
from utils import (CheckpointError, ConfigError, RunDirError, atomic_save, autocast, build_models,
                   check_resume_compatible, check_run_dir, cpu_state_dict, fixed_noise, keep_legacy_skips,
                   load_checkpoint, load_config, load_optimizer_state, load_scaler_state, lr_factor,
                   make_grad_scalers, make_optimizers, measure_peak_flops, model_hparams, pick_device, pick_precision,
                   remove_stale_temp_files, resolve_resume, rng_states, sample_grid, seed_everything, set_determinism,
                   set_rng_states, state_before_step, test_mode, training_flops_per_image, undo_step, use_device)


# ----------------------------------------------------------------------------- the objective (paper §3.1)

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """-> (loss, real term, fake term). paper §3.3: divide D's objective by 2 to slow D relative to G."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2, real, fake


def generator_loss(fake_logits: torch.Tensor, fake: torch.Tensor, target: torch.Tensor, l1_lambda: float):
    """-> (loss, GAN term, L1 term). The non-saturating GAN loss (maximise log D(x, G(x))) plus lambda * L1."""
    gan = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    l1 = (fake - target).abs().mean()
    return gan + l1_lambda * l1, gan, l1


class RealFakeScores(nn.Module):
    """D on (x, real) and on (x, fake) in one call, so DDP sees one forward per backward. The two batches
    still go through D separately, keeping their batch-norm statistics apart as in the official code, and in its
    order (fake first), so that D's running statistics also match it."""

    def __init__(self, D: nn.Module):
        super().__init__()
        self.D = D

    def forward(self, x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor):
        fake_logits = self.D(x, fake)
        return self.D(x, real), fake_logits


def evaluate_generator(*args, **kwargs):
    """metrics.evaluate_generator, imported on first use: torchmetrics takes seconds to import, and a config
    error or an interrupted start should not wait for it."""
    from metrics import evaluate_generator as evaluate
    return evaluate(*args, **kwargs)


class NonFiniteLoss(RuntimeError):
    pass


FP16_HINT = ("; in fp16 this is usually an overflow (values above 65504): use PRECISION=bf16 (same range as fp32, "
             "on Ampere+ GPUs and AMX CPUs) or PRECISION=fp32")


def check_finite(losses: dict[str, torch.Tensor], step: int, fp16: bool = False) -> None:
    """Raise NonFiniteLoss if any loss is NaN/Inf on any rank, with one fused check: one device->host read (under
    DDP after one all-reduce)."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    bad = (~torch.isfinite(values).all()).to(torch.int64).reshape(1)
    # all ranks skip or stop together: a lone rank skipping its backward would desync DDP's all-reduce
    if max_flags_over_ranks(bad)[0]:
        found = ", ".join(f"{k}={v.item()}" for k, v in losses.items() if not torch.isfinite(v)) \
            or "loss on another process"
        raise NonFiniteLoss(f"step {step}: non-finite {found}{FP16_HINT if fp16 else ''}")


def scaler_skipped(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer) -> torch.Tensor | float:
    """1 if the fp16 loss scaler skipped this step of `opt` (inf/NaN gradients), as a device tensor (no sync);
    call between scaler.step and scaler.update."""
    if not scaler.is_enabled():
        return 0.0
    found = scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values()
    return sum(f.float() for f in found).clamp(max=1)


def train_step(G, D, D_scores, opt_G, opt_D, scaler_G, scaler_D, x, y, cfg, amp, step: int):
    """One iteration of paper §3.3: a D step, then a G step against the freshly updated D.
    Returns the four loss terms and "scaler_skips" (steps the fp16 loss scaler skipped) as 0-dim tensors on the
    device, read by the caller only when it logs; or raises NonFiniteLoss before any poisoned update."""
    fp16 = getattr(amp, "fast_dtype", None) == torch.float16
    with amp:
        fake = G(x)
        real_logits, fake_logits = D_scores(x, y, fake.detach())  # detach: the D step must not reach G
    loss_D, d_real, d_fake = discriminator_loss(real_logits.float(), fake_logits.float())  # losses in fp32
    check_finite({"d_real": d_real, "d_fake": d_fake}, step, fp16=fp16)
    opt_D.zero_grad(set_to_none=True)
    scaler_D.scale(loss_D).backward()
    scaler_D.step(opt_D)
    skips = scaler_skipped(scaler_D, opt_D)
    scaler_D.update()

    D.requires_grad_(False)  # the G step needs gradients w.r.t. D's input only, not its weights
    with amp:
        fake_logits = D(x, fake)
    loss_G, g_gan, g_l1 = generator_loss(fake_logits.float(), fake.float(), y.float(), cfg["L1_LAMBDA"])
    D.requires_grad_(True)
    check_finite({"g_gan": g_gan, "g_l1": g_l1}, step, fp16)
    opt_G.zero_grad(set_to_none=True)
    scaler_G.scale(loss_G).backward()
    scaler_G.step(opt_G)
    skips = skips + scaler_skipped(scaler_G, opt_G)
    scaler_G.update()
    losses = {"d_real": d_real, "d_fake": d_fake, "g_gan": g_gan, "g_l1": g_l1}
    return {k: v.detach() for k, v in losses.items()} | {"scaler_skips": torch.as_tensor(skips, device=g_l1.device)}


LOSS_KEYS = ("d_real", "d_fake", "g_gan", "g_l1")
SUM_KEYS = (*LOSS_KEYS, "scaler_skips")  # what an epoch adds up on the device


def running_means(sums: list[float], n_ok: int) -> dict[str, float]:
    """The epoch's mean losses so far (sums over SUM_KEYS, n_ok finished steps) and the number of updates the fp16
    loss scaler skipped."""
    *totals, scaler_skips = sums
    return {k: v / max(n_ok, 1) for k, v in zip(LOSS_KEYS, totals)} | {"scaler_skipped_steps": scaler_skips}


# ----------------------------------------------------------------------------- the run

def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as cleanup:  # runs on every way out: done, stop signal, error
        return run(argv, cleanup)


def run(argv: list[str] | None, cleanup: contextlib.ExitStack) -> int:
    cfg = load_config(argv)
    rank, local_rank, world_size = setup_distributed(cfg["DIST_TIMEOUT_S"])
    master = rank == 0
    device = torch.device("cuda", local_rank) if world_size > 1 and torch.cuda.is_available() \
        else pick_device(cfg["DEVICE"])
    use_device(device)
    precision = pick_precision(cfg["PRECISION"], device)
    amp = autocast(device, precision)
    if cfg["SYNC_BN"] and world_size > 1 and device.type != "cuda":
        raise ConfigError("SYNC_BN=True needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU version); use "
                          "SYNC_BN=False, or NORM=instance, which needs no statistics shared across processes")
    memory_format = torch.channels_last if cfg["CHANNELS_LAST"] else torch.contiguous_format
    set_determinism(cfg["DETERMINISTIC"], device)
    run_dir = Path(cfg["RUN_DIR"])
    ckpt_dir = run_dir / "checkpoints"
    resume_path = resolve_resume(cfg, ckpt_dir)
    if master:  # the only writer; under torchrun its error ends the other ranks too
        check_run_dir(run_dir)  # a folder that cannot hold the run fails here, in one line, before any data work
        remove_stale_temp_files(ckpt_dir, run_dir)
    seed_everything(cfg["SEED"] + rank)  # models are identical anyway: DDP broadcasts rank 0's weights

    # data: a bad file stops us here, before the first step
    if master:
        ensure_default_data(cfg)
    barrier(world_size)
    train_set, val_set = build_datasets(cfg)
    if len(train_set) < world_size:
        raise DatasetError(f"{cfg['TRAIN_DIR']}: {len(train_set)} usable images for {world_size} processes; each "
                           f"process needs at least one: add images or start fewer (torchrun --nproc_per_node)")
    sampler = AugmentationSampler(len(train_set), cfg["SEED"], rank, world_size)
    loader_rng = torch.Generator().manual_seed(cfg["SEED"])  # worker seeds must not consume the dropout RNG
    loader = DataLoader(train_set, batch_size=cfg["BATCH_SIZE"], sampler=sampler, num_workers=cfg["NUM_WORKERS"],
                        pin_memory=device.type == "cuda", persistent_workers=cfg["NUM_WORKERS"] > 0,
                        generator=loader_rng, worker_init_fn=ignore_stop_signals)
    cleanup.callback(shut_down_workers, loader)  # never left for interpreter exit (where they would hang it)
    # evaluation batches match training's, so the paper's test mode sees batch statistics like training's
    val_loader = DataLoader(Subset(val_set, range(min(len(val_set), cfg["VAL_MAX_IMAGES"] or len(val_set)))),
                            batch_size=cfg["BATCH_SIZE"], num_workers=0)
    sample_x, sample_y = sample_batch(val_set, cfg["N_SAMPLES"])

    # models and optimisers (paper §3.3: Adam, lr 2e-4, betas (0.5, 0.999); LR constant then linear to 0)
    G, D = build_models(cfg)
    if cfg["SYNC_BN"] and world_size > 1:
        G, D = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    opt_G, opt_D = make_optimizers(G, D, cfg, device)
    schedule = lambda epoch: lr_factor(epoch, cfg["N_EPOCHS"], cfg["N_EPOCHS_DECAY"])  # noqa: E731
    sched_G = torch.optim.lr_scheduler.LambdaLR(opt_G, schedule)
    sched_D = torch.optim.lr_scheduler.LambdaLR(opt_D, schedule)
    scaler_G, scaler_D = make_grad_scalers(device, precision)

    start_epoch, step, batch_in_epoch, best_val_l1 = 0, 0, 0, float("inf")
    if resume_path:
        ckpt = load_checkpoint(resume_path)
        check_resume_compatible(ckpt, cfg, resume_path)
        for obj, key in ((G, "generator"), (D, "discriminator"), (sched_G, "sched_G"), (sched_D, "sched_D")):
            obj.load_state_dict(ckpt[key])
        for opt, key in ((opt_G, "opt_G"), (opt_D, "opt_D")):  # in the current layout (CHANNELS_LAST may differ)
            load_optimizer_state(opt, ckpt[key])
        for scaler, key in ((scaler_G, "scaler_G"), (scaler_D, "scaler_D")):  # PRECISION may differ
            load_scaler_state(scaler, ckpt[key])
        if keep_legacy_skips(G, ckpt) and master:
            print(f"note: {resume_path} predates the U-Net skip fix; this run keeps its legacy skip activations "
                  f"(skip_relu=False) so its function does not change. Train in a new RUN_DIR for the reference one")
        rank_rngs = ckpt.get("rank_rngs") or []  # every rank's RNG: each continues its own dropout noise
        set_rng_states(rank_rngs[rank] if len(rank_rngs) == world_size else ckpt["rng"], device)
        if rank and len(rank_rngs) != world_size:  # saved with another number of processes: fresh noise
            seed_everything(cfg["SEED"] + rank + ckpt["step"])
        loader_rng.set_state(ckpt["loader_rng"])
        start_epoch, step, batch_in_epoch = ckpt["epoch"], ckpt["step"], ckpt["batch_in_epoch"]
        best_val_l1 = ckpt.get("best_val_l1", best_val_l1)
        if master:
            print(f"resuming from {resume_path}: epoch {start_epoch + 1}, batch {batch_in_epoch}, step {step}")
    check_ranks_agree(world_size, resume_from=resume_path and str(resume_path), step=step,
                      train_images=len(train_set))

    G_train, D_scores = G, RealFakeScores(D)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [local_rank] if device.type == "cuda" else None
        G_train, D_scores = DDP(G, device_ids=ids), DDP(D_scores, device_ids=ids)
    D_step = D
    if cfg["COMPILE"]:
        G_train, D_scores, D_step = torch.compile(G_train), torch.compile(D_scores), torch.compile(D)

    def checkpoint(path: Path) -> None:
        atomic_save({"generator": G.state_dict(), "discriminator": D.state_dict(),
                     "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                     "sched_G": sched_G.state_dict(), "sched_D": sched_D.state_dict(),
                     "scaler_G": scaler_G.state_dict(), "scaler_D": scaler_D.state_dict(),
                     "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "best_val_l1": best_val_l1,
                     "rng": rng_states(device), "rank_rngs": rank_rngs, "loader_rng": loader_rng.get_state(),
                     "config": cfg, **model_hparams(G, D)}, path)

    def export_generator(path: Path) -> None:
        atomic_save({"generator": cpu_state_dict(G), "epoch": epoch, "config": cfg, **model_hparams(G, D)}, path)

    total_epochs = cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"]
    if start_epoch >= total_epochs:
        if master:
            print(f"{run_dir} already finished its {total_epochs} epochs; nothing to do (new RUN_DIR to retrain)")
        return 0
    log = None
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        log = RunLog(run_dir, resume_epoch=start_epoch)
        cleanup.callback(log.close)
        flops = training_flops_per_image(cfg)
        peak = measure_peak_flops(device, precision)
        print("config:", json.dumps(cfg))
        print(f"device {device} ({precision}), {world_size} process(es), global batch "
              f"{cfg['BATCH_SIZE'] * world_size}; G {sum(p.numel() for p in G.parameters()) / 1e6:.2f} M params, "
              f"D {sum(p.numel() for p in D.parameters()) / 1e6:.2f} M; {len(train_set)} train / {len(val_set)} "
              f"val images; {flops / 1e9:.1f} GFLOP per training image; measured conv peak {peak / 1e12:.2f} TFLOP/s")

    stop = StopRequest(announce=master)
    cleanup.callback(stop.release)  # after the loop a signal must end the process as usual
    epoch, rank_rngs = start_epoch, []
    for epoch in range(start_epoch, total_epochs):
        sampler.set_epoch(epoch, skip=batch_in_epoch * cfg["BATCH_SIZE"])
        sums = torch.zeros(len(SUM_KEYS), dtype=torch.float32 if device.type == "mps" else torch.float64,
                           device=device)  # kept on the device: read only when logging (no sync per step)
        n_ok, skipped, images, speed, t0 = 0, 0, 0, 0.0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs}", disable=not master, dynamic_ncols=True,
                   initial=batch_in_epoch, total=batch_in_epoch + len(loader))
        for x, y in bar:
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            # ON_NAN=skip: D may have stepped, and batch-norm statistics moved, before a non-finite loss shows
            saved = state_before_step(G, D, opt_D, scaler_D) if cfg["ON_NAN"] == "skip" else None
            try:
                losses = train_step(G_train, D_step, D_scores, opt_G, opt_D, scaler_G, scaler_D, x, y, cfg, amp, step)
                n_ok += 1
                sums += torch.stack([losses[k] for k in SUM_KEYS]).to(sums.dtype)
            except NonFiniteLoss as e:
                if cfg["ON_NAN"] == "stop":
                    raise
                undo_step(saved, G, D, opt_D, scaler_D)
                skipped += 1
                print(f"\n{e}; skipping this step (ON_NAN=skip)", file=sys.stderr)
            step += 1
            batch_in_epoch += 1
            images += x.shape[0] * world_size
            speed = images / (time.perf_counter() - t0)
            if master and step % cfg["LOG_EVERY"] == 0:
                means = running_means(sums.tolist(), n_ok)  # the one device->host read of a logging step
                bar.set_postfix({k: f"{means[k]:.3f}" for k in LOSS_KEYS} | {"img/s": f"{speed:.2f}"})
                if n_ok:
                    log.scalars(means | {"images_per_s": speed}, step)
            stop.signum = max_over_ranks(stop.signum, device)  # any rank's signal stops every rank
            stopping = bool(stop.signum)
            if stopping or (cfg["CHECKPOINT_EVERY_STEPS"] and step % cfg["CHECKPOINT_EVERY_STEPS"] == 0):
                rank_rngs = gather_from_ranks(rng_states(device), world_size)  # (every rank agrees on saving)
                if master:
                    checkpoint(ckpt_dir / "last.pt")
            if stopping:
                if master:
                    bar.close()
                    print(f"saved {ckpt_dir / 'last.pt'} at epoch {epoch + 1}, step {step}. Resume with:\n  "
                          f"{resume_command(cfg, sys.argv[1:] if argv is None else argv, world_size)}")
                return stop.exit_code()
        bar.close()
        epoch, batch_in_epoch = epoch + 1, 0  # `epoch` now counts completed epochs, as checkpoints store it
        epoch_lr = opt_G.param_groups[0]["lr"]  # the LR this epoch trained with (log it, not the next epoch's)
        sched_G.step()
        sched_D.step()
        *totals, n_ok = sum_over_ranks([*sums.tolist(), n_ok], device)  # log means over every rank's images
        means = running_means(totals, n_ok)
        rank_rngs = gather_from_ranks(rng_states(device), world_size)
        if not master:
            barrier(world_size)
            continue
        row = means | {
            "epoch": epoch, "step": step, "lr": epoch_lr, "skipped_steps": skipped,
            "images_per_s": speed}
        print(f"epoch {epoch}: {images / (time.perf_counter() - t0):.2f} img/s, "
              f"{speed * flops / 1e12:.3f} TFLOP/s, MFU {speed * flops / peak:.1%} of measured conv peak"
              + (f"; fp16 loss scaler skipped {means['scaler_skipped_steps']:.0f} G/D updates (inf/NaN gradients)"
                 if scaler_G.is_enabled() else ""))
        G_solo = without_sync_bn(G)  # the other ranks wait at the barrier below: no collectives in here
        if cfg["SAMPLE_EVERY"] and epoch % cfg["SAMPLE_EVERY"] == 0:
            sample_path = run_dir / "samples" / f"epoch_{epoch:04d}.png"
            grid = write_samples(G_solo, sample_x, sample_y, cfg, device, precision, sample_path)
            log.tb.add_image("samples", grid, step)
        if cfg["VAL_EVERY"] and epoch % cfg["VAL_EVERY"] == 0:
            val = evaluate_generator(G_solo, val_loader, device, precision, cfg["TEST_MODE"], cfg["SEED"])["summary"]
            row |= {f"val_{k}": val[k] for k in ("l1", "psnr", "ssim", "ratio")}  # a None ratio: empty in log.csv
            log.scalars({k: val[k] for k in ("l1", "psnr", "ssim", "ratio") if val[k] is not None}, step, "val")
            ratio = "n/a (needs 2+ images)" if val["ratio"] is None else f"{val['ratio']:.3f}"
            print(f"  val: L1 {val['l1']:.4f}  PSNR {val['psnr']:.2f} dB  SSIM {val['ssim']:.4f}  "
                  f"own/other L1 ratio {ratio}  ({val['n_images']} images)")
            if val["l1"] < best_val_l1:
                best_val_l1 = val["l1"]
                checkpoint(ckpt_dir / "best.pt")
                export_generator(run_dir / "generator_best.pt")
        log.epoch_row(row)
        checkpoint(ckpt_dir / "last.pt")
        if cfg["SNAPSHOT_EVERY"] and epoch % cfg["SNAPSHOT_EVERY"] == 0:
            checkpoint(ckpt_dir / f"epoch_{epoch:04d}.pt")
        export_generator(run_dir / "generator.pt")
        barrier(world_size)
    if master:
        print(f"done: {run_dir / 'generator.pt'} (load it with utils.load_generator)")
    return 0


def write_samples(G, x, y, cfg, device, precision, path: Path) -> torch.Tensor:
    """input | generated | target grid of the fixed val images; fixed dropout noise, training RNG untouched."""
    import torchvision.utils as vutils
    fakes = []
    with fixed_noise(cfg["SEED"], device), test_mode(G, cfg["TEST_MODE"]):
        for i in range(0, len(x), cfg["BATCH_SIZE"]):  # batches as in training, for the batch statistics
            with autocast(device, precision):
                fakes.append(G(x[i:i + cfg["BATCH_SIZE"]].to(device)).float().cpu())
    grid = sample_grid(x, torch.cat(fakes), y)
    path.parent.mkdir(parents=True, exist_ok=True)
    vutils.save_image(grid, path)
    return grid


if __name__ == "__main__":
    try:
        code = main()
    except (ConfigError, DatasetError, CheckpointError, RunDirError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1 if not isinstance(e, ConfigError) else 2
    except KeyboardInterrupt:  # the second Ctrl-C (interrupts.StopRequest)
        print("aborted by a second Ctrl-C: nothing saved after the last checkpoint", file=sys.stderr)
        code = 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(code)
