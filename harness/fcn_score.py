"""FCN-score for labels -> photo translation (paper §4.2): segment each generated photo, compare the predicted label
map with the generator's input label map (per-pixel accuracy, per-class accuracy, class IoU), and score the real
photos the same way as the ceiling. No pretrained segmenter is available offline, so one is trained per dataset on
its real training photos (a compact U-Net, fixed Recipe) and saved; load_or_train reuses it while the training
files, direction, palette and recipe stay the same. Classes are the label images' colours (nearest palette colour,
which absorbs JPEG noise): PALETTES has the known datasets', discover_palette finds another dataset's. Label
images whose pixels are mostly far from every palette colour (the photo half read as labels, grayscale files) are
reported with a warning: their scores mean nothing.

A saved segmenter is untrusted input, read as a checkpoint is (load_or_train): a file that fails a check is an
error naming it, and is never overwritten unless asked (retrain; evaluate.py --retrain-segmenter). Only the
project's own default file (runs/fcn/<dataset>_<direction>.pt) is replaced by itself, when it was made for other
training files, direction, palette or recipe.

    recipe, palette = Recipe(), PALETTES["facades"]
    segmenter = load_or_train("data/facades/train", "BtoA", palette, "runs/fcn/facades.pt", recipe)
    scorer = FCNScorer(segmenter, palette, recipe.image_size)
    for x, fake, y in batches:  # input label images, generated and real photos: Bx3xHxW in [0, 1]
        maps = scorer.update(x, generated=fake, real=y)  # predicted class maps; colourise(maps["generated"], palette)
    scorer.result()  # {"generated": {"pixel_acc": ..., "class_acc": ..., "class_iou": ...}, "real": {...}}

Check a segmenter on real test photos (trains or reuses it; prints its scores and the majority-class baseline;
--retrain-segmenter replaces a --cache file made for other data):
    python -m harness.fcn_score --train data/facades/train --test data/facades/test --preset facades \
        --cache runs/fcn/facades.pt --threads 1
On facades (BtoA, Recipe()) the real test photos score pixel_acc 0.648, class_acc 0.389, class_iou 0.291; the
majority class (facade) 0.380, 0.083, 0.032.
"""
import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset import split_pair
from harness.checkpoint import atomic_save
from harness.data_checks import IMG_EXTENSIONS, contents_digest, list_images
from harness.errors import CheckpointError, DatasetError, SegmenterError, exit_on_error, path_argument
from harness.weights import check_weights, load_weights, named_tensors, read_weights_file
from utils import read_image

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
SAVED_FORMAT = 2  # saved with a segmenter; bump it when this code changes what a saved one means (a retrain follows)
SAVED_KEYS = ("format", "fingerprint", "direction", "palette", "recipe", "state_dict")  # a saved segmenter's record
REPLACE_HINT = "delete it, or pass --retrain-segmenter to train a new one in its place, or give another --segmenter"


# ----------------------------------------------------------------------------- classes from colours

# JPEG (4:2:0) halves chroma's resolution and quantises it harder than luma, so near a region border a pixel's
# chroma blends both sides while its luma is mostly its own: colours are compared in YCbCr with chroma weighted 0.3
# (50 facades class maps drawn in clean palette colours, saved as JPEG at quality 75 and 90: 99.56% of pixels recover
# their class; with RGB distance 99.25%)
COLOUR_SPACE = np.array([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]], np.float32) * \
    np.array([[1], [0.3], [0.3]], np.float32)


# A label pixel this far (in COLOUR_SPACE, about grey levels of luma) from every palette colour matches no class;
# more than OFF_PALETTE_SHARE of them is warned about (measured on facades: docs/results.md, the FCN-score section)
FAR_FROM_PALETTE = 20.0
OFF_PALETTE_SHARE = 0.5


def nearest_colours(image: np.ndarray, palette: Palette) -> tuple[np.ndarray, np.ndarray]:
    """HxWx3 uint8 label image -> (HxW int64 class ids: each pixel's nearest palette colour (see COLOUR_SPACE),
    HxW float32 distance to that colour)."""
    colours = np.array([rgb for _, rgb in palette], dtype=np.float32) @ COLOUR_SPACE.T
    pixels = image.reshape(-1, 3).astype(np.float32) @ COLOUR_SPACE.T
    distance = (colours ** 2).sum(1) - 2 * pixels @ colours.T  # |p - c|^2 less the |p|^2 that all c share
    ids = distance.argmin(1)
    nearest = np.take_along_axis(distance, ids[:, None], 1)[:, 0] + (pixels ** 2).sum(1)
    return ids.reshape(image.shape[:2]).astype(np.int64), np.sqrt(np.maximum(nearest, 0)).reshape(image.shape[:2])


