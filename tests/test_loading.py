"""harness/loading.py: NUM_WORKERS=auto from the cores this process may use, and CACHE_IMAGES: the decoded training
set in memory, augmented bit-identically to reading the files every epoch, its size said first, refused when it
would not fit, and filled before the loader's workers start (they read it, not the files).

    python -m pytest tests/test_loading.py -q
"""
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_dataset, tiny_args, write_pairs
from dataset import AugmentationSampler, index_seed
from harness import loading
from harness.errors import DatasetError
from harness.signals import shut_down_workers

CPU = torch.device("cpu")


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than this machine's cores
@pytest.mark.parametrize("cores, processes, expected", [(2, 1, 2), (1, 1, 1), (8, 1, 8), (16, 1, 8), (96, 1, 8),
                                                        (16, 4, 4), (2, 4, 0)])
def test_auto_workers_follow_the_cores_each_process_may_use(monkeypatch, cores, processes, expected):
    """One worker per core of each of this machine's torchrun processes (LOCAL_WORLD_SIZE), at most 8; a number is
    kept as it is; train.py's and bench.py's loader start that many."""
    monkeypatch.setattr(loading, "cpu_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert loading.loader_workers("auto") == expected
    assert loading.loader_workers(3) == 3
    loader = loading.training_loader([0] * 4, None, {"NUM_WORKERS": "auto", "BATCH_SIZE": 2}, CPU)
    assert loader.num_workers == expected and loader.persistent_workers == (expected > 0)
    assert not loader.pin_memory and loading.training_loader([0], None, {"NUM_WORKERS": 0, "BATCH_SIZE": 1},
                                                             torch.device("cuda")).pin_memory


def test_cores_are_those_this_process_may_run_on(monkeypatch):
    """A container or taskset limit (the affinity mask), not the machine's core count."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert loading.cpu_cores() == 3


def write_ab_folders(folder: Path, n: int) -> None:
    """A/ and B/ folders of n pairs, B at another size than A (read_pair resizes B to A's size)."""
    rng = np.random.default_rng(4)
    for i in range(n):
        for side, size in (("A", (40, 32)), ("B", (20, 16))):
            (folder / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / side / f"{i}.png")


LAYOUTS = {  # (folder maker, dataset settings): each path through read_pair and the transform
    "jitter": (lambda f: write_pairs(f, 4), dict(image_size=32, load_size=36)),
    "crop_only": (lambda f: write_pairs(f, 4), dict(image_size=16, preprocess="crop")),
    "gray": (lambda f: write_pairs(f, 4), dict(image_size=32, load_size=36, in_channels=1, out_channels=1,
                                               direction="AtoB")),
    "a_b_folders": (lambda f: write_ab_folders(f, 4), dict(image_size=32, load_size=36)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_training_set_is_augmented_bit_identically(tmp_path, layout):
    """Each item of three epochs, with its jitter/flip seed as AugmentationSampler gives it: the same tensors from
    memory as from the files; and the augmentation does change between epochs (it is not frozen by the cache)."""
    make, settings = LAYOUTS[layout]
    make(tmp_path / "train")
    files, cached = (make_dataset(tmp_path / "train", **settings) for _ in range(2))
    said = []
    loading.cache_images(cached, workers=0, say=said.append)
    assert cached.cached is not None and files.cached is None and len(said) == 1
    per_epoch = []
    for epoch in range(3):
        items = []
        for i in range(len(files)):
            key = (i, index_seed(42, epoch, i))
            (x, y), (cx, cy) = files[key], cached[key]
            assert torch.equal(x, cx) and torch.equal(y, cy), (layout, epoch, i)
            items.append(cx)
        per_epoch.append(items)
    assert any(not torch.equal(a, b) for a, b in zip(per_epoch[0], per_epoch[1]))
    assert all(not a.flags.writeable for pair in cached.cached for a in pair)  # the cache cannot be written to


def test_cache_says_its_size_first_and_refuses_what_would_not_fit(tmp_path, monkeypatch):
    """The estimate (from the files' headers, before decoding) is the cache's real size; over 80 % of the available
    memory it is a one-line DatasetError naming the setting and the way out, and nothing is cached. Every
    torchrun process on the machine holds its own cache, and so does every worker where workers are not forked."""
    write_pairs(tmp_path / "train", 4, size=32)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    size = 4 * 2 * 32 * 32 * 3  # 4 pairs of two 32x32 RGB halves, uint8
    monkeypatch.setattr(loading, "available_memory", lambda: size)
    with pytest.raises(DatasetError) as err:
        loading.cache_images(dataset, 0, say=lambda text: pytest.fail("said before refusing"))
    message = str(err.value)
    assert "\n" not in message and "CACHE_IMAGES=True" in message and "CACHE_IMAGES=False" in message
    assert loading.format_bytes(size) in message and dataset.cached is None

    monkeypatch.setattr(loading, "available_memory", lambda: 2 * size)
    said = []
    loading.cache_images(dataset, 2, say=said.append)
    assert said == [f"CACHE_IMAGES: keeping the 4 training pairs of {tmp_path / 'train'} in memory: "
                    f"{loading.format_bytes(size)} decoded, of {loading.format_bytes(2 * size)} available"]
    assert sum(a.nbytes for pair in dataset.cached for a in pair) == size

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 processes: 2 caches, 2 x size > 80 % of 2 x size
    with pytest.raises(DatasetError, match="x 2 copies"):
        loading.cache_images(dataset, 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(loading.multiprocessing, "get_start_method", lambda: "spawn")  # macOS, Windows
    with pytest.raises(DatasetError, match="x 3 copies"):
        loading.cache_images(dataset, 2)  # the main process and 2 workers, each with its own


def test_loader_workers_read_the_cache_filled_before_they_started(tmp_path):
    """Filled in the main process before the workers start, the cache is what they read: with the files gone,
    a worker still delivers every batch (copy-on-write pages after fork; a pickled copy under spawn)."""
    paths = write_pairs(tmp_path / "train", 4)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    loading.cache_images(dataset, 1, say=lambda text: None)
    for path in paths:
        path.unlink()
    loader = loading.training_loader(dataset, AugmentationSampler(len(dataset), 0), {"NUM_WORKERS": 1,
                                                                                      "BATCH_SIZE": 2}, CPU)
    try:
        batches = [x.shape[0] for x, _ in loader]
    finally:
        shut_down_workers(loader)
    assert batches == [2, 2]


def test_a_cached_run_trains_bit_identically_and_says_what_it_caches(tiny_run, tmp_path, capsys):
    """train.py with CACHE_IMAGES=True: the same generator, bit for bit, as the session's run reading its files."""
    import train
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert train.main(tiny_args(tiny_run / "data", tmp_path / "run", CACHE_IMAGES=True)) == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert f"CACHE_IMAGES: keeping the 8 training pairs of {tiny_run / 'data' / 'train'} in memory" \
        in capsys.readouterr().out
    mine, theirs = (torch.load(d / "generator.pt", weights_only=True)["generator"]
                    for d in (tmp_path / "run", tiny_run / "run"))
    assert mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())
