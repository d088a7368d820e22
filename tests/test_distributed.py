"""Distributed training (torchrun + DDP) on CPU: gloo on 127.0.0.1, tiny networks, a few images.

The tests launch this same file under torchrun as a worker (see `worker` at the bottom): it runs the real
train.main, watching it through a few wrapped names of the train module, and saves what each rank saw
(final weights, gradients, first-step dropout masks, which ranks wrote or validated) to DUMP/rank<r>.pt.

    torchrun --standalone --nproc_per_node=2 tests/test_distributed.py DUMP [--fail=RANK:STEP] [--nan=RANK:STEP] \
        [--sigterm=RANK:STEP] [--late-sigterm=RANK:STEP] [--hang=RANK:STEP] [--ctrl-c=RANK:STEP] [--slow-fcn=SECONDS] \
        [--stalled-validation=FIGURE] -- --TRAIN_DIR=...
    (train.py settings). Signals come during that step, before its loss check; --late-sigterm's after its loss
    checks, before the ranks agree on stopping.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # as a torchrun worker, conftest.py has not run
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import tiny_args, write_pairs  # noqa: E402 - as a worker, found beside this file

LAUNCH_TIMEOUT_S = 300  # a hung launch fails the test instead of hanging CI


# ----------------------------------------------------------------------------- launching

class Launch:
    """One finished torchrun launch: exit code, wall time, torchrun's own output, each rank's output and dump."""

    def __init__(self, proc: subprocess.CompletedProcess, seconds: float, log_dir: Path, dump: Path, nproc: int):
        self.returncode, self.seconds = proc.returncode, seconds
        self.stdout, self.stderr = proc.stdout, proc.stderr
        self.rank_out = [_rank_log(log_dir, r, "stdout") for r in range(nproc)]
        self.rank_err = [_rank_log(log_dir, r, "stderr") for r in range(nproc)]
        self.dumps = [torch.load(dump / f"rank{r}.pt", weights_only=False) if (dump / f"rank{r}.pt").exists()
                      else None for r in range(nproc)]

    def describe(self) -> str:
        ranks = "".join(f"\n--- rank {r} stdout:\n{o}\n--- rank {r} stderr:\n{e[-3000:]}"
                        for r, (o, e) in enumerate(zip(self.rank_out, self.rank_err)))
        return f"exit {self.returncode} after {self.seconds:.1f} s\n--- torchrun:\n{self.stderr[-3000:]}{ranks}"


def _rank_log(log_dir: Path, rank: int, stream: str) -> str:
    found = list(log_dir.glob(f"*/attempt_0/{rank}/{stream}.log"))
    return found[0].read_text() if found else ""


def launch(tmp: Path, name: str, train_args: list[str], worker_opts: tuple[str, ...] = (), nproc: int = 2) -> Launch:
    """torchrun --standalone this file as the worker; each rank's stdout/stderr go to their own log files."""
    dump, log_dir = tmp / f"{name}_dump", tmp / f"{name}_logs"
    dump.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--log-dir={log_dir}", "--redirects=3", __file__, str(dump), *worker_opts, "--", *train_args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
    if loopback:  # gloo talks over 127.0.0.1 only (torchrun --standalone already rendezvouses on localhost)
        env["GLOO_SOCKET_IFNAME"] = loopback[0]
    start = time.perf_counter()
    # own session: a worker's simulated Ctrl-C (SIGINT to its process group) must not reach pytest
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
                          start_new_session=True)
    return Launch(proc, time.perf_counter() - start, log_dir, dump, nproc)


def run_in_process(args: list[str], monkeypatch) -> dict:
    """train.main in this process (single-process run); returns its G and D (the objects it trained)."""
    import train
    models = {}
    build = train.build_models

    def capture(cfg):
        G, D = build(cfg)
        models.setdefault("G", G)
        models.setdefault("D", D)
        return G, D
    monkeypatch.setattr(train, "build_models", capture)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        models["exit"] = train.main(args)
    finally:
        for sig, handler in handlers.items():  # train.main installs its own Ctrl-C handling
            signal.signal(sig, handler)
    return models


def grads(module) -> dict:
    return {n: p.grad for n, p in module.named_parameters()}


