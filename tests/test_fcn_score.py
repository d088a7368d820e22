"""harness/fcn_score.py: colours -> classes under JPEG noise, the scores on hand-made label maps, the segmenter
learning a tiny set in either direction, reuse/retraining of the saved segmenter, and palette discovery.
Seconds in all: tiny recipes on 32-px images, one thread (conftest)."""
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_pairs
from dataset import split_pair
from harness.fcn_score import (FACADES_PALETTE, ConfusionMatrix, FCNScorer, Recipe, colourise, discover_palette,
                               label_maps, labels_from_colours, load_or_train, segmentation_scores,
                               train_segmenter)
from harness.data_checks import list_images
from utils import read_image

# conftest.make_pair_image's label colours (its B halves), in its class order
TINY_PALETTE = (("c0", (0, 0, 200)), ("c1", (0, 128, 255)), ("c2", (255, 160, 0)), ("c3", (200, 0, 0)))
TINY_RECIPE = Recipe(image_size=32, width=8, depth=2, epochs=10, batch_size=4, lr=1e-2, seed=0)


def jpeg(image: np.ndarray, quality: int = 75) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)  # PIL's default 4:2:0 chroma subsampling
    return np.asarray(Image.open(buffer).convert("RGB"))


def blocks(rng: np.random.Generator, n_classes: int, cells: int, cell: int, p: np.ndarray | None = None) -> np.ndarray:
    return np.kron(rng.choice(n_classes, size=(cells, cells), p=p), np.ones((cell, cell), dtype=np.int64))


def test_colours_to_classes_survive_jpeg():
    colours = np.array([rgb for _, rgb in FACADES_PALETTE], dtype=np.uint8)
    ids = blocks(np.random.default_rng(0), len(colours), 8, 32)  # all 12 classes side by side in random order
    assert np.array_equal(labels_from_colours(colours[ids], FACADES_PALETTE), ids)  # a clean PNG: exact
    recovered = labels_from_colours(jpeg(colours[ids]), FACADES_PALETTE) == ids
    assert recovered.mean() >= 0.99, recovered.mean()  # measured 0.9965 (RGB distance: 0.976)


def test_label_maps_and_colourise_invert_each_other():
    colours = np.array([rgb for _, rgb in FACADES_PALETTE], dtype=np.uint8)
    ids = torch.from_numpy(blocks(np.random.default_rng(1), 12, 4, 8))[None]  # 1x32x32
    image = colourise(ids, FACADES_PALETTE)  # 1x3x32x32 in [0, 1]
    assert torch.equal((image * 255).round().byte(), torch.from_numpy(colours[ids[0]]).permute(2, 0, 1)[None])
    assert torch.equal(label_maps(image, FACADES_PALETTE), ids)  # float images, as evaluate.py holds them
    assert torch.equal(label_maps((image * 255).round().byte(), FACADES_PALETTE), ids)  # uint8 images
    assert torch.equal(label_maps(ids.int(), FACADES_PALETTE), ids)  # class ids pass through


def test_scores_on_hand_made_maps():
    true = np.array([[0, 0, 0, 0], [1, 1, 2, 2]])
    assert segmentation_scores(true, true, 5) == {"pixel_acc": 1.0, "class_acc": 1.0, "class_iou": 1.0}
    assert segmentation_scores((true + 1) % 3, true, 5) == {"pixel_acc": 0.0, "class_acc": 0.0, "class_iou": 0.0}
    # class 1 read as class 2: recalls 1, 0, 1; IoUs 4/4, 0/(0+0+2), 2/(2+2+0)
    swapped = np.where(true == 1, 2, true)
    assert segmentation_scores(swapped, true, 5) == pytest.approx(
        {"pixel_acc": 6 / 8, "class_acc": 2 / 3, "class_iou": (1 + 0 + 0.5) / 3})
    # a class only predicted counts in the IoU mean (0), not in the class accuracy; classes 2-4 are absent from both
    only_zero = np.zeros((2, 4), dtype=np.int64)
    assert segmentation_scores(np.array([[0, 0, 0, 0], [1, 1, 1, 1]]), only_zero, 5) == pytest.approx(
        {"pixel_acc": 0.5, "class_acc": 0.5, "class_iou": (0.5 + 0) / 2})
    # streaming: the matrix accumulated map by map equals the one of all maps together
    confusion = ConfusionMatrix(5)
    for pred, gt in ((swapped, true), (true, true), (torch.from_numpy(true), torch.from_numpy(true))):
        confusion.update(pred, gt)
    assert confusion.scores() == segmentation_scores(np.stack([swapped, true, true]), np.stack([true] * 3), 5)
    with pytest.raises(ValueError, match="no pixels"):
        ConfusionMatrix(3).scores()


