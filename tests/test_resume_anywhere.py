"""Checkpoints that move between machines: resume under another PRECISION, process count,
CHANNELS_LAST or COMPILE; the GPU RNG of the GPU in use only; set_device for DEVICE=cuda:N; few device->host
reads per training step; fp16 details; CPU exports; DETERMINISTIC.

    python -m pytest tests/test_resume_anywhere.py -q
"""
import collections
import math
import signal
import sys
from pathlib import Path

import pytest
import torch

from harness import checkpoint
import pix2pix
from harness import run as harness_run
from harness import run_log
import train
import utils
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


def test_a_plain_training_step_reads_the_device_zero_times(tiny_data, tmp_path):
    """The finiteness checks, the loss sums and the stop/save flags stay on the device until a LOG_EVERY step, a save
    or the epoch end (the old code read twice per step, and before that 8 values): the host never waits for the
    device mid-run. Also with ON_NAN=skip, whose undo is a device-side select (after its first step)."""
    assert count_host_reads_per_step(tiny_data, tmp_path / "run") == [0] * 5
    assert count_host_reads_per_step(tiny_data, tmp_path / "skip", ON_NAN="skip") == [0] * 5


# ----------------------------------------------------------------------------- the resume matrix

# 8 images at BATCH_SIZE 4: epoch 1 (2 steps) is saved under one setting, epoch 2 (2 steps) resumes under another.
# No dropout: its masks are drawn in memory order, so another CHANNELS_LAST draws other (equally valid) noise, and
# the updates could not be compared with the uninterrupted run's
FAST = dict(DROPOUT=False, BATCH_SIZE=4, N_EPOCHS=1, N_EPOCHS_DECAY=1, VAL_EVERY=0, SAMPLE_EVERY=0, SNAPSHOT_EVERY=0)


class EndOfEpoch1(Exception):
    """Stands in for the machine going away right after epoch 1 was saved."""


