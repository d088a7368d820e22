"""harness/cuda_graph.py (CUDA_GRAPH): the captured training step's plumbing, on the CPU. A stand-in for the capture
that replays by calling the step again shows that the fixed input tensors, the step number and the eager warm-up
and last-batch steps train exactly as the eager step does; a capture that raises prints one line and training goes
on eagerly, as if nothing had been tried. The real capture's tests are tests/test_cuda.py's (CUDA only).

    python -m pytest tests/test_cuda_graph.py -q
"""
import types

import pytest
import torch

from harness.configurator import default_settings, load_config
from harness.cuda_graph import WARMUP_STEPS, EagerStep, GraphedStep, set_capturable, training_step
from harness.errors import ConfigError
from harness.step_guard import StepGuard
from pix2pix import Pix2Pix, build_models, make_grad_scalers, make_optimizers, set_learning_rates, train_step
from utils import Runtime

CPU = torch.device("cpu")
CFG = default_settings() | {"IMAGE_SIZE": 32, "NUM_DOWNS": 5, "GEN_BASE_CHANNELS": 8, "DISC_BASE_CHANNELS": 8}


def tiny_model(seed: int = 0) -> Pix2Pix:
    torch.manual_seed(seed)
    G, D = build_models(CFG)
    return Pix2Pix(G, D, *make_optimizers(G, D, CFG, CPU), *make_grad_scalers(CPU, "fp32"), CFG["L1_LAMBDA"])


def batches(sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [(torch.rand(n, 3, 32, 32, generator=generator) * 2 - 1, torch.rand(n, 3, 32, 32, generator=generator)
             * 2 - 1) for n in sizes]


def train(step_of, sizes: list[int], on_nan: str = "stop") -> tuple[Pix2Pix, StepGuard]:
    """Steps over `sizes`-image batches with the step `step_of(model, guard)` builds; dropout's noise seeded."""
    model = tiny_model()
    guard = StepGuard(on_nan, CPU)
    step = step_of(model, guard)
    torch.manual_seed(1)
    for n, (x, y) in enumerate(batches(sizes)):
        step(x, y, n)
    return model, guard


def same_training(a: tuple[Pix2Pix, StepGuard], b: tuple[Pix2Pix, StepGuard]) -> bool:
    (ma, ga), (mb, gb) = a, b
    tensors = lambda m: [*m.G.state_dict().values(), *m.D.state_dict().values(),  # noqa: E731
                         *[t for opt in (m.opt_G, m.opt_D) for s in opt.state.values() for t in s.values()]]
    return all(torch.equal(x, y) for x, y in zip(tensors(ma), tensors(mb))) and torch.equal(ga.tally.vector, gb.tally.vector)


def eager_with_rate_tensors(model: Pix2Pix, guard: StepGuard) -> EagerStep:
    """The eager step with the learning rates as tensors, as GraphedStep gives them to every step it takes (a
    float32 tensor rounds 2e-4 as the device will)."""
    for opt in (model.opt_G, model.opt_D):
        for group in opt.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]))
    return EagerStep(model, guard)


def replaying(calls: list) -> callable:
    """A capture stand-in: records the step and replays it by running it again (as a graph replays its kernels)."""
    def capture(step):
        calls.append("capture")
        return types.SimpleNamespace(replay=lambda: (calls.append("replay"), step()))
    return capture


def test_the_replayed_step_trains_as_the_eager_one():
    """Warm-up steps, the capture, replays through the fixed inputs, then an epoch's smaller last batch (eager):
    the same weights, Adam states and loss tally as the eager step, bit for bit, and the tally records the
    replayed steps' numbers."""
    sizes = [2] * (WARMUP_STEPS + 4) + [1]
    calls = []
    eager = train(eager_with_rate_tensors, sizes)
    graphed = train(lambda m, g: GraphedStep(m, g, CPU, 2, capture=replaying(calls)), sizes)
    assert calls == ["capture"] + ["replay"] * 4
    assert same_training(graphed, eager)
    assert graphed[1].read().n_ok == len(sizes)


