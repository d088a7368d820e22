"""Parity with the official pix2pix code: the golden fixture made once with the official UnetGenerator
(tests/fixtures/README.md), official latest_net_G.pth files in (load_generator) and out (official_format),
dropout placements, legacy checkpoints keeping their function, PixelGAN's last conv, the night2day direction and
batch-1 inference in paper mode. Never imports the official code.

    python -m pytest tests/test_parity.py -q
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import evaluate
from harness import official_format
from harness.errors import OfficialFormatError
import predict
import train
from conftest import tiny_args, write_pairs
from discriminator_model import PatchDiscriminator
from generator_model import ResnetGenerator, UNetGenerator
from harness.checkpoint import CheckpointError, load_checkpoint, load_generator, use_legacy_skips
from harness.configurator import ConfigError, load_config
from harness.inference import load_for_inference

FIXTURE = Path(__file__).parent / "fixtures" / "official_unet_golden.pt"
TOL = 1e-5  # the bound on the max abs difference to the official network (docs/faithfulness.md)


def unpack4(packed: torch.Tensor, shape: list[int], scale: float) -> torch.Tensor:
    """Two 4-bit integers in [-8, 7] per byte (low nibble first), times scale: exact fp32 conv weights."""
    q = torch.stack([packed & 15, packed >> 4], dim=1).flatten().float() - 8
    return (q[:torch.Size(shape).numel()] * scale).reshape(shape)


@pytest.fixture(scope="module")
def golden() -> dict:
    """The official network's state dict (its key order), input and outputs (tests/fixtures/README.md)."""
    g = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    convs = {k: unpack4(v, g["conv_shapes"][k], g["conv_weight_scale"]) for k, v in g["conv_weights_4bit"].items()}
    state = {k: convs[k] if k in convs else g["state_dict"][k] for k in g["key_order"]}
    return {"state": state, "x": g["input_int8"].float() * g["input_scale"],
            "eval": g["output_eval"], "train": g["output_train"]}


def no_dropout(G: nn.Module) -> nn.Module:
    for m in G.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return G


def legacy_forward(G: UNetGenerator, x: torch.Tensor) -> torch.Tensor:
    """The generator's function before the fix: the encoder's LeakyReLU output fed straight into the decoder."""
    skips = []
    for block in G.encoder:
        x = block(x)
        skips.append(x)
    x = G.bottleneck(x)
    for block in G.decoder:
        x = torch.cat([skips.pop(), block(x)], dim=1)
    return G.head(x)


def dropout_blocks(G: UNetGenerator) -> list[int]:
    return [j for j, block in enumerate(G.decoder) if any(isinstance(m, nn.Dropout) for m in block)]


