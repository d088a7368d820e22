"""Image-translation metrics: per-image L1, PSNR and SSIM (torchmetrics), RMSE and pixel accuracy, and the
own/other-target L1 ratio.

Pixel metrics reward blurry averages: on facades the mean training image already scores L1 0.18. The ratio
   mean_i L1(out_i, target_i) / mean_{i != j} L1(out_i, target_j)
asks whether each output follows its OWN input: 1.0 = it ignores the input (like a mean-image predictor),
lower is better.

For maps (aerial -> map), whose targets are flat colour regions, the figures used in the image-translation
literature are RMSE and per-pixel accuracy (e.g. DistanceGAN, Benaim & Wolf 2017; GcGAN, Fu et al. 2019): a pixel
is correct when the largest absolute channel difference between output and target, in grey levels (0-255, the
output rounded as a saved image is), is below a threshold delta. Reported for delta = 5 and 16 (PIXEL_ACC_DELTAS),
at the model's resolution: this project's own figures, which compare with each other. gcgan_maps_scores follows
GcGAN's evaluation script instead (evaluation/evaluate_maps.py of github.com/hufu6371/GcGAN), whose figures papers
cite: the output as the official test.py saves it (truncated to 8 bits) and the real target file's half at its own
size, both resized to 256x256 bilinearly; a pixel is correct when its largest channel difference is strictly below
delta (5 and 10); RMSE = sqrt(sum over pixels and channels of the squared difference / 256^2), averaged over
images (no division by 3: for the same images it is sqrt(3) times a per-channel RMSE).

All figures use images in [0, 1], computed in IEEE fp32 on the CPU whatever device ran the generator: the same
outputs score the same everywhere (on a GPU, convolutions in SSIM could otherwise run in TF32 and in another
summation order). Not run directly; used by harness/run.py and evaluate.py.
"""
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from utils import generate, test_mode, to_unit

RATIO_SIZE = 64  # the ratio compares every output with every target, so it is computed at a small size
PIXEL_ACC_DELTAS = (5, 16)  # grey levels
METRICS = ("l1", "psnr", "ssim", "rmse", *(f"pixel_acc_{d}" for d in PIXEL_ACC_DELTAS))  # per image
GCGAN_SIZE = 256  # both images are resized to this square
GCGAN_DELTAS = (5, 10)  # grey levels
GCGAN_METRICS = ("gcgan_rmse", *(f"gcgan_acc_{d}" for d in GCGAN_DELTAS))  # per image


def per_image_metrics(fake: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """fake/target in [0, 1], Bx3xHxW -> each of METRICS as a B-vector (RMSE in grey levels, accuracy in [0, 1])."""
    fake, target = fake.float(), target.float()
    grey = ((fake * 255).round() - (target * 255).round()).abs()  # as the saved 8-bit images differ
    worst_channel = grey.amax(dim=1).flatten(1)
    return {
        "l1": (fake - target).abs().flatten(1).mean(1),
        "psnr": peak_signal_noise_ratio(fake, target, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": structural_similarity_index_measure(fake, target, data_range=1.0, reduction="none"),
        "rmse": grey.square().flatten(1).mean(1).sqrt(),
        **{f"pixel_acc_{d}": (worst_channel < d).float().mean(1) for d in PIXEL_ACC_DELTAS},
    }


def gcgan_maps_scores(fake: torch.Tensor, real: np.ndarray) -> dict[str, float]:
    """GcGAN's maps figures of one output (3xHxW in [0, 1]) against its real target as read from the file (HxWxC
    uint8, any size; C = 1 or 3): see the module docstring."""
    fake8 = (fake.float().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()  # truncated, as saved
    real8 = np.repeat(real, 3, axis=2) if real.shape[2] == 1 else real
    size = (GCGAN_SIZE, GCGAN_SIZE)
    fake_f, real_f = (cv2.resize(np.ascontiguousarray(im), size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
                      for im in (fake8, real8))
    diff = np.abs(real_f - fake_f)
    worst = diff.max(axis=2)
    return {"gcgan_rmse": float(np.sqrt(np.square(diff).sum() / GCGAN_SIZE ** 2)),
            **{f"gcgan_acc_{d}": float((worst < d).mean()) for d in GCGAN_DELTAS}}


def own_other_ratio(fakes: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Mean L1 to the image's own target over mean L1 to every other target; None (undefined) for one image."""
    n = fakes.shape[0]
    if n < 2:
        return None
    small = lambda t: F.interpolate(t.float(), size=RATIO_SIZE, mode="area").flatten(1)  # noqa: E731
    dist = torch.cdist(small(fakes), small(targets), p=1) / (3 * RATIO_SIZE * RATIO_SIZE)  # NxN mean-abs L1
    own = dist.diagonal().mean()
    other = (dist.sum() - dist.diagonal().sum()) / (n * (n - 1))
    return (own / other).item()


def summarize(per_image: dict[str, torch.Tensor], fakes: torch.Tensor, targets: torch.Tensor
              ) -> dict[str, float | None]:
    summary = {k: v.mean().item() for k, v in per_image.items()}
    summary["ratio"] = own_other_ratio(fakes, targets)
    summary["n_images"] = int(fakes.shape[0])
    return summary


@torch.no_grad()
def evaluate_generator(G: torch.nn.Module, loader: Any, device: torch.device, precision: str = "fp32",
                       mode: str = "paper", seed: int = 0, max_images: int = 0,
                       on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
                       ) -> dict[str, Any]:
    """Run G over a loader of (input, target) in [-1, 1]; returns per-image metrics (in loader order) and summary.

    `seed` fixes dropout noise in the paper's test mode, so evaluating twice gives the same numbers; the
    caller's RNG state is restored afterwards. `on_batch(input, output, target)`, all in [0, 1] and 3 channels,
    sees every batch, e.g. to save the images (evaluate.py) without a second pass through G.
    """
    per_image: dict[str, list] = {k: [] for k in METRICS}
    fakes, targets = [], []
    seen = 0
    with test_mode(G, mode, seed):
        for x, y in loader:
            if max_images and seen >= max_images:
                break
            x, y = x.to(device), y.to(device)
            fake = generate(G, x, device, precision)
            fake01, y01 = to_unit(fake).cpu(), to_unit(y).cpu()  # scored on the CPU (see the module docstring)
            for k, v in per_image_metrics(fake01, y01).items():
                per_image[k].append(v)
            if on_batch is not None:
                on_batch(to_unit(x).cpu(), fake01, y01)
            fakes.append(F.interpolate(fake01, size=RATIO_SIZE, mode="area"))
            targets.append(F.interpolate(y01, size=RATIO_SIZE, mode="area"))
            seen += x.shape[0]
    per_image_t = {k: torch.cat(v)[:max_images or None] for k, v in per_image.items()}
    fakes_t, targets_t = torch.cat(fakes)[:max_images or None], torch.cat(targets)[:max_images or None]
    return {"per_image": per_image_t, "summary": summarize(per_image_t, fakes_t, targets_t)}