def assert_close_dicts(a: dict, b: dict, what: str, rtol: float, atol_frac: float) -> None:
    """Every tensor close, with an absolute tolerance relative to the largest magnitude in the whole dict."""
    assert a.keys() == b.keys()
    scale = max(t.abs().max().item() for t in b.values())
    worst = max(((x - b[k]).abs().max().item(), k) for k, x in a.items())
    for k, x in a.items():
        torch.testing.assert_close(x, b[k], rtol=rtol, atol=atol_frac * scale,
                                   msg=lambda m: f"{what} {k}: {m} (largest difference {worst})")


# ----------------------------------------------------------------------------- settings

def dist_settings(data: Path, run_dir: Path, **overrides) -> list[str]:
    """tiny_args for a launch, with a short DIST_TIMEOUT_S: a stuck rank fails the launch within a minute."""
    return tiny_args(data, run_dir, **({"DIST_TIMEOUT_S": 60} | overrides))


# Per-sample-independent settings for the equivalence test: instance norm, no dropout.
EQUIV = dict(NORM="instance", DROPOUT=False, N_EPOCHS=1, N_EPOCHS_DECAY=0, N_SAMPLES=2)


# ----------------------------------------------------------------------------- a 2-process run, and what it wrote

@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Launch:
    """2 processes x BATCH_SIZE 2 on 4 images with instance norm and no dropout: exactly one optimisation step
    (so the gradients left on the parameters are the first step's), then validation, samples, checkpoints."""
    tmp = tmp_path_factory.mktemp("ddp")
    write_pairs(tmp / "data" / "train", 4, seed=0)
    write_pairs(tmp / "data" / "val", 2, seed=1)
    run = launch(tmp, "ddp", dist_settings(tmp / "data", tmp / "run", BATCH_SIZE=2, **EQUIV))
    assert run.returncode == 0 and None not in run.dumps, run.describe()
    run.tmp, run.data, run.run_dir = tmp, tmp / "data", tmp / "run"
    return run