def randomised(G: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and running statistics (init alone leaves biases and running means at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for m in G.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return G


def assert_same_generator(G: nn.Module, back: nn.Module, x: torch.Tensor) -> None:
    """`back` (read back from official names) is G: the same settings and tensors, the same function in eval and
    train mode (with dropout: the same masks from the same seed)."""
    assert back.hparams == G.hparams
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), back.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(G.eval()(x), back.eval()(x))
        torch.manual_seed(1)
        noisy = G.train()(x)
        torch.manual_seed(1)
        assert torch.equal(noisy, back.train()(x))


# ----------------------------------------------------------------------------- fix 1: the official function

def test_golden_fixture_eval_and_train_outputs(golden):
    """Our U-Net loaded from the official state dict reproduces the official network's outputs, in eval mode
    (running statistics) and in train mode (batch statistics; dropout off, as the fixture was made)."""
    G = official_format.generator_from_official(golden["state"])
    assert {k: G.hparams[k] for k in ("in_channels", "out_channels", "base_channels", "num_downs", "norm")} == \
        dict(in_channels=3, out_channels=3, base_channels=8, num_downs=6, norm="batch")
    assert G.hparams["dropout_placement"] == "official" and "skip_relu" not in G.hparams  # not a legacy U-Net
    with torch.no_grad():
        out_eval = G.eval()(golden["x"])
        out_train = no_dropout(G).train()(golden["x"])
    assert (out_eval - golden["eval"]).abs().max() <= TOL
    assert (out_train - golden["train"]).abs().max() <= TOL
    # the fixture pins fix 1: the old LeakyReLU'd skips are far off the reference
    with torch.no_grad():
        assert (legacy_forward(G.eval(), golden["x"]) - golden["eval"]).abs().max() > 100 * TOL


def test_official_file_loads_through_load_generator(golden, tmp_path):
    path = tmp_path / "latest_net_G.pth"
    torch.save(golden["state"], path)
    G = load_generator(path, mode="eval")
    assert G.train_config == {} and not G.training
    with torch.no_grad():
        assert (G(golden["x"]) - golden["eval"]).abs().max() <= TOL
    with pytest.raises(CheckpointError, match="official-code generator.*no training state to resume"):
        load_checkpoint(path)  # what resume reads: refused with the reason
    # saved from a DataParallel/DDP wrapper: the same network
    torch.save({f"module.{k}": v for k, v in golden["state"].items()}, path)
    with torch.no_grad():
        assert (load_generator(path, mode="eval")(golden["x"]) - golden["eval"]).abs().max() <= TOL


def test_instance_norm_official_file_is_recognised():
    G = randomised(UNetGenerator(3, 1, 4, 7, "instance", True, "official"))
    state = official_format.official_state_dict(G)
    assert official_format.infer_hparams(state) == G.hparams
    # PyTorch < 0.4 files also kept (unused) running statistics for InstanceNorm: they are ignored
    old = state | {"model.model.1.model.2.running_mean": torch.zeros(8), "model.model.1.model.2.running_var":
                   torch.ones(8)}
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(official_format.generator_from_official(old).eval()(x), G.eval()(x))


@pytest.mark.parametrize("state, what", [
    ({"model.1.weight": torch.zeros(64, 3, 7, 7), **{f"model.{i}.conv_block.1.weight": torch.zeros(256, 256, 3, 3)
                                                     for i in range(10, 17)}}, "ResNet generator with 7 residual"),
    ({"model.0.weight": torch.zeros(64, 6, 4, 4), "model.0.bias": torch.zeros(64)}, "PatchGAN discriminator"),
    ({"net.0.weight": torch.zeros(64, 6, 1, 1)}, "PixelGAN discriminator"),
    ({"encoder.weight": torch.zeros(3)}, "unknown network"),
])
def test_other_files_are_not_supported_and_named(tmp_path, state, what):
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    assert "not supported" in str(err.value) and what in str(err.value) and str(path) in str(err.value)


def without_conv_biases(G: nn.Module) -> nn.Module:
    """A NORM="none" generator as the official network can hold it: its convs have no bias without a norm (the last
    conv, our head, has one), so only zero biases carry over; non-zero ones are refused, not dropped."""
    with pytest.raises(OfficialFormatError, match="NORM='none'.*non-zero"):
        official_format.official_state_dict(G)
    for name, p in G.named_parameters():
        if name.endswith(".bias") and not name.startswith("head."):
            p.data.zero_()
    return G


def official_resnet_keys(n_blocks: int, norm: str, dropout: bool) -> list[str]:
    """The names, in order, of the official ResnetGenerator's state dict, written out from its layout: one
    nn.Sequential of [pad, conv 7x7, norm, ReLU], 2 x [conv, norm, ReLU], n_blocks ResnetBlocks (conv_block: [pad,
    conv, norm, ReLU, (Dropout), pad, conv, norm]), 2 x [conv-transpose, norm, ReLU], [pad, conv 7x7, Tanh]. Its convs
    have a bias only with instance norm (the head's always); only batch norm has tensors."""
    def conv(m: str) -> list[str]:
        return [f"{m}.weight"] + ([f"{m}.bias"] if norm == "instance" else [])

    def bn(m: str) -> list[str]:
        return [f"{m}.{t}" for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")] \
            if norm == "batch" else []

    keys = conv("model.1") + bn("model.2") + conv("model.4") + bn("model.5") + conv("model.7") + bn("model.8")
    second = 6 if dropout else 5
    for b in range(10, 10 + n_blocks):
        keys += conv(f"model.{b}.conv_block.1") + bn(f"model.{b}.conv_block.2")
        keys += conv(f"model.{b}.conv_block.{second}") + bn(f"model.{b}.conv_block.{second + 1}")
    n = n_blocks
    keys += conv(f"model.{10 + n}") + bn(f"model.{11 + n}") + conv(f"model.{13 + n}") + bn(f"model.{14 + n}")
    return keys + [f"model.{17 + n}.weight", f"model.{17 + n}.bias"]


@pytest.mark.parametrize("n_blocks", [6, 9])
@pytest.mark.parametrize("norm, dropout", [("batch", True), ("batch", False), ("instance", True),
                                           ("instance", False), ("none", False)])
def test_resnet_round_trip_through_the_official_layout(n_blocks, norm, dropout):
    """ours -> the official names (exactly the official layout's, in its order) -> ours again: the settings read
    back from the names and shapes alone, the same tensors, the same function (with dropout: the same masks)."""
    G = randomised(ResnetGenerator(1, 3, 4, n_blocks, norm, dropout), seed=n_blocks)
    if norm == "none":
        G = without_conv_biases(G)
    state = official_format.official_state_dict(G)
    assert list(state) == official_resnet_keys(n_blocks, norm, dropout)
    back = official_format.generator_from_official(state)
    assert isinstance(back, ResnetGenerator)
    assert_same_generator(G, back, torch.randn(2, 1, 20, 28))
    assert official_format.official_state_dict(back).keys() == state.keys()


@pytest.fixture(scope="module")
def official_resnet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ResnetGenerator]:
    """An official-format resnet_6blocks (ngf 4, batch norm, dropout: the official defaults), and our twin of it."""
    G = randomised(ResnetGenerator(3, 3, 4, 6, "batch", True), seed=4)
    path = tmp_path_factory.mktemp("official_resnet") / "latest_net_G.pth"
    torch.save(official_format.official_state_dict(G), path)
    return path, G.eval()


def test_official_resnet_file_loads_in_every_script(official_resnet_file, tmp_path, capsys):
    import demo
    import export
    path, G = official_resnet_file
    loaded = load_generator(path, mode="eval")
    assert loaded.hparams == G.hparams and loaded.train_config == {}
    with pytest.raises(CheckpointError, match="official-code generator.*no training state to resume"):
        load_checkpoint(path)  # what resume reads: refused with the reason
    image = (np.random.default_rng(0).random((36, 44, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    assert predict.main(["--checkpoint", str(path), "--input", str(tmp_path / "in.png"), "--output",
                         str(tmp_path / "out"), "--mode", "eval", "--fit", "pad", "--device", "cpu",
                         "--precision", "fp32"]) == 0  # auto is bf16 on a CPU with AMX
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 127.5 - 1  # 36x44: a multiple of 4, no padding
    with torch.no_grad():
        want = ((G(x)[0] + 1) * 127.5).round().clamp(0, 255).permute(1, 2, 0).numpy()
    assert np.abs(pixels(tmp_path / "out" / "in.png") - want).max() <= 1
    write_pairs(tmp_path / "data", 2, size=32)
    assert evaluate.main(["--checkpoint", str(path), "--data", str(tmp_path / "data"), "--output",
                          str(tmp_path / "evaluated"), "--direction", "AtoB"]) == 0
    assert export.main(["--checkpoint", str(path), "--output", str(tmp_path / "again.pth"), "--format",
                        "official"]) == 0
    assert "--netG resnet_6blocks --ngf 4 --norm batch" in capsys.readouterr().out
    again, original = torch.load(tmp_path / "again.pth", weights_only=True), torch.load(path, weights_only=True)
    assert list(again) == list(original) and all(torch.equal(again[k], original[k]) for k in original)
    # demo.py resizes to the image size (an official file stores none: 256, the official crop) and back, as
    # predict.py --fit resize does
    assert predict.main(["--checkpoint", str(path), "--input", str(tmp_path / "in.png"), "--output",
                         str(tmp_path / "resized"), "--mode", "eval", "--fit", "resize", "--device", "cpu"]) == 0
    G_demo, cfg, device, precision = load_for_inference(path, "eval", "cpu")
    assert cfg["IMAGE_SIZE"] == 256
    shown = demo.translate_array(G_demo, cfg, image, "eval", 0, device, "fp32").astype(np.int16)
    assert shown.shape == image.shape and np.abs(shown - pixels(tmp_path / "resized" / "in.png")).max() <= 1


@pytest.mark.parametrize("how, message", [
    ("a missing tensor", "weights do not fit an official resnet_6blocks (ngf 4, batch norm, with dropout): tensor "
                         "'model.12.conv_block.7.running_var' is missing; expected one of shape (16,)"),
    ("an extra tensor", "unexpected tensor 'model.12.conv_block.9.weight': not a layer of an official resnet_6blocks "
                        "(keys like 'model.10.conv_block.1.weight')"),
    ("5 input channels", "tensor 'model.1.weight' has shape (4, 5, 7, 7); an official ResNet's first conv is (ngf, 1 "
                         "or 3 input channels, 7, 7)"),
])
def test_malformed_official_resnet_files_are_refused_naming_the_key(official_resnet_file, tmp_path, how, message):
    state = torch.load(official_resnet_file[0], weights_only=True)
    if how == "a missing tensor":
        del state["model.12.conv_block.7.running_var"]
    elif how == "an extra tensor":
        state["model.12.conv_block.9.weight"] = torch.zeros(3)
    else:
        state["model.1.weight"] = torch.zeros(4, 5, 7, 7)
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        load_generator(path)
    assert str(e.value) == f"{path}: {message}"


def test_official_resnet_with_7_blocks_is_a_one_line_error_in_every_script(tmp_path, capsys):
    """The official define_G builds resnet_6blocks and resnet_9blocks only; anything else is not its file."""
    import demo
    from test_bad_checkpoints import scripts_refuse
    path = tmp_path / "latest_net_G.pth"
    state = official_format.official_state_dict(ResnetGenerator(3, 3, 4, 7, "batch", False))
    assert sum(k.endswith("conv_block.1.weight") for k in state) == 7
    torch.save(state, path)
    lines = scripts_refuse(path, tmp_path, capsys, direction=True)
    assert demo.main(["--checkpoint", str(path), "--port", "0"]) == 1
    lines += capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith(f"error: {path}: not supported: this file is an official ResNet "
                                                   f"generator with 7 residual blocks") for line in lines), lines


# ----------------------------------------------------------------------------- export

def test_export_round_trip_and_official_key_names(golden):
    """ours -> official names -> ours: the same tensors and function (also with dropout: the same masks), and the
    exported names are exactly the official network's (the fixture's keys, written by the official code)."""
    torch.manual_seed(0)
    G = randomised(UNetGenerator(3, 3, 8, 6, "batch", True, "official"))
    state = official_format.official_state_dict(G)
    assert list(state) == list(golden["state"])  # same names in the same order as the official state dict
    assert all(state[k].shape == golden["state"][k].shape for k in state)
    assert_same_generator(G, official_format.generator_from_official(state), torch.randn(2, 3, 64, 64))


def test_saved_official_file_loads_back(tmp_path):
    G = randomised(UNetGenerator(3, 3, 4, 7, "batch", True, "official"))
    torch.save(official_format.official_state_dict(G), tmp_path / "latest_net_G.pth")
    assert official_format.official_options(G) == "--netG unet_128 --ngf 4 --norm batch --input_nc 3 --output_nc 3"
    loaded = load_generator(tmp_path / "latest_net_G.pth", mode="eval")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), G.eval()(x))


def test_norm_none_unet_round_trip_without_conv_biases():
    """--norm none: ours with zero conv biases is the official network, so it goes out (without them) and comes
    back with the same function."""
    G = without_conv_biases(randomised(UNetGenerator(3, 3, 4, 6, "none", True, "official")))
    state = official_format.official_state_dict(G)
    assert [k for k in state if not k.endswith(".weight")] == ["model.model.3.bias"]  # the outermost up-conv's
    assert len(state) == 2 * 6 + 1  # a down- and an up-conv per level, and that bias
    assert_same_generator(G, official_format.generator_from_official(state), torch.randn(2, 3, 64, 64))


def test_export_needs_the_official_function():
    with pytest.raises(OfficialFormatError, match="DROPOUT_PLACEMENT=official"):
        official_format.official_state_dict(UNetGenerator(3, 3, 4, 6))  # paper placement (the default)
    with pytest.raises(OfficialFormatError, match="skip fix"):
        official_format.official_state_dict(use_legacy_skips(UNetGenerator(3, 3, 4, 6, dropout_placement="official")))
    with pytest.raises(OfficialFormatError, match="at least 5"):
        official_format.official_state_dict(UNetGenerator(3, 3, 4, 4, dropout_placement="official"))
    # without dropout the placement does not matter (the official test.py then needs --no_dropout)
    G = UNetGenerator(3, 3, 4, 7, dropout=False)
    assert official_format.official_options(G).endswith("--no_dropout")
    assert len(official_format.official_state_dict(G)) == len(G.state_dict())


# ----------------------------------------------------------------------------- fix 2: dropout placement

@pytest.mark.parametrize("num_downs, official", [(6, [1]), (7, [1, 2]), (8, [1, 2, 3])])
def test_dropout_placements(num_downs, official):
    """paper: the first three decoder blocks; official: the num_downs-5 blocks after the innermost (block 0)."""
    assert dropout_blocks(UNetGenerator(base_channels=2, num_downs=num_downs)) == [0, 1, 2]
    G = UNetGenerator(base_channels=2, num_downs=num_downs, dropout_placement="official")
    assert dropout_blocks(G) == official
    assert all(m.p == 0.5 for m in G.modules() if isinstance(m, nn.Dropout))
    assert dropout_blocks(UNetGenerator(base_channels=2, num_downs=num_downs, dropout=False,
                                        dropout_placement="official")) == []


def test_dropout_placement_setting_is_validated_and_stored(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="DROPOUT_PLACEMENT='lua'.*'paper', 'official'"):
        load_config(["--DROPOUT_PLACEMENT=lua"])
    assert load_config([])["DROPOUT_PLACEMENT"] == "paper"
    assert train.main(tiny_args(tiny_data, tmp_path / "run", DROPOUT_PLACEMENT="official", N_EPOCHS_DECAY=0,
                                VAL_EVERY=0, SAMPLE_EVERY=0)) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "generator.pt")
    assert ckpt["generator_hparams"]["dropout_placement"] == "official" and ckpt["generator_hparams"]["skip_relu"]
    G = load_generator(tmp_path / "run" / "generator.pt")
    assert G.hparams["dropout_placement"] == "official" and dropout_blocks(G) == []  # 32 px: 5 levels, none
    # a resumed run must keep its placement
    with pytest.raises(CheckpointError, match="DROPOUT_PLACEMENT: checkpoint 'official' vs now 'paper'"):
        train.main(tiny_args(tiny_data, tmp_path / "run", N_EPOCHS_DECAY=1))


