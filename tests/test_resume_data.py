"""A resume continues on the images it was trained on, not only on files of the same names: the paper's datasets
are all named 1.jpg ... N.jpg, so another dataset (or a re-exported one) in the same folder passes a check of names.
The fingerprint (harness.data_checks.data_fingerprint) also holds each file's size and a hash of its first and
last bytes; a copy with new modification times is still the same data.

    python -m pytest tests/test_resume_data.py -q
"""
import shutil
from pathlib import Path

import pytest

import train
from conftest import tiny_args, write_pairs
from harness.errors import CheckpointError

FAST = dict(VAL_EVERY=0, SAMPLE_EVERY=0)


@pytest.fixture
def copied_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(data, run folder): a copy of the session's finished tiny run and its data (new modification times)."""
    shutil.copytree(tiny_run / "data", tmp_path / "data")
    shutil.copytree(tiny_run / "run" / "checkpoints", tmp_path / "run" / "checkpoints")
    return tmp_path / "data", tmp_path / "run"


def test_other_images_under_the_same_names_are_refused(copied_run, capsys):
    data, run_dir = copied_run
    last = run_dir / "checkpoints" / "last.pt"
    write_pairs(data / "train", 8, seed=7)  # 000.png ... 007.png again: other pictures, the same names
    with pytest.raises(CheckpointError) as e:
        train.main(tiny_args(data, run_dir, N_EPOCHS=3, N_EPOCHS_DECAY=0, **FAST))
    assert str(e.value).startswith(f"cannot resume from {last}: it was trained on ")
    assert "(8 images, the same file names with other contents). Start a fresh run in a new RUN_DIR" in str(e.value)


def test_a_copy_of_the_same_images_resumes(copied_run, capsys):
    """Copied files (new modification times, another folder): the same data, resumed with the moved-folder note."""
    data, run_dir = copied_run
    assert train.main(tiny_args(data, run_dir, N_EPOCHS=3, N_EPOCHS_DECAY=0, **FAST)) == 0
    out = capsys.readouterr().out
    assert "note: the training folder moved from " in out and "(the same 8 files)" in out


def test_a_finished_run_says_it_is_finished_not_resuming_past_its_last_epoch(copied_run, capsys):
    """Run again after its last epoch: "already finished its 2 epochs", never "resuming ...: epoch 3"."""
    data, run_dir = copied_run
    assert train.main(tiny_args(data, run_dir, **FAST)) == 0
    out = capsys.readouterr().out
    assert "already finished its 2 epochs; nothing to do" in out and "resuming from" not in out, out