def run_training(data: Path, run_dir: Path, monkeypatch, stop_after_epoch_1: bool = False, **settings) -> int:
    """train.main in-process (2 epochs of 2 steps); torch.compile (COMPILE=True) with the aot_eager backend: the
    same graph capture, no C++ compiler needed (inductor's CPU build takes minutes on a shared 2-core machine)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    real_compile = torch.compile
    with monkeypatch.context() as mp:
        mp.setattr(run_log, "plot_curves", lambda rows, path: None)
        mp.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager"))
        if stop_after_epoch_1:  # train.py's end-of-epoch barrier comes after last.pt is written
            from conftest import write_checkpoints_at_once
            write_checkpoints_at_once(mp)

            def barrier(world_size):
                if (run_dir / "checkpoints" / "last.pt").exists():
                    raise EndOfEpoch1
            mp.setattr(train, "barrier", barrier)
        try:
            return train.main(tiny_args(data, run_dir, **(FAST | settings)))
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)


def ckpt_of(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def update(before: dict, after: dict, nets=("generator", "discriminator")) -> torch.Tensor:
    """Epoch 2's change of every convolution kernel of G and D (or `nets`), as one flat vector. (Biases of convolutions
    followed by a normalisation get gradients of pure rounding noise - the norm cancels them - which Adam turns
    into updates of +-lr, different in every layout and precision: they are left out.)"""
    return torch.cat([(after[net][k] - before[net][k]).flatten()
                      for net in nets for k in before[net] if before[net][k].dim() == 4])


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """Epoch 1 under a setting (trained once per module and setting) -> its RUN_DIR, to be copied."""
    from conftest import write_pairs
    root = tmp_path_factory.mktemp("saved")
    write_pairs(root / "data" / "train", 8, seed=0)
    write_pairs(root / "data" / "val", 2, seed=1)
    cache = {}

    def get(**setting) -> Path:
        key = tuple(sorted(setting.items()))
        if key not in cache:
            run_dir = root / "_".join(f"{k}{v}" for k, v in key)
            with pytest.MonkeyPatch.context() as mp, pytest.raises(EndOfEpoch1):
                run_training(root / "data", run_dir, mp, stop_after_epoch_1=True, **setting)
            cache[key] = run_dir
        return cache[key]
    get.data = root / "data"
    return get


def resume(saved_runs, tmp_path: Path, monkeypatch, before: dict, after: dict) -> tuple[torch.Tensor, dict, dict]:
    """Epoch 1 saved under `before`, epoch 2 resumed under `after` -> (epoch 2's update, checkpoint before it,
    checkpoint after it)."""
    import shutil
    run_dir = tmp_path / "_".join(f"{k}{v}" for k, v in sorted(after.items()))
    shutil.copytree(saved_runs(**before), run_dir)
    assert run_training(saved_runs.data, run_dir, monkeypatch, **after) == 0
    start, end = ckpt_of(saved_runs(**before)), ckpt_of(run_dir)
    assert (start["step"], end["step"]) == (2, 4)  # the resumed run continued, it did not start again
    return update(start, end), start, end


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


PRECISIONS = ("fp32", "bf16", "fp16")


@pytest.mark.parametrize("now", PRECISIONS)
@pytest.mark.parametrize("saved", PRECISIONS)  # innermost: test ids read [saved-now]
def test_resume_under_another_precision(saved_runs, tmp_path, monkeypatch, capsys, saved, now):
    """Every pair: the run continues (a fresh loss scaler where the checkpoint holds none, the saved one where it
    does), and its next updates are those of the uninterrupted run up to the precisions' rounding (bf16 keeps 8
    bits of mantissa: ~20 % apart; a wrong update, like the old layout bug's, is ~75 % or more). A fresh fp16
    scaler starts at 2**16 and, as in any new fp16 run, skips the steps that overflow while it backs off: those
    are counted (the run's scaler_skipped_steps), and that network's update is not compared."""
    _, start, end = resume(saved_runs, tmp_path, monkeypatch, {"PRECISION": saved}, {"PRECISION": now})
    out = capsys.readouterr().out
    _, _, same = resume(saved_runs, tmp_path / "same", monkeypatch, {"PRECISION": saved}, {"PRECISION": saved})
    compared, skips = [], 0
    for net, key in (("generator", "scaler_G"), ("discriminator", "scaler_D")):
        if now != "fp16":
            assert end[key] == {}
            backed_off = False
        else:
            first = start[key]["scale"] if saved == "fp16" else 2.0 ** 16  # the saved scaler, or a fresh one
            assert end[key]["scale"] <= first
            backed_off = end[key]["scale"] < first
            skips += round(math.log2(first / end[key]["scale"]))  # each skipped step halves the scale
        if not backed_off:
            diff = relative_difference(update(start, end, [net]), update(start, same, [net]))
            assert diff < (1e-6 if now == saved else 0.5), (net, diff)
            compared.append(net)
    assert compared  # at least one network's update checked in every cell
    if now == "fp16":
        assert f"fp16 loss scaler skipped {skips} G/D updates" in out


@pytest.mark.parametrize("saved, now", [(True, False), (False, True)])
def test_resume_with_the_other_memory_layout(saved_runs, tmp_path, monkeypatch, saved, now):
    """CHANNELS_LAST on <-> off: Adam's moments take the parameters' new layout, so the fused update pairs the
    right elements: the next updates equal the uninterrupted run's up to rounding (the old moments' layout gave
    updates off by the order of the updates themselves)."""
    changed, _, _ = resume(saved_runs, tmp_path, monkeypatch, {"CHANNELS_LAST": saved}, {"CHANNELS_LAST": now})
    same, _, _ = resume(saved_runs, tmp_path / "same", monkeypatch, {"CHANNELS_LAST": saved},
                        {"CHANNELS_LAST": saved})
    assert relative_difference(changed, same) < 1e-4


@pytest.mark.parametrize("saved, now", [(True, False), (False, True), (True, "reduce-overhead")])
def test_resume_with_compile_switched(saved_runs, tmp_path, monkeypatch, saved, now):
    """COMPILE on <-> off: checkpoints hold the plain modules' weights (no _orig_mod. prefixes), so either way the
    next updates equal the uninterrupted run's up to rounding; a COMPILE=True checkpoint continues under
    "reduce-overhead" (CUDA graphs on a GPU; here the same aot_eager capture)."""
    changed, _, _ = resume(saved_runs, tmp_path, monkeypatch, {"COMPILE": saved}, {"COMPILE": now})
    same, _, _ = resume(saved_runs, tmp_path / "same", monkeypatch, {"COMPILE": saved}, {"COMPILE": saved})
    assert relative_difference(changed, same) < 1e-4


@pytest.mark.timeout(600)
@pytest.mark.parametrize("saved, now", [(1, 2), (2, 1)])
def test_resume_with_another_number_of_processes(saved_runs, tmp_path, monkeypatch, saved, now):
    """1 <-> 2 processes (gloo, torchrun) at the same global batch: 2 x BATCH_SIZE 2 or 1 x BATCH_SIZE 4, with
    instance norm (no statistics shared across processes), so both are the same optimisation. A checkpoint saved
    by either continues under the other with the updates of a single-process continuation, up to rounding. The
    two-process save is stopped by a SIGTERM to rank 1 after epoch 1's last step."""
    import shutil
    from test_distributed import dist_settings, launch
    same = {"NORM": "instance"}
    batch = {1: {"BATCH_SIZE": 4}, 2: {"BATCH_SIZE": 2}}
    run_dir = tmp_path / "run"
    if saved == 1:
        shutil.copytree(saved_runs(**same), run_dir)
    else:
        stopped = launch(tmp_path, "save", dist_settings(saved_runs.data, run_dir, **(FAST | same | batch[2])),
                         worker_opts=("--sigterm=1:1",))
        assert [d and d["exit"] for d in stopped.dumps] == [143, 143], stopped.describe()
    start = ckpt_of(run_dir)
    assert start["step"] == 2 and len(start["rank_rngs"]) == saved
    if now == 1:
        assert run_training(saved_runs.data, run_dir, monkeypatch, **same, **batch[1]) == 0
    else:
        resumed = launch(tmp_path, "resume", dist_settings(saved_runs.data, run_dir, **(FAST | same | batch[2])))
        assert resumed.returncode == 0, resumed.describe()
    end = ckpt_of(run_dir)
    assert end["step"] == 4 and len(end["rank_rngs"]) == now
    _, reference_start, reference_end = resume(saved_runs, tmp_path / "reference", monkeypatch, same, same)
    assert relative_difference(update(start, end), update(reference_start, reference_end)) < 1e-4


