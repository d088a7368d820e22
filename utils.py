"""The runtime a training or inference run picks for this machine (device, precision, memory layout, DDP and
compile wrapping), seeds, the one image-file reader (read_image: EXIF, 16-bit, alpha, decompression bombs), how
every inference runs (test_mode), and small image helpers.

Not run directly. In a notebook:
    from utils import pick_device, to_unit
    device = pick_device("auto")   # cuda > mps > cpu
(A trained generator loads with harness.checkpoint.load_generator.)
"""
import contextlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps

from generator_model import set_test_mode
from pix2pix import real_and_fake_scores


# ----------------------------------------------------------------------------- device, precision, seeds

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)  # checked by the configurator (harness/configurator.py: check_device)


PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")  # PRECISION's values (docs/precision.md)


def pick_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware runs it natively, fp16 on Volta/Turing CUDA, else fp32 (never tf32: on
    Ampere+ GPUs bf16 is faster still, and fp32 stays IEEE). tf32 off CUDA is fp32: TF32 is a CUDA tensor-core mode."""
    if name == "tf32" and device.type != "cuda":
        return "fp32"
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
    where oneDNN's layout conversions cost more than they save (measured both ways in docs/performance.md)."""
    if channels_last == "auto":
        channels_last = device.type == "cuda" or (device.type == "cpu" and batch_size >= 4)
    return torch.channels_last if channels_last else torch.contiguous_format


def set_float32_math(precision: str, device: torch.device) -> None:
    """What fp32 means on a GPU. PyTorch lets cuDNN run fp32 convolutions as TF32 (a 10-bit mantissa) on Ampere+
    GPUs by default, so its fp32 is not IEEE fp32 there and scores differ from the CPU's. Here "fp32" is IEEE fp32
    on every device, and "tf32" turns TF32 on for convolutions and matrix products. With bf16/fp16 autocast the
    convolutions run in 16 bits anyway, and what stays in fp32 is IEEE. A no-op off CUDA (the flags are CUDA's)."""
    if device.type == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32  # PyTorch's own TF32 switches, as its CUDA notes name them
        torch.backends.cudnn.allow_tf32 = tf32


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
    """torch.amp autocast for bf16/fp16; a no-op context for fp32 and tf32 (set_float32_math sets which)."""
    if precision in ("fp32", "tf32"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[precision])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


@dataclass
class Runtime:
    """Where and how a run computes: device, precision ("fp32", "tf32", "bf16", "fp16"), memory layout, autocast."""
    device: torch.device
    precision: str
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def amp(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)


def pick_runtime(cfg: dict[str, Any], local_rank: int | None = None) -> Runtime:
    """DEVICE, PRECISION, CHANNELS_LAST and DETERMINISTIC for this machine. Under torchrun (`local_rank`) each
    process takes its own GPU, GPU local_rank, when DEVICE is auto or cuda; DEVICE=cpu stays on the CPU (gloo, see
    harness/distributed.py), also on a machine with GPUs."""
    device = pick_device(cfg["DEVICE"])
    if local_rank is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    use_device(device)
    set_determinism(cfg["DETERMINISTIC"], device)
    precision = pick_precision(cfg["PRECISION"], device)
    set_float32_math(precision, device)
    return Runtime(device, precision, memory_format_for(cfg["CHANNELS_LAST"], device, cfg["BATCH_SIZE"]))


def ddp(module: nn.Module, device: torch.device | None) -> nn.Module:
    """`module` under DistributedDataParallel, with ddp_options."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, **ddp_options(module, device))


def ddp_options(module: nn.Module, device: torch.device | None) -> dict:
    """DistributedDataParallel's options for train.py's step:
      - buffers synced before each forward (forward_sync_buffers, formerly broadcast_buffers) only where batch norm
        keeps per-process running statistics (NORM=batch without SYNC_BN): rank 0's, so every rank (and the
        checkpoint) holds the same; instance norm has none and SyncBatchNorm's are the same everywhere already (at
        the start DDP broadcasts rank 0's buffers either way);
      - on GPUs, gradient_as_bucket_view (the gradients are views of the all-reduce buckets: no copy in or out of
        them) and static_graph (every step runs the same forward and backward, D's pair of calls included, so DDP
        fixes its bucket order after the first step). With gloo on a CPU both measured slower (docs/performance.md),
        so CPU processes keep DDP's defaults there."""
    cuda = device is not None and device.type == "cuda"
    return dict(device_ids=[device] if cuda else None, forward_sync_buffers=has_own_statistics(module),
                gradient_as_bucket_view=cuda, static_graph=cuda)


