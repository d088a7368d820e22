"""Paired image data for pix2pix, in either of two layouts (detected automatically):
  A|B files        each file holds the two images side by side, split at width // 2 (the paper's datasets)
  A/ and B/        two sub-folders whose files pair up by name stem (A/1.png <-> B/1.jpg); B is resized to A's size

PREPROCESS picks the geometry, as the official code's --preprocess does: resize_and_crop (default), crop,
scale_width, scale_width_and_crop, none (see resized_size). Resizing is bicubic with antialiasing, like PIL's.

Check a folder before training (layout, pairs, sizes, bad files; config overrides like train.py's):
    python dataset.py ../shared/data/facades/train
    python dataset.py my_data/train --PREPROCESS=crop --IMAGE_SIZE=256
"""
import hashlib
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise ask PyPI on every import
import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_DATA_ROOT = Path("data/synthetic")  # config.py's default TRAIN_DIR/VAL_DIR live here
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs (PIL would only warn up to 2x its own limit)
SCAN_PROGRESS_MIN_FILES = 2000  # show a progress bar when scanning folders at least this big
PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
CROP_MODES = ("resize_and_crop", "crop", "scale_width_and_crop")  # these give IMAGE_SIZE squares
LAYOUT_NAMES = {"A|B": "A|B files (input and target side by side in one file)",
                "A/B": "A/ and B/ folders (files paired by name stem)"}


class DatasetError(ValueError):
    """A data folder or file cannot be used; the message names it and says how to fix it."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files below `folder` (nested folders included), sorted; hidden files and folders ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"data folder {folder} does not exist; set TRAIN_DIR/VAL_DIR in config.py or pass "
                           f"--TRAIN_DIR=... (python download_dataset.py facades fetches the paper's data)")
    files = []
    # os.walk does not follow symlinked folders, so a symlink loop cannot trap it
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in names if not n.startswith(".") and n.lower().endswith(IMG_EXTENSIONS)]
    if not files:
        raise DatasetError(f"data folder {folder} has no images ({', '.join(IMG_EXTENSIONS)}); it must hold "
                           f"side-by-side A|B files, or A/ and B/ folders of paired files")
    return sorted(files)


def open_image(path: Path, channels: int = 3, draft: bool = False) -> Image.Image:
    """Decode to RGB (channels=3) or L (channels=1), honouring EXIF rotation; raises DatasetError if unusable."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DatasetError(f"{path}: {im.width}x{im.height} is larger than {MAX_IMAGE_PIXELS} pixels "
                                   f"(decompression-bomb limit); downscale it or remove it")
            if draft:  # JPEG DCT scaling: a fast full read of the data that still finds truncation
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I", "F"):  # 16-bit / float grayscale: scale to 8 bit
                im = Image.fromarray((np.asarray(im, dtype=np.float32) / (257 if np.asarray(im).max() > 255 else 1))
                                     .clip(0, 255).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "P", "PA"):  # for RGB and grayscale alike
                im = im.convert("RGBA")  # palette/alpha: composite onto white rather than black
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return im.convert("RGB" if channels == 3 else "L")
    except DatasetError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); replace or remove it, "
                           f"or set BAD_FILES=skip") from None


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as it will be decoded (EXIF rotation applied), from its header only."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size if im.getexif() else im.size


