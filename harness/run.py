"""The machinery around train.py's loop that keeps a run alive for days, behind the few calls train.py makes:

    with TrainingRun(cfg, ranks, runtime, argv) as run:  # RUN_DIR checked; clean-up on every way out
        train_set, val_set = run.training_data()        # every file decoded once: a bad one stops the run now
        loader = run.loader(train_set, sampler)         # workers that leave Ctrl-C to us, shut down on any exit
        progress = run.resume(model)                    # a checkpoint's weights, optimisers, RNGs and position
        run.begin(progress, model, guard)               # run log, stop signals, the untrained generator's grid
        ... run.after_step(...)                         # logs, early grids, timed saves; a stop signal ends here
        ... run.end_of_epoch(...)                       # samples, validation, log row, checkpoints, exports

Rank 0 writes every file; the other ranks take part in the collectives (RNG states for checkpoints, agreement).
"""
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from harness.checkpoint import (CheckpointWriter, Progress, atomic_save, check_resume_compatible, check_same_data,
                                export_of, generator_export, keep_legacy_skips, load_checkpoint,
                                remove_stale_temp_files, restore_training_state, rng_states, set_rng_states,
                                training_checkpoint)
from harness.configurator import resolve_resume
from harness.data_checks import data_fingerprint, training_data
from harness.device_data import ResidentBatches, training_batches
from harness.distributed import (Ranks, barrier, check_ranks_agree, gather_from_ranks, while_rank0_works,
                                 without_sync_bn)
from harness.errors import CheckpointError, DatasetError
from harness.loading import cache_images, loader_workers, training_loader
from harness.run_lock import RunDirLock
from harness.run_log import (RunLog, check_run_dir, format_duration, print_epoch_speed, print_run, sample_batch,
                             training_flops_per_image, write_samples)
from harness.signals import StopRequest, ignore_stop_signals, resume_command, shut_down_workers
from harness.step_guard import LOSS_TERMS, StepGuard
from utils import Runtime, seed_everything

clock = time.monotonic  # the timed saves' clock (tests replace it rather than sleep)
EARLY_SAMPLE_STEPS = 50  # first-epoch grids at step 0 and 50, 100, 200, 400, ...: a picture within a minute
FIRST_CHECKPOINT_STEP = 100  # an early last.pt (~2.5 min at 0.7 img/s) before CHECKPOINT_EVERY_MINUTES is due
VAL_METRICS = ("l1", "psnr", "ssim", "ratio")
MAP_METRICS = ("rmse", "pixel_acc_5", "pixel_acc_16")  # with PIXEL_ACCURACY (the maps preset)
FCN_METRICS = ("fcn_pixel_acc", "fcn_class_acc", "fcn_class_iou")  # with FCN_SCORE


def evaluate_generator(*args, **kwargs) -> dict[str, Any]:
    """harness.metrics.evaluate_generator, imported on first use: torchmetrics takes seconds to import, and a
    config error or an interrupted start should not wait for it."""
    from harness.metrics import evaluate_generator as evaluate
    return evaluate(*args, **kwargs)


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


def is_early_sample_step(step: int) -> bool:
    """Step 0 and EARLY_SAMPLE_STEPS times a power of two."""
    n, rest = divmod(step, EARLY_SAMPLE_STEPS)
    return step == 0 or (rest == 0 and n & (n - 1) == 0)


