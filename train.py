"""Train pix2pix: a U-Net generator against a conditional PatchGAN (Isola et al., CVPR 2017, arXiv 1611.07004).

    python train.py                                   # built-in synthetic labels->photo set, paper settings
    python train.py --PRESET=facades --TRAIN_DIR=data/facades/train --VAL_DIR=data/facades/val
    torchrun --standalone --nproc_per_node=2 train.py # several GPUs (or CPU processes) with DDP

Settings live in config.py; any of them can be overridden with --KEY=value. Stop at any time with Ctrl-C: the step
finishes, a checkpoint is written, and the command it prints continues the run where it stopped (bit-exactly on
the CPU, and on GPUs with --DETERMINISTIC=True).

Read pix2pix.py first: the networks, the objective, one training step. This file runs them, top to bottom:
config -> data -> models -> resume -> the epoch loop -> the end of each epoch. What keeps a run alive for days
(checkpoints, stop signals, the NaN watch, DDP agreement, logs) lives in harness/ and appears here as named calls.
"""
import sys

import torch
import torch.nn as nn

from dataset import AugmentationSampler
from harness.configurator import load_config
from harness.cuda_graph import training_step
from harness.distributed import setup_distributed
from harness.errors import exit_on_error
from harness.run import TrainingRun
from harness.step_guard import StepGuard
from pix2pix import (Pix2Pix, build_models, lr_factor, make_grad_scalers, make_optimizers, set_learning_rate,
                     train_step)
from utils import pick_runtime, seed_everything, wrap_for_training


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(argv)  # config.py < PRESET < --KEY=value, each checked before any heavy work
    ranks = setup_distributed(cfg["DIST_TIMEOUT_S"], cfg["DEVICE"])  # under torchrun: this process's rank
    runtime = pick_runtime(cfg, ranks.local_rank if ranks.world_size > 1 else None)  # device, precision, layout
    with TrainingRun(cfg, ranks, runtime, argv) as run:  # RUN_DIR checked; clean-up on every way out
        seed_everything(cfg["SEED"] + ranks.rank)  # the models are identical anyway: DDP broadcasts rank 0's

        # data: A|B pairs, each file decoded once now so that a bad one stops the run before step 1.
        # paper §6.2: random jitter (resize to 286, random 256 crop) and mirroring, the same for input and target
        train_set, val_set = run.training_data()
        sampler = AugmentationSampler(len(train_set), cfg["SEED"], ranks.rank, ranks.world_size)
        loader = run.loader(train_set, sampler)

        # models and optimisers, paper §3.3
        G, D = build_models(cfg)
        if cfg["SYNC_BN"] and ranks.world_size > 1:
            G, D = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
        G = G.to(runtime.device, memory_format=runtime.memory_format)
        D = D.to(runtime.device, memory_format=runtime.memory_format)
        model = Pix2Pix(G, D, *make_optimizers(G, D, cfg, runtime.device),
                        *make_grad_scalers(runtime.device, runtime.precision), cfg["L1_LAMBDA"], runtime.amp)

        progress = run.resume(model)  # a checkpoint's weights, optimisers, RNGs and position, or a fresh start
        wrap_for_training(model, cfg["COMPILE"], ranks.world_size, runtime.device)  # DDP, torch.compile
        if not run.begin(progress, model):  # run log, stop signals, the untrained generator's samples
            return 0
        guard = StepGuard(cfg["ON_NAN"], runtime.device, runtime.precision == "fp16", run.stop_or_save_flags)
        # guard.begin_step, train_step, guard.end_step: eagerly, or replayed as one CUDA graph (CUDA_GRAPH)
        step = training_step(model, guard, train_step, cfg, runtime, ranks.world_size)

        for epoch in range(progress.epoch, run.total_epochs):
            # the learning rate: constant for N_EPOCHS, then linearly to zero over N_EPOCHS_DECAY (§6.2)
            lr = cfg["LEARNING_RATE"] * lr_factor(epoch, cfg["N_EPOCHS"], cfg["N_EPOCHS_DECAY"])
            set_learning_rate((model.opt_G, model.opt_D), lr)
            sampler.set_epoch(epoch, skip=progress.images_in_epoch)  # a resumed epoch skips what it trained on
            guard.start_epoch()
            for x, y in run.progress_bar(loader, epoch, progress):
                x, y = runtime.to_device(x), runtime.to_device(y)
                step(x, y, progress.step)  # a poisoned step is not applied, not counted (ON_NAN=skip: undone)
                progress.step += 1
                progress.images_in_epoch += len(x) * ranks.world_size
                if run.after_step(progress, model, guard, len(x) * ranks.world_size):  # logs, grids, timed saves
                    return run.stop.exit_code()  # Ctrl-C or SIGTERM: saved; the printed command resumes
            progress.epoch, progress.images_in_epoch = epoch + 1, 0
            if run.end_of_epoch(progress, model, guard, lr):  # samples, validation, log row, checkpoints, exports
                return run.stop.exit_code()
        return run.finished()


if __name__ == "__main__":
    try:
        code = exit_on_error(main, interrupted="interrupted by Ctrl-C before training started: nothing saved")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(code)
