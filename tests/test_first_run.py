"""The first run's early feedback: sample grids from step 0, an early and a time-based checkpoint, separate
PSNR/SSIM axes in curves.png. Tiny in-process runs; time is a replaced clock, never slept or measured."""
import itertools
from pathlib import Path

import pytest

from harness import run as harness_run
from harness import run_log
import train
from harness.checkpoint import load_checkpoint
from harness.configurator import load_config
from conftest import tiny_args
from test_train import Crash, run_training
from harness.errors import ConfigError

# 8 images at BATCH_SIZE 1: 8 steps per epoch, 2 epochs
FAST = dict(BATCH_SIZE=1, VAL_EVERY=0)


def grids(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "samples").glob("*.png")}


def test_early_grids_from_step_0_then_doubling(data, tmp_path, monkeypatch):
    monkeypatch.setattr(harness_run, "EARLY_SAMPLE_STEPS", 2)  # steps 0, 2, 4 (8 ends epoch 1: its epoch grid)
    assert run_training(data, tmp_path / "run", **FAST)["code"] == 0
    assert grids(tmp_path / "run") == {"step_000000.png", "step_000002.png", "step_000004.png",
                                       "epoch_0001.png", "epoch_0002.png"}


def test_step_0_grid_is_written_before_the_first_step(data, tmp_path):
    run_dir = tmp_path / "run"

    def crash_before_first_step(n):
        assert (run_dir / "samples" / "step_000000.png").exists()  # already there when step 1 starts
        raise Crash
    with pytest.raises(Crash):
        run_training(data, run_dir, on_step=crash_before_first_step, **FAST)


def test_resume_does_not_rewrite_early_grids(data, tmp_path, monkeypatch):
    monkeypatch.setattr(harness_run, "EARLY_SAMPLE_STEPS", 2)
    run_dir = tmp_path / "run"

    def crash_at_6(n):  # steps 1-5 done: grids 0, 2, 4; last.pt after step 3
        if n == 6:
            raise Crash
    with pytest.raises(Crash):
        run_training(data, run_dir, on_step=crash_at_6, CHECKPOINT_EVERY_STEPS=3, **FAST)
    assert grids(run_dir) == {"step_000000.png", "step_000002.png", "step_000004.png"}
    for p in (run_dir / "samples").glob("*.png"):
        p.unlink()
    assert run_training(data, run_dir, CHECKPOINT_EVERY_STEPS=3, **FAST)["code"] == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 16
    # steps 0 and 2 were before the checkpoint (step 3): not repeated; step 4 was after it
    assert grids(run_dir) == {"step_000004.png", "epoch_0001.png", "epoch_0002.png"}


def last_pt_saves(data: Path, run_dir: Path, monkeypatch, minutes_per_clock_call: float, **overrides) -> list[int]:
    """Steps at which last.pt was written, with a clock that advances by minutes_per_clock_call on each reading."""
    ticks = itertools.count()
    monkeypatch.setattr(harness_run, "clock", lambda: 60 * minutes_per_clock_call * next(ticks))
    steps, real_write = [], harness_run.CheckpointWriter.write

    def write(self, files):
        steps.extend(ckpt["step"] for ckpt, path in files if path.name == "last.pt")
        return real_write(self, files)
    monkeypatch.setattr(harness_run.CheckpointWriter, "write", write)
    assert run_training(data, run_dir, **FAST, **overrides)["code"] == 0
    return steps


def test_time_based_checkpoint_refresh(data, tmp_path, monkeypatch):
    # one clock reading per step (plus one after each save): 2.5 minutes are due on every 3rd reading
    saves = last_pt_saves(data, tmp_path / "a", monkeypatch, 1.0, CHECKPOINT_EVERY_MINUTES=2.5)
    mid_epoch = [s for s in saves if s % 8]
    assert mid_epoch and saves[-1] == 16
    # 2.5 minutes are 3 readings: never timed saves at two consecutive steps of an epoch (a save at every step
    # would be the setting read as seconds)
    gaps = [b - a for a, b in zip(mid_epoch, mid_epoch[1:]) if (a - 1) // 8 == (b - 1) // 8]
    assert gaps and min(gaps) >= 2, saves
    # the timed checkpoint is a full resumable one
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["step"] == 16


def test_time_based_checkpoint_off_or_not_due(data, tmp_path, monkeypatch):
    """CHECKPOINT_EVERY_MINUTES=0: last.pt at every epoch end. On, but never due (a frozen clock): an epoch end saves
    only at the run's end (or for a snapshot or a stop), so a GPU's seconds-long epochs don't each write 0.7 GB."""
    assert last_pt_saves(data, tmp_path / "off", monkeypatch, 1.0, CHECKPOINT_EVERY_MINUTES=0) == [8, 16]
    assert last_pt_saves(data, tmp_path / "frozen", monkeypatch, 0.0, CHECKPOINT_EVERY_MINUTES=0.1) == [16]
    assert last_pt_saves(data, tmp_path / "snap", monkeypatch, 0.0, CHECKPOINT_EVERY_MINUTES=0.1,
                         SNAPSHOT_EVERY=1) == [8, 16]


def test_first_checkpoint_after_first_checkpoint_step(data, tmp_path, monkeypatch):
    monkeypatch.setattr(harness_run, "FIRST_CHECKPOINT_STEP", 3)
    assert last_pt_saves(data, tmp_path / "run", monkeypatch, 0.0, CHECKPOINT_EVERY_MINUTES=0) == [3, 8, 16]


def test_checkpoint_minutes_must_not_be_negative():
    with pytest.raises(ConfigError, match="CHECKPOINT_EVERY_MINUTES"):
        load_config(tiny_args(Path("."), Path("."), CHECKPOINT_EVERY_MINUTES=-1))


def test_curves_draw_psnr_ssim_and_the_ratio_on_separate_axes(tmp_path):
    rows = [{"epoch": str(e), "d_real": "0.5", "d_fake": "0.5", "g_gan": "1.0", "g_l1": "0.3", "val_l1": "0.3",
             "val_psnr": str(12 + e / 10), "val_ssim": str(0.2 + e / 100), "val_ratio": str(0.9 - e / 100)}
            for e in (1, 2, 3)]
    fig = run_log.plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    axes_of = {line.get_label(): line.axes for ax in fig.axes for line in ax.lines}
    assert len({axes_of[k] for k in ("val_l1", "val_psnr", "val_ssim", "val_ratio")}) == 4
    low, high = axes_of["val_ssim"].get_ylim()
    assert high - low < 0.2  # scaled to SSIM's own range, not stretched to PSNR's ~12
