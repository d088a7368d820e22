"""The helpers train.py's loop calls, each doing one thing, callable in any order: train.py decides when.

    with TrainingRun(cfg, ranks, runtime, argv) as run:   # RUN_DIR checked and locked; clean-up on every way out
        train_set, val_set = read_datasets(cfg, ranks)    # every file decoded once: a bad one stops the run now
        loader = run.loader(train_set, sampler)           # workers that leave Ctrl-C to us, shut down on any exit
        progress = run.resume(model, train_data)          # a checkpoint's weights, optimisers, RNGs and position
        log = run.open_log(progress, model, ...)          # log.csv, TensorBoard, what this run is (rank 0)
        stop = run.catch_stop_signals()                   # SIGINT/SIGTERM: finish the step, save, exit
        ... run.save_samples(...), run.validate(...), run.save_checkpoint(...), run.stopped(...)

When: is_early_sample_step, step_checkpoint_due, is_due (samples, validation), spaced_out (EVAL_BUDGET), and
TrainingRun.save_due (the clock). Rank 0 writes every file; the other ranks take part in the collectives (every
rank's RNG states for checkpoints; agreeing on a stop, harness/signals.py's agree_on_stop).
"""
import contextlib
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from harness.checkpoint import (AVERAGE, CheckpointWriter, Progress, atomic_save, check_resume_compatible, check_same_data,
                                export_of, generator_export, keep_legacy_skips, load_checkpoint,
                                remove_stale_temp_files, restore_training_state, rng_states, set_rng_states,
                                training_checkpoint)
from harness.configurator import resolve_resume
from harness.data_checks import data_fingerprint, training_data
from harness.device_data import ResidentBatches, training_batches
from harness.distributed import (Ranks, barrier, check_ranks_agree, gather_from_ranks, refuse_on_every_rank,
                                 without_sync_bn)
from harness.errors import CheckpointError, DatasetError, RunDirError
from harness.loading import cache_images, loader_workers, training_loader
from harness.run_lock import RunDirLock
from harness.run_log import (RunLog, check_run_dir, format_duration, print_run, set_aside_earlier_run,
                             write_samples)
from harness.signals import StopRequest, ignore_stop_signals, resume_command, shut_down_workers
from harness.step_guard import LOSS_TERMS, Reading
from utils import Runtime, seed_everything

clock = time.monotonic  # the timed saves' and EVAL_BUDGET's clock (tests replace it rather than sleep)
EARLY_SAMPLE_STEPS = 50  # first-epoch grids at step 0 and 50, 100, 200, 400, ...: a picture within a minute
FIRST_CHECKPOINT_STEP = 100  # an early last.pt, before CHECKPOINT_EVERY_MINUTES is first due
VAL_METRICS = ("l1", "psnr", "ssim", "ratio")
MAP_METRICS = ("rmse", "pixel_acc_5", "pixel_acc_16")  # with PIXEL_ACCURACY (the maps preset)
FCN_METRICS = ("fcn_pixel_acc", "fcn_class_acc", "fcn_class_iou")  # with FCN_SCORE
FID_METRICS = ("fid", "kid")  # with FID


# ----------------------------------------------------------------------------- when (train.py asks)

def is_early_sample_step(step: int) -> bool:
    """Step 0 and EARLY_SAMPLE_STEPS times a power of two."""
    n, rest = divmod(step, EARLY_SAMPLE_STEPS)
    return step == 0 or (rest == 0 and n & (n - 1) == 0)


def step_checkpoint_due(step: int, every_steps: int) -> bool:
    """last.pt after FIRST_CHECKPOINT_STEP steps and every CHECKPOINT_EVERY_STEPS steps (0: off)."""
    return step == FIRST_CHECKPOINT_STEP or bool(every_steps and step % every_steps == 0)


def is_due(epoch: int, every: int, outputs_every: int, last: bool) -> bool:
    """SAMPLE_EVERY / VAL_EVERY (0: never), spaced out `outputs_every` times (EVAL_BUDGET), and at the last epoch."""
    return bool(every) and (epoch % (every * outputs_every) == 0 or last)