def check_image(path: Path, split: bool = True) -> str | None:
    """Why `path` cannot be used (as an A|B pair if `split`, else as one half), or None if it can."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = open_image(path, draft=True)
        width, height = header_size(path)  # the full-size dimensions (draft mode shrinks them)
    except DatasetError as e:
        return str(e).split(": ", 1)[-1]
    except Exception as e:  # noqa: BLE001 - any decoder failure makes the file unusable
        return f"{type(e).__name__}: {e}"
    del im
    if split and (width < 2 or height < 1):
        return f"{width}x{height} is too small to split into A|B halves"
    if split and width % 2:
        return f"width {width} is odd, so it cannot be split into two equal A|B halves; crop one column"
    return None


def find_bad(paths: list[Path], split: bool = True, folder: str = "") -> list[tuple[Path, str]]:
    """(file, why) for every unusable file; decodes each once (progress bar on big folders)."""
    iterator = tqdm(paths, desc=f"scanning {folder}", unit="img", leave=False) \
        if len(paths) >= SCAN_PROGRESS_MIN_FILES else paths
    return [(p, why) for p in iterator if (why := check_image(p, split))]


def report_bad(bad: list[tuple[Path, str]], bad_files: str, error_head: str, skip_head: str) -> str:
    """The error text listing `bad` under `error_head` (BAD_FILES=error), or '' after printing it once (skip)."""
    if not bad:
        return ""
    listing = "\n".join(f"  {p}: {why}" for p, why in bad)
    if bad_files == "error":
        return f"{error_head}:\n{listing}"
    print(f"{skip_head}:\n{listing}", file=sys.stderr)
    return ""


def report_unusable(bad: list[tuple[Path, str]], total: int, bad_files: str, folder: str) -> str:
    return report_bad(bad, bad_files, f"{len(bad)} of {total} files in {folder or 'the data folder'} cannot be used",
                      f"skipping {len(bad)} unusable file(s) in {folder}")


def raise_if(errors: list[str]) -> None:
    if any(errors):
        raise DatasetError("\n".join(e for e in errors if e) + "\nFix or remove them, or set BAD_FILES=skip to "
                                                                "train without them.")


def scan_images(paths: list[Path], bad_files: str = "error", folder: str = "", split: bool = True) -> list[Path]:
    """Decode every file once before training, so a bad file stops the run before step 1, not in epoch 37."""
    bad = find_bad(paths, split, folder)
    raise_if([report_unusable(bad, len(paths), bad_files, folder)])
    good = [p for p in paths if p not in {b for b, _ in bad}]
    if not good:
        raise DatasetError(f"every file in {folder} is unusable; nothing to train on")
    return good


# ----------------------------------------------------------------------------- layouts

def detect_layout(folder: str | os.PathLike) -> str:
    """'A/B' if `folder` holds A/ and B/ sub-folders, else 'A|B' (side-by-side files)."""
    folder = Path(folder)
    has = {side: (folder / side).is_dir() for side in "AB"}
    if has["A"] and has["B"]:
        return "A/B"
    if has["A"] or has["B"]:
        present, missing = ("A", "B") if has["A"] else ("B", "A")
        raise DatasetError(f"{folder} has a {present}/ folder but no {missing}/ folder: for separate inputs and "
                           f"targets put them in {folder / 'A'} and {folder / 'B'} with matching file names; for "
                           f"side-by-side A|B files rename {folder / present}")
    return "A|B"


def pair_by_stem(folder: str | os.PathLike) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """A/ and B/ files paired by name without extension (sub-folders included): (pairs, unmatched with why)."""
    folder = Path(folder)
    sides: dict[str, dict[str, Path]] = {}
    for side in "AB":
        stems: dict[str, Path] = {}
        for path in list_images(folder / side):
            stem = path.relative_to(folder / side).with_suffix("").as_posix()
            if stem in stems:
                raise DatasetError(f"{stems[stem]} and {path} share the name {stem!r} in {side}/, so the pairing is "
                                   f"ambiguous; keep one of them")
            stems[stem] = path
        sides[side] = stems
    a, b = sides["A"], sides["B"]
    unmatched = [(a[s], f"no B/{s}.* to pair with") for s in a.keys() - b.keys()]
    unmatched += [(b[s], f"no A/{s}.* to pair with") for s in b.keys() - a.keys()]
    pairs = sorted((a[s], b[s]) for s in a.keys() & b.keys())
    return pairs, sorted(unmatched)


# ----------------------------------------------------------------------------- reading a pair

def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """HxWxC uint8 with C in (1, 3) -> HxWx`channels` (ITU-R 601 luma for RGB -> gray)."""
    if channels == 1 and image.shape[2] == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[:, :, None]
    return image


def read_image(path: Path | Any, channels: int = 3) -> np.ndarray:
    """One image file (or file object) -> HxWxC uint8 with C = `channels` (1 or 3), converted as training converts
    it (see open_image); grayscale keeps its channel axis. The one image reader of training, predict.py and demo.py."""
    image = np.asarray(open_image(path, channels))
    return image[:, :, None] if image.ndim == 2 else image


def split_pair(image: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """HxWxC array of an A|B file -> (input, target) halves, honouring DIRECTION."""
    half = image.shape[1] // 2
    a, b = image[:, :half], image[:, half:2 * half]
    return (a, b) if direction == "AtoB" else (b, a)


def read_pair(path: Path, direction: str, in_channels: int = 3, out_channels: int = 3,
              b_path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An A|B file (or the A file and its `b_path` partner) -> (input, target) HxWxC uint8 arrays (read-only
    views, maybe) of equal size with the requested channel counts (also used by predict.py). A B file of another
    size is resized to A's."""
    need_rgb = 3 in (in_channels, out_channels)
    if b_path is None:
        x, y = split_pair(read_image(path, 3 if need_rgb else 1), direction)
    else:
        a, b = read_image(path, 3 if need_rgb else 1), read_image(b_path, 3 if need_rgb else 1)
        b = resize([b], *a.shape[:2])[0]
        x, y = (a, b) if direction == "AtoB" else (b, a)
    return to_channels(x, in_channels), to_channels(y, out_channels)


