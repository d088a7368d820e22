"""What a training run records besides checkpoints: log.csv (one row per epoch), TensorBoard scalars and
sample images, curves.png (the losses and validation metrics, refreshed every epoch), and what it prints.

Also the check, before step 1, that RUN_DIR can hold all this, and the moving aside of an earlier run's outputs
that a fresh start would otherwise overwrite.
Not run directly; harness/run.py uses it. Look at a run with:  tensorboard --logdir runs/
"""
import contextlib
import csv
import errno
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision.utils as vutils

from harness.atomic import atomic_path
from harness.errors import RunDirError
from utils import generate, sample_grid, test_mode

COLUMNS = ["epoch", "step", "d_real", "d_fake", "g_gan", "g_l1", "lr", "images_per_s", "skipped_steps",
           "val_l1", "val_psnr", "val_ssim", "val_ratio", "val_rmse", "val_pixel_acc_5", "val_pixel_acc_16",
           "val_fcn_pixel_acc", "val_fcn_class_acc", "val_fcn_class_iou", "val_fid", "val_kid"]
COLUMNS += [c.replace("val_", "val_raw_") for c in COLUMNS if c.startswith("val_")]  # G_EMA: the raw G's figures


RUN_DIR_HINTS = {errno.ENOTDIR: "a part of the path is a file, not a folder",
                 errno.EEXIST: "it is a file, not a folder", errno.EACCES: "no permission to write there",
                 errno.EPERM: "no permission to write there", errno.EROFS: "the file system is read-only",
                 errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}


def check_run_dir(run_dir: Path) -> None:
    """Create RUN_DIR and write, fsync and delete a small file in it, so that a folder that cannot hold the run
    stops it now with one line, not with a traceback after the data and models are built. Folders this check
    created are removed again: an error later on (a bad checkpoint, bad data) leaves nothing behind."""
    created = [p for p in (run_dir, *run_dir.parents) if not os.path.lexists(p)]
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        hint = RUN_DIR_HINTS.get(e.errno, e.strerror or type(e).__name__)
        if run_dir.is_symlink() and not run_dir.exists():  # mkdir says "exists", yet it leads nowhere
            hint = f"it is a symbolic link to {os.readlink(run_dir)}, which does not exist"
        raise RunDirError(f"RUN_DIR={run_dir} cannot be used: {hint} ({e.strerror or e}: {e.filename or run_dir}). "
                          f"Choose a RUN_DIR in a writable folder with free space") from None
    finally:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


# What a run writes into RUN_DIR; a fresh start rewrites each of them
RUN_OUTPUTS = ("checkpoints", "generator.pt", "generator_best.pt", "log.csv", "curves.png", "config.json", "samples",
               "tensorboard")


def set_aside_earlier_run(run_dir: Path) -> Path | None:
    """A fresh start in a RUN_DIR that holds an earlier run's outputs but no checkpoints/last.pt to continue (it
    was moved away, or a kill came before the first save): move them into RUN_DIR/earlier-<UTC time>/ instead of
    overwriting them. Returns that folder, or None when there was nothing to keep."""
    found = [run_dir / name for name in RUN_OUTPUTS
             if (run_dir / name).is_file() or (run_dir / name).is_dir() and any((run_dir / name).iterdir())]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside = next(p for n in range(1, 1000) if not os.path.lexists(
        p := run_dir / (f"earlier-{stamp}" if n == 1 else f"earlier-{stamp}-{n}")))
    aside.mkdir()
    for path in found:
        path.rename(aside / path.name)
    return aside


