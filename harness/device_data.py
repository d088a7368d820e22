"""DATA_ON_DEVICE: the training pairs decoded and resized once, with dataset.py's own code, and kept as uint8 where
the step runs (the GPU's memory, or host memory when the set is over the GPU's budget); each batch is then cropped
and mirrored with one batched gather, from the same per-item seeded draws as the DataLoader's augmentation, and
turned into [-1, 1] floats through a 256-entry table computed by dataset.to_tensor. So the batches are the
DataLoader's, bit for bit (tests/test_device_data.py), and resume and determinism carry over, while no worker
decodes, resizes or collates anything after the first epoch's start.

Not run directly; train.py gets it through harness/run.py (TrainingRun.loader), bench.py through
training_batches. Where the geometry varies per image (PREPROCESS=crop, scale_width or none over mixed sizes) it
says so in one line and the DataLoader is used.
"""
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dataset import AugmentationSampler, PairedImageDataset, index_seed, resize, to_tensor
from harness.data_checks import format_sizes, half_size
from harness.errors import DatasetError
from harness.loading import (CACHE_MEMORY_SHARE, available_memory, format_bytes, loader_workers,
                             processes_on_this_node)
from harness.signals import ignore_stop_signals

GPU_MEMORY_SHARE = 0.25  # the set may take at most this share of the GPU's free memory; the rest is training's


# ----------------------------------------------------------------------------- where the set can live

@dataclass
class Plan:
    """Where the training set is kept: "device" (the step's device, also the CPU), "host" (host memory, each
    batch's crops copied to the GPU), or None (the DataLoader), and the one line that says so."""
    where: str | None
    note: str
    size: tuple[int, int] = (0, 0)  # (height, width) every pair is resized to
    nbytes: int = 0


def resized_sizes(dataset: PairedImageDataset) -> Counter:
    """Counter of (height, width) the pairs are resized to before the crop (headers only, no decoding)."""
    transform = dataset.transform
    if transform.preprocess == "resize_and_crop":  # one size whatever the files' sizes
        return Counter({transform.resized_size(0, 1): len(dataset)})
    return Counter(transform.resized_size(h, w) for w, h in map(half_size, dataset.pairs))


def free_gpu_memory(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0]


def plan_residency(setting: str | bool, dataset: PairedImageDataset, device: torch.device,
                   n_items: int | None = None) -> Plan:
    """DATA_ON_DEVICE (True, False or "auto") for this set on this device: "auto" keeps it on a CUDA device (or in
    host memory when over the GPU's budget), and leaves a CPU run to the DataLoader (measured no faster there:
    docs/performance.md). `n_items`: the pairs this process keeps (its shard under torchrun). True on a set that
    fits nowhere raises DatasetError (one line: size, free memory)."""
    if setting is False or (setting == "auto" and device.type != "cuda"):
        return Plan(None, "")  # on a CPU the step, not the loader, sets the pace: the DataLoader, as before
    sizes = resized_sizes(dataset)
    if len(sizes) > 1:
        return Plan(None, f"DATA_ON_DEVICE: the training pairs are resized to {len(sizes)} different sizes under "
                          f"PREPROCESS={dataset.transform.preprocess} ({format_sizes(sizes, 3)}), and one gather "
                          f"needs one size: loading them with the DataLoader")
    (height, width), = sizes
    n = len(dataset) if n_items is None else n_items
    nbytes = n * height * width * (dataset.in_channels + dataset.out_channels)
    host = available_memory()
    host_budget = None if host is None else CACHE_MEMORY_SHARE * host / processes_on_this_node()
    fits_host = host_budget is None or nbytes <= host_budget
    what = f"the {n} training pairs, {width}x{height} uint8 ({format_bytes(nbytes)})"
    host_text = f"{format_bytes(host)} of host memory available" if host is not None else "host memory unknown"
    if device.type == "cuda":
        free = free_gpu_memory(device)
        if nbytes <= GPU_MEMORY_SHARE * free:
            return Plan("device", f"DATA_ON_DEVICE: keeping {what} on {device}, of {format_bytes(free)} free",
                        (height, width), nbytes)
        if fits_host:
            return Plan("host", f"DATA_ON_DEVICE: keeping {what} in host memory ({host_text}; over "
                                f"{GPU_MEMORY_SHARE:.0%} of the {format_bytes(free)} free on {device}), each batch "
                                f"copied to it", (height, width), nbytes)
        where = f"{format_bytes(free)} free on {device} ({GPU_MEMORY_SHARE:.0%} of it for data) and {host_text}"
    else:
        if fits_host:
            return Plan("device" if device.type == "cpu" else "host",
                        f"DATA_ON_DEVICE: keeping {what} in memory ({host_text})", (height, width), nbytes)
        where = host_text
    if setting is True:
        raise DatasetError(f"DATA_ON_DEVICE=True: {what} do not fit: {where} (at most {CACHE_MEMORY_SHARE:.0%} of "
                           f"host memory per process); set DATA_ON_DEVICE=auto or False to load them from the files")
    return Plan(None, f"DATA_ON_DEVICE: {what} do not fit ({where}): loading them with the DataLoader")


