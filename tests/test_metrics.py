"""metrics.py against values worked out by hand: L1, PSNR and SSIM in [0, 1] image space, RMSE and pixel accuracy in
grey levels (this project's and GcGAN's protocol), the [-1, 1] -> [0, 1] conversion inside evaluate_generator, and
the own/other-target L1 ratio on a set small enough to do on paper.

    python -m pytest tests/test_metrics.py -q
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from harness.metrics import evaluate_generator, own_other_ratio, per_image_metrics


def constant(values: list[float], size: int = 32) -> torch.Tensor:
    """A batch of constant 3xSxS images, one per value."""
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


class Identity(nn.Module):
    """A stub generator: its output is its input, so the test chooses every output exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


def test_identical_images_have_l1_zero_and_ssim_one():
    images = torch.rand(3, 3, 32, 32)
    m = per_image_metrics(images.clone(), images)
    assert m["l1"].tolist() == [0.0, 0.0, 0.0]
    assert m["ssim"].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


@pytest.mark.parametrize("delta", [0.1, 0.25, 0.5])
def test_a_constant_offset_delta_gives_l1_delta_and_psnr_20_log10_one_over_delta(delta):
    """|fake - target| = delta everywhere: L1 = delta, MSE = delta^2, PSNR = 10 log10(1 / delta^2) (range 1)."""
    target = torch.rand(2, 3, 32, 32) * (1 - delta)
    m = per_image_metrics(target + delta, target)
    assert m["l1"].tolist() == pytest.approx([delta, delta], rel=1e-5)
    assert m["psnr"].tolist() == pytest.approx([20 * math.log10(1 / delta)] * 2, rel=1e-5)


def test_output_all_minus_one_against_target_all_plus_one_is_l1_one_in_image_space():
    """Network range [-1, 1]: -1 is black, +1 white. In [0, 1] space they differ by 1 everywhere: L1 1,
    PSNR 0 dB; SSIM of two flat images (means 0 and 1) is C1 / (1 + C1) with C1 = (0.01 * range)^2. Scoring the
    [-1, 1] tensors directly would give L1 2 (and a wrong PSNR): the conversion is what this checks."""
    loader = [(torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32))]
    result = evaluate_generator(Constant(-1.0), loader, torch.device("cpu"))
    s = result["summary"]
    assert s["l1"] == pytest.approx(1.0, rel=1e-6) and s["psnr"] == pytest.approx(0.0, abs=1e-5)
    c1 = 0.01 ** 2
    assert s["ssim"] == pytest.approx(c1 / (1 + c1), rel=1e-3)
    assert result["per_image"]["l1"].tolist() == pytest.approx([1.0, 1.0]) and s["n_images"] == 2


def test_own_other_ratio_on_three_images_worked_out_by_hand():
    """Flat images (values in [0, 1]), so every L1 distance is one number:
         targets 0.0 0.5 1.0, outputs 0.1 0.6 0.7
         |out - target|   t=0.0  t=0.5  t=1.0
         out 0.1           0.1    0.4    0.9
         out 0.6           0.6    0.1    0.4
         out 0.7           0.7    0.2    0.3
       own   = (0.1 + 0.1 + 0.3) / 3                 = 0.5 / 3
       other = (0.4 + 0.9 + 0.6 + 0.4 + 0.7 + 0.2) / 6 = 3.2 / 6
       ratio = (0.5 / 3) / (3.2 / 6)                 = 0.3125"""
    targets, fakes = constant([0.0, 0.5, 1.0]), constant([0.1, 0.6, 0.7])
    assert own_other_ratio(fakes, targets) == pytest.approx(0.3125, rel=1e-5)
    assert own_other_ratio(fakes[:1], targets[:1]) is None  # one image: no other target, undefined

    # the same set through evaluate_generator, from network range [-1, 1], in batches of 2 and 1
    loader = [(fakes[i:i + 2] * 2 - 1, targets[i:i + 2] * 2 - 1) for i in (0, 2)]
    s = evaluate_generator(Identity(), loader, torch.device("cpu"))["summary"]
    assert s["ratio"] == pytest.approx(0.3125, rel=1e-5)
    assert s["l1"] == pytest.approx(0.5 / 3, rel=1e-5)
    # PSNR per image 20 log10(1 / 0.1), 20 log10(1 / 0.1), 20 log10(1 / 0.3): mean of the three
    assert s["psnr"] == pytest.approx((20 + 20 + 20 * math.log10(1 / 0.3)) / 3, rel=1e-5)


