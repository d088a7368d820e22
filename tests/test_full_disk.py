"""A full disk during a checkpoint save: torch's zip writer reports ENOSPC not as OSError but as
`RuntimeError: [enforce fail at inline_container.cc...] unexpected pos ...`. The save must still end the run with
the one-line error the failure table promises (exit 1), the previous last.pt intact and no temp file left. The
writer's failure is simulated (a full tmpfs needs root): torch.save writes part of the file, then raises as torch
does.

    python -m pytest tests/test_full_disk.py -q
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_args
from harness.checkpoint import CheckpointError, atomic_save

WRITER_ERROR = ("[enforce fail at inline_container.cc:664] . unexpected pos 1344 vs 1232")

# `python train.py ARGS` whose torch.save fails as torch's writer does on a full disk, from the save of step
# sys.argv[1] on (CHECKPOINT_EVERY_STEPS=2: the save of step 2 succeeds, that of step 4 fails).
FULL_FROM_STEP = r"""
import runpy, sys, torch
full_from, sys.argv = int(sys.argv[1]), sys.argv[2:]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step", 0) >= full_from:
        f.write(b"PK\x03\x04 the first records")
        raise RuntimeError("%s")
    return real_save(obj, f, *args, **kwargs)
torch.save = save
runpy.run_path(sys.argv[0], run_name="__main__")
""" % WRITER_ERROR


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_writer_failure_is_a_checkpoint_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_save({"step": 1, "generator": torch.ones(3)}, path)
    before = sha(path)

    def full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half")
        raise RuntimeError(WRITER_ERROR)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as e:
        atomic_save({"step": 2, "generator": torch.zeros(3)}, path)
    message = str(e.value)
    assert message.startswith(f"could not write {path}: torch's writer failed (") and "unexpected pos" in message
    assert "as it does when the disk is full" in message and "The previous last.pt (if any) is intact" in message
    assert sha(path) == before and os.listdir(path.parent) == ["last.pt"]

    def other(obj, f, *args, **kwargs):  # any other RuntimeError is a bug, and stays one
        raise RuntimeError("something else")
    monkeypatch.setattr(torch, "save", other)
    with pytest.raises(RuntimeError, match="something else"):
        atomic_save({"step": 3}, path)


def test_a_full_disk_during_a_background_save_ends_the_run_with_one_line(tiny_data, tmp_path):
    """A real `python train.py` run: the background save of step 4 fails; the run stops with exit 1 and one
    `error:` line, last.pt still holds step 2, and no temp file is left."""
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_data, run_dir, CHECKPOINT_EVERY_STEPS=2, VAL_EVERY=0, SAMPLE_EVERY=0, BATCH_SIZE=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-c", FULL_FROM_STEP, "4", str(ROOT / "train.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: could not write {run_dir / 'checkpoints' / 'last.pt'}")
    assert "intact" in errors[0]
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 2
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["last.pt"]
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]
