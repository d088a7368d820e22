"""The pix2pix method (Isola et al., CVPR 2017, arXiv 1611.07004): the networks and their optimisers (§3.3),
the objective (§3.1) and one training step (§3.3). Read this first; train.py runs it (data, resume, logging).

Not run directly. bench.py times the same train_step that train.py runs.
"""
import copy
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from discriminator_model import PatchDiscriminator
from distributed import max_flags_over_ranks
from generator_model import UNetGenerator

# ----------------------------------------------------------------------------- the networks and optimisers (§3.3)

def build_models(cfg: dict[str, Any]) -> tuple[UNetGenerator, PatchDiscriminator]:
    G = UNetGenerator(cfg["IN_CHANNELS"], cfg["OUT_CHANNELS"], cfg["GEN_BASE_CHANNELS"], cfg["NUM_DOWNS"],
                      cfg["NORM"], cfg["DROPOUT"], cfg["DROPOUT_PLACEMENT"])
    D = PatchDiscriminator(cfg["IN_CHANNELS"], cfg["OUT_CHANNELS"], cfg["DISC_BASE_CHANNELS"],
                           cfg["DISC_N_LAYERS"], cfg["NORM"])
    return G, D


def make_optimizers(G: nn.Module, D: nn.Module, cfg: dict[str, Any], device: torch.device,
                    fused: bool | None = None) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """paper §3.3: Adam for both nets, lr 2e-4, betas (0.5, 0.999); fused kernels where the device has them."""
    fused = device.type in ("cuda", "cpu") if fused is None else fused
    adam = dict(lr=cfg["LEARNING_RATE"], betas=(cfg["BETA1"], cfg["BETA2"]), fused=fused)
    return torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)


def make_grad_scalers(device: torch.device, precision: str) -> tuple[torch.amp.GradScaler, torch.amp.GradScaler]:
    """One loss scaler per network, enabled for fp16 only: bf16 has fp32's range and needs no scaling."""
    return (torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
            torch.amp.GradScaler(device.type, enabled=precision == "fp16"))


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """Multiplier of the base LR during 0-based `epoch`: 1 for n_epochs, then linear to 0 (official schedule)."""
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)



# ----------------------------------------------------------------------------- the objective (paper §3.1)

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """-> (loss, real term, fake term). paper §3.3: divide D's objective by 2 to slow D relative to G."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2, real, fake


def generator_loss(fake_logits: torch.Tensor, fake: torch.Tensor, target: torch.Tensor, l1_lambda: float):
    """-> (loss, GAN term, L1 term). The non-saturating GAN loss (maximise log D(x, G(x))) plus lambda * L1."""
    gan = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    l1 = (fake - target).abs().mean()
    return gan + l1_lambda * l1, gan, l1


class RealFakeScores(nn.Module):
    """D on (x, real) and on (x, fake) in one call, so DDP sees one forward per backward. The two batches
    still go through D separately, keeping their batch-norm statistics apart as in the official code, and in its
    order (fake first), so that D's running statistics also match it."""

    def __init__(self, D: nn.Module):
        super().__init__()
        self.D = D

    def forward(self, x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor):
        fake_logits = self.D(x, fake)
        return self.D(x, real), fake_logits



class NonFiniteLoss(RuntimeError):
    pass


FP16_HINT = ("; in fp16 this is usually an overflow (values above 65504): use PRECISION=bf16 (same range as fp32, "
             "on Ampere+ GPUs and AMX CPUs) or PRECISION=fp32")


