"""FCN-score for labels -> photo translation (paper §4.2): segment each generated photo, compare the predicted label
map with the generator's input label map (per-pixel accuracy, per-class accuracy, class IoU), and score the real
photos the same way as the ceiling. No pretrained segmenter is available offline, so one is trained per dataset on
its real training photos (a compact U-Net, fixed Recipe) and saved; load_or_train reuses it while the training
files, direction, palette and recipe stay the same. Classes are the label images' colours (nearest palette colour,
which absorbs JPEG noise): PALETTES has the known datasets', discover_palette finds another dataset's.

    recipe, palette = Recipe(), PALETTES["facades"]
    segmenter = load_or_train("data/facades/train", "BtoA", palette, "runs/fcn/facades.pt", recipe)
    scorer = FCNScorer(segmenter, palette, recipe.image_size)
    for x, fake, y in batches:  # input label images, generated and real photos: Bx3xHxW in [0, 1]
        maps = scorer.update(x, generated=fake, real=y)  # predicted class maps; colourise(maps["generated"], palette)
    scorer.result()  # {"generated": {"pixel_acc": ..., "class_acc": ..., "class_iou": ...}, "real": {...}}

Check a segmenter on real test photos (trains or reuses it; prints its scores and the majority-class baseline):
    python -m harness.fcn_score --train data/facades/train --test data/facades/test --preset facades \
        --cache runs/fcn/facades.pt --threads 1
On facades (BtoA, Recipe()) the real test photos score pixel_acc 0.648, class_acc 0.389, class_iou 0.291; the
majority class (facade) 0.380, 0.083, 0.032.
"""
import argparse
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset import list_images, read_image, split_pair

Palette = tuple[tuple[str, tuple[int, int, int]], ...]

# The 12 CMP Facades classes and their colours in the pix2pix facades label maps, in the dataset's label order.
# Measured on ../shared/data/facades/train (its 400 label halves): k-means of the flat regions' colours, started from
# the jet colour map in 13 steps (the first unused), rounded. (Moved from demo.py, whose brushes use exactly these.)
FACADES_PALETTE: Palette = (
    ("background", (0, 0, 222)), ("facade", (0, 48, 255)), ("window", (0, 128, 255)), ("door", (0, 207, 255)),
    ("cornice", (32, 255, 224)), ("sill", (112, 255, 143)), ("balcony", (192, 255, 63)), ("blind", (255, 240, 0)),
    ("deco", (255, 159, 0)), ("molding", (255, 80, 0)), ("pillar", (255, 0, 0)), ("shop", (174, 0, 0)),
)
PALETTES: dict[str, Palette] = {"facades": FACADES_PALETTE}  # keyed by config preset name
SAVED_FORMAT = 1  # saved with a segmenter; bump it when this code changes what a saved one means (a retrain follows)


# ----------------------------------------------------------------------------- classes from colours

# JPEG (4:2:0) halves chroma's resolution and quantises it harder than luma, so near a region border a pixel's
# chroma blends both sides while its luma is mostly its own: colours are compared in YCbCr with chroma weighted 0.3
# (50 facades class maps drawn in clean palette colours, saved as JPEG at quality 75 and 90: 99.56% of pixels recover
# their class; with RGB distance 99.25%)
COLOUR_SPACE = np.array([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]], np.float32) * \
    np.array([[1], [0.3], [0.3]], np.float32)


def labels_from_colours(image: np.ndarray, palette: Palette) -> np.ndarray:
    """HxWx3 uint8 label image -> HxW int64 class ids: each pixel's nearest palette colour (see COLOUR_SPACE)."""
    colours = np.array([rgb for _, rgb in palette], dtype=np.float32) @ COLOUR_SPACE.T
    pixels = image.reshape(-1, 3).astype(np.float32) @ COLOUR_SPACE.T
    distance = (colours ** 2).sum(1) - 2 * pixels @ colours.T  # |p - c|^2 less the |p|^2 that all c share
    return distance.argmin(1).reshape(image.shape[:2]).astype(np.int64)


