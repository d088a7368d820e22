"""export.py: the ONNX file matches PyTorch eval (<= 1e-4) on square and non-square sizes at several batch sizes,
batch norm is folded away, the printed facts are right, and bad checkpoints or a failed check lose nothing.

Uses the session's tiny 32-px run (conftest.tiny_run): a U-Net with 5 levels, so sides are multiples of 32.

    python -m pytest tests/test_export.py -q
"""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import export
from harness import onnx_export as onnx_utils
from generator_model import UNetGenerator
from harness.checkpoint import load_generator


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory) -> tuple[Path, Path, str]:
    """(checkpoint, its ONNX export, what export.py printed)."""
    import contextlib
    import io
    checkpoint = tiny_run / "run" / "generator.pt"
    out = tmp_path_factory.mktemp("onnx") / "generator.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert export.main(["--checkpoint", str(checkpoint), "--output", str(out)]) == 0
    return checkpoint, out, stdout.getvalue()


def pytorch_and_onnx(G: torch.nn.Module, path: Path, shape: tuple[int, ...], seed: int = 0):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        expected = G(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return expected, session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 32, 96), (2, 3, 64, 32)])
def test_onnx_matches_pytorch_eval_at_any_batch_and_size(exported, shape):
    """Sizes other than the export's sample (2x64x64), non-square, batch 1-3: the axes are really dynamic."""
    checkpoint, path, _ = exported
    G = load_generator(checkpoint, mode="eval")
    expected, got = pytorch_and_onnx(G, path, shape)
    assert got.shape == expected.shape == shape
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(expected).max() > 100 * 1e-4  # outputs far larger than the tolerance: no trivial match


def test_batch_norm_is_folded_and_facts_are_stored(exported):
    checkpoint, path, _ = exported
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "Dropout" not in ops  # eval mode, folded into the convolutions
    assert "Conv" in ops and "ConvTranspose" in ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["side_multiple"] == "32" and meta["mode"] == "eval" and meta["direction"] == "BtoA"
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # batch, height and width are symbolic


def test_prints_names_range_multiple_and_difference(exported):
    _, path, printed = exported
    assert f"wrote {path}" in printed
    assert "input:  'input'" in printed and "output: 'output'" in printed
    assert printed.count("[-1, 1]") >= 2
    assert "any multiples of 32" in printed
    line = next(l for l in printed.splitlines() if "max abs difference" in l)
    assert "1x3x32x32" in line and "2x3x32x64" in line  # the two checked sizes, one non-square at batch 2
    assert float(line.split("max abs difference ")[1].split()[0]) <= 1e-4


def test_instance_norm_generator_exports_too(tmp_path):
    G = UNetGenerator(base_channels=4, num_downs=3, norm="instance")
    ckpt = tmp_path / "g.pt"
    torch.save({"generator": G.state_dict(), "generator_hparams": dict(G.hparams)}, ckpt)
    assert export.main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "g.onnx")]) == 0
    expected, got = pytorch_and_onnx(load_generator(ckpt, mode="eval"), tmp_path / "g.onnx", (2, 3, 8, 24))
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b""])
def test_bad_checkpoint_is_one_clear_error(tmp_path, capsys, content):
    ckpt = tmp_path / "bad.pt"
    if content is not None:
        ckpt.write_bytes(content)
    out = tmp_path / "g.onnx"
    assert export.main(["--checkpoint", str(ckpt), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(ckpt) in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == ([ckpt] if content is not None else [])


def test_failed_check_keeps_the_previous_file(exported, tmp_path, capsys, monkeypatch):
    checkpoint, _, _ = exported
    out = tmp_path / "generator.onnx"
    out.write_bytes(b"the previous export")
    monkeypatch.setattr(onnx_utils, "max_difference", lambda *args, **kwargs: 0.5)
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(out)]) == 1
    assert "differs from PyTorch by up to 5.00e-01" in capsys.readouterr().err
    assert out.read_bytes() == b"the previous export"
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind


def test_unknown_format_is_an_argument_error(exported, capsys):
    with pytest.raises(SystemExit) as e:
        export.main(["--checkpoint", str(exported[0]), "--output", "x", "--format", "tflite"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --format official

def test_official_format_refuses_the_paper_dropout_placement_and_writes_nothing(exported, tmp_path, capsys):
    out = tmp_path / "latest_net_G.pth"  # the session's tiny run: dropout in the paper's place
    assert export.main(["--checkpoint", str(exported[0]), "--output", str(out), "--format", "official"]) == 1
    assert "DROPOUT_PLACEMENT=official" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_official_format_writes_a_file_the_official_loader_reads_back_unchanged(tmp_path, capsys):
    from harness.checkpoint import atomic_save, generator_export
    from discriminator_model import PatchDiscriminator
    torch.manual_seed(0)
    G = UNetGenerator(3, 3, 4, 7, "batch", True, "official")
    for m in G.modules():  # non-trivial running statistics, so that eval mode checks them too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    atomic_save(generator_export(G, PatchDiscriminator(3, 3, 4), 3, {"DIRECTION": "BtoA"}), tmp_path / "generator.pt")
    out = tmp_path / "latest_net_G.pth"
    assert export.main(["--checkpoint", str(tmp_path / "generator.pt"), "--output", str(out),
                        "--format", "official"]) == 0
    printed = capsys.readouterr().out
    assert ("--model pix2pix --direction BtoA --netG unet_128 --ngf 4 --norm batch --input_nc 3 --output_nc 3 "
            "--load_size 128 --crop_size 128") in printed  # test.py's own sizes are 256 px
    assert all(k.startswith("model.model.") for k in torch.load(out, weights_only=True))  # the official names
    loaded = load_generator(out, mode="eval")  # read as an official file (names inferred, official placement)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), G.eval()(x))


def test_an_official_resnet_file_records_the_image_size_it_runs_at(tmp_path):
    """An official latest_net_G.pth stores no settings: the ONNX metadata had no image_size, so deployment.md's
    snippet (image_size, else side_multiple) resized inputs to 4x4 for a ResNet. Now it holds the size every other
    script uses for such a file (inference.image_size_of: 256, the official crop)."""
    from generator_model import ResnetGenerator
    from harness.official_format import official_state_dict
    torch.save(official_state_dict(ResnetGenerator(3, 3, base_channels=4, n_blocks=6)), tmp_path / "latest_net_G.pth")
    assert export.main(["--checkpoint", str(tmp_path / "latest_net_G.pth"), "--output", str(tmp_path / "g.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "g.onnx")).metadata_props}
    assert meta["image_size"] == "256" and meta["side_multiple"] == "4" and "direction" not in meta
