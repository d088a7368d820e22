"""On a CUDA GPU (collected everywhere, skipped with the reason where torch.cuda.is_available() is False): a training
step in each PRECISION, a DETERMINISTIC run stopped and resumed bit-identical to the run never stopped, CPU -> CUDA
and CUDA -> CPU resume, plain training steps without a single synchronising CUDA call, COMPILE=True and
"reduce-overhead" training as eager does, evaluate.py scoring on the GPU as on the CPU; CUDA_GRAPH's captured step
against the eager one at batch 1 and 16, its resume and a real capture failure; DATA_ON_DEVICE on the GPU as the
DataLoader; SYNC_BN on two GPUs.
`python bench.py --gpu-check` runs these with the rest of the GPU check.

    python -m pytest tests/test_cuda.py -q
"""
import json
import os
import signal

import pytest
import torch

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: DETERMINISTIC=True needs it

import evaluate  # noqa: E402
import train  # noqa: E402
from conftest import tiny_args  # noqa: E402
from harness import run_log  # noqa: E402
from harness.configurator import default_settings  # noqa: E402
from pix2pix import Pix2Pix, build_models, make_grad_scalers, make_optimizers, train_step  # noqa: E402
from test_resume_anywhere import (FAST, EndOfEpoch1, ckpt_of, relative_difference, resume,  # noqa: E402, F401
                                  run_training, saved_runs)  # saved_runs: a fixture, used by name
from utils import pick_runtime  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: torch.cuda.is_available() is False here (on a GPU machine, "
                                       "python bench.py --gpu-check runs these tests)")


