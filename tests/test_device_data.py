"""harness/device_data.py (DATA_ON_DEVICE): the training set decoded once and kept where the step runs, each batch
cropped and mirrored by one gather. On the CPU: its batches are the DataLoader's, bit for bit, over several epochs
and seeds, a resumed epoch's skip included; a set whose geometry varies per image falls back to the DataLoader
with one line; DATA_ON_DEVICE=True on a set that does not fit stops in one line before training; under torchrun
each rank holds only its shard.

    python -m pytest tests/test_device_data.py -q
"""
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_dataset, tiny_args, write_pairs
from dataset import AugmentationSampler
from harness import device_data, loading
from harness.device_data import Plan, ResidentBatches, ShardSampler, plan_residency, training_batches
from harness.errors import DatasetError
from test_loading import LAYOUTS

CPU = torch.device("cpu")
GEOMETRIES = LAYOUTS | {  # the paths through the augmentation beyond test_loading's: no jitter, no mirror
    "no_jitter": (lambda f: write_pairs(f, 5), dict(image_size=32, load_size=36, jitter=False)),
    "no_mirror": (lambda f: write_pairs(f, 5), dict(image_size=32, load_size=36, mirror=False)),
    "scale_width": (lambda f: write_pairs(f, 5), dict(image_size=32, load_size=32, preprocess="scale_width")),
}


def resident(dataset, sampler, batch_size: int, memory_format=torch.contiguous_format) -> ResidentBatches:
    plan = plan_residency(True, dataset, CPU)
    assert plan.where == "device", plan
    return ResidentBatches(dataset, sampler, batch_size, CPU, memory_format, plan)


@pytest.mark.parametrize("layout", GEOMETRIES)
@pytest.mark.parametrize("seed", [0, 42, 1234])
def test_resident_batches_are_the_loaders_bit_for_bit(tmp_path, layout, seed):
    """Three epochs and a resumed fourth (its first 3 images skipped), batch 2 (the last batch smaller): every
    input and target tensor equal to the training DataLoader's, in order; and the crops do change between epochs."""
    make, settings = GEOMETRIES[layout]
    make(tmp_path / "train")
    dataset = make_dataset(tmp_path / "train", **settings)
    sampler = AugmentationSampler(len(dataset), seed)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=0)
    batches = resident(dataset, sampler, 2)
    firsts = []
    for epoch, skip in ((0, 0), (1, 0), (2, 0), (3, 3)):
        sampler.set_epoch(epoch, skip=skip)
        ours, theirs = list(batches), list(loader)
        assert len(ours) == len(theirs) == len(batches) == len(loader) > 0
        for n, ((x, y), (lx, ly)) in enumerate(zip(ours, theirs)):
            assert x.dtype == lx.dtype == torch.float32 and x.shape == lx.shape, (epoch, n)
            assert torch.equal(x, lx) and torch.equal(y, ly), (layout, seed, epoch, n)
        firsts.append(ours[0][0])
    if settings.get("jitter", True) and settings.get("mirror", True) and "preprocess" not in settings:
        assert not all(torch.equal(firsts[0], f) for f in firsts[1:3])


def test_channels_last_batches_hold_the_same_values(tmp_path):
    """In the step's NHWC layout (CHANNELS_LAST), the same values, laid out as the step wants them."""
    write_pairs(tmp_path / "train", 6)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    sampler = AugmentationSampler(len(dataset), 3)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler)
    for (x, y), (lx, ly) in zip(resident(dataset, sampler, 3, torch.channels_last), loader):
        assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, lx) and torch.equal(y, ly)


def test_mixed_sizes_fall_back_to_the_loader_and_say_why_in_one_line(tmp_path):
    """PREPROCESS=crop over images of two sizes: no single stored size, so the DataLoader; one line says why."""
    write_pairs(tmp_path / "train", 2, size=40, seed=5)
    for i, path in enumerate(sorted((tmp_path / "train").glob("*.png"))):
        path.rename(tmp_path / "train" / f"big{i}.png")  # write_pairs names files 000, 001, ...
    write_pairs(tmp_path / "train", 3, size=32)
    dataset = make_dataset(tmp_path / "train", image_size=16, preprocess="crop")
    said = []
    for setting, device in (("auto", torch.device("cuda", 0)), (True, CPU)):  # a GPU's default, and asked for
        cfg = {"DATA_ON_DEVICE": setting, "BATCH_SIZE": 1, "NUM_WORKERS": 0}
        assert training_batches(dataset, AugmentationSampler(len(dataset), 0), cfg, device,
                                torch.contiguous_format, say=said.append) is None
    assert len(said) == 2 and all("\n" not in line for line in said)
    assert said[0].startswith("DATA_ON_DEVICE: the training pairs are resized to 2 different sizes under "
                              "PREPROCESS=crop") and said[0].endswith("loading them with the DataLoader")
    assert "32x32" in said[0] and "40x40" in said[0]
    assert training_batches(dataset, AugmentationSampler(len(dataset), 0), {"DATA_ON_DEVICE": False}, CPU,
                            torch.contiguous_format, say=said.append) is None and len(said) == 2  # False: silent


