"""The FCN-score's saved segmenter file is untrusted input, read as a checkpoint is: evaluate.py --fcn-score
--segmenter FILE refuses a malicious, damaged, foreign or inflating file in one line naming it (exit 1), leaves the
file as it was and trains nothing; --retrain-segmenter replaces it; a folder is refused before any training. The
FCN-score's data: label maps that match no palette colour are warned about, a training folder without label maps
(noise, empty, over the pixel limit) is one line.

Seconds in all: the session's tiny run, a tiny segmenter recipe.

    python -m pytest tests/test_segmenter_file.py -q
"""
import functools
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from conftest import write_pairs, write_png_header
from harness import fcn_score

TINY_RECIPE = dict(image_size=16, width=4, depth=2, epochs=1, batch_size=4)


class Booby:
    """Unpickling this would call Path.touch on the marker: exactly what weights_only loading must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def tiny_recipe(monkeypatch):
    """Every segmenter evaluate.py trains or reuses has a seconds-long recipe."""
    monkeypatch.setattr(fcn_score, "Recipe", functools.partial(fcn_score.Recipe, **TINY_RECIPE))


@pytest.fixture
def segmenter_record(tiny_run, tiny_recipe, tmp_path) -> dict:
    """A good segmenter record for the tiny run's data (as evaluate.py would save it), loaded."""
    path = tmp_path / "made" / "good.pt"
    fcn_score.scorer_for(tiny_run / "data" / "train", "BtoA", cache_path=path)
    return torch.load(path, weights_only=True)