def main_on_gpu(args: list[str]) -> int:
    """train.main in this process, giving pytest its signal handlers back (train.main installs its own)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return train.main(args)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_one_training_step_in_each_precision(precision, cuda_flags):
    """pick_runtime on the GPU: the precision asked for, TF32 exactly for tf32, fp32 losses, and an update (or, in
    fp16, the loss scaler backing off from an overflow, which skips the update as it should)."""
    cfg = default_settings() | {"IMAGE_SIZE": 32, "NUM_DOWNS": 5, "GEN_BASE_CHANNELS": 8, "DISC_BASE_CHANNELS": 8,
                                "DEVICE": "cuda", "PRECISION": precision, "BATCH_SIZE": 2}
    runtime = pick_runtime(cfg)
    assert runtime.device.type == "cuda" and runtime.precision == precision
    assert torch.backends.cudnn.allow_tf32 is torch.backends.cuda.matmul.allow_tf32 is (precision == "tf32")
    torch.manual_seed(0)
    G, D = (net.to(runtime.device, memory_format=runtime.memory_format) for net in build_models(cfg))
    before = [p.detach().clone() for p in G.parameters()]
    model = Pix2Pix(G, D, *make_optimizers(G, D, cfg, runtime.device),
                    *make_grad_scalers(runtime.device, precision), cfg["L1_LAMBDA"], runtime.amp)
    x, y = (runtime.to_device(torch.rand(2, 3, 32, 32) * 2 - 1) for _ in range(2))
    losses = train_step(model, x, y)
    assert all(v.device.type == "cuda" and v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    updated = any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    assert updated or (precision == "fp16" and model.scaler_G.get_scale() < 2.0 ** 16)


def test_a_deterministic_run_stopped_and_resumed_is_bit_identical(data, tmp_path, monkeypatch, cuda_flags):
    """DETERMINISTIC=True, with dropout (the GPU's RNG state is saved and restored): epoch 1, stopped after its
    checkpoint, then resumed for epoch 2, ends with the weights and Adam states of the run never stopped."""
    settings = dict(DEVICE="cuda", DETERMINISTIC=True, DROPOUT=True)
    try:
        assert run_training(data, tmp_path / "whole", monkeypatch, **settings) == 0
        with pytest.raises(EndOfEpoch1):
            run_training(data, tmp_path / "run", monkeypatch, stop_after_epoch_1=True, **settings)
        assert ckpt_of(tmp_path / "run")["step"] == 2
        assert run_training(data, tmp_path / "run", monkeypatch, **settings) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    resumed, whole = ckpt_of(tmp_path / "run"), ckpt_of(tmp_path / "whole")
    assert resumed["step"] == whole["step"] == 4
    for net in ("generator", "discriminator"):
        assert [k for k, v in resumed[net].items() if not torch.equal(v, whole[net][k])] == [], net
    for opt in ("opt_G", "opt_D"):
        for p, state in resumed[opt]["state"].items():
            assert all(torch.equal(v, whole[opt]["state"][p][k]) for k, v in state.items()), opt


@pytest.mark.parametrize("saved, now", [("cpu", "cuda"), ("cuda", "cpu")])
def test_resume_on_the_other_device(saved_runs, tmp_path, monkeypatch, cuda_flags, saved, now):
    """Epoch 1 saved on one device, epoch 2 on the other (fp32: IEEE on both): the next updates are those of the
    run that stayed, up to the devices' rounding."""
    changed, _, _ = resume(saved_runs, tmp_path, monkeypatch, {"DEVICE": saved}, {"DEVICE": now})
    same, _, _ = resume(saved_runs, tmp_path / "same", monkeypatch, {"DEVICE": saved}, {"DEVICE": saved})
    assert relative_difference(changed, same) < 1e-3


def test_plain_training_steps_make_no_synchronising_cuda_call(data, tmp_path, monkeypatch, cuda_flags):
    """From the start of step 2 to the start of step 7 of an 8-step epoch (no logging step, no save, no epoch end in
    between) every CUDA call that would make the host wait for the GPU raises (set_sync_debug_mode("error")):
    the loss checks, the stop/save flags and the batches' copies to the GPU all stay asynchronous."""
    real_step, steps = train.train_step, []

    def step(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error" if 2 <= len(steps) < 7 else "default")
        steps.append(len(steps))
        return real_step(*args, **kwargs)
    monkeypatch.setattr(train, "train_step", step)
    monkeypatch.setattr(run_log, "plot_curves", lambda rows, path: None)
    try:
        assert main_on_gpu(tiny_args(data, tmp_path / "run", DEVICE="cuda", BATCH_SIZE=1, N_EPOCHS=1,
                                     N_EPOCHS_DECAY=0, VAL_EVERY=0, SAMPLE_EVERY=0, LOG_EVERY=1000)) == 0
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(steps) == 8


def kernels(ckpt: dict) -> torch.Tensor:
    """Every convolution kernel of G and D as one vector (biases before a normalisation get updates of pure
    rounding noise, +-lr: left out, as in test_resume_anywhere.update)."""
    return torch.cat([v.flatten() for net in ("generator", "discriminator") for v in ckpt[net].values()
                      if v.dim() == 4])


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_training_follows_eager_training(data, tmp_path, cuda_flags, mode):
    """The real torch.compile (inductor; with "reduce-overhead" also CUDA graphs) trains 2 epochs of 2 steps from
    the same initial weights as eager does, up to rounding. (4 Adam steps move each kernel weight by up to
    4 x 2e-4 against initial weights of about 0.02: a wrong gradient would differ by percents, rounding by far
    less than 0.1 %.)"""
    settings = FAST | {"DEVICE": "cuda"}
    for name, compile_mode in (("eager", False), ("compiled", mode)):
        assert main_on_gpu(tiny_args(data, tmp_path / name, COMPILE=compile_mode, **settings)) == 0
    eager, compiled = ckpt_of(tmp_path / "eager"), ckpt_of(tmp_path / "compiled")
    assert compiled["step"] == eager["step"] == 4
    assert relative_difference(kernels(compiled), kernels(eager)) < 1e-3


def test_evaluate_scores_on_the_gpu_as_on_the_cpu(tiny_run, tmp_path, cuda_flags):
    """evaluate.py's default: the generator in IEEE fp32 and the metrics on the CPU, so a GPU's scores are the CPU's
    up to the generator's rounding (eval mode: no dropout noise, whose random streams differ between devices)."""
    summaries = {}
    for device in ("cpu", "cuda"):
        assert evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data",
                              str(tiny_run / "data" / "val"), "--output", str(tmp_path / device), "--mode", "eval",
                              "--device", device]) == 0
        summaries[device] = json.loads((tmp_path / device / "summary.json").read_text())
    assert summaries["cuda"]["precision"] == "fp32" and summaries["cuda"]["device"].startswith("cuda")
    for key in ("l1", "psnr", "ssim", "ratio"):
        assert summaries["cuda"][key] == pytest.approx(summaries["cpu"][key], rel=1e-4), key