def test_a_set_that_does_not_fit_is_refused_in_one_line_or_loaded_from_files(tmp_path, monkeypatch):
    """DATA_ON_DEVICE=True: one DatasetError line with the set's size and the free memory; "auto" on a GPU: the
    DataLoader, said in one line; a set that fits: kept, said with its size; "auto" on a CPU: the DataLoader."""
    write_pairs(tmp_path / "train", 4)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    size = 4 * 36 * 36 * 6  # 4 pairs, resized to 36x36, 3 + 3 channels of uint8
    monkeypatch.setattr(device_data, "available_memory", lambda: 500)
    with pytest.raises(DatasetError) as error:
        plan_residency(True, dataset, CPU)
    message = str(error.value)
    assert "\n" not in message and f"({loading.format_bytes(size)})" in message and "500 B of host memory" in message
    assert message.startswith("DATA_ON_DEVICE=True: the 4 training pairs, 36x36 uint8")
    monkeypatch.setattr(device_data, "free_gpu_memory", lambda device: 500)
    auto = plan_residency("auto", dataset, torch.device("cuda", 0))
    assert auto.where is None and "do not fit" in auto.note and auto.note.endswith("with the DataLoader")
    monkeypatch.setattr(device_data, "available_memory", lambda: 10 ** 9)
    fits = plan_residency(True, dataset, CPU)
    assert fits == Plan("device", fits.note, (36, 36), size) and loading.format_bytes(size) in fits.note
    assert plan_residency("auto", dataset, CPU) == Plan(None, "")  # the CPU's default: the DataLoader, silently


def test_a_gpu_without_room_keeps_the_set_in_host_memory(tmp_path, monkeypatch):
    """On a GPU whose free memory is too small for its share, the set stays on the host (batches are copied)."""
    write_pairs(tmp_path / "train", 4)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(device_data, "available_memory", lambda: 10 ** 9)
    monkeypatch.setattr(device_data, "free_gpu_memory", lambda device: 10 ** 9)
    assert plan_residency("auto", dataset, cuda).where == "device"
    monkeypatch.setattr(device_data, "free_gpu_memory", lambda device: 500)
    host = plan_residency(True, dataset, cuda)
    assert host.where == "host" and "in host memory" in host.note and "500 B free on cuda:0" in host.note
    monkeypatch.setattr(device_data, "available_memory", lambda: 1000)
    with pytest.raises(DatasetError, match="500 B free on cuda:0"):
        plan_residency(True, dataset, cuda)