# ----------------------------------------------------------------------------- legacy checkpoints

def make_legacy(src: Path, dest: Path) -> Path:
    """A copy of a checkpoint as written before the dropout placement and the skip fix: no dropout_placement or
    skip_relu, no DROPOUT_PLACEMENT."""
    ckpt = load_checkpoint(src)
    for key in ("dropout_placement", "skip_relu"):
        del ckpt["generator_hparams"][key]
    ckpt["config"].pop("DROPOUT_PLACEMENT")
    torch.save(ckpt, dest)
    return dest


def test_legacy_checkpoint_keeps_its_outputs(tiny_run, tmp_path):
    legacy = make_legacy(tiny_run / "run" / "generator.pt", tmp_path / "legacy.pt")
    G = load_generator(legacy, mode="eval")
    assert G.hparams["skip_relu"] is False and G.hparams["dropout_placement"] == "paper"
    assert dropout_blocks(G) == [0, 1, 2]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(G(x), legacy_forward(G, x))  # the function it was trained as
        new = load_generator(tiny_run / "run" / "generator.pt", mode="eval")
        assert "skip_relu" not in new.hparams and not torch.allclose(new(x), G(x), atol=1e-4)


def test_resuming_a_legacy_checkpoint_continues_its_function(tiny_run, tmp_path, capsys):
    legacy = make_legacy(tiny_run / "run" / "checkpoints" / "last.pt", tmp_path / "legacy_last.pt")
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_run / "data", run_dir, N_EPOCHS_DECAY=2, RESUME=legacy, VAL_EVERY=0, SAMPLE_EVERY=0)
    assert train.main(args) == 0  # one more epoch
    assert "predates the U-Net skip fix" in capsys.readouterr().out
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 3
    for name in ("generator.pt", "checkpoints/last.pt"):  # recorded, so it still loads as it trained
        assert load_checkpoint(run_dir / name)["generator_hparams"]["skip_relu"] is False, name
    G = load_generator(run_dir / "generator.pt", mode="eval")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(G(x), legacy_forward(G, x))
    # it was trained with the paper placement: asking for the official one is refused, not silently changed
    with pytest.raises(CheckpointError, match="DROPOUT_PLACEMENT: checkpoint 'paper' vs now 'official'"):
        train.main(tiny_args(tiny_run / "data", tmp_path / "run2", N_EPOCHS_DECAY=2, RESUME=legacy,
                             DROPOUT_PLACEMENT="official"))


