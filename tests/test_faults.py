"""Faults during training never cost a run: SIGINT/SIGTERM, kill -9 (also mid-checkpoint), a full disk or an
unwritable RUN_DIR, NaN/Inf losses, and resuming with settings that change the networks.

The signal tests run the real `python train.py` in a subprocess (~4-12 s of startup each on 2 shared cores);
the kill -9 and RUN_DIR lock tests fork their training processes from one pre-imported parent (see ZYGOTE);
everything else runs train.main in-process. Total ~3 min.

    python -m pytest tests/test_faults.py -q
"""
import csv
import errno
import hashlib
import json
import math
import os
import queue
import random
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from harness import checkpoint
from harness import configurator
import generator_model
import pix2pix
from harness import run_log
import train
from harness.checkpoint import atomic_save, load_checkpoint
from harness.errors import CheckpointError, NonFiniteLoss, RunDirError
from conftest import ROOT, interrupted_at, tiny_args, write_pairs
from dataset import PairedImageDataset

FAST = dict(VAL_EVERY=0, SAMPLE_EVERY=0)  # no validation or sample grids: only training steps
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # 1 thread: far faster on shared cores




def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_finite(ckpt: dict) -> bool:
    """Every floating tensor of every network/optimiser state in a checkpoint is finite."""
    def walk(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from walk(v)
    tensors = [t for k in ("generator", "discriminator", "opt_G", "opt_D") if k in ckpt for t in walk(ckpt[k])]
    return bool(tensors) and all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def start(args: list[str], cwd: Path = ROOT, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> tuple[str, str]:
    """proc.communicate with a timeout; a process that overruns it (and its group) is killed, and the test fails."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"train.py did not end within {timeout:.0f} s:\n{out[-2000:]}\n{err[-2000:]}")


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and, if it leads its own session, its DataLoader workers too."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass


def wait_for(condition, proc: subprocess.Popen, timeout: float = 90.0, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = finish(proc, timeout=30)
            pytest.fail(f"train.py exited early ({proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() > deadline:
            kill(proc)
            out, err = finish(proc, timeout=30)
            pytest.fail(f"timed out waiting for train.py:\n{out[-2000:]}\n{err[-2000:]}")
        time.sleep(poll)


def log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- signals

def test_sigint_saves_prints_a_working_resume_command_and_resume_finishes(tiny_data, tmp_path):
    """Ctrl-C: the step finishes, last.pt is written, exit 0, and the printed command (run dir with a space,
    RESUME=never on the first run, train.py started by its path from another folder) continues from the checkpoint
    to the end when run in that folder."""
    run_dir = tmp_path / "my run"
    args = tiny_args(tiny_data, run_dir, N_EPOCHS=2, N_EPOCHS_DECAY=0, CHECKPOINT_EVERY_STEPS=1, RESUME="never",
                     **FAST)
    last = run_dir / "checkpoints" / "last.pt"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = start(args, cwd=elsewhere)
    wait_for(last.exists, proc)
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGINT: finishing this step" in err
    ckpt = load_checkpoint(last)
    assert 0 < ckpt["step"] < 16 and all_finite(ckpt)
    assert f"saved {last} at epoch {ckpt['epoch'] + 1}, step {ckpt['step']}" in out
    command = out.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    assert command.startswith(f"python {ROOT / 'train.py'} ")  # as invoked: `python train.py` fails there

    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=elsewhere, env=ENV, text=True,
                             capture_output=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (f"resuming from {last}: epoch {ckpt['epoch'] + 1}, batch {ckpt['images_in_epoch']}, "
            f"step {ckpt['step']}") in resumed.stdout
    assert "done:" in resumed.stdout
    assert load_checkpoint(last)["step"] == 16 and [r["epoch"] for r in log_rows(run_dir)] == ["1", "2"]


def test_sigterm_to_the_whole_process_group_with_loader_workers(tiny_data, tmp_path):
    """What a batch scheduler does: SIGTERM to every process of the job, DataLoader workers included.
    Exit 128+15 with a checkpoint; the workers neither crash the run nor print their own messages."""
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_data, run_dir, N_EPOCHS=3, N_EPOCHS_DECAY=0, CHECKPOINT_EVERY_STEPS=1, NUM_WORKERS=1,
                     **FAST)
    last = run_dir / "checkpoints" / "last.pt"
    proc = start(args, start_new_session=True)
    wait_for(last.exists, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert err.count("SIGTERM: finishing this step") == 1, err[-2000:]
    assert "Traceback" not in err and "Resume with:" in out
    ckpt = load_checkpoint(last)
    assert 0 < ckpt["step"] < 24 and all_finite(ckpt)


def test_a_second_ctrl_c_aborts_without_saving(tiny_data, tmp_path, monkeypatch, capsys):
    """`python train.py` (in-process): two SIGINTs during one step. The first asks for a save after the step;
    the second aborts at once: exit 130, one line saying so, no checkpoint, no traceback."""
    run_dir = tmp_path / "run"
    real_forward, calls = generator_model.UNetGenerator.forward, []

    def forward(self, x):
        if x.device.type != "meta":
            calls.append(1)
            if len(calls) == 3:  # the third step, on the way through G
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
        return real_forward(self, x)
    monkeypatch.setattr(generator_model.UNetGenerator, "forward", forward)
    monkeypatch.setattr(sys, "argv", ["train.py", *tiny_args(tiny_data, run_dir, **FAST)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "SIGINT: finishing this step, then saving a checkpoint (Ctrl-C again to abort without saving)" in err
    assert err.rstrip().endswith("aborted by a second Ctrl-C: nothing saved after the last checkpoint")
    assert "Traceback" not in err and len(calls) == 3
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "generator.pt").exists()


def test_an_epoch_without_a_finite_step_logs_nan_losses_not_zeros():
    """A resume at an epoch's very end trains no step of it (or every step was skipped): its row's losses are NaN
    (blank in the curves), not 0.0, which would read as a perfect epoch."""
    from harness.step_guard import StepGuard
    reading = StepGuard("skip", torch.device("cpu")).read()
    assert reading.n_ok == 0 and all(math.isnan(v) for v in reading.means.values()), reading


def test_a_stop_agreed_at_an_epochs_end_saves_before_validating(tiny_data, tmp_path, monkeypatch):
    """Under torchrun a signal in an epoch's last steps is agreed at its end, before samples and validation (which
    can take minutes): last.pt holds the finished epoch before they start, so a kill during them (a scheduler's
    grace period ending) loses nothing of it. Here the agreement says SIGTERM at epoch 1's end, and validation is
    killed."""
    from harness import metrics
    calls = []

    def agree(signum, save_due, world_size, device):  # 8 images at batch 1: 8 step agreements, then the epoch's
        calls.append(1)
        return (signal.SIGTERM if len(calls) == 9 else 0), False

    def killed(*args, **kwargs):
        raise RuntimeError("killed during validation")
    monkeypatch.setattr(train, "agree_on_stop", agree)
    monkeypatch.setattr(metrics, "evaluate_generator", killed)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed during validation"):
        train.main(tiny_args(tiny_data, run_dir, CHECKPOINT_EVERY_MINUTES=600, SAMPLE_EVERY=0))
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (last["epoch"], last["images_in_epoch"], last["step"]) == (1, 0, 8)


def test_a_stop_agreed_at_the_last_epochs_end_finishes_the_run(tiny_data, tmp_path, monkeypatch, capsys):
    """Nothing is left to resume: the run says it is done (no "Resume with"), with the stop's exit code (143 for
    the SIGTERM another rank got)."""
    calls = []

    def agree(signum, save_due, world_size, device):  # 2 epochs of 8 steps: the 18th agreement is the last end's
        calls.append(1)
        return (signal.SIGTERM if len(calls) == 18 else 0), False
    monkeypatch.setattr(train, "agree_on_stop", agree)
    assert train.main(tiny_args(tiny_data, tmp_path / "run", SAMPLE_EVERY=0)) == 143
    out = capsys.readouterr().out
    assert "done: " in out and "Resume with" not in out
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 2


def test_a_sigterm_stays_a_sigterm_when_a_ctrl_c_follows():
    """A scheduler's SIGTERM, then a Ctrl-C (or a launcher's SIGINT): the run still exits 143, never the 0 of a
    Ctrl-C stop that a scheduler would read as done; a second Ctrl-C still aborts."""
    from harness.signals import StopRequest
    stop = StopRequest(announce=False, install=False)
    stop.handle(signal.SIGTERM, None)
    stop.handle(signal.SIGINT, None)
    assert stop.exit_code() == 143
    with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
        stop.handle(signal.SIGINT, None)
    ctrl_c = StopRequest(announce=False, install=False)
    ctrl_c.handle(signal.SIGINT, None)
    assert ctrl_c.exit_code() == 0  # a Ctrl-C stop: saved, the user's choice


def test_one_ctrl_c_during_the_data_scan_ends_the_run_at_once_and_says_so(tiny_data, tmp_path):
    """A real `python train.py`, held by the test inside its scan of the data files (before training: nothing to
    save yet), gets one SIGINT: exit 130 and one line saying so (not "aborted by a second Ctrl-C"), no traceback,
    nothing left in RUN_DIR."""
    run_dir = tmp_path / "run"
    ended = interrupted_at("harness.data_checks.check_image", "train.py", tiny_args(tiny_data, run_dir, **FAST),
                           tmp_path)
    assert ended.returncode == 130, ended.stderr[-2000:]
    assert ended.stderr.strip() == "interrupted by Ctrl-C before training started: nothing saved"
    assert not run_dir.exists()


def test_fewer_images_than_processes_is_a_clear_error(tmp_path, monkeypatch):
    """3 processes, 2 training images: one process would get none. A DatasetError before any training."""
    from conftest import write_pairs
    from harness import run as harness_run
    from harness.distributed import Ranks
    from harness.errors import DatasetError
    write_pairs(tmp_path / "data" / "train", 2)
    write_pairs(tmp_path / "data" / "val", 1)
    monkeypatch.setattr(train, "setup_distributed", lambda *args: Ranks(0, 0, 3))  # rank 0 of 3 (torchrun)
    monkeypatch.setattr(harness_run, "barrier", lambda world_size: None)
    monkeypatch.setattr(train, "build_models", lambda cfg: pytest.fail("got past the check"))
    with pytest.raises(DatasetError, match=r"train: 2 usable images for 3 processes; each process needs "
                                                   r"at least one: add images or start fewer"):
        train.main(tiny_args(tmp_path / "data", tmp_path / "run", **FAST))


# ----------------------------------------------------------------------------- kill -9

# Imports train (torch, torch._dynamo, tensorboard, matplotlib: most of a start's ~8 s on busy cores) once, then
# forks one real process per training run: each gets SIGKILLed like any process, and the tests fit their time
# budget. One run at a time: the zygote waits for each before it reads the next line.
# Protocol: stdin line = JSON [argv, log path, pause]; stdout: the child's pid, then its wait status. A pause
# "WHEN:NAME:N:FILE" holds the child at its N-th save to a file called NAME: WHEN "in" stops inside the save, after
# writing its temp file, before the flush, fsync and rename (torch.save patched in the child); "after" stops right
# after the rename put the file in place (os.replace patched). The child writes FILE there and waits to be killed.
ZYGOTE = r"""
import json, os, sys, time, traceback
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot, torch, torch._dynamo, torch.utils.tensorboard, train
for line in sys.stdin:
    args, log, pause = json.loads(line)
    pid = os.fork()
    if pid == 0:
        if pause:
            when, name, n, ready = pause.split(":", 3)
            saves = []
            def hold(path):  # "in": the save's temp file (.NAME.tmp-PID); "after": the file itself
                if Path(path).name.startswith(f".{name}.tmp-") if when == "in" else Path(path).name == name:
                    saves.append(1)
                    if len(saves) == int(n):
                        Path(ready).write_text(str(os.getpid()))
                        time.sleep(600)  # bounded: a test that failed before its kill leaves nothing for long
            if when == "in":
                real_save = torch.save
                def save(obj, f, *a, **k):
                    real_save(obj, f, *a, **k)
                    hold(getattr(f, "name", ""))
                torch.save = save
            else:
                real_replace = os.replace
                def replace(src, dst, *a, **k):
                    real_replace(src, dst, *a, **k)
                    hold(dst)
                os.replace = replace
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = train.main(args)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def line_reader(pipe) -> "queue.Queue[str]":
    """Lines of `pipe`, read by a daemon thread: the test takes them with a timeout and never blocks forever."""
    lines: queue.Queue[str] = queue.Queue()

    def pump():
        for line in pipe:
            lines.put(line)
        lines.put("")  # EOF
    threading.Thread(target=pump, daemon=True).start()
    return lines