def swap_halves(folder: Path) -> None:
    """A|B files -> B|A files, in place."""
    for path in list_images(folder):
        a, b = split_pair(read_image(path), "AtoB")
        Image.fromarray(np.concatenate([b, a], axis=1)).save(path)


@pytest.mark.parametrize("direction", ["BtoA", "AtoB"])
def test_segmenter_learns_a_tiny_set(tmp_path: Path, direction: str):
    """Photo colour decides the class (conftest.make_pair_image): a few seconds of training segments held-out
    photos; with AtoB the files hold labels|photo and the photo must be read from the right half."""
    write_pairs(tmp_path / "train", 8, seed=0)
    write_pairs(tmp_path / "val", 4, seed=1)
    if direction == "AtoB":
        swap_halves(tmp_path / "train")
        swap_halves(tmp_path / "val")
    segmenter = load_or_train(tmp_path / "train", direction, TINY_PALETTE, tmp_path / "seg.pt", TINY_RECIPE)
    halves = [split_pair(read_image(path), direction) for path in list_images(tmp_path / "val")]
    labels, photos = (torch.stack([torch.from_numpy(h[i].copy()).permute(2, 0, 1) for h in halves]) for i in (0, 1))
    scorer = FCNScorer(segmenter, TINY_PALETTE, TINY_RECIPE.image_size)
    # uint8 label images; "generated" = another image's photo, as from a generator that ignores its input
    maps = scorer.update(labels, generated=photos.roll(1, 0) / 255, real=photos / 255)
    assert maps["real"].shape == maps["generated"].shape == (4, 32, 32)
    scores = scorer.result()
    assert scores["real"]["pixel_acc"] >= 0.9, scores  # measured 0.963 for BtoA
    assert scores["generated"]["pixel_acc"] < 0.5, scores


def test_training_is_deterministic_and_keeps_the_callers_random_state(capsys: pytest.CaptureFixture):
    photos = torch.rand(4, 3, 16, 16) * 2 - 1
    recipe = Recipe(image_size=16, width=4, depth=2, epochs=2, batch_size=2)
    state = torch.random.get_rng_state()
    first, second = (train_segmenter(photos, (photos[:, 0] > 0).long(), 2, recipe).state_dict() for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[k], second[k]) for k in first)


def outcome(capsys: pytest.CaptureFixture, folder: Path, cache: Path, recipe: Recipe = TINY_RECIPE,
            direction: str = "BtoA") -> str:
    """'trained' or 'reused', from what load_or_train prints for the project's own (default) segmenter file."""
    capsys.readouterr()
    load_or_train(folder, direction, TINY_PALETTE, cache, recipe, own_cache=True)  # as the default runs/fcn/ file
    out = capsys.readouterr().out
    assert ("reusing" in out) != ("training on" in out), out
    return "reused" if "reusing" in out else "trained"