# ----------------------------------------------------------------------------- fixes 5 and 6

def test_night2day_preset_is_day_to_night():
    assert load_config(["--PRESET=night2day"])["DIRECTION"] == "BtoA"


@pytest.mark.parametrize("norm, bias", [("batch", False), ("instance", True)])
def test_pixelgan_last_conv_bias_as_official(norm, bias):
    convs = [m for m in PatchDiscriminator(base_channels=4, n_layers=0, norm=norm).modules()
             if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1)] * 3
    assert convs[0].bias is not None and (convs[1].bias is not None) == bias and (convs[2].bias is not None) == bias


def test_resuming_a_pixelgan_with_the_old_bias_is_refused(tiny_data, tmp_path):
    assert train.main(tiny_args(tiny_data, tmp_path / "run", DISC_N_LAYERS=0, N_EPOCHS_DECAY=0, VAL_EVERY=0,
                                SAMPLE_EVERY=0)) == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["discriminator"]["model.5.bias"] = torch.zeros(1)
    torch.save(ckpt, last)
    with pytest.raises(CheckpointError, match="PixelGAN.*bias.*new RUN_DIR"):
        train.main(tiny_args(tiny_data, tmp_path / "run", DISC_N_LAYERS=0, N_EPOCHS_DECAY=1))


