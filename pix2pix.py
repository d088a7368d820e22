"""The pix2pix method (Isola et al., CVPR 2017, arXiv 1611.07004): the networks and their optimisers (§3.3), the
objective (§3.1) and one training step (§3.3). Read this first; train.py runs it.

    G: a U-Net (generator_model.py)     D: a conditional 70x70 PatchGAN on (input, output) pairs (discriminator_model.py)
    D maximises   log D(x, y) + log(1 - D(x, G(x)))        halved, so that D learns slower than G (§3.3)
    G minimises   -log D(x, G(x)) + lambda * |y - G(x)|_1   lambda = 100 (§3.1, §4.2)

Options of the official code and recipes of later work are off by default; each sits where its part of the method
is: the GAN loss (GAN_LOSS) and feature matching (FEATURE_MATCHING) in the objective below, the multi-scale D and
spectral norm in discriminator_model.py, the ResNet generator in generator_model.py, TTUR (LEARNING_RATE_D, BETA*_D)
in make_optimizers, the LR policies in lr_factor, and the averaged generator (G_EMA) in GeneratorAverage.
"""
import contextlib
import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from discriminator_model import MultiScaleDiscriminator, PatchDiscriminator
from generator_model import ResnetGenerator, UNetGenerator

# ----------------------------------------------------------------------------- the networks and optimisers (§3.3)