def has_own_statistics(module: nn.Module) -> bool:
    """True if `module` has batch norm whose running statistics differ between processes (not SyncBatchNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               and m.track_running_stats for m in module.modules())


def wrap_for_training(m: Any, compile: bool | str, world_size: int = 1, device: torch.device | None = None) -> None:
    """Set the networks a pix2pix.Pix2Pix trains through (G_run, D_pairs, D_run): DDP across processes (the D
    step's pair of D calls as one module, RealFakeScores, so DDP sees one forward per backward), then torch.compile
    (COMPILE=True), or torch.compile with mode="reduce-overhead" (COMPILE="reduce-overhead": CUDA graphs replay a
    step's hundreds of kernel launches at once, for small batches, where launching them bounds a GPU step).
    Checkpoints keep saving the plain m.G, m.D."""
    if world_size > 1 or compile:
        m.D_pairs = RealFakeScores(m.D)
    if world_size > 1:
        m.G_run, m.D_pairs = ddp(m.G, device), ddp(m.D_pairs, device)
    if compile:
        options = {"mode": compile} if isinstance(compile, str) else {}
        m.G_run, m.D_pairs, m.D_run = (torch.compile(net, **options) for net in (m.G_run, m.D_pairs, m.D))
        if compile == "reduce-overhead":
            m.G_run = NewStepAtEachCall(m.G_run)


class RealFakeScores(nn.Module):
    """pix2pix.real_and_fake_scores as one module: DDP needs one forward per backward, and D's step calls D twice."""

    def __init__(self, D: nn.Module):
        super().__init__()
        self.D = D

    def forward(self, x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor):
        return real_and_fake_scores(self.D, x, real, fake)


class NewStepAtEachCall(nn.Module):
    """G as a training step calls it, once per step, first: with CUDA graphs (COMPILE="reduce-overhead") each call
    begins a new step, whose graphs may reuse the previous step's output memory (without it, CUDA graph trees
    refuse to overwrite outputs they cannot prove dead, as G's are when G's step runs D between them)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.module(x)


# ----------------------------------------------------------------------------- inference and images

@contextlib.contextmanager
def test_mode(G: nn.Module, mode: str = "paper", seed: int = 0) -> Iterator[None]:
    """How every inference runs (samples, validation, predict, evaluate, the demo): G in its test mode without
    autograd, dropout noise from `seed`, and afterwards G (every buffer) and the caller's RNG exactly as they were."""
    cuda = [p.device for p in G.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(seed)
        was_training, previous = G.training, set_test_mode(G, mode)
        try:
            yield
        finally:
            G.train(was_training)
            for m, (momentum, track) in previous.items():
                m.momentum, m.track_running_stats = momentum, track


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


# ----------------------------------------------------------------------------- image files

MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs (PIL would only warn up to twice its own limit)


def pixel_limit_error(im: Image.Image) -> str | None:
    """Why an opened image is refused before it is decoded (a decompression bomb), or None."""
    if im.width * im.height > MAX_IMAGE_PIXELS:
        return (f"{im.width}x{im.height} is larger than {MAX_IMAGE_PIXELS} pixels (decompression-bomb limit); "
                f"downscale it")
    return None


def read_image(path: Path | Any, channels: int = 3) -> np.ndarray:
    """The one image reader: a file (or file object) -> HxWxC uint8, C = channels; EXIF, 16-bit, alpha on white."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:  # over twice PIL's own limit: a ValueError, as a damaged file's
        raise ValueError(f"over PIL's decompression-bomb limit ({str(e).split(', could')[0]}); downscale it") from None
    with im:
        if too_big := pixel_limit_error(im):
            raise ValueError(too_big)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I", "F"):
            pixels = np.asarray(im, dtype=np.float32)
            im = Image.fromarray((pixels / (257 if pixels.max() > 255 else 1)).clip(0, 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "P", "PA"):  # palette/alpha: onto white rather than black
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        image = np.asarray(im.convert("RGB" if channels == 3 else "L"))
    return image[:, :, None] if image.ndim == 2 else image
