"""CUDA_GRAPH=True: the whole training step captured once as one CUDA graph and replayed at every step after.

A pix2pix step launches some 450 small kernels; at the paper's batch 1, and even at 16, launching them takes
longer than running them on an H100/H200 (docs/performance.md#on-a-gpu). One graph holds all of it: the NaN/Inf
guard's begin (harness/step_guard.py), D's step, G's step, both fused Adams, and the guard's tally. That is possible
because a plain step never reads the device (the guard's checks stay on it), and because here:
  - both Adams are capturable (their step counts live on the GPU) and take the learning rate as a device tensor
    of the graph's: a new rate that pix2pix.set_learning_rates writes (at an epoch's start) is copied into it;
  - the step number the guard records is a device tensor, filled before each replay;
  - the batch is copied into the graph's fixed input tensors.
The first WARMUP_STEPS steps run eagerly (real steps, on a side stream, as CUDA advises before a capture), so cuDNN
and the optimisers have made their one-time choices and allocations. An epoch's smaller last batch runs eagerly too.

Eager and graphed steps launch the same kernels on the same tensors, so a run resumed anywhere continues as the run
never stopped (bit-identically with DETERMINISTIC=True). A capture that fails (an operation that cannot be
captured, say) prints one line and the run goes on with the eager step. Under torchrun (DDP's gradient
all-reduces and the ranks' NaN agreement are not captured here), with fp16 (GradScaler's bookkeeping) or off CUDA
the step stays eager, said in one line.

Not run directly; train.py and bench.py build their step with training_step.
"""
from typing import Any, Callable

import torch

from pix2pix import Pix2Pix, train_step

WARMUP_STEPS = 3


def capture_graph(step: Callable[[], Any]) -> "torch.cuda.CUDAGraph":
    """`step` captured as a CUDA graph (recorded, not run). thread_local: the checkpoint writer and pin-memory
    threads may keep using CUDA meanwhile."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        step()
    return graph


def why_eager(cfg: dict[str, Any], device: torch.device, precision: str, world_size: int) -> str:
    """Why CUDA_GRAPH=True cannot capture this run's step ('' if it can)."""
    if device.type != "cuda":
        return f"it needs a CUDA device and DEVICE={cfg['DEVICE']} runs on {device.type}"
    if world_size > 1:
        return "under torchrun DDP's gradient all-reduces and the ranks' NaN agreement are not captured here"
    if precision == "fp16":
        return "fp16's loss scaler keeps per-step bookkeeping on the host (use PRECISION=bf16)"
    return ""


def set_capturable(model: Pix2Pix, capturable: bool) -> None:
    """Both Adams capturable (their step counts on the device) or not, with the learning rate as a number (a
    captured step's checkpoint holds it as a tensor): a checkpoint of either kind resumes under the other."""
    for opt in (model.opt_G, model.opt_D):
        opt.defaults["capturable"] = capturable
        for group in opt.param_groups:
            group["capturable"], group["lr"] = capturable, float(group["lr"])


class EagerStep:
    """One training step as train.py runs it: the guard's begin, pix2pix.train_step (or `method`, the same
    function as the caller names it), the guard's tally."""

    def __init__(self, model: Pix2Pix, guard: Any, method: Callable = train_step):
        self.model, self.guard, self.method = model, guard, method

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int | torch.Tensor) -> dict[str, torch.Tensor]:
        self.guard.begin_step(step, self.model)  # ON_NAN=skip: what a poisoned step may change, kept
        losses = self.method(self.model, x, y, self.guard)
        self.guard.end_step(losses)  # a poisoned step is not counted (and, with skip, undone)
        return losses


