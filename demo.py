"""Interactive web demo: upload or draw an input, get the generator's translation (Gradio, runs offline).

    python demo.py --checkpoint runs/facades/generator.pt              # then open http://127.0.0.1:7860
    python demo.py --checkpoint runs/facades/generator.pt --port 8000 --val-dir data/facades/val
    python demo.py --checkpoint runs/facades/generator.pt --host 0.0.0.0   # reachable from other machines

The page has an input image (upload, paste, or a random validation input), a sketchpad whose brush colours are
the facades label colours (12 classes), the test-time mode (paper: dropout on and the image's own batch-norm
statistics, §3.3; eval: deterministic) and a seed for the paper mode's dropout noise. The output has the input's
size: the input is resized to the model's IMAGE_SIZE and the output resized back, as predict.py's --fit resize.

Scripts can call the named endpoint /translate (image in, image out; mode and seed optional):
    from gradio_client import Client, handle_file
    out_path = Client("http://127.0.0.1:7860/").predict(handle_file("labels.png"), "eval", 0, api_name="/translate")

It listens on 127.0.0.1 unless --host says otherwise, makes no share link, and sends no analytics: the page and
the server work without any network. Bad inputs (not an image, too large) get a message in the page; the server
keeps serving.
"""
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage reports, no version check
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import base64
import binascii
import io
import random
import sys
import traceback
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dataset import Pair, read_pair
from harness.data_checks import find_pairs
from harness.errors import CheckpointError, ConfigError, path_argument
from harness.fcn_score import FACADES_PALETTE  # the facades label colours: the sketchpad's brushes
from harness.inference import fit_back, fit_to_model, load_for_inference
from utils import generate, read_image, test_mode

MAX_PIXELS = 4096 * 4096  # larger uploads are refused: the output comes back at the input's size
MAX_UPLOAD = "50mb"


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def read_upload(payload: dict[str, Any] | None, channels: int, max_pixels: int) -> np.ndarray:
    """An image component's raw value -> HxWxC uint8, converted as training converts files; gr.Error if unusable."""
    if not payload:
        raise gr.Error("No input image: upload one, draw one, or load a random validation input.")
    path = payload.get("path")
    source: Any = path
    if not path and str(payload.get("url", "")).startswith("data:"):  # pasted images may arrive inline
        try:
            source = io.BytesIO(base64.b64decode(payload["url"].split(",", 1)[1]))
        except (IndexError, binascii.Error):
            raise gr.Error("The input is not a readable image (bad inline data).") from None
    name = payload.get("orig_name") or (Path(path).name if path else "the input")
    try:  # the header alone: refuse huge images before decoding them
        with Image.open(source) as im:
            width, height = im.size
    except Image.DecompressionBombError:  # over PIL's own limit: an image, only far too large
        raise gr.Error(f"{name} is larger than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, more than this demo's limit of "
                       f"{max_pixels:,}; downscale it first.") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise gr.Error(f"{name} is not an image this demo can read ({type(e).__name__}); upload a PNG, JPEG, "
                       f"BMP or WebP.") from None
    if width * height > max_pixels:
        raise gr.Error(f"{name} is {width}x{height} = {width * height:,} pixels, more than this demo's limit of "
                       f"{max_pixels:,}; downscale it first.")
    if hasattr(source, "seek"):
        source.seek(0)
    try:  # palette, alpha (onto white), 16-bit, CMYK and grayscale become the model's channel count
        return read_image(source, channels)
    except (OSError, ValueError, SyntaxError) as e:
        raise gr.Error(f"{name} cannot be used: {e}") from None


def translate_array(G: torch.nn.Module, cfg: dict[str, Any], image: np.ndarray, mode: str, seed: int,
                    device: torch.device, precision: str) -> np.ndarray:
    """HxWxC uint8 -> the generator's HxWxC (or HxW) uint8 output at the same size."""
    x = fit_to_model(image, "resize", cfg["IMAGE_SIZE"], G)
    with test_mode(G, mode, seed):
        out = generate(G, x[None], device, precision).cpu()[0]
    out = fit_back(out, image.shape[:2], "resize")
    pixels = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def palette_legend(palette: tuple[tuple[str, tuple[int, int, int]], ...]) -> str:
    swatch = ('<span style="display:inline-block;margin:2px 8px 2px 0"><span style="display:inline-block;width:14px;'
              'height:14px;vertical-align:middle;border:1px solid #888;background:{}"></span> {}</span>')
    return "".join(swatch.format(hex_colour(rgb), name) for name, rgb in palette)


