"""Tests for dataset.py: A|B splitting and DIRECTION, file listing, joint augmentation alignment, reproducible
augmentation and sampling, value range, channel counts, error messages, and the built-in synthetic default
(CPU, ~10 s).

    python -m pytest tests/test_dataset.py -q
"""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from harness import synthetic_data
from conftest import make_dataset
from dataset import AugmentationSampler
from harness.data_checks import ensure_default_data, list_images
from harness.errors import DatasetError
from harness.configurator import load_config


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def solid(h: int, w: int, rgb) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


def asymmetric_pattern(size: int) -> np.ndarray:
    """Red = horizontal ramp, green = vertical ramp, blue = an off-centre marker: no flip or shift of it
    looks like the original."""
    ramp = np.linspace(0, 255, size).astype(np.uint8)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[:, :, 0] = ramp[None, :]
    img[:, :, 1] = ramp[:, None]
    img[size // 8: size // 4, size // 8: size // 3, 2] = 255
    return img


# ----------------------------------------------------------------------------- splitting and listing

@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_split_at_half_width_and_direction(tmp_path, direction):
    # A = red, B = blue; at the native size the eval transform is a plain copy, so a split off by even one
    # column would bleed the other colour into the edge
    save(tmp_path / "d" / "0.png", np.concatenate([solid(16, 16, (255, 0, 0)), solid(16, 16, (0, 0, 255))], 1))
    ds = make_dataset(tmp_path / "d", direction=direction, image_size=16, load_size=16, train=False)
    x, y = ds[0]
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])
    expect_x, expect_y = (red, blue) if direction == "AtoB" else (blue, red)
    assert x.shape == y.shape == (3, 16, 16)
    assert torch.equal(x, expect_x[:, None, None].expand(3, 16, 16))
    assert torch.equal(y, expect_y[:, None, None].expand(3, 16, 16))


def test_listing_is_sorted_images_only(tmp_path):
    root = tmp_path / "d"
    pair = np.zeros((8, 16, 3), dtype=np.uint8)
    for name in ("b.png", "a.jpg", "e.PNG", "sub/c.png", ".hidden.png", ".cache/d.png", "z.webp"):
        save(root / name, pair)
    (root / "notes.txt").write_text("not an image")
    (root / "f.png.json").write_text("{}")
    expected = [root / n for n in ("a.jpg", "b.png", "e.PNG", "sub/c.png", "z.webp")]
    assert list_images(root) == expected
    assert make_dataset(root, image_size=8, load_size=8).files == expected


# ----------------------------------------------------------------------------- augmentation

@pytest.fixture
def twin_pair(tmp_path) -> Path:
    """An A|B file whose two halves are the same asymmetric 32x32 pattern."""
    pattern = asymmetric_pattern(32)
    save(tmp_path / "twin" / "0.png", np.concatenate([pattern, pattern], axis=1))
    return tmp_path / "twin"


def test_joint_augmentation_keeps_input_and_target_aligned(twin_pair):
    ds = make_dataset(twin_pair, image_size=32, load_size=40, jitter=True, mirror=True, train=True)
    outputs, flipped = set(), set()
    for seed in range(40):
        x, y = ds[(0, seed)]
        assert x.shape == (3, 32, 32)
        assert torch.equal(x, y), f"seed {seed}: input and target were augmented differently"
        outputs.add(x.numpy().tobytes())
        red = x[0]
        flipped.add(bool(red[:, :8].mean() > red[:, -8:].mean()))  # the red ramp runs right-to-left
    assert len(outputs) >= 20, "seeds should give different crops/flips"
    assert flipped == {True, False}, "both mirrored and unmirrored samples should occur"


def test_flip_only_without_jitter(twin_pair):
    ds = make_dataset(twin_pair, image_size=32, load_size=40, jitter=False, mirror=True, train=True)
    plain = make_dataset(twin_pair, image_size=32, train=False)[0][0]
    seen = set()
    for seed in range(12):
        x, y = ds[(0, seed)]
        assert torch.equal(x, y)
        if torch.equal(x, plain):
            seen.add("plain")
        else:
            assert torch.equal(x, plain.flip(-1)), "without jitter the only change may be a mirror"
            seen.add("mirrored")
    assert seen == {"plain", "mirrored"}


