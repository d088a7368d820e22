"""Checkpoints that move between machines (issue 14): resume under another PRECISION, process count,
CHANNELS_LAST or COMPILE; the GPU RNG of the GPU in use only; set_device for DEVICE=cuda:N; few device->host
reads per training step; fp16 details; CPU exports; DETERMINISTIC.

    python -m pytest tests/test_resume_anywhere.py -q
"""
import collections
import signal
import sys
from pathlib import Path

import pytest
import torch

import run_log
import train
from conftest import tiny_args

# device->host reads: every way Python code turns a tensor into a host value (a sync on a GPU)
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def in_data_pipeline(frame) -> bool:
    """The DataLoader's own work (NUM_WORKERS=0 runs it here): host tensors before .to(device), not device reads."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.endswith("dataset.py") or "torch/utils/data" in name:
            return True
        frame = frame.f_back
    return False


def count_host_reads_per_step(data: Path, run_dir: Path, **overrides) -> list[int]:
    """Device->host reads in each training step of a tiny CPU run of 8 steps (BATCH_SIZE 1, no logging step, no
    epoch end inside the counted steps): the reads between the start of step n and of step n+1, for n = 2..6."""
    counts, starts = collections.Counter(), []
    real_step = train.train_step

    def step(*args, **kwargs):
        starts.append(sum(counts.values()))
        return real_step(*args, **kwargs)

    def counting(name, real):
        def read(self, *args, **kwargs):
            if not in_data_pipeline(sys._getframe(1)):
                counts[name] += 1
            return real(self, *args, **kwargs)
        return read

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "train_step", step)
        mp.setattr(train, "measure_peak_flops", lambda *a, **k: 1e12)
        mp.setattr(run_log, "plot_curves", lambda rows, path: None)
        for name in READS:
            mp.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        try:
            assert train.main(tiny_args(data, run_dir, **{"BATCH_SIZE": 1, "N_EPOCHS": 1, "N_EPOCHS_DECAY": 0,
                                                          "VAL_EVERY": 0, "SAMPLE_EVERY": 0, "LOG_EVERY": 1000,
                                                          **overrides})) == 0
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
    assert len(starts) == 8
    return [b - a for a, b in zip(starts[1:6], starts[2:7])]


def test_a_training_step_reads_the_device_at_most_twice(tiny_data, tmp_path):
    """One fused finiteness check per loss group (D's, then G's) and nothing else: the losses stay on the device
    until a LOG_EVERY step or the epoch end (the old code read 8 values per step)."""
    assert count_host_reads_per_step(tiny_data, tmp_path / "run") == [2] * 5