def spaced_out(cfg: dict[str, Any], outputs_every: int, output_seconds: float, train_seconds: float) -> int:
    """EVAL_BUDGET: samples, validation and curves may take at most that share of the time. If this epoch's took
    more, the multiple of SAMPLE_EVERY / VAL_EVERY they run at from now on (said once); else `outputs_every`.
    `train_seconds`: a whole epoch's training time, 0 if unknown (an epoch resumed at its very end)."""
    base = min(n for n in (cfg["SAMPLE_EVERY"], cfg["VAL_EVERY"], 1 << 30) if n)
    per_epoch = cfg["EVAL_BUDGET"] * base * max(train_seconds, 1e-9)
    if not cfg["EVAL_BUDGET"] or not train_seconds or output_seconds <= per_epoch * outputs_every:
        return outputs_every
    outputs_every = math.ceil(output_seconds / per_epoch)
    print(f"  samples and validation took {output_seconds:.1f} s against {train_seconds:.1f} s of training per "
          f"epoch: from now on every {outputs_every} x SAMPLE_EVERY / VAL_EVERY epochs, and at the end "
          f"(EVAL_BUDGET={cfg['EVAL_BUDGET']:g} of the time)")
    return outputs_every


def schedule(cfg: dict[str, Any]) -> str:
    """When the run will spend time on anything but training, in one line."""
    minutes, steps, snapshot = cfg["CHECKPOINT_EVERY_MINUTES"], cfg["CHECKPOINT_EVERY_STEPS"], cfg["SNAPSHOT_EVERY"]
    saves = (f"every {minutes:g} min (first after step {FIRST_CHECKPOINT_STEP})" if minutes else "every epoch end") \
        + (f" and every {steps} steps" if steps else "") + (f", snapshots every {snapshot} epochs" if snapshot else "")
    every = lambda n: f"every {n} epoch(s) and at the last" if n else "never"  # noqa: E731
    budget = (f", kept under {cfg['EVAL_BUDGET']:.0%} of the time (spaced out, and said, if slower)"
              if cfg["EVAL_BUDGET"] else "")
    return (f"schedule: checkpoints/last.pt and generator.pt {saves}; sample grids {every(cfg['SAMPLE_EVERY'])}, "
            f"validation {every(cfg['VAL_EVERY'])}{budget}")


class Timer:
    """Seconds on the run's clock since it was made, and images per second of wall time for what it counted."""

    def __init__(self):
        self.started, self.wall_started, self.images = clock(), time.perf_counter(), 0

    def count(self, images: int) -> None:
        self.images += images

    def seconds(self) -> float:
        return clock() - self.started

    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.wall_started, 1e-9)


# ----------------------------------------------------------------------------- before the first step

