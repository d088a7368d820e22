"""Your own data as it comes: the A/ + B/ folder layout (pairing by name stem, unmatched and duplicate names,
mixed formats and sizes), each PREPROCESS mode's shapes and input/target alignment, variable-size batching,
the reference-equivalent bicubic resize, and the `python -m harness.data_checks FOLDER` report (CPU, ~20 s).

    python -m pytest tests/test_data_layouts.py -q
"""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import predict
import train
from conftest import ROOT, tiny_args
from conftest import make_dataset
from dataset import PREPROCESS_MODES, resize
from harness.configurator import load_config
from harness.data_checks import find_pairs, training_data
from harness.errors import DatasetError
from harness.run_log import sample_batch


def detect_layout(folder: Path) -> str:
    return "A/B" if find_pairs(folder)[0][0][1] is not None else "A|B"


def save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth ramps plus an off-centre block and mild noise: no shift or flip of it looks like the original."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.float64)
    img[:, :, 0] = np.linspace(0, 255, w)[None, :]
    img[:, :, 1] = np.linspace(0, 255, h)[:, None]
    img[h // 8: h // 3, w // 6: w // 2, 2] = 255
    return (img + rng.integers(0, 30, img.shape)).clip(0, 255).astype(np.uint8)


def fine_detail(size: int) -> np.ndarray:
    """A synthetic image full of detail finer than a 600 -> 256 shrink keeps: stripes, checks and noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(0)
    return np.stack([np.sin(xx * 0.9) * 127 + 128, ((xx // 2 + yy // 3) % 2) * 255,
                     rng.integers(0, 256, (size, size))], -1).astype(np.uint8)


def pil_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


# ----------------------------------------------------------------------------- resizing like the reference

@pytest.mark.parametrize("src, dst", [(600, 256), (600, 286), (256, 286)])
def test_resize_matches_pil_bicubic(src, dst):
    """The reference code resizes with PIL bicubic (antialiased when shrinking); ours must stay within 1 grey level
    on average. cv2.INTER_CUBIC, used before, is far off on this image, so the image does test antialiasing."""
    image = fine_detail(src)
    ours = resize([image], dst, dst)[0].astype(int)
    reference = pil_bicubic(image, dst, dst).astype(int)
    assert ours.shape == (dst, dst, 3) and ours.dtype == int
    assert np.abs(ours - reference).mean() < 1
    if src > dst:
        assert np.abs(cv2.resize(image, (dst, dst), interpolation=cv2.INTER_CUBIC).astype(int) - reference).mean() > 3
    gray = resize([image[:, :, :1]], dst, dst)[0][:, :, 0].astype(int)  # one channel, as for grayscale data
    assert np.abs(gray - pil_bicubic(image[:, :, 0], dst, dst).astype(int)).mean() < 1


def test_dataset_resizes_like_pil(tmp_path):
    """End to end: a 600 px A|B pair at IMAGE_SIZE 256 (validation) equals PIL's bicubic resize of each half."""
    a, b = fine_detail(600), pattern(600, 600)
    save(tmp_path / "d" / "0.png", np.concatenate([a, b], 1))
    x, y = make_dataset(tmp_path / "d", direction="AtoB", image_size=256, train=False)[0]
    for got, half in ((x, a), (y, b)):
        expected = torch.from_numpy(pil_bicubic(half, 256, 256).astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
        assert (got - expected).abs().mean() * 127.5 < 1


# ----------------------------------------------------------------------------- A/ and B/ folders

def test_a_b_folders_pair_by_stem_with_mixed_formats_and_sizes(tmp_path):
    root = tmp_path / "d"
    sizes = {"1": (32, 48), "2": (40, 40), "sub/3": (24, 64)}  # A sizes (h, w); B is twice as big and lossless
    for i, (stem, (h, w)) in enumerate(sizes.items()):
        a = pattern(h, w, seed=i)
        save(root / "A" / f"{stem}.png", a)
        save(root / "B" / f"{stem}{('.bmp', '.png', '.webp')[i]}", 255 - pil_bicubic(a, 2 * h, 2 * w), lossless=True)
    assert detect_layout(root) == "A/B"
    for direction in ("AtoB", "BtoA"):
        ds = make_dataset(root, direction=direction, image_size=32, load_size=32, train=False,
                                preprocess="none", multiple=8)
        assert len(ds) == 3 and ds.skipped == []
        assert ds.files == [root / "A" / "1.png", root / "A" / "2.png", root / "A" / "sub" / "3.png"]
        for i, (h, w) in enumerate(sizes.values()):
            x, y = ds[i]
            assert x.shape == y.shape == (3, h, w)  # B was resized to A's size
            a, b = (x, y) if direction == "AtoB" else (y, x)  # DIRECTION keeps its meaning: AtoB = A is input
            assert torch.equal(a, torch.from_numpy(pattern(h, w, seed=i)).permute(2, 0, 1) / 127.5 - 1)
            # B = inverted, 2x-upscaled A: shrunk back it is aligned with A to within the resampling blur
            assert (a + b).abs().mean() < 0.1, f"pair {i} misaligned"
            assert (a + b.roll(3, -1)).abs().mean() > 2 * (a + b).abs().mean()


def test_a_b_unmatched_names_error_or_skip(tmp_path, capsys):
    root = tmp_path / "d"
    for stem in ("1", "2", "3"):
        save(root / "A" / f"{stem}.png", pattern(16, 16))
    for stem in ("1", "2", "4"):
        save(root / "B" / f"{stem}.jpg", pattern(16, 16))
    with pytest.raises(DatasetError) as err:
        make_dataset(root, image_size=16, load_size=16)
    message = str(err.value)
    assert str(root / "A" / "3.png") in message and str(root / "B" / "4.jpg") in message
    assert "no B/3.*" in message and "BAD_FILES=skip" in message and "1.png" not in message
    ds = make_dataset(root, image_size=16, load_size=16, bad_files="skip")
    listing = capsys.readouterr().err
    assert len(ds) == 2 and [a.stem for a, _ in ds.pairs] == ["1", "2"]
    assert listing.count("skipping") == 1
    assert f"  {root / 'A' / '3.png'}: " in listing and f"  {root / 'B' / '4.jpg'}: " in listing
    assert {p.name for p, _ in ds.skipped} == {"3.png", "4.jpg"}
    # an unreadable file takes its partner out with it, both listed
    (root / "B" / "2.jpg").write_bytes(b"not a jpeg")
    ds = make_dataset(root, image_size=16, load_size=16, bad_files="skip")
    assert len(ds) == 1 and {p.name for p, _ in ds.skipped} == {"3.png", "4.jpg", "2.jpg", "2.png"}
    with pytest.raises(DatasetError, match="2.jpg"):
        make_dataset(root, image_size=16, load_size=16)


def test_a_b_layout_errors(tmp_path):
    save(tmp_path / "dup" / "A" / "1.png", pattern(8, 8))
    save(tmp_path / "dup" / "A" / "1.jpg", pattern(8, 8))
    save(tmp_path / "dup" / "B" / "1.png", pattern(8, 8))
    with pytest.raises(DatasetError, match=r"share the name '1'.*ambiguous"):
        make_dataset(tmp_path / "dup", image_size=8, load_size=8)
    save(tmp_path / "half" / "A" / "1.png", pattern(8, 8))
    with pytest.raises(DatasetError, match="has a A/ folder but no B/"):
        make_dataset(tmp_path / "half", image_size=8, load_size=8)
    save(tmp_path / "ab" / "1.png", pattern(8, 16))  # the A|B layout still works, detected
    assert detect_layout(tmp_path / "ab") == "A|B" and len(make_dataset(tmp_path / "ab", image_size=8)) == 1


# ----------------------------------------------------------------------------- PREPROCESS modes

# one 50x84 half at IMAGE_SIZE 32, LOAD_SIZE 56, sides rounded to multiples of 16 where uncropped:
# scale_width: width 56 -> 64 (3.5 rounds to 4), height max(int(56 * 50 / 84), 32) = 33 -> 32
# none: 50 -> 48, 84 -> 80
TRAIN_SHAPES = {"resize_and_crop": (32, 32), "crop": (32, 32), "scale_width_and_crop": (32, 32),
                "scale_width": (32, 64), "none": (48, 80)}
EVAL_SHAPES = TRAIN_SHAPES | {"scale_width": (32, 32)}  # evaluation: LOAD_SIZE = IMAGE_SIZE (width 32)


@pytest.fixture
def inverted_pair(tmp_path) -> Path:
    """An A|B file with 50x84 halves, B = 255 - A: aligned halves give input + target = 0 exactly."""
    a = pattern(50, 84)
    save(tmp_path / "inv" / "0.png", np.concatenate([a, 255 - a], 1))
    return tmp_path / "inv"


@pytest.mark.parametrize("preprocess", PREPROCESS_MODES)
def test_each_mode_gives_its_shape_and_keeps_halves_aligned(inverted_pair, preprocess):
    kwargs = dict(image_size=32, load_size=56, preprocess=preprocess, multiple=16, direction="AtoB")
    ds = make_dataset(inverted_pair, train=True, **kwargs)
    outputs, flips = set(), set()
    for seed in range(24):
        x, y = ds[(0, seed)]
        assert x.shape == y.shape == (3, *TRAIN_SHAPES[preprocess])
        # bicubic rounding may differ by one grey level between a value and its inverse; a shift or a flip of
        # one half alone would be off by far more
        assert (x + y).abs().max() <= 1 / 127.5 + 1e-6, f"seed {seed}: halves augmented differently"
        outputs.add(x.numpy().tobytes())
        flips.add(bool(x[0, :, :4].mean() > x[0, :, -4:].mean()))  # the red ramp runs right to left
    assert flips == {True, False}, "mirroring should occur, identically for both halves"
    random_crop = preprocess in ("resize_and_crop", "crop", "scale_width_and_crop")
    assert len(outputs) > (4 if random_crop else 1) and (random_crop or len(outputs) == 2)
    val = make_dataset(inverted_pair, train=False, **kwargs)
    x, y = val[(0, 0)]
    assert x.shape == (3, *EVAL_SHAPES[preprocess]) and (x + y).abs().max() <= 1 / 127.5 + 1e-6
    assert all(torch.equal(val[(0, s)][0], x) for s in (1, 2, 3))  # no randomness in evaluation


def test_crop_mode_takes_unscaled_crops_and_refuses_small_images(tmp_path):
    a = pattern(50, 84)
    save(tmp_path / "d" / "0.png", np.concatenate([a, a], 1))
    save(tmp_path / "d" / "small.png", np.concatenate([a[:20, :20], a[:20, :20]], 1))
    with pytest.raises(DatasetError, match=r"small.png: 20x20 is smaller than the 32x32 crop of PREPROCESS=crop"):
        make_dataset(tmp_path / "d", image_size=32, preprocess="crop")
    ds = make_dataset(tmp_path / "d", image_size=32, preprocess="crop", bad_files="skip", direction="AtoB")
    assert len(ds) == 1
    x, _ = ds[(0, 5)]
    crops = [np.ascontiguousarray(np.flip(a, 1)) if flip else a for flip in (False, True)]
    target = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    windows = [c[i:i + 32, j:j + 32] for c in crops for i in range(19) for j in range(53)]
    assert any(np.array_equal(target, w) for w in windows), "a crop mode must not rescale the image"
    centre = make_dataset(tmp_path / "d", image_size=32, preprocess="crop", bad_files="skip",
                                direction="AtoB", train=False)[0][0]
    assert torch.equal(centre, torch.from_numpy(a[9:41, 26:58]).permute(2, 0, 1) / 127.5 - 1)


def test_variable_sizes_need_batch_one(tmp_path):
    for i, (h, w) in enumerate([(32, 32), (32, 64), (32, 64)]):
        for split in ("train", "val"):
            save(tmp_path / split / f"{i}.png", np.concatenate([pattern(h, w), pattern(h, w)], 1))
    base = [f"--TRAIN_DIR={tmp_path / 'train'}", f"--VAL_DIR={tmp_path / 'val'}", "--IMAGE_SIZE=32",
            "--PREPROCESS=none"]
    with pytest.raises(DatasetError, match=r"TRAIN_DIR .*giving 2 sizes \(64x32: 2, 32x32: 1\).*batch of 2"):
        training_data(load_config(base + ["--BATCH_SIZE=2"]))
    train_set, val_set = training_data(load_config(base + ["--BATCH_SIZE=1"]))
    assert len(train_set) == 3
    x, y = sample_batch(val_set, 3)  # sample grids stack only images of the first one's size
    assert x.shape == y.shape == (1, 3, 32, 32)
    x, _ = sample_batch(make_dataset(tmp_path / "val", image_size=32, preprocess="resize_and_crop"), 3)
    assert x.shape == (3, 3, 32, 32)


def test_train_on_a_b_crops_then_predict_whole_images(tmp_path, capsys):
    """PREPROCESS=crop on A/ + B/ folders of 40x72 images trains; predict.py then picks --fit pad by itself and
    gives each whole image back at its size."""
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            a = pattern(40, 72, seed=i)
            save(tmp_path / "data" / split / "A" / f"{i}.png", a)
            save(tmp_path / "data" / split / "B" / f"{i}.jpg", 255 - a)
    run_dir = tmp_path / "run"
    assert train.main(tiny_args(tmp_path / "data", run_dir, PREPROCESS="crop", N_EPOCHS=1, N_EPOCHS_DECAY=0)) == 0
    assert (run_dir / "generator.pt").is_file()
    save(tmp_path / "in" / "wide.png", pattern(40, 72))
    args = ["--checkpoint", str(run_dir / "generator.pt"), "--input", str(tmp_path / "in"),
            "--output", str(tmp_path / "out")]
    assert predict.main(args) == 0
    assert "(--fit pad," in capsys.readouterr().out  # auto: the model was trained at native scale
    assert Image.open(tmp_path / "out" / "wide.png").size == (72, 40)


# ----------------------------------------------------------------------------- python -m harness.data_checks FOLDER

def check_folder(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.data_checks", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_dataset_cli_reports_layout_pairs_sizes_and_bad_files(tmp_path):
    root = tmp_path / "d"
    for stem, (h, w) in (("1", (32, 32)), ("2", (32, 32)), ("3", (40, 64))):
        save(root / "A" / f"{stem}.png", pattern(h, w))
        save(root / "B" / f"{stem}.jpg", pattern(2 * h, 2 * w))
    save(root / "A" / "lonely.png", pattern(32, 32))
    save(root / "A" / "4.png", pattern(32, 32))
    (root / "B" / "4.jpg").write_bytes(b"not a jpeg")
    out = check_folder(str(root), "--IMAGE_SIZE=32")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "layout:   A/ and B/ folders" in text
    assert "pairs:    3 usable, 3 file(s) skipped" in text
    assert "2 distinct" in text and "32x32: 2" in text and "64x40: 1" in text
    assert "64x64: 2, 128x80: 1 (each B is resized to its A's size)" in text
    assert f"{root / 'A' / 'lonely.png'}: no B/lonely.* to pair with" in text
    assert f"{root / 'B' / '4.jpg'}: cannot be read" in text and f"{root / 'A' / '4.png'}: its partner" in text
    assert "input (3, 32, 32), target (3, 32, 32)" in text

    save(tmp_path / "ab" / "0.png", np.concatenate([pattern(50, 84), pattern(50, 84)], 1))
    (tmp_path / "ab" / "odd.png").write_bytes(b"not a png")
    out = check_folder(str(tmp_path / "ab"), "--IMAGE_SIZE=32", "--PREPROCESS=none")
    assert out.returncode == 0, out.stderr
    assert "layout:   A|B files" in out.stdout and "pairs:    1 usable, 1 file(s) skipped" in out.stdout
    assert "84x50: 1" in out.stdout and "-> 96x64: 1" in out.stdout  # none: sides rounded to multiples of 32
    assert f"{tmp_path / 'ab' / 'odd.png'}: cannot be read" in out.stdout

    out = check_folder(str(tmp_path / "missing"))
    assert out.returncode == 1 and "does not exist" in out.stderr


# ----------------------------------------------------------------------------- the real Maps set

def test_maps_val_reads_as_the_maps_preset_trains_it(maps):
    """../shared/data/maps: 1200x600 A|B files, aerial LEFT (A), map RIGHT (B); the maps preset (AtoB) takes the
    aerial half as the input at 256 px and validates with the maps figures (RMSE, pixel accuracy)."""
    from harness.data_checks import checked_dataset
    cfg = load_config(["--PRESET=maps", f"--TRAIN_DIR={maps / 'train'}", f"--VAL_DIR={maps / 'val'}"])
    assert (cfg["DIRECTION"], cfg["IMAGE_SIZE"], cfg["LOAD_SIZE"], cfg["PIXEL_ACCURACY"]) == ("AtoB", 256, 286, True)
    val = checked_dataset(cfg["VAL_DIR"], cfg, train=False)  # every file decoded: none unusable
    assert len(val) == 100 and val.skipped == []
    whole = np.asarray(Image.open(val.files[0]).convert("RGB"))
    assert whole.shape == (600, 1200, 3)
    x, y = val[0]
    assert x.shape == y.shape == (3, 256, 256)
    aerial = torch.from_numpy(resize([whole[:, :600]], 256, 256)[0]).permute(2, 0, 1) / 127.5 - 1
    assert torch.equal(x, aerial)  # the input is the aerial (left) half, resized as training resizes it
