"""When a run spends time on anything but training: checkpoints written by a background thread (the training thread
only copies the state to CPU memory), and samples, validation and curves kept under EVAL_BUDGET of the time. Clocks
are replaced, writes are held by events with timeouts: nothing here depends on the machine's speed. CPU, ~20 s.

    python -m pytest tests/test_cadence.py -q
"""
import csv
import errno
import os
import threading

import pytest
import torch

import train
from conftest import tiny_args
from harness import run as harness_run
from harness import metrics, run_log
from harness.checkpoint import CheckpointWriter, cpu_copy
from harness.errors import CheckpointError

WAIT_S = 60  # every wait for the writer thread is bounded


def held_save(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """torch.save that signals `started` and then waits for `release` (at most WAIT_S) before writing."""
    started, release, real_save = threading.Event(), threading.Event(), torch.save

    def save(obj, f, *args, **kwargs):
        started.set()
        assert release.wait(WAIT_S), "the test never released the write"
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    return started, release


def test_a_checkpoint_write_does_not_hold_the_caller_and_saves_the_state_as_it_was(tmp_path, monkeypatch):
    started, release = held_save(monkeypatch)
    live = torch.nn.Linear(3, 3)
    writer = CheckpointWriter()
    writer.write([(cpu_copy(live.state_dict()), tmp_path / "last.pt")])  # returns while the write is held
    assert started.wait(WAIT_S) and not (tmp_path / "last.pt").exists()
    with torch.no_grad():
        live.weight += 1  # training goes on meanwhile
    release.set()
    writer.wait()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(saved["weight"] + 1, live.weight.detach())  # the copy from the moment of the save


def test_a_second_write_waits_for_the_first(tmp_path, monkeypatch):
    started, release = held_save(monkeypatch)
    writer = CheckpointWriter()
    writer.write([({"n": 1}, tmp_path / "a.pt")])
    assert started.wait(WAIT_S)
    second = threading.Thread(target=writer.write, args=([({"n": 2}, tmp_path / "b.pt")],))
    second.start()
    second.join(0.5)  # bounded look: still waiting for the first write (which cannot finish before release)
    assert second.is_alive() and not (tmp_path / "a.pt").exists()
    release.set()
    second.join(WAIT_S)
    writer.wait()
    assert torch.load(tmp_path / "a.pt")["n"] == 1 and torch.load(tmp_path / "b.pt")["n"] == 2


def test_a_failed_background_write_is_raised_on_the_training_thread_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    writer = CheckpointWriter()
    writer.write([({"step": 1}, path)])
    writer.wait()

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full)
    writer.write([({"step": 2}, path)])  # fails in the background ...
    with pytest.raises(CheckpointError, match="No space left on device.*intact"):
        writer.wait()  # ... and is raised here (or at the next write)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_slow_samples_and_validation_are_spaced_out_to_stay_within_eval_budget(tiny_data, tmp_path, monkeypatch,
                                                                             capsys):
    """A replaced clock: every reading advances it 1 s (a step reads it about once); validation takes 100 s. With
    EVAL_BUDGET=0.1 it would take far more than a tenth of the time, so after epoch 1 it moves to the end: 6 epochs
    validate at 1 and 6 only, and the run says so. With EVAL_BUDGET=0 (off) every epoch validates."""
    now = [0.0]

    def clock():
        now[0] += 1
        return now[0]
    real_evaluate = metrics.evaluate_generator

    def slow_evaluate(*args, **kwargs):
        now[0] += 100
        return real_evaluate(*args, **kwargs)
    monkeypatch.setattr(harness_run, "clock", clock)
    monkeypatch.setattr(metrics, "evaluate_generator", slow_evaluate)
    monkeypatch.setattr(run_log, "plot_curves", lambda rows, path: None)
    for budget, validated in ((0.1, ["1", "6"]), (0, ["1", "2", "3", "4", "5", "6"])):
        run_dir = tmp_path / f"budget{budget}"
        assert train.main(tiny_args(tiny_data, run_dir, N_EPOCHS=6, N_EPOCHS_DECAY=0, EVAL_BUDGET=budget)) == 0
        rows = (run_dir / "log.csv").read_text().splitlines()
        header = rows[0].split(",")
        values = [dict(zip(header, r.split(","))) for r in rows[1:]]
        assert [v["epoch"] for v in values if v["val_l1"]] == validated
        assert sorted(p.name for p in (run_dir / "samples").glob("epoch_*.png")) == \
            [f"epoch_{int(e):04d}.png" for e in validated]
    assert "from now on every" in capsys.readouterr().out

    # the spacing is part of the run's state: resumed (here extended to 6 epochs), it goes on validating only at the
    # end; a resume that forgot it would validate again at epoch 4 and only then space the outputs out
    run_dir = tmp_path / "resumed"
    assert train.main(tiny_args(tiny_data, run_dir, N_EPOCHS=3, N_EPOCHS_DECAY=0, EVAL_BUDGET=0.1)) == 0
    assert train.main(tiny_args(tiny_data, run_dir, N_EPOCHS=6, N_EPOCHS_DECAY=0, EVAL_BUDGET=0.1)) == 0
    rows = list(csv.DictReader((run_dir / "log.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows if r["val_l1"]] == ["1", "3", "6"]


def test_an_epoch_of_unknown_length_never_spaces_the_outputs_out(capsys):
    """spaced_out weighs the outputs against a whole epoch's training time; an epoch resumed at its very end
    trained nothing (0 s: unknown) and must not push validation to the end of the run."""
    from harness.configurator import default_settings
    cfg = default_settings() | {"EVAL_BUDGET": 0.1}
    assert harness_run.spaced_out(cfg, 1, output_seconds=5.0, train_seconds=0.0) == 1
    assert harness_run.spaced_out(cfg, 1, output_seconds=5.0, train_seconds=10.0) == 5  # 5 s against 1 s allowed
    assert capsys.readouterr().out.count("from now on every 5") == 1


def test_the_schedule_is_printed_at_the_start(tiny_data, tmp_path, capsys):
    assert train.main(tiny_args(tiny_data, tmp_path / "run", N_EPOCHS_DECAY=0, CHECKPOINT_EVERY_MINUTES=7.5,
                                EVAL_BUDGET=0.2, VAL_EVERY=2, SNAPSHOT_EVERY=0)) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("schedule: "))
    assert "every 7.5 min (first after step 100)" in line and "validation every 2 epoch(s) and at the last" in line
    assert "kept under 20% of the time" in line and "snapshots" not in line
