"""Score a trained generator on a folder of A|B images: per-image and mean L1, PSNR, SSIM, and the own/other-target
L1 ratio, written as metrics.csv, summary.json and index.html (input | output | target thumbnails, works offline).

    python evaluate.py --checkpoint runs/facades/generator.pt --data data/facades/val
    python evaluate.py --checkpoint runs/facades/generator_best.pt --data data/facades/test --output results/test

Images are scored in [0, 1] at the model's resolution (the checkpoint's IMAGE_SIZE, through the dataset's eval
transform) with the checkpoint's DIRECTION and channels, so runs compare. L1: lower is better; PSNR (dB) and
SSIM: higher is better; ratio = mean L1 to an image's own target / mean L1 to the other images' targets:
1.0 = the output ignores its input (as a mean-image predictor does), lower is better (harness/metrics.py).

Default --output: <checkpoint folder>/eval_<data folder name>. Deterministic: --seed fixes the dropout noise of the
paper's test mode (--mode paper, the default; or eval). --batch-size defaults to 1 in paper mode, as the official
test.py: there batch-norm uses the batch's statistics, so a larger batch makes each score depend on its batch-mates
(faster, but not the paper's protocol); in eval mode it defaults to the checkpoint's BATCH_SIZE and changes only
the speed. An official-code latest_net_G.pth stores no direction: pass --direction AtoB or BtoA (for other
checkpoints --direction may only repeat their own). Unreadable files are skipped and listed (also in summary.json).
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

from harness.data_checks import check_batchable, checked_dataset
from harness.errors import exit_on_error, path_argument
from harness.inference import batch_size_for, check_output_folder, load_for_inference, model_arguments
from harness.metrics import evaluate_generator

THUMB_SIZE = 256  # thumbnails in index.html are at most this many pixels wide
KINDS = ("input", "output", "target")
METRICS = ("l1", "psnr", "ssim")


def default_out(checkpoint: Path, data: Path) -> Path:
    return checkpoint.parent / f"eval_{data.resolve().name}"


def thumbnail_writer(folder: Path):
    """An on_batch callback for metrics.evaluate_generator: saves each image's input/output/target PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0

    def save(x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> None:
        nonlocal count
        for images in zip(x, fake, y):
            for kind, image in zip(KINDS, images):
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
    fmt = {"l1": "{:.4f}", "psnr": "{:.2f}", "ssim": "{:.4f}", "ratio": "{:.3f}"}
    number = lambda k, v: "n/a" if v is None or not math.isfinite(v) else fmt[k].format(v)  # noqa: E731
    facts = [
        ("checkpoint", summary["checkpoint"]), ("data", summary["data"]), ("images", summary["n_images"]),
        ("skipped files", ", ".join(summary["skipped_files"]) or "none"),
        ("mode / seed / batch size", f"{summary['mode']} / {summary['seed']} / {summary['batch_size']}"),
        ("resolution / direction", f"{summary['image_size']} px / {summary['direction']}"),
        ("mean L1 (lower is better)", number("l1", summary["l1"])),
        ("mean PSNR, dB (higher is better)", number("psnr", summary["psnr"])),
        ("mean SSIM (higher is better)", number("ssim", summary["ssim"])),
        ("own/other-target L1 ratio (1.0 = ignores the input, lower is better)", number("ratio", summary["ratio"])),
    ]
    head = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts)
    body = "".join(
        f"<tr><td>{i + 1}</td><td class=f>{esc(r['file'])}</td>"
        + "".join(f'<td><img src="images/{thumb_name(i, kind)}" alt="{kind}" loading="lazy"></td>' for kind in KINDS)
        + "".join(f"<td>{number(k, r[k])}</td>" for k in METRICS) + "</tr>\n"
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
<tr><th>#</th><th>file</th><th>input</th><th>output</th><th>target</th><th>L1</th><th>PSNR</th><th>SSIM</th></tr>
{body}</table>
</body></html>
""", encoding="utf-8")


def summary_table(summary: dict[str, Any]) -> str:
    def num(key: str, spec: str) -> str:
        return "n/a" if summary[key] is None else format(summary[key], spec)
    return "\n".join([
        f"{summary['n_images']} images of {summary['data']} ({summary['mode']} mode, seed {summary['seed']}, "
        f"batch {summary['batch_size']}, {summary['image_size']} px)",
        f"  L1     {num('l1', '.4f'):>8}     lower is better",
        f"  PSNR   {num('psnr', '.2f'):>8} dB  higher is better",
        f"  SSIM   {num('ssim', '.4f'):>8}     higher is better",
        f"  ratio  {num('ratio', '.3f'):>8}     own/other-target L1: 1.0 = ignores the input, lower is better",
    ])


def evaluate(args: argparse.Namespace) -> int:
    data = Path(args.data)
    out = args.output or default_out(args.checkpoint, data)
    check_output_folder(out)
    G, cfg, device, precision = load_for_inference(args.checkpoint, args.mode, args.device, args.precision,
                                                   args.direction, needs_direction=True)
    dataset = checked_dataset(data, cfg, train=False, bad_files="skip")
    skipped = sorted(str(p.relative_to(data)) for p, _ in dataset.skipped)
    n = min(len(dataset), args.max_images or len(dataset))
    batch_size = batch_size_for(args, cfg)
    check_batchable(dataset, batch_size)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False, num_workers=0)
    with tqdm(loader, desc="evaluate", unit="batch", dynamic_ncols=True) as bar:  # closed before a Ctrl-C line
        result = evaluate_generator(G, bar, device, precision, args.mode, args.seed,
                                    on_batch=thumbnail_writer(out / "images"))

    rows = [{"file": dataset.files[i].relative_to(data).as_posix(),
             **{k: result["per_image"][k][i].item() for k in METRICS}} for i in range(n)]
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["file", *METRICS])
        writer.writeheader()
        writer.writerows({**r, **{k: f"{r[k]:.6g}" for k in METRICS}} for r in rows)
    summary = {"checkpoint": str(args.checkpoint), "data": str(data), "n_images": n, "skipped_files": skipped,
               "mode": args.mode, "seed": args.seed, "batch_size": batch_size, "image_size": cfg["IMAGE_SIZE"],
               "direction": cfg["DIRECTION"], "device": str(device), "precision": precision,
               **{k: finite_or_none(result["summary"][k]) for k in (*METRICS, "ratio")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_html(out / "index.html", rows, summary)
    print(summary_table(summary))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s), listed in summary.json", file=sys.stderr)
    print(f"wrote {out / 'metrics.csv'}, {out / 'summary.json'} and {out / 'index.html'}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = model_arguments(__doc__, "evaluate.py")
    ap.add_argument("--data", type=path_argument(Path), required=True,
                    help="folder of side-by-side A|B images or A/ + B/ folders")
    ap.add_argument("--output", "--out", type=path_argument(Path), default=None,
                    help="output folder (default <checkpoint dir>/eval_<data name>); --out is its former name")
    ap.add_argument("--max-images", type=int, default=0, help="score only the first N files (0 = all)")
    args = ap.parse_args(argv)
    if args.batch_size < 0 or args.max_images < 0:
        ap.error("--batch-size and --max-images must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_on_error(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
