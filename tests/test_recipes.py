"""The recipes beyond the paper: RECIPE words, the averaged generator (its update rule, its place in checkpoints and
exports, an exact resume with it), the multi-scale D's shapes and receptive fields, feature matching, spectral norm
and TTUR in a training step, a resume under another recipe, and a ResNet generator.pt through predict, evaluate,
export (ONNX) and the demo.

    python -m pytest tests/test_recipes.py -q
"""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import config
import evaluate
import export
import predict
import train
from conftest import tiny_args, write_pairs
from discriminator_model import MultiScaleDiscriminator, PatchDiscriminator, receptive_field
from harness.checkpoint import AVERAGE, CheckpointError, load_checkpoint, load_generator
from harness.configurator import ConfigError, load_config
from pix2pix import (GeneratorAverage, Pix2Pix, beyond_the_paper, build_models, feature_matching_loss,
                     make_grad_scalers, make_optimizers, train_step)

TINY = ["--GEN_BASE_CHANNELS=8", "--DISC_BASE_CHANNELS=8", "--IMAGE_SIZE=64", "--LOAD_SIZE=72", "--PRECISION=fp32",
        "--DEVICE=cpu"]  # 64 px: the coarser of two discriminators sees 32 px


def tiny_train(data: Path, run_dir: Path, **overrides) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(tiny_args(data, run_dir, **overrides)) == 0
    finally:
        torch.set_num_threads(threads)
    return run_dir


# ----------------------------------------------------------------------------- RECIPE words

def test_a_recipe_word_applies_its_settings_over_a_preset_and_a_key_still_wins():
    combo = load_config(["--PRESET=facades", "--RECIPE=combo"])
    assert {k: combo[k] for k in config.RECIPES["combo"]} == config.RECIPES["combo"]
    assert combo["D_SCALES"] == 2 and combo["GAN_LOSS"] == "hinge" and combo["DIRECTION"] == "BtoA"
    assert load_config(["--RECIPE=combo", "--D_SCALES=3"])["D_SCALES"] == 3
    paper = load_config(["--RECIPE=paper"])
    assert {k: v for k, v in paper.items() if k != "RECIPE"} == {k: v for k, v in load_config([]).items()
                                                                 if k != "RECIPE"}
    assert "plus" not in config.RECIPES  # no recipe is proven better yet: the winner's word waits for evidence


# ----------------------------------------------------------------------------- the averaged generator

def test_average_update_rule_half_life_and_ramp_up():
    G = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    avg = GeneratorAverage(G, half_life_images=100.0, rampup=0.05)
    with torch.no_grad():
        G[0].weight.fill_(1.0)
    avg.update(G, 4)  # the first step: ramp-up half-life 0 -> beta 0, the average is G
    assert torch.equal(avg.G[0].weight, G[0].weight) and avg.images == 4
    avg.images = 1000  # 1000 images seen: ramp-up half-life min(100, 0.05 * 1000) = 50
    assert avg.beta(10) == pytest.approx(0.5 ** (10 / 50))
    avg.images = 10_000  # past the ramp-up: the half-life itself
    assert avg.beta(10) == pytest.approx(0.5 ** (10 / 100))
    old = avg.G[0].weight.clone()
    with torch.no_grad():
        G[0].weight.fill_(3.0)
        G[1].running_mean.fill_(2.0)
    G[1].num_batches_tracked.fill_(7)
    beta = 0.5 ** (10 / 100)
    avg.update(G, 10)
    assert torch.allclose(avg.G[0].weight, beta * old + (1 - beta) * 3.0)
    assert torch.allclose(avg.G[1].running_mean, torch.full((2,), (1 - beta) * 2.0))  # buffers averaged alike
    assert avg.G[1].num_batches_tracked.item() == 7 and avg.images == 10_010
    assert not any(p.requires_grad for p in avg.G.parameters())


