"""Score a trained generator on a folder of A|B images: per-image and mean L1, PSNR, SSIM, RMSE, pixel accuracy and
the own/other-target L1 ratio, written as metrics.csv, summary.json and index.html (input | output | target
thumbnails, works offline).

    python evaluate.py --checkpoint runs/facades/generator.pt --data data/facades/val
    python evaluate.py --checkpoint runs/facades/generator_best.pt --data data/facades/test --output results/test
    python evaluate.py --checkpoint runs/facades/generator.pt --data data/facades/test --fcn-score
    python evaluate.py --checkpoint runs/maps/generator.pt --data data/maps/val --fid --inception-weights PATH

--fcn-score (labels -> photo data: the input is a label map) adds the paper's FCN-score (§4.2): a segmenter trained
here on the real training photos (harness/fcn_score.py; trained once, in minutes on a CPU, then reused
while the training files stay the same) labels each generated photo; its label map is compared with the input's
(pixel accuracy, class accuracy, class IoU), and the real photos are scored the same way as the ceiling. The
training folder is --fcn-train, else the checkpoint's TRAIN_DIR, else the `train` folder beside --data. The
segmenter is saved to runs/fcn/<dataset>_<direction>.pt, which is retrained by itself when the training files
change; a file named with --segmenter is untrusted input: one that is unreadable, damaged or made for other data is
an error naming it, left as it is, unless --retrain-segmenter asks for a new one there. Label maps whose pixels
mostly match no palette colour (a wrong direction, not a labels dataset) are warned about.

--fid adds FID and KID between the outputs and the real targets (Inception-v3 features, torchmetrics; lower is
better; harness/fid.py): set-level figures, in summary.json, index.html and a last metrics.csv row, "(all N
images)". They need the Inception weights pt_inception-2015-12-05-6726825d.pth (~91 MB), never downloaded here:
--inception-weights PATH, else torch's hub cache; without it one line says where to get it. FID is biased by the
number of images (compare only at equal counts); KID is not.

--mean-baseline scores, instead of the checkpoint's generator, the mean target image of that training folder as the
output for every input (at the checkpoint's resolution): the blurry average that pixel metrics reward, and the
floor that the own/other ratio and the FCN-score are there to see through.

Images are scored in [0, 1] at the model's resolution (the checkpoint's IMAGE_SIZE, through the dataset's eval
transform) with the checkpoint's DIRECTION and channels, so runs compare. L1: lower is better; PSNR (dB) and
SSIM: higher is better; RMSE in grey levels (0-255): lower is better; pixel_acc_5 / pixel_acc_16: the fraction of
pixels whose largest channel difference to the target is below 5 / 16 grey levels (this project's maps figure),
higher is better; gcgan_rmse, gcgan_acc_5, gcgan_acc_10: the same figures by GcGAN's evaluation script (the
protocol behind published maps numbers: both images at 256 px bilinear, the target from the file, RMSE summed over
channels); ratio = mean L1 to an image's own target / mean L1 to the other images' targets: 1.0 = the output
ignores its input (as a mean-image predictor does), lower is better (harness/metrics.py).

Default --output: <checkpoint folder>/eval_<data folder name>_<checkpoint name>, one per checkpoint file.
Deterministic: --seed fixes the dropout noise of the paper's test mode (--mode paper, the default; or eval). The
generator runs in IEEE fp32 by default (--precision fp32; auto, tf32, bf16 and fp16 are faster on a GPU), and the
metrics are computed in fp32 on the CPU, so a checkpoint scores the same on a GPU as on a CPU, up to the generator's
rounding (docs/precision.md).
--batch-size defaults to 1 in paper mode, as the official test.py: there batch-norm uses the batch's statistics, so
a larger batch makes each score depend on its batch-mates (faster, but not the paper's protocol); in eval mode it
defaults to the checkpoint's BATCH_SIZE and changes only the speed. An official-code latest_net_G.pth stores no
direction: pass --direction AtoB or BtoA (for other checkpoints --direction may only repeat their own). Unreadable
files are skipped and listed (also in summary.json).
Exit code 0 on success, 1 for a missing/corrupt checkpoint or unusable data folder, 2 for bad arguments.
"""
import argparse
import csv
import html
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision.utils import save_image
from tqdm import tqdm