# ----------------------------------------------------------------------------- GPUs (CUDA calls mocked)

class Called(Exception):
    """A mocked CUDA call was reached: the test stops there."""


def test_each_process_saves_and_restores_only_its_own_gpus_rng(monkeypatch):
    """Saved on GPU 3 of a 4-GPU machine, resumed on a 1-GPU machine: GPU 3's state goes to GPU 0, and no
    per-machine list of states is indexed (set_rng_state_all raised IndexError on a smaller machine). Older
    checkpoints with such a list restore their own GPU's entry; a CPU checkpoint leaves the GPU's seeded state."""
    states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(4)}
    restored = []

    def refuse(*args, **kwargs):
        raise AssertionError("the per-machine list of GPU RNG states must not be used")
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(
        (state, torch.device(device))))
    saved = checkpoint.rng_states(torch.device("cuda", 3))
    assert torch.equal(saved["cuda"], states[3])
    checkpoint.set_rng_states(saved, torch.device("cuda", 0))
    assert len(restored) == 1 and torch.equal(restored[0][0], states[3]) and restored[0][1] == torch.device("cuda", 0)

    restored.clear()
    legacy = saved | {"cuda": [states[i] for i in range(4)]}  # as older versions wrote it: one state per GPU
    checkpoint.set_rng_states(legacy, torch.device("cuda", 1))
    assert len(restored) == 1 and torch.equal(restored[0][0], states[1])
    restored.clear()
    checkpoint.set_rng_states(legacy | {"cuda": legacy["cuda"][:1]}, torch.device("cuda", 1))  # no entry for GPU 1
    checkpoint.set_rng_states(checkpoint.rng_states(torch.device("cpu")), torch.device("cuda", 0))  # a CPU run's
    checkpoint.set_rng_states(saved, torch.device("cpu"))  # a GPU checkpoint resumed on the CPU
    assert restored == []


