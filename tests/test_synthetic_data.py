"""
Tests for synthetic_data.py (CPU, a few seconds): determinism, layout, label/photo content, atomic writes.

    python -m pytest tests/test_synthetic_data.py -q
"""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import synthetic_data as sd

REPO = Path(__file__).resolve().parent.parent


def read_all(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def class_map(labels: np.ndarray) -> np.ndarray:
    """Invert the palette: HxW class ids (raw make_pair labels are exact palette colours)."""
    hit = (labels[:, :, None, :] == sd.PALETTE[None, None]).all(-1)
    assert hit.any(-1).all(), "label pixel outside the palette"
    return hit.argmax(-1)


def test_same_seed_gives_identical_files(tmp_path):
    sd.generate(tmp_path / "a", n_train=3, n_val=2, size=64, seed=7)
    sd.generate(tmp_path / "b", n_train=3, n_val=2, size=64, seed=7)
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    assert list(a) == list(b) and len(a) == 5
    assert a == b
    # and the decoded pixels, which is what training actually sees
    for name in a:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / name)), np.asarray(Image.open(tmp_path / "b" / name)))


def test_different_seeds_differ(tmp_path):
    sd.generate(tmp_path / "a", n_train=2, n_val=1, size=64, seed=0)
    sd.generate(tmp_path / "b", n_train=2, n_val=1, size=64, seed=1)
    for name in ("train/1.jpg", "train/2.jpg", "val/1.jpg"):
        pa, pb = (np.asarray(Image.open(tmp_path / r / name)) for r in ("a", "b"))
        assert not np.array_equal(pa, pb), name


def test_layout_names_and_sizes(tmp_path):
    root = tmp_path / "data" / "synthetic"  # the parent folder does not exist yet either
    sd.generate(root, n_train=3, n_val=2)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    assert sorted(p.name for p in (root / "val").iterdir()) == ["1.jpg", "2.jpg"]
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]
    for p in root.rglob("*.jpg"):
        with Image.open(p) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (512, 256))
    assert [p.name for p in root.parent.iterdir()] == ["synthetic"]  # no temporary folder left beside it


def test_labels_flat_and_photo_textured():
    rng = np.random.default_rng(3)
    for _ in range(5):
        photo, labels = sd.make_pair(rng, 128)
        assert photo.shape == labels.shape == (128, 128, 3) and photo.dtype == labels.dtype == np.uint8
        colours = np.unique(labels.reshape(-1, 3), axis=0)
        assert 4 <= len(colours) <= len(sd.PALETTE)
        class_map(labels)  # every label colour is a palette entry
        assert len(np.unique(photo.reshape(-1, 3), axis=0)) > 1000
        assert photo.std() > 20


def test_photo_renders_the_same_scene():
    # the photo is drawn from the label map: its edges sit on label boundaries, windows look unlike walls,
    # and the sky is blue; that is what makes labels -> photo learnable
    rng = np.random.default_rng(11)
    for _ in range(6):
        photo, labels = sd.make_pair(rng, 128)
        cls, q = class_map(labels), photo.astype(np.float32)
        grad = np.abs(np.diff(q, axis=1)).sum(-1)
        boundary = cls[:, 1:] != cls[:, :-1]
        assert grad[boundary].mean() > 1.8 * grad[~boundary].mean()
        assert np.linalg.norm(q[cls == sd.WINDOW].mean(0) - q[cls == sd.WALL].mean(0)) > 15
        sky = q[cls == sd.SKY]
        assert (sky[:, 2] > sky[:, 0] + 20).mean() > 0.9


def test_geometry_varies():
    rng = np.random.default_rng(0)
    maps = [class_map(sd.make_pair(rng, 64)[1]) for _ in range(8)]
    assert len({m.tobytes() for m in maps}) == 8
    assert len({int((m == sd.WINDOW).sum()) for m in maps}) >= 6  # window counts/sizes differ, not just colours


def test_file_halves_are_photo_left_labels_right(tmp_path):
    sd.generate(tmp_path / "d", n_train=1, n_val=0, size=128)
    img = np.asarray(Image.open(tmp_path / "d" / "train" / "1.jpg")).astype(np.int32)
    photo_half, label_half = img[:, :128], img[:, 128:]

    def dist_to_palette(x):
        return np.abs(x.reshape(-1, 1, 3) - sd.PALETTE.astype(np.int32)[None]).sum(-1).min(-1)

    assert np.median(dist_to_palette(label_half)) < 6  # flat colours survive JPEG q95 nearly exactly
    assert np.median(dist_to_palette(photo_half)) > 60
    # and the file holds exactly what make_pair draws from the train stream
    photo, labels = sd.make_pair(np.random.default_rng([0, 0]), 128)
    assert np.abs(label_half - labels).mean() < 3 and np.abs(photo_half - photo).mean() < 4


def test_train_and_val_differ(tmp_path):
    sd.generate(tmp_path / "d", n_train=4, n_val=4, size=64)
    train = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "d" / "train").iterdir()}
    val = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "d" / "val").iterdir()}
    assert len(train) == len(val) == 4 and not train & val


def test_refuses_existing_root(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        sd.generate(root, n_train=1, n_val=1, size=64)
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    real_write, root_seen = sd.write_pair, []
    root = tmp_path / "d"

    def flaky_write(*args, **kwargs):
        root_seen.append(root.exists())  # while writing, root must not exist (a SIGKILL here leaves no root)
        if len(root_seen) == 4:  # dies after train is done and during val
            raise KeyboardInterrupt
        real_write(*args, **kwargs)

    monkeypatch.setattr(sd, "write_pair", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        sd.generate(root, n_train=3, n_val=3, size=64)
    assert root_seen == [False] * 4
    assert list(tmp_path.iterdir()) == []  # neither root nor the temporary sibling
    monkeypatch.setattr(sd, "write_pair", real_write)
    sd.generate(root, n_train=3, n_val=3, size=64)  # and a rerun then succeeds
    assert len(list(root.rglob("*.jpg"))) == 6


def test_cli(tmp_path):
    out = tmp_path / "syn"
    cmd = [sys.executable, "-m", "harness.synthetic_data", "--out", str(out), "--n-train", "2", "--n-val", "1",
           "--size", "64", "--seed", "5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    with Image.open(out / "train" / "2.jpg") as im:
        assert im.size == (128, 64)
    assert (out / "val" / "1.jpg").exists() and not (out / "val" / "2.jpg").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "already exists" in r.stderr


def test_cli_in_a_folder_it_cannot_write_is_one_line(tmp_path, monkeypatch, capsys):
    """The generator's command line where the output cannot be written (here below a file; a read-only working
    folder gives EROFS the same way) said it with an OSError traceback; now one line, exit 1, nothing left."""
    (tmp_path / "a file").write_text("not a folder")
    out = tmp_path / "a file" / "synthetic"
    monkeypatch.setattr(sys, "argv", ["synthetic_data", "--output", str(out), "--n-train", "1", "--n-val", "1"])
    with pytest.raises(SystemExit) as exit_:
        sd.main()
    assert exit_.value.code == f"error: cannot write {out}: File exists; choose a writable folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"]
