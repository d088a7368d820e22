"""Robustness to bad data: every kind of broken, odd or convertible image file, through the dataset API
(used by train.py, evaluate.py and predict.py) and through train.main. Bad checkpoint files:
tests/test_bad_checkpoints.py; bad settings: tests/test_config.py.

    python -m pytest tests/test_bad_data.py -q
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
import utils
from conftest import make_pair_image, tiny_args, write_pairs
from conftest import make_dataset
from harness import data_checks
from harness.configurator import default_settings
from harness.data_checks import check_image, check_layout, list_images, raise_if, usable_pairs
from harness.errors import DatasetError
from utils import read_image




def pair(seed: int = 0, size: int = 32) -> np.ndarray:
    """A 32x64 RGB A|B array."""
    return make_pair_image(np.random.default_rng(seed), size)


def jpeg_bytes(array: np.ndarray, **kwargs) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg(path: Path, stored: np.ndarray) -> None:
    """JPEG whose pixels are `stored`, with EXIF orientation 6: viewers rotate it 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path.write_bytes(jpeg_bytes(stored, exif=exif.tobytes()))


# Files that can be used after conversion: name -> writer
def write_convertible(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = pair(1)
    files = {}
    files["gray.png"] = lambda p: Image.fromarray(rgb[:, :, 0]).save(p)
    files["palette.png"] = lambda p: Image.fromarray(rgb).quantize(16).save(p)
    files["rgba.png"] = lambda p: Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(p)
    files["gray16.png"] = lambda p: Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(p)
    files["cmyk.jpg"] = lambda p: Image.fromarray(rgb).convert("CMYK").save(p, quality=95)
    # stored 32 wide x 64 high; shown (and used) 64 wide x 32 high after the EXIF rotation
    files["exif_rotated.jpg"] = lambda p: exif_rotated_jpeg(p, np.ascontiguousarray(np.rot90(rgb, 1)))
    files["ünïcödé näme 日本.png"] = lambda p: Image.fromarray(rgb).save(p)
    files["with spaces.JPG"] = lambda p: p.write_bytes(jpeg_bytes(rgb))
    files["nested/deeper/still/inside.png"] = lambda p: Image.fromarray(rgb).save(p)
    paths = []
    for name, write in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        paths.append(path)
    return paths


# Files that must be reported: name -> (writer, words the reason must contain)
def write_unusable(folder: Path) -> dict[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    good_jpeg = jpeg_bytes(pair(2))
    rng = np.random.default_rng(3)
    files = {
        "truncated.jpg": (lambda p: p.write_bytes(good_jpeg[: len(good_jpeg) // 2]), "truncated"),
        "corrupt.jpg": (lambda p: p.write_bytes(good_jpeg[:2] + rng.bytes(3000)), "cannot be read"),
        "zero_bytes.jpg": (lambda p: p.write_bytes(b""), "cannot be read"),
        "text_file.jpg": (lambda p: p.write_text("this is not an image\n"), "cannot be read"),
        "odd_width.png": (lambda p: Image.fromarray(np.zeros((32, 65, 3), np.uint8)).save(p), "odd"),
        "one_pixel_wide.png": (lambda p: Image.fromarray(np.zeros((32, 1, 3), np.uint8)).save(p), "too small"),
        # even when stored, odd once the EXIF rotation is applied (stored 64x33 -> shown 33x64)
        "exif_odd.jpg": (lambda p: exif_rotated_jpeg(p, np.zeros((33, 64, 3), np.uint8)), "odd"),
        "huge.png": (lambda p: Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(p), "decompression-bomb"),
    }
    out = {}
    for name, (write, why) in files.items():
        write(folder / name)
        out[folder / name] = why
    return out


def write_ignored(folder: Path) -> None:
    """Files and folders a listing must skip, plus a folder symlink pointing at its parent (a loop)."""
    Image.fromarray(pair()).save(folder / ".hidden.png")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (folder / "._appledouble.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # macOS resource fork
    (folder / "notes.txt").write_text("not an image")
    (folder / ".git").mkdir()
    Image.fromarray(pair()).save(folder / ".git" / "inside_hidden_folder.png")
    (folder / "nested" / "loop").symlink_to("..", target_is_directory=True)


@pytest.fixture
def messy(tmp_path: Path, monkeypatch) -> dict:
    """tmp_path/messy: 4 plain pairs + every convertible kind + every unusable kind + ignored files."""
    monkeypatch.setattr(utils, "MAX_IMAGE_PIXELS", 5000)  # 32x64 = 2048 is fine, huge.png (8192) is not
    folder = tmp_path / "messy"
    plain = write_pairs(folder, 4)
    convertible = write_convertible(folder)
    unusable = write_unusable(folder)
    write_ignored(folder)
    return dict(folder=folder, good=plain + convertible, bad=unusable)


# ----------------------------------------------------------------------------- listing

def test_listing_finds_nested_unicode_files_skips_hidden_and_survives_symlink_loop(messy):
    files = list_images(messy["folder"])  # would not return (or repeat files) if it followed the loop
    assert sorted(files) == sorted(messy["good"] + list(messy["bad"]))
    assert len(set(files)) == len(files)
    assert not any(part.startswith(".") for f in files for part in f.relative_to(messy["folder"]).parts)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        check_layout(tmp_path / "nope")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="data folder .*a.png is a file, not a folder; set TRAIN_DIR/VAL_DIR"):
        check_layout(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DatasetError, match="has no images"):
        check_layout(tmp_path / "empty")


# ----------------------------------------------------------------------------- single files

def test_every_unusable_file_is_detected_with_its_reason(messy):
    for path, why in messy["bad"].items():
        reason = check_image(path)
        assert reason is not None and why in reason, (path.name, reason)


def test_every_convertible_file_passes_the_check(messy):
    assert [p.name for p in messy["good"] if check_image(p) is not None] == []


@pytest.mark.parametrize("channels,mode", [(3, "RGB"), (1, "L")])
def test_convertible_files_decode_to_the_configured_channels(messy, channels, mode):
    for path in messy["good"]:
        image = read_image(path, channels)
        assert image.dtype == np.uint8 and image.shape == (32, 64, channels), path.name


def test_exif_rotation_is_applied(tmp_path):
    stored = np.zeros((64, 32, 3), np.uint8)  # 32 wide x 64 high as stored
    stored[:32] = (255, 0, 0)                  # top half red
    exif_rotated_jpeg(tmp_path / "rot.jpg", stored)
    with Image.open(tmp_path / "rot.jpg") as raw:
        assert raw.size == (32, 64)  # the file itself is portrait
    array = np.asarray(read_image(tmp_path / "rot.jpg"))
    # rotated 90 degrees clockwise: landscape, and the red top half is now the right half
    assert array.shape == (32, 64, 3)
    assert array[:, 40:, 0].mean() > 200 and array[:, :24, 0].mean() < 50
    assert check_image(tmp_path / "rot.jpg") is None


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 100 * 257, 200 * 257, 65535]], np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    array = read_image(tmp_path / "g16.png", channels=1)[:, :, 0].astype(int)
    assert array[0].tolist() == [0, 100, 200, 255]


@pytest.mark.parametrize("channels", [3, 1])
def test_transparent_pixels_become_white_in_rgb_and_grayscale(tmp_path, channels):
    rgba = np.zeros((4, 8, 4), np.uint8)  # fully transparent black
    rgba[:, 4:] = (0, 0, 0, 255)            # right half opaque black
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    palette = Image.fromarray((rgba[:, :, 3] > 0).astype(np.uint8), "P")  # index 0 left, 1 right
    palette.putpalette([0, 0, 0, 0, 0, 0])
    palette.save(tmp_path / "alpha_palette.png", transparency=0)  # index 0 (black) is transparent
    for name in ("alpha.png", "alpha_palette.png"):
        array = np.asarray(read_image(tmp_path / name, channels)).astype(int)
        assert array[:, :4].min() == 255 and array[:, 4:].max() == 0, (name, channels)


def test_palette_png_keeps_its_colours(tmp_path):
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[:, :4] = (200, 30, 60)
    rgb[:, 4:] = (10, 220, 90)
    Image.fromarray(rgb).quantize(4).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(np.asarray(read_image(tmp_path / "p.png")), rgb)


def test_decompression_bomb_limits(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(tmp_path / "big.png")
    assert check_image(tmp_path / "big.png") is None
    monkeypatch.setattr(utils, "MAX_IMAGE_PIXELS", 8191)  # ours: refused before decoding
    with pytest.raises(ValueError, match="decompression-bomb"):
        read_image(tmp_path / "big.png")
    assert "decompression-bomb" in check_image(tmp_path / "big.png")
    monkeypatch.setattr(utils, "MAX_IMAGE_PIXELS", 10 ** 9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own (raises beyond 2x): refused as well
    with pytest.raises(ValueError, match="over PIL's decompression-bomb limit"):  # as a damaged file is
        read_image(tmp_path / "big.png")
    assert "DecompressionBomb" in check_image(tmp_path / "big.png")


# ----------------------------------------------------------------------------- scanning a folder

def listed(text: str, path: Path) -> int:
    """How many lines of a bad-file listing are about `path`."""
    return sum(line.startswith(f"  {path}: ") for line in text.splitlines())


def test_scan_error_mode_lists_every_bad_file(messy):
    with pytest.raises(DatasetError) as e:
        make_dataset(messy["folder"], image_size=32, load_size=36)
    message = str(e.value)
    assert f"{len(messy['bad'])} of {len(messy['good']) + len(messy['bad'])} files" in message
    for path, why in messy["bad"].items():
        line = next(l for l in message.splitlines() if str(path) in l)
        assert why in line, line
    assert not any(str(p) in message for p in messy["good"])
    assert "BAD_FILES=skip" in message


def test_scan_skip_mode_lists_bad_files_once_and_uses_the_rest(messy, capsys):
    ds = make_dataset(messy["folder"], image_size=32, load_size=36, bad_files="skip")
    err = capsys.readouterr().err
    assert sorted(ds.files) == sorted(messy["good"])
    assert err.count("skipping") == 1
    for path in messy["bad"]:
        assert listed(err, path) == 1
    for i in range(len(ds)):  # every kept file, conversions included, gives a finite 3x32x32 pair
        x, y = ds[i]
        assert x.shape == y.shape == (3, 32, 32) and torch.isfinite(x).all() and torch.isfinite(y).all()
    gray = make_dataset(messy["folder"], image_size=32, load_size=36, bad_files="skip", in_channels=1,
                              out_channels=1)
    x, y = gray[0]
    assert x.shape == y.shape == (1, 32, 32)
    assert capsys.readouterr().err.count("skipping") == 1  # listed once per dataset, never per item


def test_scan_all_bad_is_an_error_in_both_modes(tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "MAX_IMAGE_PIXELS", 5000)
    write_unusable(tmp_path / "bad")
    for mode in ("error", "skip"):
        with pytest.raises(DatasetError, match="cannot be used|every file"):
            make_dataset(tmp_path / "bad", bad_files=mode)
    with pytest.raises(DatasetError, match="every file .* unusable"):
        raise_if([usable_pairs(tmp_path / "bad", default_settings(), "skip")[2]])


def test_scan_shows_a_progress_bar_on_big_folders(tmp_path, monkeypatch, capsys):
    write_pairs(tmp_path / "small", 3)
    write_pairs(tmp_path / "big", 3)
    usable_pairs(tmp_path / "small", default_settings())
    assert "scanning" not in capsys.readouterr().err
    monkeypatch.setattr(data_checks, "SCAN_PROGRESS_MIN_FILES", 3)
    usable_pairs(tmp_path / "big", default_settings())
    assert f"scanning {tmp_path / 'big'}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- through train.main

def test_training_stops_before_step_one_listing_every_bad_file(messy, tmp_path, monkeypatch):
    """Bad files in TRAIN_DIR and VAL_DIR: one error lists them all, before any step or any file written."""
    write_pairs(tmp_path / "val", 2, seed=1)
    (tmp_path / "val" / "broken val.png").write_bytes(b"")
    steps = []
    monkeypatch.setattr(train, "train_step", lambda *a, **k: steps.append(1))
    run_dir = tmp_path / "run"
    with pytest.raises(DatasetError) as e:
        train.main(tiny_args(tmp_path, run_dir, TRAIN_DIR=messy["folder"]))
    for path, why in [*messy["bad"].items(), (tmp_path / "val" / "broken val.png", "cannot be read")]:
        assert listed(str(e.value), path) == 1
        assert why in next(l for l in str(e.value).splitlines() if l.startswith(f"  {path}: "))
    assert not any(str(p) in str(e.value) for p in messy["good"])
    assert steps == [] and not run_dir.exists()  # no step, no checkpoint, not even a run folder


def test_training_skips_bad_files_and_trains_on_converted_ones(messy, tmp_path, capfd):
    write_pairs(tmp_path / "val", 2, seed=1)
    run_dir = tmp_path / "run"
    assert train.main(tiny_args(tmp_path, run_dir, TRAIN_DIR=messy["folder"], BAD_FILES="skip", N_EPOCHS=1,
                                N_EPOCHS_DECAY=0, VAL_EVERY=0, SAMPLE_EVERY=0)) == 0
    out, err = capfd.readouterr()
    n_good = len(messy["good"])
    assert f"{n_good} train / 2 val images" in out
    assert err.count(f"skipping {len(messy['bad'])} unusable file(s)") == 1
    for path in messy["bad"]:
        assert listed(err, path) == 1
    log = (run_dir / "log.csv").read_text().splitlines()
    assert log[1].split(",")[1] == str(n_good)  # one step per usable image, converted ones included
    assert (run_dir / "generator.pt").is_file()


def test_under_torchrun_only_rank_0_lists_the_skipped_files(messy, tmp_path, capfd):
    """Every rank checks the data (each needs its own dataset), but the skipped files are listed once, by rank 0."""
    from harness.data_checks import training_data
    from harness.configurator import load_config
    write_pairs(tmp_path / "val", 2, seed=1)
    cfg = load_config(tiny_args(tmp_path, tmp_path / "run", TRAIN_DIR=messy["folder"], BAD_FILES="skip"))
    for rank in (1, 0):
        train_set, _ = training_data(cfg, rank)
        assert len(train_set) == len(messy["good"])
        err = capfd.readouterr().err
        assert err.count(f"skipping {len(messy['bad'])} unusable file(s)") == (rank == 0), (rank, err)


def test_training_with_no_usable_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "MAX_IMAGE_PIXELS", 5000)
    write_unusable(tmp_path / "train")
    write_pairs(tmp_path / "val", 2)
    with pytest.raises(DatasetError, match="every file .* unusable"):
        train.main(tiny_args(tmp_path, tmp_path / "run", BAD_FILES="skip"))
    assert not (tmp_path / "run").exists()