def validation_metrics(G: nn.Module, val_set: Any, cfg: dict[str, Any], runtime: Runtime, fcn: Any,
                       fid: Any = None) -> dict[str, Any]:
    """paper test mode (§3.3) metrics on up to VAL_MAX_IMAGES validation images, in training's batch size, so
    that batch statistics are like training's; with `fcn` (FCN_SCORE) the FCN-score of the outputs (§4.2), with
    `fid` (FID) FID and KID of the outputs against the real images (harness/fid.py)."""
    from harness import metrics  # torchmetrics takes seconds to import: not before a run starts
    subset = Subset(val_set, range(min(len(val_set), cfg["VAL_MAX_IMAGES"] or len(val_set))))
    loader = DataLoader(subset, batch_size=cfg["BATCH_SIZE"], num_workers=loader_workers(cfg["NUM_WORKERS"]),
                        worker_init_fn=ignore_stop_signals)  # decoding in workers: a GPU validates in seconds

    def on_batch(x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> None:
        if fcn:
            fcn.update(x, generated=fake)
        if fid:
            fid.update(fake, y)
    summary = metrics.evaluate_generator(G, loader, runtime.device, runtime.precision, cfg["TEST_MODE"],
                                         cfg["SEED"], on_batch=on_batch)["summary"]
    val = {k: summary[k] for k in VAL_METRICS + (MAP_METRICS if cfg["PIXEL_ACCURACY"] else ())}
    if fcn:
        val |= {f"fcn_{k}": v for k, v in fcn.result()["generated"].items()}
        fcn.confusion.clear()
    if fid:
        val |= {k: fid.result()[k] for k in FID_METRICS}
        fid.next_round()  # the real images' features are kept
    return val | {"n_images": summary["n_images"]}


def validate_generators(model: Any, val_set: Any, cfg: dict[str, Any], runtime: Runtime, fcn: Any, fid: Any,
                        log: RunLog, step: int) -> dict[str, Any]:
    """validation_metrics of the generator inference uses (model.inference_G), logged to TensorBoard and printed;
    with G_EMA also the raw G's, as raw_* (the same run's other arm), leaving the RNGs as they were."""
    def scored(G: nn.Module, tag: str) -> dict[str, Any]:
        val = validation_metrics(without_sync_bn(G), val_set, cfg, runtime, fcn, fid)
        log.scalars({k: v for k, v in val.items() if k != "n_images" and v is not None}, step, tag)
        print_validation(val, tag)
        return val
    val = scored(model.inference_G, "val")
    if model.average is not None:
        with torch.random.fork_rng(devices=[runtime.device] if runtime.device.type == "cuda" else []):
            raw = scored(model.G, "val_raw")
        val |= {f"raw_{k}": v for k, v in raw.items() if k != "n_images"}
    return val


def print_validation(val: dict[str, Any], tag: str = "val") -> None:
    ratio = "n/a (needs 2+ images)" if val["ratio"] is None else f"{val['ratio']:.3f}"
    maps = "".join(f"  {k} {val[k]:.4f}" for k in MAP_METRICS + FCN_METRICS if k in val)
    maps += "".join(f"  {k.upper()} {val[k]:.4g}" for k in FID_METRICS if val.get(k) is not None)
    print(f"  {tag}: L1 {val['l1']:.4f}  PSNR {val['psnr']:.2f} dB  SSIM {val['ssim']:.4f}  "
          f"own/other L1 ratio {ratio}{maps}  ({val['n_images']} images)")


def progress_bar(loader: DataLoader, epoch: int, total_epochs: int, done: int, master: bool) -> tqdm:
    """The epoch's progress bar (rank 0 only), starting at `done` steps (a resumed epoch)."""
    return tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs}", disable=not master, dynamic_ncols=True,
                initial=done, total=done + len(loader))


def log_step(log: RunLog, bar: tqdm, reading: Reading, images_per_s: float, images_left: int, step: int) -> None:
    """A logging step: the epoch's mean losses so far, the speed and the run's ETA on the progress bar, and the
    losses in TensorBoard."""
    eta = format_duration(max(images_left, 0) / max(images_per_s, 1e-9))
    bar.set_postfix({k: f"{reading.means[k]:.3f}" for k in LOSS_TERMS}
                    | {"img/s": f"{images_per_s:.2f}", "run ETA": eta})
    if reading.n_ok:
        log.scalars(reading.means | {"images_per_s": images_per_s}, step)


def gather_rng_states(device: torch.device, world_size: int) -> list:
    """Every rank's RNG states, for a checkpoint (a collective: every rank calls it)."""
    return gather_from_ranks(rng_states(device), world_size)


def read_datasets(cfg: dict[str, Any], ranks: Ranks) -> tuple[Any, Any]:
    """The checked (train, val) datasets; every process needs at least one training image."""
    train_set, val_set = training_data(cfg, ranks.rank, lambda: barrier(ranks.world_size))
    if len(train_set) < ranks.world_size:
        raise DatasetError(f"{cfg['TRAIN_DIR']}: {len(train_set)} usable images for {ranks.world_size} processes; "
                           f"each process needs at least one: add images or start fewer (torchrun --nproc_per_node)")
    if cfg["CACHE_IMAGES"]:  # now, before the loader's workers start: they share it (see cache_images)
        cache_images(train_set, loader_workers(cfg["NUM_WORKERS"]), say=print if ranks.master else lambda text: None)
    return train_set, val_set