def test_evaluate_reports_the_ratio_of_a_single_image_as_undefined(tiny_run, tmp_path, capsys):
    """evaluate.py on one image: `n/a` in its table and null in summary.json (JSON has no NaN), never nan."""
    import json

    import evaluate
    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data",
                          str(tiny_run / "data" / "val"), "--output", str(out), "--max-images", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ratio"] is None and summary["n_images"] == 1 and summary["l1"] > 0
    printed = capsys.readouterr().out
    assert "ratio       n/a" in printed and "nan" not in printed


# ----------------------------------------------------------------------------- RMSE and pixel accuracy (maps)

def grey(levels) -> torch.Tensor:
    """A 1x3x16x16 image of 2x2 blocks from grey levels (0-255) given per block as (r, g, b), row by row (blocks
    of equal size: the fractions of pixels are the fractions of blocks)."""
    blocks = torch.tensor(levels, dtype=torch.float32).view(1, 2, 2, 3).permute(0, 3, 1, 2) / 255
    return blocks.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)


def test_pixel_accuracy_counts_pixels_whose_worst_channel_is_within_delta():
    target = grey([[100, 100, 100]] * 4)
    fake = grey([[100, 100, 100],    # exact
                 [104, 100, 96],     # 4 off in two channels: within 5 and 16
                 [100, 110, 100],    # 10 off in one channel: within 16 only
                 [99, 100, 130]])    # 30 off in one channel: within neither, whatever the others
    m = per_image_metrics(fake, target)
    assert m["pixel_acc_5"].item() == pytest.approx(2 / 4)
    assert m["pixel_acc_16"].item() == pytest.approx(3 / 4)
    squares = [0, 0, 0, 16, 0, 16, 0, 100, 0, 1, 0, 900]  # every channel of every pixel
    assert m["rmse"].item() == pytest.approx(math.sqrt(sum(squares) / 12), rel=1e-6)


def test_pixel_accuracy_is_measured_on_8_bit_values_and_is_perfect_for_a_perfect_output():
    target = grey([[0, 128, 255], [10, 20, 30], [5, 5, 5], [200, 100, 0]])
    m = per_image_metrics(target.clone(), target)
    assert m["rmse"].item() == 0 and m["pixel_acc_5"].item() == m["pixel_acc_16"].item() == 1
    # 4.6 grey levels off rounds to 5 as a saved image: no longer within 5
    m = per_image_metrics(target + 4.6 / 255 * (target < 0.5), target)
    assert m["pixel_acc_5"].item() == pytest.approx(0 / 4) and m["pixel_acc_16"].item() == 1
    assert m["rmse"].item() == pytest.approx(math.sqrt(25 * 9 / 12), rel=1e-6)  # 9 of 12 channels below half


# ----------------------------------------------------------------------------- GcGAN's maps protocol

def flat(value: int, size: int, channels: int = 3) -> np.ndarray:
    """A size x size uint8 image of one grey level, as read from a file."""
    return np.full((size, size, channels), value, np.uint8)


def test_gcgan_rmse_sums_over_channels_and_pixels_divided_by_256_squared():
    """Output 0.5 -> 127 (truncated as the official test.py saves it), target 130 in every channel: a difference
    of 3 in each of 3 channels at every pixel: sqrt(3 * 9 * 256^2 / 256^2) = sqrt(27), not the per-channel 3."""
    from harness.metrics import gcgan_maps_scores
    scores = gcgan_maps_scores(torch.full((3, 64, 64), 0.5), flat(130, 600))  # target at the file's own size
    assert scores["gcgan_rmse"] == pytest.approx(math.sqrt(27), rel=1e-6)
    assert scores["gcgan_acc_5"] == scores["gcgan_acc_10"] == 1.0


def test_gcgan_accuracy_is_strictly_below_delta_on_the_worst_channel():
    from harness.metrics import gcgan_maps_scores
    target = flat(100, 256)
    target[:128, :, 1] = 95  # the top half differs by 5 in one channel only
    scores = gcgan_maps_scores(torch.full((3, 256, 256), 100 / 255 + 1e-4), target)  # 100 after truncation
    assert scores["gcgan_acc_5"] == 0.5 and scores["gcgan_acc_10"] == 1.0  # 5 is not below 5
    assert scores["gcgan_rmse"] == pytest.approx(math.sqrt(25 * 128 * 256 / 256 ** 2), rel=1e-6)


def test_gcgan_output_is_truncated_and_a_grey_target_counts_three_channels():
    from harness.metrics import gcgan_maps_scores
    # 0.999 * 255 = 254.7: saved as 254 by truncation (rounding would give 255, a difference of 0)
    scores = gcgan_maps_scores(torch.full((3, 32, 32), 0.999), flat(255, 40, channels=1))
    assert scores["gcgan_rmse"] == pytest.approx(math.sqrt(3), rel=1e-6)