from harness.data_checks import check_batchable, check_layout, checked_dataset
from harness.errors import ConfigError, exit_on_error, path_argument
from harness.fid import WEIGHTS_NAME, FidKid, find_weights, weights_note
from harness.inference import batch_size_for, check_output_folder, load_for_inference, model_arguments
from harness.metrics import (GCGAN_DELTAS, GCGAN_METRICS, METRICS, PIXEL_ACC_DELTAS, evaluate_generator,
                             gcgan_maps_scores)

THUMB_SIZE = 256  # thumbnails in index.html are at most this many pixels wide
KINDS = ("input", "output", "target")
# short name, name, how it prints, what it means: one per summary figure (the per-image ones are METRICS)
FIGURES = {"l1": ("L1", "L1", "{:.4f}", "lower is better"),
           "psnr": ("PSNR", "PSNR, dB", "{:.2f}", "higher is better"),
           "ssim": ("SSIM", "SSIM", "{:.4f}", "higher is better"),
           "rmse": ("RMSE", "RMSE, grey levels", "{:.2f}", "lower is better"),
           **{f"pixel_acc_{d}": (f"acc@{d}", f"pixel accuracy, delta {d}", "{:.4f}",
                                 f"pixels within {d} grey levels in every channel; higher is better")
              for d in PIXEL_ACC_DELTAS},
           "gcgan_rmse": ("G-RMSE", "RMSE, GcGAN's protocol", "{:.2f}",
                          "256 px bilinear, summed over channels; lower is better"),
           **{f"gcgan_acc_{d}": (f"G@{d}", f"pixel accuracy, GcGAN's protocol, delta {d}", "{:.4f}",
                                 "256 px bilinear; higher is better") for d in GCGAN_DELTAS},
           "ratio": ("ratio", "own/other-target L1 ratio", "{:.3f}", "1.0 = ignores the input, lower is better"),
           "fid": ("FID", "FID", "{:.2f}", "Inception-v3 features of outputs vs targets; lower is better"),
           "kid": ("KID", "KID", "{:.5f}", "mean over subsets; lower is better"),
           "kid_std": ("KID sd", "KID, sd over subsets", "{:.5f}", "its spread over the random subsets")}
PER_IMAGE = (*METRICS, *GCGAN_METRICS)  # metrics.csv's and index.html's columns
SET_FIGURES = ("ratio", "fid", "kid", "kid_std")  # of the whole set, not means of per-image figures


def default_out(checkpoint: Path, data: Path) -> Path:
    return checkpoint.parent / f"eval_{data.resolve().name}_{checkpoint.stem}"  # generator.pt, generator_best.pt


