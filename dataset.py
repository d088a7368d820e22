"""Paired A|B image data for pix2pix: each file holds the two images side by side, split at width // 2.

Quick check of a folder (scans every file, prints the bad ones, shows one augmented pair's shapes):
    python dataset.py ../shared/data/facades/train
"""
import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise ask PyPI on every import
import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_DATA_ROOT = Path("data/synthetic")  # config.py's default TRAIN_DIR/VAL_DIR live here
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs (PIL would only warn up to 2x its own limit)
SCAN_PROGRESS_MIN_FILES = 2000  # show a progress bar when scanning folders at least this big


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
                           f"side-by-side A|B files")
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


def check_image(path: Path) -> str | None:
    """Why `path` cannot be used as an A|B pair, or None if it can."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = open_image(path, draft=True)
        with Image.open(path) as header:  # the full-size dimensions (draft mode shrinks them)
            width, height = ImageOps.exif_transpose(header).size if header.getexif() else header.size
    except DatasetError as e:
        return str(e).split(": ", 1)[-1]
    except Exception as e:  # noqa: BLE001 - any decoder failure makes the file unusable
        return f"{type(e).__name__}: {e}"
    del im
    if width < 2 or height < 1:
        return f"{width}x{height} is too small to split into A|B halves"
    if width % 2:
        return f"width {width} is odd, so it cannot be split into two equal A|B halves; crop one column"
    return None


def scan_images(paths: list[Path], bad_files: str = "error", folder: str = "") -> list[Path]:
    """Decode every file once before training, so a bad file stops the run before step 1, not in epoch 37."""
    bad = []
    iterator = tqdm(paths, desc=f"scanning {folder}", unit="img", leave=False) \
        if len(paths) >= SCAN_PROGRESS_MIN_FILES else paths
    for p in iterator:
        reason = check_image(p)
        if reason:
            bad.append((p, reason))
    if bad:
        listing = "\n".join(f"  {p}: {why}" for p, why in bad)
        if bad_files == "error":
            raise DatasetError(f"{len(bad)} of {len(paths)} files in {folder or 'the data folder'} cannot be used:\n"
                               f"{listing}\nFix or remove them, or set BAD_FILES=skip to train without them.")
        print(f"skipping {len(bad)} unusable file(s) in {folder}:\n{listing}", file=sys.stderr)
    good = [p for p in paths if p not in {b for b, _ in bad}]
    if not good:
        raise DatasetError(f"every file in {folder} is unusable; nothing to train on")
    return good


def split_pair(image: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """HxWxC array of an A|B file -> (input, target) halves, honouring DIRECTION."""
    half = image.shape[1] // 2
    a, b = image[:, :half], image[:, half:2 * half]
    return (a, b) if direction == "AtoB" else (b, a)


def read_pair(path: Path, direction: str, in_channels: int = 3, out_channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An A|B file -> (input, target) HxWxC uint8 arrays with the requested channel counts (also used by predict.py)."""
    image = np.asarray(open_image(path, 3 if 3 in (in_channels, out_channels) else 1))
    if image.ndim == 2:
        image = image[:, :, None]
    x, y = split_pair(image, direction)
    if in_channels == 1 and x.shape[2] == 3:
        x = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY)[:, :, None]
    if out_channels == 1 and y.shape[2] == 3:
        y = cv2.cvtColor(np.ascontiguousarray(y), cv2.COLOR_RGB2GRAY)[:, :, None]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def build_transform(image_size: int, load_size: int, jitter: bool, mirror: bool, train: bool) -> A.Compose:
    """Paper §6.2: random jitter (resize to load_size, random crop) + mirroring, identical for input and target.

    `additional_targets` makes albumentations draw ONE set of random parameters per call and apply it to
    both halves, so input and target always stay pixel-aligned. Eval: deterministic resize only.
    """
    if train and jitter:
        steps = [A.Resize(load_size, load_size, interpolation=cv2.INTER_CUBIC), A.RandomCrop(image_size, image_size)]
    else:
        steps = [A.Resize(image_size, image_size, interpolation=cv2.INTER_CUBIC)]
    if train and mirror:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.append(A.Normalize(mean=0.5, std=0.5, max_pixel_value=255.0))  # -> [-1, 1]
    return A.Compose(steps, additional_targets={"target": "image"})


class PairedImageDataset(Dataset):
    """Items are (input, target) float tensors in [-1, 1], CxHxW.

    Index with an int, or with (index, seed) from AugmentationSampler: the seed fixes that item's random
    jitter/flip, so augmentation is reproducible regardless of worker count and exactly resumable.
    """

    def __init__(self, folder: str | os.PathLike, direction: str = "BtoA", image_size: int = 256,
                 load_size: int = 286, jitter: bool = True, mirror: bool = True, train: bool = True,
                 in_channels: int = 3, out_channels: int = 3, bad_files: str = "error", scan: bool = True):
        self.folder = Path(folder)
        self.files = list_images(folder)
        if scan:
            self.files = scan_images(self.files, bad_files, str(folder))
        self.direction, self.in_channels, self.out_channels = direction, in_channels, out_channels
        self.train = train
        self.transform = build_transform(image_size, load_size, jitter, mirror, train)

    def __len__(self) -> int:
        return len(self.files)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_pair(self.files[index], self.direction, self.in_channels, self.out_channels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(0, 0, key))
        x, y = self.load_pair(index)
        self.transform.set_random_seed(seed)
        out = self.transform(image=x, target=y)
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
        return to_tensor(out["image"]), to_tensor(out["target"])


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


def build_datasets(cfg: dict[str, Any]) -> tuple[PairedImageDataset, PairedImageDataset]:
    """(train, val) datasets of a config; a bad file in either folder is reported before any training."""
    kwargs = dict(direction=cfg["DIRECTION"], image_size=cfg["IMAGE_SIZE"], load_size=cfg["LOAD_SIZE"],
                  in_channels=cfg["IN_CHANNELS"], out_channels=cfg["OUT_CHANNELS"], bad_files=cfg["BAD_FILES"])
    try:
        train_set = PairedImageDataset(cfg["TRAIN_DIR"], jitter=cfg["JITTER"], mirror=cfg["MIRROR"], train=True,
                                       **kwargs)
    except DatasetError as train_error:  # scan VAL_DIR too, so one error lists the bad files of both folders
        try:
            PairedImageDataset(cfg["VAL_DIR"], train=False, **kwargs)
        except DatasetError as val_error:
            raise DatasetError(f"{train_error}\n{val_error}") from None
        raise
    return train_set, PairedImageDataset(cfg["VAL_DIR"], train=False, **kwargs)


def ensure_default_data(cfg: dict[str, Any]) -> None:
    """Generate the embedded synthetic set when the configured folders are the defaults and missing."""
    defaults = (DEFAULT_DATA_ROOT / "train", DEFAULT_DATA_ROOT / "val")
    if (Path(cfg["TRAIN_DIR"]), Path(cfg["VAL_DIR"])) != defaults or DEFAULT_DATA_ROOT.exists():
        return
    import synthetic_data
    print(f"no dataset configured: generating the built-in synthetic labels->photo set in {DEFAULT_DATA_ROOT}/ "
          f"(see README for real data)")
    synthetic_data.generate(DEFAULT_DATA_ROOT, seed=0)


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_DATA_ROOT / "train")
    ds = PairedImageDataset(folder, bad_files="skip")
    x, y = ds[0]
    print(f"{len(ds)} usable images in {folder}; first pair: input {tuple(x.shape)}, target {tuple(y.shape)}")
