"""Run a trained pix2pix generator on your own images, of any size and aspect ratio.

    python predict.py --checkpoint runs/pix2pix/generator.pt --input my_labels/ --output out/
    python predict.py --checkpoint runs/facades/generator.pt --input "scans/*.png" one.jpg --output out/ --fit pad
    python predict.py --checkpoint runs/facades/generator.pt --input data/facades/val --output strips/ --paired

--input takes image files, folders (searched recursively) and glob patterns (quote them), several at once.
Each result is a PNG at the input's original size, named after the input; folders keep their sub-folder layout.

The U-Net needs sides divisible by 2^num_downs (256 for the paper's model), a ResNet by 4, so each image is fitted:
  --fit resize            resize to the training IMAGE_SIZE square, translate, resize the output back: the scale
                          the network was trained at (a non-square image is stretched, then un-stretched)
  --fit pad               reflect-pad to the next multiple (for a ResNet at least 8 px), translate, crop the
                          padding off: native scale
  --fit auto (default)    pad for a model trained on unscaled images (PREPROCESS crop or none), else resize
--paired reads data like the training data, A|B files or A/ + B/ folders (the checkpoint's DIRECTION says which
side is the input), and writes input | output | target strips instead.

--mode paper (default, as load_generator and the paper §3.3: dropout on, batch-norm with the batch's
statistics; --seed fixes the dropout noise) or eval (dropout off, running statistics). In paper mode a larger
--batch-size makes an output depend on its batch-mates, so it defaults to 1 there, as the official test.py; in
eval mode it only changes speed and defaults to the checkpoint's BATCH_SIZE. Only images of the same fitted size
are batched together.

--checkpoint also takes a latest_net_G.pth of the official pix2pix code (e.g. its pretrained generators, which
`python download_dataset.py --pretrained NAME` fetches into pretrained/); such a file stores no direction, so
--paired needs --direction there.

Exit code 0 if at least one image was written: unreadable images are skipped, listed at the end, and do not stop
the run. 1 if the checkpoint is missing or corrupt, no input image was found, or nothing could be written;
2 for bad arguments.
"""
import argparse
import glob
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image
from tqdm import tqdm

from dataset import read_pair, to_tensor
from harness.data_checks import IMG_EXTENSIONS, find_pairs, list_images
from harness.errors import ConfigError, DatasetError, exit_on_error, path_argument
from harness.inference import (batch_size_for, check_output_folder, fit_back, fit_to_model, load_for_inference,
                               model_arguments)
from utils import generate, read_image, sample_grid, test_mode, to_unit


# ----------------------------------------------------------------------------- inputs