def test_ddp_run_writes_one_set_of_outputs_and_other_ranks_stay_silent(ddp_run):
    run_dir = ddp_run.run_dir
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("tensorboard/")]
    assert [f for f in files if f not in events] == [
        "checkpoints/best.pt", "checkpoints/last.pt", "config.json", "curves.png", "generator.pt",
        "generator_best.pt", "log.csv", "samples/epoch_0001.png", "samples/step_000000.png"]
    assert len(events) == 1
    rows = (run_dir / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,1,")  # header + one row: epoch 1, step 1

    # rank 0 alone logs, samples, validates and saves; rank 1 prints nothing at all
    rank0, rank1 = (d["calls"] for d in ddp_run.dumps)
    assert rank1 == [], rank1
    names = [name for name, _ in rank0]
    assert names.count("RunLog") == names.count("evaluate_generator") == 1
    assert names.count("write_samples") == 2  # the step-0 grid and epoch 1's
    saved = {Path(path).name for name, path in rank0 if name == "atomic_save"}
    assert saved == {"last.pt", "best.pt", "generator.pt", "generator_best.pt"}
    assert ddp_run.rank_out[1] == "" and ddp_run.rank_err[1] == "", ddp_run.describe()
    assert "2 process(es), global batch 4;" in ddp_run.rank_out[0]
    assert "val: L1" in ddp_run.rank_out[0] and "done:" in ddp_run.rank_out[0]
    assert "Traceback" not in ddp_run.stderr + ddp_run.rank_err[0], ddp_run.describe()


def test_ddp_ranks_end_with_identical_weights(ddp_run):
    rank0, rank1 = ddp_run.dumps
    for key in ("final_G", "final_D", "grad_G", "grad_D"):
        assert rank0[key].keys() == rank1[key].keys()
        differing = [k for k in rank0[key] if not torch.equal(rank0[key][k], rank1[key][k])]
        assert not differing, f"{key} differs between ranks: {differing[:5]}"
    # what rank 0 saved is what both ranks trained
    saved = torch.load(ddp_run.run_dir / "generator.pt", weights_only=True)["generator"]
    assert all(torch.equal(saved[k], v) for k, v in rank0["final_G"].items())


def test_two_processes_of_batch_b_match_one_process_of_batch_2b(ddp_run, tmp_path, monkeypatch):
    """DDP averages gradients over ranks and every loss is a mean, so with a per-sample norm (instance) and no
    dropout, 2 x BATCH_SIZE 2 must give the first-step gradients of 1 x BATCH_SIZE 4 on the same 4 images."""
    single = run_in_process(tiny_args(ddp_run.data, tmp_path / "single", BATCH_SIZE=4, **EQUIV), monkeypatch)
    assert single["exit"] == 0
    ddp = ddp_run.dumps[0]
    # D's gradients come from the D step alone; G's are taken against the freshly updated D
    assert_close_dicts(ddp["grad_D"], grads(single["D"]), "D grad", rtol=1e-4, atol_frac=1e-5)
    assert_close_dicts(ddp["grad_G"], grads(single["G"]), "G grad", rtol=1e-4, atol_frac=1e-5)
    # (weights after the step are no finer check: Adam's first step is lr * g / (|g| + eps), about lr * sign(g),
    # so rounding noise in gradients that are zero in exact arithmetic, e.g. conv biases feeding instance norm,
    # moves those weights by up to lr either way)
    # the log's losses are means over all processes' images, so they match the single run's too
    row = lambda p: dict(zip(*[line.split(",") for line in p.read_text().splitlines()]))  # noqa: E731
    ddp_row, single_row = row(ddp_run.run_dir / "log.csv"), row(tmp_path / "single" / "log.csv")
    for k in ("d_real", "d_fake", "g_gan", "g_l1", "val_l1"):
        assert float(ddp_row[k]) == pytest.approx(float(single_row[k]), rel=1e-4), k


def test_distributed_checkpoint_loads_in_a_single_process_run_and_load_generator(ddp_run, tmp_path, monkeypatch,
                                                                                 capsys):
    from harness.checkpoint import load_generator
    run_dir = tmp_path / "run"
    shutil.copytree(ddp_run.run_dir, run_dir)
    for path in (run_dir / "generator.pt", run_dir / "checkpoints" / "last.pt"):
        ckpt = torch.load(path, weights_only=True)
        assert not [k for k in ckpt["generator"] if k.startswith("module.")]
        if "discriminator" in ckpt:
            assert not [k for k in ckpt["discriminator"] if k.startswith(("module.", "D."))]
        G = load_generator(path, mode="eval")  # strict load_state_dict
        assert all(torch.equal(G.state_dict()[k], v) for k, v in ddp_run.dumps[0]["final_G"].items())
    args = tiny_args(ddp_run.data, run_dir, BATCH_SIZE=4, **(EQUIV | {"N_EPOCHS_DECAY": 1}))
    assert run_in_process(args, monkeypatch)["exit"] == 0
    assert f"resuming from {run_dir / 'checkpoints' / 'last.pt'}: epoch 2, batch 0, step 1" in capsys.readouterr().out
    assert [line.split(",")[0] for line in (run_dir / "log.csv").read_text().splitlines()[1:]] == ["1", "2"]


@pytest.mark.timeout(900)  # two launches, each limited by LAUNCH_TIMEOUT_S
def test_distributed_run_stops_on_one_ranks_sigterm_and_resumes_mid_epoch(ddp_run, tmp_path):
    """The 1-epoch run, given one more (decay) epoch at BATCH_SIZE 1 (2 steps per rank). First launch: rank 1
    alone gets SIGTERM after its first step; the all-reduced stop flag stops both ranks there and rank 0 saves.
    Second launch: every rank loads that checkpoint and finishes epoch 2 from its second batch."""
    run_dir = tmp_path / "run"
    shutil.copytree(ddp_run.run_dir, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    args = dist_settings(ddp_run.data, run_dir, BATCH_SIZE=1, VAL_EVERY=0, SAMPLE_EVERY=0, LOG_EVERY=1,
                         **(EQUIV | {"N_EPOCHS_DECAY": 1}))  # the ranks read their agreed stop flag every step

    stopped = launch(tmp_path, "stopped", args, worker_opts=("--sigterm=1:1",))
    assert stopped.returncode != 0 and None not in stopped.dumps, stopped.describe()  # 128 + SIGTERM, both ranks
    assert [d["exit"] for d in stopped.dumps] == [143, 143], stopped.describe()
    assert [d["steps"] for d in stopped.dumps] == [1, 1]
    assert f"resuming from {last}: epoch 2, batch 0, step 1" in stopped.rank_out[0], stopped.describe()
    assert f"saved {last} at epoch 2, step 2. Resume with:\n  torchrun <the same torchrun options> {__file__} " \
        in stopped.rank_out[0], stopped.describe()  # the script torchrun ran (here this worker)
    assert stopped.rank_out[1] == "" and stopped.rank_err[1] == "", stopped.describe()
    ckpt = torch.load(last, weights_only=True)
    assert (ckpt["epoch"], ckpt["images_in_epoch"], ckpt["step"]) == (1, 2, 2)  # 1 batch of 1 on each rank
    # the epoch's losses so far, summed over both ranks: the resumed epoch's log row averages all four steps
    assert ckpt["epoch_losses"]["n_ok"] == 2 and len(ckpt["epoch_losses"]["loss_sums"]) == 4

    resumed = launch(tmp_path, "resumed", args)
    assert resumed.returncode == 0 and None not in resumed.dumps, resumed.describe()
    assert f"resuming from {last}: epoch 2, batch 1, step 2" in resumed.rank_out[0], resumed.describe()
    for dump in resumed.dumps:
        assert [c for c in dump["calls"] if c[0] == "load_checkpoint"] == [("load_checkpoint", str(last))]
        assert dump["steps"] == 1  # the second of epoch 2's two batches
    assert resumed.rank_out[1] == "" and resumed.rank_err[1] == "", resumed.describe()
    rows = [line.split(",")[:2] for line in (run_dir / "log.csv").read_text().splitlines()[1:]]
    assert rows == [["1", "1"], ["2", "3"]]
    assert torch.load(run_dir / "generator.pt", weights_only=True)["epoch"] == 2
    assert all(torch.equal(v, resumed.dumps[1]["final_G"][k]) for k, v in resumed.dumps[0]["final_G"].items())


# ----------------------------------------------------------------------------- failures, seeding, SyncBN

def test_a_plateau_cut_made_by_rank0s_validation_reaches_every_rank(tmp_path):
    """LR_POLICY="plateau": only rank 0 validates, so only it sees the stall; every rank must train the next epoch
    at the cut LR, or the ranks' weights drift apart."""
    write_pairs(tmp_path / "data" / "train", 4, seed=0)
    write_pairs(tmp_path / "data" / "val", 2, seed=1)
    settings = EQUIV | dict(LR_POLICY="plateau", N_EPOCHS=8, VAL_EVERY=1, BATCH_SIZE=2)
    run = launch(tmp_path, "plateau", dist_settings(tmp_path / "data", tmp_path / "run", **settings),
                 worker_opts=("--stalled-validation=1.0",))
    assert run.returncode == 0 and None not in run.dumps, run.describe()
    rank0, rank1 = run.dumps
    # the first validation sets the best, 6 more without a gain cut the LR: epoch 8 trains at x0.2
    assert rank0["lrs"] == pytest.approx([2e-4] * 7 + [4e-5]), rank0["lrs"]
    assert rank1["lrs"] == rank0["lrs"]
    for key in ("final_G", "final_D"):
        assert all(torch.equal(rank0[key][k], rank1[key][k]) for k in rank0[key]), f"{key} differs between ranks"


def test_a_rank_that_fails_mid_training_stops_the_job(tmp_path):
    """Rank 1 gets a NaN loss at step 1 (ON_NAN=skip: every rank must skip that step together) and crashes at
    step 3: the job must exit non-zero promptly, naming the failure, instead of hanging. The same launch checks
    the seeding: each rank initialises differently (SEED + rank) but trains from rank 0's broadcast weights,
    and draws its own dropout noise."""
    write_pairs(tmp_path / "data" / "train", 8, seed=0)
    write_pairs(tmp_path / "data" / "val", 2, seed=1)
    args = dist_settings(tmp_path / "data", tmp_path / "run", N_EPOCHS_DECAY=0, ON_NAN="skip", DIST_TIMEOUT_S=10,
                         VAL_EVERY=0, SAMPLE_EVERY=0, LOG_EVERY=1)
    run = launch(tmp_path, "fail", args, worker_opts=("--nan=1:1", "--fail=1:3"))
    assert run.returncode != 0 and None not in run.dumps, run.describe()
    assert run.seconds < 120, run.describe()  # seconds in practice; a hang would be cut by LAUNCH_TIMEOUT_S
    assert "RuntimeError: simulated crash of rank 1 at step 3" in run.rank_err[1], run.describe()
    root_cause = run.stderr.split("Root Cause")[-1]
    assert "rank      : 1 " in root_cause, run.describe()

    rank0, rank1 = run.dumps
    assert rank0["nonfinite_steps"] == rank1["nonfinite_steps"] == [1], run.describe()
    assert "step 1: non-finite g_gan=nan; skipped 1 step(s) since the last report (ON_NAN=skip)" in run.rank_err[1]
    assert "step 1: non-finite loss on another process; skipped 1 step(s) since the last report" in run.rank_err[0]

    differs = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert differs(rank0["init_G"], rank1["init_G"])  # seeded SEED + rank ...
    assert not differs(rank1["first_forward_G"], rank0["init_G"])  # ... but DDP trains rank 0's weights
    assert not differs(rank0["first_forward_G"], rank0["init_G"])
    assert not torch.equal(rank0["dropout_mask"], rank1["dropout_mask"])  # own dropout noise per rank


def test_a_step_skipped_on_every_rank_is_counted_once(tmp_path):
    """ON_NAN=skip under torchrun: rank 1's NaN at step 1 makes both ranks skip that step; log.csv counts it once
    (the epoch's loss sums add up over the ranks, the skipped steps do not)."""
    write_pairs(tmp_path / "data" / "train", 8, seed=0)
    write_pairs(tmp_path / "data" / "val", 2, seed=1)
    args = dist_settings(tmp_path / "data", tmp_path / "run", N_EPOCHS_DECAY=0, ON_NAN="skip", VAL_EVERY=0,
                         SAMPLE_EVERY=0, LOG_EVERY=1)
    run = launch(tmp_path, "skip", args, worker_opts=("--nan=1:1",))
    assert run.returncode == 0 and [d["nonfinite_steps"] for d in run.dumps] == [[1], [1]], run.describe()
    row = dict(zip(*[line.split(",") for line in (tmp_path / "run" / "log.csv").read_text().splitlines()]))
    assert row["skipped_steps"] == "1" and row["step"] == "4"


def test_a_stuck_rank_stops_the_job_after_dist_timeout_s(tmp_path):
    """Rank 1 hangs (alive, silent) at its second step. With DIST_TIMEOUT_S=5, rank 0's next collective fails
    with gloo's timeout error and torchrun ends the job (a hang would be cut by LAUNCH_TIMEOUT_S, failing)."""
    write_pairs(tmp_path / "data" / "train", 4, seed=0)
    write_pairs(tmp_path / "data" / "val", 1, seed=1)
    args = dist_settings(tmp_path / "data", tmp_path / "run", DIST_TIMEOUT_S=5, VAL_EVERY=0, SAMPLE_EVERY=0)
    run = launch(tmp_path, "stuck", args, worker_opts=("--hang=1:1",))
    assert run.returncode != 0 and None not in run.dumps, run.describe()
    assert run.dumps[1]["steps"] == 1 and "exit" not in run.dumps[1], run.describe()  # stuck in step 1
    assert "Timed out waiting 5000ms" in run.rank_err[0], run.describe()
    assert "rank      : 0 " in run.stderr.split("Root Cause")[-1], run.describe()


@pytest.mark.timeout(600)  # one launch, limited by LAUNCH_TIMEOUT_S
def test_ranks_agree_on_stopping_after_a_logging_step_in_one_collective_of_its_own(tmp_path):
    """The loss checks all-reduce the NaN flag only (2 per step); the stop is agreed after a logging step (here
    every step) in one all-reduce of its own. A SIGTERM that reaches rank 1 after step 1's loss checks is heard in
    that step's agreement: both ranks finish step 1 and stop there together, and rank 0 saves it, mid-epoch."""
    write_pairs(tmp_path / "data" / "train", 6, seed=0)  # BATCH_SIZE 1 on 2 ranks: 3 steps per epoch
    write_pairs(tmp_path / "data" / "val", 1, seed=1)
    run_dir = tmp_path / "run"
    args = dist_settings(tmp_path / "data", run_dir, BATCH_SIZE=1, N_EPOCHS=1, N_EPOCHS_DECAY=0, VAL_EVERY=0,
                         SAMPLE_EVERY=0, CHECKPOINT_EVERY_STEPS=0, LOG_EVERY=1)
    stopped = launch(tmp_path, "stopped", args, worker_opts=("--late-sigterm=1:1",))
    assert [d and d.get("exit") for d in stopped.dumps] == [143, 143], stopped.describe()
    assert [d["steps"] for d in stopped.dumps] == [2, 2], stopped.describe()
    for dump in stopped.dumps:  # step 0: D's loss check, G's loss check, then the stop agreement
        first, second = dump["all_reduces_before_step"]
        assert second - first == 3, stopped.describe()
    assert f"saved {run_dir / 'checkpoints' / 'last.pt'} at epoch 1, step 2. Resume with:" in stopped.rank_out[0]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["images_in_epoch"], ckpt["step"]) == (0, 4, 2)  # 2 batches of 1 on each rank


@pytest.mark.timeout(900)  # three launches, each limited by LAUNCH_TIMEOUT_S
def test_ctrl_c_under_torchrun_saves_and_the_resumed_run_is_bit_identical(tmp_path):
    """Ctrl-C in torchrun's terminal (SIGINT to torchrun and every rank, sent by rank 0 after its first step):
    both ranks stop after that step, rank 0 saves mid-epoch, exit 0. Resumed, the run (batch norm, dropout: each
    rank's own noise) ends bit-identical to the same run never interrupted: weights and optimiser states."""
    write_pairs(tmp_path / "data" / "train", 4, seed=0)
    write_pairs(tmp_path / "data" / "val", 1, seed=1)
    settings = dict(BATCH_SIZE=1, N_EPOCHS=1, N_EPOCHS_DECAY=1, VAL_EVERY=0, SAMPLE_EVERY=0,  # 2 steps per epoch
                    LOG_EVERY=1)
    whole = launch(tmp_path, "whole", dist_settings(tmp_path / "data", tmp_path / "whole", **settings))
    assert whole.returncode == 0 and None not in whole.dumps, whole.describe()

    run_dir = tmp_path / "run"
    args = dist_settings(tmp_path / "data", run_dir, **settings)
    stopped = launch(tmp_path, "stopped", args, worker_opts=("--ctrl-c=0:0",))
    assert stopped.returncode == 0 and [d.get("exit") for d in stopped.dumps] == [0, 0], stopped.describe()
    assert [d["steps"] for d in stopped.dumps] == [1, 1]
    assert "SIGINT: finishing this step" in stopped.rank_err[0] and stopped.rank_err[1] == "", stopped.describe()
    assert f"saved {run_dir / 'checkpoints' / 'last.pt'} at epoch 1, step 1. Resume with:" in stopped.rank_out[0]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["images_in_epoch"], ckpt["step"]) == (0, 2, 1) and len(ckpt["rank_rngs"]) == 2

    resumed = launch(tmp_path, "resumed", args)
    assert resumed.returncode == 0 and None not in resumed.dumps, resumed.describe()
    assert "resuming from" in resumed.rank_out[0] and [d["steps"] for d in resumed.dumps] == [3, 3]
    for rank in (0, 1):
        for key in ("final_G", "final_D"):
            a, b = resumed.dumps[rank][key], whole.dumps[rank][key]
            assert [k for k in a if not torch.equal(a[k], b[k])] == [], f"rank {rank} {key}"
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (run_dir, tmp_path / "whole"))
    for key in ("opt_G", "opt_D"):
        for p, state in a[key]["state"].items():
            assert all(torch.equal(v, b[key]["state"][p][k]) for k, v in state.items()), key


