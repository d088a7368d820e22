"""Images over the pixel limit (decompression bombs) are refused as a damaged file is, wherever they are read:
utils.read_image and the dataset's load_pair (a file replaced mid-run), the demo's random validation input and its
uploads.
PIL itself refuses images over twice its own limit with DecompressionBombError, which is neither OSError nor
ValueError; the files here are PNG headers claiming 15000x12000 pixels (conftest.write_png_header).

    python -m pytest tests/test_oversized_images.py -q
"""
from pathlib import Path

import pytest

from conftest import make_dataset, write_pairs, write_png_header
from utils import read_image


def test_read_image_refuses_an_image_over_pils_own_limit_as_a_value_error(tmp_path):
    bomb = write_png_header(tmp_path / "big.png", 15000, 12000)
    with pytest.raises(ValueError) as e:
        read_image(bomb)
    assert str(e.value) == ("over PIL's decompression-bomb limit (Image size (180000000 pixels) exceeds limit of "
                            "178956970 pixels); downscale it")


@pytest.mark.parametrize("replacement", ["over the pixel limit", "garbage"])
def test_a_training_file_replaced_mid_run_is_one_oserror_naming_it(tmp_path, replacement):
    """Checked before training, then replaced: the loader's error names the file, as for a garbage file (train.py
    and every script print an OSError as one `error:` line, exit 1)."""
    paths = write_pairs(tmp_path / "train", 2)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    if replacement == "garbage":
        paths[0].write_bytes(b"not an image")
    else:
        write_png_header(paths[0], 15000, 12000)
    with pytest.raises(OSError) as e:
        dataset.load_pair(0)
    assert str(e.value).startswith(f"{paths[0]}: cannot be read any more (")
    assert "\n" not in str(e.value)


def test_a_file_replaced_mid_run_is_one_line_from_a_loader_worker_too(tmp_path, capsys):
    """NUM_WORKERS > 0 (the default on a multi-core machine): torch re-raises a worker's error with the worker's
    traceback as its message; the scripts still print one `error:` line naming the file, exit 1."""
    from torch.utils.data import DataLoader
    from harness.errors import exit_on_error
    paths = write_pairs(tmp_path / "train", 2)
    dataset = make_dataset(tmp_path / "train", image_size=32, load_size=36)
    paths[1].write_bytes(b"not an image")
    code = exit_on_error(lambda: sum(1 for _ in DataLoader(dataset, num_workers=1, timeout=60)))
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"error: {paths[1]}: cannot be read any more (") and err.count("\n") == 1, err
    assert "Traceback" not in err and "worker" not in err


@pytest.fixture(scope="module")
def demo_app(tiny_run, tmp_path_factory):
    """demo.build_app on the tiny run, its random-input button reading a folder whose only file is over the limit."""
    import demo
    from harness.inference import load_for_inference
    folder = tmp_path_factory.mktemp("oversized_val")
    bomb = write_png_header(folder / "big.png", 15000, 12000)
    G, cfg, device, precision = load_for_inference(tiny_run / "run" / "generator.pt", "eval", "cpu")
    return demo.build_app(G, cfg, device, precision, tiny_run / "run" / "generator.pt", [(bomb, None)]), bomb


def test_the_demos_random_input_names_a_file_over_the_limit(demo_app):
    import gradio as gr
    app, bomb = demo_app
    random_input = next(f.fn for f in app.fns.values() if f.api_name == "random_input")
    with pytest.raises(gr.Error) as e:  # a message in the page, not an exception gradio logs with a traceback
        random_input()
    assert e.value.message.startswith(f"{bomb}: ")
    assert "decompression-bomb limit" in e.value.message and "downscale it" in e.value.message


def test_the_demo_says_an_upload_over_pils_limit_is_too_large_not_unreadable(tmp_path):
    import gradio as gr
    import demo
    bomb = write_png_header(tmp_path / "huge.png", 15000, 12000)
    with pytest.raises(gr.Error) as e:
        demo.read_upload({"path": str(bomb), "orig_name": "huge.png"}, 3, demo.MAX_PIXELS)
    assert e.value.message.startswith("huge.png is larger than ") and "downscale it first" in e.value.message
    assert "not an image" not in e.value.message