def find_images(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(image, output name) for files, folders (recursive) and glob patterns; each file once, in order given."""
    found: dict[Path, tuple[Path, Path]] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():  # an empty folder: reported below if nothing at all is found
            files = [(f, f.relative_to(path)) for f in list_images(path)]
        elif path.is_file():
            files = [(path, Path(path.name))]  # named explicitly: tried whatever its extension
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [(m, Path(m.name)) for m in matches if m.is_file() and m.suffix.lower() in IMG_EXTENSIONS]
        for f, name in files:
            found.setdefault(f.resolve(), (f, name))
    # different inputs can share an output name (x.jpg and x.png, or x.png in two folders): number the later ones
    taken, result = set(), []
    for f, name in found.values():
        out, n = name.with_suffix(".png"), 0
        while out in taken:
            n += 1
            out = name.with_name(f"{name.stem}_{n}.png")
        taken.add(out)
        result.append((f, out))
    return result


def ab_partners(inputs: list[str]) -> tuple[dict[Path, Path], list[tuple[Path, str]]]:
    """--paired on A/ + B/ folders (the other data layout): each A file's B partner, by resolved path, and the files
    with no partner, with why."""
    partner: dict[Path, Path] = {}
    unmatched: list[tuple[Path, str]] = []
    for item in inputs:
        if Path(item, "A").is_dir() and Path(item, "B").is_dir():
            pairs, lost = find_pairs(item)
            partner |= {a.resolve(): b for a, b in pairs}
            unmatched += lost
    return partner, unmatched


@dataclass
class Item:
    path: Path
    name: Path  # output path relative to --output
    x: torch.Tensor  # the model's input, fitted: CxH'xW' in [-1, 1]
    size: tuple[int, int]  # original (height, width)
    original: torch.Tensor | None = None  # --paired: the input and target halves at their original size
    target: torch.Tensor | None = None


def load_item(path: Path, name: Path, args: argparse.Namespace, cfg: dict[str, Any], G: torch.nn.Module,
              partner: Path | None = None) -> Item:
    in_ch, out_ch = G.hparams["in_channels"], G.hparams["out_channels"]
    if args.paired:  # an A|B file, or an A/ file and its B/ `partner`
        x, y = read_pair(path, cfg["DIRECTION"], in_ch, out_ch, partner)
        if x.shape[1] == 0:
            raise DatasetError(f"{path}: too narrow to split into A|B halves")
        return Item(path, name, fit_to_model(x, args.fit, cfg["IMAGE_SIZE"], G), x.shape[:2],
                    to_tensor(x), to_tensor(y))
    x = read_image(path, in_ch)  # converts palette, alpha, 16-bit, grayscale/RGB as training does
    return Item(path, name, fit_to_model(x, args.fit, cfg["IMAGE_SIZE"], G), x.shape[:2])


def reason(e: Exception) -> str:
    """Why an image could not be used, in a few words."""
    return str(e).split("; ")[0] if isinstance(e, ValueError) else f"cannot be read as an image ({type(e).__name__}: {e})"


# ----------------------------------------------------------------------------- the run

def predict(args: argparse.Namespace) -> int:
    check_output_folder(args.output)
    G, cfg, device, precision = load_for_inference(args.checkpoint, args.mode, args.device, args.precision,
                                                   args.direction, needs_direction=args.paired)
    if args.fit == "auto":  # crops of unscaled images: the model knows the native scale
        args.fit = "pad" if cfg["PREPROCESS"] in ("crop", "none") else "resize"
    partner, unmatched = ab_partners(args.input) if args.paired else ({}, [])
    taken = {b.resolve() for b in partner.values()} | {p.resolve() for p, _ in unmatched}  # not A|B files
    images = [(path, name) for path, name in find_images(args.input) if path.resolve() not in taken]
    if not images:
        print(f"error: no images found in {' '.join(args.input)} (files, folders or glob patterns of "
              f"{', '.join(IMG_EXTENSIONS)})", file=sys.stderr)
        return 1
    inputs = {path.resolve() for path, _ in images}  # --output inside an --input folder: never write over one
    clash = next(((path, args.output / name) for path, name in images if (args.output / name).resolve() in inputs),
                 None)
    if clash:
        raise ConfigError(f"--output {args.output}: {clash[1]} would overwrite the input image {clash[0]}; choose "
                          f"another output folder")
    batch_size = batch_size_for(args, cfg)
    failed: list[tuple[Path, str]] = list(unmatched)
    written = 0
    bar = tqdm(total=len(images), unit="img", desc="predict", dynamic_ncols=True)

    def run_batch(items: list[Item]) -> None:
        nonlocal written
        try:
            out = generate(G, torch.stack([it.x for it in items]), device, precision).cpu()
        except (MemoryError, RuntimeError) as e:  # out of memory (CPU or GPU): the other images still get done
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            failed.extend((it.path, f"the network could not run on it at {it.x.shape[2]}x{it.x.shape[1]} ({why}); "
                                    f"try --fit resize or a smaller image") for it in items)
            bar.update(len(items))
            return
        for it, o in zip(items, out):
            o = fit_back(o, it.size, args.fit)
            image = sample_grid(it.original[None], o[None], it.target[None]) if args.paired else to_unit(o[None])[0]
            dest = args.output / it.name
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                save_image(image, dest)
                written += 1
            except OSError as e:
                failed.append((it.path, f"cannot write {dest}: {e.strerror or e}"))
        bar.update(len(items))

    pending: dict[tuple[int, ...], list[Item]] = {}  # fitted size -> images waiting for a full batch
    with test_mode(G, args.mode, args.seed), bar:  # the bar closes on any way out, before an error or Ctrl-C line
        for path, name in images:
            try:
                item = load_item(path, name, args, cfg, G, partner.get(path.resolve()))
            except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others
                failed.append((path, reason(e)))
                bar.update(1)
                continue
            group = pending.setdefault(tuple(item.x.shape), [])
            group.append(item)
            if len(group) == batch_size:
                run_batch(pending.pop(tuple(item.x.shape)))
        for group in pending.values():
            run_batch(group)

    what = "input | output | target strip(s)" if args.paired else "image(s)"
    print(f"wrote {written} of {len(images) + len(unmatched)} {what} to {args.output} (--fit {args.fit}, "
          f"--mode {args.mode}, {device}, {precision})")
    if failed:
        listing = "\n".join(f"  {p}: {why}" for p, why in failed)
        print(f"skipped {len(failed)} image(s):\n{listing}", file=sys.stderr)
    return 0 if written else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = model_arguments(__doc__, "predict.py")
    ap.add_argument("--input", nargs="+", type=path_argument(str), required=True,
                    help="image files, folders and/or quoted glob patterns")
    ap.add_argument("--output", type=path_argument(Path), required=True, help="folder for the results (created)")
    ap.add_argument("--fit", choices=("auto", "resize", "pad"), default="auto",
                    help="resize to the training IMAGE_SIZE and back, or reflect-pad and crop back; auto (default): "
                         "pad if the model was trained with PREPROCESS crop or none, else resize")
    ap.add_argument("--paired", action="store_true", help="inputs are A|B files: write input | output | target")
    args = ap.parse_args(argv)
    if args.batch_size < 0:
        ap.error("--batch-size must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_on_error(lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())
