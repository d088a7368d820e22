"""The official code's options: the ResNet generator against a golden output of the official networks.py
(tests/fixtures/README.md), the GAN losses against hand-computed values, each LR policy against torch's scheduler
configured as the official code configures it, the inits, NORM="none", and their bad values (exit 2, one line that
lists the valid ones). Never imports the official code.

    python -m pytest tests/test_options.py -q
"""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import config
from conftest import ROOT
from generator_model import ResnetGenerator, UNetGenerator
from harness import official_format
from harness.checkpoint import build_generator, load_generator
from harness.configurator import ConfigError, default_settings, load_config
from harness.errors import OfficialFormatError
from layers import init_weights
from pix2pix import (GAN_LOSSES, LR_POLICIES, plateau_after, build_models, discriminator_loss, generator_loss,
                     lr_factor)
from test_parity import unpack4

FIXTURE = Path(__file__).parent / "fixtures" / "official_resnet_golden.pt"


# ----------------------------------------------------------------------------- the ResNet generator

def official_resnet() -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official ResnetGenerator's state dict (its key order), input and outputs (tests/fixtures/README.md)."""
    g = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    convs = {k: unpack4(v, g["conv_shapes"][k], g["conv_weight_scale"]) for k, v in g["conv_weights_4bit"].items()}
    state = {k: convs[k] if k in convs else g["state_dict"][k] for k in g["key_order"]}
    return state, g["input_int8"].float() * g["input_scale"], g["output_eval"], g["output_train"]


def test_resnet_9blocks_computes_the_official_networks_outputs():
    state, x, want_eval, want_train = official_resnet()
    G = ResnetGenerator(3, 3, base_channels=4, n_blocks=9, norm="batch", dropout=False)
    ours = G.state_dict()
    assert len(ours) == len(state)  # the same layers in the same order: the weights map one to one
    for (key, tensor), (official_key, official) in zip(ours.items(), state.items()):
        assert tensor.shape == official.shape, f"{key} vs official {official_key}"
    G.load_state_dict(dict(zip(ours, state.values())))
    with torch.no_grad():
        G.eval()
        assert (G(x) - want_eval).abs().max() < 1e-5
        G.train()  # batch statistics (the paper's test mode, without dropout here)
        assert (G(x) - want_train).abs().max() < 1e-5


def test_a_resnet_generator_exports_under_the_official_names():
    state, *_ = official_resnet()
    G = ResnetGenerator(3, 3, base_channels=4, n_blocks=9, norm="batch", dropout=False)
    G.load_state_dict(dict(zip(G.state_dict(), state.values())))
    exported = official_format.official_state_dict(G)
    assert list(exported) == list(state) and all(torch.equal(exported[k], v) for k, v in state.items())
    assert official_format.official_options(G).startswith("--netG resnet_9blocks --ngf 4 --norm batch")
    unnormed = ResnetGenerator(3, 3, 4, 6, norm="none")  # its convs have biases, the official ones none
    nn.init.constant_(unnormed.stem[1].bias, 0.1)
    with pytest.raises(OfficialFormatError, match="NORM='none'"):
        official_format.official_state_dict(unnormed)


def test_the_official_resnet_file_loads_and_computes_the_official_outputs(tmp_path):
    """The official network's own state dict, saved as its latest_net_G.pth: read by load_generator (and so by
    predict, evaluate, export and demo) with its settings inferred, it computes the official outputs."""
    state, x, want_eval, want_train = official_resnet()
    path = tmp_path / "latest_net_G.pth"
    for saved in (state, {f"module.{k}": v for k, v in state.items()}):  # also as saved from a DDP wrapper
        torch.save(saved, path)
        G = load_generator(path, mode="eval")
        assert isinstance(G, ResnetGenerator) and G.hparams == dict(in_channels=3, out_channels=3, base_channels=4,
                                                                    n_blocks=9, norm="batch", dropout=False)
        with torch.no_grad():
            assert (G(x) - want_eval).abs().max() < 1e-5
            # the paper's test mode: batch statistics (no dropout in this file), as the official net.train()
            assert (load_generator(path)(x) - want_train).abs().max() < 1e-5


