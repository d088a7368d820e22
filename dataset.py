"""Paired image data for pix2pix, in either of two layouts (harness/data_checks.py finds the pairs and checks them):
  A|B files        each file holds the two images side by side, split at width // 2 (the paper's datasets)
  A/ and B/        two sub-folders whose files pair up by name stem (A/1.png <-> B/1.jpg); B is resized to A's size

PREPROCESS picks the geometry as the official code's --preprocess does (PairTransform.resized_size); resizing is
bicubic with antialiasing, like PIL's. Input and target always get the same crop and flip (paper §6.2).
Check a folder before training:  python -m harness.data_checks ../shared/data/facades/train
"""
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise ask PyPI on every import
import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from generator_model import ResnetGenerator
from utils import read_image

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
CROP_MODES = ("resize_and_crop", "crop", "scale_width_and_crop")  # these give IMAGE_SIZE squares
Pair = tuple[Path, Path | None]  # an A|B file, or an A file and its B partner


# ----------------------------------------------------------------------------- reading a pair

def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """HxWxC uint8 with C in (1, 3) -> HxWx`channels` (ITU-R 601 luma for RGB -> gray)."""
    if channels == 1 and image.shape[2] == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[:, :, None]
    return image


def split_pair(image: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """HxWxC array of an A|B file -> (input, target) halves, honouring DIRECTION."""
    half = image.shape[1] // 2
    a, b = image[:, :half], image[:, half:2 * half]
    return (a, b) if direction == "AtoB" else (b, a)


def read_pair(path: Path, direction: str, in_channels: int = 3, out_channels: int = 3,
              b_path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An A|B file (or an A file and its B partner, resized to A's size) -> (input, target) HxWxC uint8."""
    channels = 3 if 3 in (in_channels, out_channels) else 1
    if b_path is None:
        x, y = split_pair(read_image(path, channels), direction)
    else:
        a, b = read_image(path, channels), read_image(b_path, channels)
        b = resize([b], *a.shape[:2])[0]
        x, y = (a, b) if direction == "AtoB" else (b, a)
    return to_channels(x, in_channels), to_channels(y, out_channels)


# ----------------------------------------------------------------------------- geometry and augmentation (§6.2)

def resize(images: list[np.ndarray], height: int, width: int) -> list[np.ndarray]:
    """Equal-size HxWxC uint8 arrays -> height x width x C, bicubic, antialiased when shrinking: the reference code's
    PIL resize. torch's uint8 path uses PIL's kernel (docs/data.md gives the difference)."""
    if images[0].shape[:2] == (height, width):
        return images
    if len({image.shape for image in images}) > 1:  # IN_CHANNELS != OUT_CHANNELS: one at a time
        return [resize([image], height, width)[0] for image in images]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # NHWC memory: torch's fast uint8 path
    return list(F.interpolate(batch, size=(height, width), mode="bicubic", antialias=True).permute(0, 2, 3, 1).numpy())


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW float32 in [-1, 1] (black -1, white +1)."""
    # numpy, not torch: in a busy main process torch's threaded elementwise ops cost more than the work itself
    chw = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    chw /= 127.5
    chw -= 1
    return torch.from_numpy(chw)


class PairTransform:
    """Resize (from the image's size), then crop and mirror, then normalise to [-1, 1]. albumentations'
    `additional_targets` draws ONE set of random parameters per call for both halves: input and target stay
    pixel-aligned. Without jitter LOAD_SIZE = IMAGE_SIZE and crops are centred (as the official test.py)."""

    def __init__(self, preprocess: str, image_size: int, load_size: int, multiple: int, random_crop: bool,
                 mirror: bool):
        self.preprocess, self.image_size, self.load_size, self.multiple = preprocess, image_size, load_size, multiple
        steps = [(A.RandomCrop if random_crop else A.CenterCrop)(image_size, image_size)] \
            if preprocess in CROP_MODES else []
        self.augment = A.Compose(steps + ([A.HorizontalFlip(p=0.5)] if mirror else []),
                                 additional_targets={"target": "image"})

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image is resized to before any crop, per PREPROCESS (the official code's semantics):
          resize_and_crop        LOAD_SIZE x LOAD_SIZE, then an IMAGE_SIZE crop
          crop                   unchanged, then an IMAGE_SIZE crop
          scale_width_and_crop   width LOAD_SIZE, height kept in proportion (at least IMAGE_SIZE), then a crop
          scale_width            the same without the crop; both sides then rounded to a multiple of `multiple`
          none                   unchanged, each side rounded to the nearest multiple of `multiple` (at least one)
        The uncropped modes round to the generator's side multiple (2^NUM_DOWNS; the official code rounds to 4)."""
        def round_to(n: float) -> int:
            return max(self.multiple, int(round(n / self.multiple)) * self.multiple)
        if self.preprocess == "resize_and_crop":
            return self.load_size, self.load_size
        if self.preprocess == "crop":
            return height, width
        if self.preprocess in ("scale_width", "scale_width_and_crop"):
            height, width = max(int(self.load_size * height / width), self.image_size), self.load_size
            if self.preprocess == "scale_width_and_crop":
                return height, width
        if self.preprocess in ("scale_width", "none"):
            return round_to(height), round_to(width)
        raise ValueError(f"PREPROCESS={self.preprocess!r} is not one of {', '.join(PREPROCESS_MODES)}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the transformed image of an input half of this size."""
        return (self.image_size,) * 2 if self.preprocess in CROP_MODES else self.resized_size(height, width)

    def __call__(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Equal-size HxWxC uint8 halves -> CxHxW float tensors in [-1, 1], identically transformed."""
        x, y = resize([x, y], *self.resized_size(*x.shape[:2]))
        self.augment.set_random_seed(seed)
        out = self.augment(image=x, target=y)
        return to_tensor(out["image"]), to_tensor(out["target"])


def build_transform(cfg: dict[str, Any], train: bool) -> PairTransform:
    """paper §6.2: random jitter (resize to LOAD_SIZE, random IMAGE_SIZE crop) and mirroring while training;
    a plain resize to IMAGE_SIZE otherwise. Uncropped sides round to the generator's side multiple (2^NUM_DOWNS)."""
    jitter = train and cfg["JITTER"]
    multiple = 2 ** cfg["NUM_DOWNS"] if cfg["GENERATOR"] == "unet" else ResnetGenerator.side_multiple
    return PairTransform(cfg["PREPROCESS"], cfg["IMAGE_SIZE"], cfg["LOAD_SIZE"] if jitter else cfg["IMAGE_SIZE"],
                         multiple, random_crop=jitter, mirror=train and cfg["MIRROR"])


# ----------------------------------------------------------------------------- the dataset and its sampler

class PairedImageDataset(Dataset):
    """(input, target) float tensors in [-1, 1], CxHxW, of `pairs` (those the data checks found usable) under the
    config's DIRECTION, channels and geometry. Index with an int, or with (index, seed) from AugmentationSampler:
    the seed fixes that item's jitter and flip, whatever the number of loader workers, also after a resume.
    `folder` and `skipped`: where the pairs came from, and the files the checks left out, with why."""

    def __init__(self, pairs: list[Pair], cfg: dict[str, Any], train: bool, folder: Path | None = None,
                 skipped: list[tuple[Path, str]] | None = None):
        self.pairs, self.train = pairs, train
        self.folder, self.skipped = folder, skipped or []
        self.cached: list[tuple[np.ndarray, np.ndarray]] | None = None  # CACHE_IMAGES (harness/loading.py)
        self.direction, self.in_channels, self.out_channels = cfg["DIRECTION"], cfg["IN_CHANNELS"], cfg["OUT_CHANNELS"]
        self.transform = build_transform(cfg, train)

    @property
    def files(self) -> list[Path]:
        return [a for a, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cached is not None:  # the same uint8 arrays a read would give: the augmentation is unchanged
            return self.cached[index]
        a, b = self.pairs[index]
        try:
            return read_pair(a, self.direction, self.in_channels, self.out_channels, b)
        except (OSError, ValueError, SyntaxError) as e:  # the file changed since the check before training
            raise OSError(f"{a}: cannot be read any more ({type(e).__name__}: {e})") from None

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(0, 0, key))
        return self.transform(*self.load_pair(index), seed)


def index_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed per (run seed, epoch, item), independent of workers and processes."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class AugmentationSampler(Sampler):
    """Shuffles the set once per epoch (seed + epoch), deals it out to the processes (rank, rank + world_size, ...)
    as DistributedSampler does, and pairs each index with its augmentation seed. set_epoch(epoch, skip) leaves out
    the epoch's first `skip` images: those a stopped run had trained on, whatever its batch size or process count."""

    def __init__(self, dataset_len: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world_size, self.shuffle = dataset_len, seed, rank, world_size, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return math.ceil((self.n - self.skip) / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist() \
            if self.shuffle else list(range(self.n))
        order = order[self.skip:]
        order += (order * self.world_size)[:len(self) * self.world_size - len(order)]  # every rank: equal steps
        for index in order[self.rank::self.world_size]:
            yield index, index_seed(self.seed, self.epoch, index)
