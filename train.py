"""Train pix2pix: a U-Net generator against a conditional PatchGAN (Isola et al., CVPR 2017, arXiv 1611.07004).

    python train.py                         # built-in synthetic labels->photo set, paper settings
    python train.py --PRESET=facades --TRAIN_DIR=data/facades/train --VAL_DIR=data/facades/val
    torchrun --standalone --nproc_per_node=2 train.py   # several GPUs (or CPU processes) with DDP

Settings live in config.py, each overridable with --KEY=value. Stop at any time with Ctrl-C: the step
finishes, a checkpoint is written, and the command it prints continues the run where it stopped
(bit-exactly on the CPU, and on GPUs with --DETERMINISTIC=True).

Read pix2pix.py first: the networks, the objective, one training step. This file runs them, top to
bottom: config -> data -> models -> resume -> the epoch loop, whose decisions (samples, logs, saves,
validation, stops) are straight-line code. What keeps a run alive for days (checkpoints, stop signals,
the NaN watch, DDP agreement, logs) lives in harness/, called by name.
"""
import sys

import torch
import torch.nn as nn

from dataset import AugmentationSampler
from harness.configurator import load_config
from harness.data_checks import data_fingerprint
from harness.cuda_graph import training_step
from harness.distributed import barrier, setup_distributed, while_rank0_works
from harness.errors import exit_on_error
from harness.fcn_score import scorer_for
from harness.fid import training_scores
from harness.run import (Timer, TrainingRun, gather_rng_states, is_due, is_early_sample_step,
                         log_step, progress_bar, read_datasets, spaced_out, step_checkpoint_due)
from harness.run_log import print_epoch_speed, sample_batch, training_flops_per_image
from harness.signals import agree_on_stop
from harness.step_guard import StepGuard
from pix2pix import (Pix2Pix, beyond_the_paper, build_models, lr_factor, make_grad_scalers,
                     make_optimizers, plateau_after, set_learning_rates, train_step)