class TrainingRun:
    def __init__(self, cfg: dict[str, Any], ranks: Ranks, runtime: Runtime, argv: list[str] | None):
        self.cfg, self.ranks, self.runtime = cfg, ranks, runtime
        self.argv = sys.argv[1:] if argv is None else argv
        self.run_dir = Path(cfg["RUN_DIR"])
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.cleanup = contextlib.ExitStack()
        self.loader_rng = torch.Generator().manual_seed(cfg["SEED"])  # worker seeds must not consume dropout's RNG
        self.log: RunLog | None = None
        self.fcn = None  # FCN_SCORE: the scorer of the generated photos (rank 0)
        self.stop = StopRequest(announce=False, install=False)
        self.last_save = clock()
        self.epoch_start = (time.perf_counter(), 0)  # (time, images) at the start of this epoch's timing
        self.epoch_clock = clock()
        self.outputs_every = 1  # samples and validation every SAMPLE_EVERY / VAL_EVERY x this (EVAL_BUDGET)
        self.total_epochs = cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"]
        self.writer = CheckpointWriter()
        self.train_data: dict[str, Any] = {}  # data_fingerprint of the training set, once it is read
        self.saved_config = cfg  # the resumed checkpoint's settings (for a repaired export)

    def __enter__(self) -> "TrainingRun":
        self.cleanup.__enter__()
        self.cleanup.callback(self.writer.wait)  # on every way out, a checkpoint being written is finished
        self.resume_path = resolve_resume(self.cfg, self.ckpt_dir)
        if self.ranks.master:  # the only writer; under torchrun its error ends the other ranks too
            check_run_dir(self.run_dir)  # a folder that cannot hold the run fails now, in one line
            self.cleanup.callback(RunDirLock(self.run_dir).release)  # one run per folder, until this one ends
            remove_stale_temp_files(self.ckpt_dir, self.run_dir)
        return self

    def __exit__(self, *exc) -> bool:
        return self.cleanup.__exit__(*exc)

    # ------------------------------------------------------------------------- before the first step

    def training_data(self) -> tuple[Any, Any]:
        """The checked (train, val) datasets; every process needs at least one training image."""
        train_set, val_set = training_data(self.cfg, self.ranks.rank, lambda: barrier(self.ranks.world_size))
        if len(train_set) < self.ranks.world_size:
            raise DatasetError(f"{self.cfg['TRAIN_DIR']}: {len(train_set)} usable images for {self.ranks.world_size} "
                               f"processes; each process needs at least one: add images or start fewer "
                               f"(torchrun --nproc_per_node)")
        if self.cfg["CACHE_IMAGES"]:  # now, before the loader's workers start: they share it (see cache_images)
            cache_images(train_set, loader_workers(self.cfg["NUM_WORKERS"]),
                         say=print if self.ranks.master else lambda text: None)
        self.train_set, self.val_set = train_set, val_set
        self.train_data = data_fingerprint(train_set)  # saved in checkpoints, compared on resume
        return train_set, val_set

    def loader(self, dataset: Any, sampler: Any) -> DataLoader | ResidentBatches:
        """The training batches: resident where the step runs (DATA_ON_DEVICE), or the DataLoader's."""
        resident = training_batches(dataset, sampler, self.cfg, self.runtime.device, self.runtime.memory_format,
                                    say=print if self.ranks.master else lambda text: None)
        if resident is not None:
            return resident
        loader = training_loader(dataset, sampler, self.cfg, self.runtime.device, self.loader_rng)
        self.cleanup.callback(shut_down_workers, loader)  # never left for interpreter exit (where they would hang)
        return loader

    def resume(self, model: Any) -> Progress:
        """Continue the checkpoint RESUME names exactly (weights, optimisers, scalers, RNGs and position), or
        start fresh; then check that every process agrees on where it is."""
        progress = Progress()
        if self.resume_path:
            progress = self._restore(self.resume_path, model)
        check_ranks_agree(self.ranks.world_size, resume_from=self.resume_path and str(self.resume_path),
                          step=progress.step, train_images=len(self.train_set))
        return progress

    def _restore(self, path: Path, model: Any) -> Progress:
        rank, world_size, device = self.ranks.rank, self.ranks.world_size, self.runtime.device
        ckpt = load_checkpoint(path)
        check_resume_compatible(ckpt, self.cfg, path, model.D)
        # the data it was trained on; RESUME naming the file is how a user says "on this data anyway"
        note = check_same_data(ckpt["train_data"], self.train_data, path, self.cfg["RESUME"] not in ("auto", "never"))
        if note and rank == 0:
            print(note)
        self.saved_config = ckpt.get("config", self.cfg)
        progress = restore_training_state(ckpt, model)
        if keep_legacy_skips(model.G, ckpt) and rank == 0:
            print(f"note: {path} predates the U-Net skip fix; this run keeps its legacy skip activations "
                  f"(skip_relu=False) so its function does not change. Train in a new RUN_DIR for the reference one")
        rank_rngs = ckpt["rank_rngs"] or []  # every rank's RNG: each continues its own dropout noise
        set_rng_states(rank_rngs[rank] if len(rank_rngs) == world_size else ckpt["rng"], device)
        if rank and len(rank_rngs) != world_size:  # saved with another number of processes: fresh noise
            seed_everything(self.cfg["SEED"] + rank + progress.step)
        self.loader_rng.set_state(ckpt["loader_rng"])
        if rank == 0:
            print(f"resuming from {path}: epoch {progress.epoch + 1}, "
                  f"batch {progress.images_in_epoch // (self.cfg['BATCH_SIZE'] * world_size)}, step {progress.step}")
        return progress

    def begin(self, progress: Progress, model: Any) -> bool:
        """Rank 0 opens the run log and prints what this run is; stop signals are ours from here on. False if the
        run has already finished every epoch."""
        if progress.epoch >= self.total_epochs:
            if self.ranks.master:
                self._repair_export(progress, model)
                print(f"{self.run_dir} already finished its {self.total_epochs} epochs; nothing to do "
                      f"(new RUN_DIR to retrain)")
            return False
        self.flops = training_flops_per_image(self.cfg)
        self.samples = sample_batch(self.val_set, self.cfg["N_SAMPLES"])
        if self.cfg["FCN_SCORE"]:  # rank 0 trains the segmenter (minutes) while the others wait, not in a collective
            from harness.fcn_score import scorer_for
            self.fcn = while_rank0_works(self.ranks.world_size, lambda: scorer_for(
                self.cfg["TRAIN_DIR"], self.cfg["DIRECTION"], self.cfg["PRESET"])[0])
        if self.ranks.master:
            import matplotlib.pyplot  # noqa: F401 - imported now, not inside the first timed validation (EVAL_BUDGET)
            import harness.metrics  # noqa: F401
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg, indent=2))
            self.log = RunLog(self.run_dir, resume_epoch=progress.epoch)
            self.cleanup.callback(self.log.close)
            print_run(self.cfg, self.runtime, self.ranks.world_size, model.G, model.D, len(self.train_set),
                      len(self.val_set), self.flops)
            print(schedule(self.cfg))
        self.stop = StopRequest(announce=self.ranks.master)
        self.cleanup.callback(self.stop.release)  # after the loop a signal must end the process as usual
        if progress.step == 0:  # the untrained generator: a picture at once
            self._samples(model.G, self.run_dir / "samples" / "step_000000.png")
        self.last_save = clock()
        return True

    def progress_bar(self, loader: DataLoader, epoch: int, progress: Progress) -> tqdm:
        per_step = self.cfg["BATCH_SIZE"] * self.ranks.world_size
        done = progress.images_in_epoch // per_step
        self.epoch_start, self.epoch_clock = (time.perf_counter(), 0), clock()
        self.bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.total_epochs}", disable=not self.ranks.master,
                        dynamic_ncols=True, initial=done, total=done + len(loader))
        return self.bar

    # ------------------------------------------------------------------------- after each step

    def stop_or_save_flags(self) -> int:
        """This rank's say on stopping and saving, as one int the ranks can max-reduce in the step's own loss check:
        2 * the stop signal's number + 1 if rank 0's clock says a timed save is due."""
        due = self.ranks.master and self.cfg["CHECKPOINT_EVERY_MINUTES"] > 0 \
            and clock() - self.last_save >= 60 * self.cfg["CHECKPOINT_EVERY_MINUTES"]
        return 2 * self.stop.signum + due

    def after_step(self, progress: Progress, model: Any, guard: StepGuard, images: int) -> bool:
        """Logs, early sample grids and saves after a step; True if a stop signal ended the run (saved)."""
        cfg, step, master = self.cfg, progress.step, self.ranks.master
        self.epoch_start = (self.epoch_start[0], self.epoch_start[1] + images)
        if master and progress.epoch == 0 and cfg["SAMPLE_EVERY"] and is_early_sample_step(step) \
                and progress.images_in_epoch < len(self.train_set):  # the epoch's last step has its epoch grid
            self._samples(model.G, self.run_dir / "samples" / f"step_{step:06d}.png")
        logging = step % cfg["LOG_EVERY"] == 0
        reading = guard.read() if logging else None  # the one device->host read of a logging step
        signum, due = self.agreed_flags(reading)
        save = bool(signum or due) or step == FIRST_CHECKPOINT_STEP \
            or bool(cfg["CHECKPOINT_EVERY_STEPS"] and step % cfg["CHECKPOINT_EVERY_STEPS"] == 0)
        if save and reading is None:
            reading = guard.read()  # before any save: a NaN under ON_NAN=stop raises here
        if master and logging:
            self._log_step(reading, progress)
        if save:
            self.save(progress, model, self.ckpt_dir / "last.pt")
            self.last_save = clock()
        return self.stopping(signum, progress)

    def agreed_flags(self, reading: Any) -> tuple[int, int]:
        """(stop signal, timed save due), the same on every rank: a single process's own, from the host; under
        torchrun what the ranks agreed in the step's loss checks, known at reads (logging steps, epoch ends)."""
        if self.ranks.world_size == 1:
            return divmod(self.stop_or_save_flags(), 2)
        return divmod(reading.flags, 2) if reading else (0, 0)

    def stopping(self, signum: int, progress: Progress) -> bool:
        """A stop signal on any rank, with last.pt just saved: every rank exits as the signalled one."""
        if not signum:
            return False
        self.stop.signum = signum
        self.writer.wait()  # "saved" means on disk
        if self.ranks.master:
            self.bar.close()
            print(f"saved {self.ckpt_dir / 'last.pt'} at epoch {progress.epoch + (progress.images_in_epoch > 0)}, "
                  f"step {progress.step}. Resume with:\n  {resume_command(self.cfg, self.argv, self.ranks.world_size)}")
        return True

    def _log_step(self, reading: Any, progress: Progress) -> None:
        speed = self.speed()
        left = (self.total_epochs - progress.epoch) * len(self.train_set) - progress.images_in_epoch
        self.bar.set_postfix({k: f"{reading.means[k]:.3f}" for k in LOSS_TERMS} | {"img/s": f"{speed:.2f}"}
                             | {"run ETA": format_duration(max(left, 0) / max(speed, 1e-9))})
        if reading.n_ok:
            self.log.scalars(reading.means | {"images_per_s": speed}, progress.step)

    def speed(self) -> float:
        started, images = self.epoch_start
        return images / max(time.perf_counter() - started, 1e-9)

    # ------------------------------------------------------------------------- end of an epoch

    def end_of_epoch(self, progress: Progress, model: Any, guard: StepGuard, lr: float) -> bool:
        """After every rank's last step of an epoch (progress.epoch already counts it), by rank 0 while the other
        ranks wait: the log row; samples, validation and curves on their schedule (kept under EVAL_BUDGET of the
        run's time); checkpoints and exports when due. True if a stop signal ends the run here (saved)."""
        train_seconds = clock() - self.epoch_clock
        reading = guard.read(over_ranks=True)  # means over every rank's images; a NaN under ON_NAN=stop raises here
        signum, due = self.agreed_flags(reading)
        rank_rngs = gather_from_ranks(rng_states(self.runtime.device), self.ranks.world_size)
        cfg, epoch = self.cfg, progress.epoch
        snapshot = bool(cfg["SNAPSHOT_EVERY"]) and epoch % cfg["SNAPSHOT_EVERY"] == 0
        save = bool(signum or due) or snapshot or epoch == self.total_epochs or not cfg["CHECKPOINT_EVERY_MINUTES"]
        if self.ranks.master:
            self.bar.close()
            row = reading.means | {"epoch": epoch, "step": progress.step, "lr": lr, "skipped_steps": reading.skipped,
                                   "images_per_s": self.speed(), "scaler_skipped_steps": reading.scaler_skips}
            print_epoch_speed(row, self.speed(), self.flops, model.scaler_G.is_enabled())
            started = clock()
            best = self._epoch_outputs(row, progress, model)
            self._keep_in_budget(clock() - started, train_seconds)
            if save or best:
                ckpt = self.checkpoint(progress, model, rank_rngs)
                files = [(export_of(ckpt), self.run_dir / "generator_best.pt"), (ckpt, self.ckpt_dir / "best.pt")] \
                    if best else []
                if save:  # last.pt last: it marks the epoch as done, so a kill before it redoes the epoch and these
                    files += [(export_of(ckpt), self.run_dir / "generator.pt")]
                    files += [(ckpt, self.ckpt_dir / f"epoch_{epoch:04d}.pt")] if snapshot else []
                    files += [(ckpt, self.ckpt_dir / "last.pt")]
                self.writer.write(files)
        if save:
            self.last_save = clock()
        barrier(self.ranks.world_size)
        return self.stopping(signum, progress)

    def _epoch_outputs(self, row: dict[str, Any], progress: Progress, model: Any) -> bool:
        """Samples, validation and the log row (curves.png with them); True if validation found a new best."""
        cfg, epoch, k = self.cfg, progress.epoch, self.outputs_every
        last = epoch == self.total_epochs  # the run ends with a picture and numbers whatever the schedule
        samples = bool(cfg["SAMPLE_EVERY"]) and (epoch % (cfg["SAMPLE_EVERY"] * k) == 0 or last)
        validate = bool(cfg["VAL_EVERY"]) and (epoch % (cfg["VAL_EVERY"] * k) == 0 or last)
        if samples:
            grid = self._samples(model.G, self.run_dir / "samples" / f"epoch_{epoch:04d}.png")
            self.log.tb.add_image("samples", grid, progress.step)
        best = False
        if validate:
            val = self.validate(without_sync_bn(model.G), progress.step)
            row |= {f"val_{k}": v for k, v in val.items() if k != "n_images"}  # a None ratio: empty in log.csv
            figure = val["l1"] if cfg["BEST_BY"] == "l1" else -val["fcn_class_iou"]  # as a loss: lower is better
            best = figure < progress.best_val
            progress.best_val = min(figure, progress.best_val)
        self.log.epoch_row(row, curves=samples or validate or epoch == 1)
        return best

    def _keep_in_budget(self, output_seconds: float, train_seconds: float) -> None:
        """Samples, validation and curves may take at most EVAL_BUDGET of the time: if they took more, space them
        out (in multiples of SAMPLE_EVERY / VAL_EVERY) from now on, and say so."""
        base = min(n for n in (self.cfg["SAMPLE_EVERY"], self.cfg["VAL_EVERY"], 1 << 30) if n)
        allowed = self.cfg["EVAL_BUDGET"] * base * self.outputs_every * max(train_seconds, 1e-9)
        if self.cfg["EVAL_BUDGET"] and output_seconds > allowed:
            self.outputs_every = math.ceil(output_seconds / (self.cfg["EVAL_BUDGET"] * base * max(train_seconds, 1e-9)))
            print(f"  samples and validation took {output_seconds:.1f} s against {train_seconds:.1f} s of training "
                  f"per epoch: from now on every {self.outputs_every} x SAMPLE_EVERY / VAL_EVERY epochs, and at the "
                  f"end (EVAL_BUDGET={self.cfg['EVAL_BUDGET']:g} of the time)")

    def validate(self, G: nn.Module, step: int) -> dict[str, Any]:
        """paper test mode (§3.3) metrics on up to VAL_MAX_IMAGES validation images, in training's batch size, so
        that batch statistics are like training's."""
        cfg = self.cfg
        subset = Subset(self.val_set, range(min(len(self.val_set), cfg["VAL_MAX_IMAGES"] or len(self.val_set))))
        self.writer.wait()  # its workers fork this process: never while a thread is writing a checkpoint
        loader = DataLoader(subset, batch_size=cfg["BATCH_SIZE"], num_workers=loader_workers(cfg["NUM_WORKERS"]),
                            worker_init_fn=ignore_stop_signals)  # decoding in workers: a GPU validates in seconds
        on_batch = (lambda x, fake, y: self.fcn.update(x, generated=fake)) if self.fcn else None
        val = evaluate_generator(G, loader, self.runtime.device, self.runtime.precision, cfg["TEST_MODE"],
                                 cfg["SEED"], on_batch=on_batch)["summary"]
        keys = VAL_METRICS + (MAP_METRICS if cfg["PIXEL_ACCURACY"] else ())
        val = {k: val[k] for k in keys} | {"n_images": val["n_images"]}
        if self.fcn:  # paper §4.2, on the generated photos
            val |= {f"fcn_{k}": v for k, v in self.fcn.result()["generated"].items()}
            self.fcn.confusion.clear()
            keys += FCN_METRICS
        self.log.scalars({k: val[k] for k in keys if val[k] is not None}, step, "val")
        ratio = "n/a (needs 2+ images)" if val["ratio"] is None else f"{val['ratio']:.3f}"
        maps = "".join(f"  {k} {val[k]:.4f}" for k in MAP_METRICS + FCN_METRICS if k in val)
        print(f"  val: L1 {val['l1']:.4f}  PSNR {val['psnr']:.2f} dB  SSIM {val['ssim']:.4f}  "
              f"own/other L1 ratio {ratio}{maps}  ({val['n_images']} images)")
        return val

    def _samples(self, G: nn.Module, path: Path) -> torch.Tensor | None:
        if not (self.ranks.master and self.cfg["SAMPLE_EVERY"]):
            return None
        return write_samples(without_sync_bn(G), *self.samples, self.cfg, self.runtime.device,
                             self.runtime.precision, path)

    # ------------------------------------------------------------------------- checkpoints

    def checkpoint(self, progress: Progress, model: Any, rank_rngs: list) -> dict[str, Any]:
        """A training checkpoint as CPU copies (rank 0): the training goes on while the writer saves it."""
        rngs = {"rng": rng_states(self.runtime.device), "rank_rngs": rank_rngs, "loader_rng": self.loader_rng.get_state()}
        return training_checkpoint(model, progress, rngs, self.cfg, self.train_data)

    def save(self, progress: Progress, model: Any, path: Path) -> None:
        """A training checkpoint at `path`, written in the background (rank 0 writes; every rank gives its RNGs)."""
        rank_rngs = gather_from_ranks(rng_states(self.runtime.device), self.ranks.world_size)
        if self.ranks.master:
            self.writer.write([(self.checkpoint(progress, model, rank_rngs), path)])

    def _repair_export(self, progress: Progress, model: Any) -> None:
        """A finished run's generator.pt must hold last.pt's generator: one that is missing (a kill between the
        final writes of an older version, a deleted file) or stale is written again from last.pt's weights."""
        path = self.run_dir / "generator.pt"
        try:
            export = load_checkpoint(path)
            current = export["epoch"] == progress.epoch and export["generator"].keys() == model.G.state_dict().keys() \
                and all(torch.equal(v, export["generator"][k]) for k, v in model.G.state_dict().items())
        except CheckpointError:
            current = False
        if not current:
            atomic_save(generator_export(model.G, model.D, progress.epoch, self.saved_config), path)
            print(f"wrote {path} from {self.resume_path}: it was missing or did not match that checkpoint")

    def finished(self) -> int:
        self.writer.wait()
        if self.ranks.master:
            print(f"done: {self.run_dir / 'generator.pt'} (load it with utils.load_generator)")
        return 0
