"""Helpers shared by the scripts: the runtime (device, precision, autocast, seeds, RNG states) and inference
(the paper's test mode, fixed noise, [-1, 1] -> [0, 1], sample grids). Checkpoints live in checkpoint.py; its
load_generator is also importable from here.

Not run directly. In a notebook:
    from utils import load_generator
    G = load_generator("runs/pix2pix/generator.pt")   # rebuilds the U-Net from the file alone
    G = load_generator("latest_net_G.pth")            # also a generator of the official pix2pix code
"""
import contextlib
import os
import random
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from checkpoint import CheckpointError, load_checkpoint, load_generator  # noqa: F401  (the public loader)
from generator_model import use_test_mode


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names it and the valid values."""


# ----------------------------------------------------------------------------- device, precision, seeds

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"DEVICE={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"DEVICE={name!r} but {torch.cuda.device_count()} CUDA device(s) are available; "
                          f"use DEVICE=auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"DEVICE={name!r} but MPS is not available; use DEVICE=auto or cpu")
    return device


def pick_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware runs it natively, fp16 on Volta/Turing CUDA, else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        major = torch.cuda.get_device_capability(device)[0]
        # fp16 pays off only with tensor cores (Volta, compute capability 7+); older GPUs run fp32 faster
        return "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"
    if device.type == "cpu" and torch.cpu._is_amx_tile_supported():
        return "bf16"  # without AMX tiles (AVX512-BF16 alone) bf16 convolutions are slower than fp32
    return "fp32"


def memory_format_for(channels_last: str | bool, device: torch.device, batch_size: int) -> torch.memory_format:
    """CHANNELS_LAST: "auto" -> NHWC on CUDA (tensor cores) and on CPU from batch 4; NCHW for small CPU batches,
    where oneDNN's layout conversions cost more than they save (measured: 1.28x faster at batch 1, even at 4,
    1.2x slower at 16 on 2 cores)."""
    if channels_last == "auto":
        channels_last = device.type == "cuda" or (device.type == "cpu" and batch_size >= 4)
    return torch.channels_last if channels_last else torch.contiguous_format


def use_device(device: torch.device) -> None:
    """Make `device` the current CUDA device (DEVICE=cuda:N): otherwise pin-memory threads, argument-less CUDA
    calls and new contexts land on GPU 0."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op off CUDA), e.g. before reading a timer."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """DETERMINISTIC=True: deterministic kernels only, no cuDNN autotuning, so a resumed GPU run continues
    bit-exactly (slower). Otherwise let cuDNN pick the fastest kernels for our fixed input sizes."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic results
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.amp autocast for bf16/fp16; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[precision])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_states(device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """Every global RNG this process uses, in a form torch.load(weights_only=True) accepts (tensors, ints,
    tuples): the CUDA one of `device` only, so the checkpoint resumes on a machine with fewer GPUs."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else [],
    }


def set_rng_states(states: dict[str, Any], device: torch.device = torch.device("cpu")) -> None:
    random.setstate(states["python"])
    name, key, *rest = states["numpy"]
    np.random.set_state((name, key.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per GPU the saving machine had
        index = device.index if device.index is not None else 0
        cuda = cuda[index] if index < len(cuda) else None
    if device.type == "cuda" and cuda is not None:  # none saved (a CPU run): the seeded state stays
        torch.cuda.set_rng_state(cuda, device)


# ----------------------------------------------------------------------------- inference

@contextlib.contextmanager
def fixed_noise(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the RNG for a block (e.g. paper-mode dropout at test time) and give the caller's RNG state back
    afterwards, so repeated evaluations match and training's random stream is untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def test_mode(G: nn.Module, mode: str = "paper") -> Iterator[None]:
    """Run G for inference, restoring its training state afterwards.

    "paper" (§3.3): dropout on and batch-norm with the test batch's statistics; running stats are left
    untouched (momentum 0) so sampling never changes the model. "eval": ordinary eval() mode.
    """
    was_training = G.training
    momenta = use_test_mode(G, mode)
    try:
        with torch.no_grad():
            yield
    finally:
        G.train(was_training)
        for m, momentum in momenta.items():
            m.momentum = momentum


@contextlib.contextmanager
def seeded_inference(G: nn.Module, mode: str, seed: int, device: torch.device) -> Iterator[None]:
    """How every inference runs (training's samples and validation, predict.py, evaluate.py, demo.py, the
    notebook): G in its test mode without autograd, and the dropout noise of paper mode drawn from `seed`, so a
    repeat gives the same images; the caller's RNG state is given back afterwards."""
    with fixed_noise(seed, device), test_mode(G, mode):
        yield


def generate(G: nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """G(x) on `device` in `precision`, returned as float32 on that device (the network's [-1, 1] range)."""
    with autocast(device, precision):
        return G(x.to(device)).float()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] network range -> [0, 1] image range, as 3 channels so grids and metrics mix 1- and 3-channel."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def sample_grid(x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One row per image: input | generated | target, in [0, 1]."""
    import torchvision.utils as vutils
    rows = torch.stack([to_unit(x), to_unit(fake), to_unit(y)], dim=1).flatten(0, 1)
    return vutils.make_grid(rows.cpu(), nrow=3, padding=2, pad_value=1.0)

