"""evaluate.py: metrics.csv / summary.json / index.html on the session's tiny run, determinism, the default output
folder, errors, the former flag name --out, and the own/other-target L1 ratio on constructed tensors.

    python -m pytest tests/test_evaluate.py -q
"""
import csv
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import evaluate
from conftest import interrupted_at, make_dataset
from harness.metrics import evaluate_generator, own_other_ratio
from harness.checkpoint import load_generator

VAL_FILES = ["000.png", "001.png", "002.png", "003.png"]  # conftest.tiny_run's val folder



@pytest.fixture(scope="module")
def evaluated(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evaluate") / "out"
    assert evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data",
                          str(tiny_run / "data" / "val"), "--output", str(out), "--device", "cpu"]) == 0
    return out  # on the CPU: compared with an evaluation computed here, on the CPU


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_has_one_row_per_image(evaluated):
    rows = read_csv(evaluated / "metrics.csv")
    assert [r["file"] for r in rows] == VAL_FILES
    assert list(rows[0]) == ["file", "l1", "psnr", "ssim", "rmse", "pixel_acc_5", "pixel_acc_16", "gcgan_rmse",
                             "gcgan_acc_5", "gcgan_acc_10"]
    for r in rows:
        assert 0 < float(r["l1"]) < 1 and 0 < float(r["psnr"]) < 60 and -1 <= float(r["ssim"]) <= 1
        assert 0 < float(r["rmse"]) < 255 and 0 <= float(r["pixel_acc_5"]) <= float(r["pixel_acc_16"]) <= 1
        assert 0 < float(r["gcgan_rmse"]) < 255 * 3 ** 0.5
        assert 0 <= float(r["gcgan_acc_5"]) <= float(r["gcgan_acc_10"]) <= 1
    summary = json.loads((evaluated / "summary.json").read_text())
    for k in ("l1", "psnr", "ssim", "rmse", "pixel_acc_5", "pixel_acc_16", "gcgan_rmse", "gcgan_acc_5", "gcgan_acc_10"):
        assert np.mean([float(r[k]) for r in rows]) == pytest.approx(summary[k], rel=1e-5)
    assert summary["pixel_acc_deltas"] == [5, 16] and summary["gcgan_deltas"] == [5, 10]
    page = (evaluated / "index.html").read_text()
    assert "mean pixel accuracy, delta 5" in page and "mean RMSE, grey levels" in page
    assert "mean pixel accuracy, GcGAN&#x27;s protocol, delta 10" in page and "FID" not in page  # FID: only with --fid


def test_summary_json_matches_an_independent_evaluation(evaluated, tiny_run):
    """The checkpoint's own settings (32 px, BtoA, batch 1) and seed 0 in paper mode, computed here directly."""
    summary = json.loads((evaluated / "summary.json").read_text())
    assert summary["n_images"] == 4 and summary["skipped_files"] == []
    assert (summary["mode"], summary["seed"], summary["batch_size"]) == ("paper", 0, 1)
    assert (summary["image_size"], summary["direction"]) == (32, "BtoA")
    assert summary["precision"] == "fp32"  # the default: IEEE fp32 on any device (docs/precision.md)
    G = load_generator(tiny_run / "run" / "generator.pt")
    data = make_dataset(tiny_run / "data" / "val", direction="BtoA", image_size=32, train=False)
    expected = evaluate_generator(G, DataLoader(data, batch_size=1), torch.device("cpu"), seed=0)["summary"]
    for k in ("l1", "psnr", "ssim", "ratio"):
        assert summary[k] == pytest.approx(expected[k], rel=1e-6), k
    assert 0 < summary["ratio"] < 2