def test_eval_transform_is_deterministic(twin_pair):
    ds = make_dataset(twin_pair, image_size=16, load_size=40, jitter=True, mirror=True, train=False)
    first = ds[(0, 0)]
    for seed in (1, 2, 12345):
        x, y = ds[(0, seed)]
        assert torch.equal(x, first[0]) and torch.equal(y, first[1])
    assert first[0].shape == (3, 16, 16)  # plain resize to IMAGE_SIZE
    assert torch.equal(ds[0][0], first[0])


def test_same_index_and_seed_give_identical_tensors(tiny_data):
    ds = make_dataset(tiny_data / "train", image_size=32, load_size=36)
    reference = ds[(3, 777)]
    other = make_dataset(tiny_data / "train", image_size=32, load_size=36)
    for disturb in range(3):  # global RNGs must play no part
        random.seed(disturb)
        np.random.seed(disturb)
        torch.manual_seed(disturb)
        ds[(5, disturb)]
        for d in (ds, other):
            x, y = d[(3, 777)]
            assert torch.equal(x, reference[0]) and torch.equal(y, reference[1])
    assert any(not torch.equal(ds[(3, s)][0], reference[0]) for s in range(778, 784))


def test_values_in_minus_one_to_one(tmp_path, twin_pair):
    save(tmp_path / "bw" / "0.png", np.concatenate([solid(16, 16, (0, 0, 0)), solid(16, 16, (255, 255, 255))], 1))
    x, y = make_dataset(tmp_path / "bw", direction="AtoB", image_size=16, load_size=16, train=False)[0]
    assert x.dtype == torch.float32 and (x == -1).all() and (y == 1).all()  # black -> -1, white -> +1
    ds = make_dataset(twin_pair, image_size=32, load_size=40)
    for seed in range(10):
        x, y = ds[(0, seed)]
        assert x.min() >= -1 and x.max() <= 1 and y.min() >= -1 and y.max() <= 1
        assert x.min() < -0.9 and x.max() > 0.9  # the full range is used, not squeezed into [0, 1]


