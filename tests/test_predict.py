"""predict.py: images of any size come back at their size in both fit modes, file/folder/glob inputs, --paired
strips in the checkpoint's direction, batching of mixed sizes, seeded paper mode, and clear errors.

Uses the session's tiny 32-px run (conftest.tiny_run): its U-Net has 5 levels, so sides must be multiples of 32.

    python -m pytest tests/test_predict.py -q
"""
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from conftest import ROOT, interrupted_at, write_pairs
from generator_model import ResnetGenerator
from harness import official_format
from harness.checkpoint import load_generator


@pytest.fixture(scope="module")
def checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "run" / "generator.pt"



def write_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def run(checkpoint: Path, inputs: list, output: Path, *extra: str) -> int:
    """predict.py on the CPU: its outputs are compared with the generator's computed here, on the CPU."""
    return predict.main(["--checkpoint", str(checkpoint), "--input", *map(str, inputs), "--output", str(output),
                         "--device", "cpu", *extra])


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("fit", ["resize", "pad"])
def test_any_size_and_mode_comes_back_at_its_original_size(checkpoint, tmp_path, fit):
    # 50x37: neither square nor a multiple of 32; also palette, alpha and grayscale files (converted to RGB)
    files = [("photo.jpg", 50, 37, "RGB"), ("pal.png", 41, 70, "P"), ("alpha.png", 33, 20, "RGBA"),
             ("gray.png", 7, 90, "L")]
    inputs = [write_image(tmp_path / "in" / name, w, h, mode) for name, w, h, mode in files]
    assert run(checkpoint, inputs, tmp_path / "out", "--fit", fit) == 0
    for src in inputs:
        out = Image.open(tmp_path / "out" / f"{src.stem}.png")
        assert out.size == Image.open(src).size
        assert out.mode == "RGB"