# ----------------------------------------------------------------------------- the sampler under torchrun

class ShardSampler(AugmentationSampler):
    """Under torchrun with resident data: each rank keeps a fixed shard of the set (items rank, rank + world_size,
    ...) and draws its epoch from it, shuffled per epoch (seed + epoch), with the same per-item augmentation
    seeds; so a rank holds 1/world_size of the set. A resumed epoch skips each rank's share of the images trained.
    In a single process it is AugmentationSampler itself (bit-identical to the DataLoader's order)."""

    def shard(self) -> list[int]:
        return list(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.world_size == 1:
            yield from super().__iter__()
            return
        shard = self.shard()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = [shard[i] for i in torch.randperm(len(shard), generator=generator).tolist()] \
            if self.shuffle else shard
        order = order[self.skip // self.world_size:]
        wanted = len(self)  # every rank the same number of steps: the shorter shards repeat their first items
        order += (order * (wanted // max(len(order), 1) + 1))[:wanted - len(order)]
        for index in order[:wanted]:
            yield index, index_seed(self.seed, self.epoch, index)


# ----------------------------------------------------------------------------- decoding the set once

class ResizedPairs(Dataset):
    """Item i: pair i of `dataset` as read and resized (dataset.py's code, before the crop), HxWxC uint8."""

    def __init__(self, dataset: PairedImageDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.dataset.load_pair(self.indices[i])
        return tuple(resize([x, y], *self.dataset.transform.resized_size(*x.shape[:2])))


def decode_all(dataset: PairedImageDataset, indices: list[int], size: tuple[int, int], workers: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) as NxHxWxC uint8 host tensors, decoded by `workers` processes (0: this one)."""
    height, width = size
    x = torch.empty(len(indices), height, width, dataset.in_channels, dtype=torch.uint8)
    y = torch.empty(len(indices), height, width, dataset.out_channels, dtype=torch.uint8)
    loader = DataLoader(ResizedPairs(dataset, indices), batch_size=None, num_workers=min(workers, len(indices)),
                        worker_init_fn=ignore_stop_signals, collate_fn=as_is,
                        generator=torch.Generator())  # its worker seeds must not consume the run's random stream
    for i, (a, b) in enumerate(loader):
        x[i].numpy()[:], y[i].numpy()[:] = a, b  # numpy copies: the decoded arrays may be read-only
    return x, y


def as_is(item: Any) -> Any:
    return item


# ----------------------------------------------------------------------------- the batches

def augmentation_probe(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two HxWx1 images holding each pixel's row and column: the augmentation run on them shows where its crop
    starts and whether it mirrored, with the very draws it makes on the real pair."""
    rows = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None, None], (height, width, 1))
    cols = np.broadcast_to(np.arange(width, dtype=np.float32)[None, :, None], (height, width, 1))
    return rows, cols


def float_table() -> torch.Tensor:
    """The 256 float32 values dataset.to_tensor gives the uint8 values 0..255 (so the device's conversion is the
    host's, bit for bit, whatever the device's division)."""
    return to_tensor(np.arange(256, dtype=np.uint8).reshape(1, 256, 1)).flatten()


class ResidentBatches:
    """An iterable of (input, target) batches on `device`, like the training DataLoader over the same sampler:
    len() batches of batch_size per epoch (the last one smaller), the sampler's set_epoch deciding the epoch and
    the images it skips. Under torchrun each rank keeps and draws from its own shard (ShardSampler)."""

    def __init__(self, dataset: PairedImageDataset, sampler: AugmentationSampler, batch_size: int,
                 device: torch.device, memory_format: torch.memory_format, plan: Plan, workers: int = 0):
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.device, self.memory_format, self.plan = device, memory_format, plan
        self.order = ShardSampler(len(dataset), sampler.seed, sampler.rank, sampler.world_size, sampler.shuffle)
        keep = self.order.shard()
        self.slot = {index: slot for slot, index in enumerate(keep)}  # dataset index -> row of the stored set
        x, y = decode_all(dataset, keep, plan.size, workers)
        store = device if plan.where == "device" else torch.device("cpu")
        self.x, self.y = x.to(store), y.to(store)
        self.table = float_table().to(device)
        self.probe = augmentation_probe(*plan.size)
        self.out_h, self.out_w = dataset.transform.output_size(*plan.size)

    def epoch_order(self) -> ShardSampler:
        """This epoch's (index, seed) order: the epoch and skip train.py set on its sampler, over this rank's shard."""
        self.order.set_epoch(self.sampler.epoch, self.sampler.skip)
        return self.order

    def __len__(self) -> int:
        return math.ceil(len(self.epoch_order()) / self.batch_size)

    def crop_and_flip(self, seed: int) -> tuple[int, int, bool]:
        """(top, left, mirrored) of the augmentation this seed draws: dataset.PairTransform's own."""
        augment = self.dataset.transform.augment
        augment.set_random_seed(seed)
        out = augment(image=self.probe[0], target=self.probe[1])
        rows, cols = out["image"][:, :, 0], out["target"][:, :, 0]
        first, last = int(cols[0, 0]), int(cols[0, -1])
        return int(rows[0, 0]), min(first, last), first > last

    def batch(self, items: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        params = torch.tensor([(self.slot[i], *self.crop_and_flip(seed)) for i, seed in items], dtype=torch.int64)
        if self.device.type == "cuda":
            params = params.pin_memory()
        store = self.x.device
        params = params.to(store, non_blocking=True)
        slot, top, left, flip = params.unbind(1)
        rows = top[:, None] + torch.arange(self.out_h, device=store)
        ahead = torch.arange(self.out_w, device=store)
        cols = left[:, None] + torch.where(flip[:, None].bool(), self.out_w - 1 - ahead, ahead)
        index = (slot[:, None, None], rows[:, :, None], cols[:, None, :])
        return self.to_float(self.x[index]), self.to_float(self.y[index])

    def to_float(self, crops: torch.Tensor) -> torch.Tensor:
        """BxHxWxC uint8 crops -> BxCxHxW float32 in [-1, 1] on the device, in the step's memory layout."""
        if crops.device != self.device:
            crops = crops.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" \
                else crops.to(self.device)
        return self.table[crops.int()].permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        items = list(self.epoch_order())
        for start in range(0, len(items), self.batch_size):
            yield self.batch(items[start:start + self.batch_size])


def training_batches(dataset: PairedImageDataset, sampler: AugmentationSampler, cfg: dict[str, Any],
                     device: torch.device, memory_format: torch.memory_format,
                     say: Callable[[str], None] = print) -> ResidentBatches | None:
    """The resident batches DATA_ON_DEVICE asks for and the set allows, or None for the DataLoader (said in one
    line where the setting asked for residency and the set cannot have it)."""
    n_items = math.ceil(len(dataset) / sampler.world_size)  # this rank's shard (the first ranks' are the larger)
    plan = plan_residency(cfg["DATA_ON_DEVICE"], dataset, device, n_items)
    if plan.note:
        say(plan.note)
    if plan.where is None:
        return None
    batches = ResidentBatches(dataset, sampler, cfg["BATCH_SIZE"], device, memory_format, plan,
                              loader_workers(cfg["NUM_WORKERS"]))
    dataset.cached = None  # CACHE_IMAGES' decoded copy: the resident set replaces it (keeping both held it twice)
    return batches
