"""Export a trained generator for deployment, and check the exported file against PyTorch.

    python export.py --checkpoint runs/facades/generator.pt --output generator.onnx
    python export.py --checkpoint runs/facades/checkpoints/last.pt --output g.onnx --format onnx
    python export.py --checkpoint runs/facades/generator.pt --output latest_net_G.pth --format official

--format onnx (the default): the generator in eval mode (dropout off, batch norm folded into the convolutions),
with dynamic batch, height and width; sides must be multiples of 2^num_downs (256 for the paper's model; 4 for a
ResNet). The file is checked with onnxruntime against PyTorch eval on two sizes (one square at batch 1, one
non-square at batch 2): it is kept only if the max abs difference is at most 1e-4, otherwise an existing --output
is left as it was.
Prints the input and output names and shapes, the value range ([-1, 1]) and the required side multiple.

--format official: the official code's latest_net_G.pth (junyanz/pytorch-CycleGAN-and-pix2pix), with the options
its test.py needs printed. Only a generator that computes the official network's function qualifies: trained
with DROPOUT_PLACEMENT=official (or DROPOUT=False) after the U-Net skip fix; others are refused, nothing written.

Exit code 0 on success, 1 for a missing/corrupt checkpoint, an unwritable output or a failed check,
2 for bad arguments.
"""
import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from harness.atomic import atomic_path
from harness.checkpoint import load_generator
from harness.errors import ExportError, OfficialFormatError, exit_on_error, path_argument
from harness.inference import image_size_of


def export_onnx_format(G: nn.Module, output: Path) -> int:
    """Write and check the ONNX file; print what a user of it needs to know."""
    from harness.onnx_export import TOLERANCE, check_shapes, describe, export_onnx, max_difference, onnx_session
    cfg = getattr(G, "train_config", {})
    # image_size_of: also for files that store no settings (an official ResNet's is 256, not its side multiple)
    metadata = {"image_size": image_size_of(G)} | ({"direction": cfg["DIRECTION"]} if "DIRECTION" in cfg else {})
    # write beside the destination and rename only once the check passes: a failed export loses nothing
    with atomic_path(output) as tmp:
        export_onnx(G, tmp, metadata)
        shapes = check_shapes(G)
        diff = max_difference(G, onnx_session(tmp), shapes)
        if not diff <= TOLERANCE:
            raise ExportError(f"{output}: onnxruntime differs from PyTorch by up to {diff:.2e} (> {TOLERANCE:g}"
                              f"{'; NaN or Inf outputs' if diff == float('inf') else ''}); the file was not written")
    facts = describe(output)
    name, shape = next(iter(facts["inputs"].items()))
    out_name, out_shape = next(iter(facts["outputs"].items()))
    sizes = ", ".join(f"{s[0]}x{s[1]}x{s[2]}x{s[3]}" for s in shapes)
    print(f"wrote {output} ({facts['size_mb']:.1f} MB, ONNX ops: {', '.join(facts['ops'])})\n"
          f"input:  {name!r} float32 {shape}, values in [-1, 1] (pixel / 127.5 - 1), NCHW\n"
          f"output: {out_name!r} float32 {out_shape}, values in [-1, 1] ((value + 1) * 127.5 = pixel)\n"
          f"height and width: any multiples of {facts['metadata']['side_multiple']}; batch: any\n"
          f"mode: eval (dropout off, running batch-norm statistics)"
          + (f"; trained {metadata['direction']} at {metadata['image_size']} px" if len(metadata) == 2 else "")
          + f"\nchecked with onnxruntime against PyTorch eval on {sizes}: max abs difference {diff:.2e} "
          f"(limit {TOLERANCE:g})")
    return 0


def export_official_format(G: nn.Module, output: Path) -> int:
    """Write the official code's generator file; print how its test.py loads it."""
    from harness.official_format import official_options, official_state_dict
    try:
        state = official_state_dict(G)
    except OfficialFormatError as e:
        raise ExportError(f"cannot export in the official format: {e}") from None
    with atomic_path(output) as tmp:
        torch.save(state, tmp)
    try:
        options = official_options(G)
    except OfficialFormatError as e:  # the file is fine; the official test.py just has no --netG for this depth
        options = f"(no test.py option builds it: {e})"
    trained = getattr(G, "train_config", {})
    direction = trained.get("DIRECTION", "AtoB|BtoA (this file stores none: the side of your A|B files to translate)")
    size = image_size_of(G)  # test.py's defaults are for 256 px: say another size
    sizes = f" --load_size {size} --crop_size {size}" if size != 256 else ""
    print(f"wrote {output} (the official pix2pix's latest_net_G.pth). To run it with the official code, put it at "
          f"checkpoints/NAME/latest_net_G.pth and run:\n  python test.py --dataroot DATA --name NAME --model pix2pix "
          f"--direction {direction} {options}{sizes}")
    return 0


# one entry per output format; each takes the loaded eval-mode generator and the output path
FORMATS: dict[str, Callable[[nn.Module, Path], int]] = {"onnx": export_onnx_format,
                                                         "official": export_official_format}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring (top of export.py) for details.")
    ap.add_argument("--checkpoint", type=path_argument(Path), required=True,
                    help="generator.pt, any training checkpoint, or an official-code latest_net_G.pth")
    ap.add_argument("--output", type=path_argument(Path), required=True, help="file to write, e.g. generator.onnx")
    ap.add_argument("--format", choices=sorted(FORMATS), default="onnx", help="output format (default onnx)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def export() -> int:
        try:
            return FORMATS[args.format](load_generator(args.checkpoint, "cpu", mode="eval"), args.output)
        except ImportError as e:
            raise ExportError(f"--format {args.format} needs {e.name}: pip install -r requirements.txt") from None
        except OSError as e:
            raise ExportError(f"cannot write {args.output}: {e.strerror or e}") from None
    return exit_on_error(export)


if __name__ == "__main__":
    sys.exit(main())