class GraphedStep(EagerStep):
    """The same step, captured after WARMUP_STEPS eager ones of `batch_size` images and replayed from then on (a
    smaller batch, an epoch's last, steps eagerly). `capture` records a step and returns an object with replay()
    (capture_graph; tests pass their own)."""

    def __init__(self, model: Pix2Pix, guard: Any, device: torch.device, batch_size: int,
                 method: Callable = train_step, capture: Callable[[Callable[[], Any]], Any] | None = None,
                 say: Callable[[str], None] = print):
        super().__init__(model, guard, method)
        self.device, self.batch_size, self.capture, self.say = device, batch_size, capture or capture_graph, say
        self.graph, self.failed, self.warm = None, False, 0
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.losses: dict[str, torch.Tensor] = {}
        # (param group, its learning rate as the tensor the graph reads; the eager steps read it too, so that
        # eager and replayed steps round it alike)
        self.rates = [(group, torch.tensor(float(group["lr"]), device=device))
                      for opt in (model.opt_G, model.opt_D) for group in opt.param_groups]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int | torch.Tensor) -> dict[str, torch.Tensor]:
        self.rates_in_place()
        if self.failed or len(x) != self.batch_size or (self.graph is not None and x.shape != self.inputs[0].shape):
            return super().__call__(x, y, step)  # after a failed capture; a smaller batch: never the one captured
        if self.warm < WARMUP_STEPS:
            self.warm += 1
            return self.on_side_stream(x, y, step)
        if self.graph is None and not self.record(x, y, step):
            return super().__call__(x, y, step)
        static_x, static_y, static_step = self.inputs
        static_x.copy_(x)
        static_y.copy_(y)
        static_step.fill_(step)
        self.graph.replay()
        return self.losses

    def rates_in_place(self) -> None:
        """set_learning_rates writes numbers; the graph reads the tensors it was captured with: a new number is
        copied into its tensor (at an epoch's start), and the group gets the tensor back, before every step."""
        for group, rate in self.rates:
            if group["lr"] is not rate:
                rate.fill_(float(group["lr"]))
                group["lr"] = rate

    def on_side_stream(self, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if self.side is None:
            return super().__call__(x, y, step)
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            losses = super().__call__(x, y, step)
        torch.cuda.current_stream(self.device).wait_stream(self.side)
        return losses

    def record(self, x: torch.Tensor, y: torch.Tensor, step: int) -> bool:
        """Capture the step on fixed input tensors; False (said in one line) if the capture failed."""
        self.inputs = (x.clone(memory_format=torch.preserve_format), y.clone(memory_format=torch.preserve_format),
                       torch.zeros((), dtype=self.guard.tally.vector.dtype, device=self.device))
        try:
            self.graph = self.capture(lambda: self.losses.update(EagerStep.__call__(self, *self.inputs)))
            return True
        except Exception as e:  # noqa: BLE001 - whatever the capture raised, training goes on eagerly
            self.failed, self.graph, self.losses = True, None, {}
            self.model.D.requires_grad_(True)  # a capture stopped inside train_step's G half
            for opt in (self.model.opt_G, self.model.opt_D):
                opt.__dict__.pop("found_inf", None)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self.say(f"CUDA_GRAPH: capturing the training step failed ({type(e).__name__}: {first[:200]}); "
                     f"training on with the eager step")
            return False


def training_step(model: Pix2Pix, guard: Any, method: Callable, cfg: dict[str, Any], runtime: Any,
                  world_size: int = 1, say: Callable[[str], None] | None = print) -> EagerStep:
    """The step train.py calls as step(x, y, step_number), running `method` (pix2pix.train_step): CUDA_GRAPH's
    captured one where it can be, else the eager one (said in one line when CUDA_GRAPH=True asked for more).
    Call it after the checkpoint is restored: it sets the optimisers up for the step it picks."""
    device = runtime.device
    why = why_eager(cfg, device, runtime.precision, world_size) if cfg["CUDA_GRAPH"] else "off"
    if why not in ("", "off") and say:
        say(f"CUDA_GRAPH=True: stepping eagerly: {why}")
    set_capturable(model, not why)
    return EagerStep(model, guard, method) if why else GraphedStep(model, guard, device, cfg["BATCH_SIZE"], method,
                                                                   say=say or print)