@pytest.mark.parametrize("n, world_size", [(8, 2), (7, 2), (5, 3)])
def test_each_rank_holds_and_draws_only_its_shard(tmp_path, n, world_size):
    """Under torchrun: the ranks' stored shards are disjoint and cover the set; each epoch every rank draws only
    from its own, reshuffled per epoch, all ranks taking the same number of steps; a resumed epoch skips each
    rank's share."""
    write_pairs(tmp_path / "train", n)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    stored, orders = [], {}
    for rank in range(world_size):
        batches = resident(dataset, AugmentationSampler(n, 42, rank, world_size), 1)
        assert len(batches.x) == len(batches.slot) == len(range(rank, n, world_size))
        stored.append(set(batches.slot))
        for epoch in range(2):
            batches.sampler.set_epoch(epoch)
            orders[rank, epoch] = [i for i, _ in batches.epoch_order()]
            assert set(orders[rank, epoch]) == stored[rank] and len(batches) == -(-n // world_size)
            assert len(list(batches)) == len(batches)
        batches.sampler.set_epoch(2, skip=world_size)
        assert len(batches) == -(-(n - world_size) // world_size)
    assert set().union(*stored) == set(range(n)) and sum(map(len, stored)) == n
    reshuffled = [orders[r, 0] != orders[r, 1] for r in range(world_size) if len(stored[r]) > 2]
    assert not reshuffled or any(reshuffled)
    one = ShardSampler(n, 42)
    assert list(one) == list(AugmentationSampler(n, 42))  # a single process: the DataLoader's own order


def run_main(args: list[str]) -> int:
    """train.main through the errors convention (exit code, one line on stderr), giving pytest its signal handlers
    back (train.main installs its own)."""
    import signal

    import train
    from harness.errors import exit_on_error
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return exit_on_error(lambda: train.main(args))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def test_a_resident_run_trains_bit_identically_to_the_loaders(tiny_run, tmp_path, capsys):
    """train.py with DATA_ON_DEVICE=True: the same generator, bit for bit, as the session's run through the
    DataLoader, and it said where it kept the set."""
    assert run_main(tiny_args(tiny_run / "data", tmp_path / "run", DATA_ON_DEVICE=True)) == 0
    assert "DATA_ON_DEVICE: keeping the 8 training pairs, 36x36 uint8" in capsys.readouterr().out
    mine, theirs = (torch.load(d / "generator.pt", weights_only=True)["generator"]
                    for d in (tmp_path / "run", tiny_run / "run"))
    assert mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())


def test_data_on_device_true_on_a_set_that_does_not_fit_stops_before_training(tiny_run, tmp_path, monkeypatch,
                                                                                 capsys):
    """One line on stderr with the set's size and the free memory, exit 1, nothing trained or saved."""
    monkeypatch.setattr(device_data, "available_memory", lambda: 500)
    assert run_main(tiny_args(tiny_run / "data", tmp_path / "run", DATA_ON_DEVICE=True)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: DATA_ON_DEVICE=True: the 8 training pairs, 36x36 uint8")
    assert "500 B of host memory available" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_over_mixed_sizes_says_why_it_loads_from_files(tmp_path, capsys):
    """PREPROCESS=crop over two image sizes (batch 1): the run prints the one line and trains from the DataLoader."""
    write_pairs(tmp_path / "data" / "train", 2, size=36)
    for i, path in enumerate(sorted((tmp_path / "data" / "train").glob("*.png"))):
        path.rename(tmp_path / "data" / "train" / f"small{i}.png")
    write_pairs(tmp_path / "data" / "train", 2, size=40, seed=3)
    write_pairs(tmp_path / "data" / "val", 2, size=32, seed=1)
    args = tiny_args(tmp_path / "data", tmp_path / "run", DATA_ON_DEVICE=True, PREPROCESS="crop",
                     N_EPOCHS_DECAY=0, VAL_EVERY=0, SAMPLE_EVERY=0)
    assert run_main(args) == 0
    out = capsys.readouterr().out
    assert "DATA_ON_DEVICE: the training pairs are resized to 2 different sizes under PREPROCESS=crop" in out
    assert (tmp_path / "run" / "generator.pt").is_file()


def test_the_resident_set_replaces_the_cache_images_copy(tmp_path):
    """CACHE_IMAGES then DATA_ON_DEVICE: once the resident set is built, the dataset's decoded copy is let go (both
    held the set twice), and the batches are still the DataLoader's."""
    write_pairs(tmp_path / "train", 5)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    loading.cache_images(dataset, workers=0, say=lambda text: None)
    assert dataset.cached is not None
    sampler = AugmentationSampler(len(dataset), 0)
    batches = training_batches(dataset, sampler, {"DATA_ON_DEVICE": True, "BATCH_SIZE": 2, "NUM_WORKERS": 0}, CPU,
                               torch.contiguous_format, say=lambda text: None)
    assert isinstance(batches, ResidentBatches) and dataset.cached is None
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=0)
    assert all(torch.equal(a, b) for ours, theirs in zip(batches, loader, strict=True) for a, b in zip(ours, theirs))


# ----------------------------------------------------------------------------- resuming an epoch ordered otherwise

@pytest.mark.parametrize("saved_shards", [1, 2])
def test_a_resume_mid_epoch_says_when_the_epochs_order_changed(tiny_run, tmp_path, capsys, saved_shards):
    """Resident shards (DATA_ON_DEVICE under torchrun) order an epoch per process; the DataLoader and one process
    shuffle the whole set. A checkpoint made mid-epoch under one order and resumed under another cannot skip
    exactly the images already trained: the run says so. The same order resumes without a word."""
    import shutil
    import train
    from harness.checkpoint import load_checkpoint
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    last = run / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)  # the end of epoch 2, rewritten as 2 images into it
    torch.save({**ckpt, "epoch": 1, "images_in_epoch": 2, "shards": saved_shards}, last)
    capsys.readouterr()
    assert train.main(tiny_args(tiny_run / "data", run, DATA_ON_DEVICE=False)) == 0  # one process: one shuffle
    out = capsys.readouterr().out
    note = f"note: {last} stopped in an epoch ordered by 2 processes' resident shards, and this run orders it as one " \
           f"shuffle of the whole set"
    assert (note in out) == (saved_shards == 2), out
    assert load_checkpoint(last)["shards"] == 1  # what this run's checkpoints say now