@pytest.mark.parametrize("in_ch, out_ch", [(1, 3), (3, 1), (1, 1)])
def test_channel_counts(tmp_path, in_ch, out_ch):
    left, right = solid(16, 16, (200, 100, 50)), solid(16, 16, (10, 20, 250))
    save(tmp_path / "rgb" / "0.png", np.concatenate([left, right], 1))
    ds = make_dataset(tmp_path / "rgb", direction="AtoB", image_size=16, load_size=16, train=False,
                            in_channels=in_ch, out_channels=out_ch)
    x, y = ds[0]
    assert x.shape == (in_ch, 16, 16) and y.shape == (out_ch, 16, 16)
    gray = lambda rgb: (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 127.5 - 1  # noqa: E731
    if in_ch == 1:
        assert abs(x.mean().item() - gray((200, 100, 50))) < 0.01
    if out_ch == 1:
        assert abs(y.mean().item() - gray((10, 20, 250))) < 0.01
    # a grayscale file works for any channel count
    Image.fromarray(np.full((16, 32), 128, dtype=np.uint8), mode="L").save(tmp_path / "rgb" / "0.png")
    x, y = ds[0]
    assert x.shape == (in_ch, 16, 16) and y.shape == (out_ch, 16, 16)
    # with the paper's jitter (a resize to LOAD_SIZE, then a crop) the two halves are resized alike, also when
    # their channel counts differ (colourising grayscale: 1 -> 3)
    jittered = make_dataset(tmp_path / "rgb", direction="AtoB", image_size=16, load_size=20, in_channels=in_ch,
                            out_channels=out_ch)
    x, y = jittered[0]
    assert x.shape == (in_ch, 16, 16) and y.shape == (out_ch, 16, 16)
    assert torch.allclose(x, torch.full_like(x, 128 / 127.5 - 1), atol=1e-6)  # a flat image stays flat


def test_uncropped_sides_round_to_the_generators_own_multiple():
    """PREPROCESS=none keeps an image's size, rounded to what the generator takes: 2^NUM_DOWNS for the U-Net,
    4 for the ResNet (two stride-2 convolutions), whose 600x400 images must not become 512x512."""
    from harness.configurator import load_config
    from dataset import build_transform
    unet = build_transform(load_config(["--PREPROCESS=none"]), train=False)
    resnet = build_transform(load_config(["--PREPROCESS=none", "--GENERATOR=resnet_9blocks"]), train=False)
    assert unet.output_size(400, 600) == (512, 512)
    assert resnet.output_size(400, 600) == (400, 600) and resnet.output_size(401, 598) == (400, 600)
    assert load_config(["--GENERATOR=resnet_9blocks", "--IMAGE_SIZE=300", "--LOAD_SIZE=336"])["IMAGE_SIZE"] == 300


# ----------------------------------------------------------------------------- sampling

def test_augmentation_sampler_order_shards_and_skip():
    def items(seed=7, epoch=0, rank=0, world=1, skip=0):
        s = AugmentationSampler(10, seed, rank, world)
        s.set_epoch(epoch, skip=skip)
        assert len(s) == len(list(s))
        return list(s)

    full = items()
    assert full == items() and sorted(i for i, _ in full) == list(range(10))
    assert [i for i, _ in full] != [i for i, _ in items(epoch=1)]  # reshuffled each epoch
    assert [i for i, _ in full] != [i for i, _ in items(seed=8)]
    assert all(seed == dataset.index_seed(7, 0, i) for i, seed in full)
    assert dict(full) != dict(items(epoch=1))  # new augmentation seeds each epoch, too
    rank0, rank1 = items(world=2), items(rank=1, world=2)
    assert len(rank0) == len(rank1) == 5
    assert {i for i, _ in rank0}.isdisjoint({i for i, _ in rank1})
    assert {i for i, _ in rank0 + rank1} == set(range(10))
    assert items(skip=3) == full[3:] and len(items(skip=3)) == 7
    assert items(epoch=2, skip=4) == items(epoch=2)[4:]
    # a resumed epoch skips the images trained on, counted over all processes: any batch size, any process count
    order = [i for i, _ in full]
    assert [i for i, _ in items(world=2)] == order[0::2]
    assert [i for i, _ in items(world=2, skip=4)] == order[4::2]
    assert [i for i, _ in items(rank=1, world=2, skip=4)] == order[5::2]


# ----------------------------------------------------------------------------- errors

def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        make_dataset(tmp_path / "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError) as err:
        make_dataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "no images" in str(err.value)


def test_odd_width_and_unreadable_files_are_named(tmp_path):
    folder = tmp_path / "bad"
    save(folder / "good.png", np.zeros((8, 16, 3), dtype=np.uint8))
    save(folder / "odd.png", np.zeros((8, 17, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DatasetError) as err:
        make_dataset(folder, image_size=8, load_size=8)
    message = str(err.value)
    assert str(folder / "odd.png") in message and "odd" in message
    assert str(folder / "broken.jpg") in message
    assert str(folder / "good.png") not in message
    ds = make_dataset(folder, image_size=8, load_size=8, bad_files="skip")
    assert ds.files == [folder / "good.png"]


def test_unreadable_file_at_load_time(tmp_path):
    folder = tmp_path / "late"
    save(folder / "a.png", np.zeros((8, 16, 3), dtype=np.uint8))
    ds = make_dataset(folder, image_size=8, load_size=8)
    (folder / "a.png").write_bytes(b"\x89PNG truncated")  # broken after the scan
    with pytest.raises(OSError, match=str(folder / "a.png")):
        ds[0]


# ----------------------------------------------------------------------------- built-in synthetic default

def test_default_folders_generate_synthetic_data_deterministically(tmp_path, monkeypatch):
    """With config.py's default TRAIN_DIR/VAL_DIR and no data, the built-in set is generated under the cwd
    with a fixed seed. (synthetic_data's own tests cover the generator; sizes are shrunk here for speed.)"""
    generate = synthetic_data.generate
    calls = []

    def small_generate(root, **kwargs):
        calls.append(kwargs)
        return generate(root, n_train=6, n_val=3, size=32, **kwargs)

    monkeypatch.setattr(synthetic_data, "generate", small_generate)
    cfg = load_config([])
    contents = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        ensure_default_data(cfg)
        root = tmp_path / name / "data" / "synthetic"
        assert len(list_images(root / "train")) == 6 and len(list_images(root / "val")) == 3
        contents.append({p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()})
        x, y = make_dataset(Path(cfg["TRAIN_DIR"]), image_size=32, load_size=36)[0]  # usable as is
        assert x.shape == y.shape == (3, 32, 32)
    assert contents[0] == contents[1]
    assert len(calls) == 2

    # present data is never regenerated, and configured folders never trigger generation
    ensure_default_data(cfg)
    assert len(calls) == 2
    (tmp_path / "third").mkdir()
    monkeypatch.chdir(tmp_path / "third")
    ensure_default_data(load_config(["--TRAIN_DIR=mine/train", "--VAL_DIR=mine/val"]))
    assert len(calls) == 2 and not (tmp_path / "third" / "data").exists()