def build_models(cfg: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """G and D as the settings describe them: the paper's U-Net and 70x70 PatchGAN by default."""
    init, channels = dict(init=cfg["INIT"], init_gain=cfg["INIT_GAIN"]), (cfg["IN_CHANNELS"], cfg["OUT_CHANNELS"])
    if cfg["GENERATOR"] == "unet":
        G = UNetGenerator(*channels, cfg["GEN_BASE_CHANNELS"], cfg["NUM_DOWNS"], cfg["NORM"], cfg["DROPOUT"],
                          cfg["DROPOUT_PLACEMENT"], **init)
    else:  # "resnet_6blocks" / "resnet_9blocks"
        G = ResnetGenerator(*channels, cfg["GEN_BASE_CHANNELS"], int(cfg["GENERATOR"][7]), cfg["NORM"], cfg["DROPOUT"],
                            **init)
    patchgan = dict(in_channels=channels[0], out_channels=channels[1], base_channels=cfg["DISC_BASE_CHANNELS"],
                    n_layers=cfg["DISC_N_LAYERS"], norm=cfg["NORM"], spectral_norm=cfg["SPECTRAL_NORM"], **init)
    D = MultiScaleDiscriminator(cfg["D_SCALES"], **patchgan) if cfg["D_SCALES"] > 1 else PatchDiscriminator(**patchgan)
    return G, D


def make_optimizers(G: nn.Module, D: nn.Module, cfg: dict[str, Any], device: torch.device,
                    fused: bool | None = None) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """paper §3.3: Adam for both nets, lr 2e-4, betas (0.5, 0.999); fused kernels where the device has them.
    D may have its own learning rate and betas (TTUR, Heusel et al. 2017, as SPADE: D faster than G)."""
    fused = device.type in ("cuda", "cpu") if fused is None else fused
    return (torch.optim.Adam(G.parameters(), lr=cfg["LEARNING_RATE"], betas=(cfg["BETA1"], cfg["BETA2"]), fused=fused),
            torch.optim.Adam(D.parameters(), lr=of_D(cfg, "LEARNING_RATE"), betas=(of_D(cfg, "BETA1"), of_D(cfg, "BETA2")),
                             fused=fused))


def of_D(cfg: dict[str, Any], key: str) -> float:
    """D's own value of a setting (LEARNING_RATE_D, BETA1_D, BETA2_D), or G's where it says "same"."""
    return cfg[key] if cfg[f"{key}_D"] == "same" else cfg[f"{key}_D"]


def make_grad_scalers(device: torch.device, precision: str) -> tuple[torch.amp.GradScaler, torch.amp.GradScaler]:
    """One loss scaler per network, enabled for fp16 only: bf16 has fp32's range and needs no scaling."""
    return (torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
            torch.amp.GradScaler(device.type, enabled=precision == "fp16"))


LR_POLICIES = ("linear", "step", "plateau", "cosine")


def lr_factor(epoch: int, cfg: dict[str, Any], plateau_factor: float = 1.0) -> float:
    """Multiplier of the base LRs during 0-based `epoch`, by LR_POLICY, as the official code's schedulers:
    "linear" (the paper): 1 for N_EPOCHS, then linear to 0 over N_EPOCHS_DECAY; "step": x0.1 every LR_DECAY_ITERS
    epochs; "cosine": cosine annealing from 1 to 0 over N_EPOCHS (then back up, as torch's CosineAnnealingLR);
    "plateau": `plateau_factor`, which plateau_after keeps."""
    policy, n_epochs = cfg["LR_POLICY"], cfg["N_EPOCHS"]
    if policy == "linear":
        return 1.0 - max(0, epoch + 1 - n_epochs) / float(cfg["N_EPOCHS_DECAY"] + 1)
    if policy == "step":
        return 0.1 ** (epoch // cfg["LR_DECAY_ITERS"])
    if policy == "cosine":
        return (1 + math.cos(math.pi * epoch / n_epochs)) / 2
    return plateau_factor


def plateau_after(state: dict[str, float], figure: float) -> dict[str, float]:
    """LR_POLICY="plateau" after a validation: the factor x0.2 once the figure (BEST_BY, as a loss: -IoU too) has not
    improved by 1 % of |best| for more than 5 validations (torch's ReduceLROnPlateau as the official code sets it)."""
    factor, best, bad = state.get("factor", 1.0), state.get("best", math.inf), state.get("bad", 0)
    best, bad = (figure, 0) if figure < (best - 0.01 * abs(best) if math.isfinite(best) else best) else (best, bad + 1)
    if bad > 5:
        factor, bad = factor * 0.2, 0
    return {"factor": factor, "best": best, "bad": bad}


def set_learning_rates(m: "Pix2Pix", cfg: dict[str, Any], factor: float) -> float:
    """Both optimisers' LRs for an epoch: their base LRs times the policy's factor; returns G's."""
    for opt, lr in ((m.opt_G, cfg["LEARNING_RATE"] * factor), (m.opt_D, of_D(cfg, "LEARNING_RATE") * factor)):
        for group in opt.param_groups:
            group["lr"] = lr
    return cfg["LEARNING_RATE"] * factor


# ----------------------------------------------------------------------------- the objective (§3.1)

GAN_LOSSES = ("bce", "lsgan", "hinge")


def adversarial_loss(logits: torch.Tensor, real: bool, kind: str = "bce", for_D: bool = True) -> torch.Tensor:
    """How far D's logits are from calling the pair real (`real`) or generated. kind (GAN_LOSS): "bce" (the paper),
    "lsgan" (least squares, Mao et al. 2017) or "hinge" (as SPADE: D wants a margin of 1, G raises D's score)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits) if real else torch.zeros_like(logits))
    if kind == "lsgan":
        return F.mse_loss(logits, torch.ones_like(logits) if real else torch.zeros_like(logits))
    if kind == "hinge":
        return (F.relu(1 - logits) if real else F.relu(1 + logits)).mean() if for_D else -logits.mean()
    raise ValueError(f"GAN_LOSS must be one of {GAN_LOSSES}, got {kind!r}")


def discriminator_loss(real_logits: Any, fake_logits: Any, kind: str = "bce"):
    """-> (loss, real term, fake term). paper §3.3: divide D's objective by 2 to slow D relative to G.
    A multi-scale D gives a list of logit maps: each term is summed over them (pix2pixHD)."""
    real = sum(adversarial_loss(r, True, kind) for r in per_scale(real_logits))
    fake = sum(adversarial_loss(f, False, kind) for f in per_scale(fake_logits))
    return (real + fake) / 2, real, fake


def generator_loss(fake_logits: Any, fake: torch.Tensor, target: torch.Tensor, l1_lambda: float,
                   kind: str = "bce"):
    """-> (loss, GAN term, L1 term). The non-saturating GAN loss (maximise log D(x, G(x))) plus lambda * L1."""
    gan = sum(adversarial_loss(f, True, kind, for_D=False) for f in per_scale(fake_logits))
    l1 = (fake - target).abs().mean()
    return gan + l1_lambda * l1, gan, l1


def feature_matching_loss(fake_features: list, real_features: list) -> torch.Tensor:
    """FEATURE_MATCHING (pix2pixHD §3.2, its eq. 4): L1 between D's intermediate features on the generated and the
    real pair, per D scale (features[k] = one list per scale, logits last), weighted as pix2pixHD: 4 / (number of
    intermediate layers: n_layers + 1, 2 for a PixelGAN) per layer and 1 / D_SCALES per scale. The real features are
    targets only."""
    terms = []
    for fake_k, real_k in zip(fake_features, real_features):
        layers = list(zip(fake_k[:-1], real_k[:-1]))
        terms += [4 / len(layers) / len(fake_features) * F.l1_loss(f.float(), r.detach().float()) for f, r in layers]
    return sum(terms)


def per_scale(logits: Any) -> list[torch.Tensor]:
    """D's logits as one fp32 map per scale (also from the paper's single PatchGAN): losses are computed in fp32."""
    return [t.float() for t in (logits if isinstance(logits, list) else [logits])]


def real_and_fake_scores(D: nn.Module, x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor):
    """D on (x, real) and on (x, fake), for D's step. Two calls, so each batch keeps its own batch-norm statistics
    as in the official code, and in its order (fake first), so that D's running statistics match it too."""
    fake_logits = D(x, fake)
    return D(x, real), fake_logits


# ----------------------------------------------------------------------------- one training step (§3.3)

@dataclass
class Pix2Pix:
    """What a training step updates (and checkpoints save): the two networks, their optimisers and fp16 loss
    scalers (no-ops otherwise). G_run, D_pairs and D_run are how the step calls the networks: G, real_and_fake_scores
    and D themselves, or their DDP and compiled versions (utils.wrap_for_training); the method reads the same."""
    G: nn.Module  # generator_model.UNetGenerator (the paper) or ResnetGenerator
    D: nn.Module  # discriminator_model.PatchDiscriminator (the paper) or MultiScaleDiscriminator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    l1_lambda: float = 100.0
    amp: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)  # bf16/fp16 autocast
    G_run: Callable = None
    D_pairs: Callable = None  # D's step: D on (x, real) and (x, fake) together
    D_run: Callable = None    # G's step: D alone (never under DDP: its weights get no gradient there)
    gan_loss: str = "bce"          # GAN_LOSS
    feature_matching: float = 0.0  # FEATURE_MATCHING's lambda (0 = off)
    average: "GeneratorAverage | None" = None  # G_EMA: the averaged G, updated after each step

    def __post_init__(self):
        self.G_run = self.G_run or self.G
        self.D_pairs = self.D_pairs or functools.partial(real_and_fake_scores, self.D)
        self.D_run = self.D_run or self.D

    @property
    def inference_G(self) -> nn.Module:
        """The generator samples, validation and exports use: the averaged one with G_EMA, else G itself."""
        return self.average.G if self.average is not None else self.G