def test_resnet_6blocks_and_9blocks_from_the_setting():
    cfg = load_config(["--GENERATOR=resnet_6blocks", "--GEN_BASE_CHANNELS=4", "--DISC_BASE_CHANNELS=4"])
    G, _ = build_models(cfg)
    assert isinstance(G, ResnetGenerator) and len(G.blocks) == 6 and G.side_multiple == 4
    assert any(isinstance(m, nn.Dropout) for m in G.modules())  # DROPOUT=True: one per block, as --no_dropout off
    G9, _ = build_models(load_config(["--GENERATOR=resnet_9blocks", "--GEN_BASE_CHANNELS=4"]))
    assert len(G9.blocks) == 9
    rebuilt = build_generator(G9.hparams)
    assert isinstance(rebuilt, ResnetGenerator) and rebuilt.hparams == G9.hparams
    assert G(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- GAN losses, by hand

REAL, FAKE = [2.0, -1.0, 0.5], [-0.5, 1.5, 0.0]


def by_hand(kind: str) -> tuple[float, float, float]:
    """(D's real term, D's fake term, G's GAN term) for the logits above, from the formulas."""
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    softplus = lambda v: math.log(1 + math.exp(v))  # noqa: E731  -log(sigmoid(-v))
    if kind == "bce":  # -log sigmoid(r), -log(1 - sigmoid(f)), -log sigmoid(f)
        return mean([softplus(-r) for r in REAL]), mean([softplus(f) for f in FAKE]), mean([softplus(-f) for f in FAKE])
    if kind == "lsgan":
        return mean([(r - 1) ** 2 for r in REAL]), mean([f ** 2 for f in FAKE]), mean([(f - 1) ** 2 for f in FAKE])
    return mean([max(0, 1 - r) for r in REAL]), mean([max(0, 1 + f) for f in FAKE]), -mean(FAKE)  # hinge


@pytest.mark.parametrize("kind", GAN_LOSSES)
def test_each_gan_loss_against_hand_computed_values(kind):
    real, fake = torch.tensor([REAL]), torch.tensor([FAKE])
    want_real, want_fake, want_g = by_hand(kind)
    loss, d_real, d_fake = discriminator_loss(real, fake, kind)
    assert d_real.item() == pytest.approx(want_real, rel=1e-6) and d_fake.item() == pytest.approx(want_fake, rel=1e-6)
    assert loss.item() == pytest.approx((want_real + want_fake) / 2, rel=1e-6)  # halved (paper §3.3)
    zero = torch.zeros(1)
    loss_G, gan, l1 = generator_loss(fake, zero + 0.5, zero, 100.0, kind)
    assert gan.item() == pytest.approx(want_g, rel=1e-6, abs=1e-7) and l1.item() == 0.5
    assert loss_G.item() == pytest.approx(want_g + 50.0, rel=1e-6)
    # a multi-scale D: the terms summed over its scales
    two, _, _ = discriminator_loss([real, real], [fake, fake], kind)
    assert two.item() == pytest.approx(want_real + want_fake, rel=1e-6)
    assert generator_loss([fake, fake], zero, zero, 100.0, kind)[1].item() == pytest.approx(2 * want_g, rel=1e-6,
                                                                                          abs=1e-7)


# ----------------------------------------------------------------------------- LR policies vs torch's schedulers

def official_scheduler(policy: str, opt: torch.optim.Optimizer, n_epochs: int, n_epochs_decay: int,
                       lr_decay_iters: int):
    """torch's scheduler as the official get_scheduler configures it (epoch_count = 1)."""
    S = torch.optim.lr_scheduler
    if policy == "linear":
        return S.LambdaLR(opt, lambda e: 1.0 - max(0, e + 1 - n_epochs) / float(n_epochs_decay + 1))
    if policy == "step":
        return S.StepLR(opt, step_size=lr_decay_iters, gamma=0.1)
    if policy == "plateau":
        return S.ReduceLROnPlateau(opt, mode="min", factor=0.2, threshold=0.01, patience=5)
    return S.CosineAnnealingLR(opt, T_max=n_epochs, eta_min=0)


@pytest.mark.parametrize("policy", LR_POLICIES)
def test_each_lr_policy_per_epoch_matches_the_official_scheduler(policy):
    n_epochs, n_decay, every = 7, 5, 3
    cfg = default_settings() | dict(LR_POLICY=policy, N_EPOCHS=n_epochs, N_EPOCHS_DECAY=n_decay, LR_DECAY_ITERS=every)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=2e-4)
    scheduler = official_scheduler(policy, opt, n_epochs, n_decay, every)
    # a validation figure that improves, then stalls, improves by less than 1 %, stalls again
    figures = [1.0, 0.9, 0.8] + [0.8] * 6 + [0.799] * 3
    plateau = {}
    for epoch in range(n_epochs + n_decay):
        ours = 2e-4 * lr_factor(epoch, cfg, plateau.get("factor", 1.0))
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), f"epoch {epoch}"
        if policy == "plateau":
            scheduler.step(figures[epoch])
            plateau = plateau_after(plateau, figures[epoch])
        else:
            opt.step()  # no gradients: changes nothing, but in the order torch expects
            scheduler.step()
    if policy == "plateau":
        assert plateau["factor"] == pytest.approx(0.2)  # it did cut once: the comparison saw both branches