class ImageLinks(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.srcs += [v for k, v in attrs if k in ("src", "href")]


def test_index_html_links_existing_local_images(evaluated):
    page = (evaluated / "index.html").read_text()
    parser = ImageLinks()
    parser.feed(page)
    assert len(parser.srcs) == 3 * len(VAL_FILES)  # input, output, target per image; no other links
    assert "script" not in parser.tags and "link" not in parser.tags  # no JS, no external stylesheet or CDN
    for src in parser.srcs:
        assert "://" not in src and not src.startswith("/"), src  # relative: the folder can be moved and viewed offline
        path = evaluated / src
        assert path.is_file(), src
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (32, 32)
    summary = json.loads((evaluated / "summary.json").read_text())
    assert f"{summary['l1']:.4f}" in page and f"{summary['ratio']:.3f}" in page  # the summary is on top
    # one row per image, in file order, with its metrics (rounded for display, so compared with a tolerance)
    number = r"<td>([-\d.]+)</td>"
    cells = re.findall(r"<td class=f>([^<]+)</td>.*?" + number * 9 + "</tr>", page)
    assert [c[0] for c in cells] == VAL_FILES
    for (_, *values), row in zip(cells, read_csv(evaluated / "metrics.csv")):
        assert [float(v) for v in values] == pytest.approx([float(row[k]) for k in list(row)[1:]], abs=0.006)


def test_thumbnails_are_input_output_target_in_file_order(evaluated, tiny_run):
    """BtoA: the input thumbnail is the right half of the file, the target the left half (32 px: no resizing);
    the output thumbnail is the generator's output, as an independent evaluation (paper mode, seed 0) computes it."""
    G = load_generator(tiny_run / "run" / "generator.pt")
    data = make_dataset(tiny_run / "data" / "val", direction="BtoA", image_size=32, train=False)
    outputs = []
    evaluate_generator(G, DataLoader(data, batch_size=1), torch.device("cpu"), seed=0,
                       on_batch=lambda x, fake, y: outputs.extend(fake))
    assert len(outputs) == len(VAL_FILES)
    for i, name in enumerate(VAL_FILES):
        ab = np.asarray(Image.open(tiny_run / "data" / "val" / name), dtype=np.int16)
        def thumb(kind: str) -> np.ndarray:
            return np.asarray(Image.open(evaluated / "images" / f"{i:05d}_{kind}.png"), dtype=np.int16)
        assert np.abs(thumb("input") - ab[:, 32:]).max() <= 1
        assert np.abs(thumb("target") - ab[:, :32]).max() <= 1
        expected = (outputs[i] * 255).permute(1, 2, 0).numpy()
        assert np.abs(thumb("output") - expected).max() <= 1, name


def test_deterministic_and_default_output_folder(evaluated, tiny_run, tmp_path):
    """Twice with the same seed: identical numbers; the default --out is <checkpoint dir>/eval_<data name>_<checkpoint
    name>, so generator.pt and generator_best.pt of one run each keep their own."""
    shutil.copy(tiny_run / "run" / "generator.pt", tmp_path / "generator.pt")
    args = ["--checkpoint", str(tmp_path / "generator.pt"), "--data", str(tiny_run / "data" / "val"), "--device", "cpu"]
    assert evaluate.main(args) == 0
    again = tmp_path / "eval_val_generator"
    assert (again / "metrics.csv").read_bytes() == (evaluated / "metrics.csv").read_bytes()
    first, second = (json.loads((d / "summary.json").read_text()) for d in (evaluated, again))
    keys = ("l1", "psnr", "ssim", "ratio")
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    shutil.copy(tiny_run / "run" / "generator_best.pt", tmp_path / "generator_best.pt")
    assert evaluate.main([*args[:1], str(tmp_path / "generator_best.pt"), *args[2:]]) == 0
    assert (tmp_path / "eval_val_generator_best" / "summary.json").is_file()  # beside, not over, the first
    assert (again / "metrics.csv").read_bytes() == (evaluated / "metrics.csv").read_bytes()

    # the seed really drives the dropout noise of paper mode
    assert evaluate.main([*args, "--out", str(tmp_path / "seed1"), "--seed", "1"]) == 0
    assert json.loads((tmp_path / "seed1" / "summary.json").read_text())["l1"] != first["l1"]


def test_unreadable_file_is_skipped_and_listed(tiny_run, tmp_path, capsys):
    data = tmp_path / "val"
    shutil.copytree(tiny_run / "data" / "val", data)
    (data / "broken.png").write_bytes(b"not an image")
    assert evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data", str(data),
                          "--output", str(tmp_path / "out"), "--mode", "eval"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_files"] == ["broken.png"] and summary["n_images"] == 4
    assert [r["file"] for r in read_csv(tmp_path / "out" / "metrics.csv")] == VAL_FILES
    err = capsys.readouterr().err
    assert f"{data / 'broken.png'}: " in err and "skipped 1 file(s), unreadable or without a partner" in err


@pytest.mark.parametrize("what", ["checkpoint", "data"])
def test_missing_checkpoint_or_data_is_a_clear_error(tiny_run, tmp_path, capsys, what):
    checkpoint = tmp_path / "none.pt" if what == "checkpoint" else tiny_run / "run" / "generator.pt"
    data = tmp_path / "no_such_folder" if what == "data" else tiny_run / "data" / "val"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
    assert what == "checkpoint" or err == (f"error: --data {data} does not exist; give a folder of side-by-side A|B "
                                           f"images or of A/ + B/ folders\n")  # it named TRAIN_DIR, not --data


def test_a_wrong_fcn_train_folder_is_an_error_not_replaced(tiny_run, tmp_path, capsys, monkeypatch):
    """--fcn-train naming no folder was silently replaced by the checkpoint's TRAIN_DIR, so the segmenter was trained
    on other photos than asked; now one line naming --fcn-train, exit 1, before any segmenter is trained."""
    from harness import fcn_score
    trained_on = []
    monkeypatch.setattr(fcn_score, "scorer_for", lambda folder, *args, **kwargs: trained_on.append(folder) or 1 / 0)
    assert evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data",
                          str(tiny_run / "data" / "val"), "--output", str(tmp_path / "o"), "--fcn-score",
                          "--fcn-train", str(tmp_path / "typo")]) == 1
    assert capsys.readouterr().err == (f"error: --fcn-train {tmp_path / 'typo'} does not exist; give a folder of "
                                       f"side-by-side A|B images or of A/ + B/ folders\n")
    assert trained_on == []