@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory) -> Path:
    """root/data, root/a: a tiny run with G_EMA and a snapshot every epoch; root/b: the same run resumed from a's
    epoch-1 snapshot."""
    root = tmp_path_factory.mktemp("ema")
    write_pairs(root / "data" / "train", 8, seed=0)
    write_pairs(root / "data" / "val", 4, seed=1)
    tiny_train(root / "data", root / "a", G_EMA=True, G_EMA_HALF_LIFE=4.0, SNAPSHOT_EVERY=1)
    (root / "b" / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "a" / "checkpoints" / "epoch_0001.pt", root / "b" / "checkpoints" / "last.pt")
    tiny_train(root / "data", root / "b", G_EMA=True, G_EMA_HALF_LIFE=4.0, SNAPSHOT_EVERY=1)
    return root


def test_the_average_does_not_change_training(ema_runs, tiny_run):
    """The same tiny run as conftest's (the paper defaults) with G_EMA on: G's and D's weights and statistics end
    bit-identical. (Batch norm's num_batches_tracked, which nothing reads at momentum 0.1, counts the sample and
    validation batches of whichever G runs them: the averaged one here.)"""
    with_ema = torch.load(ema_runs / "a" / "checkpoints" / "last.pt", weights_only=True)
    without = torch.load(tiny_run / "run" / "checkpoints" / "last.pt", weights_only=True)
    for net in ("generator", "discriminator"):
        assert with_ema[net].keys() == without[net].keys()
        assert all(torch.equal(v, without[net][k]) for k, v in with_ema[net].items()
                   if not k.endswith("num_batches_tracked")), net
    assert AVERAGE not in without and with_ema[AVERAGE]["images"] == 16  # 2 epochs of 8 images
    averaged = with_ema[AVERAGE]["generator"]
    assert any(not torch.equal(v, with_ema["generator"][k]) for k, v in averaged.items())


def test_exports_and_loading_use_the_average_and_say_so(ema_runs):
    run = ema_runs / "a"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    export_file = torch.load(run / "generator.pt", weights_only=True)
    assert export_file["averaged"] is True
    assert all(torch.equal(v, ckpt[AVERAGE]["generator"][k]) for k, v in export_file["generator"].items())
    for path in (run / "generator.pt", run / "checkpoints" / "last.pt"):
        G = load_generator(path)
        assert all(torch.equal(v, ckpt[AVERAGE]["generator"][k]) for k, v in G.state_dict().items())
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["val_l1"] and rows[-1]["val_raw_l1"] and rows[-1]["val_l1"] != rows[-1]["val_raw_l1"]


def test_a_resume_with_the_average_is_exact(ema_runs):
    a = torch.load(ema_runs / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ema_runs / "b" / "checkpoints" / "last.pt", weights_only=True)
    for net in ("generator", "discriminator"):
        assert all(torch.equal(v, b[net][k]) for k, v in a[net].items()), net
    assert a[AVERAGE]["images"] == b[AVERAGE]["images"]
    assert all(torch.equal(v, b[AVERAGE]["generator"][k]) for k, v in a[AVERAGE]["generator"].items())


# ----------------------------------------------------------------------------- resuming under another recipe

def test_resuming_under_another_recipe_is_one_line_naming_both(ema_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ema_runs / "a", run)
    args = tiny_args(ema_runs / "data", run, G_EMA=True, G_EMA_HALF_LIFE=4.0, N_EPOCHS=2)
    with pytest.raises(CheckpointError) as err:  # train.py's exit_on_error: this line, exit 1
        train.main(args + ["--RECIPE=hinge_sn_ttur"])
    message = str(err.value)
    assert "\n" not in message and "RECIPE=''" in message and "RECIPE='hinge_sn_ttur'" in message
    assert "GAN_LOSS='bce'" in message and "GAN_LOSS='hinge'" in message
    with pytest.raises(CheckpointError, match="G_EMA=True.*G_EMA=False"):  # G_EMA on -> off: refused
        train.main(tiny_args(ema_runs / "data", run, N_EPOCHS=2))
    assert CheckpointError.exit_code == 1
    # the word is a shorthand: RECIPE=paper sets nothing, so the same run goes on under it
    assert train.main(args + ["--RECIPE=paper", "--N_EPOCHS=3"]) == 0
    assert "resuming from" in capsys.readouterr().out