def discover_palette(label_images: Iterable[np.ndarray], max_classes: int = 32, min_share: float = 0.001,
                     merge_distance: float = 24.0) -> Palette:
    """The palette of a dataset that PALETTES lacks, from its label images (HxWx3 uint8), deterministically:
    1. only flat pixels count: within 8 levels per channel of their right and lower neighbours (drops the blends
       that resizing and JPEG leave along region borders);
    2. their colours are counted in bins of 8 levels per channel; bins under `min_share` of them are noise;
    3. bins are taken most frequent first (ties: lower bin): a bin joins the nearest class within `merge_distance`,
       else starts a new one while there are fewer than `max_classes` (else it is dropped);
    4. a class's colour is its pixels' mean, rounded; classes come most frequent first, named class_0, class_1, ...
    """
    bins = 32
    counts, sums = np.zeros(bins ** 3, np.int64), np.zeros((bins ** 3, 3))
    for image in label_images:
        im = image.astype(np.int16)
        here = im[:-1, :-1]
        flat = (np.abs(here - im[:-1, 1:]).max(-1) <= 8) & (np.abs(here - im[1:, :-1]).max(-1) <= 8)
        pixels = here[flat].astype(np.int64)
        index = (pixels // 8) @ np.array([bins * bins, bins, 1])
        counts += np.bincount(index, minlength=bins ** 3)
        for c in range(3):
            sums[:, c] += np.bincount(index, weights=pixels[:, c], minlength=bins ** 3)
    if not counts.any():
        raise ValueError("no flat label regions found: are these label images (HxWx3 uint8)?")
    class_counts, class_sums, noise = [], [], min_share * counts.sum()
    for b in np.argsort(-counts, kind="stable"):
        if counts[b] < noise:
            break
        if class_counts:
            centres = np.array(class_sums) / np.array(class_counts)[:, None]
            distance = np.linalg.norm(centres - sums[b] / counts[b], axis=1)
            if distance.min() <= merge_distance:
                class_counts[distance.argmin()] += counts[b]
                class_sums[distance.argmin()] += sums[b]
                continue
        if len(class_counts) < max_classes:
            class_counts.append(counts[b])
            class_sums.append(sums[b].copy())
    order = np.argsort(-np.array(class_counts), kind="stable")
    return tuple((f"class_{i}", tuple(int(v) for v in np.round(class_sums[k] / class_counts[k])))
                 for i, k in enumerate(order))


def label_maps(labels: torch.Tensor, palette: Palette) -> torch.Tensor:
    """BxHxW class ids (returned as int64) or Bx3xHxW label images (uint8, or float in [0, 1]) -> BxHxW int64."""
    if labels.ndim == 3:
        return labels.long().cpu()
    if labels.is_floating_point():
        labels = (labels.clamp(0, 1) * 255).round()
    images = labels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return torch.from_numpy(np.stack([labels_from_colours(image, palette) for image in images]))


def colourise(labels: torch.Tensor, palette: Palette) -> torch.Tensor:
    """...xHxW class ids -> ...x3xHxW palette colours in [0, 1] (for torchvision's save_image)."""
    colours = torch.tensor([rgb for _, rgb in palette], dtype=torch.float32) / 255
    return colours[labels.long().cpu()].movedim(-1, -3)


# ----------------------------------------------------------------------------- scores

class ConfusionMatrix:
    """An n x n pixel count (rows: true class, columns: predicted class) accumulated over any number of label maps."""

    def __init__(self, n_classes: int):
        self.counts = np.zeros((n_classes, n_classes), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> None:
        n = len(self.counts)
        index = np.asarray(true, dtype=np.int64).ravel() * n + np.asarray(pred, dtype=np.int64).ravel()
        self.counts += np.bincount(index, minlength=n * n).reshape(n, n)

    def scores(self) -> dict[str, float]:
        """The FCN paper's (and pix2pix §4.2's) three numbers: pixel_acc = correct / all pixels; class_acc = mean
        recall over the classes present in the ground truth; class_iou = mean of TP / (TP + FP + FN) over the
        classes present in the ground truth OR the prediction (predicted but absent: IoU 0; absent from both:
        skipped)."""
        if not self.counts.any():
            raise ValueError("no pixels scored yet")
        tp = np.diag(self.counts).astype(np.float64)
        true, pred = self.counts.sum(1), self.counts.sum(0)
        union = true + pred - tp
        return {"pixel_acc": float(tp.sum() / true.sum()),
                "class_acc": float((tp[true > 0] / true[true > 0]).mean()),
                "class_iou": float((tp[union > 0] / union[union > 0]).mean())}


def segmentation_scores(pred_labels: np.ndarray | torch.Tensor, true_labels: np.ndarray | torch.Tensor,
                        n_classes: int) -> dict[str, float]:
    """pixel_acc, class_acc and class_iou (see ConfusionMatrix.scores) of one or a batch of label maps."""
    confusion = ConfusionMatrix(n_classes)
    confusion.update(pred_labels, true_labels)
    return confusion.scores()


# ----------------------------------------------------------------------------- the segmenter

def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Segmenter(nn.Module):
    """A compact U-Net: `depth` levels of two 3x3 conv-BN-ReLU layers with width * 2^level channels, 2x2 max-pooling
    down, bilinear upsampling and the level's skip concatenated on the way up, a 1x1 conv to class logits.
    Bx3xHxW photos in [-1, 1] -> BxCxHxW logits."""

    def __init__(self, n_classes: int, width: int, depth: int):
        super().__init__()
        channels = [width * 2 ** level for level in range(depth)]
        self.down = nn.ModuleList(conv_block(c_in, c) for c_in, c in zip([3] + channels[:-1], channels))
        self.up = nn.ModuleList(conv_block(3 * c, c) for c in channels[:-1])  # skip c + upsampled 2c channels
        self.head = nn.Conv2d(channels[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if level else x)
            skips.append(x)
        for block, skip in zip(reversed(self.up), reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([skip, x], 1))
        return self.head(x)


@dataclass(frozen=True)
class Recipe:
    """The segmenter's fixed training recipe; saved with it, and a change retrains it."""
    image_size: int = 128  # photos (bilinear) and class maps (nearest) are resized to squares of this size
    width: int = 16  # channels of the first U-Net level, doubled per level
    depth: int = 5  # levels (about 2M weights): the deepest works at 8x8, context to tell a shop from a facade
    epochs: int = 25  # minutes on a CPU for facades (docs/results.md gives the training time)
    batch_size: int = 8
    lr: float = 2e-3  # Adam, cosine-decayed to 0 over the run
    seed: int = 0


def image_batch(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> 1xCxHxW uint8."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


def to_network(photos: torch.Tensor, size: int) -> torch.Tensor:
    """Bx3xHxW photos in [0, 1] -> the segmenter's input: size x size, in [-1, 1]; for training and scoring alike."""
    photos = F.interpolate(photos.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return photos * 2 - 1


def load_training_set(folder: str | os.PathLike, direction: str, palette: Palette,
                      image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A|B files -> (photos Nx3xSxS in [-1, 1], class maps NxSxS int64), S = image_size. `direction` is the generator's
    DIRECTION for labels -> photo: split_pair's input half is the label map and its target half the photo (BtoA:
    photo = left/A half, labels = right/B half; AtoB the reverse)."""
    photos, labels = [], []
    for path in list_images(folder):
        label_image, photo = split_pair(read_image(path, 3), direction)
        ids = torch.from_numpy(labels_from_colours(label_image, palette))[None, None].float()
        labels.append(F.interpolate(ids, size=(image_size, image_size), mode="nearest-exact")[0, 0].long())
        photos.append(to_network(image_batch(photo) / 255, image_size)[0])
    return torch.stack(photos), torch.stack(labels)


def train_segmenter(photos: torch.Tensor, labels: torch.Tensor, n_classes: int, recipe: Recipe) -> Segmenter:
    """Photos and class maps as load_training_set gives them -> a Segmenter in eval mode: per-pixel cross-entropy,
    a random horizontal flip per image as the only augmentation (no vertical flips: buildings stand upright).
    Deterministic for a recipe and a thread count."""
    with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's random state stays as it was
        torch.manual_seed(recipe.seed)
        model = Segmenter(n_classes, recipe.width, recipe.depth).train()
    rng = torch.Generator().manual_seed(recipe.seed)  # batch order and flips
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    steps = recipe.epochs * math.ceil(len(photos) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        total = 0.0
        for batch in torch.randperm(len(photos), generator=rng).split(recipe.batch_size):
            x, y = photos[batch], labels[batch]  # copies: flipping them leaves the data alone
            flip = torch.rand(len(batch), generator=rng) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        seconds = time.perf_counter() - start
        print(f"  epoch {epoch + 1}/{recipe.epochs}: loss {total / len(photos):.3f} ({seconds:.0f} s)")
    return model.eval()


# ----------------------------------------------------------------------------- saved and reused

def files_fingerprint(folder: str | os.PathLike) -> str:
    """A cheap fingerprint of a training folder: sha256 of each image file's path (relative to `folder`), size and
    modification time (ns), in sorted order. Reads no pixels; adding, removing, renaming or rewriting a file changes
    it (so does a copy that only changes modification times: a needless retrain, never a stale segmenter)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in list_images(folder):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_or_train(train_folder: str | os.PathLike, direction: str, palette: Palette, cache_path: str | os.PathLike,
                  recipe: Recipe = Recipe()) -> Segmenter:
    """The segmenter for `train_folder`'s A|B files (direction: the generator's DIRECTION for labels -> photo, as in
    load_training_set), in eval mode: the one saved at `cache_path` if its fingerprint (files_fingerprint),
    direction, palette and recipe all match, else a newly trained one, saved there (the reason is printed)."""
    if direction not in ("AtoB", "BtoA"):
        raise ValueError(f"direction must be AtoB or BtoA, not {direction!r}")
    cache_path = Path(cache_path)
    # saved beside the weights: plain data only, so torch.load(weights_only=True) reads the file
    wanted = {"format": SAVED_FORMAT, "fingerprint": files_fingerprint(train_folder), "direction": direction,
              "palette": [[name, list(rgb)] for name, rgb in palette], "recipe": asdict(recipe)}
    reason = f"no saved segmenter at {cache_path}"
    if cache_path.exists():
        try:
            saved = torch.load(cache_path, map_location="cpu", weights_only=True)
            changed = [key for key in wanted if saved.get(key) != wanted[key]]
        except Exception as e:  # unreadable or not a record: train afresh, and say why
            saved, changed = None, [f"unreadable ({type(e).__name__}: {e})"]
        if not changed:
            model = Segmenter(len(palette), recipe.width, recipe.depth)
            model.load_state_dict(saved["state_dict"])
            print(f"FCN-score segmenter: reusing {cache_path} (same training files, direction, palette and recipe)")
            return model.eval()
        reason = f"{cache_path} differs: " + ", ".join(c.replace("fingerprint", "training files") for c in changed)
    print(f"FCN-score segmenter: training on {train_folder} ({reason})")
    start, cpu = time.perf_counter(), time.process_time()
    model = train_segmenter(*load_training_set(train_folder, direction, palette, recipe.image_size), len(palette),
                            recipe)
    print(f"FCN-score segmenter: trained in {time.perf_counter() - start:.0f} s ({time.process_time() - cpu:.0f} s "
          f"CPU time, {torch.get_num_threads()} threads); saved to {cache_path}")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    temp = cache_path.with_name(f".{cache_path.name}.tmp-{os.getpid()}")
    torch.save({**wanted, "state_dict": model.state_dict()}, temp)
    os.replace(temp, cache_path)  # never a half-written file at cache_path
    return model


# ----------------------------------------------------------------------------- scoring

class FCNScorer:
    """FCN-scores (paper §4.2), streamed over batches: each photo is segmented at the segmenter's training size, its
    logits are resized (bilinear) to its input label map's size, and the argmax is compared with that label map.
    Any named photo sets can be scored against the same label maps, e.g. generated=... and real=... (the ceiling)."""

    def __init__(self, segmenter: Segmenter, palette: Palette, image_size: int):
        self.segmenter, self.palette, self.image_size = segmenter.eval(), palette, image_size
        self.confusion: dict[str, ConfusionMatrix] = {}

    @torch.no_grad()
    def segment(self, photos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bx3xHxW photos in [0, 1] -> BxHxW int64 class maps of `size` (height, width), on the CPU."""
        device = next(self.segmenter.parameters()).device
        logits = self.segmenter(to_network(photos.to(device), self.image_size))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1).cpu()

    def update(self, input_labels: torch.Tensor, **photos: torch.Tensor) -> dict[str, torch.Tensor]:
        """input_labels: the generator's inputs, as label_maps takes them; photos: named Bx3xHxW batches in [0, 1].
        Returns each name's predicted BxHxW class maps (colourise shows them)."""
        true = label_maps(input_labels, self.palette)
        predicted = {}
        for name, batch in photos.items():
            predicted[name] = self.segment(batch, tuple(true.shape[-2:]))
            self.confusion.setdefault(name, ConfusionMatrix(len(self.palette))).update(predicted[name], true)
        return predicted

    def result(self) -> dict[str, dict[str, float]]:
        return {name: confusion.scores() for name, confusion in self.confusion.items()}


def dataset_palette(train_folder: str | os.PathLike, direction: str, dataset: str = "") -> Palette:
    """PALETTES[dataset] (by preset name, or the training folder's parent's name, e.g. facades), else the palette
    discovered from the training label images, printed."""
    name = dataset or Path(train_folder).resolve().parent.name
    if name in PALETTES:
        return PALETTES[name]
    palette = discover_palette(split_pair(read_image(p, 3), direction)[0] for p in list_images(train_folder))
    print(f"FCN-score palette discovered in {train_folder} ({len(palette)} classes): "
          + ", ".join(f"{name} {rgb}" for name, rgb in palette))
    return palette


def scorer_for(train_folder: str | os.PathLike, direction: str, dataset: str = "",
               cache_path: str | os.PathLike | None = None, recipe: Recipe | None = None) -> tuple[FCNScorer, Path]:
    """(the FCN scorer of a labels -> photo dataset, where its segmenter is saved): the dataset's palette, and its
    segmenter trained on `train_folder` or reused (default runs/fcn/<dataset>_<direction>.pt)."""
    recipe = recipe or Recipe()
    palette = dataset_palette(train_folder, direction, dataset)
    name = dataset or Path(train_folder).resolve().parent.name
    cache_path = Path(cache_path or Path("runs") / "fcn" / f"{name}_{direction}.pt")
    return FCNScorer(load_or_train(train_folder, direction, palette, cache_path, recipe), palette,
                     recipe.image_size), cache_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train (or reuse) the FCN-score segmenter; score it on real test "
                                                 "photos against their label maps, beside the majority class.")
    parser.add_argument("--train", required=True, help="folder of A|B training files")
    parser.add_argument("--test", required=True, help="folder of A|B test files")
    parser.add_argument("--direction", default="BtoA", choices=("AtoB", "BtoA"),
                        help="the generator's DIRECTION for labels -> photo (BtoA: photo = left half)")
    parser.add_argument("--preset", choices=sorted(PALETTES), help="known palette; without it one is discovered")
    parser.add_argument("--cache", required=True, help="where the segmenter is saved (.pt)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    palette = PALETTES.get(args.preset) or discover_palette(
        split_pair(read_image(p, 3), args.direction)[0] for p in list_images(args.train))
    print(f"palette ({len(palette)} classes): {palette}")
    recipe = Recipe()
    scorer = FCNScorer(load_or_train(args.train, args.direction, palette, args.cache, recipe), palette,
                       recipe.image_size)
    for path in list_images(args.test):
        labels, photo = split_pair(read_image(path, 3), args.direction)
        scorer.update(image_batch(labels), real=image_batch(photo) / 255)
    true = scorer.confusion["real"].counts.sum(1)
    baseline = ConfusionMatrix(len(palette))  # the best constant: the test labels' most frequent class everywhere
    baseline.counts[:, true.argmax()] = true
    for name, scores in (("real test photos", scorer.result()["real"]),
                         (f"majority class ({palette[true.argmax()][0]})", baseline.scores())):
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