def labels_from_colours(image: np.ndarray, palette: Palette) -> np.ndarray:
    """HxWx3 uint8 label image -> HxW int64 class ids: each pixel's nearest palette colour (see COLOUR_SPACE)."""
    return nearest_colours(image, palette)[0]


@dataclass
class OffPalette:
    """Counts the label pixels farther than FAR_FROM_PALETTE from every palette colour: label images that mostly
    match no class (recoloured labels, grayscale files, the photo half read as labels) score near 0 for any photo."""
    far: int = 0
    pixels: int = 0

    def count(self, distance: np.ndarray) -> None:
        self.far += int((distance > FAR_FROM_PALETTE).sum())
        self.pixels += distance.size

    def warning(self, where: str, palette: Palette) -> str | None:
        """A one-line warning if most label pixels of `where` matched no palette colour, else None."""
        if not self.pixels or self.far <= OFF_PALETTE_SHARE * self.pixels:
            return None
        return (f"warning: {self.far / self.pixels:.0%} of the label pixels of {where} are far from every colour of "
                f"the FCN-score's {len(palette)}-class palette ({', '.join(name for name, _ in palette[:4])}, ...), "
                f"so its FCN-scores mean nothing: is --direction right (the label map must be the generator's "
                f"input half), and is this a labels -> photo dataset?")


def discover_palette(label_images: Iterable[np.ndarray], max_classes: int = 32, min_share: float = 0.001,
                     merge_distance: float = 24.0) -> Palette:
    """The palette of a dataset that PALETTES lacks, from its label images (HxWx3 uint8), deterministically:
    1. only flat pixels count: within 8 levels per channel of their right and lower neighbours (drops the blends
       that resizing and JPEG leave along region borders);
    2. their colours are counted in bins of 8 levels per channel; bins under `min_share` of them are noise;
    3. bins are taken most frequent first (ties: lower bin): a bin joins the nearest class within `merge_distance`,
       else starts a new one while there are fewer than `max_classes` (else it is dropped);
    4. a class's colour is its pixels' mean, rounded; classes come most frequent first, named class_0, class_1, ...
    An empty palette if there are no flat pixels at all (no label maps).
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
    if not counts.any():  # no label maps (noise, photos, or no images at all)
        return ()
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


def label_maps(labels: torch.Tensor, palette: Palette, off_palette: OffPalette | None = None) -> torch.Tensor:
    """BxHxW class ids (returned as int64) or Bx3xHxW label images (uint8, or float in [0, 1]) -> BxHxW int64;
    `off_palette` counts the label images' pixels that match no palette colour."""
    if labels.ndim == 3:
        return labels.long().cpu()
    if labels.is_floating_point():
        labels = (labels.clamp(0, 1) * 255).round()
    maps = []
    for image in labels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():
        ids, distance = nearest_colours(image, palette)
        maps.append(ids)
        if off_palette is not None:
            off_palette.count(distance)
    return torch.from_numpy(np.stack(maps))


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


def training_files(folder: str | os.PathLike) -> list[Path]:
    """The A|B files of a segmenter's training folder; a DatasetError if there are none."""
    files = list_images(folder) if Path(folder).is_dir() else []
    if not files:
        where = "has no images" if Path(folder).is_dir() else "is not a folder"
        raise DatasetError(f"FCN-score training folder {folder} {where} ({', '.join(IMG_EXTENSIONS)}): the segmenter "
                           f"trains on the real A|B files of a labels -> photo dataset (evaluate.py --fcn-train, else "
                           f"the checkpoint's TRAIN_DIR)")
    return files


def read_labelled(path: Path, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """An A|B file -> (label image, photo) HxWx3 uint8 (direction as in load_training_set); a file that cannot be
    read (damaged, over the pixel limit) is a DatasetError naming it."""
    try:
        return split_pair(read_image(path, 3), direction)
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path} cannot be used for the FCN-score ({type(e).__name__}: {e}); fix or remove "
                           f"it") from None