def test_resume_compares_the_optimisers_settings_as_used(tiny_run, tmp_path):
    """G's learning rate and betas are part of a recipe (hinge_sn_ttur sets them): a change is refused by name. D's
    "same" is G's value, so writing that value out is the same run and goes on."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    for change in (dict(LEARNING_RATE=1e-4), dict(BETA1=0.0), dict(BETA2_D=0.9)):
        with pytest.raises(CheckpointError, match=f"{next(iter(change))}=.*{next(iter(change))}="):
            train.main(tiny_args(tiny_run / "data", run, N_EPOCHS=2, **change))
    trained = load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    assert train.main(tiny_args(tiny_run / "data", run, N_EPOCHS=3, LEARNING_RATE_D=trained["LEARNING_RATE"],
                                BETA1_D=trained["BETA1"], BETA2_D=trained["BETA2"])) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3 + 1  # N_EPOCHS + N_EPOCHS_DECAY


def test_turning_the_average_on_when_resuming_is_allowed(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    assert train.main(tiny_args(tiny_run / "data", run, G_EMA=True, N_EPOCHS=2)) == 0
    assert "trained without G_EMA; the averaged generator starts at its weights now" in capsys.readouterr().out
    assert AVERAGE in torch.load(run / "checkpoints" / "last.pt", weights_only=True)


# ----------------------------------------------------------------------------- multi-scale D, feature matching

@pytest.mark.parametrize("scales", [1, 2, 3])
def test_multi_scale_d_output_shapes_and_receptive_fields(scales):
    D = MultiScaleDiscriminator(scales, in_channels=1, out_channels=1, base_channels=4, n_layers=3, norm="none")
    for p in D.parameters():  # positive weights: every input pixel in a logit's field moves it
        nn.init.constant_(p, 0.01)
    side = 320
    x = torch.zeros(1, 1, side, side, requires_grad=True)
    outs = D(x, torch.zeros(1, 1, side, side))
    assert len(outs) == scales
    expected = side
    for k, logits in enumerate(outs):
        sides = [expected // 2, expected // 4, expected // 8, expected // 8 - 1, expected // 8 - 2]
        assert logits.shape == (1, 1, sides[-1], sides[-1])
        expected = (expected + 1) // 2  # the next scale's input
        centre = logits.shape[-1] // 2
        (grad,) = torch.autograd.grad(logits[0, 0, centre, centre], x, retain_graph=True)
        rows = grad[0, 0].abs().sum(1).nonzero()
        assert rows.max() - rows.min() + 1 == receptive_field(3, k), f"scale {k}"
    assert [receptive_field(3, k) for k in range(3)] == [70, 141, 283]


def test_feature_matching_is_zero_when_the_pairs_are_equal_and_weighted_as_pix2pixhd():
    torch.manual_seed(0)
    D = MultiScaleDiscriminator(2, base_channels=4, n_layers=3, norm="batch")
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        same = feature_matching_loss(D(x, y, features=True), D(x, y, features=True))
        other = feature_matching_loss(D(x, -y, features=True), D(x, y, features=True))
    assert same.item() == 0 and other.item() > 0
    # two intermediate layers and one scale: 4/2 per layer (the logits, last, are not matched)
    fake = [[torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.full((1, 1, 1, 1), 9.0)]]
    real = [[torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.0), torch.zeros(1, 1, 1, 1)]]
    assert feature_matching_loss(fake, real).item() == pytest.approx(2 * 1.0 + 2 * 3.0)
    assert feature_matching_loss(fake * 2, real * 2).item() == pytest.approx(2 * 1.0 + 2 * 3.0)  # / D_SCALES


@pytest.mark.parametrize("recipe", ["msd_fm", "hinge_sn_ttur", "combo"])
def test_each_recipe_trains_a_step(recipe):
    cfg = load_config(TINY + [f"--RECIPE={recipe}", "--G_EMA=True"])
    torch.manual_seed(0)
    G, D = build_models(cfg)
    m = Pix2Pix(G, D, *make_optimizers(G, D, cfg, torch.device("cpu")),
                *make_grad_scalers(torch.device("cpu"), "fp32"), cfg["L1_LAMBDA"], **beyond_the_paper(cfg, G))
    assert isinstance(D, MultiScaleDiscriminator) == (cfg["D_SCALES"] > 1)
    assert any("parametrizations" in k for k in D.state_dict()) == cfg["SPECTRAL_NORM"]
    assert m.opt_D.param_groups[0]["lr"] == (4e-4 if cfg["SPECTRAL_NORM"] else 2e-4)
    assert m.opt_D.param_groups[0]["betas"] == ((0.0, 0.9) if cfg["SPECTRAL_NORM"] else (0.5, 0.999))
    before = [p.clone() for p in (*G.parameters(), *D.parameters())]
    x, y = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    losses = train_step(m, x, y)
    m.average.update(G, 1)
    assert all(torch.isfinite(v) for v in losses.values())
    after = [*G.parameters(), *D.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after) if a.numel() > 1)


def test_too_small_images_for_the_scales_are_one_line():
    with pytest.raises(ConfigError) as err:
        load_config(["--IMAGE_SIZE=32", "--LOAD_SIZE=36", "--D_SCALES=3"])
    assert "IMAGE_SIZE=32 is too small for D_SCALES=3" in str(err.value) and "IMAGE_SIZE >= " in str(err.value)


def test_a_paper_d_keeps_its_hyperparameters_and_keys():
    D = PatchDiscriminator(base_channels=8)
    assert "spectral_norm" not in D.hparams and "scales" not in D.hparams
    assert not any("parametrizations" in k for k in D.state_dict())


# ----------------------------------------------------------------------------- a ResNet generator.pt everywhere

@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resnet")
    write_pairs(root / "data" / "train", 4, seed=0)
    write_pairs(root / "data" / "val", 2, seed=1)
    tiny_train(root / "data", root / "run", GENERATOR="resnet_9blocks", G_EMA=True)
    return root


def test_a_resnet_run_resumes_whatever_num_downs_says(resnet_run, tmp_path):
    """NUM_DOWNS is the U-Net's depth: a ResNet generator ignores it, so a resume must not refuse over it."""
    run = tmp_path / "run"
    shutil.copytree(resnet_run / "run", run)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["config"]["NUM_DOWNS"]
    tiny_train(resnet_run / "data", run, GENERATOR="resnet_9blocks", G_EMA=True, N_EPOCHS=2, NUM_DOWNS=saved - 1)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3