def run_evaluate(tiny_run: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data",
                          str(tiny_run / "data" / "val"), "--output", str(tmp_path / "out"), "--device", "cpu",
                          "--fcn-score", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_refusal(code: int, out: str, err: str, path: Path, *phrases: str) -> None:
    assert code == 1, (out, err)
    assert err.startswith(f"error: {path}") and err.count("\n") == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    assert "training on" not in out, out  # nothing trained
    for phrase in phrases:
        assert phrase in err, err


def zip_bomb(path: Path, inflated_mib: int) -> None:
    """A small zip archive laid out as torch.save's, whose one data record inflates to `inflated_mib` MiB."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("seg/data.pkl", pickle.dumps({"state_dict": {}}, protocol=2))
        record = zipfile.ZipInfo("seg/data/0")
        record.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(record, "w", force_zip64=True) as out:
            for _ in range(inflated_mib):
                out.write(bytes(2 ** 20))


def bad_file(kind: str, path: Path, record: dict) -> None:
    """Write a segmenter file of one broken `kind` at `path`."""
    if kind == "code in a torch archive":
        torch.save({**record, "payload": Booby(path.parent / "marker")}, path)
    elif kind == "code in a raw pickle":
        path.write_bytes(pickle.dumps(Booby(path.parent / "marker")))
    elif kind == "truncated":
        torch.save(record, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "a pickled list":
        torch.save([1, 2, 3], path)
    elif kind == "another palette":
        torch.save({**record, "palette": [["sky", [0, 0, 255]], ["sea", [0, 128, 0]]]}, path)
    elif kind == "no state_dict":
        torch.save({k: v for k, v in record.items() if k != "state_dict"}, path)
    elif kind == "a mis-shaped tensor":
        state = dict(record["state_dict"])
        state["head.weight"] = state["head.weight"][:, :1]
        torch.save({**record, "state_dict": state}, path)
    elif kind == "foreign keys":
        state = {f"model.{k}": v for k, v in record["state_dict"].items()}
        torch.save({**record, "state_dict": state}, path)
    elif kind == "NaN weights":
        state = dict(record["state_dict"])
        state["head.weight"] = torch.full_like(state["head.weight"], float("nan"))
        torch.save({**record, "state_dict": state}, path)
    elif kind == "an inflating archive":
        zip_bomb(path, inflated_mib=64)
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind, phrases", [
    ("code in a torch archive", ["objects other than tensors", "refused on purpose"]),
    ("code in a raw pickle", ["not a loadable FCN-score segmenter"]),
    ("truncated", ["not a loadable FCN-score segmenter"]),
    ("random bytes", ["not a loadable FCN-score segmenter"]),
    ("empty", ["not a loadable FCN-score segmenter"]),
    ("a pickled list", ["loads, but is not an FCN-score segmenter (a list)"]),
    ("another palette", ["made for other data or settings (its palette differs"]),
    ("no state_dict", ["is not an FCN-score segmenter (no state_dict)"]),
    ("a mis-shaped tensor", ["tensor 'head.weight' has shape"]),
    ("foreign keys", ["is missing"]),
    ("NaN weights", ["tensor 'state_dict.head.weight' holds NaN/Inf values"]),
    ("an inflating archive", ["would inflate to 0.06 GiB", "refused before loading"]),
])
def test_a_bad_segmenter_file_is_one_line_and_left_as_it_was(tiny_run, segmenter_record, tmp_path, capsys, kind,
                                                            phrases):
    """Each is refused naming the file (exit 1), without torch's advice to load it unsafely; nothing runs, nothing
    is trained, and the user's file keeps its bytes. --retrain-segmenter replaces it with a good one."""
    path = tmp_path / "segmenter.pt"
    bad_file(kind, path, segmenter_record)
    before = path.read_bytes()
    assert_one_line_refusal(*run_evaluate(tiny_run, tmp_path, capsys, "--segmenter", str(path)), path, *phrases,
                            "--retrain-segmenter")
    assert path.read_bytes() == before
    assert not (tmp_path / "marker").exists()  # the pickled code never ran
    assert [p.name for p in tmp_path.glob("*segmenter*")] == ["segmenter.pt"]  # no temp file beside it

    code, out, err = run_evaluate(tiny_run, tmp_path, capsys, "--segmenter", str(path), "--retrain-segmenter")
    assert code == 0 and "training on" in out, (out, err)
    assert fcn_score.read_segmenter(path)["palette"] == segmenter_record["palette"]  # a good one now
    assert not (tmp_path / "marker").exists()


def test_a_good_segmenter_file_is_reused(tiny_run, segmenter_record, tmp_path, capsys):
    path = tmp_path / "segmenter.pt"
    torch.save(segmenter_record, path)
    code, out, err = run_evaluate(tiny_run, tmp_path, capsys, "--segmenter", str(path))
    assert code == 0 and "reusing" in out and "training on" not in out, (out, err)


def test_the_default_segmenter_file_is_retrained_when_the_data_changed_and_refused_when_damaged(
        tiny_run, tiny_recipe, tmp_path, capsys, monkeypatch):
    """The project's own file (runs/fcn/<dataset>_<direction>.pt) follows its training files by itself; a damaged
    one is an error like any other."""
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "runs" / "fcn" / "data_BtoA.pt"
    code, out, _ = run_evaluate(tiny_run, tmp_path, capsys)
    assert code == 0 and "training on" in out and own.is_file()
    record = torch.load(own, weights_only=True)
    torch.save({**record, "fingerprint": "other files"}, own)
    code, out, _ = run_evaluate(tiny_run, tmp_path, capsys)
    assert code == 0 and "differs: training files" in out and "training on" in out
    assert torch.load(own, weights_only=True)["fingerprint"] == record["fingerprint"]
    own.write_bytes(b"garbage")
    assert_one_line_refusal(*run_evaluate(tiny_run, tmp_path, capsys), Path("runs/fcn/data_BtoA.pt"))
    assert own.read_bytes() == b"garbage"


def test_a_folder_as_segmenter_is_refused_before_any_training(tiny_run, tiny_recipe, tmp_path, capsys):
    folder = tmp_path / "segmenters"
    folder.mkdir()
    assert_one_line_refusal(*run_evaluate(tiny_run, tmp_path, capsys, "--segmenter", str(folder)),
                            folder, "is a folder")
    assert list(folder.iterdir()) == []  # no temp file left in it


# ----------------------------------------------------------------------------- the FCN-score's data

def grayscale_copy(source: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        Image.open(path).convert("L").convert("RGB").save(dest / path.name)
    return dest


def test_label_maps_far_from_every_palette_colour_are_warned_about(tiny_run, tiny_recipe, tmp_path, capsys):
    """Grayscale A|B files (the label maps lost their colours): the scores would be near 0 for any generator; the
    run says so, with the share of such pixels and the likely causes. The tiny run's own label maps: no warning."""
    path = tmp_path / "segmenter.pt"
    code, _, err = run_evaluate(tiny_run, tmp_path, capsys, "--segmenter", str(path))
    assert code == 0 and "warning" not in err, err
    gray = grayscale_copy(tiny_run / "data" / "val", tmp_path / "gray")
    capsys.readouterr()
    code = evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data", str(gray), "--output",
                          str(tmp_path / "out_gray"), "--device", "cpu", "--fcn-score", "--segmenter", str(path)])
    err = capsys.readouterr().err
    assert code == 0
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"% of the label pixels of {gray} (BtoA) are far from every colour" in warning[0]
    assert "--direction" in warning[0] and "labels -> photo dataset" in warning[0]
    share = int(warning[0].split("warning: ")[1].split("%")[0])
    assert share > 50


def noise_pairs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("kind, phrase", [
    ("noise", "hold no flat colour regions, so no label classes can be found"),
    ("empty", "has no images"),
    ("over the pixel limit", "cannot be used for the FCN-score"),
])
def test_an_fcn_training_folder_without_usable_labels_is_one_line(tiny_run, tiny_recipe, tmp_path, capsys, kind,
                                                                  phrase):
    train = tmp_path / "fcn_train"
    if kind == "noise":
        noise_pairs(train, 4)
    elif kind == "empty":
        train.mkdir()
    else:
        write_pairs(train, 3)
        write_png_header(train / "big.png", 15000, 12000)  # over PIL's own limit: its DecompressionBombError
    code, out, err = run_evaluate(tiny_run, tmp_path, capsys, "--fcn-train", str(train), "--segmenter",
                                  str(tmp_path / "seg.pt"))
    assert code == 1, (out, err)
    assert err.startswith(f"error: FCN-score training folder {train}" if kind != "over the pixel limit"
                          else f"error: {train / 'big.png'}") and err.count("\n") == 1, err
    assert phrase in err and "Traceback" not in err, err
    assert not (tmp_path / "seg.pt").exists()
