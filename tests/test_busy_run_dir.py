"""A second run on a RUN_DIR that another run holds, and stop signals before training starts, as real processes.

- torchrun (2 CPU processes, gloo) on a busy RUN_DIR: rank 0 takes the lock before any collective, every rank
  learns the outcome, and every rank leaves with one `error:` line and exit 1: no gloo "Connection closed by peer"
  traceback from a rank left waiting in a barrier. (torchrun itself then reports the failed ranks in its own
  summary; see docs/distributed.md.)
- SIGTERM during the data scan ends the run as one Ctrl-C does: one line, nothing left in RUN_DIR (not even a
  folder holding only .lock), exit 143.

    python -m pytest tests/test_busy_run_dir.py -q
"""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, interrupted_at, tiny_args
from harness.run_lock import RunDirLock

FAST = dict(VAL_EVERY=0, SAMPLE_EVERY=0)
LAUNCH_TIMEOUT_S = 300


def rank_logs(log_dir: Path, nproc: int, stream: str) -> list[str]:
    found = [list(log_dir.glob(f"*/attempt_0/{rank}/{stream}.log")) for rank in range(nproc)]
    return [files[0].read_text() if files else "" for files in found]


def test_the_lock_is_released_only_after_the_last_checkpoint_is_on_disk(tiny_data, tmp_path, monkeypatch):
    """However a run ends (here: an error right after the last epoch's save began), the background checkpoint
    write is waited for before RUN_DIR's lock goes: a job restarted at once sees the newest last.pt."""
    import train
    from harness import run as harness_run
    events = []
    wait, release = harness_run.CheckpointWriter.wait, RunDirLock.release
    monkeypatch.setattr(harness_run.CheckpointWriter, "wait", lambda self: (events.append("wait"), wait(self))[1])
    monkeypatch.setattr(RunDirLock, "release", lambda self: (events.append("release"), release(self))[1])

    def fail(*args, **kwargs):
        raise OSError("the disk went away")
    monkeypatch.setattr(harness_run.TrainingRun, "finished", fail)
    with pytest.raises(OSError, match="went away"):
        train.main(tiny_args(tiny_data, tmp_path / "run", N_EPOCHS_DECAY=0, **FAST))
    assert "release" in events and "wait" in events[:events.index("release")], events
    assert "wait" not in events[events.index("release"):], events  # nothing left to write once it is released


def test_a_second_torchrun_on_a_busy_run_dir_leaves_every_rank_with_one_line(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    held = RunDirLock(run_dir)  # another run holds the folder (this test process)
    try:
        log_dir = tmp_path / "logs"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               f"--log-dir={log_dir}", "--redirects=3", str(ROOT / "train.py"),
               *tiny_args(tiny_data, run_dir, **FAST)]
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
        if loopback:
            env["GLOO_SOCKET_IFNAME"] = loopback[0]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
                              start_new_session=True)
    finally:
        held.release()
    errors = rank_logs(log_dir, 2, "stderr")
    described = f"torchrun exit {proc.returncode}:\n{proc.stderr[-3000:]}\n" + "\n".join(
        f"--- rank {r} stderr:\n{e[-3000:]}" for r, e in enumerate(errors))
    assert proc.returncode == 1, described
    for rank, err in enumerate(errors):
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: RUN_DIR={run_dir} is in use by another training run "
                                                       f"(PID {os.getpid()})"), described
    for text in (proc.stderr, *errors):
        assert "Connection closed by peer" not in text and "gloo" not in text.lower(), described
    assert not run_dir.exists(), described  # the holder's lock removed it: the refused run wrote nothing there


def test_sigterm_during_the_data_scan_ends_the_run_as_one_ctrl_c_does(tiny_data, tmp_path):
    """A real `python train.py`, held inside its scan of the data files, gets one SIGTERM."""
    run_dir = tmp_path / "run"
    ended = interrupted_at("harness.data_checks.check_image", "train.py", tiny_args(tiny_data, run_dir, **FAST),
                           tmp_path, sig=signal.SIGTERM)
    assert ended.returncode == 128 + signal.SIGTERM, (ended.returncode, ended.stderr[-2000:])
    assert ended.stderr.strip() == "stopped by SIGTERM before training started: nothing saved"
    assert not run_dir.exists()
