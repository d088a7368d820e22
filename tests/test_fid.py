"""FID and KID (harness/fid.py, evaluate.py --fid) offline: a stand-in weights file of Inception-v3's architecture
with random weights proves the plumbing (a set against itself scores ~0, against a changed set > 0), the weights
are found where a user puts them and never downloaded, and a missing or wrong file is one line.

    python -m pytest tests/test_fid.py -q
"""
import csv
import json
from pathlib import Path

import pytest
import torch

import evaluate
from harness import fid
from harness.errors import InceptionWeightsError


@pytest.fixture(scope="session")
def standin_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inception-v3 as FID uses it (1008 classes, no auxiliary head), random He-initialised convolutions so that
    the features vary with the image: the real file's layout (~91 MB), none of its knowledge."""
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "standin_inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """torch's hub cache lives in TORCH_HOME: an empty one here, whatever this machine has downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_a_set_against_itself_scores_zero_and_against_a_changed_set_more(standin_weights):
    scores = fid.FidKid(standin_weights)
    scored = []  # how many images went through the network
    features = scores.features
    scores.features = lambda images: scored.append(len(images)) or features(images)
    torch.manual_seed(1)
    images = torch.rand(3, 3, 32, 32)
    scores.update(images, images)
    same = scores.result()
    scores.next_round()  # a second round scores new outputs against the same real images
    scores.update(images * 0.5 + 0.3, images)  # darker and greyer
    state = torch.get_rng_state()
    changed = scores.result()
    assert scored == [3, 3, 3]  # the real images' features were computed once
    assert same["fid_images"] == changed["fid_images"] == 3
    assert same["fid"] == pytest.approx(0, abs=1e-6) and changed["fid"] > 0.1
    # KID is unbiased, so a finite set against itself is ~0 rather than exactly 0 (here slightly below)
    assert abs(same["kid"]) < 0.2 * changed["kid"] and changed["kid"] > 0
    assert same["inception_weights_standard"] is False  # a stand-in is labelled as such
    # KID's random subsets are seeded: repeatable, and the caller's random stream is left alone
    assert scores.result() == changed and torch.equal(torch.get_rng_state(), state)


def test_weights_are_found_in_the_hub_cache_and_never_downloaded(standin_weights, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(InceptionWeightsError) as e:
        fid.find_weights(None)
    message = str(e.value)
    assert fid.WEIGHTS_URL in message and "--inception-weights" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message  # where to put it
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / fid.WEIGHTS_NAME).symlink_to(standin_weights)
    assert fid.find_weights(None) == cache / fid.WEIGHTS_NAME
    assert fid.find_weights(standin_weights) == standin_weights  # a path given wins


def run_evaluate(tiny_run: Path, out: Path, *extra: str) -> int:
    return evaluate.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data",
                          str(tiny_run / "data" / "val"), "--output", str(out), "--device", "cpu", *extra])


def test_evaluate_fid_writes_fid_and_kid_everywhere(tiny_run, standin_weights, tmp_path, capsys):
    assert run_evaluate(tiny_run, tmp_path / "out", "--fid", "--inception-weights", str(standin_weights)) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["fid_images"] == 4 and summary["fid"] > 0 and summary["kid_std"] >= 0
    assert summary["inception_weights"] == str(standin_weights) and summary["inception_weights_standard"] is False
    assert "NOT the standard file" in printed and f"{summary['fid']:.2f}" in printed
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[-1]["file"] == "(all 4 images)"  # four images, then the set's row
    assert float(rows[-1]["fid"]) == pytest.approx(summary["fid"], rel=1e-5)
    assert float(rows[-1]["kid"]) == pytest.approx(summary["kid"], rel=1e-5, abs=1e-9)
    assert float(rows[-1]["l1"]) == pytest.approx(summary["l1"], rel=1e-5)
    assert all(r["fid"] == "" for r in rows[:-1])  # no per-image FID
    page = (tmp_path / "out" / "index.html").read_text()
    assert f"{summary['fid']:.2f}" in page and "NOT the standard file" in page


@pytest.mark.parametrize("what", ["missing", "folder", "not weights", "a pix2pix checkpoint"])
def test_a_missing_or_wrong_weights_file_is_one_line(tiny_run, tmp_path, capsys, what):
    path = tmp_path / "pt_inception.pth"
    if what == "folder":
        path.mkdir()
    elif what == "not weights":
        path.write_bytes(b"<html>404 Not Found</html>")
    elif what == "a pix2pix checkpoint":
        path = tiny_run / "run" / "generator.pt"
    assert run_evaluate(tiny_run, tmp_path / "out", "--fid", "--inception-weights", str(path)) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert fid.WEIGHTS_NAME in err and fid.WEIGHTS_URL in err and str(path) in err


def test_fid_without_weights_says_where_to_get_them(tiny_run, tmp_path, capsys):
    assert run_evaluate(tiny_run, tmp_path / "out", "--fid") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fid.WEIGHTS_URL in err and "hub" in err
    assert not (tmp_path / "out").exists()  # stopped before any work


# ----------------------------------------------------------------------------- training-time validation (FID=True)

def train_tiny(data: Path, run: Path, **settings) -> int:
    """train.py's main on a tiny set, as its command line runs it (an error is one line and an exit code), its
    signal handlers put back afterwards."""
    import signal

    import train
    from conftest import tiny_args
    from harness.errors import exit_on_error
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return exit_on_error(lambda: train.main(tiny_args(data, run, N_EPOCHS=1, N_EPOCHS_DECAY=1, **settings)))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_pairs
    root = tmp_path_factory.mktemp("fid_data")
    write_pairs(root / "train", 4, seed=0)
    write_pairs(root / "val", 3, seed=1)
    return root


def test_training_validation_reports_fid_and_kid(tiny_data, standin_weights, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(tiny_data, run, FID=True, INCEPTION_WEIGHTS=standin_weights) == 0
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["val_fid"]) > 0 and r["val_kid"] != "" for r in rows)
    assert rows[0]["val_fid"] != rows[1]["val_fid"]  # each validation scores that epoch's outputs
    printed = capsys.readouterr().out
    assert "FID" in printed and "NOT the standard file" in printed  # the stand-in is labelled at the start


def test_training_with_fid_and_no_weights_stops_before_training(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(tiny_data, run, FID=True) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fid.WEIGHTS_URL in err and "INCEPTION_WEIGHTS" in err
    assert not (run / "checkpoints").exists()  # nothing trained