def next_line(lines: "queue.Queue[str]", what: str, timeout: float = 120.0) -> str:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no {what} from the test's process launcher within {timeout:.0f} s")
    if not line:
        pytest.fail(f"the test's process launcher ended before sending {what}")
    return line


def alive(pid: int) -> bool:  # the zygote reaps its child at once, so no zombie lingers
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Zygote:
    """The ZYGOTE process, shared by the module's tests (its start is the slow part): launch(name, args, pause)
    forks a training run logging to the current test's logs/NAME.log, status(name) is its wait status, hold(name)
    waits until a paused run is at its pause, kill(name) SIGKILLs it."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(ROOT)], cwd=ROOT, env=ENV, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.replies = line_reader(self.proc.stdout)
        self.launched, self.pending, self.logs, self.ready = [], 0, ROOT, {}

    def use(self, logs: Path) -> "Zygote":
        self.logs, self.ready = logs, {}
        return self

    def launch(self, name: str, args: list[str], pause: str = "") -> int:
        """A run; pause "WHEN:NAME:N" (see ZYGOTE) holds it at that save."""
        self.ready[name] = self.logs / f"{name}.paused"
        self.proc.stdin.write(json.dumps([args, str(self.log(name)), f"{pause}:{self.ready[name]}" if pause else ""])
                              + "\n")
        self.proc.stdin.flush()
        self.launched.append(int(next_line(self.replies, f"{name}'s pid")))
        self.pending += 1
        return self.launched[-1]

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def status(self, name: str, timeout: float = 120.0) -> int:
        status = int(next_line(self.replies, f"{name}'s exit status", timeout))
        self.pending -= 1
        return status

    def until(self, condition, pid: int, name: str, poll: float = 0.005) -> None:
        deadline = time.monotonic() + 120
        while not condition():
            if time.monotonic() > deadline or not alive(pid):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
                pytest.fail(f"{name}: ended or stuck before the kill:\n{self.log(name).read_text()[-3000:]}")
            time.sleep(poll)

    def hold(self, name: str, pid: int) -> None:
        self.until(self.ready[name].exists, pid, name)

    def kill(self, name: str, pid: int) -> None:
        """SIGKILL a run; it must die of it (not have finished)."""
        os.kill(pid, signal.SIGKILL)
        status = self.status(name)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, self.log(name).read_text()[-3000:]

    def reset(self) -> None:
        """After each test: none of its runs left alive (a failed assertion can leave one paused in its save) and
        their statuses read, so that the next test's launches are answered."""
        for pid in self.launched:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.launched = []
        while self.pending:
            self.status("a run left by the test", timeout=60)

    def close(self) -> None:
        self.reset()
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote_process():
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    launcher = Zygote()
    yield launcher
    launcher.close()