def test_plateau_on_fcn_class_iou_follows_torchs_max_mode():
    """BEST_BY="fcn_class_iou" hands plateau_after -IoU: a slow decline of the IoU must count as a stall (and cut
    the LR as torch's ReduceLROnPlateau(mode="max") does on the IoU itself), a >1 % rise as a gain."""
    ious = [0.20, 0.25, 0.28] + [0.28 - 0.001 * i for i in range(1, 8)] + [0.30, 0.3001, 0.3002]
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.2, threshold=0.01, patience=5)
    plateau, factors = {}, []
    for iou in ious:
        scheduler.step(iou)
        plateau = plateau_after(plateau, -iou)
        factors.append(plateau["factor"])
        assert plateau["factor"] == pytest.approx(opt.param_groups[0]["lr"]), f"after IoU {iou}"
    assert factors[-1] == pytest.approx(0.2) and 1.0 in factors  # it cut once, during the decline


def test_the_linear_policy_is_the_paper_schedule():
    cfg = default_settings() | dict(N_EPOCHS=100, N_EPOCHS_DECAY=100)
    assert [lr_factor(e, cfg) for e in (0, 99, 100, 199)] == [1.0, 1.0, 1 - 1 / 101, 1 - 100 / 101]


# ----------------------------------------------------------------------------- inits and NORM="none"

