"""Train pix2pix: a U-Net generator against a conditional PatchGAN (Isola et al., CVPR 2017, arXiv 1611.07004).

    python train.py                                   # built-in synthetic labels->photo set, paper settings
    python train.py --PRESET=facades --TRAIN_DIR=data/facades/train --VAL_DIR=data/facades/val
    torchrun --standalone --nproc_per_node=2 train.py # several GPUs (or CPU processes) with DDP

Settings live in config.py; any of them can be overridden with --KEY=value. Stop at any time with Ctrl-C:
a resumable checkpoint is written, and running the same command again continues where it stopped (bit-exactly on
the CPU, and on GPUs with --DETERMINISTIC=True).

The method itself (networks, objective, one training step) is in pix2pix.py; this file runs it: data, resume,
the epoch loop, and what each epoch leaves behind (samples, validation, checkpoints).
"""
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from checkpoint import (CheckpointError, check_resume_compatible, keep_legacy_skips, load_checkpoint,
                        remove_stale_temp_files, restore_training_state, save_generator, save_training_state)
from configurator import load_config, resolve_resume
from dataset import AugmentationSampler, DatasetError, build_datasets, ensure_default_data, sample_batch
from distributed import (barrier, check_ranks_agree, gather_from_ranks, max_over_ranks, setup_distributed,
                         sum_over_ranks, without_sync_bn)
from interrupts import StopRequest, ignore_stop_signals, resume_command, shut_down_workers
from pix2pix import (NonFiniteLoss, RealFakeScores, build_models, lr_factor, make_grad_scalers, make_optimizers,
                     state_before_step, train_step, training_flops_per_image, undo_step)
from run_log import RunDirError, RunLog, check_run_dir, format_duration, open_run_log, print_epoch_speed, write_samples
from utils import (ConfigError, autocast, memory_format_for, pick_device, pick_precision, rng_states,
                   seed_everything, set_determinism, set_rng_states, use_device)

LOSS_TERMS = ("d_real", "d_fake", "g_gan", "g_l1")
EARLY_SAMPLE_STEPS = 50  # first-epoch grids at step 0 and 50, 100, 200, 400, ...: a picture within a minute
FIRST_CHECKPOINT_STEP = 100  # an early last.pt (~2.5 min at 0.7 img/s) before CHECKPOINT_EVERY_MINUTES is due
clock = time.monotonic  # the checkpoint timer's clock (tests replace it rather than sleep)
SUM_KEYS = (*LOSS_TERMS, "scaler_skips")  # what an epoch adds up on the device


def running_means(sums: list[float], n_ok: int) -> dict[str, float]:
    """The epoch's mean losses so far (sums over SUM_KEYS, n_ok finished steps) and the number of updates the fp16
    loss scaler skipped."""
    *totals, scaler_skips = sums
    return {k: v / max(n_ok, 1) for k, v in zip(LOSS_TERMS, totals)} | {"scaler_skipped_steps": scaler_skips}


def evaluate_generator(*args, **kwargs):
    """metrics.evaluate_generator, imported on first use: torchmetrics takes seconds to import, and a config
    error or an interrupted start should not wait for it."""
    from metrics import evaluate_generator as evaluate
    return evaluate(*args, **kwargs)


def is_early_sample_step(step: int) -> bool:
    """Step 0 and EARLY_SAMPLE_STEPS times a power of two."""
    n, rest = divmod(step, EARLY_SAMPLE_STEPS)
    return step == 0 or (rest == 0 and n & (n - 1) == 0)


# ----------------------------------------------------------------------------- the run's phases

def make_loaders(cfg: dict[str, Any], device: torch.device, rank: int, world_size: int,
                 cleanup: contextlib.ExitStack) -> dict[str, Any]:
    """The training and validation data; a bad file stops us here, before the first step."""
    if rank == 0:
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
    return {"train_set": train_set, "val_set": val_set, "sampler": sampler, "loader_rng": loader_rng,
            "loader": loader, "val_loader": val_loader, "samples": sample_batch(val_set, cfg["N_SAMPLES"])}