def test_saved_segmenter_reused_until_anything_changes(tmp_path: Path, capsys: pytest.CaptureFixture):
    data, cache = tmp_path / "train", tmp_path / "fcn" / "seg.pt"
    paths = write_pairs(data, 4, seed=0)
    recipe = Recipe(image_size=16, width=4, depth=2, epochs=1, batch_size=4)
    assert outcome(capsys, data, cache, recipe) == "trained"
    saved = torch.load(cache, weights_only=True)  # tensors and plain data only
    assert saved["palette"][1] == ["c1", [0, 128, 255]] and saved["recipe"]["epochs"] == 1
    state = torch.random.get_rng_state()
    assert outcome(capsys, data, cache, recipe) == "reused"
    assert torch.equal(torch.random.get_rng_state(), state)  # a run's dropout noise: the same with FCN_SCORE on
    assert [p.name for p in cache.parent.iterdir()] == ["seg.pt"]  # no temp file left behind
    for path in paths:  # the same bytes with new modification times (data re-created on a new machine)
        mtime = path.stat().st_mtime_ns + 10 ** 9
        os.utime(path, ns=(mtime, mtime))
    assert outcome(capsys, data, cache, recipe) == "reused"

    write_pairs(tmp_path / "other", 1, seed=5)  # rewrite a file: new content, new modification time
    os.replace(tmp_path / "other" / "000.png", paths[0])
    mtime = paths[0].stat().st_mtime_ns + 10 ** 9  # a later time, whatever the file system's clock resolution
    os.utime(paths[0], ns=(mtime, mtime))
    assert outcome(capsys, data, cache, recipe) == "trained"
    assert outcome(capsys, data, cache, recipe) == "reused"
    write_pairs(data / "more", 1, seed=6)  # add a file (in a sub-folder: list_images looks there too)
    assert outcome(capsys, data, cache, recipe) == "trained"
    paths[1].unlink()  # remove one
    assert outcome(capsys, data, cache, recipe) == "trained"
    assert outcome(capsys, data, cache, recipe) == "reused"

    assert outcome(capsys, data, cache, Recipe(image_size=16, width=4, depth=2, epochs=2, batch_size=4)) == "trained"
    assert outcome(capsys, data, cache, recipe, direction="AtoB") == "trained"


def test_discover_palette_on_jpeg_label_maps():
    """Six colours, background most frequent, as JPEG label maps: found exactly, most frequent first."""
    truth = np.array([(0, 0, 222), (0, 128, 255), (255, 159, 0), (112, 255, 143), (174, 0, 0), (255, 240, 0)])
    rng = np.random.default_rng(0)
    images = [jpeg(truth.astype(np.uint8)[blocks(rng, 6, 8, 16, p=[0.5, 0.1, 0.1, 0.1, 0.1, 0.1])])
              for _ in range(12)]
    found = np.array([rgb for _, rgb in discover_palette(images)])
    assert len(found) == 6
    assert np.abs(found[0] - truth[0]).max() <= 6
    nearest = np.abs(found[:, None] - truth[None]).max(-1)  # found x truth, max channel difference
    assert sorted(nearest.argmin(1)) == list(range(6)) and nearest.min(1).max() <= 6, found


def test_discover_palette_finds_facades_palette(facades: Path):
    """On the real training label maps it finds FACADES_PALETTE's 12 colours, each within 6 levels per channel."""
    found = np.array([rgb for _, rgb in discover_palette(split_pair(read_image(p), "BtoA")[0]
                                                         for p in list_images(facades / "train"))])
    truth = np.array([rgb for _, rgb in FACADES_PALETTE])
    nearest = np.abs(found[:, None] - truth[None]).max(-1)
    assert len(found) == 12 and sorted(nearest.argmin(1)) == list(range(12)) and nearest.min(1).max() <= 6, found


def test_the_check_trains_the_recipe_with_another_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture):
    import functools
    from harness import fcn_score
    tiny = {k: getattr(TINY_RECIPE, k) for k in ("image_size", "width", "depth", "epochs", "batch_size", "lr")}
    monkeypatch.setattr(fcn_score, "Recipe", functools.partial(Recipe, **tiny))
    write_pairs(tmp_path / "train", 8, seed=0)
    write_pairs(tmp_path / "test", 4, seed=1)
    saved = {}
    for seed in (None, 3):
        cache = tmp_path / f"seg_{seed}.pt"
        args = ["--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--cache", str(cache)]
        assert fcn_score.main(args + (["--seed", str(seed)] if seed is not None else [])) == 0
        assert "real test photos: pixel_acc" in capsys.readouterr().out
        saved[seed] = torch.load(cache, weights_only=True)
    assert saved[None]["recipe"]["seed"] == Recipe.seed and saved[3]["recipe"]["seed"] == 3
    first, other = saved[None]["state_dict"], saved[3]["state_dict"]
    assert any(not torch.equal(first[k], other[k]) for k in first)  # another seed, another segmenter
