"""The official pix2pix code's training step, timed on this machine's GPU (or CPU) beside ours: bench.py
--gpu-check --official PATH runs it. It imports the official code from a checkout at PATH and calls it as its own
train.py does (Pix2PixModel.set_input, then optimize_parameters: fp32, NCHW, cuDNN autotuning on, PyTorch's
default TF32 convolutions on Ampere+), on random 256 px batches already on the device; it copies none of its code.
How to get the checkout (its pinned commit, 2a7afba): docs/performance.md#against-the-official-code-on-a-gpu.

    python -m harness.official_timing PATH --batch 16 [--warmup 5 --steps 20 --repeats 3] [--size 256]

Prints one JSON line: {"img_s": median images/s, "commit": the checkout's commit or null, "device": ...}.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

PINNED_COMMIT = "2a7afba"


def checkout_commit(path: Path) -> str | None:
    """The checkout's commit (git), or None if it is not a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def official_model(path: Path, batch: int, size: int, device: torch.device, checkpoints: str):
    """The official Pix2PixModel with its pix2pix defaults (unet_256, basic 70x70 PatchGAN, batch norm, dropout,
    vanilla GAN loss, lambda_L1 100, Adam 2e-4 / 0.5), as its training options give them."""
    sys.path.insert(0, str(path))
    from models.pix2pix_model import Pix2PixModel  # the official code, from the checkout
    options = SimpleNamespace(
        isTrain=True, checkpoints_dir=checkpoints, name="timing", preprocess="resize_and_crop", device=device,
        input_nc=3, output_nc=3, ngf=64, ndf=64, netG="unet_256" if size == 256 else f"unet_{size}",
        netD="basic", n_layers_D=3, norm="batch", no_dropout=False, init_type="normal", init_gain=0.02,
        gan_mode="vanilla", lr=0.0002, beta1=0.5, lambda_L1=100.0, direction="AtoB", batch_size=batch)
    return Pix2PixModel(options)


def time_official(path: Path, batch: int, size: int, warmup: int, steps: int, repeats: int) -> dict:
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        model = official_model(path, batch, size, device, tmp)
        generator = torch.Generator().manual_seed(0)
        data = {"A": torch.rand(batch, 3, size, size, generator=generator).to(device) * 2 - 1,
                "B": torch.rand(batch, 3, size, size, generator=generator).to(device) * 2 - 1,
                "A_paths": ["a"] * batch, "B_paths": ["b"] * batch}

        def step():
            model.set_input(data)
            model.optimize_parameters()
        for _ in range(warmup):
            step()
        rates = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            rates.append(batch * steps / (time.perf_counter() - start))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"img_s": statistics.median(rates), "rates": rates, "commit": checkout_commit(path), "device": name,
            "batch": batch}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path, help="a checkout of the official pytorch-CycleGAN-and-pix2pix code")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not (args.path / "models" / "pix2pix_model.py").is_file():
        print(f"{args.path}: no models/pix2pix_model.py there; give a checkout of the official code "
              f"(docs/performance.md#against-the-official-code-on-a-gpu)", file=sys.stderr)
        return 2
    print(json.dumps(time_official(args.path.resolve(), args.batch, args.size, args.warmup, args.steps,
                                   args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