def make_training_state(cfg: dict[str, Any], device: torch.device, world_size: int,
                        memory_format: torch.memory_format, precision: str) -> dict[str, Any]:
    """The networks, optimisers, LR schedules and loss scalers: checkpoint.TRAINING_STATE, by its names.
    paper §3.3: Adam, lr 2e-4, betas (0.5, 0.999); the LR constant for N_EPOCHS, then linear to 0."""
    G, D = build_models(cfg)
    if cfg["SYNC_BN"] and world_size > 1:
        G, D = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    opt_G, opt_D = make_optimizers(G, D, cfg, device)
    schedule = lambda epoch: lr_factor(epoch, cfg["N_EPOCHS"], cfg["N_EPOCHS_DECAY"])  # noqa: E731
    scaler_G, scaler_D = make_grad_scalers(device, precision)
    return {"generator": G, "discriminator": D, "opt_G": opt_G, "opt_D": opt_D,
            "sched_G": torch.optim.lr_scheduler.LambdaLR(opt_G, schedule),
            "sched_D": torch.optim.lr_scheduler.LambdaLR(opt_D, schedule), "scaler_G": scaler_G, "scaler_D": scaler_D}


def restore(path: Path, cfg: dict[str, Any], state: dict[str, Any], loader_rng: torch.Generator, rank: int,
            world_size: int, device: torch.device) -> dict[str, Any]:
    """Continue the checkpoint at `path` exactly: weights, optimisers, schedules, scalers, RNGs and progress."""
    ckpt = load_checkpoint(path)
    check_resume_compatible(ckpt, cfg, path, state["discriminator"])
    saved = restore_training_state(ckpt, state)
    if keep_legacy_skips(state["generator"], ckpt) and rank == 0:
        print(f"note: {path} predates the U-Net skip fix; this run keeps its legacy skip activations "
              f"(skip_relu=False) so its function does not change. Train in a new RUN_DIR for the reference one")
    rank_rngs = saved["rank_rngs"] or []  # every rank's RNG: each continues its own dropout noise
    set_rng_states(rank_rngs[rank] if len(rank_rngs) == world_size else saved["rng"], device)
    if rank and len(rank_rngs) != world_size:  # saved with another number of processes: fresh noise
        seed_everything(cfg["SEED"] + rank + saved["step"])
    loader_rng.set_state(saved["loader_rng"])
    if rank == 0:
        print(f"resuming from {path}: epoch {saved['epoch'] + 1}, batch {saved['batch_in_epoch']}, "
              f"step {saved['step']}")
    return {k: saved[k] for k in ("epoch", "batch_in_epoch", "step", "best_val_l1")}