@pytest.mark.parametrize("fit, size", [("pad", (64, 32)), ("resize", (32, 32))])
def test_output_is_the_generators_output(checkpoint, tmp_path, fit, size):
    """At a size the U-Net takes as is (no padding; resize to itself), predict must equal G on the raw pixels:
    normalisation, H/W order and the way back to [0, 255] all have to be right."""
    src = write_image(tmp_path / "x.png", *size)
    assert run(checkpoint, [src], tmp_path / "out", "--fit", fit, "--mode", "eval") == 0
    G = load_generator(checkpoint, mode="eval")
    x = torch.from_numpy(np.array(Image.open(src))).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        expected = ((G(x)[0].permute(1, 2, 0) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(pixels(tmp_path / "out" / "x.png") - expected).max() <= 1


def test_pad_mode_pads_instead_of_stretching(checkpoint, tmp_path):
    """50x37 is reflect-padded (centred) to 64x64 and cropped back: the output is G's on the padded image, cropped."""
    src = write_image(tmp_path / "odd.png", 50, 37, seed=3)
    assert run(checkpoint, [src], tmp_path / "out", "--fit", "pad", "--mode", "eval") == 0
    G = load_generator(checkpoint, mode="eval")
    image = np.asarray(Image.open(src))
    padded = np.pad(image, ((13, 14), (7, 7), (0, 0)), mode="reflect")  # 37 -> 64 rows, 50 -> 64 columns
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        full = ((G(x)[0].permute(1, 2, 0) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(pixels(tmp_path / "out" / "odd.png") - full[13:13 + 37, 7:7 + 50]).max() <= 1


def test_folder_glob_and_file_inputs(checkpoint, tmp_path):
    src = tmp_path / "in"
    write_image(src / "a.jpg", 40, 30)
    write_image(src / "sub" / "b.png", 30, 40)
    (src / "notes.txt").write_text("not an image")
    other = write_image(tmp_path / "elsewhere" / "a.png", 20, 20)  # same output name as in/a.jpg
    assert run(checkpoint, [src, other], tmp_path / "out") == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["a.png", "a_1.png", "sub/b.png"]  # folder layout kept, the name clash numbered
    assert Image.open(tmp_path / "out" / "a_1.png").size == (20, 20)

    assert run(checkpoint, [f"{src}/**/*.png"], tmp_path / "glob") == 0  # a glob, recursive, only .png
    assert sorted(p.name for p in (tmp_path / "glob").rglob("*.png")) == ["b.png"]


def test_find_images_lists_each_file_once(tmp_path):
    a = write_image(tmp_path / "a.png", 8, 8)
    found = predict.find_images([str(a), str(tmp_path), str(tmp_path / "*.png")])
    assert found == [(a, Path("a.png"))]


@pytest.mark.parametrize("direction", ["BtoA", "AtoB"])
def test_paired_strips_follow_the_checkpoints_direction(checkpoint, tmp_path, direction):
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["config"]["DIRECTION"] == "BtoA"
    ckpt["config"]["DIRECTION"] = direction
    torch.save(ckpt, tmp_path / "g.pt")
    pairs = write_pairs(tmp_path / "pairs", 3, size=32, seed=5)
    assert run(tmp_path / "g.pt", [tmp_path / "pairs"], tmp_path / "out", "--paired", "--batch-size", "2",
               "--mode", "eval") == 0
    G = load_generator(tmp_path / "g.pt", mode="eval")
    for pair in pairs:
        strip, ab = pixels(tmp_path / "out" / pair.name), pixels(pair)
        assert strip.shape == (32 + 4, 3 * 32 + 4 * 2, 3)  # one row of three 32-px panels, 2-px padding
        a, b = ab[:, :32], ab[:, 32:]
        x, y = (a, b) if direction == "AtoB" else (b, a)
        assert np.abs(strip[2:34, 2:34] - x).max() <= 1  # input panel
        assert np.abs(strip[2:34, 70:102] - y).max() <= 1  # target panel
        with torch.no_grad():  # the middle panel is G's output on the input panel (eval mode: batch-mates alike)
            out = G(torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
        assert np.abs(strip[2:34, 36:68] - ((out + 1) * 127.5).permute(1, 2, 0).numpy()).max() <= 1


def test_paired_reads_a_and_b_folders_too(checkpoint, tmp_path, capsys):
    """The other data layout: A/x.png with its partner B/x.png makes one strip (the checkpoint is BtoA: B is the
    input); a file without a partner is listed as skipped, not split down the middle."""
    a = write_image(tmp_path / "data" / "A" / "x.png", 32, 32, seed=1)
    b = write_image(tmp_path / "data" / "B" / "x.png", 32, 32, seed=2)
    lone = write_image(tmp_path / "data" / "A" / "lone.png", 32, 32, seed=3)
    assert run(checkpoint, [tmp_path / "data"], tmp_path / "out", "--paired") == 0
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == ["A/x.png"]
    strip = pixels(tmp_path / "out" / "A" / "x.png")
    assert np.abs(strip[2:34, 2:34] - pixels(b)).max() <= 1  # input panel: B
    assert np.abs(strip[2:34, 70:102] - pixels(a)).max() <= 1  # target panel: A
    out, err = capsys.readouterr()
    assert f"{lone}: no B/lone.* to pair with" in err
    assert "wrote 1 of 2 input | output | target strip(s)" in out  # the lone file counts among the inputs


def test_mixed_sizes_batch_by_size(checkpoint, tmp_path):
    """--batch-size 4 in pad mode: 64x64, 32x32 and 64x32 fitted sizes cannot share a batch; all are written."""
    sizes = [(50, 37), (32, 32), (64, 33), (20, 10), (60, 60), (64, 32)]
    inputs = [write_image(tmp_path / "in" / f"{i}.png", w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    assert run(checkpoint, inputs, tmp_path / "out", "--fit", "pad", "--batch-size", "4") == 0
    assert [Image.open(tmp_path / "out" / f"{i}.png").size for i in range(len(sizes))] == sizes


def test_paper_mode_is_seeded(checkpoint, tmp_path):
    src = write_image(tmp_path / "x.png", 32, 32)
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert run(checkpoint, [src], tmp_path / name, "--seed", seed) == 0
    a, b, c = (pixels(tmp_path / name / "x.png") for name in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # dropout is on in paper mode, so the seed matters


def test_unreadable_image_is_skipped_and_reported(checkpoint, tmp_path, capsys):
    write_image(tmp_path / "in" / "good.png", 40, 30)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    write_image(tmp_path / "in" / "z_last.png", 30, 40)  # after the bad file: the run kept going
    assert run(checkpoint, [tmp_path / "in"], tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png", "z_last.png"]
    err = capsys.readouterr().err
    assert "skipped 1 image" in err and "broken.png" in err and "cannot be read as an image" in err
    assert "Traceback" not in err


def test_nothing_written_is_an_error(checkpoint, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"garbage")
    assert run(checkpoint, [tmp_path / "broken.png"], tmp_path / "out") == 1
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.parametrize("inputs", [["empty"], ["empty/*.png", "missing.jpg"]])
def test_empty_input_is_an_error(checkpoint, tmp_path, capsys, inputs):
    (tmp_path / "empty").mkdir()
    assert run(checkpoint, [tmp_path / i for i in inputs], tmp_path / "out") == 1
    assert "no images found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def corrupt(kind: str, checkpoint: Path, path: Path) -> Path:
    if kind == "garbage":
        path.write_bytes(b"definitely not a checkpoint")
    elif kind == "truncated":
        path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    elif kind == "wrong weights":  # loads fine, but the hyperparameters describe a different network
        ckpt = torch.load(checkpoint, weights_only=True)
        ckpt["generator_hparams"]["base_channels"] *= 2
        torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("kind, message", [("missing", "does not exist"), ("garbage", "not a loadable"),
                                           ("truncated", "not a loadable"), ("wrong weights", "do not match")])
def test_bad_checkpoint_is_a_clear_error(checkpoint, tmp_path, capsys, kind, message):
    image = write_image(tmp_path / "x.png", 32, 32)
    bad = corrupt(kind, checkpoint, tmp_path / "bad.pt")
    assert run(bad, [image], tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and str(bad) in err
    assert "Traceback" not in err


def test_command_line_exit_code(tmp_path, monkeypatch, capsys):
    """`python predict.py ...` exits with main's code (run in-process: a subprocess would re-import torch)."""
    monkeypatch.setattr(sys, "argv", ["predict.py", "--checkpoint", str(tmp_path / "none.pt"), "--input",
                                      str(tmp_path), "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "predict.py"), run_name="__main__")
    assert exit_info.value.code == 1
    assert "does not exist" in capsys.readouterr().err


def test_one_image_the_network_cannot_run_on_costs_only_that_image(checkpoint, tmp_path, monkeypatch, capsys):
    """Under a memory cap, --fit pad on a huge image runs out of memory in the network: that image is listed as
    skipped with the reason, and the others (before and after it) are written; exit 0."""
    real_generate = predict.generate

    def generate(G, x, device, precision):
        if x.shape[-1] > 64:  # the huge one: the allocation fails, as torch reports it
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 23592960000 bytes.")
        return real_generate(G, x, device, precision)
    monkeypatch.setattr(predict, "generate", generate)
    write_image(tmp_path / "in" / "a_small.png", 40, 30)
    write_image(tmp_path / "in" / "b_huge.png", 200, 100)
    write_image(tmp_path / "in" / "c_small.png", 30, 40)
    assert run(checkpoint, [tmp_path / "in"], tmp_path / "out", "--fit", "pad") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_small.png", "c_small.png"]
    err = capsys.readouterr().err
    assert "skipped 1 image(s):" in err and "b_huge.png: the network could not run on it at 224x128 " \
        "(DefaultCPUAllocator: not enough memory" in err and "try --fit resize or a smaller image" in err
    assert "Traceback" not in err


def test_an_output_that_is_a_file_is_an_argument_error(checkpoint, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    image = write_image(tmp_path / "x.png", 32, 32)
    assert run(checkpoint, [image], tmp_path / "out") == 2
    assert capsys.readouterr().err == (f"error: --output {tmp_path / 'out'} is a file, not a folder; choose a folder "
                                       f"(it is created if missing)\n")
    assert (tmp_path / "out").read_text() == "a file"


def test_an_output_that_would_overwrite_an_input_is_refused(checkpoint, tmp_path, capsys):
    image = write_image(tmp_path / "x.png", 32, 32)
    before = image.read_bytes()
    assert run(checkpoint, [tmp_path], tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {tmp_path}: {image} would overwrite the input image {image};") and \
        err.count("\n") == 1, err
    assert image.read_bytes() == before and sorted(tmp_path.iterdir()) == [image]


def test_ctrl_c_while_predicting_ends_with_one_line_and_exit_130(checkpoint, tmp_path):
    """A real `python predict.py`, held by the test while it reads its first image, gets SIGINT: exit 130 and
    one line, no KeyboardInterrupt traceback."""
    write_image(tmp_path / "in" / "a.png", 32, 32)
    ended = interrupted_at("harness.inference.fit_to_model", "predict.py",
                           ["--checkpoint", checkpoint, "--input", tmp_path / "in", "--output", tmp_path / "out"],
                           tmp_path)
    assert ended.returncode == 130, ended.stderr[-2000:]
    assert ended.stderr.strip().splitlines()[-1] == "interrupted by Ctrl-C" and "Traceback" not in ended.stderr


@pytest.mark.parametrize("mode", ["paper", "eval"])
def test_pad_fits_a_tiny_image_to_a_resnet(tmp_path, capsys, mode):
    """A ResNet's residual blocks reflect-pad its quarter-size map by 1 px: a 5x3 or 1x1 image padded only to the
    next multiple of 4 (4x4, a 1x1 map) crashed it with a traceback; it is padded to 8 px and comes back at its size."""
    G = ResnetGenerator(3, 3, base_channels=4, n_blocks=6)
    torch.save(official_format.official_state_dict(G), tmp_path / "latest_net_G.pth")
    inputs = [write_image(tmp_path / "in" / "tiny.png", 5, 3), write_image(tmp_path / "in" / "dot.png", 1, 1)]
    assert run(tmp_path / "latest_net_G.pth", inputs, tmp_path / "out", "--fit", "pad", "--mode", mode) == 0
    err = capsys.readouterr().err
    assert "skipped" not in err and "Traceback" not in err
    for src in inputs:
        assert Image.open(tmp_path / "out" / src.name).size == Image.open(src).size