@pytest.mark.parametrize("gpus", [False, True])
def test_sync_bn_on_cpu_is_refused_up_front(tmp_path, monkeypatch, gpus):
    """DEVICE=cpu (tiny_args) with SYNC_BN under torchrun: refused before any work, also on a machine with GPUs;
    with GPUs and DEVICE=auto the settings pass."""
    import train
    from harness.configurator import load_config
    from harness.errors import ConfigError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as if launched by torchrun (checked with the settings, before setup)
    monkeypatch.setattr(train, "setup_distributed", lambda *args: pytest.fail("got past the config check"))
    with pytest.raises(ConfigError, match="SYNC_BN=True needs CUDA GPUs .*DEVICE=cpu runs on cpu"):
        train.main(tiny_args(tmp_path / "data", tmp_path / "run", SYNC_BN=True))
    if gpus:
        assert load_config(["--SYNC_BN=True"])["SYNC_BN"] is True


def test_under_torchrun_the_device_and_backend_follow_device(monkeypatch, cuda_flags):
    """On a machine with GPUs (mocked), DEVICE=cpu under torchrun means the CPU and gloo, as these tests need;
    DEVICE=auto or cuda means GPU LOCAL_RANK and nccl; an explicit cuda:N is kept."""
    import utils
    from harness.configurator import default_settings
    from harness.distributed import setup_distributed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    groups = []
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, timeout, device_id: groups.append((backend, device_id)))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    assert [setup_distributed(60, device).local_rank for device in ("cpu", "auto", "cuda")] == [1, 1, 1]
    assert groups == [("gloo", None), ("nccl", torch.device("cuda", 1)), ("nccl", torch.device("cuda", 1))]
    cfg = default_settings()
    devices = {name: utils.pick_runtime(cfg | {"DEVICE": name}, local_rank=1).device
               for name in ("cpu", "auto", "cuda", "cuda:0")}
    assert devices == {"cpu": torch.device("cpu"), "auto": torch.device("cuda", 1), "cuda": torch.device("cuda", 1),
                       "cuda:0": torch.device("cuda", 0)}