# ----------------------------------------------------------------------------- fix 4: batch 1 in paper mode

@pytest.fixture(scope="module")
def batch4_checkpoint(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_run's generator as if trained at BATCH_SIZE 4, without dropout: in paper mode only the batch-norm
    statistics could then tie an output to its batch-mates."""
    ckpt = load_checkpoint(tiny_run / "run" / "generator.pt")
    ckpt["config"]["BATCH_SIZE"] = 4
    ckpt["generator_hparams"]["dropout"] = False
    path = tmp_path_factory.mktemp("batch4") / "generator.pt"
    torch.save(ckpt, path)
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_predict_paper_mode_output_does_not_depend_on_batch_mates(batch4_checkpoint, tiny_run, tmp_path):
    val = sorted((tiny_run / "data" / "val").glob("*.png"))
    run = lambda inputs, out, *extra: predict.main(  # noqa: E731 - on the CPU: outputs compared bit for bit
        ["--checkpoint", str(batch4_checkpoint), "--input", *map(str, inputs), "--output", str(out), "--device",
         "cpu", *extra])
    assert run(val, tmp_path / "all") == 0
    assert run(val[:1], tmp_path / "alone") == 0
    assert np.array_equal(pixels(tmp_path / "all" / val[0].name), pixels(tmp_path / "alone" / val[0].name))
    # the checkpoint's batch of 4 (the old default) does tie it to its batch-mates
    assert run(val, tmp_path / "batch4", "--batch-size", "4") == 0
    assert not np.array_equal(pixels(tmp_path / "batch4" / val[0].name), pixels(tmp_path / "alone" / val[0].name))
    # in eval mode (running statistics) the batch size changes nothing
    assert run(val, tmp_path / "eval4", "--mode", "eval") == 0
    assert run(val[:1], tmp_path / "eval1", "--mode", "eval") == 0
    assert np.abs(pixels(tmp_path / "eval4" / val[0].name) - pixels(tmp_path / "eval1" / val[0].name)).max() <= 1


def test_evaluate_paper_mode_defaults_to_batch_1(batch4_checkpoint, tiny_run, tmp_path):
    data = tiny_run / "data" / "val"
    cpu = ["--device", "cpu"]  # scores compared digit for digit
    assert evaluate.main(["--checkpoint", str(batch4_checkpoint), "--data", str(data), "--output",
                          str(tmp_path / "all"), *cpu]) == 0
    assert evaluate.main(["--checkpoint", str(batch4_checkpoint), "--data", str(data), "--output",
                          str(tmp_path / "one"), "--max-images", "1", *cpu]) == 0
    first = lambda out: (tmp_path / out / "metrics.csv").read_text().splitlines()[1]  # noqa: E731
    assert json.loads((tmp_path / "all" / "summary.json").read_text())["batch_size"] == 1
    assert first("all") == first("one")
    assert evaluate.main(["--checkpoint", str(batch4_checkpoint), "--data", str(data), "--output",
                          str(tmp_path / "b4"), "--batch-size", "4", *cpu]) == 0
    assert first("b4") != first("one")


# ----------------------------------------------------------------------------- official files in the CLIs

@pytest.fixture(scope="module")
def official_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-format unet with 5 levels (32 px), as the official code would save it after training."""
    G = randomised(UNetGenerator(3, 3, 4, 5, "batch", True, "official"), seed=3)
    path = tmp_path_factory.mktemp("official") / "latest_net_G.pth"
    torch.save(official_format.official_state_dict(G), path)
    return path


def test_predict_runs_an_official_file_without_direction(official_file, tmp_path):
    Image.new("RGB", (40, 24), (200, 30, 30)).save(tmp_path / "in.png")
    assert predict.main(["--checkpoint", str(official_file), "--input", str(tmp_path / "in.png"), "--output",
                         str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "in.png").size == (40, 24)


def test_evaluate_official_file_needs_direction(official_file, tmp_path, capsys):
    write_pairs(tmp_path / "data", 2, size=32)
    args = ["--checkpoint", str(official_file), "--data", str(tmp_path / "data")]
    assert evaluate.main(args + ["--output", str(tmp_path / "e0")]) == 2
    assert "stores no direction" in capsys.readouterr().err
    for direction in ("AtoB", "BtoA"):
        assert evaluate.main(args + ["--output", str(tmp_path / direction), "--direction", direction]) == 0
    # the two directions feed different halves: different scores
    assert (tmp_path / "AtoB" / "metrics.csv").read_text() != (tmp_path / "BtoA" / "metrics.csv").read_text()


def test_evaluate_direction_must_agree_with_the_checkpoint(tiny_run, tmp_path, capsys):
    ckpt = tiny_run / "run" / "generator.pt"
    data = tiny_run / "data" / "val"
    assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(data), "--output", str(tmp_path / "a"),
                          "--direction", "AtoB", "--max-images", "1"]) == 2
    assert "contradicts" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(data), "--output", str(tmp_path / "b"),
                          "--direction", "BtoA", "--max-images", "1"]) == 0  # repeating its own is fine