@pytest.fixture
def zygote(zygote_process, tmp_path):
    yield zygote_process.use(tmp_path)
    zygote_process.reset()


def test_kill_9_during_saves_and_at_random_moments_never_loses_the_run(tiny_data, tmp_path, zygote):
    """SIGKILL five runs of one training in turn. Runs 0, 2 and 4 are killed inside their second save of last.pt,
    with the temp file written but not yet renamed (held there by the test's patched torch.save: every time, not
    by luck); runs 1 and 3 after a random delay. Each time the latest last.pt loads, is finite and
    (for a kill inside a save) is byte-identical to the one before that save; each restart continues from it;
    stale temp files are never loaded and are removed; and a final run completes the training."""
    rng = random.Random(20240607)
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    args = tiny_args(tiny_data, run_dir, N_EPOCHS=4, N_EPOCHS_DECAY=0, CHECKPOINT_EVERY_STEPS=1, **FAST)
    total_steps = 4 * 8
    steps = [(0, 0)]
    for attempt in range(5):
        name, in_save = f"run{attempt}", attempt % 2 == 0
        before = last.stat().st_ino if last.exists() else None
        pid = zygote.launch(name, args, "in:last.pt:2" if in_save else "")
        if in_save:  # its first save completed; its second is paused with the temp file written
            zygote.hold(name, pid)
            intact = sha(last)
            assert (ckpt_dir / f".last.pt.tmp-{pid}").exists()
        else:
            zygote.until(lambda: last.exists() and last.stat().st_ino != before, pid, name)  # it saved once
            time.sleep(rng.uniform(0.0, 0.25))
        zygote.kill(name, pid)
        if attempt:
            assert f"resuming from {last}: " in zygote.log(name).read_text()
        if in_save:
            assert sha(last) == intact and (ckpt_dir / f".last.pt.tmp-{pid}").exists()
        ckpt = load_checkpoint(last)  # a kill never leaves a half-written last.pt
        assert all_finite(ckpt)
        # every restart resumed and made progress: more steps, or (killed right after the periodic save of
        # an epoch's last batch) the same step with that epoch's end completed
        assert steps[-1] < (ckpt["step"], ckpt["epoch"]) and ckpt["step"] < total_steps
        steps.append((ckpt["step"], ckpt["epoch"]))

    (ckpt_dir / ".last.pt.tmp-999999999").write_bytes(b"garbage from a long-dead process")
    zygote.launch("final", args)
    status = zygote.status("final", timeout=240)
    log = zygote.log("final").read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log[-3000:]
    assert f"resuming from {last}: " in log and f"step {steps[-1][0]}\n" in log and "done:" in log
    assert load_checkpoint(last)["step"] == total_steps
    assert [p.name for p in ckpt_dir.iterdir() if ".tmp-" in p.name] == []  # stale temp files removed