def check_finite(losses: dict[str, torch.Tensor], step: int, fp16: bool = False, flags: int = 0) -> int:
    """Raise NonFiniteLoss if any loss is NaN/Inf on any rank, with one fused check: one device->host read (under
    DDP after one all-reduce). `flags`, a small int this rank wants the others to hear of (a stop request), rides in
    the same all-reduce: returns its max over ranks."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    bad = (~torch.isfinite(values).all()).to(torch.int64)
    # all ranks skip or stop together: a lone rank skipping its backward would desync DDP's all-reduce
    any_bad, agreed_flags = max_flags_over_ranks(torch.stack([bad, torch.full_like(bad, flags)]))
    if any_bad:
        found = ", ".join(f"{k}={v.item()}" for k, v in losses.items() if not torch.isfinite(v)) \
            or "loss on another process"
        raise NonFiniteLoss(f"step {step}: non-finite {found}{FP16_HINT if fp16 else ''}")
    return agreed_flags


def scaler_skipped(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer) -> torch.Tensor | float:
    """1 if the fp16 loss scaler skipped this step of `opt` (inf/NaN gradients), as a device tensor (no sync);
    call between scaler.step and scaler.update."""
    if not scaler.is_enabled():
        return 0.0
    found = scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values()
    return sum(f.float() for f in found).clamp(max=1)


def train_step(G, D, D_scores, opt_G, opt_D, scaler_G, scaler_D, x, y, cfg, amp, step: int,
               flags: Callable[[], int] = lambda: 0):
    """One iteration of paper §3.3: a D step, then a G step against the freshly updated D.
    Returns the four loss terms and "scaler_skips" (steps the fp16 loss scaler skipped) as 0-dim tensors on the
    device, read by the caller only when it logs, and "flags": the max over ranks of `flags()`, read at G's loss
    check (no collective of its own); or raises NonFiniteLoss before any poisoned update."""
    fp16 = getattr(amp, "fast_dtype", None) == torch.float16
    with amp:
        fake = G(x)
        real_logits, fake_logits = D_scores(x, y, fake.detach())  # detach: the D step must not reach G
    loss_D, d_real, d_fake = discriminator_loss(real_logits.float(), fake_logits.float())  # losses in fp32
    check_finite({"d_real": d_real, "d_fake": d_fake}, step, fp16)
    opt_D.zero_grad(set_to_none=True)
    scaler_D.scale(loss_D).backward()
    scaler_D.step(opt_D)
    skips = scaler_skipped(scaler_D, opt_D)
    scaler_D.update()

    D.requires_grad_(False)  # the G step needs gradients w.r.t. D's input only, not its weights
    with amp:
        fake_logits = D(x, fake)
    loss_G, g_gan, g_l1 = generator_loss(fake_logits.float(), fake.float(), y.float(), cfg["L1_LAMBDA"])
    D.requires_grad_(True)
    agreed_flags = check_finite({"g_gan": g_gan, "g_l1": g_l1}, step, fp16, flags())
    opt_G.zero_grad(set_to_none=True)
    scaler_G.scale(loss_G).backward()
    scaler_G.step(opt_G)
    skips = skips + scaler_skipped(scaler_G, opt_G)
    scaler_G.update()
    losses = {"d_real": d_real, "d_fake": d_fake, "g_gan": g_gan, "g_l1": g_l1}
    return {k: v.detach() for k, v in losses.items()} | {"scaler_skips": torch.as_tensor(skips, device=g_l1.device),
                                                         "flags": agreed_flags}



# ----------------------------------------------------------------------------- undoing a skipped step (ON_NAN=skip)

def state_before_step(G: nn.Module, D: nn.Module, opt_D: torch.optim.Optimizer,
                      scaler_D: torch.amp.GradScaler) -> dict[str, Any]:
    """What a training step can change before its last loss is known to be finite: the D step (D's weights, its
    optimiser and loss scaler) and both networks' batch-norm statistics (updated in the forward pass). G's
    weights and optimiser are stepped last, after every check. D is small, so a full copy is cheap."""
    return {"D": copy.deepcopy(D.state_dict()), "opt_D": copy.deepcopy(opt_D.state_dict()),
            "scaler_D": scaler_D.state_dict(), "G_buffers": [b.clone() for b in G.buffers()]}


def undo_step(saved: dict[str, Any], G: nn.Module, D: nn.Module, opt_D: torch.optim.Optimizer,
              scaler_D: torch.amp.GradScaler) -> None:
    """Put back everything state_before_step saved (ON_NAN=skip): the skipped step leaves no trace."""
    D.load_state_dict(saved["D"])  # copies into the existing tensors: DDP and the optimiser keep theirs
    opt_D.load_state_dict(copy.deepcopy(saved["opt_D"]))
    if saved["scaler_D"]:  # empty unless fp16
        scaler_D.load_state_dict(saved["scaler_D"])
    with torch.no_grad():
        for buffer, value in zip(G.buffers(), saved["G_buffers"]):
            buffer.copy_(value)



# ----------------------------------------------------------------------------- cost

def training_flops_per_image(cfg: dict[str, Any]) -> float:
    """Model FLOPs of one training image (D step + G step), counted on meta tensors (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        G, D = build_models(cfg)
        x = torch.empty(1, cfg["IN_CHANNELS"], cfg["IMAGE_SIZE"], cfg["IMAGE_SIZE"])
        with FlopCounterMode(display=False) as g_count:
            fake = G(x)
        with FlopCounterMode(display=False) as d_count:
            D(x, fake)
    # backward costs ~2x forward; D runs three times (real, fake, and in the G step)
    return 3.0 * g_count.get_total_flops() + 9.0 * d_count.get_total_flops()