def wrap_for_training(G: nn.Module, D: nn.Module, cfg: dict[str, Any], device: torch.device, local_rank: int,
                      world_size: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D on (x, real) and (x, fake), D) as train_step runs them: under DDP with several processes, compiled
    with COMPILE. Checkpoints always save the plain G and D."""
    G_train, D_scores = G, RealFakeScores(D)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [local_rank] if device.type == "cuda" else None
        G_train, D_scores = DDP(G, device_ids=ids), DDP(D_scores, device_ids=ids)
    if cfg["COMPILE"]:
        return torch.compile(G_train), torch.compile(D_scores), torch.compile(D)
    return G_train, D_scores, D


def save_checkpoint(path: Path, state: dict[str, Any], progress: dict[str, Any], rank_rngs: list,
                    loader_rng: torch.Generator, cfg: dict[str, Any]) -> None:
    device = next(state["generator"].parameters()).device  # this process's GPU RNG only
    save_training_state(path, state, progress, {"rng": rng_states(device), "rank_rngs": rank_rngs,
                                                "loader_rng": loader_rng.get_state()}, cfg)


def end_of_epoch(row: dict[str, Any], progress: dict[str, Any], state: dict[str, Any], data: dict[str, Any],
                 rank_rngs: list, cfg: dict[str, Any], device: torch.device, precision: str, log: RunLog) -> None:
    """Rank 0, after epoch progress["epoch"] (1-based: completed epochs): samples, validation, log row, checkpoints
    and the generator export. The other ranks wait at a barrier meanwhile: no collectives in here."""
    epoch, step = progress["epoch"], progress["step"]
    G, D = state["generator"], state["discriminator"]
    run_dir = Path(cfg["RUN_DIR"])
    ckpt_dir = run_dir / "checkpoints"
    G_solo = without_sync_bn(G)
    if cfg["SAMPLE_EVERY"] and epoch % cfg["SAMPLE_EVERY"] == 0:
        grid = write_samples(G_solo, *data["samples"], cfg, device, precision,
                             run_dir / "samples" / f"epoch_{epoch:04d}.png")
        log.tb.add_image("samples", grid, step)
    if cfg["VAL_EVERY"] and epoch % cfg["VAL_EVERY"] == 0:
        val = evaluate_generator(G_solo, data["val_loader"], device, precision, cfg["TEST_MODE"],
                                 cfg["SEED"])["summary"]
        row |= {f"val_{k}": val[k] for k in ("l1", "psnr", "ssim", "ratio")}  # a None ratio: empty in log.csv
        log.scalars({k: val[k] for k in ("l1", "psnr", "ssim", "ratio") if val[k] is not None}, step, "val")
        ratio = "n/a (needs 2+ images)" if val["ratio"] is None else f"{val['ratio']:.3f}"
        print(f"  val: L1 {val['l1']:.4f}  PSNR {val['psnr']:.2f} dB  SSIM {val['ssim']:.4f}  "
              f"own/other L1 ratio {ratio}  ({val['n_images']} images)")
        if val["l1"] < progress["best_val_l1"]:
            progress["best_val_l1"] = val["l1"]
            save_checkpoint(ckpt_dir / "best.pt", state, progress, rank_rngs, data["loader_rng"], cfg)
            save_generator(run_dir / "generator_best.pt", G, D, epoch, cfg)
    log.epoch_row(row)
    save_checkpoint(ckpt_dir / "last.pt", state, progress, rank_rngs, data["loader_rng"], cfg)
    if cfg["SNAPSHOT_EVERY"] and epoch % cfg["SNAPSHOT_EVERY"] == 0:
        save_checkpoint(ckpt_dir / f"epoch_{epoch:04d}.pt", state, progress, rank_rngs, data["loader_rng"], cfg)
    save_generator(run_dir / "generator.pt", G, D, epoch, cfg)


# ----------------------------------------------------------------------------- the run

def pick_runtime(cfg: dict[str, Any], local_rank: int, world_size: int) -> tuple[torch.device, str, Any]:
    """(device, precision, memory format); under torchrun each process takes its own GPU."""
    device = torch.device("cuda", local_rank) if world_size > 1 and torch.cuda.is_available() \
        else pick_device(cfg["DEVICE"])
    use_device(device)
    if cfg["SYNC_BN"] and world_size > 1 and device.type != "cuda":
        raise ConfigError("SYNC_BN=True needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU version); use "
                          "SYNC_BN=False, or NORM=instance, which needs no statistics shared across processes")
    set_determinism(cfg["DETERMINISTIC"], device)
    return device, pick_precision(cfg["PRECISION"], device), \
        memory_format_for(cfg["CHANNELS_LAST"], device, cfg["BATCH_SIZE"])


def stop_or_save_flags(stop: StopRequest, last_save: float, cfg: dict[str, Any], master: bool) -> int:
    """This rank's say on stopping and saving, as one int the ranks can max-reduce: 2 * the stop signal's number
    + 1 if rank 0's clock says a timed save is due (the max is exact whenever no rank stops; a stop saves anyway)."""
    due = master and cfg["CHECKPOINT_EVERY_MINUTES"] > 0 and clock() - last_save >= 60 * cfg["CHECKPOINT_EVERY_MINUTES"]
    return 2 * stop.signum + due