def test_rank0_samples_and_validates_with_a_plain_batchnorm_copy_of_a_sync_bn_generator():
    """With SYNC_BN, G's SyncBatchNorm in the paper's test mode would wait for the other ranks (at a barrier)."""
    import torch.nn as nn

    from generator_model import UNetGenerator
    from utils import test_mode
    from harness.distributed import without_sync_bn
    G = UNetGenerator(base_channels=8, num_downs=5)
    assert without_sync_bn(G) is G
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(G)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    solo = without_sync_bn(synced)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in solo.modules())
    assert solo.state_dict().keys() == synced.state_dict().keys()
    assert all(torch.equal(solo.state_dict()[k], v) for k, v in synced.state_dict().items())
    x, outputs = torch.randn(2, 3, 32, 32), []
    for net in (solo, synced):  # the paper's test mode: batch statistics, dropout on (same noise for both)
        torch.manual_seed(0)
        with test_mode(net, "paper"):
            outputs.append(net(x))
    torch.testing.assert_close(*outputs)


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from harness.distributed import setup_distributed
    from harness.errors import ConfigError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="local rank 1 has no GPU: this machine has 1"):
        setup_distributed(60, "auto")


def test_ranks_that_disagree_on_checkpoint_or_data_stop_with_a_clear_error(monkeypatch):
    from harness.distributed import check_ranks_agree
    from harness.errors import ConfigError
    check_ranks_agree(1, resume_from=None)  # single process: nothing to compare

    def gather(seen, facts, other=None):
        seen[:] = [facts, other or facts]
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    check_ranks_agree(2, resume_from="run/checkpoints/last.pt", step=7, train_images=8)
    monkeypatch.setattr(torch.distributed, "all_gather_object",
                        lambda seen, facts: gather(seen, facts, {"resume_from": None, "step": 0, "train_images": 8}))
    with pytest.raises(ConfigError, match="processes disagree .*rank 1: .*shared storage"):
        check_ranks_agree(2, resume_from="run/checkpoints/last.pt", step=7, train_images=8)