# ----------------------------------------------------------------------------- CUDA_GRAPH and DATA_ON_DEVICE

def graph_and_eager_steps(batch: int, steps: int = 7) -> tuple[list, list]:
    """The same tiny model and batches trained by the captured step (3 eager warm-up steps, the capture, then
    replays) and by the eager step with the same capturable optimisers: (their weights, their loss tallies)."""
    from harness import cuda_graph
    from harness.step_guard import StepGuard
    cfg = default_settings() | {"IMAGE_SIZE": 64, "NUM_DOWNS": 6, "GEN_BASE_CHANNELS": 8, "DISC_BASE_CHANNELS": 8,
                                "DEVICE": "cuda", "PRECISION": "bf16", "BATCH_SIZE": batch, "CUDA_GRAPH": True,
                                "DETERMINISTIC": True}
    runtime = pick_runtime(cfg)
    generator = torch.Generator().manual_seed(3)
    data = [tuple(runtime.to_device(torch.rand(batch, 3, 64, 64, generator=generator) * 2 - 1) for _ in range(2))
            for _ in range(steps)]
    weights, tallies = [], []
    try:
        for graphed in (True, False):
            torch.manual_seed(0)
            G, D = (net.to(runtime.device, memory_format=runtime.memory_format) for net in build_models(cfg))
            model = Pix2Pix(G, D, *make_optimizers(G, D, cfg, runtime.device),
                            *make_grad_scalers(runtime.device, "bf16"), cfg["L1_LAMBDA"], runtime.amp)
            guard = StepGuard("stop", runtime.device)
            step = cuda_graph.training_step(model, guard, train_step, cfg, runtime)
            assert isinstance(step, cuda_graph.GraphedStep)
            if not graphed:  # the same capturable optimisers and learning-rate tensors, never captured
                step.rates_in_place()
                step = cuda_graph.EagerStep(model, guard)
            torch.cuda.manual_seed(1)
            for n, (x, y) in enumerate(data):
                step(x, y, n)
            torch.cuda.synchronize()
            assert not graphed or step.graph is not None
            weights.append(torch.cat([p.detach().float().flatten() for p in (*G.parameters(), *D.parameters())]))
            tallies.append(guard.tally.vector.clone())
    finally:
        torch.use_deterministic_algorithms(False)
    return weights, tallies


@pytest.mark.parametrize("batch", [1, 16])
def test_the_graphed_step_trains_as_the_eager_one(batch, cuda_flags):
    """CUDA_GRAPH at batch 1 and 16 (bf16, channels-last, dropout on): the replayed graph launches the eager step's
    kernels, so with DETERMINISTIC=True the weights and the loss tally after 7 steps are the eager ones, bit for
    bit."""
    (graphed, eager), (graphed_tally, eager_tally) = graph_and_eager_steps(batch)
    assert torch.equal(graphed, eager), relative_difference(graphed, eager)
    assert torch.equal(graphed_tally, eager_tally)