class RunLog:
    """log.csv + TensorBoard for one run directory (rank 0 only)."""

    def __init__(self, run_dir: Path, resume_epoch: int = 0, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter
        self.run_dir = run_dir
        self.csv_path = run_dir / "log.csv"
        rows = self.rows()
        partial = self.csv_path.exists() and not self.csv_path.read_bytes().endswith(b"\n")
        if partial:  # a kill -9 mid-append left half a row (csv ends every complete row with a newline)
            rows = rows[:-1]
        older = bool(rows) and list(rows[0]) != COLUMNS  # written by a version with other columns: rewrite
        if partial or older or any(int(r["epoch"]) > resume_epoch for r in rows):
            # rows of epochs the checkpoint does not contain will be trained again: drop them, keep the rest
            self._write([r for r in rows if int(r["epoch"]) <= resume_epoch])
        elif not rows:
            self._write([])
        # TensorBoard drops the events after the checkpoint's step, which this run logs again (as log.csv's rows)
        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else 0)

    def rows(self) -> list[dict[str, str]]:
        if not self.csv_path.exists():
            return []
        with open(self.csv_path, newline="") as f:
            return list(csv.DictReader(f))

    def _write(self, rows: list[dict]) -> None:
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def scalars(self, values: dict[str, float], step: int, prefix: str = "train") -> None:
        for k, v in values.items():
            self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def epoch_row(self, row: dict[str, Any], curves: bool = True) -> None:
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow({k: _fmt(row.get(k, "")) for k in COLUMNS})
        self.tb.flush()
        if curves:
            plot_curves(self.rows(), self.run_dir / "curves.png")

    def close(self) -> None:
        self.tb.close()


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def plot_curves(rows: list[dict[str, str]], path: Path):
    """Losses and validation metrics per epoch, for people who look rather than read CSVs. Each metric of its own
    scale (PSNR ~12 dB, SSIM ~0.2) gets its own panel. Returns the (closed) matplotlib figure, or None."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    panels = [("D loss terms", ["d_real", "d_fake"]), ("G loss terms", ["g_gan", "g_l1"]),
              ("validation L1 (lower is better)", ["val_l1"]), ("validation PSNR (dB)", ["val_psnr"]),
              ("validation SSIM", ["val_ssim"]),
              ("own/other-target L1 ratio (lower is better)", ["val_ratio"])]  # 1.0 = output ignores its input
    if any(r.get("val_pixel_acc_5") for r in rows):  # PIXEL_ACCURACY (maps)
        panels.append(("validation pixel accuracy", ["val_pixel_acc_5", "val_pixel_acc_16"]))
    if any(r.get("val_fcn_class_iou") for r in rows):  # FCN_SCORE
        panels.append(("validation FCN-score", ["val_fcn_pixel_acc", "val_fcn_class_acc", "val_fcn_class_iou"]))
    if any(r.get("val_fid") for r in rows):  # FID
        panels += [("validation FID (lower is better)", ["val_fid"]), ("validation KID (lower is better)", ["val_kid"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(24, 3.2))
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            points = [(e, float(r[k])) for e, r in zip(epochs, rows) if r.get(k) not in (None, "")]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=k)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return fig


def write_samples(G, x, y, cfg, device, precision, path: Path) -> torch.Tensor:
    """input | generated | target grid of the fixed val images; fixed dropout noise, training RNG untouched."""
    fakes = []
    with test_mode(G, cfg["TEST_MODE"], cfg["SEED"]):
        for i in range(0, len(x), cfg["BATCH_SIZE"]):  # batches as in training, for the batch statistics
            fakes.append(generate(G, x[i:i + cfg["BATCH_SIZE"]], device, precision).cpu())
    grid = sample_grid(x, torch.cat(fakes), y)
    path.parent.mkdir(parents=True, exist_ok=True)
    vutils.save_image(grid, path)
    return grid


def sample_batch(dataset: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of up to n items that share the first item's size, stacked (for sample grids)."""
    items = [dataset[0]]
    for i in range(1, len(dataset)):
        if len(items) == n:
            break
        item = dataset[i]
        if item[0].shape == items[0][0].shape:
            items.append(item)
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def format_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def training_flops_per_image(cfg: dict[str, Any]) -> float:
    """Model FLOPs of one training image (D step + G step), counted on meta tensors (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode
    from pix2pix import build_models
    with torch.device("meta"):
        G, D = build_models(cfg)
        x = torch.empty(1, cfg["IN_CHANNELS"], cfg["IMAGE_SIZE"], cfg["IMAGE_SIZE"])
        with FlopCounterMode(display=False) as g_count:
            fake = G(x)
        with FlopCounterMode(display=False) as d_count:
            D(x, fake)
    # backward costs ~2x forward; D runs three times (real, fake, and in the G step)
    return 3.0 * g_count.get_total_flops() + 9.0 * d_count.get_total_flops()


def print_run(cfg: dict[str, Any], runtime: Any, world_size: int, G: nn.Module, D: nn.Module, n_train: int,
              n_val: int, flops: float) -> None:
    import json
    print("config:", json.dumps(cfg))
    print(f"device {runtime.device} ({runtime.precision}), {world_size} process(es), global batch "
          f"{cfg['BATCH_SIZE'] * world_size}; G {sum(p.numel() for p in G.parameters()) / 1e6:.2f} M params, "
          f"D {sum(p.numel() for p in D.parameters()) / 1e6:.2f} M; {n_train} train / {n_val} val images; "
          f"{flops / 1e9:.1f} GFLOP per training image")


def print_epoch_speed(row: dict[str, Any], epoch_img_s: float, flops: float, fp16_scaler: bool) -> None:
    print(f"epoch {row['epoch']}: {epoch_img_s:.2f} img/s, {row['images_per_s'] * flops / 1e12:.3f} TFLOP/s"
          + (f"; fp16 loss scaler skipped {row['scaler_skipped_steps']:.0f} G/D updates (inf/NaN gradients)"
             if fp16_scaler else ""))