# ----------------------------------------------------------------------------- the torchrun worker

def worker(argv: list[str]) -> int:
    """Run train.main on this rank with the wrapped names in place; always leave DUMP/rank<r>.pt behind."""
    import torch.nn as nn

    import pix2pix
    import train
    from harness import checkpoint
    from harness import metrics
    from harness import run as harness_run

    sep = argv.index("--")
    dump, opts, train_args = Path(argv[0]), dict(a[2:].split("=", 1) for a in argv[1:sep]), argv[sep + 1:]
    rank = int(os.environ["RANK"])
    at = lambda key: tuple(map(int, opts[key].split(":"))) if key in opts else None  # noqa: E731
    fail_at, nan_at, signal_at, hang_at, ctrl_c_at = at("fail"), at("nan"), at("sigterm"), at("hang"), at("ctrl-c")
    late_signal_at = at("late-sigterm")
    rec = {"rank": rank, "calls": [], "nonfinite_steps": [], "steps": 0, "all_reduces_before_step": []}
    all_reduces = [0]  # the run's own all-reduces (DDP's gradient buckets go through its C++ reducer instead)
    real_all_reduce = torch.distributed.all_reduce

    def counted_all_reduce(*args, **kwargs):
        all_reduces[0] += 1
        return real_all_reduce(*args, **kwargs)
    torch.distributed.all_reduce = counted_all_reduce
    models = {}
    state = {"step": -1}
    if "slow-fcn" in opts:  # FCN_SCORE: rank 0's segmenter takes this many seconds to train (a stand-in, no model)
        def slow_scorer(*args, **kwargs):
            rec["segmenter_at_step"] = rec["steps"]
            time.sleep(float(opts["slow-fcn"]))
            return None, None
        train.scorer_for = slow_scorer  # train's own name for harness.fcn_score.scorer_for, imported at its top

    def save() -> None:
        torch.save(rec, dump / f".rank{rank}.tmp")
        os.replace(dump / f".rank{rank}.tmp", dump / f"rank{rank}.pt")

    def clone(module: nn.Module) -> dict:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def build_models(cfg):
        G, D = real["build_models"](cfg)
        models.setdefault("G", G)
        models.setdefault("D", D)
        rec["init_G"] = clone(G)  # this rank's own initialisation, before DDP broadcasts rank 0's

        def first_forward(module, args):
            rec.setdefault("first_forward_G", clone(G))
        G.register_forward_pre_hook(first_forward)
        dropouts = [m for m in G.modules() if isinstance(m, nn.Dropout)]

        def first_dropout(module, inputs, output):  # returns None: the output itself is left alone
            rec.setdefault("dropout_mask", (output == 0) & (inputs[0] != 0))
        if dropouts:
            dropouts[0].register_forward_hook(first_dropout)
        return G, D

    def train_step(model, x, y, guard):
        step = state["step"] = guard.step
        if fail_at == (rank, step):
            raise RuntimeError(f"simulated crash of rank {rank} at step {step}")
        if hang_at == (rank, step):  # stuck, e.g. on a dead disk; SIGTERM left to kill it, so torchrun can
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # end it without its 30 s grace period
            save()
            time.sleep(LAUNCH_TIMEOUT_S)  # longer than any test waits; bounded so no rank outlives a failed test
        rec["all_reduces_before_step"].append(all_reduces[0])
        try:  # a signal during the step (before its loss checks) ...
            if signal_at == (rank, step):  # as if this rank's node were preempted
                os.kill(os.getpid(), signal.SIGTERM)
            if ctrl_c_at == (rank, step):  # Ctrl-C in torchrun's terminal: SIGINT to its whole process group
                os.killpg(os.getpgid(0), signal.SIGINT)
            losses = real["train_step"](model, x, y, guard)
            if guard.bad.item():  # the ranks' agreed verdict on this step (read here by the test only)
                rec["nonfinite_steps"].append(step)
            if late_signal_at == (rank, step):  # ... or after them: heard in the step's stop agreement
                os.kill(os.getpid(), signal.SIGTERM)
            return losses
        finally:
            rec["steps"] += 1
            save()

    def generator_loss(*args):
        loss, gan, l1 = real["generator_loss"](*args)
        if nan_at == (rank, state["step"]):
            return loss * float("nan"), gan * float("nan"), l1
        return loss, gan, l1

    def recorder(name):
        def call(*args, **kwargs):
            path = next((a for a in args if isinstance(a, (str, os.PathLike))), None)
            rec["calls"].append((name, str(path) if path is not None else None))
            return real[name](*args, **kwargs)
        return call

    def set_learning_rates(*args):
        lr = real["set_learning_rates"](*args)
        rec.setdefault("lrs", []).append(lr)  # G's LR for each epoch, as this rank trains it
        return lr

    def plateau_after(state, figure):  # --stalled-validation=FIGURE: every validation gives this figure
        return real["plateau_after"](state, float(opts.get("stalled-validation", figure)))

    wrapped = {"build_models": build_models, "train_step": train_step, "generator_loss": generator_loss,
               "set_learning_rates": set_learning_rates, "plateau_after": plateau_after}
    wrapped |= {name: recorder(name) for name in
                ("evaluate_generator", "write_samples", "RunLog", "atomic_save", "load_checkpoint")}
    home = {"generator_loss": pix2pix, "build_models": train, "train_step": train,  # whose global the run calls
            "set_learning_rates": train, "plateau_after": train,
            "evaluate_generator": metrics,
            "atomic_save": checkpoint}  # (by the checkpoint writer's thread)
    real = {name: getattr(home.get(name, harness_run), name) for name in wrapped}
    for name, fn in wrapped.items():
        setattr(home.get(name, harness_run), name, fn)
    try:
        code = train.main(train_args)
        rec["exit"] = code
        for key, net in (("G", models["G"]), ("D", models["D"])):
            rec[f"final_{key}"] = clone(net)
            rec[f"grad_{key}"] = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
        return code
    finally:
        save()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