def load_training_set(folder: str | os.PathLike, direction: str, palette: Palette,
                      image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A|B files -> (photos Nx3xSxS in [-1, 1], class maps NxSxS int64), S = image_size. `direction` is the generator's
    DIRECTION for labels -> photo: split_pair's input half is the label map and its target half the photo (BtoA:
    photo = left/A half, labels = right/B half; AtoB the reverse). Warns (stderr) if most label pixels match no
    palette colour."""
    photos, labels, off_palette = [], [], OffPalette()
    for path in training_files(folder):
        label_image, photo = read_labelled(path, direction)
        ids, distance = nearest_colours(label_image, palette)
        off_palette.count(distance)
        labels.append(F.interpolate(torch.from_numpy(ids)[None, None].float(), size=(image_size, image_size),
                                    mode="nearest-exact")[0, 0].long())
        photos.append(to_network(image_batch(photo) / 255, image_size)[0])
    if warning := off_palette.warning(f"{folder} ({direction})", palette):
        print(warning, file=sys.stderr)
    return torch.stack(photos), torch.stack(labels)


def new_segmenter(n_classes: int, recipe: Recipe) -> Segmenter:
    """The recipe's Segmenter with its seeded initial weights; the caller's random state stays as it was (a
    training run's dropout noise must not depend on whether its FCN-score segmenter was trained or reused)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return Segmenter(n_classes, recipe.width, recipe.depth)


def train_segmenter(photos: torch.Tensor, labels: torch.Tensor, n_classes: int, recipe: Recipe) -> Segmenter:
    """Photos and class maps as load_training_set gives them -> a Segmenter in eval mode: per-pixel cross-entropy,
    a random horizontal flip per image as the only augmentation (no vertical flips: buildings stand upright).
    Deterministic for a recipe and a thread count."""
    model = new_segmenter(n_classes, recipe).train()
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
    """A cheap fingerprint of a training folder: its image files' names and contents (data_checks.contents_digest,
    as a checkpoint's train_data). Adding, removing, renaming or rewriting a file changes it; a copy, or data
    re-created with new modification times (a new machine, a restored mount), does not, so the ruler of a run
    resumed there stays the same file."""
    return contents_digest(Path(folder), list_images(folder))


def load_or_train(train_folder: str | os.PathLike, direction: str, palette: Palette, cache_path: str | os.PathLike,
                  recipe: Recipe = Recipe(), retrain: bool = False, own_cache: bool = False) -> Segmenter:
    """The segmenter for `train_folder`'s A|B files (direction: the generator's DIRECTION for labels -> photo, as in
    load_training_set), in eval mode: the one saved at `cache_path` if its fingerprint (files_fingerprint),
    direction, palette and recipe all match, else a newly trained one, saved there (the reason is printed).

    The saved file is untrusted input, checked as a checkpoint is (read_segmenter): a file that is not a readable,
    intact segmenter is a SegmenterError naming it, and is left as it is. A file made for other training files,
    direction, palette or recipe is replaced only if `own_cache` (the project's default file, see scorer_for);
    otherwise it is an error too. `retrain` trains a new one and replaces whatever file is there. A cache_path
    that is a folder (or anything but a file) is refused before any training."""
    if direction not in ("AtoB", "BtoA"):
        raise ValueError(f"direction must be AtoB or BtoA, not {direction!r}")
    cache_path = Path(cache_path)
    if os.path.lexists(cache_path) and not cache_path.is_file():
        what = "a folder" if cache_path.is_dir() else "not a regular file"
        raise SegmenterError(f"{cache_path} is {what}, not an FCN-score segmenter file; give the path of a .pt "
                             f"file (made if missing) with --segmenter")
    # saved beside the weights: plain data only, so torch.load(weights_only=True) reads the file
    wanted = {"format": SAVED_FORMAT, "fingerprint": files_fingerprint(train_folder), "direction": direction,
              "palette": [[name, list(rgb)] for name, rgb in palette], "recipe": asdict(recipe)}
    reason = f"no saved segmenter at {cache_path}"
    if retrain:
        reason = "asked to retrain" + (f", replacing {cache_path}" if cache_path.exists() else "")
    elif cache_path.exists():
        saved = read_segmenter(cache_path)
        changed = [key.replace("fingerprint", "training files") for key in wanted if saved[key] != wanted[key]]
        if not changed:
            model = new_segmenter(len(palette), recipe)
            check_segmenter_weights(model, saved["state_dict"], cache_path)
            print(f"FCN-score segmenter: reusing {cache_path} (same training files, direction, palette and recipe)")
            return model.eval()
        if not own_cache:
            differ = "differs" if len(changed) == 1 else "differ"
            raise SegmenterError(f"{cache_path} is a segmenter made for other data or settings (its "
                                 f"{', '.join(changed)} {differ} from {train_folder}'s, {direction}); {REPLACE_HINT}")
        reason = f"{cache_path} differs: " + ", ".join(changed)
    print(f"FCN-score segmenter: training on {train_folder} ({reason})")
    start, cpu = time.perf_counter(), time.process_time()
    model = train_segmenter(*load_training_set(train_folder, direction, palette, recipe.image_size), len(palette),
                            recipe)
    print(f"FCN-score segmenter: trained in {time.perf_counter() - start:.0f} s ({time.process_time() - cpu:.0f} s "
          f"CPU time, {torch.get_num_threads()} threads); saved to {cache_path}")
    atomic_save({**wanted, "state_dict": model.state_dict()}, cache_path)  # never a half-written file there
    return model


def read_segmenter(path: Path) -> dict:
    """A saved segmenter's record, read as checkpoints are (harness/checkpoint.py): weights only (a file that would
    run code is refused), its archive's size checked before loading; a SegmenterError naming the file otherwise."""
    try:
        saved = read_weights_file(path, "FCN-score segmenter", "a segmenter file this project saved")
    except CheckpointError as e:
        raise SegmenterError(f"{e}; {REPLACE_HINT}") from None  # the file is named by the message
    missing = [key for key in SAVED_KEYS if key not in saved] if isinstance(saved, dict) else []
    if not isinstance(saved, dict) or missing:
        what = f"a {type(saved).__name__}" if not isinstance(saved, dict) else f"no {', '.join(missing)}"
        raise SegmenterError(f"{path} loads, but is not an FCN-score segmenter ({what}); {REPLACE_HINT}")
    return saved


def check_segmenter_weights(model: Segmenter, state: object, path: Path) -> None:
    """Load a saved segmenter's weights into `model` after the checkpoints' checks: every tensor finite, the names
    and shapes of the recipe's Segmenter; a SegmenterError naming the file and the first bad tensor otherwise."""
    try:
        check_weights(named_tensors(state, "state_dict"), path, fix=REPLACE_HINT[0].upper() + REPLACE_HINT[1:])
        load_weights(model, state)
    except CheckpointError as e:
        text = str(e) if str(e).startswith(str(path)) else f"{path}: its weights do not fit its recipe: {e}; " \
                                                           f"{REPLACE_HINT}"
        raise SegmenterError(text) from None


# ----------------------------------------------------------------------------- scoring

class FCNScorer:
    """FCN-scores (paper §4.2), streamed over batches: each photo is segmented at the segmenter's training size, its
    logits are resized (bilinear) to its input label map's size, and the argmax is compared with that label map.
    Any named photo sets can be scored against the same label maps, e.g. generated=... and real=... (the ceiling)."""

    def __init__(self, segmenter: Segmenter, palette: Palette, image_size: int):
        self.segmenter, self.palette, self.image_size = segmenter.eval(), palette, image_size
        self.confusion: dict[str, ConfusionMatrix] = {}
        self.off_palette = OffPalette()  # the input label maps' pixels that match no class (see OffPalette)

    @torch.no_grad()
    def segment(self, photos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bx3xHxW photos in [0, 1] -> BxHxW int64 class maps of `size` (height, width), on the CPU."""
        device = next(self.segmenter.parameters()).device
        logits = self.segmenter(to_network(photos.to(device), self.image_size))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1).cpu()

    def update(self, input_labels: torch.Tensor, **photos: torch.Tensor) -> dict[str, torch.Tensor]:
        """input_labels: the generator's inputs, as label_maps takes them; photos: named Bx3xHxW batches in [0, 1].
        Returns each name's predicted BxHxW class maps (colourise shows them)."""
        true = label_maps(input_labels, self.palette, self.off_palette)
        predicted = {}
        for name, batch in photos.items():
            predicted[name] = self.segment(batch, tuple(true.shape[-2:]))
            self.confusion.setdefault(name, ConfusionMatrix(len(self.palette))).update(predicted[name], true)
        return predicted

    def result(self) -> dict[str, dict[str, float]]:
        return {name: confusion.scores() for name, confusion in self.confusion.items()}


def discovered_palette(train_folder: str | os.PathLike, direction: str) -> Palette:
    """The palette discovered from a training folder's label images (discover_palette), printed; a DatasetError if
    they hold no flat colour regions (not label maps)."""
    palette = discover_palette(read_labelled(p, direction)[0] for p in training_files(train_folder))
    if not palette:
        raise DatasetError(f"FCN-score training folder {train_folder}: its label halves ({direction}) hold no flat "
                           f"colour regions, so no label classes can be found; the FCN-score needs a labels -> "
                           f"photo dataset whose label maps are flat colours (check --direction, or give its real "
                           f"training files with --fcn-train)")
    print(f"FCN-score palette discovered in {train_folder} ({len(palette)} classes): "
          + ", ".join(f"{name} {rgb}" for name, rgb in palette))
    return palette


def dataset_palette(train_folder: str | os.PathLike, direction: str, dataset: str = "") -> Palette:
    """PALETTES[dataset] (by preset name, or the training folder's parent's name, e.g. facades), else the palette
    discovered from the training label images, printed."""
    name = dataset or Path(train_folder).resolve().parent.name
    return PALETTES[name] if name in PALETTES else discovered_palette(train_folder, direction)


def scorer_for(train_folder: str | os.PathLike, direction: str, dataset: str = "",
               cache_path: str | os.PathLike | None = None, recipe: Recipe | None = None,
               retrain: bool = False) -> tuple[FCNScorer, Path]:
    """(the FCN scorer of a labels -> photo dataset, where its segmenter is saved): the dataset's palette, and its
    segmenter trained on `train_folder` or reused. Without a cache_path it is the project's own file
    runs/fcn/<dataset>_<direction>.pt, which a change of training files, palette or recipe replaces; a file the
    user names is only replaced when `retrain` (see load_or_train)."""
    recipe = recipe or Recipe()
    palette = dataset_palette(train_folder, direction, dataset)
    name = dataset or Path(train_folder).resolve().parent.name
    own_cache = cache_path is None
    cache_path = Path(cache_path or Path("runs") / "fcn" / f"{name}_{direction}.pt")
    return FCNScorer(load_or_train(train_folder, direction, palette, cache_path, recipe, retrain, own_cache), palette,
                     recipe.image_size), cache_path


def check_segmenter(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    palette = PALETTES.get(args.preset) or discovered_palette(args.train, args.direction)
    print(f"palette ({len(palette)} classes): {palette}")
    recipe = Recipe() if args.seed is None else Recipe(seed=args.seed)
    scorer = FCNScorer(load_or_train(args.train, args.direction, palette, args.cache, recipe, args.retrain_segmenter),
                       palette, recipe.image_size)
    for path in training_files(args.test):
        labels, photo = read_labelled(path, args.direction)
        scorer.update(image_batch(labels), real=image_batch(photo) / 255)
    if warning := scorer.off_palette.warning(f"{args.test} ({args.direction})", palette):
        print(warning, file=sys.stderr)
    true = scorer.confusion["real"].counts.sum(1)
    baseline = ConfusionMatrix(len(palette))  # the best constant: the test labels' most frequent class everywhere
    baseline.counts[:, true.argmax()] = true
    for name, scores in (("real test photos", scorer.result()["real"]),
                         (f"majority class ({palette[true.argmax()][0]})", baseline.scores())):
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train (or reuse) the FCN-score segmenter; score it on real test "
                                                 "photos against their label maps, beside the majority class.")
    parser.add_argument("--train", type=path_argument(str), required=True, help="folder of A|B training files")
    parser.add_argument("--test", type=path_argument(str), required=True, help="folder of A|B test files")
    parser.add_argument("--direction", default="BtoA", choices=("AtoB", "BtoA"),
                        help="the generator's DIRECTION for labels -> photo (BtoA: photo = left half)")
    parser.add_argument("--preset", choices=sorted(PALETTES), help="known palette; without it one is discovered")
    parser.add_argument("--cache", type=path_argument(str), required=True, help="where the segmenter is saved (.pt)")
    parser.add_argument("--retrain-segmenter", action="store_true",
                        help="train a new segmenter even if --cache holds one, and replace it")
    parser.add_argument("--seed", type=int, help="the recipe's seed, if not its own (the one training scores "
                                                 "with): shows how far the ruler moves between seeds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return exit_on_error(lambda: check_segmenter(args))


if __name__ == "__main__":
    raise SystemExit(main())