def test_cuda_n_becomes_the_current_device_in_every_entry_point(monkeypatch, tmp_path, tiny_data):
    """DEVICE=cuda:1: train, bench and predict/evaluate/demo (inference.load_for_inference) call
    torch.cuda.set_device(cuda:1) first, so pin-memory threads and argument-less CUDA calls use GPU 1."""
    import bench
    from harness import inference
    cuda1 = torch.device("cuda", 1)

    def set_device(device):
        raise Called(device)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for module in (utils, inference):
        monkeypatch.setattr(module, "pick_device", lambda name="auto": cuda1)
    monkeypatch.setattr(inference, "check_device", lambda name, setting: None)  # this machine has no cuda:1 to check
    entry_points = {"train": lambda: train.main(tiny_args(tiny_data, tmp_path / "run")),
                    "bench": lambda: bench.main(["--skip", "infer,data,peak,onnx"]),
                    "inference": lambda: inference.load_for_inference(tmp_path / "generator.pt", "eval", "cuda:1")}
    for name, call in entry_points.items():
        with pytest.raises(Called) as called:
            call()
        assert called.value.args == (cuda1,), name
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail(f"set_device({device}) on a CPU run"))
    utils.use_device(torch.device("cpu"))
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    utils.synchronize(cuda1)
    utils.synchronize(torch.device("cpu"))
    assert synced == [cuda1]  # the device in use, not the current one


def test_auto_precision_is_fp32_before_volta(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))  # P100: no tensor cores
    assert utils.pick_precision("auto", torch.device("cuda", 0)) == "fp32"


# ----------------------------------------------------------------------------- fp16, exports, determinism

def test_an_fp16_overflow_says_so_and_suggests_bf16_or_fp32(monkeypatch):
    """Logits above fp16's 65504 become inf: the NaN guard stops the run, and its message names the cause."""
    from harness.configurator import default_settings
    from harness.errors import NonFiniteLoss
    from harness.step_guard import StepGuard
    from pix2pix import Pix2Pix, build_models, make_grad_scalers, make_optimizers
    from utils import autocast
    cfg = default_settings() | {"IMAGE_SIZE": 32, "NUM_DOWNS": 5, "GEN_BASE_CHANNELS": 8, "DISC_BASE_CHANNELS": 8}
    G, D = build_models(cfg)
    cpu = torch.device("cpu")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    monkeypatch.setattr(pix2pix, "discriminator_loss", lambda r, f, kind="bce": (r.sum() * float("inf"),) * 3)
    for precision, hint in (("fp16", True), ("fp32", False)):
        model = Pix2Pix(G, D, *make_optimizers(G, D, cfg, cpu), *make_grad_scalers(cpu, precision), 100.0,
                        autocast(cpu, precision))
        guard = StepGuard("stop", cpu, precision == "fp16")
        guard.begin_step(7, model)
        guard.end_step(pix2pix.train_step(model, x, x, guard))
        with pytest.raises(NonFiniteLoss) as e:
            guard.read()
        assert str(e.value).startswith(("step 7: non-finite d_real=inf", "step 7: non-finite d_real=-inf"))
        assert ("65504" in str(e.value) and "PRECISION=bf16" in str(e.value) and "PRECISION=fp32" in str(e.value)) \
            == hint


def test_exports_hold_cpu_tensors(saved_runs):
    """generator.pt opens with a plain torch.load on any machine (its tensors are saved from the CPU)."""
    export = torch.load(saved_runs() / "generator.pt", weights_only=True)
    assert export["generator"] and all(t.device.type == "cpu" for t in export["generator"].values())


def test_cpu_copy_copies_every_tensor_to_the_cpu():
    """What a checkpoint is built from: CPU copies (a later update of the live tensors does not reach them)."""
    net = torch.nn.BatchNorm2d(3)
    live = net.state_dict()
    state = checkpoint.cpu_copy({"net": live, "list": [live["weight"]]})
    assert len(state["net"]) == len(live) and all(t.device.type == "cpu" for t in state["net"].values())
    with torch.no_grad():
        net.weight += 1
    assert torch.equal(state["net"]["weight"], torch.ones(3)) and torch.equal(state["list"][0], torch.ones(3))


def test_deterministic_setting(saved_runs, tmp_path, monkeypatch):
    """DETERMINISTIC=True turns on torch.use_deterministic_algorithms (and, on CUDA, turns off cuDNN autotuning);
    a CPU run trains the same with it as without."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    try:
        utils.set_determinism(True, torch.device("cuda", 0))
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert run_training(saved_runs.data, tmp_path / "det", monkeypatch, DETERMINISTIC=True) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    utils.set_determinism(False, torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark
    assert run_training(saved_runs.data, tmp_path / "free", monkeypatch) == 0
    a, b = (ckpt_of(tmp_path / name) for name in ("det", "free"))
    assert all(torch.equal(v, b["generator"][k]) for k, v in a["generator"].items())