def test_a_smaller_batch_is_never_the_one_captured():
    """A resumed epoch's few last batches: the smaller last one comes when the capture is due. It steps eagerly and
    the next full batch is captured, so full batches replay from then on (a graph of the small shape never would)."""
    sizes = [2] * WARMUP_STEPS + [1] + [2] * 3
    calls = []
    graphed = train(lambda m, g: GraphedStep(m, g, CPU, 2, capture=replaying(calls)), sizes)
    assert calls == ["capture"] + ["replay"] * 3  # the capturing step replays too
    assert same_training(graphed, train(eager_with_rate_tensors, sizes))


def test_the_guard_records_a_replayed_steps_number(capsys):
    """ON_NAN=skip, a NaN target in a replayed step: that step is skipped, and reported by the number the loop
    gave it (a device tensor filled before each replay)."""
    sizes = [2] * (WARMUP_STEPS + 3)
    data = batches(sizes)
    data[WARMUP_STEPS + 1][1][0, 0, 0, 0] = float("nan")
    model, guard = tiny_model(), StepGuard("skip", CPU)
    step = GraphedStep(model, guard, CPU, 2, capture=replaying([]))
    for n, (x, y) in enumerate(data):
        step(x, y, 100 + n)
    assert guard.read().skipped == 1
    assert f"step {100 + WARMUP_STEPS + 1}: non-finite d_real=nan, g_l1=nan" in capsys.readouterr().err


def test_a_failed_capture_says_one_line_and_trains_on_eagerly():
    """A capture that raises, after train_step's G half had frozen D (as a capture stopped mid-step would): one
    line, and every step (the one being captured included) trains as the eager step does."""
    said, sizes = [], [2] * (WARMUP_STEPS + 3)

    def failing(model):
        def capture(step):
            model.D.requires_grad_(False)
            raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors ...")
        return capture
    graphed = train(lambda m, g: GraphedStep(m, g, CPU, 2, capture=failing(m), say=said.append), sizes)
    assert said == ["CUDA_GRAPH: capturing the training step failed (RuntimeError: operation not permitted when "
                    "stream is capturing); training on with the eager step"]
    assert all(p.requires_grad for p in graphed[0].D.parameters())
    assert same_training(graphed, train(eager_with_rate_tensors, sizes))


def test_off_cuda_the_step_is_eager_and_says_why_in_one_line():
    said = []
    model = tiny_model()
    for setting, expected in ((False, []), (True, ["CUDA_GRAPH=True: stepping eagerly: it needs a CUDA device and "
                                                   "DEVICE=auto runs on cpu"])):
        step = training_step(model, StepGuard("stop", CPU), train_step, CFG | {"CUDA_GRAPH": setting},
                             Runtime(CPU, "fp32"), say=said.append)
        assert type(step) is EagerStep and said == expected
        assert all(isinstance(g["lr"], float) and not g["capturable"] for g in model.opt_G.param_groups)


def test_a_new_learning_rate_reaches_the_captured_step():
    """The graph reads the learning rate from the tensors it was captured with: a rate set_learning_rates writes at
    an epoch's start is copied into them before the next replay; and set_capturable makes the optimisers plain
    again, the rate a number (a checkpoint of either kind resumes under the other)."""
    model, sizes = tiny_model(), [2] * (WARMUP_STEPS + 2)
    step = GraphedStep(model, StepGuard("stop", CPU), CPU, 2, capture=replaying([]))
    for n, (x, y) in enumerate(batches(sizes)):
        step(x, y, n)
    rate = model.opt_G.param_groups[0]["lr"]
    assert torch.is_tensor(rate) and rate.item() == pytest.approx(2e-4)
    set_learning_rates(model, CFG, 0.5)  # half the base 2e-4: numbers in the param groups
    step(x, y, len(sizes))
    assert model.opt_G.param_groups[0]["lr"] is rate and rate.item() == pytest.approx(1e-4)
    set_capturable(model, True)
    assert model.opt_D.param_groups[0]["capturable"] and model.opt_G.param_groups[0]["lr"] == pytest.approx(1e-4)
    set_capturable(model, False)
    assert not model.opt_G.param_groups[0]["capturable"] and isinstance(model.opt_G.param_groups[0]["lr"], float)


def test_cuda_graph_and_compile_are_one_or_the_other():
    with pytest.raises(ConfigError, match="CUDA_GRAPH=True"):
        load_config(["--CUDA_GRAPH=True", "--COMPILE=True"])
    assert load_config(["--CUDA_GRAPH=True"])["CUDA_GRAPH"] is True