def thumbnail_writer(folder: Path, scorer: Any = None):
    """An on_batch callback for metrics.evaluate_generator: saves each image's input/output/target PNG; with an
    FCN scorer it also scores the batch and saves the label map it predicts for the output."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0

    def save(x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> None:
        nonlocal count
        kinds, batches = KINDS, [x, fake, y]
        if scorer is not None:
            from harness.fcn_score import colourise
            segmented = scorer.update(x, generated=fake, real=y)["generated"]
            kinds, batches = (*KINDS, "segmented"), [*batches, colourise(segmented, scorer.palette)]
        for images in zip(*batches):
            for kind, image in zip(kinds, images):
                if image.shape[-1] > THUMB_SIZE:
                    image = F.interpolate(image[None], size=THUMB_SIZE, mode="area")[0]
                save_image(image.float().cpu(), folder / thumb_name(count, kind))
            count += 1
    return save


def thumb_name(index: int, kind: str) -> str:
    return f"{index:05d}_{kind}.png"  # numbered, not named after the file: always a safe relative link


def finite_or_none(v: float | None) -> float | None:
    """JSON has no NaN/Infinity (e.g. the PSNR of a perfect output); the ratio of a single image is None."""
    return v if v is not None and math.isfinite(v) else None


def write_html(path: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    esc = html.escape
    number = lambda k, v: "n/a" if v is None or not math.isfinite(v) else FIGURES[k][2].format(v)  # noqa: E731
    facts = [
        ("checkpoint", summary["checkpoint"]), ("data", summary["data"]), ("images", summary["n_images"]),
        ("skipped files", ", ".join(summary["skipped_files"]) or "none"),
        ("mode / seed / batch size", f"{summary['mode']} / {summary['seed']} / {summary['batch_size']}"),
        ("resolution / direction", f"{summary['image_size']} px / {summary['direction']}"),
    ] + [(f"{'' if k in SET_FIGURES else 'mean '}{name} ({meaning})", number(k, summary[k]))
         for k, (_, name, _, meaning) in FIGURES.items() if k in summary]
    if "fid" in summary:
        facts += [("FID/KID images, Inception weights", f"{summary['fid_images']}, {fid_weights(summary)}")]
    fcn = summary.get("fcn")
    if fcn:  # paper §4.2
        facts += [(f"FCN-score, {who} photos (pixel acc / class acc / class IoU)",
                   " / ".join(f"{fcn[who][k]:.3f}" for k in ("pixel_acc", "class_acc", "class_iou")))
                  for who in ("generated", "real")] + [("FCN-score segmenter", fcn["segmenter"])]
    kinds = (*KINDS, "segmented") if fcn else KINDS
    head = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts)
    columns = "".join(f"<th>{esc(FIGURES[k][1])}</th>" for k in PER_IMAGE)
    segmented = "<th>output, segmented (FCN-score)</th>" if fcn else ""
    body = "".join(
        f"<tr><td>{i + 1}</td><td class=f>{esc(r['file'])}</td>"
        + "".join(f'<td><img src="images/{thumb_name(i, kind)}" alt="{kind}" loading="lazy"></td>' for kind in kinds)
        + "".join(f"<td>{number(k, r[k])}</td>" for k in PER_IMAGE) + "</tr>\n"
        for i, r in enumerate(rows))
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pix2pix evaluation: {esc(summary['data'])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: center; }}
th {{ background: #f3f3f3; }} td.f {{ text-align: left; font-family: monospace; }}
img {{ width: 192px; display: block; }}
</style></head><body>
<h1>pix2pix evaluation</h1>
<table>{head}</table>
<table>
<tr><th>#</th><th>file</th><th>input</th><th>output</th><th>target</th>{segmented}{columns}</tr>
{body}</table>
</body></html>
""", encoding="utf-8")


def fid_weights(summary: dict[str, Any]) -> str:
    return weights_note(summary["inception_weights"], summary["inception_weights_standard"])


def summary_table(summary: dict[str, Any]) -> str:
    head = (f"{summary['n_images']} images of {summary['data']} ({summary['mode']} mode, seed {summary['seed']}, "
            f"batch {summary['batch_size']}, {summary['image_size']} px)")
    lines = [head] + [
        f"  {short:<6} {'n/a' if summary[k] is None else fmt.format(summary[k]):>8}  {name}: {meaning}"
        for k, (short, name, fmt, meaning) in FIGURES.items() if k in summary]
    if "fid" in summary:
        lines.append(f"  FID/KID of {summary['fid_images']} images; Inception weights {fid_weights(summary)}")
    return "\n".join(lines)