def stop_or_save(stop: StopRequest, agreed: int | None, last_save: float, state: dict[str, Any],
                 progress: dict[str, Any], data: dict[str, Any], cfg: dict[str, Any], device: torch.device,
                 rank: int, world_size: int) -> tuple[bool, float]:
    """After a step: does any rank stop, and is last.pt due? Saves it if so; -> (stopping, time of the last save).
    Under torchrun the ranks agreed on stop_or_save_flags in the step's own loss check (`agreed`): a signal that
    comes after that check stops every rank one step later. A single process reads its flags now."""
    step, master = progress["step"], rank == 0
    if world_size == 1 or agreed is None:  # None: a skipped step never reached its loss check, so agree here
        agreed = max_over_ranks(stop_or_save_flags(stop, last_save, cfg, master), device)
    signum, due = divmod(agreed, 2)
    if signum:  # every rank stops, and exits, as the signalled one (a later signal here waits for the next check)
        stop.signum = signum
    if signum or due or step == FIRST_CHECKPOINT_STEP \
            or (cfg["CHECKPOINT_EVERY_STEPS"] and step % cfg["CHECKPOINT_EVERY_STEPS"] == 0):
        rank_rngs = gather_from_ranks(rng_states(device), world_size)  # (every rank agrees on saving)
        if master:
            save_checkpoint(Path(cfg["RUN_DIR"]) / "checkpoints" / "last.pt", state, progress, rank_rngs,
                            data["loader_rng"], cfg)
        last_save = clock()
    return bool(signum), last_save


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as cleanup:  # runs on every way out: done, stop signal, error
        return run(argv, cleanup)


