"""Shared test fixtures: the repo root on sys.path, tiny A|B datasets, and tiny fast training settings."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# tests import the flat top-level scripts (e.g. `import train`)
sys.path.insert(0, str(ROOT))

# the real CMP Facades and Maps sets, shared beside the project (never copied into it)
FACADES = ROOT.parent / "shared" / "data" / "facades"
MAPS = ROOT.parent / "shared" / "data" / "maps"


def make_pair_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A learnable A|B pair: A = blocky colour image, B = the same blocks as a flat label map."""
    cells = rng.integers(0, 4, size=(4, 4))
    labels = np.kron(cells, np.ones((size // 4, size // 4), dtype=np.int64))
    palette_b = np.array([[0, 0, 200], [0, 128, 255], [255, 160, 0], [200, 0, 0]], dtype=np.uint8)
    palette_a = np.array([[90, 140, 200], [200, 190, 170], [60, 50, 40], [150, 40, 30]], dtype=np.uint8)
    a = palette_a[labels] + rng.integers(0, 20, size=(size, size, 3)).astype(np.uint8)
    b = palette_b[labels]
    return np.concatenate([a, b], axis=1)


def write_pairs(folder: Path, n: int, size: int = 32, seed: int = 0, ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}{ext}"
        Image.fromarray(make_pair_image(rng, size)).save(path)
        paths.append(path)
    return paths


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header says width x height (no pixels): a decompression bomb as PIL's opening sees it (it
    checks the size before decoding), without the memory to make a real one."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """tmp_path/data/{train,val}: 8 train and 4 val 32x64 A|B PNGs."""
    write_pairs(tmp_path / "data" / "train", 8, seed=0)
    write_pairs(tmp_path / "data" / "val", 4, seed=1)
    return tmp_path / "data"


def write_checkpoints_at_once(monkeypatch) -> None:
    """The run's checkpoint writer finishes each write before training goes on (it writes in the background
    otherwise): for tests that look at the files at a chosen moment, e.g. right after an epoch's save."""
    from harness.checkpoint import CheckpointWriter
    real_write = CheckpointWriter.write

    def write_now(self, files):
        real_write(self, files)
        self.wait()
    monkeypatch.setattr(CheckpointWriter, "write", write_now)


def make_dataset(folder, train: bool = True, bad_files: str = "error", scan: bool = True, multiple: int = 0,
                 **settings):
    """A checked PairedImageDataset of `folder` (harness.data_checks.checked_dataset), with config.py's defaults
    and lower-case keyword overrides of its settings (image_size=32 for IMAGE_SIZE, ...)."""
    from harness.configurator import default_settings
    from harness.data_checks import checked_dataset
    cfg = default_settings() | {k.upper(): v for k, v in settings.items()}
    cfg["NUM_DOWNS"] = (multiple or cfg["IMAGE_SIZE"]).bit_length() - 1
    return checked_dataset(folder, cfg, train=train, bad_files=bad_files, scan=scan)


def tiny_args(data: Path, run_dir: Path, **overrides) -> list[str]:
    """Command-line overrides for a seconds-long CPU run on tiny_data (32 px, narrow nets, fp32)."""
    settings = dict(TRAIN_DIR=data / "train", VAL_DIR=data / "val", RUN_DIR=run_dir, IMAGE_SIZE=32, LOAD_SIZE=36,
                    GEN_BASE_CHANNELS=8, DISC_BASE_CHANNELS=8, N_EPOCHS=1, N_EPOCHS_DECAY=1, NUM_WORKERS=0,
                    N_SAMPLES=2, PRECISION="fp32", DEVICE="cpu", CHECKPOINT_EVERY_STEPS=0,
                    CHECKPOINT_EVERY_MINUTES=0,  # last.pt at every epoch end
                    EVAL_BUDGET=0)  # tiny epochs take less time than one validation: keep every epoch's
    settings.update(overrides)
    return [f"--{k}={v}" for k, v in settings.items()]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny training run shared by the whole session (trained once, ~10 s): root/data/{train,val}
    as tiny_data, and root/run from tiny_args (2 epochs, validation every epoch): generator.pt, generator_best.pt,
    checkpoints/, log.csv, curves.png, tensorboard/. Treat it as read-only; copy files before changing them."""
    import signal
    import torch
    import train
    root = tmp_path_factory.mktemp("tiny_run")
    write_pairs(root / "data" / "train", 8, seed=0)
    write_pairs(root / "data" / "val", 4, seed=1)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # train.main installs its own
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than several threads on shared cores
    try:
        assert train.main(tiny_args(root / "data", root / "run")) == 0
    finally:
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
    return root


def require_data(folder: Path) -> Path:
    """`folder` if it holds a real dataset (a train/ folder); else a skip, or a failure where PIX2PIX_REQUIRE_DATA=1
    (set by .ci/run: CI has the data, so a moved or missing folder must fail rather than quietly skip its tests)."""
    if not (folder / "train").is_dir():
        message = f"real {folder.name} data not found at {folder} (see the DEVELOPERS guide: ../shared/data)"
        if os.environ.get("PIX2PIX_REQUIRE_DATA") == "1":
            pytest.fail(f"{message}; PIX2PIX_REQUIRE_DATA=1 requires it", pytrace=False)
        pytest.skip(message)
    return folder


@pytest.fixture
def facades() -> Path:
    return require_data(FACADES)


@pytest.fixture
def maps() -> Path:
    return require_data(MAPS)


@pytest.fixture(autouse=True)
def one_thread_and_own_signals():
    """2 cores: one torch thread per test avoids oversubscription with loader workers and subprocesses (two
    threads fighting other work can be 10x slower); train.main installs SIGINT/SIGTERM handlers, so each test
    gives pytest its own back."""
    threads, handlers = torch.get_num_threads(), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for s, h in handlers.items():
        signal.signal(s, h)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny A|B data root shared by a module's runs: root/train (8 pairs) and root/val (4 pairs)."""
    root = tmp_path_factory.mktemp("data")
    write_pairs(root / "train", 8, seed=0)
    write_pairs(root / "val", 4, seed=1)
    return root


@pytest.fixture
def cuda_flags():
    """Gives back the process-wide CUDA math switches a test sets (TF32, cuDNN autotuning; utils.set_float32_math,
    utils.set_determinism), so that they cannot leak into later tests. They can be set without a GPU."""
    switches = ((torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"),
                (torch.backends.cudnn, "benchmark"))
    saved = [getattr(obj, name) for obj, name in switches]
    yield
    for (obj, name), value in zip(switches, saved):
        setattr(obj, name, value)


# Runs a script as `python SCRIPT ARGS` would (sys.argv[3:]), with one function, sys.argv[1] = "module.name",
# replaced by a stand-in that writes the file sys.argv[2] and then waits to be interrupted: a test holds a real
# process at a known point (no timing luck), then signals it.
HOLD = r"""
import importlib, runpy, signal, sys, time
from pathlib import Path
# Ctrl-C as in a terminal: a test run started in the background (`cmd &` in a script) inherits SIGINT ignored,
# and Python then installs no KeyboardInterrupt handler in its children
signal.signal(signal.SIGINT, signal.default_int_handler)
target, ready = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[3:]
sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
module, name = target.rsplit(".", 1)
def held(*args, **kwargs):
    Path(ready).write_text("held")
    time.sleep(300)  # until the test's signal; bounded if it never comes
setattr(importlib.import_module(module), name, held)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def interrupted_at(target: str, script: str, args: list, tmp_path: Path, timeout: float = 180.0,
                   sig: int = signal.SIGINT) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS` in tmp_path, held at `target` ("module.function", see HOLD), send it one `sig`
    (SIGINT: a Ctrl-C) there and return how it ended; every wait has a timeout."""
    ready = tmp_path / "held"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, target, str(ready), str(ROOT / script), *map(str, args)],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if not ready.exists():
            proc.kill()
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"{script} never reached {target}:\n{out[-2000:]}\n{err[-2000:]}")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