def test_a_deterministic_run_with_cuda_graphs_stopped_and_resumed_is_bit_identical(data, tmp_path, monkeypatch,
                                                                                   cuda_flags):
    """CUDA_GRAPH=True, DETERMINISTIC=True, 4 epochs of 2 steps, dropout on: the run never stopped captures at
    step 3 and replays; the one stopped after epoch 1 warms up again and captures at step 5: both end with the
    same weights and Adam states."""
    settings = dict(DEVICE="cuda", DETERMINISTIC=True, DROPOUT=True, CUDA_GRAPH=True, N_EPOCHS=2, N_EPOCHS_DECAY=2)
    try:
        assert run_training(data, tmp_path / "whole", monkeypatch, **settings) == 0
        with pytest.raises(EndOfEpoch1):
            run_training(data, tmp_path / "run", monkeypatch, stop_after_epoch_1=True, **settings)
        assert run_training(data, tmp_path / "run", monkeypatch, **settings) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    resumed, whole = ckpt_of(tmp_path / "run"), ckpt_of(tmp_path / "whole")
    assert resumed["step"] == whole["step"] == 8
    for net in ("generator", "discriminator"):
        assert [k for k, v in resumed[net].items() if not torch.equal(v, whole[net][k])] == [], net
    for opt in ("opt_G", "opt_D"):
        for p, state in resumed[opt]["state"].items():
            assert all(torch.equal(v, whole[opt]["state"][p][k]) for k, v in state.items()), opt


def test_a_capture_that_fails_on_the_gpu_says_one_line_and_trains_on(data, tmp_path, monkeypatch, capsys,
                                                                     cuda_flags):
    """A real capture failure (a host read inside the captured step, which CUDA refuses while capturing): one line,
    then the eager step to the end of the run, with finite weights."""
    from harness import cuda_graph

    real_capture = cuda_graph.capture_graph

    def host_read_inside(step):
        return real_capture(lambda: (step(), torch.ones((), device="cuda").item()))
    monkeypatch.setattr(cuda_graph, "capture_graph", host_read_inside)
    assert run_training(data, tmp_path / "run", monkeypatch, DEVICE="cuda", CUDA_GRAPH=True, N_EPOCHS=2,
                        N_EPOCHS_DECAY=2) == 0
    out = capsys.readouterr().out
    assert out.count("CUDA_GRAPH: capturing the training step failed") == 1
    assert "training on with the eager step" in out
    ckpt = ckpt_of(tmp_path / "run")
    assert ckpt["step"] == 8 and all(torch.isfinite(v).all() for v in ckpt["generator"].values() if v.is_floating_point())


def test_data_on_device_trains_as_the_loader_does_on_the_gpu(data, tmp_path, monkeypatch, cuda_flags):
    """DATA_ON_DEVICE=True keeps the set in GPU memory and gathers each batch there: with DETERMINISTIC=True the
    run ends with the DataLoader run's weights, bit for bit (the batches are the same tensors)."""
    settings = dict(DEVICE="cuda", DETERMINISTIC=True, DROPOUT=True)
    try:
        for name, resident in (("files", False), ("resident", True)):
            assert run_training(data, tmp_path / name, monkeypatch, DATA_ON_DEVICE=resident, **settings) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    files, resident = ckpt_of(tmp_path / "files"), ckpt_of(tmp_path / "resident")
    for net in ("generator", "discriminator"):
        assert [k for k, v in resident[net].items() if not torch.equal(v, files[net][k])] == [], net


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SYNC_BN needs two GPUs (NCCL gives each process its own)")
def test_sync_bn_trains_on_two_gpus(tmp_path):
    """torchrun, 2 processes on 2 GPUs, SYNC_BN=True: the run finishes (rank 0 samples and validates with a plain
    batch-norm copy), and both ranks end with the same weights and batch-norm statistics."""
    from conftest import write_pairs
    from test_distributed import launch
    write_pairs(tmp_path / "data" / "train", 8, seed=0)
    write_pairs(tmp_path / "data" / "val", 4, seed=1)
    result = launch(tmp_path, "syncbn", tiny_args(tmp_path / "data", tmp_path / "run", DEVICE="cuda", SYNC_BN=True,
                                                  BATCH_SIZE=2))
    assert result.returncode == 0, result.describe()
    assert "val: L1" in result.rank_out[0]
    G0, G1 = (dump["final_G"] for dump in result.dumps)
    assert all(torch.equal(v, G1[k]) for k, v in G0.items())
