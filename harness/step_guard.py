"""The NaN/Inf watch around pix2pix.train_step, and the step's bookkeeping, without reading the device on a plain
step: the host never waits for a GPU mid-run, so it can queue work ahead of it (and CUDA graphs stay possible).

- check(**losses), after each loss group: a device flag, `bad`. Under torchrun it is max-reduced over the ranks in
  one all-reduce per loss group, and each rank's stop/save request rides in the same all-reduce.
- hold_if_not_finite(opt), before each update: a step with a non-finite loss is not applied. Fused Adam skips it
  on the device (its found_inf input, the way GradScaler skips an fp16 overflow).
- ON_NAN=skip: what the step changed before its last loss was known (D's update, batch-norm statistics) is put
  back on the device, so a skipped step leaves no trace.
- read(), at logging and saving steps only: the one device->host read. Loss sums, skipped steps, and the first
  non-finite loss, which stops the run under ON_NAN=stop before any checkpoint or export is written (so a NaN is
  noticed up to LOG_EVERY steps late, with the poisoned steps never applied).
"""
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from harness.distributed import is_distributed
from harness.errors import NonFiniteLoss

LOSS_TERMS = ("d_real", "d_fake", "g_gan", "g_l1")
FP16_HINT = ("; in fp16 this is usually an overflow (values above 65504): use PRECISION=bf16 (same range as fp32, "
             "on Ampere+ GPUs and AMX CPUs) or PRECISION=fp32")
# the device-side tally, one float64 vector so that one read returns it all
SUMS, N_OK, N_SKIPPED, SCALER_SKIPS, FIRST_BAD_STEP, FIRST_BAD_LOSSES, FLAGS = \
    slice(0, 4), 4, 5, 6, 7, slice(8, 12), 12


@dataclass
class Reading:
    """What read() found: this epoch's mean losses over its finite steps, and the counts."""
    means: dict[str, float]
    n_ok: int
    skipped: int
    scaler_skips: int
    flags: int  # the ranks' agreed stop/save request (harness/run.py): 2 * signal number + a due timed save