# ----------------------------------------------------------------------------- geometry

def resize(images: list[np.ndarray], height: int, width: int) -> list[np.ndarray]:
    """Equal-size HxWxC uint8 arrays -> height x width x C, bicubic, antialiased when shrinking: the reference
    code's PIL resize. torch's uint8 path uses PIL's kernel (a = -0.5, support widened by the shrink factor):
    within 0.01 grey levels of PIL on average, and faster; cv2.INTER_CUBIC aliases when shrinking."""
    if images[0].shape[:2] == (height, width):
        return images
    # one call for all, in NHWC memory (torch's fast uint8 path; with N > 1 the output stays NHWC, no copy)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    out = F.interpolate(batch, size=(height, width), mode="bicubic", antialias=True).permute(0, 2, 3, 1).numpy()
    return list(out)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW float32 in [-1, 1] (black -1, white +1)."""
    # numpy, not torch: torch's elementwise ops go multi-threaded here, and in the main process of a busy
    # machine their thread hand-offs cost up to 100x the work itself
    chw = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    chw /= 127.5
    chw -= 1
    return torch.from_numpy(chw)


def round_to(n: float, multiple: int) -> int:
    """The multiple of `multiple` nearest to n, at least `multiple`."""
    return max(multiple, int(round(n / multiple)) * multiple)


def resized_size(height: int, width: int, preprocess: str, load_size: int, crop_size: int,
                 multiple: int) -> tuple[int, int]:
    """(height, width) an image is resized to before any crop, per PREPROCESS (official code's semantics):
      resize_and_crop        load_size x load_size, then a crop_size crop
      crop                   unchanged, then a crop_size crop
      scale_width_and_crop   width load_size, height kept in proportion (at least crop_size), then a crop
      scale_width            the same without the crop; both sides then rounded to a multiple of `multiple`
      none                   unchanged, each side rounded to the nearest multiple of `multiple` (at least one)
    The uncropped modes round to 2^NUM_DOWNS, which the U-Net needs (the official code rounds to 4)."""
    if preprocess == "resize_and_crop":
        return load_size, load_size
    if preprocess == "crop":
        return height, width
    if preprocess in ("scale_width", "scale_width_and_crop"):
        height, width = max(int(load_size * height / width), crop_size), load_size
        if preprocess == "scale_width_and_crop":
            return height, width
    if preprocess in ("scale_width", "none"):
        return round_to(height, multiple), round_to(width, multiple)
    raise ValueError(f"PREPROCESS={preprocess!r} is not one of {', '.join(PREPROCESS_MODES)}")


@dataclass
class PairTransform:
    """Resize (deterministic, from the image's size), then crop and mirror, then normalise to [-1, 1].

    albumentations' `additional_targets` draws ONE set of random parameters per call and applies it to both
    halves, so input and target always stay pixel-aligned. Not training, or JITTER off: LOAD_SIZE = IMAGE_SIZE
    and crops are centred (the official test.py also sets load_size = crop_size).
    """
    preprocess: str
    image_size: int
    load_size: int
    multiple: int
    random_crop: bool
    mirror: bool
    augment: A.Compose = field(init=False, repr=False)

    def __post_init__(self):
        steps = []
        if self.preprocess in CROP_MODES:
            crop = A.RandomCrop if self.random_crop else A.CenterCrop
            steps.append(crop(self.image_size, self.image_size))
        if self.mirror:
            steps.append(A.HorizontalFlip(p=0.5))
        self.augment = A.Compose(steps, additional_targets={"target": "image"})

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return resized_size(height, width, self.preprocess, self.load_size, self.image_size, self.multiple)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the transformed image of an input half of this size."""
        if self.preprocess in CROP_MODES:
            return self.image_size, self.image_size
        return self.resized_size(height, width)

    def too_small(self, height: int, width: int) -> str | None:
        """Why a half of this size cannot be cropped, or None."""
        h, w = self.resized_size(height, width)
        if self.preprocess in CROP_MODES and min(h, w) < self.image_size:
            return (f"{width}x{height} is smaller than the {self.image_size}x{self.image_size} crop of "
                    f"PREPROCESS={self.preprocess}; use a larger image or PREPROCESS=resize_and_crop")
        return None

    def __call__(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Equal-size HxWxC uint8 halves -> CxHxW float tensors in [-1, 1], identically transformed."""
        x, y = resize([x, y], *self.resized_size(*x.shape[:2]))
        self.augment.set_random_seed(seed)
        out = self.augment(image=x, target=y)
        return to_tensor(out["image"]), to_tensor(out["target"])


def build_transform(image_size: int, load_size: int, jitter: bool, mirror: bool, train: bool,
                    preprocess: str = "resize_and_crop", multiple: int | None = None) -> PairTransform:
    """Paper §6.2: random jitter (resize to load_size, random crop) + mirroring, identical for input and target.
    `multiple` (default image_size, i.e. 2^NUM_DOWNS of the derived depth) is what uncropped sides round to."""
    jitter = train and jitter
    return PairTransform(preprocess, image_size, load_size if jitter else image_size, multiple or image_size,
                         random_crop=jitter, mirror=train and mirror)


# ----------------------------------------------------------------------------- the dataset

class PairedImageDataset(Dataset):
    """Items are (input, target) float tensors in [-1, 1], CxHxW.

    Index with an int, or with (index, seed) from AugmentationSampler: the seed fixes that item's random
    jitter/flip, so augmentation is reproducible regardless of worker count and exactly resumable.
    `files` holds each pair's A|B file (or its A file); `skipped` the (file, why) left out with BAD_FILES=skip.
    """

    def __init__(self, folder: str | os.PathLike, direction: str = "BtoA", image_size: int = 256,
                 load_size: int = 286, jitter: bool = True, mirror: bool = True, train: bool = True,
                 in_channels: int = 3, out_channels: int = 3, bad_files: str = "error", scan: bool = True,
                 preprocess: str = "resize_and_crop", multiple: int | None = None):
        self.folder = Path(folder)
        self.layout = detect_layout(folder) if self.folder.is_dir() else "A|B"
        self.direction, self.in_channels, self.out_channels = direction, in_channels, out_channels
        self.train = train
        self.transform = build_transform(image_size, load_size, jitter, mirror, train, preprocess, multiple)
        self.skipped: list[tuple[Path, str]] = []
        errors = []
        if self.layout == "A|B":
            pairs = [(p, None) for p in list_images(folder)]
        else:
            pairs, self.skipped = pair_by_stem(folder)
            errors.append(report_bad(self.skipped, bad_files, f"{len(self.skipped)} file(s) in {folder} have no "
                                     f"partner of the same name (any extension) in the other of A/ and B/",
                                     f"skipping {len(self.skipped)} file(s) without a partner in {folder}"))
        if scan:
            pairs = self._drop_bad(pairs, bad_files, errors)
        raise_if(errors)  # unpaired and unusable files in one message
        if not pairs:
            raise DatasetError(f"every file in {folder} is unusable; nothing to train on")
        self.pairs: list[tuple[Path, Path | None]] = pairs
        self.files = [a for a, _ in pairs]

    def _drop_bad(self, pairs: list[tuple[Path, Path | None]], bad_files: str,
                  errors: list[str]) -> list[tuple[Path, Path | None]]:
        """Decode every file once before training, so a bad file stops the run before step 1, not in epoch 37."""
        files = [p for pair in pairs for p in pair if p is not None]
        bad = find_bad(files, split=self.layout == "A|B", folder=str(self.folder))
        if self.transform.preprocess == "crop":  # a crop without resizing: every half must be big enough
            bad_set = {p for p, _ in bad}
            bad += [(a, why) for a, b in pairs if not bad_set & {a, b}
                    and (why := self.transform.too_small(*self.half_size((a, b))[::-1]))]
        errors.append(report_unusable(bad, len(files), bad_files, str(self.folder)))
        bad_set = {p for p, _ in bad}
        self.skipped += bad + [(p, "its partner is unusable") for pair in pairs if bad_set & set(pair)
                               for p in pair if p is not None and p not in bad_set]
        good = [pair for pair in pairs if not bad_set & set(pair)]
        return good

    def half_size(self, pair: tuple[Path, Path | None]) -> tuple[int, int]:
        """(width, height) of a pair's halves as read (an A|B file's half; the A file)."""
        width, height = header_size(pair[0])
        return (width // 2, height) if pair[1] is None else (width, height)

    def output_sizes(self) -> Counter:
        """Counter of (height, width) the transform gives, over all pairs (reads each file's header)."""
        return Counter(self.transform.output_size(*self.half_size(p)[::-1]) for p in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.pairs[index]
        return read_pair(a, self.direction, self.in_channels, self.out_channels, b)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(0, 0, key))
        return self.transform(*self.load_pair(index), seed)


def index_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed per (run seed, epoch, item), independent of workers and processes."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class AugmentationSampler(Sampler):
    """Shuffles like DistributedSampler (seed + epoch, disjoint shards per rank) and pairs each index
    with its augmentation seed. `skip` drops the first items of an epoch, for resuming mid-epoch."""

    def __init__(self, dataset_len: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        from torch.utils.data.distributed import DistributedSampler
        self.seed, self.epoch, self.skip = seed, 0, 0
        self.order = DistributedSampler(range(dataset_len), num_replicas=world_size, rank=rank,
                                        shuffle=shuffle, seed=seed, drop_last=False)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order) - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i, index in enumerate(self.order):
            if i >= self.skip:
                yield index, index_seed(self.seed, self.epoch, index)


def dataset_arguments(cfg: dict[str, Any]) -> dict[str, Any]:
    """The PairedImageDataset arguments a config sets for both training and validation folders."""
    return dict(direction=cfg["DIRECTION"], image_size=cfg["IMAGE_SIZE"], load_size=cfg["LOAD_SIZE"],
                in_channels=cfg["IN_CHANNELS"], out_channels=cfg["OUT_CHANNELS"], bad_files=cfg["BAD_FILES"],
                preprocess=cfg["PREPROCESS"], multiple=2 ** cfg["NUM_DOWNS"])


def training_dataset(cfg: dict[str, Any], folder: str | os.PathLike | None = None) -> PairedImageDataset:
    """The training set of a config (TRAIN_DIR unless `folder`): its jitter, mirroring and every data setting."""
    return PairedImageDataset(folder or cfg["TRAIN_DIR"], jitter=cfg["JITTER"], mirror=cfg["MIRROR"], train=True,
                              **dataset_arguments(cfg))


def build_datasets(cfg: dict[str, Any]) -> tuple[PairedImageDataset, PairedImageDataset]:
    """(train, val) datasets of a config; a bad file in either folder is reported before any training."""
    kwargs = dataset_arguments(cfg)
    try:
        train_set = training_dataset(cfg)
    except DatasetError as train_error:  # scan VAL_DIR too, so one error lists the bad files of both folders
        try:
            PairedImageDataset(cfg["VAL_DIR"], train=False, **kwargs)
        except DatasetError as val_error:
            raise DatasetError(f"{train_error}\n{val_error}") from None
        raise
    val_set = PairedImageDataset(cfg["VAL_DIR"], train=False, **kwargs)
    for name, ds in (("TRAIN_DIR", train_set), ("VAL_DIR", val_set)):
        check_batchable(ds, cfg["BATCH_SIZE"], name)
    return train_set, val_set


def check_batchable(ds: PairedImageDataset, batch_size: int, name: str = "data folder") -> None:
    """An uncropped PREPROCESS keeps each image's shape: refuse a batch size > 1 over images of several sizes."""
    if batch_size == 1 or ds.transform.preprocess in CROP_MODES:
        return
    sizes = ds.output_sizes()
    if len(sizes) > 1:
        raise DatasetError(f"{name} {ds.folder}: PREPROCESS={ds.transform.preprocess} keeps each image's shape, "
                           f"giving {len(sizes)} sizes ({format_sizes(sizes)}), which cannot share a batch of "
                           f"{batch_size}; use batch size 1, images of one shape, or a cropping PREPROCESS "
                           f"({', '.join(CROP_MODES)})")


def format_sizes(sizes: Counter, limit: int = 8) -> str:
    """'256x256: 400, 512x256: 6' (width x height: count), most common first."""
    text = ", ".join(f"{w}x{h}: {n}" for (h, w), n in sizes.most_common(limit))
    return text + (f", ... ({len(sizes) - limit} more)" if len(sizes) > limit else "")


def sample_batch(ds: PairedImageDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of up to n items that share the first item's size, stacked (for sample grids)."""
    items = [ds[0]]
    for i in range(1, len(ds)):
        if len(items) == n:
            break
        if ds.transform.preprocess in CROP_MODES or ds.transform.output_size(*ds.half_size(ds.pairs[i])[::-1]) \
                == tuple(items[0][0].shape[1:]):
            items.append(ds[i])
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def ensure_default_data(cfg: dict[str, Any]) -> None:
    """Generate the embedded synthetic set when the configured folders are the defaults and missing."""
    defaults = (DEFAULT_DATA_ROOT / "train", DEFAULT_DATA_ROOT / "val")
    if (Path(cfg["TRAIN_DIR"]), Path(cfg["VAL_DIR"])) != defaults or DEFAULT_DATA_ROOT.exists():
        return
    import synthetic_data
    print(f"no dataset configured: generating the built-in synthetic labels->photo set in {DEFAULT_DATA_ROOT}/ "
          f"(see README for real data)")
    synthetic_data.generate(DEFAULT_DATA_ROOT, seed=0)


def describe(cfg: dict[str, Any], folder: str) -> str:
    """What a data folder holds, for `python dataset.py FOLDER`: layout, pairs, sizes, bad files, one item."""
    ds = PairedImageDataset(folder, direction=cfg["DIRECTION"], image_size=cfg["IMAGE_SIZE"],
                            load_size=cfg["LOAD_SIZE"], jitter=cfg["JITTER"], mirror=cfg["MIRROR"],
                            in_channels=cfg["IN_CHANNELS"], out_channels=cfg["OUT_CHANNELS"], bad_files="skip",
                            preprocess=cfg["PREPROCESS"], multiple=2 ** cfg["NUM_DOWNS"])
    halves = Counter(ds.half_size(p)[::-1] for p in ds.pairs)
    x, y = ds[0]
    lines = [f"folder:   {folder}",
             f"layout:   {LAYOUT_NAMES[ds.layout]}",
             f"pairs:    {len(ds)} usable, {len(ds.skipped)} file(s) skipped",
             f"sizes:    {len(halves)} distinct ({'A' if ds.layout == 'A/B' else 'each half'}, WxH: count): "
             f"{format_sizes(halves)}",
             f"training: PREPROCESS={cfg['PREPROCESS']} IMAGE_SIZE={cfg['IMAGE_SIZE']} LOAD_SIZE={cfg['LOAD_SIZE']} "
             f"JITTER={cfg['JITTER']} -> {format_sizes(ds.output_sizes())}; first pair: input {tuple(x.shape)}, "
             f"target {tuple(y.shape)} ({cfg['DIRECTION']})"]
    if ds.layout == "A/B":
        b_sizes = Counter(header_size(b)[::-1] for _, b in ds.pairs)
        lines.insert(4, f"B sizes:  {format_sizes(b_sizes)} (each B is resized to its A's size)")
    lines.append(f"skipped:  {len(ds.skipped)}" + "".join(f"\n  {p}: {why}" for p, why in ds.skipped))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from configurator import ConfigError, load_config
    argv = sys.argv[1:] if argv is None else argv
    folders = [a for a in argv if not a.startswith("--")]
    if len(folders) > 1 or argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 2
    try:
        cfg = load_config([a for a in argv if a.startswith("--")])
        print(describe(cfg, folders[0] if folders else cfg["TRAIN_DIR"]))
    except (ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
