"""The training DataLoader of train.py and bench.py: how many worker processes (NUM_WORKERS, "auto" by default),
and the decoded training set kept in memory (CACHE_IMAGES), so that a GPU step does not wait for JPEG decoding.

Not run directly; harness/run.py and bench.py use it.
"""
import multiprocessing
import os
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from dataset import PairedImageDataset
from harness.data_checks import SCAN_PROGRESS_MIN_FILES, half_size
from harness.errors import DatasetError
from harness.signals import ignore_stop_signals

# NUM_WORKERS=auto never starts more per process: each worker holds a copy of torch's state, and on a GPU host more
# fed the step no faster while taking the main process's cores (docs/performance.md#on-a-gpu)
MAX_AUTO_WORKERS = 8
CACHE_MEMORY_SHARE = 0.8  # CACHE_IMAGES may take at most this share of the memory available when the run starts


def processes_on_this_node() -> int:
    """The training processes sharing this machine's cores and memory: torchrun's LOCAL_WORLD_SIZE, else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cpu_cores() -> int:
    """The cores this process may run on: a container's or taskset's limit, not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(setting: str | int) -> int:
    """NUM_WORKERS as a number: as given, or for "auto" one worker per core available to each of this machine's
    training processes, at most MAX_AUTO_WORKERS (2 on a 2-core machine, 8 on a 16-core GPU server; 0, loading in
    the main process, when the processes outnumber the cores)."""
    if setting != "auto":
        return int(setting)
    return min(MAX_AUTO_WORKERS, cpu_cores() // processes_on_this_node())


def training_loader(dataset: Any, sampler: Sampler, cfg: dict[str, Any], device: torch.device,
                    generator: torch.Generator | None = None) -> DataLoader:
    """The training DataLoader: BATCH_SIZE, NUM_WORKERS persistent workers that leave Ctrl-C to the main process,
    and pinned memory for a GPU (so the copy to it need not wait)."""
    workers = loader_workers(cfg["NUM_WORKERS"])
    return DataLoader(dataset, batch_size=cfg["BATCH_SIZE"], sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0, generator=generator,
                      worker_init_fn=ignore_stop_signals)


def available_memory() -> int | None:
    """Bytes that new allocations can take without swapping (Linux: MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # e.g. macOS has no SC_AVPHYS_PAGES
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000


def cache_images(dataset: PairedImageDataset, workers: int, say: Callable[[str], None] = print) -> None:
    """CACHE_IMAGES: decode every training pair once and keep it in memory as uint8, as read (before the per-epoch
    random jitter and flip, which stay what they are without the cache). Says what it will take first, and
    refuses (DatasetError) if that is over CACHE_MEMORY_SHARE of the available memory.

    Call it before the DataLoader starts its workers (train.py does, through TrainingRun.training_data). Workers
    started by fork share the main process's cache page by page, copy-on-write: reading an array changes only its
    small Python object's reference count, never its pixel buffer, so no worker copies the pixels. Under the
    spawn and forkserver start methods (macOS, Windows) each worker unpickles a copy of its own, which the memory
    estimate counts; so does one cache per torchrun process on this machine."""
    pixels = sum(w * h for w, h in map(half_size, dataset.pairs))  # headers only: nothing decoded yet
    size = pixels * (dataset.in_channels + dataset.out_channels)
    forked = workers == 0 or multiprocessing.get_start_method() == "fork"
    copies = processes_on_this_node() * (1 if forked else 1 + workers)
    total, available = size * copies, available_memory()
    where = f"{len(dataset)} training pairs of {dataset.folder or 'the training set'}"
    detail = f" x {copies} copies (one per process{'' if forked else ' and loader worker'})" if copies > 1 else ""
    if available is not None and total > CACHE_MEMORY_SHARE * available:
        raise DatasetError(f"CACHE_IMAGES=True: the {where} take {format_bytes(size)} decoded{detail}, more than "
                           f"{CACHE_MEMORY_SHARE:.0%} of the {format_bytes(available)} of memory available; set "
                           f"CACHE_IMAGES=False (decode them every epoch) or free memory")
    say(f"CACHE_IMAGES: keeping the {where} in memory: {format_bytes(size)} decoded{detail}"
        + (f", of {format_bytes(available)} available" if available is not None else " (available memory unknown)"))
    indices = range(len(dataset))
    if len(dataset) >= SCAN_PROGRESS_MIN_FILES:
        indices = tqdm(indices, desc="caching", unit="img", leave=False)
    dataset.cached = [tuple(frozen(a) for a in dataset.load_pair(i)) for i in indices]


def frozen(image: np.ndarray) -> np.ndarray:
    """A compact read-only copy of an array: what the estimate counted, and an augmentation that wrote into its
    input would fail instead of changing the cache for the next epochs."""
    image = np.ascontiguousarray(image)
    image.flags.writeable = False
    return image
