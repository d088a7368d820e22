"""Inference helpers shared by predict.py, evaluate.py and demo.py: load a generator for use, their shared
command-line options, and fitting images of any size to the U-Net and back. A library module: nothing to run.
"""
import argparse
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dataset import PairTransform, to_tensor
from harness.checkpoint import load_generator
from harness.configurator import check_device, default_settings
from harness.errors import ConfigError, path_argument
from utils import PRECISIONS, pick_device, pick_precision, set_float32_math, use_device


def load_for_inference(checkpoint: str | Path, mode: str = "paper", device: str = "auto", precision: str = "auto",
                       direction: str | None = None, needs_direction: bool = False,
                       ) -> tuple[torch.nn.Module, dict[str, Any], torch.device, str]:
    """(generator on the device in `mode`, its training settings, device, precision); device/precision as in training.

    Settings a file lacks fall back to config.py's defaults, except IMAGE_SIZE (image_size_of: a U-Net's follows
    from its depth, an official ResNet file's is the default 256). `direction` (--direction) is for
    files that store none, such as the official latest_net_G.pth; with `needs_direction`, such a file without it is
    an error rather than a silent guess.
    """
    check_device(device, "--device")
    dev = pick_device(device)
    use_device(dev)  # DEVICE=cuda:N: N becomes the current GPU
    G = load_generator(checkpoint, dev, mode)
    saved = G.train_config.get("DIRECTION")
    if direction and saved and direction != saved:
        raise ConfigError(f"--direction {direction} contradicts {checkpoint}, trained with DIRECTION={saved}; "
                          f"drop --direction (it is for files that store no direction)")
    if needs_direction and not (direction or saved):
        raise ConfigError(f"{checkpoint} stores no direction (e.g. an official latest_net_G.pth); pass --direction "
                          f"AtoB or BtoA: which half of each A|B file is the input")
    cfg = default_settings() | G.train_config
    cfg |= {"IMAGE_SIZE": image_size_of(G), "DIRECTION": direction or cfg["DIRECTION"],
            "IN_CHANNELS": G.hparams["in_channels"], "OUT_CHANNELS": G.hparams["out_channels"]} \
        | ({"NUM_DOWNS": G.hparams["num_downs"]} if "num_downs" in G.hparams else {})
    precision = pick_precision(precision, dev)
    set_float32_math(precision, dev)  # fp32 is IEEE fp32 on a GPU too; tf32 asks for TF32
    return G, cfg, dev, precision


def image_size_of(G: torch.nn.Module) -> int:
    """The image size G was trained at: its settings' IMAGE_SIZE; for a file that stores none (an official
    latest_net_G.pth) a U-Net's depth gives it (its 1x1 bottleneck), and a ResNet's is the default, 256, the official
    crop size."""
    default = 2 ** G.hparams["num_downs"] if "num_downs" in G.hparams else default_settings()["IMAGE_SIZE"]
    return G.train_config.get("IMAGE_SIZE", default)


def check_output_folder(folder: Path) -> None:
    """--output must be a folder, or not exist yet (it is created)."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise ConfigError(f"--output {folder} is a file, not a folder; choose a folder (it is created if missing)")


def batch_size_for(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """--batch-size, else 1 in paper mode (batch statistics: an output must not depend on its batch-mates, as in
    the official test.py) and the training BATCH_SIZE in eval mode (where it changes only the speed)."""
    return args.batch_size or (1 if args.mode == "paper" else cfg["BATCH_SIZE"])


def model_arguments(doc: str, script: str, precision: str = "auto") -> argparse.ArgumentParser:
    """A parser with the options predict.py and evaluate.py share: which generator, and how to run it
    (`precision`: --precision's default)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 epilog=f"See the module docstring (top of {script}) for details.")
    ap.add_argument("--checkpoint", type=path_argument(Path), required=True,
                    help="generator.pt, any training checkpoint, or an official-code latest_net_G.pth")
    ap.add_argument("--mode", choices=("paper", "eval"), default="paper", help="test-time mode (default paper)")
    ap.add_argument("--seed", type=int, default=0, help="fixes the dropout noise of --mode paper")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="images per forward pass; 0 = 1 in paper mode (batch-norm statistics of the batch: an output "
                         "depends on its batch-mates), the checkpoint's BATCH_SIZE in eval mode (only speed changes)")
    ap.add_argument("--direction", choices=("AtoB", "BtoA"), default=None,
                    help="which half of an A|B file is the input, for checkpoints that store none (official files)")
    ap.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    ap.add_argument("--precision", choices=PRECISIONS, default=precision,
                    help=f"the generator's precision (default {precision}): auto as in training (bf16 on Ampere+ "
                         f"GPUs), fp32 = IEEE fp32 on every device, tf32 = TF32 convolutions on CUDA")
    return ap


@functools.lru_cache(maxsize=4)
def _eval_transform(image_size: int):
    return PairTransform("resize_and_crop", image_size, image_size, image_size, random_crop=False, mirror=False)


def fit_to_model(image: np.ndarray, fit: str, image_size: int, G: torch.nn.Module) -> torch.Tensor:
    """HxWxC uint8 -> CxH'xW' in [-1, 1] with sides G accepts (see fit_back for the inverse): for --fit pad,
    multiples of its side multiple, and for a ResNet at least twice that, as its residual blocks reflect-pad the
    quarter-size map by 1 px, which needs at least 2 px (a U-Net's bottleneck is 1x1 at one side multiple)."""
    if fit == "resize":  # exactly the eval transform of training and evaluate.py
        return _eval_transform(image_size)(image, image)[0]
    multiple = G.side_multiple
    smallest = 2 * multiple if "n_blocks" in G.hparams else multiple
    h, w = image.shape[:2]
    ph, pw = (max(-side % multiple, smallest - side) for side in (h, w))
    # np.pad reflects repeatedly, so even pads larger than the image work (torch's reflect pad refuses them)
    return to_tensor(np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect"))


def fit_back(out: torch.Tensor, size: tuple[int, int], fit: str) -> torch.Tensor:
    """Undo fit_to_model on a CxH'xW' output: resize back to `size`, or crop the padding off."""
    h, w = size
    if fit == "resize":
        return F.interpolate(out[None], size=(h, w), mode="bicubic", antialias=True)[0].clamp(-1, 1)
    top, left = (out.shape[1] - h) // 2, (out.shape[2] - w) // 2
    return out[:, top:top + h, left:left + w]