def evaluate(args: argparse.Namespace) -> int:
    data = Path(args.data)
    out = args.output or default_out(args.checkpoint, data)
    check_output_folder(out)
    for flag, folder in (("--data", data), ("--fcn-train", args.fcn_train)):
        if folder is not None and not folder.is_dir():  # before any work; a wrong --fcn-train was silently replaced
            check_layout(folder, flag)  # its one line, named by the flag; the content is checked where it is read
    weights = find_weights(args.inception_weights) if args.fid else None  # before any work: one line if missing
    G, cfg, device, precision = load_for_inference(args.checkpoint, args.mode, args.device, args.precision,
                                                   args.direction, needs_direction=True)
    if args.mean_baseline:
        train = training_folder(args, cfg, data, "--mean-baseline")
        G = MeanImage(checked_dataset(train, cfg, train=False, bad_files="skip")).to(device)
    dataset = checked_dataset(data, cfg, train=False, bad_files="skip")
    skipped = sorted(str(p.relative_to(data)) for p, _ in dataset.skipped)
    n = min(len(dataset), args.max_images or len(dataset))
    batch_size = batch_size_for(args, cfg)
    check_batchable(dataset, batch_size)
    fid = FidKid(weights, device) if weights else None  # a file that is not the Inception weights stops us here
    scorer, segmenter = fcn_scorer(args, cfg, data) if args.fcn_score else (None, None)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False, num_workers=0)
    save, gcgan = thumbnail_writer(out / "images", scorer), GcGANScores(dataset)

    def on_batch(x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> None:
        save(x, fake, y)
        gcgan(fake)
        if fid is not None:
            fid.update(fake, y)
    with tqdm(loader, desc="evaluate", unit="batch", dynamic_ncols=True) as bar:  # closed before a Ctrl-C line
        result = evaluate_generator(G, bar, device, precision, args.mode, args.seed, on_batch=on_batch)

    per_image = {k: result["per_image"][k].tolist() for k in METRICS} | gcgan.per_image
    rows = [{"file": dataset.files[i].relative_to(data).as_posix(), **{k: per_image[k][i] for k in PER_IMAGE}}
            for i in range(n)]
    set_figures = fid.result() if fid is not None else {}
    write_csv(out / "metrics.csv", rows, set_figures)
    summary = {"checkpoint": "mean training target (--mean-baseline)" if args.mean_baseline else str(args.checkpoint),
               "data": str(data), "n_images": n, "skipped_files": skipped,
               "mode": args.mode, "seed": args.seed, "batch_size": batch_size, "image_size": cfg["IMAGE_SIZE"],
               "direction": cfg["DIRECTION"], "device": str(device), "precision": precision,
               **{k: finite_or_none(result["summary"][k]) for k in (*METRICS, "ratio")},
               **{k: sum(v) / len(v) for k, v in gcgan.per_image.items()},
               "pixel_acc_deltas": list(PIXEL_ACC_DELTAS), "gcgan_deltas": list(GCGAN_DELTAS), **set_figures}
    if scorer is not None:
        summary["fcn"] = scorer.result() | {"segmenter": str(segmenter)}
        if warning := scorer.off_palette.warning(f"{data} ({cfg['DIRECTION']})", scorer.palette):
            print(warning, file=sys.stderr)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_html(out / "index.html", rows, summary)
    print(summary_table(summary))
    if scorer is not None:
        for who in ("generated", "real"):
            print(f"  FCN-score, {who + ' photos':<16} " + "  ".join(f"{k} {v:.3f}" for k, v in summary["fcn"][who].items()))
    if skipped:
        print(f"skipped {len(skipped)} file(s), unreadable or without a partner (each listed above with why, and in "
              f"summary.json)", file=sys.stderr)
    print(f"wrote {out / 'metrics.csv'}, {out / 'summary.json'} and {out / 'index.html'}")
    return 0


def write_csv(path: Path, rows: list[dict[str, Any]], set_figures: dict[str, Any]) -> None:
    """One row per image; with --fid, FID and KID columns filled in one last row for the whole set (with the
    per-image figures' means), "(all N images)"."""
    figures = [k for k in ("fid", "kid", "kid_std") if k in set_figures]
    fmt = lambda v: "" if v is None else f"{v:.6g}"  # noqa: E731
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["file", *PER_IMAGE, *figures])
        writer.writeheader()
        writer.writerows({**r, **{k: fmt(r[k]) for k in PER_IMAGE}} for r in rows)
        if figures:
            means = {k: fmt(sum(r[k] for r in rows) / len(rows)) for k in PER_IMAGE}
            writer.writerow({"file": f"(all {len(rows)} images)", **means, **{k: fmt(set_figures[k]) for k in figures}})


