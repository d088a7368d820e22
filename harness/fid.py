"""FID and KID between generated outputs and real targets (opt-in: evaluate.py --fid, FID=True in training).

Both compare the distributions of Inception-v3 pool features (2048 per image) of the two sets: FID (Heusel et al.,
2017) fits a Gaussian to each and measures the Fréchet distance, KID (Bińkowski et al., 2018) is the squared MMD
with a cubic polynomial kernel, averaged over random subsets (unbiased, so it compares across set sizes; FID is
biased upwards for small sets and compares only at equal sizes). The implementation is torchmetrics' (its
FrechetInceptionDistance and KernelInceptionDistance), on torch-fidelity's Inception with the resize of the
original TensorFlow FID code; the features are computed once per image and handed to both.

The network weights (`pt_inception-2015-12-05-6726825d.pth`, ~91 MB, converted from the TensorFlow graph that FID
was defined with) ship with no package: every library downloads them at run time. Here nothing is downloaded: the
file is read from --inception-weights / INCEPTION_WEIGHTS, or from torch's hub cache if it is already there
(find_weights), and a missing or wrong file is one line saying what is expected and where it comes from.

    weights = find_weights(None)                 # the hub cache, or InceptionWeightsError
    scores = FidKid(weights, device)
    for fake, real in batches:                   # Bx3xHxW in [0, 1]
        scores.update(fake, real)
    scores.result()                              # {"fid": ..., "kid": ..., "kid_std": ..., "fid_images": N}
    scores.next_round()                          # validation again: new outputs, the same real images

Images enter as 8-bit, as they are saved (x * 255 rounded). A library module: nothing to run.
"""
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from harness.errors import CheckpointError, InceptionWeightsError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
# torch-fidelity's name for the same weights (its SHA-256 starts with the same digits), where torchmetrics or
# torch-fidelity may have downloaded them
CACHE_NAMES = (WEIGHTS_NAME, "weights-inception-2015-12-05-6726825d.pth")
STANDARD_SHA256 = "6726825d"  # the file name's hash part: the first hex digits of the standard file's SHA-256
FEATURES = 2048  # pool3 features, the standard FID layer
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torchmetrics' and torch-fidelity's defaults; smaller sets: all
KID_SEED = 0  # KID draws random subsets: a fixed seed makes it repeatable, and the caller's RNG is left alone


def where_to_get_it() -> str:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"download {WEIGHTS_URL} (~91 MB) and pass its path with --inception-weights PATH (train.py: "
            f"--INCEPTION_WEIGHTS=PATH), or put it in {cache}/")


def find_weights(path: str | os.PathLike | None) -> Path:
    """The Inception weights file: `path` if given, else one already in torch's hub cache; never downloaded."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(f"Inception weights {path} {'is a folder' if path.is_dir() else 'not found'}:"
                                        f" FID/KID need {WEIGHTS_NAME}; {where_to_get_it()}")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in CACHE_NAMES:
        if (cache / name).is_file():
            return cache / name
    raise InceptionWeightsError(f"FID/KID need the Inception weights {WEIGHTS_NAME}, which are not downloaded "
                                f"automatically: {where_to_get_it()}")


def weights_note(path: str | os.PathLike, standard: bool) -> str:
    """Which Inception weights made FID/KID, and whether the figures compare with published ones."""
    if standard:
        return f"{path} (the standard file)"
    return (f"{path}: NOT the standard file (its SHA-256 does not start with {STANDARD_SHA256}), so these FID/KID "
            f"compare with nothing published")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_extractor(path: Path) -> torch.nn.Module:
    """torch-fidelity's FID Inception (through torchmetrics) with the weights in `path`, checked first: the file is
    read without code (weights_only), and anything but Inception-v3 weights is refused in one line."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    from harness.weights import read_weights_file
    wrong = f"{path} is not the Inception-v3 weights file FID/KID need ({WEIGHTS_NAME}; {where_to_get_it()})"
    try:
        state = read_weights_file(path)
    except CheckpointError:
        raise InceptionWeightsError(f"{wrong}: it cannot be loaded as PyTorch weights") from None
    if not (isinstance(state, dict) and torch.is_tensor(state.get("Conv2d_1a_3x3.conv.weight"))):
        raise InceptionWeightsError(f"{wrong}: it holds no Inception layers (no 'Conv2d_1a_3x3.conv.weight')")
    try:  # read again by torch-fidelity: safe now that it has loaded without code above
        extractor = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(FEATURES)],
                                       feature_extractor_weights_path=str(path), antialias=False)
    except RuntimeError as e:  # load_state_dict: missing, unexpected or wrong-shape tensors
        raise InceptionWeightsError(f"{wrong}: {' '.join(str(e).split())[:300]}") from None
    return extractor