def run(argv: list[str] | None, cleanup: contextlib.ExitStack) -> int:
    cfg = load_config(argv)
    rank, local_rank, world_size = setup_distributed(cfg["DIST_TIMEOUT_S"])
    master = rank == 0
    device, precision, memory_format = pick_runtime(cfg, local_rank, world_size)
    amp = autocast(device, precision)
    run_dir = Path(cfg["RUN_DIR"])
    ckpt_dir = run_dir / "checkpoints"
    resume_path = resolve_resume(cfg, ckpt_dir)
    if master:  # the only writer; under torchrun its error ends the other ranks too
        check_run_dir(run_dir)  # a folder that cannot hold the run fails here, in one line, before any data work
        remove_stale_temp_files(ckpt_dir, run_dir)
    seed_everything(cfg["SEED"] + rank)  # models are identical anyway: DDP broadcasts rank 0's weights

    data = make_loaders(cfg, device, rank, world_size, cleanup)
    state = make_training_state(cfg, device, world_size, memory_format, precision)
    G, D = state["generator"], state["discriminator"]
    progress = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best_val_l1": float("inf")}
    if resume_path:
        progress = restore(resume_path, cfg, state, data["loader_rng"], rank, world_size, device)
    check_ranks_agree(world_size, resume_from=resume_path and str(resume_path), step=progress["step"],
                      train_images=len(data["train_set"]))

    G_train, D_scores, D_step = wrap_for_training(G, D, cfg, device, local_rank, world_size)

    start_epoch, total_epochs = progress["epoch"], cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"]
    if start_epoch >= total_epochs:
        if master:
            print(f"{run_dir} already finished its {total_epochs} epochs; nothing to do (new RUN_DIR to retrain)")
        return 0
    flops = training_flops_per_image(cfg)
    log = open_run_log(cfg, start_epoch, G, D, data, device, precision, world_size, flops, cleanup) if master else None

    stop = StopRequest(announce=master)
    cleanup.callback(stop.release)  # after the loop a signal must end the process as usual
    if master and cfg["SAMPLE_EVERY"] and progress["step"] == 0:  # the untrained generator: a picture at once
        write_samples(without_sync_bn(G), *data["samples"], cfg, device, precision,
                      run_dir / "samples" / "step_000000.png")
    last_save = clock()
    for epoch in range(start_epoch, total_epochs):
        data["sampler"].set_epoch(epoch, skip=progress["batch_in_epoch"] * cfg["BATCH_SIZE"])
        sums = torch.zeros(len(SUM_KEYS), dtype=torch.float32 if device.type == "mps" else torch.float64,
                           device=device)  # kept on the device: read only when logging (no sync per step)
        n_ok, skipped, images, speed, t0 = 0, 0, 0, 0.0, time.perf_counter()
        bar = tqdm(data["loader"], desc=f"epoch {epoch + 1}/{total_epochs}", disable=not master,
                   dynamic_ncols=True, initial=progress["batch_in_epoch"],
                   total=progress["batch_in_epoch"] + len(data["loader"]))
        for x, y in bar:
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            # ON_NAN=skip: D may have stepped, and batch-norm statistics moved, before a non-finite loss shows
            saved = state_before_step(G, D, state["opt_D"], state["scaler_D"]) if cfg["ON_NAN"] == "skip" else None
            agreed = None
            try:
                losses = train_step(G_train, D_step, D_scores, state["opt_G"], state["opt_D"], state["scaler_G"],
                                    state["scaler_D"], x, y, cfg, amp, progress["step"],
                                    flags=lambda: stop_or_save_flags(stop, last_save, cfg, master))
                agreed = losses["flags"]
                n_ok += 1
                sums += torch.stack([losses[k] for k in SUM_KEYS]).to(sums.dtype)
            except NonFiniteLoss as e:
                if cfg["ON_NAN"] == "stop":
                    raise
                undo_step(saved, G, D, state["opt_D"], state["scaler_D"])
                skipped += 1
                print(f"\n{e}; skipping this step (ON_NAN=skip)", file=sys.stderr)
            progress["step"] += 1
            progress["batch_in_epoch"] += 1
            step = progress["step"]
            images += x.shape[0] * world_size
            speed = images / (time.perf_counter() - t0)
            if master and epoch == 0 and cfg["SAMPLE_EVERY"] and is_early_sample_step(step) \
                    and progress["batch_in_epoch"] < bar.total:  # the epoch's last step has its epoch grid
                write_samples(without_sync_bn(G), *data["samples"], cfg, device, precision,
                              run_dir / "samples" / f"step_{step:06d}.png")
            if master and step % cfg["LOG_EVERY"] == 0:
                means = running_means(sums.tolist(), n_ok)  # the one device->host read of a logging step
                left = (total_epochs - epoch) * len(data["train_set"]) \
                    - progress["batch_in_epoch"] * cfg["BATCH_SIZE"] * world_size
                bar.set_postfix({k: f"{means[k]:.3f}" for k in LOSS_TERMS} | {"img/s": f"{speed:.2f}"}
                                | {"run ETA": format_duration(max(left, 0) / speed)})
                if n_ok:
                    log.scalars(means | {"images_per_s": speed}, step)
            stopping, last_save = stop_or_save(stop, agreed, last_save, state, progress, data, cfg, device, rank,
                                               world_size)
            if stopping:
                if master:
                    bar.close()
                    print(f"saved {ckpt_dir / 'last.pt'} at epoch {epoch + 1}, step {step}. Resume with:\n  "
                          f"{resume_command(cfg, sys.argv[1:] if argv is None else argv, world_size)}")
                return stop.exit_code()
        bar.close()
        progress["epoch"], progress["batch_in_epoch"] = epoch + 1, 0  # checkpoints store completed epochs
        epoch_lr = state["opt_G"].param_groups[0]["lr"]  # the LR this epoch trained with, not the next epoch's
        state["sched_G"].step()
        state["sched_D"].step()
        *totals, n_ok = sum_over_ranks([*sums.tolist(), n_ok], device)  # log means over every rank's images
        means = running_means(totals, n_ok)
        rank_rngs = gather_from_ranks(rng_states(device), world_size)
        if master:
            row = means | {"epoch": epoch + 1, "step": progress["step"], "lr": epoch_lr, "skipped_steps": skipped,
                           "images_per_s": speed}
            print_epoch_speed(row, images / (time.perf_counter() - t0), flops, state["scaler_G"].is_enabled())
            end_of_epoch(row, progress, state, data, rank_rngs, cfg, device, precision, log)
        last_save = clock()
        barrier(world_size)
    if master:
        print(f"done: {run_dir / 'generator.pt'} (load it with utils.load_generator)")
    return 0


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