def build_app(G: torch.nn.Module, cfg: dict[str, Any], device: torch.device, precision: str, checkpoint: Path,
              val_pairs: list[Pair], max_pixels: int = MAX_PIXELS) -> gr.Blocks:
    in_channels = G.hparams["in_channels"]
    size = cfg["IMAGE_SIZE"]

    def translate(payload: dict[str, Any] | None, mode: str = "paper", seed: Any = 0) -> np.ndarray:
        """Translate one image with the loaded generator; the output has the input's size."""
        image = read_upload(payload, in_channels, max_pixels)
        if mode not in ("paper", "eval"):
            raise gr.Error(f"mode must be 'paper' or 'eval', got {mode!r}")
        try:
            seed = int(seed or 0)
        except (TypeError, ValueError, OverflowError):
            raise gr.Error(f"seed must be a whole number, got {seed!r}") from None
        try:
            return translate_array(G, cfg, image, mode, seed, device, precision)
        except Exception as e:  # noqa: BLE001 - a message in the page, the details in the server's log
            traceback.print_exc()
            raise gr.Error(f"translation failed: {type(e).__name__}: {str(e)[:200]}") from None

    def random_input() -> np.ndarray:
        if not val_pairs:
            raise gr.Error("No validation images: start the demo with --val-dir pointing at a data folder.")
        path, partner = random.choice(val_pairs)  # an A|B file, or an A/ file and its B/ partner
        try:
            return read_pair(path, cfg["DIRECTION"], in_channels, G.hparams["out_channels"], partner)[0].squeeze()
        except (OSError, ValueError, SyntaxError) as e:
            raise gr.Error(f"{path}: {e}") from None

    def use_drawing(value: dict[str, Any] | None) -> np.ndarray:
        if not value or value.get("composite") is None:
            raise gr.Error("The sketchpad is empty.")
        return np.asarray(value["composite"])[:, :, :3]

    blank = np.zeros((size, size, 3), np.uint8) + np.array(FACADES_PALETTE[0][1], np.uint8)
    colours = [hex_colour(rgb) for _, rgb in FACADES_PALETTE]
    with gr.Blocks(title="pix2pix demo", analytics_enabled=False) as app:
        gr.Markdown(f"## pix2pix: image-to-image translation\n`{checkpoint}`: {cfg['DIRECTION']}, trained at "
                    f"{size} px. Upload, paste or draw an input; the output has the input's size.")
        with gr.Row():
            source = gr.Image(label="Input", type="filepath", sources=("upload", "clipboard"), format="png",
                              height=320, buttons=["fullscreen"], elem_id="input-image")
            # no "share" button: it would post to an outside service
            output = gr.Image(label="Output", format="png", height=320, interactive=False,
                              buttons=["download", "fullscreen"], elem_id="output-image")
        with gr.Row(equal_height=False):
            random_button = gr.Button("Random validation input", elem_id="random-btn", interactive=bool(val_pairs))
            mode = gr.Radio(["paper", "eval"], value="paper", label="Test-time mode", show_label=True,
                            info="paper: dropout on, the image's own statistics (§3.3); eval: deterministic")
            seed = gr.Number(value=0, precision=0, label="Seed", info="the paper mode's dropout noise")
            run_button = gr.Button("Translate", variant="primary", elem_id="translate-btn")
        with gr.Accordion("Draw a facade label map", open=False, elem_id="sketch"):
            gr.HTML(palette_legend(FACADES_PALETTE))
            sketch = gr.ImageEditor(value={"background": blank, "layers": [], "composite": blank}, type="numpy",
                                    format="png", image_mode="RGB", sources=(), canvas_size=(size, size), layers=False,
                                    transforms=(), eraser=False, label="Sketchpad (brush colours = label classes)",
                                    brush=gr.Brush(colors=colours, default_color=colours[2], color_mode="fixed",
                                                   default_size=max(2, size // 32)))
            draw_button = gr.Button("Use drawing as input", elem_id="draw-btn")

        # the API endpoint takes the raw upload (preprocess=False) so that unreadable files get our message
        run_button.click(translate, [source, mode, seed], output, api_name="translate", preprocess=False)
        random_button.click(random_input, None, source, api_name="random_input").then(
            translate, [source, mode, seed], output, preprocess=False, api_visibility="private")
        draw_button.click(use_drawing, sketch, source, api_visibility="private").then(
            translate, [source, mode, seed], output, preprocess=False, api_visibility="private")
    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring (top of demo.py) for details.")
    ap.add_argument("--checkpoint", type=path_argument(Path), required=True,
                    help="generator.pt, any training checkpoint, or an official-code latest_net_G.pth")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 = every interface)")
    ap.add_argument("--val-dir", type=path_argument(Path), default=None,
                    help="A|B folder for the random-input button (default: the checkpoint's VAL_DIR)")
    ap.add_argument("--direction", choices=("AtoB", "BtoA"), default=None,
                    help="which half of a --val-dir A|B file is the input, for files that store no direction (an "
                         "official latest_net_G.pth)")
    ap.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    ap.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger uploads")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        G, cfg, device, precision = load_for_inference(args.checkpoint, "eval", args.device, direction=args.direction,
                                                       needs_direction=args.val_dir is not None)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    val_dir = args.val_dir or Path(cfg.get("VAL_DIR", ""))
    val_pairs = find_pairs(val_dir)[0] if str(val_dir) and val_dir.is_dir() else []  # either data layout
    if args.val_dir and not val_pairs:
        print(f"error: --val-dir {args.val_dir}: no images found there", file=sys.stderr)
        return 1
    print(f"{args.checkpoint}: {cfg['DIRECTION']}, {cfg['IMAGE_SIZE']} px, {device}, {precision}; random inputs "
          f"from {val_dir if val_pairs else '(none: pass --val-dir)'}", flush=True)
    app = build_app(G, cfg, device, precision, args.checkpoint, val_pairs, args.max_pixels)
    app.queue(default_concurrency_limit=1)  # one translation at a time: G's mode is switched per call
    try:
        app.launch(server_name=args.host, server_port=args.port, share=False, show_error=True, ssr_mode=False,
                   quiet=True, max_file_size=MAX_UPLOAD, inbrowser=False, footer_links=["api"],
                   prevent_thread_lock=True,
                   theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]))
    except OSError:
        print(f"error: cannot listen on {args.host}:{args.port} (in use, or not an address of this machine); "
              f"choose another --port or --host", file=sys.stderr)
        return 1
    print(f"serving on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    app.block_thread()  # until Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(main())
