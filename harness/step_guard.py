"""The NaN/Inf watch around pix2pix.train_step, and the step's bookkeeping, without reading the device on a plain
step: the host never waits for a GPU mid-run, so it can queue work ahead of it (and CUDA graphs stay possible).

- check(**losses), after each loss group: a device flag, `bad`. Under torchrun it is max-reduced over the ranks in
  one all-reduce per loss group, so that every rank skips or stops together.
- hold_if_not_finite(opt, scaler), before each update: a step with a non-finite loss is not applied. Fused Adam skips it
  on the device (its found_inf input, the way GradScaler skips an fp16 overflow); in fp16 the loss scaler skips it,
  one of its gradients made NaN on the device (a non-finite loss can have finite gradients: BCE at an inf logit).
- ON_NAN=skip: what the step changed before its last loss was known (D's update, batch-norm statistics, the fp16
  loss scales) is put back on the device, so a skipped step leaves no trace (but in the fp16 loss scalers' counts of
  steps to their next growth, which GradScaler's public API cannot set without a host read).
- after_update(opt, scaler): fp16 updates the loss scaler skipped are counted, on the device: its scale, read
  through its public scale(), shrinks exactly when it skipped.
- read(), at logging and saving steps only: the one device->host read. Loss sums, skipped steps, and the first
  non-finite loss, which stops the run under ON_NAN=stop before any checkpoint or export is written (so a NaN is
  noticed up to LOG_EVERY steps late, with the poisoned steps never applied).
"""
import sys
from dataclasses import dataclass
from typing import Any

import torch

from harness.distributed import is_distributed
from harness.errors import NonFiniteLoss

LOSS_TERMS = ("d_real", "d_fake", "g_gan", "g_l1")
FP16_HINT = ("; in fp16 this is usually an overflow (values above 65504): use PRECISION=bf16 (same range as fp32, "
             "on Ampere+ GPUs and AMX CPUs) or PRECISION=fp32")


class Tally:
    """The guard's counts, on the device: named views of one vector, so that one read returns them all (and a
    CUDA graph of the step updates them in place)."""
    SIZES = {"loss_sums": len(LOSS_TERMS), "n_ok": 1, "n_skipped": 1, "scaler_skips": 1, "first_bad_step": 1,
             "first_bad_losses": len(LOSS_TERMS)}

    def __init__(self, vector: torch.Tensor):
        self.vector = vector
        (self.loss_sums, self.n_ok, self.n_skipped, self.scaler_skips, self.first_bad_step,
         self.first_bad_losses) = vector.split(list(self.SIZES.values()))

    @classmethod
    def zeros(cls, device: torch.device) -> "Tally":
        dtype = torch.float32 if device.type == "mps" else torch.float64
        tally = cls(torch.zeros(sum(cls.SIZES.values()), dtype=dtype, device=device))
        tally.first_bad_step.fill_(-1)  # none yet
        return tally

    def counts(self) -> list[torch.Tensor]:
        """What start_epoch resets: the loss sums and counts (a first bad step not yet reported stays)."""
        return [self.loss_sums, self.n_ok, self.n_skipped, self.scaler_skips]


@dataclass
class Reading:
    """What read() found: this epoch's mean losses over its finite steps, and the counts."""
    means: dict[str, float]
    n_ok: int
    skipped: int
    scaler_skips: int
    sums: list[float]

    def so_far(self) -> dict[str, Any]:
        """The epoch's tally so far, for a checkpoint: a run resumed mid-epoch starts from it (start_epoch), so the
        epoch's log row averages all of its steps, not only those after the resume."""
        return {"loss_sums": self.sums, "n_ok": self.n_ok, "n_skipped": self.skipped,
                "scaler_skips": self.scaler_skips}


