"""Inference helpers shared by predict.py, evaluate.py and demo.py: load a generator for use, and fit images of any
size to the U-Net and back. A library module: nothing to run.
"""
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dataset import build_transform
from generator_model import UNetGenerator
from utils import default_settings, load_generator, pick_device, pick_precision


def load_for_inference(checkpoint: str | Path, mode: str = "paper", device: str = "auto",
                       precision: str = "auto") -> tuple[UNetGenerator, dict[str, Any], torch.device, str]:
    """(generator on the device in `mode`, its training settings, device, precision); device/precision as in training.

    Settings a hand-made checkpoint lacks fall back to config.py's defaults, except IMAGE_SIZE, which follows
    from the U-Net's depth.
    """
    dev = pick_device(device)
    G = load_generator(checkpoint, dev, mode)
    cfg = default_settings() | {"IMAGE_SIZE": 2 ** G.hparams["num_downs"]} | G.train_config
    return G, cfg, dev, pick_precision(precision, dev)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW float in [-1, 1], as the dataset normalises."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 127.5 - 1


@functools.lru_cache(maxsize=4)
def _eval_transform(image_size: int):
    return build_transform(image_size, image_size, jitter=False, mirror=False, train=False)


def fit_to_model(image: np.ndarray, fit: str, image_size: int, multiple: int) -> torch.Tensor:
    """HxWxC uint8 -> CxH'xW' in [-1, 1] with sides the U-Net accepts (see fit_back for the inverse)."""
    if fit == "resize":  # exactly the eval transform of training and evaluate.py
        return torch.from_numpy(_eval_transform(image_size)(image=image)["image"].transpose(2, 0, 1).copy())
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    # np.pad reflects repeatedly, so even pads larger than the image work (torch's reflect pad refuses them)
    return to_tensor(np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect"))


def fit_back(out: torch.Tensor, size: tuple[int, int], fit: str) -> torch.Tensor:
    """Undo fit_to_model on a CxH'xW' output: resize back to `size`, or crop the padding off."""
    h, w = size
    if fit == "resize":
        return F.interpolate(out[None], size=(h, w), mode="bicubic", antialias=True)[0].clamp(-1, 1)
    top, left = (out.shape[1] - h) // 2, (out.shape[2] - w) // 2
    return out[:, top:top + h, left:left + w]