class TrainingRun:
    """What the helpers share, all set here: the settings, this process's place, RUN_DIR and its lock, the
    checkpoint writer, the loader's random stream, the time of the last save, and the clean-up on every way out."""

    def __init__(self, cfg: dict[str, Any], ranks: Ranks, runtime: Runtime, argv: list[str] | None):
        self.cfg, self.ranks, self.runtime = cfg, ranks, runtime
        self.argv = sys.argv[1:] if argv is None else argv
        self.run_dir = Path(cfg["RUN_DIR"])
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resume_path = resolve_resume(cfg, self.ckpt_dir)
        self.total_epochs = cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"]
        self.cleanup = contextlib.ExitStack()
        self.writer = CheckpointWriter()
        self.loader_rng = torch.Generator().manual_seed(cfg["SEED"])  # worker seeds must not consume dropout's RNG
        self.last_save = clock()
        self.shards = 1  # set by loader()

    def __enter__(self) -> "TrainingRun":
        self.cleanup.__enter__()
        refused = None
        if self.ranks.master:  # the only writer
            try:
                check_run_dir(self.run_dir)  # a folder that cannot hold the run fails now, in one line
                self.cleanup.callback(RunDirLock(self.run_dir).release)  # one run per folder, until this one ends
            except RunDirError as e:
                refused = e
        # on every way out, a checkpoint being written is finished, before the lock goes (callbacks run last
        # first): a job restarted at once must not read the older last.pt and later overwrite the newer one
        self.cleanup.callback(self.writer.wait)
        refuse_on_every_rank(refused, self.ranks)  # the job's first collective: every rank leaves with the line
        if self.ranks.master:
            remove_stale_temp_files(self.ckpt_dir, self.run_dir)
        return self

    def __exit__(self, *exc) -> bool:
        return self.cleanup.__exit__(*exc)

    def loader(self, dataset: Any, sampler: Any) -> DataLoader | ResidentBatches:
        """The training batches: the set resident where the step runs (DATA_ON_DEVICE, harness/device_data.py), or
        the DataLoader (harness/loading.py), its workers shut down on every way out."""
        resident = training_batches(dataset, sampler, self.cfg, self.runtime.device, self.runtime.memory_format,
                                    say=print if self.ranks.master else lambda text: None)
        self.shards = self.ranks.world_size if resident is not None else 1  # how an epoch's images are ordered
        if resident is not None:
            return resident
        loader = training_loader(dataset, sampler, self.cfg, self.runtime.device, self.loader_rng)
        self.cleanup.callback(shut_down_workers, loader)  # never left for interpreter exit (where they would hang)
        return loader

    def resume(self, model: Any, train_data: dict[str, Any]) -> Progress:
        """The checkpoint RESUME names, restored exactly, or a fresh start; every process agreeing on where it is."""
        progress = restore(self.resume_path, model, train_data, self.cfg, self.ranks, self.runtime.device,
                           self.loader_rng) if self.resume_path else Progress()
        if progress.images_in_epoch and progress.shards != self.shards and self.ranks.master:
            print(f"note: {self.resume_path} stopped in an epoch ordered {order_of(progress.shards)}, and this run "
                  f"orders it {order_of(self.shards)}: the rest of that one epoch may train some images twice and "
                  f"leave others out. For an exact resume, use the same number of processes and DATA_ON_DEVICE")
        progress.shards = self.shards
        if not self.ranks.master:  # the epoch's losses so far are every process's: rank 0 carries them alone
            progress.epoch_losses = {}
        check_ranks_agree(self.ranks.world_size, resume_from=self.resume_path and str(self.resume_path),
                          step=progress.step, train_images=train_data["images"])
        return progress

    def open_log(self, progress: Progress, model: Any, train_set: Any, val_set: Any, flops: float) -> RunLog | None:
        """Rank 0: config.json, log.csv and TensorBoard opened, and what this run is, printed. None elsewhere."""
        if not self.ranks.master:
            return None
        import matplotlib.pyplot  # noqa: F401 - imported now, not inside the first timed validation (EVAL_BUDGET)
        import harness.metrics  # noqa: F401
        self.run_dir.mkdir(parents=True, exist_ok=True)
        aside = set_aside_earlier_run(self.run_dir) if self.resume_path is None else None
        if aside:  # the first write of a fresh start: nothing already saved is overwritten
            print(f"note: {self.run_dir} holds an earlier run's outputs but no checkpoints/last.pt to continue it; "
                  f"they were moved to {aside}, and this run starts fresh")
        (self.run_dir / "config.json").write_text(json.dumps(self.cfg, indent=2))
        log = RunLog(self.run_dir, resume_epoch=progress.epoch, resume_step=progress.step)
        self.cleanup.callback(log.close)
        print_run(self.cfg, self.runtime, self.ranks.world_size, model.G, model.D, len(train_set), len(val_set),
                  flops)
        print(schedule(self.cfg))
        return log

    def catch_stop_signals(self) -> StopRequest:
        """From here on SIGINT/SIGTERM set a flag the loop checks; at the end the handlers go back."""
        stop = StopRequest(announce=self.ranks.master)
        self.cleanup.callback(stop.release)  # after the loop a signal must end the process as usual
        return stop

    def save_samples(self, G: nn.Module, samples: tuple[torch.Tensor, ...], name: str) -> torch.Tensor | None:
        """RUN_DIR/samples/<name>: input | generated | target of the fixed val images (rank 0, SAMPLE_EVERY on)."""
        if not (self.ranks.master and self.cfg["SAMPLE_EVERY"]):
            return None
        return write_samples(without_sync_bn(G), *samples, self.cfg, self.runtime.device, self.runtime.precision,
                             self.run_dir / "samples" / name)

    def validate(self, model: Any, val_set: Any, fcn: Any, fid: Any, log: RunLog, step: int) -> dict[str, Any]:
        """validate_generators, never while a checkpoint is being written: its loader's workers fork this process."""
        self.writer.wait()
        return validate_generators(model, val_set, self.cfg, self.runtime, fcn, fid, log, step)

    def share_plateau(self, progress: Progress) -> None:
        """LR_POLICY="plateau": rank 0's plateau state (it alone validates) on every rank, which all set their LR
        from it; a no-op for the other policies."""
        if self.cfg["LR_POLICY"] == "plateau":
            progress.plateau = gather_from_ranks(progress.plateau, self.ranks.world_size)[0]

    def save_due(self) -> bool:
        """Rank 0's clock: CHECKPOINT_EVERY_MINUTES have passed since the last save (the other ranks: False)."""
        minutes = self.cfg["CHECKPOINT_EVERY_MINUTES"]
        return self.ranks.master and minutes > 0 and clock() - self.last_save >= 60 * minutes

    def save_checkpoint(self, progress: Progress, model: Any, rank_rngs: list, train_data: dict[str, Any],
                        mid_epoch: Reading | None = None, last: bool = True, export: bool = False,
                        snapshot: bool = False, best: bool = False) -> None:
        """Rank 0 writes, in the background: for a new best validation figure checkpoints/best.pt and
        generator_best.pt; generator.pt (export); checkpoints/epoch_NNNN.pt (snapshot); checkpoints/last.pt,
        last, since it marks where a resume starts. `rank_rngs`: gather_rng_states; `train_data`: data_fingerprint;
        `mid_epoch`: a save inside an epoch, its losses so far over every process (StepGuard.read(over_ranks))."""
        if self.ranks.master:
            rngs = {"rng": rng_states(self.runtime.device), "rank_rngs": rank_rngs,
                    "loader_rng": self.loader_rng.get_state()}
            so_far = mid_epoch.so_far() if mid_epoch else {}
            ckpt = training_checkpoint(model, replace(progress, epoch_losses=so_far), rngs, self.cfg, train_data)
            files = [(export_of(ckpt), self.run_dir / "generator_best.pt"), (ckpt, self.ckpt_dir / "best.pt")] * best
            files += [(export_of(ckpt), self.run_dir / "generator.pt")] * export
            files += [(ckpt, self.ckpt_dir / f"epoch_{progress.epoch:04d}.pt")] * snapshot
            files += [(ckpt, self.ckpt_dir / "last.pt")] * last
            self.writer.write(files)
        if last:
            self.last_save = clock()

    def stopped(self, stop: StopRequest, signum: int, progress: Progress) -> int:
        """After a stop signal on any rank, with last.pt just saved: every rank exits as the signalled one."""
        stop.signum = signum
        self.writer.wait()  # "saved" means on disk
        if self.ranks.master:
            print(f"saved {self.ckpt_dir / 'last.pt'} at epoch {progress.epoch + (progress.images_in_epoch > 0)}, "
                  f"step {progress.step}. Resume with:\n  {resume_command(self.cfg, self.argv, self.ranks.world_size)}")
        return stop.exit_code()

    def finished(self, stop: StopRequest, agreed: int = 0) -> int:
        """Every epoch trained: the last checkpoint on disk, and where the generator is, said. A stop signal the
        ranks agreed on at the end (`agreed`), or one that came after (during the final validation, say), still
        gives its exit code, on every rank that knows of it."""
        stop.signum = max(stop.signum, agreed)
        self.writer.wait()
        if self.ranks.master:
            print(f"done: {self.run_dir / 'generator.pt'} (load it with harness.checkpoint.load_generator)")
        return stop.exit_code() if stop.signum else 0

    def already_finished(self, progress: Progress, model: Any) -> int:
        """A run resumed after its last epoch: nothing to train; a missing or stale generator.pt is rewritten."""
        if self.ranks.master:
            repair_export(self.run_dir / "generator.pt", self.resume_path, progress, model, self.cfg)
            print(f"{self.run_dir} already finished its {self.total_epochs} epochs; nothing to do "
                  f"(new RUN_DIR to retrain)")
        return 0