from utils import pick_runtime, seed_everything, wrap_for_training


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(argv)  # config.py < PRESET < RECIPE < --KEY=value, checked before any heavy work
    ranks = setup_distributed(cfg["DIST_TIMEOUT_S"], cfg["DEVICE"])  # this process's rank
    runtime = pick_runtime(cfg, ranks.local_rank if ranks.world_size > 1 else None)  # device etc.
    with TrainingRun(cfg, ranks, runtime, argv) as run:  # RUN_DIR checked, locked; clean-up at exit
        seed_everything(cfg["SEED"] + ranks.rank)  # the models agree anyway: DDP broadcasts rank 0's

        # data: A|B pairs, each file decoded once now, so that a bad one stops the run at once.
        # paper §6.2: jitter (resize to 286, random 256 crop) and mirroring, same for input, target
        train_set, val_set = read_datasets(cfg, ranks)
        train_data = data_fingerprint(train_set)  # saved in checkpoints, compared on resume
        sampler = AugmentationSampler(len(train_set), cfg["SEED"], ranks.rank, ranks.world_size)
        loader = run.loader(train_set, sampler)

        # models and optimisers, paper §3.3
        G, D = build_models(cfg)
        if cfg["SYNC_BN"] and ranks.world_size > 1:
            G, D = (nn.SyncBatchNorm.convert_sync_batchnorm(net) for net in (G, D))
        G, D = (net.to(runtime.device, memory_format=runtime.memory_format) for net in (G, D))
        model = Pix2Pix(G, D, *make_optimizers(G, D, cfg, runtime.device),
                        *make_grad_scalers(runtime.device, runtime.precision), cfg["L1_LAMBDA"],
                        runtime.amp, **beyond_the_paper(cfg, G, ranks.world_size))  # recipes: all off

        progress = run.resume(model, train_data)  # a checkpoint's weights, RNGs, position; or fresh
        if progress.epoch >= run.total_epochs:  # nothing to train (a stale generator.pt: rewritten)
            return run.already_finished(progress, model)
        wrap_for_training(model, cfg["COMPILE"], ranks.world_size, runtime.device)  # DDP, compile
        flops = training_flops_per_image(cfg)  # model FLOPs of one training image (speed lines)
        fid = training_scores(cfg["INCEPTION_WEIGHTS"], runtime.device) \
            if cfg["FID"] and ranks.master else None  # FID/KID of the outputs; weights checked now
        log = run.open_log(progress, model, train_set, val_set, flops)  # rank 0: log.csv, TB
        # paper §4.2: the FCN-score of the outputs; rank 0 trains its segmenter (minutes) while the
        # other ranks wait outside the training's collectives, whose DIST_TIMEOUT_S it could exceed
        fcn = while_rank0_works(ranks.world_size, lambda: scorer_for(
            cfg["TRAIN_DIR"], cfg["DIRECTION"], cfg["PRESET"])[0]) if cfg["FCN_SCORE"] else None
        samples = sample_batch(val_set, cfg["N_SAMPLES"])  # the same few val images in every grid
        stop = run.catch_stop_signals()  # from here on Ctrl-C, SIGTERM: finish the step, save, exit
        guard = StepGuard(cfg["ON_NAN"], runtime.device, runtime.precision == "fp16")  # NaN watch
        # guard.begin_step, train_step, guard.end_step: eagerly, or as one CUDA graph (CUDA_GRAPH)
        one_step = training_step(model, guard, train_step, cfg, runtime, ranks.world_size,
                                 say=print if ranks.master else None)
        if progress.step == 0:
            run.save_samples(model.inference_G, samples, "step_000000.png")  # the untrained generator, now
        images_per_step = cfg["BATCH_SIZE"] * ranks.world_size

        for epoch in range(progress.epoch, run.total_epochs):
            # the learning rate: constant for N_EPOCHS, then linearly to 0 in N_EPOCHS_DECAY (§6.2)
            lr = set_learning_rates(model, cfg, lr_factor(epoch, cfg, progress.plateau.get("factor", 1.0)))
            sampler.set_epoch(epoch, skip=progress.images_in_epoch)  # a resumed epoch: the rest
            guard.start_epoch(progress.epoch_losses if progress.images_in_epoch else {})  # per epoch
            timer = Timer()
            bar = progress_bar(loader, epoch, run.total_epochs,
                               progress.images_in_epoch // images_per_step, ranks.master)

            for x, y in bar:
                x, y = runtime.to_device(x), runtime.to_device(y)
                one_step(x, y, progress.step)  # a poisoned step: not applied (skip: undone), not counted
                if model.average:  # G_EMA: the averaged generator follows G
                    model.average.update(model.G, len(x) * ranks.world_size)
                progress.step += 1
                progress.images_in_epoch += len(x) * ranks.world_size
                timer.count(len(x) * ranks.world_size)
                step, logging = progress.step, progress.step % cfg["LOG_EVERY"] == 0

                # early sample grids in the first epoch: steps 50, 100, 200, 400, ... (its last
                # step gets the epoch's grid instead)
                if epoch == 0 and is_early_sample_step(step) \
                        and progress.images_in_epoch < len(train_set):
                    run.save_samples(model.inference_G, samples, f"step_{step:06d}.png")

                # a stop signal, or a save due by the clock, agreed by every rank: under torchrun a
                # collective that waits for the device, so on logging steps only; a single process
                # agrees with itself after every step
                stop_signal, save_due = (0, False)
                if logging or ranks.world_size == 1:
                    stop_signal, save_due = agree_on_stop(stop.signum, run.save_due(),
                                                          ranks.world_size, runtime.device)
                save = stop_signal or save_due \
                    or step_checkpoint_due(step, cfg["CHECKPOINT_EVERY_STEPS"])

                # the step's one device->host read, on logging and saving steps only: the losses;
                # a NaN under ON_NAN=stop ends the run here, before a checkpoint could hold it
                if logging or save:
                    reading = guard.read(over_ranks=save)  # a save keeps every process's sums so far
                if logging and log:  # every LOG_EVERY steps: losses, speed, ETA; TensorBoard
                    left = (run.total_epochs - epoch) * len(train_set) - progress.images_in_epoch
                    log_step(log, bar, reading, timer.images_per_s(), left, step)

                # checkpoints/last.pt: at FIRST_CHECKPOINT_STEP, every CHECKPOINT_EVERY_STEPS,
                # when CHECKPOINT_EVERY_MINUTES have passed, and before stopping
                if save:
                    rank_rngs = gather_rng_states(runtime.device, ranks.world_size)  # collective
                    run.save_checkpoint(progress, model, rank_rngs, train_data, reading)
                if stop_signal:  # Ctrl-C or SIGTERM on any rank: saved; the printed command resumes
                    bar.close()
                    return run.stopped(stop, stop_signal, progress)

            # the end of the epoch, every rank: the losses over all ranks; a stop or save agreed
            progress.epoch, progress.images_in_epoch = epoch + 1, 0
            bar.close()
            train_seconds = timer.seconds() * len(train_set) / timer.images if timer.images else 0.0  # per epoch
            reading = guard.read(over_ranks=True)  # a NaN under ON_NAN=stop raises here, unsaved
            stop_signal, save_due = agree_on_stop(stop.signum, run.save_due(), ranks.world_size, runtime.device)
            rank_rngs = gather_rng_states(runtime.device, ranks.world_size)  # as training left them
            if stop_signal:  # last.pt before the outputs too: a scheduler's grace period may end in them
                run.save_checkpoint(progress, model, rank_rngs, train_data)
            last = progress.epoch == run.total_epochs
            snapshot = bool(cfg["SNAPSHOT_EVERY"]) and progress.epoch % cfg["SNAPSHOT_EVERY"] == 0
            # last.pt and generator.pt: every epoch, or with CHECKPOINT_EVERY_MINUTES when due
            save = bool(stop_signal or save_due) or snapshot or last or not cfg["CHECKPOINT_EVERY_MINUTES"]
            best = False

            if ranks.master:  # rank 0 writes the epoch's outputs; the others wait at the barrier
                row = reading.means | {"epoch": progress.epoch, "step": progress.step, "lr": lr,
                                       "images_per_s": timer.images_per_s(),
                                       "skipped_steps": reading.skipped,
                                       "scaler_skipped_steps": reading.scaler_skips}
                print_epoch_speed(row, timer.images_per_s(), flops, model.scaler_G.is_enabled())
                outputs = Timer()  # samples, validation and curves: within EVAL_BUDGET of the time
                sampled = is_due(progress.epoch, cfg["SAMPLE_EVERY"], progress.outputs_every, last)
                validated = is_due(progress.epoch, cfg["VAL_EVERY"], progress.outputs_every, last)
                if sampled:  # every SAMPLE_EVERY epochs and the last: a grid, also in TensorBoard
                    grid = run.save_samples(model.inference_G, samples, f"epoch_{progress.epoch:04d}.png")
                    log.tb.add_image("samples", grid, progress.step)
                if validated:  # every VAL_EVERY epochs and the last; a best figure makes best.pt
                    val = run.validate(model, val_set, fcn, fid, log, progress.step)  # G_EMA: raw G's too
                    row |= {f"val_{k}": v for k, v in val.items() if k != "n_images"}
                    figure = val["l1"] if cfg["BEST_BY"] == "l1" else -val["fcn_class_iou"]
                    best = figure < progress.best_val  # lower is better
                    progress.best_val = min(figure, progress.best_val)
                    if cfg["LR_POLICY"] == "plateau":  # x0.2 once validation stalls
                        progress.plateau = plateau_after(progress.plateau, figure)
                log.epoch_row(row, curves=sampled or validated or progress.epoch == 1)
                progress.outputs_every = spaced_out(cfg, progress.outputs_every, outputs.seconds(), train_seconds)
            run.share_plateau(progress)  # LR_POLICY=plateau: rank 0 validated; every rank takes its factor

            # on a new best, best.pt, generator_best.pt and last.pt (a resume from before could replace
            # them with a worse G); on a save, generator.pt, a snapshot every SNAPSHOT_EVERY epochs, and
            # last.pt, written last: it marks the epoch as done (a kill before it redoes the epoch)
            if save or best:
                run.save_checkpoint(progress, model, rank_rngs, train_data, last=save or best, export=save,
                                    snapshot=save and snapshot, best=best)
            barrier(ranks.world_size)
            if stop_signal and not last:  # Ctrl-C or SIGTERM on any rank: saved; the printed command resumes
                return run.stopped(stop, stop_signal, progress)
        return run.finished(stop, stop_signal)  # a stop agreed at the very end: done, with the stop's exit code


if __name__ == "__main__":
    try:
        code = exit_on_error(main, interrupted="interrupted by Ctrl-C before training started: nothing saved",
                             terminated="stopped by SIGTERM before training started: nothing saved")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(code)
