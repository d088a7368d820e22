"""A finished run always ends its process: `python train.py` exits by itself right after printing `done:`,
whatever the number of images and DataLoader workers, and a stop signal that arrives after training still ends it.

Each case is the real CLI in a subprocess with a hard timeout (startup is most of its ~10 s on shared cores);
two run at a time. Total ~2 min on 2 shared cores.

    python -m pytest tests/test_exit.py -q
"""
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, tiny_args, write_pairs

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
EXIT_AFTER_DONE_S = 20  # seconds from `done:` to the process's end; a hang is forever (the bug: workers joined)
RUN_TIMEOUT_S = 240  # hard limit per run: startup and training too


def start(args: list[str], out: Path) -> tuple[subprocess.Popen, Path]:
    log = open(out, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc, out


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run and its DataLoader workers (they ignore SIGTERM)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def group_alive(pgid: int, grace_s: float = 5.0) -> bool:
    """Whether any process of the run's process group (its DataLoader workers) is still there after grace_s."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


def single_image_ratio_is_undefined(output: str, run_dir: Path) -> bool:
    import csv
    val_line = next((line for line in output.splitlines() if line.startswith("  val:")), "")
    with open(run_dir / "log.csv", newline="") as f:
        row = list(csv.DictReader(f))[0]
    return "own/other L1 ratio n/a (needs 2+ images)" in val_line and "nan" not in val_line and \
        row["val_ratio"] == "" and float(row["val_l1"]) > 0


def finish(proc: subprocess.Popen, out: Path, deadline: float) -> tuple[float | None, str]:
    """Wait for `done:` in the output, then for the exit. -> (seconds from done to exit or None if it hung, output)."""
    while "done:" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = time.monotonic()
    try:
        proc.wait(timeout=max(0.0, min(EXIT_AFTER_DONE_S, deadline - seen)))
        return time.monotonic() - seen, out.read_text()
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return None, out.read_text()


# (training images, validation images, workers): every worker count with 1 and 2 validation images, and
# 1 to 6 training images; the hangs this guards against came with a single validation image and 2 workers
CASES = [(n_train, n_val, workers) for (n_val, workers), n_train in
         zip(itertools.product((1, 2), (0, 1, 2, 2)), itertools.cycle((1, 4, 6, 5, 2, 3)))]
CASES += [(4, 1, 2), (6, 1, 2), (5, 1, 1), (3, 2, 2)]


@pytest.mark.timeout(900)  # 6 pairs of runs, each pair with its own RUN_TIMEOUT_S
def test_every_finished_run_exits_by_itself(tmp_path):
    """12 tiny runs, two at a time: each prints `done:`, exits 0 within seconds, and leaves no worker behind.
    With one validation image the own/other ratio is undefined: `n/a` in the log line, empty in log.csv."""
    for n in range(1, 7):
        write_pairs(tmp_path / f"train{n}", n, seed=0)
    for n in (1, 2):
        write_pairs(tmp_path / f"val{n}", n, seed=1)
    failures = []
    cases = list(enumerate(CASES))
    for pair in (cases[i:i + 2] for i in range(0, len(cases), 2)):
        running = []
        for i, (n_train, n_val, workers) in pair:
            args = tiny_args(tmp_path, tmp_path / f"run{i}", TRAIN_DIR=tmp_path / f"train{n_train}",
                             VAL_DIR=tmp_path / f"val{n_val}", NUM_WORKERS=workers, N_EPOCHS_DECAY=0, N_SAMPLES=4)
            running.append(((n_train, n_val, workers), tmp_path / f"run{i}", *start(args, tmp_path / f"run{i}.out")))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for case, run_dir, proc, out in running:
            seconds, text = finish(proc, out, deadline)
            if seconds is None or proc.returncode != 0 or "done:" not in text:
                failures.append(f"{case} (train, val, workers): exit {proc.returncode}, "
                                f"{'hung after done' if seconds is None else f'{seconds:.1f} s'}:\n{text[-1500:]}")
            elif group_alive(proc.pid):
                failures.append(f"{case} (train, val, workers): exited, but left processes behind")
                kill_group(proc)
            elif case[1] == 1 and not single_image_ratio_is_undefined(text, run_dir):
                failures.append(f"{case} (train, val, workers): the ratio of one image is not reported as n/a")
    assert not failures, "\n".join(failures)


# the CLI, with the curves plot after the first epoch failing: an unexpected error with a traceback
CRASHING_CLI = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
from harness import run_log
def fail(*args, **kwargs):
    raise RuntimeError("simulated failure after the first epoch")
run_log.plot_curves = fail
sys.argv = ["train.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_run_that_crashes_with_a_traceback_still_exits(tmp_path):
    """An unexpected error keeps the traceback (and with it train.main's frame and its DataLoader) alive until
    the interpreter exits, where workers left running would be waited for forever (this hung before)."""
    write_pairs(tmp_path / "train", 4, seed=0)
    write_pairs(tmp_path / "val", 1, seed=1)
    args = tiny_args(tmp_path, tmp_path / "run", NUM_WORKERS=2, N_EPOCHS_DECAY=0)
    log = open(tmp_path / "out", "w")
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_CLI, str(ROOT), *args], cwd=ROOT, env=ENV,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while "simulated failure" not in (tmp_path / "out").read_text() and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        proc.wait(timeout=EXIT_AFTER_DONE_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail("the crashed run did not exit:\n" + (tmp_path / "out").read_text()[-2000:])
    out = (tmp_path / "out").read_text()
    assert proc.returncode == 1 and "RuntimeError: simulated failure after the first epoch" in out, out[-2000:]


@pytest.mark.parametrize("outcome", ["done", "error", "stop"])
def test_training_leaves_no_worker_processes_and_gives_the_signals_back(tiny_data, tmp_path, monkeypatch, outcome):
    """train.main shuts its DataLoader workers down itself on every way out, even while something (here the
    exception's traceback, held by pytest.raises; in the CLI, sys.last_traceback) still holds the loader, and
    gives SIGINT/SIGTERM their previous handlers back: after the loop a SIGTERM must end the process."""
    import multiprocessing

    import train
    from harness import metrics as harness_metrics
    sentinel = lambda signum, frame: None  # noqa: E731
    signal.signal(signal.SIGTERM, sentinel)
    args = tiny_args(tiny_data, tmp_path / "run", NUM_WORKERS=2, N_EPOCHS_DECAY=0, SAMPLE_EVERY=0)
    if outcome == "error":
        def fail(*a, **k):
            raise RuntimeError("simulated failure in validation")
        monkeypatch.setattr(harness_metrics, "evaluate_generator", fail)
        with pytest.raises(RuntimeError, match="simulated failure") as caught:
            train.main(args)
        assert caught.value.__traceback__ is not None  # the frame (and its loader) is still referenced here
    elif outcome == "stop":
        real_step = train.train_step

        def step_then_sigint(*a, **k):
            losses = real_step(*a, **k)
            os.kill(os.getpid(), signal.SIGINT)
            return losses
        monkeypatch.setattr(train, "train_step", step_then_sigint)
        assert train.main(args) == 0
        assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    else:
        assert train.main(args) == 0
    assert multiprocessing.active_children() == []
    assert signal.getsignal(signal.SIGTERM) is sentinel