def order_of(shards: int) -> str:
    return "as one shuffle of the whole set" if shards == 1 else f"by {shards} processes' resident shards"


def way_past_damaged(path: Path, resume: str) -> str:
    """The next step when the checkpoint to resume from cannot be read: the run's other checkpoints, if any."""
    if resume not in ("auto", "never"):
        return "Name another checkpoint with RESUME, or RESUME=auto to continue RUN_DIR's last.pt"
    others = sorted(p.name for p in path.parent.glob("*.pt") if p.name != path.name)
    also = f" (or {', '.join(others[:-1])})" if len(others) > 1 else ""
    earlier = f"then RESUME={path.parent / others[-1]}{also} to continue from there, or RESUME=auto to start " \
              f"over" if others else "then start over with the same command"
    return f"To go on, move it aside (mv {path} {path}.damaged), {earlier}"


def restore(path: Path, model: Any, train_data: dict[str, Any], cfg: dict[str, Any], ranks: Ranks,
            device: torch.device, loader_rng: torch.Generator) -> Progress:
    """A checkpoint's weights, optimisers, scalers, RNGs (this rank's, the loader's) and position, after checking
    that it suits these settings and this data."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:  # a damaged file: say how to go on from what the run still has
        if not path.is_file():
            raise
        raise CheckpointError(f"{e}. {way_past_damaged(path, cfg['RESUME'])}") from None
    check_resume_compatible(ckpt, cfg, path, model.D)
    # the data it was trained on; RESUME naming the file is how a user says "on this data anyway"
    note = check_same_data(ckpt["train_data"], train_data, path, cfg["RESUME"] not in ("auto", "never"))
    if note and ranks.master:
        print(note)
    progress = restore_training_state(ckpt, model)
    if model.average is not None and AVERAGE not in ckpt and ranks.master:
        print(f"note: {path} was trained without G_EMA; the averaged generator starts at its weights now")
    if keep_legacy_skips(model.G, ckpt) and ranks.master:
        print(f"note: {path} predates the U-Net skip fix; this run keeps its legacy skip activations "
              f"(skip_relu=False) so its function does not change. Train in a new RUN_DIR for the reference one")
    rank_rngs = ckpt["rank_rngs"] or []  # every rank's RNG: each continues its own dropout noise
    set_rng_states(rank_rngs[ranks.rank] if len(rank_rngs) == ranks.world_size else ckpt["rng"], device)
    if ranks.rank and len(rank_rngs) != ranks.world_size:  # saved with another number of processes: fresh noise
        seed_everything(cfg["SEED"] + ranks.rank + progress.step)
    loader_rng.set_state(ckpt["loader_rng"])
    if ranks.master and progress.epoch < cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"]:  # else: "already finished"
        print(f"resuming from {path}: epoch {progress.epoch + 1}, "
              f"batch {progress.images_in_epoch // (cfg['BATCH_SIZE'] * ranks.world_size)}, step {progress.step}")
    return progress


def repair_export(path: Path, checkpoint: Path, progress: Progress, model: Any, cfg: dict[str, Any]) -> None:
    """A finished run's generator.pt must hold last.pt's generator: one that is missing (a kill between the final
    writes of an older version, a deleted file) or stale is written again from the checkpoint's weights."""
    try:
        export = load_checkpoint(path)
        weights = model.inference_G.state_dict()
        current = export["epoch"] == progress.epoch and export["generator"].keys() == weights.keys() \
            and all(torch.equal(v, export["generator"][k]) for k, v in weights.items())
    except CheckpointError:
        current = False
    if not current:
        config = load_checkpoint(checkpoint).get("config", cfg)  # the settings it was trained with
        atomic_save(generator_export(model.inference_G, model.D, progress.epoch, config,
                                     averaged=model.average is not None), path)
        print(f"wrote {path} from {checkpoint}: it was missing or did not match that checkpoint")