def conv_weights(net: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_each_init_gives_its_distribution():
    net = nn.Sequential(nn.Conv2d(64, 64, 4), nn.Conv2d(64, 128, 3), nn.BatchNorm2d(8))
    torch.manual_seed(0)
    init_weights(net, "normal", 0.05)
    assert conv_weights(net)[0].std().item() == pytest.approx(0.05, rel=0.05)
    assert (net[2].weight - 1).abs().max() < 0.25 and net[0].bias.abs().max() == 0  # BN scale ~ N(1, gain); biases 0
    init_weights(net, "xavier", 0.5)  # std = gain * sqrt(2 / (fan_in + fan_out))
    assert conv_weights(net)[0].std().item() == pytest.approx(0.5 * math.sqrt(2 / (64 * 16 * 2)), rel=0.05)
    init_weights(net, "kaiming", 0.02)  # std = sqrt(2 / fan_in), the gain unused (as the official code)
    assert conv_weights(net)[1].std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    init_weights(net, "orthogonal", 2.0)  # rows orthogonal, each of norm `gain`
    w = conv_weights(net)[0].flatten(1)
    assert torch.allclose(w @ w.T, 4.0 * torch.eye(64), atol=1e-4)


def test_init_setting_reaches_both_networks():
    small = ["--GEN_BASE_CHANNELS=8", "--DISC_BASE_CHANNELS=8", "--IMAGE_SIZE=32", "--LOAD_SIZE=36"]
    torch.manual_seed(0)
    G, D = build_models(load_config(small + ["--INIT=orthogonal", "--INIT_GAIN=1.0"]))
    for net in (G, D):
        w = conv_weights(net)[1].flatten(1)
        rows = w if w.shape[0] <= w.shape[1] else w.T
        assert torch.allclose(rows @ rows.T, torch.eye(rows.shape[0]), atol=1e-4)


def test_norm_none_has_no_norm_layers_and_biased_convs():
    cfg = load_config(["--NORM=none", "--GEN_BASE_CHANNELS=8", "--DISC_BASE_CHANNELS=8", "--IMAGE_SIZE=32",
                       "--LOAD_SIZE=36"])
    for net in build_models(cfg):
        assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in net.modules())
        assert all(m.bias is not None for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    G = UNetGenerator(3, 3, 8, 5, norm="none")
    assert G(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("arg, valid", [
    ("--GAN_LOSS=wgangp", "'bce', 'lsgan', 'hinge'"),
    ("--GENERATOR=resnet_12blocks", "'unet', 'resnet_6blocks', 'resnet_9blocks'"),
    ("--LR_POLICY=exponential", "'linear', 'step', 'plateau', 'cosine'"),
    ("--INIT=uniform", "'normal', 'xavier', 'kaiming', 'orthogonal'"),
    ("--RECIPE=plus", "paper, msd_fm, hinge_sn_ttur, combo"),
    ("--NORM=group", "'batch', 'instance', 'none'"),
    ("--D_SCALES=two", "1 (the paper), 2 or 3"),
    ("--D_SCALES=4", "1, 2, 3"),
    ("--FEATURE_MATCHING=maybe", "True or False"),
    ("--G_EMA=sometimes", "True or False"),
    ("--SPECTRAL_NORM=2.5", "True or False"),
    ("--LEARNING_RATE_D=fast", "same (G's value) or a number"),
    ("--G_EMA_HALF_LIFE=long", "images, a number >= 0"),
])
def test_a_bad_option_value_is_one_line_listing_the_valid_values(arg, valid):
    with pytest.raises(ConfigError) as err:
        load_config([arg])
    message = str(err.value)
    assert valid in message and "\n" not in message and ConfigError.exit_code == 2


@pytest.mark.parametrize("recipe, valid", [
    ({"D_SCALES": "2"}, "1 (the paper), 2 or 3"), ({"FEATURE_MATCHING": "yes"}, "True or False"),
    ({"G_EMA_RAMPUP": "0.05"}, "a fraction >= 0"), ({"GAN_LOSS": "wgangp"}, "'bce', 'lsgan', 'hinge'"),
])
def test_a_recipe_or_config_value_of_the_wrong_type_is_one_line(monkeypatch, recipe, valid):
    """Values written in config.py or in RECIPES are checked as the command line's are."""
    monkeypatch.setitem(config.RECIPES, "msd_fm", recipe)
    with pytest.raises(ConfigError) as err:
        load_config(["--RECIPE=msd_fm"])
    assert valid in str(err.value) and "\n" not in str(err.value)


def test_train_exits_2_with_one_line_for_an_unknown_recipe(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--RECIPE=plus", f"--RUN_DIR={tmp_path}"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RECIPE='plus'" in lines[0] and "msd_fm" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_every_setting_and_recipe_word_is_in_the_configuration_reference():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    settings = [k for k in default_settings()]
    assert [k for k in settings if f"| `{k}` |" not in reference] == []
    assert [w for w in config.RECIPES if f"`{w}`" not in reference] == []


# ----------------------------------------------------------------------------- the policies in a run

def test_a_run_follows_its_lr_policy_and_keeps_the_plateau_state(tmp_path):
    import csv
    import train
    from conftest import tiny_args, write_pairs
    write_pairs(tmp_path / "data" / "train", 4, seed=0)
    write_pairs(tmp_path / "data" / "val", 2, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(tiny_args(tmp_path / "data", tmp_path / "step", LR_POLICY="step", LR_DECAY_ITERS=1,
                                    LEARNING_RATE_D=1e-3)) == 0
        assert train.main(tiny_args(tmp_path / "data", tmp_path / "plateau", LR_POLICY="plateau")) == 0
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "step" / "log.csv", newline="") as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)] == pytest.approx([2e-4, 2e-5])
    ckpt = torch.load(tmp_path / "step" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["opt_D"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # D's own LR, scaled alike (x0.1)
    plateau = torch.load(tmp_path / "plateau" / "checkpoints" / "last.pt", weights_only=True)["plateau"]
    assert plateau["factor"] == 1.0 and plateau["best"] < 1.0 and plateau["bad"] in (0, 1)