class StepGuard:
    def __init__(self, on_nan: str, device: torch.device, fp16: bool = False):
        self.on_nan, self.device, self.fp16 = on_nan, device, fp16
        self.tally = Tally.zeros(device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.one = torch.ones((), device=device)  # scaler.scale(one): a loss scaler's scale, on the device
        self.scale_before = self.one
        self.saved: list[torch.Tensor] = []
        self.restore_to: list[torch.Tensor] = []
        self.saved_scales: list[tuple[torch.amp.GradScaler, torch.Tensor]] = []
        self.fresh_optimizer = None
        self.step, self.reported_skips = 0, 0

    # ------------------------------------------------------------------------- around a step (train.py)

    def begin_step(self, step: int, model) -> None:
        """ON_NAN=skip: keep (on the device) what the step may change before its last loss is known."""
        self.step = step
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)
        if self.on_nan == "skip":
            opt_state = [t for s in model.opt_D.state.values() for t in s.values() if torch.is_tensor(t)]
            self.restore_to = [*model.D.parameters(), *model.D.buffers(), *model.G.buffers(), *opt_state]
            self.saved = [t.detach().clone() for t in self.restore_to]
            # the fp16 loss scales (their growth counters have no public setter)
            self.saved_scales = [(s, s.scale(self.one).detach()) for s in (model.scaler_D, model.scaler_G)
                                 if s.is_enabled()]
            self.fresh_optimizer = model.opt_D if not opt_state else None  # its first step: nothing to keep yet

    def end_step(self, losses: dict[str, torch.Tensor]) -> None:
        """Count the step: a poisoned one adds nothing to the loss sums and, under ON_NAN=skip, is undone."""
        values = torch.stack([losses[k].float() for k in LOSS_TERMS]).to(self.tally.vector.dtype)
        ok = ~self.bad
        with torch.no_grad():
            if self.on_nan == "skip":
                for current, saved in zip(self.restore_to, self.saved):
                    current.copy_(torch.where(self.bad, saved, current))
                for scaler, saved_scale in self.saved_scales:
                    scaler.update(torch.where(self.bad, saved_scale, scaler.scale(self.one)))
                if self.fresh_optimizer is not None and self.bad.item():  # once per run, only under ON_NAN=skip
                    self.fresh_optimizer.state.clear()
            t = self.tally
            first = self.bad & (t.first_bad_step < 0)
            t.loss_sums += torch.where(ok, values, torch.zeros_like(values))
            t.n_ok += ok
            t.n_skipped += self.bad
            step = self.step if torch.is_tensor(self.step) else float(self.step)  # a tensor in a CUDA graph
            t.first_bad_step.copy_(torch.where(first, step, t.first_bad_step))
            t.first_bad_losses.copy_(torch.where(first, values, t.first_bad_losses))
        self.saved, self.restore_to, self.saved_scales = [], [], []

    # ------------------------------------------------------------------------- inside the step (pix2pix.py)

    def check(self, **losses: torch.Tensor) -> None:
        bad = ~torch.isfinite(torch.stack([v.detach().float() for v in losses.values()])).all()
        if is_distributed():  # all ranks skip or stop together
            import torch.distributed as dist
            bad = bad.int()  # nccl reduces no bools
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        self.bad = self.bad | bad.bool()

    def hold_if_not_finite(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Make the coming update a no-op if a loss of this step is not finite, without reading the flag: fused
        Adam takes it as found_inf. In fp16 the loss scaler skips updates with NaN/Inf gradients: one gradient is
        made NaN when the flag is up (times 1 otherwise: bit-identical)."""
        if self.fp16:
            self.scale_before = scaler.scale(self.one).detach()
            grad = next((p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None), None)
            if grad is not None:
                grad.mul_(torch.where(self.bad, float("nan"), 1.0).to(grad.dtype))
            return
        if opt.defaults.get("fused"):
            opt.found_inf = self.bad.float()
        elif self.bad.item():  # other optimisers know no found_inf: a step without gradients changes nothing
            opt.zero_grad(set_to_none=True)

    def after_update(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Count the updates the fp16 loss scaler skipped (call after scaler.update): its scale backs off exactly
        when it found inf/NaN gradients and skipped the update (it grows, or stays, otherwise)."""
        if getattr(opt, "found_inf", None) is not None and not scaler.is_enabled():
            del opt.found_inf
        if scaler.is_enabled():
            with torch.no_grad():
                self.tally.scaler_skips += (scaler.scale(self.one) < self.scale_before).to(self.tally.vector.dtype)

    # ------------------------------------------------------------------------- reading (logging and saving steps)

    def read(self, over_ranks: bool = False) -> Reading:
        """The one device->host read: raises NonFiniteLoss under ON_NAN=stop if any step so far was not finite.
        `over_ranks`: the loss sums and finite steps of every rank (an all-reduce first; at the end of an epoch)."""
        vector = self.tally.vector
        if over_ranks and is_distributed():
            import torch.distributed as dist
            summed = Tally(vector.clone())
            sums_and_ok = summed.vector[:len(LOSS_TERMS) + 1]  # loss_sums then n_ok (Tally.SIZES' order)
            dist.all_reduce(sums_and_ok)  # one collective; skips are the same on every rank
            vector = summed.vector
        seen = Tally(vector.cpu())  # the one device->host copy
        first_bad_step, n_skipped, n_ok = int(seen.first_bad_step), int(seen.n_skipped), int(seen.n_ok)
        if first_bad_step >= 0:
            found = ", ".join(f"{k}={v}" for k, v in zip(LOSS_TERMS, seen.first_bad_losses.tolist())
                              if not abs(v) < float("inf")) or "loss on another process"
            message = f"step {first_bad_step}: non-finite {found}{FP16_HINT if self.fp16 else ''}"
            if self.on_nan == "stop":
                raise NonFiniteLoss(message)
            print(f"\n{message}; skipped {n_skipped - self.reported_skips} step(s) since the last report "
                  f"(ON_NAN=skip)", file=sys.stderr)
            self.reported_skips = n_skipped
            self.tally.first_bad_step.fill_(-1)  # report the next one afresh
        # the means of the finite steps since start_epoch: none (a resume at an epoch's very end) is NaN, not 0
        sums = seen.loss_sums.tolist()
        return Reading({k: v / n_ok if n_ok else float("nan") for k, v in zip(LOSS_TERMS, sums)},
                       n_ok, n_skipped, int(seen.scaler_skips), sums)

    def start_epoch(self, so_far: dict[str, Any]) -> None:
        """The loss sums and counts are per epoch: from zero, or from `so_far` (Reading.so_far, of every process)
        in an epoch resumed mid-way, on one process only. A non-finite loss not yet reported stays."""
        with torch.no_grad():
            for count in self.tally.counts():
                count.zero_()
            for name, value in (so_far or {}).items():  # Tally's names: loss_sums, n_ok, n_skipped, scaler_skips
                getattr(self.tally, name).copy_(torch.as_tensor(value, dtype=self.tally.vector.dtype))
        self.reported_skips = so_far["n_skipped"] if so_far else 0  # reported before the resume