def test_a_resnet_generator_pt_rebuilds_itself(resnet_run):
    G = load_generator(resnet_run / "run" / "generator.pt")
    assert G.hparams["n_blocks"] == 9 and G.side_multiple == 4
    assert load_checkpoint(resnet_run / "run" / "generator.pt")["averaged"] is True


def test_a_resnet_generator_pt_predicts_evaluates_and_exports(resnet_run, tmp_path):
    checkpoint = resnet_run / "run" / "generator.pt"
    image = resnet_run / "data" / "val" / sorted(p.name for p in (resnet_run / "data" / "val").iterdir())[0]
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(image), "--output", str(tmp_path / "p"),
                         "--device", "cpu", "--paired"]) == 0
    assert any((tmp_path / "p").iterdir())
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(resnet_run / "data" / "val"),
                          "--output", str(tmp_path / "e"), "--device", "cpu"]) == 0
    assert (tmp_path / "e" / "summary.json").is_file()
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "g.onnx")]) == 0
    import onnxruntime
    session = onnxruntime.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    G = load_generator(checkpoint, mode="eval")
    x = torch.rand(1, 3, 36, 20) * 2 - 1
    with torch.no_grad():
        want = G(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4
    official = tmp_path / "latest_net_G.pth"  # and the official code's file, under its ResnetGenerator's names
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(official), "--format", "official"]) == 0
    names = list(torch.load(official, weights_only=True))
    assert names[0] == "model.1.weight" and "model.10.conv_block.1.weight" in names and names[-1] == "model.26.bias"


def test_a_resnet_generator_pt_in_the_demo(resnet_run):
    import demo
    from harness.inference import load_for_inference
    G, cfg, device, precision = load_for_inference(resnet_run / "run" / "generator.pt", "eval", "cpu")
    image = np.random.default_rng(0).integers(0, 256, (45, 30, 3), dtype=np.uint8)
    out = demo.translate_array(G, cfg, image, "eval", 0, device, precision)
    assert out.shape == (45, 30, 3) and out.dtype == np.uint8