class GcGANScores:
    """An on_batch callback: GcGAN's maps figures of each output against its target as read from the data file
    (harness/metrics.py), in loader order."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.per_image: dict[str, list[float]] = {k: [] for k in GCGAN_METRICS}

    def __call__(self, fake: torch.Tensor) -> None:
        for image in fake:
            real = self.dataset.load_pair(len(self.per_image[GCGAN_METRICS[0]]))[1]
            for k, v in gcgan_maps_scores(image, real).items():
                self.per_image[k].append(v)


def training_folder(args: argparse.Namespace, cfg: dict[str, Any], data: Path, why: str) -> Path:
    """--fcn-train, else the checkpoint's TRAIN_DIR, else the train/ folder beside --data."""
    candidates = [args.fcn_train, cfg.get("TRAIN_DIR"), data.resolve().parent / "train"]
    train = next((Path(c) for c in candidates if c and Path(c).is_dir()), None)
    if train is None:
        raise ConfigError(f"{why} needs the real training files, and none were found (the checkpoint's TRAIN_DIR, "
                          f"{data.resolve().parent / 'train'}): pass --fcn-train FOLDER")
    return train


def fcn_scorer(args: argparse.Namespace, cfg: dict[str, Any], data: Path) -> tuple[Any, Path]:
    """The FCN scorer of this dataset, its segmenter trained on the training folder's real photos."""
    from harness.fcn_score import scorer_for
    return scorer_for(training_folder(args, cfg, data, "--fcn-score"), cfg["DIRECTION"], cfg.get("PRESET", ""),
                      args.segmenter, retrain=args.retrain_segmenter)


class MeanImage(torch.nn.Module):
    """A stand-in generator whose output is the same image for every input: the mean target of a training set."""

    def __init__(self, dataset: Any):
        super().__init__()
        total = sum(dataset[i][1].double() for i in range(len(dataset)))  # a running sum: one image in memory
        self.register_buffer("mean", (total / len(dataset)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean.expand(x.shape[0], -1, -1, -1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = model_arguments(__doc__, "evaluate.py", precision="fp32")  # scores that compare across machines
    ap.add_argument("--data", type=path_argument(Path), required=True,
                    help="folder of side-by-side A|B images or A/ + B/ folders")
    ap.add_argument("--output", "--out", type=path_argument(Path), default=None,
                    help="output folder (default <checkpoint dir>/eval_<data name>_<checkpoint name>); --out is its former "
                         "name")
    ap.add_argument("--max-images", type=int, default=0, help="score only the first N files (0 = all)")
    ap.add_argument("--fcn-score", action="store_true", help="add the paper's FCN-score (labels -> photo data)")
    ap.add_argument("--fcn-train", type=path_argument(Path), default=None,
                    help="real A|B training files for the FCN-score's segmenter (default: the checkpoint's TRAIN_DIR)")
    ap.add_argument("--mean-baseline", action="store_true",
                    help="score the mean training target as every output instead of the generator (a baseline)")
    ap.add_argument("--segmenter", type=path_argument(Path), default=None,
                    help="where the segmenter is saved and reused (default runs/fcn/<dataset>_<direction>.pt)")
    ap.add_argument("--retrain-segmenter", action="store_true",
                    help="train the FCN-score's segmenter anew and replace the saved one")
    ap.add_argument("--fid", action="store_true", help="add FID and KID (needs the Inception weights, see below)")
    ap.add_argument("--inception-weights", type=path_argument(Path), default=None,
                    help=f"FID/KID's {WEIGHTS_NAME} (default: torch's hub cache; never downloaded)")
    args = ap.parse_args(argv)
    if args.batch_size < 0 or args.max_images < 0:
        ap.error("--batch-size and --max-images must be >= 0")
    if args.inception_weights and not args.fid:
        ap.error("--inception-weights is for --fid: add --fid")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_on_error(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