def beyond_the_paper(cfg: dict[str, Any], G: nn.Module, world_size: int = 1) -> dict[str, Any]:
    """Pix2Pix's settings from the recipes (all off by default): the GAN loss, feature matching, the averaged G."""
    images_per_step = cfg["BATCH_SIZE"] * world_size
    half_life = cfg["G_EMA_HALF_LIFE"] or 10_000 * images_per_step / 32  # stylegan2-ada's rule
    return dict(gan_loss=cfg["GAN_LOSS"],
                feature_matching=cfg["FEATURE_MATCHING_LAMBDA"] if cfg["FEATURE_MATCHING"] else 0.0,
                average=GeneratorAverage(G, half_life, cfg["G_EMA_RAMPUP"]) if cfg["G_EMA"] else None)


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
    loss_D, d_real, d_fake = discriminator_loss(real_logits, fake_logits, m.gan_loss)
    if guard:
        guard.check(d_real=d_real, d_fake=d_fake)
    m.opt_D.zero_grad(set_to_none=True)
    m.scaler_D.scale(loss_D).backward()
    update(m.opt_D, m.scaler_D, guard)

    # G step: make the updated D score the generated pair 1, and stay close to the target in L1
    m.D.requires_grad_(False)  # the G step needs gradients w.r.t. D's input only, not its weights
    with m.amp:
        if m.feature_matching:  # pix2pixHD: also match D's features on the real pair (targets: no gradient)
            fake_features = m.D_run(x, fake, features=True)
            with torch.no_grad():
                real_features = m.D_run(x, y, features=True)
            if torch.is_tensor(fake_features[0]):  # one PatchGAN: its features as one scale
                fake_features, real_features = [fake_features], [real_features]
            fake_logits = [f[-1] for f in fake_features]
        else:
            fake_logits = m.D_run(x, fake)
    loss_G, g_gan, g_l1 = generator_loss(fake_logits, fake.float(), y.float(), m.l1_lambda, m.gan_loss)
    if m.feature_matching:
        loss_G = loss_G + m.feature_matching * feature_matching_loss(fake_features, real_features)
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


# ----------------------------------------------------------------------------- the averaged generator (G_EMA)

class GeneratorAverage:
    """G_EMA: an exponential moving average of G's weights (stylegan2-ada's G_ema), used instead of G for samples,
    validation and exports; training never reads it. Its half-life is in images, at most `rampup` x the images seen
    so far (so the random init fades fast). Batch-norm statistics are averaged alike; the paper's test mode (§3.3)
    uses the test batch's own, through the averaged weights."""

    def __init__(self, G: nn.Module, half_life_images: float, rampup: float):
        self.G = copy.deepcopy(G).requires_grad_(False)
        self.half_life, self.rampup = half_life_images, rampup
        self.images = 0  # images seen so far (every process's), for the ramp-up

    def beta(self, images: int) -> float:
        """The weight of the old average after a step of `images` images (0 at the first step: the average is G)."""
        half_life = min(self.half_life, self.images * self.rampup) if self.rampup else self.half_life
        return 0.5 ** (images / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, G: nn.Module, images: int) -> None:
        """After a step on `images` images: average <- G + beta * (average - G)."""
        beta = self.beta(images)
        self.images += images
        averaged = [t for t in (*self.G.parameters(), *self.G.buffers()) if t.is_floating_point()]
        current = [t for t in (*G.parameters(), *G.buffers()) if t.is_floating_point()]
        torch._foreach_lerp_(averaged, current, 1 - beta)
        for a, b in zip(self.G.buffers(), G.buffers()):
            if not b.is_floating_point():
                a.copy_(b)  # batch norm's step counters

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.G.state_dict(), "images": self.images}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["generator"])
        self.images = int(state["images"])