class PassThrough(torch.nn.Module):
    """The 'feature extractor' torchmetrics is given: the features, computed once per image for FID and KID."""
    num_features = FEATURES

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FidKid:
    """Accumulates Inception features of generated and real images; result() gives FID and KID (mean and sd over
    subsets). State lives on the CPU in float64 (torchmetrics'), the network runs on `device`. The real images are
    the same in every round (validation's fixed images), so their features are computed in the first round only."""

    def __init__(self, weights: Path, device: torch.device = torch.device("cpu")):
        from torchmetrics.image.fid import FrechetInceptionDistance
        self.weights, self.device = weights, device
        self.standard = sha256_of(weights).startswith(STANDARD_SHA256)
        self.extractor = load_extractor(weights).to(device)
        self.fid = FrechetInceptionDistance(feature=PassThrough(), reset_real_features=False)
        self.fake: list[torch.Tensor] = []
        self.real: list[torch.Tensor] = []
        self.real_complete = False

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW in [0, 1] -> Bx2048 on the CPU."""
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return self.extractor(pixels.to(self.device)).double().cpu()

    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        """One batch of outputs and their real targets (the targets only count in the first round)."""
        f = self.features(fake)
        self.fid.update(f, real=False)
        self.fake.append(f)
        if not self.real_complete:
            r = self.features(real)
            self.fid.update(r, real=True)
            self.real.append(r)

    def result(self) -> dict[str, Any]:
        """fid, kid, kid_std (None below 2 images each), fid_images, and which weights file made them."""
        from torchmetrics.image.kid import KernelInceptionDistance
        n = min(sum(len(f) for f in self.fake), sum(len(r) for r in self.real))
        out: dict[str, Any] = {"fid": None, "kid": None, "kid_std": None, "fid_images": n,
                               "inception_weights": str(self.weights), "inception_weights_standard": self.standard}
        if n < 2:
            return out
        out["fid"] = max(self.fid.compute().item(), 0.0)  # rounding can leave a hair below 0 for equal sets
        with warnings.catch_warnings():  # that it keeps every feature (16 KB an image): so do we, on purpose
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            kid = KernelInceptionDistance(feature=PassThrough(), subsets=KID_SUBSETS,
                                          subset_size=min(KID_SUBSET_SIZE, n))
        kid.update(torch.cat(self.fake), real=False)
        kid.update(torch.cat(self.real), real=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(KID_SEED)
            mean, sd = kid.compute()
        out["kid"], out["kid_std"] = mean.item(), sd.item()
        return out

    def next_round(self) -> None:
        """Forget the outputs' features; keep the real images' (the same images in every round)."""
        self.fid.reset()  # reset_real_features=False: the real statistics stay
        self.fake.clear()
        self.real_complete = True


def training_scores(setting: str, device: torch.device) -> FidKid:
    """FID=True: validation's scorer, its weights (INCEPTION_WEIGHTS, else the hub cache) checked before training."""
    scores = FidKid(find_weights(setting or None), device)
    print(f"FID/KID at validation: Inception weights {weights_note(scores.weights, scores.standard)}")
    return scores