class StepGuard:
    def __init__(self, on_nan: str, device: torch.device, fp16: bool = False,
                 flags: Callable[[], int] = lambda: 0):
        self.on_nan, self.device, self.fp16, self.flags = on_nan, device, fp16, flags
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.tally = torch.zeros(13, dtype=dtype, device=device)
        self.tally[FIRST_BAD_STEP] = -1
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.saved: list[torch.Tensor] = []
        self.restore_to: list[torch.Tensor] = []
        self.step, self.reported_skips = 0, 0

    # ------------------------------------------------------------------------- around a step (train.py)

    def begin_step(self, step: int, model) -> None:
        """ON_NAN=skip: keep (on the device) what the step may change before its last loss is known."""
        self.step = step
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)
        if self.on_nan == "skip":
            opt_state = [t for s in model.opt_D.state.values() for t in s.values() if torch.is_tensor(t)]
            scaler = [t for t in (model.scaler_D._scale, model.scaler_D._growth_tracker) if t is not None] \
                if model.scaler_D.is_enabled() else []
            self.restore_to = [*model.D.parameters(), *model.D.buffers(), *model.G.buffers(), *opt_state, *scaler]
            self.saved = [t.detach().clone() for t in self.restore_to]
            self.fresh_optimizer = model.opt_D if not opt_state else None  # its first step: nothing to keep yet

    def end_step(self, losses: dict[str, torch.Tensor]) -> None:
        """Count the step: a poisoned one adds nothing to the loss sums and, under ON_NAN=skip, is undone."""
        values = torch.stack([losses[k].float() for k in LOSS_TERMS]).to(self.tally.dtype)
        ok = ~self.bad
        with torch.no_grad():
            if self.on_nan == "skip":
                for current, saved in zip(self.restore_to, self.saved):
                    current.copy_(torch.where(self.bad, saved, current))
                if self.fresh_optimizer is not None and self.bad.item():  # once per run, only under ON_NAN=skip
                    self.fresh_optimizer.state.clear()
            first = self.bad & (self.tally[FIRST_BAD_STEP] < 0)
            self.tally[SUMS] += torch.where(ok, values, torch.zeros_like(values))
            self.tally[N_OK] += ok
            self.tally[N_SKIPPED] += self.bad
            step = self.step if torch.is_tensor(self.step) else float(self.step)  # a tensor in a CUDA graph
            self.tally[FIRST_BAD_STEP] = torch.where(first, step, self.tally[FIRST_BAD_STEP])
            self.tally[FIRST_BAD_LOSSES] = torch.where(first, values, self.tally[FIRST_BAD_LOSSES])
        self.saved, self.restore_to = [], []

    # ------------------------------------------------------------------------- inside the step (pix2pix.py)

    def check(self, **losses: torch.Tensor) -> None:
        bad = ~torch.isfinite(torch.stack([v.detach().float() for v in losses.values()])).all()
        if is_distributed():  # all ranks skip or stop together; the stop/save request rides along
            import torch.distributed as dist
            agreed = torch.stack([bad.long(), torch.full_like(bad, self.flags(), dtype=torch.long)])
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            bad = agreed[0].bool()
            self.tally[FLAGS] = agreed[1]
        self.bad = self.bad | bad

    def hold_if_not_finite(self, opt: torch.optim.Optimizer) -> None:
        """Make the coming update a no-op if a loss of this step is not finite, without reading the flag: fused
        Adam takes it as found_inf. In fp16 the loss scaler's own found_inf already skips NaN/Inf gradients."""
        if self.fp16:
            return
        if opt.defaults.get("fused"):
            opt.found_inf = self.bad.float()
        elif self.bad.item():  # other optimisers know no found_inf: a step without gradients changes nothing
            opt.zero_grad(set_to_none=True)

    def after_update(self, scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer) -> None:
        """Count the updates the fp16 loss scaler skipped (call between scaler.step and scaler.update)."""
        if getattr(opt, "found_inf", None) is not None and not scaler.is_enabled():
            del opt.found_inf
        if scaler.is_enabled():  # GradScaler's per-optimiser record of this step; private, hence here only
            found = scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values()
            self.tally[SCALER_SKIPS] += sum(f.to(self.tally.dtype) for f in found).clamp(max=1)

    # ------------------------------------------------------------------------- reading (logging and saving steps)

    def read(self, over_ranks: bool = False) -> Reading:
        """The one device->host read: raises NonFiniteLoss under ON_NAN=stop if any step so far was not finite.
        `over_ranks`: the loss sums and finite steps of every rank (an all-reduce first; at the end of an epoch)."""
        tally = self.tally
        if over_ranks and is_distributed():
            import torch.distributed as dist
            tally = tally.clone()
            dist.all_reduce(tally[:N_SKIPPED])  # the loss sums and step counts; skips are the same on every rank
        tally = tally.tolist()
        if tally[FIRST_BAD_STEP] >= 0:
            found = ", ".join(f"{k}={v}" for k, v in zip(LOSS_TERMS, tally[FIRST_BAD_LOSSES])
                              if not abs(v) < float("inf")) or "loss on another process"
            message = f"step {int(tally[FIRST_BAD_STEP])}: non-finite {found}{FP16_HINT if self.fp16 else ''}"
            if self.on_nan == "stop":
                raise NonFiniteLoss(message)
            print(f"\n{message}; skipped {int(tally[N_SKIPPED]) - self.reported_skips} step(s) since the last report "
                  f"(ON_NAN=skip)", file=sys.stderr)
            self.reported_skips = int(tally[N_SKIPPED])
            self.tally[FIRST_BAD_STEP] = -1  # report the next one afresh
        n_ok = int(tally[N_OK])
        return Reading({k: v / max(n_ok, 1) for k, v in zip(LOSS_TERMS, tally[SUMS])}, n_ok, int(tally[N_SKIPPED]),
                       int(tally[SCALER_SKIPS]), int(tally[FLAGS]))

    def start_epoch(self) -> None:
        """The loss sums and counts are per epoch; a non-finite loss not yet reported stays."""
        with torch.no_grad():
            self.tally[:FIRST_BAD_STEP] = 0
        self.reported_skips = 0