# ----------------------------------------------------------------------------- the own/other-target ratio

def test_ratio_is_one_when_the_output_ignores_the_input():
    targets = torch.rand(5, 3, 32, 32)
    same_output = torch.rand(1, 3, 32, 32).expand(5, -1, -1, -1)  # one image, whatever the input
    assert own_other_ratio(same_output, targets) == pytest.approx(1.0, abs=1e-6)


def test_ratio_is_zero_for_outputs_equal_to_their_own_targets():
    targets = torch.rand(5, 3, 32, 32)
    assert own_other_ratio(targets.clone(), targets) == 0.0


def test_ratio_is_above_one_for_outputs_matching_other_targets():
    targets = torch.rand(5, 3, 32, 32)
    assert own_other_ratio(targets.roll(1, dims=0), targets) > 1.0
    assert own_other_ratio(targets[:1], targets[:1]) is None  # undefined for a single image: None, not nan


def test_fcn_score_block_and_segmented_outputs(tiny_run, tmp_path, monkeypatch, capsys):
    """--fcn-score: a segmenter trained on the run's TRAIN_DIR (a smaller recipe here, for speed; the palette
    discovered from its label images), saved and reused; summary.json gains the fcn block for the generated and
    the real photos, and index.html shows the scores and each output's predicted label map."""
    import functools

    import evaluate
    from harness import fcn_score
    monkeypatch.setattr(fcn_score, "Recipe", functools.partial(fcn_score.Recipe, epochs=2, width=4, depth=3,
                                                               image_size=32))
    args = ["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data", str(tiny_run / "data" / "val"),
            "--fcn-score", "--segmenter", str(tmp_path / "seg.pt")]
    assert evaluate.main([*args, "--output", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert f"training on {tiny_run / 'data' / 'train'}" in out and "palette discovered" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    fcn = summary["fcn"]
    assert fcn["segmenter"] == str(tmp_path / "seg.pt") and (tmp_path / "seg.pt").is_file()
    for who in ("generated", "real"):
        assert set(fcn[who]) == {"pixel_acc", "class_acc", "class_iou"}
        assert all(0 <= v <= 1 for v in fcn[who].values())
    page = (tmp_path / "a" / "index.html").read_text()
    assert "FCN-score, generated photos" in page and "output, segmented" in page
    assert len(list((tmp_path / "a" / "images").glob("*_segmented.png"))) == summary["n_images"]
    assert evaluate.main([*args, "--output", str(tmp_path / "b")]) == 0  # the saved segmenter is reused
    assert "reusing" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["fcn"] == fcn


def test_mean_baseline_scores_the_mean_training_target_for_every_input(tiny_run, tmp_path):
    """--mean-baseline: every output is the mean training target, so every output is the same image, and the
    own/other ratio of a constant output is 1 up to the targets' spread."""
    import evaluate
    out = tmp_path / "mean"
    assert evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data",
                          str(tiny_run / "data" / "val"), "--output", str(out), "--mean-baseline"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"].startswith("mean training target")
    outputs = [np.asarray(Image.open(p)) for p in sorted((out / "images").glob("*_output.png"))]
    assert len(outputs) == 4 and all(np.array_equal(o, outputs[0]) for o in outputs)
    train = make_dataset(tiny_run / "data" / "train", direction="BtoA", image_size=32, train=False)
    mean = torch.stack([train[i][1] for i in range(len(train))]).mean(0)
    expected = ((mean.clamp(-1, 1) + 1) / 2 * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.abs(outputs[0].astype(int) - expected).max() <= 1
    assert summary["ratio"] == pytest.approx(1.0, abs=0.15)


def test_an_output_that_is_a_file_is_an_argument_error(tiny_run, tmp_path, capsys):
    """--output naming an existing file gave a NotADirectoryError traceback; now one line, exit 2, before the
    model is loaded, and the file is left alone."""
    (tmp_path / "results").write_text("a file")
    assert evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data",
                          str(tiny_run / "data" / "val"), "--output", str(tmp_path / "results")]) == 2
    assert capsys.readouterr().err == (f"error: --output {tmp_path / 'results'} is a file, not a folder; choose a "
                                       f"folder (it is created if missing)\n")
    assert (tmp_path / "results").read_text() == "a file"


def test_ctrl_c_while_evaluating_ends_with_one_line_and_exit_130(tiny_run, tmp_path):
    """A real `python evaluate.py`, held by the test in its evaluation loop, gets SIGINT: exit 130 and one line,
    no KeyboardInterrupt traceback."""
    ended = interrupted_at("harness.metrics.evaluate_generator", "evaluate.py",
                           ["--checkpoint", tiny_run / "run" / "generator.pt", "--data", tiny_run / "data" / "val",
                            "--output", tmp_path / "out"], tmp_path)
    assert ended.returncode == 130, ended.stderr[-2000:]
    assert ended.stderr.strip().splitlines()[-1] == "interrupted by Ctrl-C" and "Traceback" not in ended.stderr


def test_old_output_flag_names_still_work(tiny_run, tmp_path):
    import evaluate
    args = ["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data", str(tiny_run / "data" / "val"),
            "--max-images", "1"]
    assert evaluate.main([*args, "--output", str(tmp_path / "new")]) == 0
    assert evaluate.main([*args, "--out", str(tmp_path / "old")]) == 0
    assert (tmp_path / "new" / "summary.json").is_file() and (tmp_path / "old" / "summary.json").is_file()