@pytest.mark.parametrize("pause", ["after:last.pt:1", "in:generator.pt:1", "in:epoch_0001.pt:1"])
def test_kill_9_in_the_final_writes_then_a_rerun_ends_with_every_export_matching_last_pt(tiny_data, tmp_path, zygote,
                                                                                         pause):
    """SIGKILL in the writes that end a run (last.pt, the epoch's snapshot, generator.pt), held there by the test:
    right after last.pt is in place, or inside the snapshot's or generator.pt's save. The same command run again
    exits 0, and generator.pt and the snapshot exist and hold last.pt's generator and epoch: whichever write the
    kill hit, nothing is lost for good (a rerun once said "already finished" with no generator.pt)."""
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_data, run_dir, N_EPOCHS=1, N_EPOCHS_DECAY=0, SNAPSHOT_EVERY=1, **FAST)
    pid = zygote.launch("killed", args, pause)
    zygote.hold("killed", pid)
    zygote.kill("killed", pid)
    zygote.launch("rerun", args)
    status = zygote.status("rerun", timeout=240)
    log = zygote.log("rerun").read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log[-3000:]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    export = load_checkpoint(run_dir / "generator.pt")
    snapshot = load_checkpoint(run_dir / "checkpoints" / "epoch_0001.pt")
    assert last["epoch"] == export["epoch"] == snapshot["epoch"] == 1 and snapshot["step"] == last["step"] == 8
    assert export["generator"].keys() == last["generator"].keys()
    assert all(torch.equal(v, last["generator"][k]) for k, v in export["generator"].items())
    assert all(torch.equal(v, last["generator"][k]) for k, v in snapshot["generator"].items())
    assert [p.name for p in run_dir.rglob("*") if ".tmp-" in p.name or p.name == ".lock"] == []


def test_a_finished_run_writes_a_missing_or_stale_generator_export_again(finished_run, capsys):
    """A finished run whose generator.pt is missing (deleted, or lost to a kill in an older version's final
    writes) or is not last.pt's generator: running it again writes it from last.pt before saying it is done."""
    data, run_dir = finished_run
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    args = tiny_args(data, run_dir, **FAST)
    for damage in ("missing", "stale"):
        if damage == "stale":
            export = torch.load(run_dir / "generator.pt", weights_only=True)
            export["generator"] = {k: v + 1 if v.is_floating_point() else v for k, v in export["generator"].items()}
            atomic_save(export, run_dir / "generator.pt")
        assert train.main(args) == 0
        out = capsys.readouterr().out
        assert f"wrote {run_dir / 'generator.pt'} from {run_dir / 'checkpoints' / 'last.pt'}" in out, damage
        assert "already finished its 2 epochs" in out
        export = load_checkpoint(run_dir / "generator.pt")
        assert export["epoch"] == last["epoch"] and export["config"] == last["config"]
        assert all(torch.equal(v, last["generator"][k]) for k, v in export["generator"].items())
    assert train.main(args) == 0  # now current: left as it is
    assert "wrote" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- one run per RUN_DIR

def test_a_second_run_on_a_busy_run_dir_is_refused_and_kill_9_leaves_no_stale_lock(tiny_data, tmp_path, zygote):
    """Two terminals, one command: the second `python train.py` (a real CLI process) exits 1 with one line naming
    RUN_DIR and the first run's PID, writing nothing there, while the first holds the folder (paused inside a save
    by the test). kill -9 of the first releases the lock with the process (the kernel's flock): the same command
    then resumes and finishes, and no lock file is left."""
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_data, run_dir, N_EPOCHS=2, N_EPOCHS_DECAY=0, CHECKPOINT_EVERY_STEPS=1, **FAST)
    first = zygote.launch("first", args, "in:last.pt:2")
    zygote.hold("first", first)

    def listing() -> dict[str, tuple]:
        return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")}
    before = listing()
    second = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=ENV, text=True,
                            capture_output=True, timeout=180)
    assert second.returncode == 1, second.stderr[-3000:]
    assert second.stderr == (f"error: RUN_DIR={run_dir} is in use by another training run (PID {first}); wait for "
                             f"it to end or stop it, or choose another RUN_DIR\n")
    assert "resuming" not in second.stdout and listing() == before  # nothing written, nothing removed

    zygote.kill("first", first)
    assert (run_dir / ".lock").exists()  # left by the killed run: stale, yet it blocks nothing
    zygote.launch("again", args)
    status = zygote.status("again", timeout=240)
    log = zygote.log("again").read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'last.pt'}: " in log and "done:" in log
    assert [r["epoch"] for r in log_rows(run_dir)] == ["1", "2"] and not (run_dir / ".lock").exists()


# ----------------------------------------------------------------------------- full disk, unwritable RUN_DIR

