"""The pix2pix method (Isola et al., CVPR 2017, arXiv 1611.07004): the networks and their optimisers (§3.3), the
objective (§3.1) and one training step (§3.3). Read this first; train.py runs it.

    G: a U-Net (generator_model.py)     D: a conditional 70x70 PatchGAN on (input, output) pairs (discriminator_model.py)
    D maximises   log D(x, y) + log(1 - D(x, G(x)))        halved, so that D learns slower than G (§3.3)
    G minimises   -log D(x, G(x)) + lambda * |y - G(x)|_1   lambda = 100 (§3.1, §4.2)
"""
import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from discriminator_model import PatchDiscriminator
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
    """Multiplier of the base LR during 0-based `epoch`: 1 for n_epochs, then linear to 0 (the official schedule)."""
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


def set_learning_rate(optimizers: tuple[torch.optim.Optimizer, ...], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            if torch.is_tensor(group["lr"]):  # a captured step (harness/cuda_graph.py) reads it where it is
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr


# ----------------------------------------------------------------------------- the objective (§3.1)

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


def real_and_fake_scores(D: nn.Module, x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor):
    """D on (x, real) and on (x, fake), for D's step. Two calls, so each batch keeps its own batch-norm statistics
    as in the official code, and in its order (fake first), so that D's running statistics match it too."""
    fake_logits = D(x, fake)
    return D(x, real), fake_logits


# ----------------------------------------------------------------------------- one training step (§3.3)

@dataclass
class Pix2Pix:
    """What a training step updates: the two networks, their optimisers and fp16 loss scalers (no-ops otherwise);
    checkpoints save these.

    G_run, D_pairs and D_run are how the step calls the networks: G, real_and_fake_scores and D themselves here;
    under torchrun and torch.compile their DDP and compiled versions (utils.wrap_for_training). The method reads
    the same either way."""
    G: UNetGenerator
    D: PatchDiscriminator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    l1_lambda: float = 100.0
    amp: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)  # bf16/fp16 autocast
    G_run: Callable = None
    D_pairs: Callable = None  # D's step: D on (x, real) and (x, fake) together
    D_run: Callable = None    # G's step: D alone (never under DDP: its weights get no gradient there)

    def __post_init__(self):
        self.G_run = self.G_run or self.G
        self.D_pairs = self.D_pairs or functools.partial(real_and_fake_scores, self.D)
        self.D_run = self.D_run or self.D


class StepGuard(Protocol):
    """What train_step asks of a guard against NaN/Inf losses (harness/step_guard.py has the real one)."""
    def check(self, **losses: torch.Tensor) -> None: ...
    def hold_if_not_finite(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None: ...
    def after_update(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None: ...


def train_step(m: Pix2Pix, x: torch.Tensor, y: torch.Tensor, guard: StepGuard | None = None
               ) -> dict[str, torch.Tensor]:
    """One iteration of paper §3.3: a gradient step on D, then one on G against the freshly updated D.
    Returns the four loss terms as 0-dim tensors on the device (read them only when logging: reading waits for
    the device). `guard` watches for NaN/Inf losses; without one this is the bare algorithm."""
    # D step: real pairs should score 1, generated pairs 0
    with m.amp:
        fake = m.G_run(x)
        real_logits, fake_logits = m.D_pairs(x, y, fake.detach())  # detach: D's step must not reach G
    loss_D, d_real, d_fake = discriminator_loss(real_logits.float(), fake_logits.float())  # losses in fp32
    if guard:
        guard.check(d_real=d_real, d_fake=d_fake)
    m.opt_D.zero_grad(set_to_none=True)
    m.scaler_D.scale(loss_D).backward()
    update(m.opt_D, m.scaler_D, guard)

    # G step: make the updated D score the generated pair 1, and stay close to the target in L1
    m.D.requires_grad_(False)  # the G step needs gradients w.r.t. D's input only, not its weights
    with m.amp:
        fake_logits = m.D_run(x, fake)
    loss_G, g_gan, g_l1 = generator_loss(fake_logits.float(), fake.float(), y.float(), m.l1_lambda)
    m.D.requires_grad_(True)
    if guard:
        guard.check(g_gan=g_gan, g_l1=g_l1)
    m.opt_G.zero_grad(set_to_none=True)
    m.scaler_G.scale(loss_G).backward()
    update(m.opt_G, m.scaler_G, guard)
    return {"d_real": d_real.detach(), "d_fake": d_fake.detach(), "g_gan": g_gan.detach(), "g_l1": g_l1.detach()}


def update(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, guard: StepGuard | None = None) -> None:
    """One optimiser step, through the fp16 loss scaler (which skips it when the gradients overflowed)."""
    if guard:
        guard.hold_if_not_finite(opt, scaler)
    scaler.step(opt)
    scaler.update()
    if guard:
        guard.after_update(opt, scaler)