@pytest.mark.parametrize("failure", ["open", "write", "fsync", "replace", "dev_full"])
def test_failed_save_keeps_previous_checkpoint_and_explains(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_save({"generator": torch.ones(3), "step": 1}, path)
    before = sha(path)
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    eacces = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    if failure == "open":  # read-only folder (chmod does not stop root, so simulate it)
        monkeypatch.setattr(checkpoint, "open", lambda *a, **k: (_ for _ in ()).throw(eacces), raising=False)
    elif failure == "write":  # disk fills up halfway through the file
        def half_then_full(obj, f, *a, **k):
            f.write(b"PK\x03\x04 half a zip")
            raise enospc
        monkeypatch.setattr(torch, "save", half_then_full)
    elif failure == "fsync":
        monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    elif failure == "replace":
        monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (_ for _ in ()).throw(eacces))
    else:  # a real ENOSPC from the kernel: the temp file name points at /dev/full
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full")
        (path.parent / f".last.pt.tmp-{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(CheckpointError) as e:
        atomic_save({"generator": torch.zeros(100_000), "step": 2}, path)
    message = str(e.value)
    assert f"could not write {path}" in message and "intact" in message
    expected = {"open": "Permission denied", "write": "No space left", "fsync": "I/O error",
                "replace": "Permission denied", "dev_full": "No space left"}[failure]
    assert expected in message
    assert sha(path) == before and torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind


def test_disk_full_during_training_stops_with_previous_checkpoint_intact(tiny_data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    real_save, saved = torch.save, {}

    def save(obj, f, *args, **kwargs):
        if obj.get("step") == 4:  # the second periodic save hits a full disk
            saved["before"] = sha(last)
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError, match="No space left on device.*intact"):
        train.main(tiny_args(tiny_data, run_dir, CHECKPOINT_EVERY_STEPS=2, **FAST))
    assert sha(last) == saved["before"]
    ckpt = load_checkpoint(last)
    assert ckpt["step"] == 2 and all_finite(ckpt)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("case,hint", [
    ("below_a_file", "a part of the path is a file, not a folder (Not a directory"),
    ("is_a_file", "it is a file, not a folder (File exists"),
    ("not_writable", "no permission to write there (Permission denied"),
    ("read_only", "the file system is read-only (Read-only file system"),
    ("full", "the disk is full (No space left on device"),
])
def test_unusable_run_dir_is_a_one_line_error_before_any_work(tiny_data, tmp_path, monkeypatch, capsys, case, hint):
    """`python train.py` (the CLI entry point, in-process): exit 1, one line naming RUN_DIR and the cause, no
    traceback, before the models are even built. A path below a regular file is real (it stops root too);
    chmod does not stop root, so a read-only folder, a read-only file system and a full disk are injected as
    the OSError the kernel gives when the probe file is written (full: at fsync, where delayed allocation
    reports it)."""
    run_dir = tmp_path / "run"
    if case == "below_a_file":
        (tmp_path / "file").write_text("not a folder")
        run_dir = tmp_path / "file" / "run"
    elif case == "is_a_file":
        run_dir.write_text("not a folder")
    elif case == "full":
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(run_log.os, "fsync", lambda fd: (_ for _ in ()).throw(full))
    else:
        code = errno.EACCES if case == "not_writable" else errno.EROFS
        denied = OSError(code, os.strerror(code), str(run_dir / "probe"))
        monkeypatch.setattr(run_log, "open", lambda *a, **k: (_ for _ in ()).throw(denied), raising=False)
    built = []
    monkeypatch.setattr(pix2pix, "build_models", lambda cfg: built.append(cfg))
    monkeypatch.setattr(sys, "argv", ["train.py", *tiny_args(tiny_data, run_dir, **FAST)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: RUN_DIR={run_dir} cannot be used: {hint}") and err.count("\n") == 1, err
    assert "Traceback" not in err and built == []
    if case in ("not_writable", "read_only", "full"):
        assert not run_dir.exists()  # the folder the check made is gone again; no probe file is left either


def test_a_run_dir_that_is_a_dangling_link_is_named_as_such(tiny_data, tmp_path):
    """RUN_DIR a symbolic link to a folder that does not exist (an unmounted scratch disk): one line saying so, not
    "it is a file"; the link is left as it was and nothing is made at its target."""
    run_dir, target = tmp_path / "run", tmp_path / "scratch" / "run"
    run_dir.symlink_to(target)
    with pytest.raises(RunDirError) as e:
        train.main(tiny_args(tiny_data, run_dir, **FAST))
    assert str(e.value).startswith(f"RUN_DIR={run_dir} cannot be used: it is a symbolic link to {target}, which does "
                                   f"not exist")
    assert run_dir.is_symlink() and not (tmp_path / "scratch").exists()


def test_run_dir_check_leaves_a_usable_folder_as_it_was(tmp_path):
    run_dir = tmp_path / "a" / "b" / "run"
    run_log.check_run_dir(run_dir)
    assert not (tmp_path / "a").exists()  # made for the probe, removed again
    run_dir.mkdir(parents=True)
    (run_dir / "log.csv").write_text("kept")
    run_log.check_run_dir(run_dir)
    assert [p.name for p in run_dir.iterdir()] == ["log.csv"]


# ----------------------------------------------------------------------------- NaN / Inf

def tiny_model() -> pix2pix.Pix2Pix:
    cfg = configurator.load_config(tiny_args(Path("."), Path("."), DROPOUT=False))
    G, D = pix2pix.build_models(cfg)
    return pix2pix.Pix2Pix(G, D, *pix2pix.make_optimizers(G, D, cfg, torch.device("cpu")),
                           *pix2pix.make_grad_scalers(torch.device("cpu"), "fp32"))


def untouched(opt: torch.optim.Optimizer) -> bool:
    """Adam never stepped: no state, or (fused Adam told to skip on the device) zero moments at step 0."""
    return all(torch.count_nonzero(v) == 0 for s in opt.state.values() for v in s.values())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("poisoned", ["d_real", "d_fake", "g_gan", "g_l1"])
def test_non_finite_loss_is_caught_before_any_poisoned_update(monkeypatch, poisoned, precision):
    """The step guard never lets a poisoned step update a network, without reading the device during the step;
    the next read (a logging or saving step) names the step and the loss. The poison is a constant added to a
    loss: its gradients stay finite, so fp16's loss scaler would not skip the update by itself."""
    from harness.step_guard import StepGuard
    model = tiny_model()
    if precision == "fp16":
        model.scaler_G, model.scaler_D = pix2pix.make_grad_scalers(torch.device("cpu"), "fp16")
    G, D, opt_G, opt_D = model.G, model.D, model.opt_G, model.opt_D
    real_d, real_g = pix2pix.discriminator_loss, pix2pix.generator_loss
    bad = torch.tensor(float("inf") if poisoned.endswith("l1") else float("nan"))

    def d_loss(*a):
        loss, real, fake = real_d(*a)
        real, fake = (real + bad if poisoned == "d_real" else real), (fake + bad if poisoned == "d_fake" else fake)
        return (real + fake) / 2, real, fake

    def g_loss(*a):
        loss, gan, l1 = real_g(*a)
        gan, l1 = (gan + bad if poisoned == "g_gan" else gan), (l1 + bad if poisoned == "g_l1" else l1)
        return gan + 100 * l1, gan, l1
    monkeypatch.setattr(pix2pix, "discriminator_loss", d_loss)
    monkeypatch.setattr(pix2pix, "generator_loss", g_loss)
    g_before = {k: v.detach().clone() for k, v in G.named_parameters()}
    d_before = {k: v.detach().clone() for k, v in D.named_parameters()}
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    guard = StepGuard("stop", torch.device("cpu"), fp16=precision == "fp16")
    guard.begin_step(7, model)
    guard.end_step(pix2pix.train_step(model, x, y, guard))
    with pytest.raises(NonFiniteLoss, match=rf"step 7: non-finite {poisoned}=(nan|inf)"):
        guard.read()
    assert all(torch.equal(v, dict(G.named_parameters())[k]) for k, v in g_before.items())
    assert untouched(opt_G)  # G was never stepped
    if poisoned.startswith("d_"):
        assert all(torch.equal(v, dict(D.named_parameters())[k]) for k, v in d_before.items())
        assert untouched(opt_D)


def test_fp16_skip_counts_the_loss_scalers_skip_and_puts_back_d_and_its_scale(monkeypatch):
    """PRECISION=fp16, ON_NAN=skip, a NaN in D's loss: both loss scalers skip their updates (their scales halve),
    which the guard counts from the public scale() alone; the guard puts D, G and both scales back. A finite step
    after it counts no skip."""
    from harness.step_guard import StepGuard
    model = tiny_model()
    model.scaler_G, model.scaler_D = pix2pix.make_grad_scalers(torch.device("cpu"), "fp16")
    real_d, poison = pix2pix.discriminator_loss, [True]

    def d_loss(*a):
        loss, real, fake = real_d(*a)
        real = real * float("nan") if poison[0] else real
        return (real + fake) / 2, real, fake
    monkeypatch.setattr(pix2pix, "discriminator_loss", d_loss)
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    guard = StepGuard("skip", torch.device("cpu"), fp16=True)
    for step in (0, 1):  # Adam's first step is the guard's special case (no state to keep): look at the second
        poison[0] = step == 1
        d_before = {k: v.detach().clone() for k, v in model.D.state_dict().items()}
        g_before = {k: v.detach().clone() for k, v in model.G.state_dict().items()}
        scales_before = model.scaler_D.get_scale(), model.scaler_G.get_scale()
        guard.begin_step(step, model)
        guard.end_step(pix2pix.train_step(model, x, y, guard))
    assert guard.read().scaler_skips == 2 and guard.read().skipped == 1  # D's update and G's: one step
    assert (model.scaler_D.get_scale(), model.scaler_G.get_scale()) == scales_before
    assert all(torch.equal(v, model.D.state_dict()[k]) for k, v in d_before.items())
    assert all(torch.equal(v, model.G.state_dict()[k]) for k, v in g_before.items())


def nan_generator_on(monkeypatch, calls: set[int], hook=None) -> None:
    """Make G's output NaN on the given (1-based) forward calls on real data (not FLOP counting on "meta")."""
    real_forward, count = generator_model.UNetGenerator.forward, [0]

    def forward(self, x):
        out = real_forward(self, x)
        if x.device.type == "meta":
            return out
        count[0] += 1
        if count[0] in calls:
            if hook:
                hook()
            return out * float("nan")
        return out
    monkeypatch.setattr(generator_model.UNetGenerator, "forward", forward)


def test_nan_stops_the_cli_with_exit_1_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch,
                                                                           capsys):
    """ON_NAN=stop (default): NonFiniteLoss names the step and the loss, `python train.py` exits 1, and no
    checkpoint of the poisoned step or later is ever handed to the writer: last.pt is the one before, finite."""
    from harness import run as harness_run
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    nan_generator_on(monkeypatch, {4})
    written, real_write = [], harness_run.CheckpointWriter.write
    monkeypatch.setattr(harness_run.CheckpointWriter, "write",
                        lambda self, files: written.extend(c["step"] for c, _ in files) or real_write(self, files))
    monkeypatch.setattr(sys, "argv", ["train.py", *tiny_args(tiny_data, run_dir, CHECKPOINT_EVERY_STEPS=1,
                                                             **FAST)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")  # the CLI entry point, in-process
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "error: step 3: non-finite d_fake=nan" in err
    assert written == [1, 2, 3]  # after steps 0, 1, 2; step 3's NaN stops the run before its save
    ckpt = load_checkpoint(last)
    assert ckpt["step"] == 3 and all_finite(ckpt)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"] and not (run_dir / "generator.pt").exists()


def test_nan_skip_skips_steps_and_keeps_training(tiny_data, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    nan_generator_on(monkeypatch, {3, 6})
    assert train.main(tiny_args(tiny_data, run_dir, ON_NAN="skip", N_EPOCHS=1, N_EPOCHS_DECAY=0, LOG_EVERY=4,
                                **FAST)) == 0
    err = capsys.readouterr().err  # reported at the next read: steps 0-3 at step 4, steps 4-7 at the epoch's end
    for step in (2, 5):
        assert re.search(rf"step {step}: non-finite d_fake=nan[^\n]*; skipped 1 step\(s\) since the last report "
                         rf"\(ON_NAN=skip\)", err), err
    assert log_rows(run_dir)[0]["skipped_steps"] == "2"
    assert all_finite(load_checkpoint(run_dir / "checkpoints" / "last.pt"))
    assert all(torch.isfinite(v).all() for v in checkpoint.load_generator(run_dir / "generator.pt").state_dict().values()
               if v.is_floating_point())


def tensors(obj) -> list[torch.Tensor]:
    """Every tensor in a (nested) state dict, copied, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj.detach().clone()]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def states(**objects) -> dict[str, list[torch.Tensor]]:
    return {name: tensors(o.state_dict()) for name, o in objects.items()}


def differing(a: dict, b: dict) -> list[str]:
    return [k for k in a if len(a[k]) != len(b[k]) or not all(torch.equal(x, y) for x, y in zip(a[k], b[k]))]


def test_nan_skip_undoes_the_whole_step_even_after_d_has_stepped(tiny_data, tmp_path, monkeypatch):
    """A non-finite G loss is found after D's step. With ON_NAN=skip, every tensor of G, D, opt_G and opt_D
    (weights, batch-norm statistics, Adam moments and step counts) must be back to its value before the step."""
    skip, before, at_g_loss, current = 3, {}, {}, {}
    real_step, real_g_loss = train.train_step, pix2pix.generator_loss

    def train_step(model, x, y, guard):
        current.update(step=guard.step, G=model.G, D=model.D, opt_G=model.opt_G, opt_D=model.opt_D)
        before[guard.step] = states(G=model.G, D=model.D, opt_G=model.opt_G, opt_D=model.opt_D)
        return real_step(model, x, y, guard)

    def generator_loss(*args):
        loss, gan, l1 = real_g_loss(*args)
        if current["step"] != skip:
            return loss, gan, l1
        at_g_loss.update(states(D=current["D"], opt_D=current["opt_D"]))
        return loss * float("nan"), gan * float("nan"), l1
    monkeypatch.setattr(train, "train_step", train_step)
    monkeypatch.setattr(pix2pix, "generator_loss", generator_loss)
    assert train.main(tiny_args(tiny_data, tmp_path / "run", ON_NAN="skip", N_EPOCHS=1, N_EPOCHS_DECAY=0,
                                **FAST)) == 0
    assert log_rows(tmp_path / "run")[0]["skipped_steps"] == "1"
    assert differing(at_g_loss, before[skip]) == ["D", "opt_D"]  # D had stepped when G's loss went bad
    assert differing(before[skip + 1], before[skip]) == []  # ... and the skipped step left no trace
    assert differing(before[skip + 2], before[skip + 1]) == ["G", "D", "opt_G", "opt_D"]  # a real step does


def test_nan_input_with_skip_leaves_no_nan_in_batchnorm_statistics(tiny_data, tmp_path, monkeypatch, capsys):
    """A NaN in the data poisons batch-norm running statistics during the forward pass, before any loss is
    checked; a skipped step must not keep them (eval-mode inference would output NaN forever)."""
    real_getitem = PairedImageDataset.__getitem__

    def getitem(self, key):
        x, y = real_getitem(self, key)
        index = key[0] if isinstance(key, tuple) else key
        return (x * float("nan"), y) if self.train and index == 2 else (x, y)
    monkeypatch.setattr(PairedImageDataset, "__getitem__", getitem)
    run_dir = tmp_path / "run"
    assert train.main(tiny_args(tiny_data, run_dir, ON_NAN="skip", N_EPOCHS=1, N_EPOCHS_DECAY=0, **FAST)) == 0
    assert log_rows(run_dir)[0]["skipped_steps"] == "1"
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for net in ("generator", "discriminator"):
        assert all(torch.isfinite(v).all() for k, v in ckpt[net].items() if v.is_floating_point()), net


# ----------------------------------------------------------------------------- resuming with other settings

@pytest.fixture
def finished_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(data, run folder holding a copy of the shared tiny_run's last.pt): a run to resume, read-only original."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / "run" / "checkpoints" / "last.pt", tmp_path / "run" / "checkpoints" / "last.pt")
    return tiny_run / "data", tmp_path / "run"


@pytest.mark.parametrize("change,named", [
    (dict(NORM="instance"), ["NORM: checkpoint 'batch' vs now 'instance'"]),
    (dict(IMAGE_SIZE=64, LOAD_SIZE=72), ["IMAGE_SIZE: checkpoint 32 vs now 64", "NUM_DOWNS: checkpoint 5 vs now 6"]),
    (dict(GEN_BASE_CHANNELS=16), ["GEN_BASE_CHANNELS: checkpoint 8 vs now 16"]),
    (dict(DISC_BASE_CHANNELS=16), ["DISC_BASE_CHANNELS: checkpoint 8 vs now 16"]),
    (dict(DISC_N_LAYERS=2), ["DISC_N_LAYERS: checkpoint 3 vs now 2"]),
    (dict(IN_CHANNELS=1), ["IN_CHANNELS: checkpoint 3 vs now 1"]),
    (dict(OUT_CHANNELS=1, DROPOUT=False),
     ["OUT_CHANNELS: checkpoint 3 vs now 1", "DROPOUT: checkpoint True vs now False"]),
    (dict(NUM_DOWNS=4), ["NUM_DOWNS: checkpoint 5 vs now 4"]),
    (dict(DIRECTION="AtoB"), ["DIRECTION: checkpoint 'BtoA' vs now 'AtoB'"]),
])
def test_resume_with_other_architecture_names_the_settings(finished_run, change, named):
    data, run_dir = finished_run
    last = run_dir / "checkpoints" / "last.pt"
    before = sha(last)
    with pytest.raises(CheckpointError) as e:
        train.main(tiny_args(data, run_dir, N_EPOCHS=2, N_EPOCHS_DECAY=0, **FAST, **change))
    message = str(e.value)
    assert all(n in message for n in named), message
    assert "state_dict" not in message and "Missing key" not in message and "\n" not in message
    assert sha(last) == before


@pytest.mark.parametrize("partial", ["1", "3,24,0.69"])
def test_resume_drops_a_partial_last_line_of_log_csv(finished_run, partial):
    """kill -9 in the middle of appending a row leaves it without its newline: "1" is how the row of an epoch
    10-19 starts (its epoch would read as 1, an epoch the checkpoint has, and the next row would be glued to
    it); "3,24,0.69" is a cut row of an epoch the checkpoint lacks. Resuming drops either and logs cleanly."""
    data, run_dir = finished_run
    complete = (data.parent / "run" / "log.csv").read_text()  # header + epochs 1 and 2, as last.pt has them
    (run_dir / "log.csv").write_text(complete + partial)
    assert train.main(tiny_args(data, run_dir, N_EPOCHS=1, N_EPOCHS_DECAY=2, **FAST)) == 0
    rows = log_rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert all(None not in r.values() and r["g_l1"] for r in rows), rows
    assert (run_dir / "log.csv").read_text().startswith(complete)  # the complete rows are kept as they were


def test_resume_from_a_generator_only_export_is_a_clear_error(tiny_run, tmp_path):
    export = tiny_run / "run" / "generator.pt"
    with pytest.raises(CheckpointError, match=re.escape(f"cannot resume from {export}: not a training checkpoint")):
        train.main(tiny_args(tiny_run / "data", tmp_path / "new", RESUME=export, **FAST))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_a_last_pt_that_is_a_folder_or_a_dangling_link_is_refused_by_name(tiny_data, tmp_path, kind):
    """RUN_DIR/checkpoints/last.pt that is a folder is named as one (not "does not exist"); one that is a link to a
    missing file stops the run instead of silently starting over (and then replacing the link)."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    if kind == "folder":
        last.mkdir(parents=True)
        expected = f"checkpoint {last} is a folder, not a checkpoint file"
    else:
        last.parent.mkdir(parents=True)
        last.symlink_to(tmp_path / "elsewhere" / "last.pt")
        expected = (f"{last} is a symbolic link to {tmp_path / 'elsewhere' / 'last.pt'}, which does not exist: "
                    f"restore that file to continue the run, or remove the link to start it over")
    with pytest.raises(CheckpointError) as e:
        train.main(tiny_args(tiny_data, run_dir, **FAST))
    assert str(e.value) == expected
    assert last.is_dir() if kind == "folder" else last.is_symlink()
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]  # nothing trained, nothing written


def test_a_damaged_last_pt_says_how_to_go_on_and_that_way_works(tiny_run, tmp_path):
    """A last.pt cut short is refused with the next step: move it aside, then continue from the run's other
    checkpoint (named) with RESUME; doing just that trains on from it."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copy(tiny_run / "run" / "checkpoints" / "best.pt", ckpts / "best.pt")
    last = ckpts / "last.pt"
    last.write_bytes((tiny_run / "run" / "checkpoints" / "last.pt").read_bytes()[:5000])
    more = dict(N_EPOCHS=3, N_EPOCHS_DECAY=0, **FAST)
    with pytest.raises(CheckpointError) as e:
        train.main(tiny_args(tiny_run / "data", run_dir, **more))
    assert str(e.value).endswith(f"To go on, move it aside (mv {last} {last}.damaged), then RESUME={ckpts / 'best.pt'} "
                                 f"to continue from there, or RESUME=auto to start over")
    last.rename(f"{last}.damaged")
    assert train.main(tiny_args(tiny_run / "data", run_dir, RESUME=ckpts / "best.pt", **more)) == 0
    assert load_checkpoint(last)["epoch"] == 3 and (ckpts / "last.pt.damaged").stat().st_size == 5000


def test_resume_on_other_training_data_is_refused_unless_resume_names_the_checkpoint(finished_run, tmp_path, capsys):
    """A run folder reused with another TRAIN_DIR (other files): resuming its last.pt would continue a run trained
    on other data without a word. It is refused, saying how to start fresh or force it; forcing it (RESUME naming
    the checkpoint) continues with a note, and the checkpoints it writes record the new data."""
    data, run_dir = finished_run
    last = run_dir / "checkpoints" / "last.pt"
    before = sha(last)
    other = tmp_path / "other"
    write_pairs(other / "train", 6, seed=5)
    write_pairs(other / "val", 2, seed=6)
    was = f"{(data / 'train').resolve()} (8 images), not on {(other / 'train').resolve()} (6 images)"
    with pytest.raises(CheckpointError) as e:
        train.main(tiny_args(other, run_dir, N_EPOCHS=3, N_EPOCHS_DECAY=0, **FAST))
    assert str(e.value) == (f"cannot resume from {last}: it was trained on {was}. Start a fresh run in a new RUN_DIR "
                            f"(--RUN_DIR=...), or continue this run on the new data with --RESUME={last}")
    assert sha(last) == before and sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]

    assert train.main(tiny_args(other, run_dir, N_EPOCHS=3, N_EPOCHS_DECAY=0, RESUME=last, **FAST)) == 0
    assert f"note: {last} was trained on {was}; continuing it on this data because RESUME names it" \
        in capsys.readouterr().out
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 3 and ckpt["train_data"]["images"] == 6
    assert ckpt["train_data"]["folder"] == str((other / "train").resolve())


def test_resume_after_the_data_moved_or_from_a_checkpoint_without_a_data_record_notes_it(finished_run, tmp_path,
                                                                                         capsys):
    """The same files in another folder (the data moved): resumed, with a note naming both folders. A checkpoint
    of an older version records no training data: resumed, with a note saying it was not compared."""
    data, run_dir = finished_run
    last = run_dir / "checkpoints" / "last.pt"
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    assert train.main(tiny_args(moved, run_dir, N_EPOCHS=3, N_EPOCHS_DECAY=0, **FAST)) == 0
    assert (f"note: the training folder moved from {(data / 'train').resolve()} to {(moved / 'train').resolve()} "
            f"(the same 8 files)") in capsys.readouterr().out
    old = torch.load(last, weights_only=True)
    del old["train_data"]
    atomic_save(old, last)
    assert train.main(tiny_args(moved, run_dir, N_EPOCHS=4, N_EPOCHS_DECAY=0, **FAST)) == 0
    assert f"note: {last} does not record its training data (written by an older version); not compared" \
        in capsys.readouterr().out
    assert load_checkpoint(last)["epoch"] == 4


def test_resume_mid_epoch_with_another_batch_size_trains_every_image_of_that_epoch_once(tiny_data, tmp_path,
                                                                                        monkeypatch):
    """Stopped (Ctrl-C) after step 3 at batch size 1, resumed with BATCH_SIZE=2: the epoch trains the 5 images it
    had not, each once (the position counts images, not batches: 3 batches of 2 would skip 6)."""
    run_dir = tmp_path / "run"
    seen: list[int] = []
    real_getitem = PairedImageDataset.__getitem__

    def getitem(self, key):
        if self.train:
            seen.append(key[0])
            if len(seen) == 3 and stop_at_3:  # while the third step's batch loads: that step ends, then the save
                os.kill(os.getpid(), signal.SIGINT)
        return real_getitem(self, key)
    monkeypatch.setattr(PairedImageDataset, "__getitem__", getitem)
    stop_at_3 = True
    assert train.main(tiny_args(tiny_data, run_dir, N_EPOCHS=1, N_EPOCHS_DECAY=0, **FAST)) == 0
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["images_in_epoch"]) == (3, 0, 3) and len(seen) == 3
    first, seen[:], stop_at_3 = list(seen), [], False
    assert train.main(tiny_args(tiny_data, run_dir, N_EPOCHS=1, N_EPOCHS_DECAY=0, BATCH_SIZE=2, **FAST)) == 0
    assert sorted(first + seen) == list(range(8)) and len(seen) == 5
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["images_in_epoch"]) == (3 + 3, 1, 0)


def test_extending_a_finished_run_trains_the_new_epochs_at_the_scheduled_learning_rate(finished_run):
    """A finished run (N_EPOCHS=1 + N_EPOCHS_DECAY=1: its last epoch ended the decay) extended to N_EPOCHS=3: the
    new epochs train at the schedule as now configured (constant, then decaying), not at the old schedule's 0;
    the optimiser holds that rate and the weights move."""
    data, run_dir = finished_run
    before = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert train.main(tiny_args(data, run_dir, N_EPOCHS=3, N_EPOCHS_DECAY=1, **FAST)) == 0
    rows, base = log_rows(run_dir), configurator.default_settings()["LEARNING_RATE"]
    linear = {"LR_POLICY": "linear", "N_EPOCHS": 3, "N_EPOCHS_DECAY": 1}
    expected = [base * pix2pix.lr_factor(epoch, linear) for epoch in (2, 3)]
    assert [r["epoch"] for r in rows] == ["3", "4"] and 0 not in expected
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5)
    after = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert after["opt_G"]["param_groups"][0]["lr"] == pytest.approx(expected[-1])
    assert not torch.equal(after["generator"]["encoder.0.0.weight"], before["generator"]["encoder.0.0.weight"])
