"""Validation during training (train.py + run_log.py): every VAL_EVERY epochs the VAL_DIR metrics go to log.csv and
TensorBoard, checkpoints/best.pt + generator_best.pt keep the best val L1, curves.png is redrawn every epoch.

The 2-epoch run is conftest.tiny_run (shared with the predict/evaluate/notebook tests); two more tiny runs check
that "best" means lowest (scripted val losses) and that VAL_EVERY=0 turns validation off.

    python -m pytest tests/test_validation.py -q
"""
import csv
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from harness import metrics as harness_metrics
from conftest import tiny_args
from harness.checkpoint import load_checkpoint, load_generator
from harness.errors import CheckpointError

VAL_COLUMNS = ("val_l1", "val_psnr", "val_ssim", "val_ratio")


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 50


def test_val_metrics_fill_log_csv(tiny_run):
    rows = log_rows(tiny_run / "run")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        l1, psnr, ssim, ratio = (float(r[c]) for c in VAL_COLUMNS)
        assert all(math.isfinite(v) for v in (l1, psnr, ssim, ratio))
        assert 0 < l1 < 1 and 0 < psnr < 60 and -1 <= ssim <= 1 and 0 < ratio < 2


def test_val_metrics_go_to_tensorboard(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tiny_run / "run" / "tensorboard"))
    events.Reload()
    rows = log_rows(tiny_run / "run")
    for column in VAL_COLUMNS:
        tag = column.replace("val_", "val/")
        logged = [e.value for e in events.Scalars(tag)]
        assert logged == pytest.approx([float(r[column]) for r in rows], rel=1e-5), tag
    assert [e.step for e in events.Scalars("val/l1")] == [int(r["step"]) for r in rows]


def test_best_checkpoint_holds_the_lowest_val_l1(tiny_run):
    run = tiny_run / "run"
    rows = log_rows(run)
    best_row = min(rows, key=lambda r: float(r["val_l1"]))
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best_val"] == pytest.approx(float(best_row["val_l1"]), rel=1e-5)
    assert best["epoch"] == int(best_row["epoch"])
    assert torch.load(run / "generator_best.pt", weights_only=True)["epoch"] == int(best_row["epoch"])
    load_generator(run / "generator_best.pt")  # a usable generator file
    # the last checkpoint carries the best value on, so a resumed run compares against it
    assert load_checkpoint(run / "checkpoints" / "last.pt")["best_val"] == best["best_val"]


def test_a_resumed_run_logs_each_step_once_in_tensorboard(tiny_data, tmp_path):
    """Resumed from epoch 1's snapshot, the run trains epoch 2 again: TensorBoard keeps its second logging only
    (the writer purges what came after the checkpoint's step), as log.csv keeps one row per epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    args = tiny_args(tiny_data, run, SNAPSHOT_EVERY=1, SAMPLE_EVERY=0)
    assert train.main(args) == 0
    shutil.copy(run / "checkpoints" / "epoch_0001.pt", run / "checkpoints" / "last.pt")  # back to epoch 1
    assert train.main(args) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("val/l1")]
    assert steps == [int(r["step"]) for r in log_rows(run)] and len(steps) == 2


def test_curves_png_is_a_valid_image(tiny_run):
    assert_png(tiny_run / "run" / "curves.png")


def scripted_validation(monkeypatch, l1_values: list[float]) -> list[int]:
    """Replace validation by scripted val L1s; returns the number of images each call was given."""
    values, seen = iter(l1_values), []

    def fake(G, loader, *args, **kwargs):
        seen.append(sum(x.shape[0] for x, _ in loader))
        return {"summary": {"l1": next(values), "psnr": 20.0, "ssim": 0.5, "ratio": 0.8, "n_images": seen[-1]}}
    monkeypatch.setattr(harness_metrics, "evaluate_generator", fake)
    return seen


@pytest.mark.parametrize("cap, expected", [(3, 3), (0, 5), (9, 5)])
def test_val_max_images_caps_the_validation_set_and_0_means_all_of_it(monkeypatch, cap, expected):
    """VAL_MAX_IMAGES: at most that many images; 0 validates on the whole VAL_DIR (config.py says so)."""
    from harness.run import validation_metrics
    from utils import Runtime
    seen = scripted_validation(monkeypatch, [0.3])
    pairs = [(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))] * 5
    cfg = {"VAL_MAX_IMAGES": cap, "BATCH_SIZE": 2, "NUM_WORKERS": 0, "TEST_MODE": "paper", "SEED": 0,
           "PIXEL_ACCURACY": False}
    validation_metrics(None, pairs, cfg, Runtime(torch.device("cpu"), "fp32"), None)
    assert seen == [expected]


def test_best_means_lowest_not_latest(tiny_data, tmp_path, monkeypatch):
    """Val L1 0.3 then 0.5: best.pt and generator_best.pt stay at epoch 1 while generator.pt moves on."""
    seen = scripted_validation(monkeypatch, [0.3, 0.5])
    run = tmp_path / "run"
    assert train.main(tiny_args(tiny_data, run, SAMPLE_EVERY=0, VAL_MAX_IMAGES=3)) == 0
    assert seen == [3, 3]  # VAL_MAX_IMAGES caps the validation set
    assert [float(r["val_l1"]) for r in log_rows(run)] == [0.3, 0.5]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (best["epoch"], best["best_val"]) == (1, 0.3)
    assert torch.load(run / "generator_best.pt", weights_only=True)["epoch"] == 1
    assert torch.load(run / "generator.pt", weights_only=True)["epoch"] == 2


def test_a_new_best_also_saves_last_pt_so_a_crash_cannot_lose_it(tiny_data, tmp_path, monkeypatch):
    """No timed save is due (CHECKPOINT_EVERY_MINUTES), yet epoch 2's best comes with last.pt: after a crash in
    epoch 3 the run resumes from epoch 2, knowing its best, so a worse epoch 3 cannot replace best.pt."""
    scripted_validation(monkeypatch, [0.5, 0.3])  # epoch 3's validation: StopIteration, as a crash
    run = tmp_path / "run"
    args = tiny_args(tiny_data, run, SAMPLE_EVERY=0, N_EPOCHS=3, N_EPOCHS_DECAY=0, CHECKPOINT_EVERY_MINUTES=600,
                     SNAPSHOT_EVERY=0)
    with pytest.raises(StopIteration):
        train.main(args)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (last["epoch"], last["best_val"]) == (2, 0.3)
    scripted_validation(monkeypatch, [0.4])  # the resumed epoch 3: worse than epoch 2
    assert train.main(args) == 0
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (best["epoch"], best["best_val"]) == (2, 0.3)


def test_resuming_under_another_best_by_is_refused_in_one_line(tiny_run, tmp_path):
    """best_val (and LR_POLICY=plateau's best) are in BEST_BY's units: L1 and -IoU cannot be compared."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    with pytest.raises(CheckpointError) as err:
        train.main(tiny_args(tiny_run / "data", run, N_EPOCHS=3, BEST_BY="fcn_class_iou", FCN_SCORE=True))
    assert str(err.value).startswith(f"cannot resume from {run / 'checkpoints' / 'last.pt'}: it keeps its best "
                                     f"validation figure by BEST_BY='l1', this run asks for 'fcn_class_iou'")
    assert "\n" not in str(err.value)


def test_val_every_zero_leaves_the_columns_empty(tiny_data, tmp_path, monkeypatch):
    seen = scripted_validation(monkeypatch, [])  # would raise StopIteration if validation ran
    run = tmp_path / "run"
    assert train.main(tiny_args(tiny_data, run, VAL_EVERY=0, SAMPLE_EVERY=0, N_EPOCHS_DECAY=0)) == 0
    assert seen == []
    rows = log_rows(run)
    assert len(rows) == 1 and rows[0]["g_l1"] != ""
    assert all(rows[0][c] == "" for c in VAL_COLUMNS)
    assert not (run / "checkpoints" / "best.pt").exists() and not (run / "generator_best.pt").exists()
    assert (run / "generator.pt").exists()
    assert_png(run / "curves.png")  # still drawn every epoch, with the loss panels only


def test_pixel_accuracy_setting_adds_rmse_and_pixel_accuracy_to_validation(tiny_data, tmp_path):
    """PIXEL_ACCURACY=True (the maps preset's default) fills val_rmse and val_pixel_acc_* in log.csv; off (the
    default) they stay empty."""
    from harness.configurator import load_config
    assert load_config(["--PRESET=maps"])["PIXEL_ACCURACY"] and not load_config([])["PIXEL_ACCURACY"]
    for on, run in ((True, tmp_path / "on"), (False, tmp_path / "off")):
        assert train.main(tiny_args(tiny_data, run, PIXEL_ACCURACY=on, SAMPLE_EVERY=0, N_EPOCHS_DECAY=0)) == 0
        row = log_rows(run)[0]
        if on:
            assert 0 < float(row["val_rmse"]) < 255
            assert 0 <= float(row["val_pixel_acc_5"]) <= float(row["val_pixel_acc_16"]) <= 1
        else:
            assert row["val_rmse"] == row["val_pixel_acc_5"] == row["val_pixel_acc_16"] == ""


def test_fcn_score_in_validation_and_best_chosen_by_it(tiny_data, tmp_path, monkeypatch, capsys):
    """FCN_SCORE=True: a segmenter is trained on TRAIN_DIR once (a smaller recipe here, for speed), validation logs
    the generated photos' FCN-score, and BEST_BY=fcn_class_iou makes best.pt the epoch with the highest class IoU."""
    import functools

    from harness import fcn_score
    from harness.errors import ConfigError
    with pytest.raises(ConfigError, match="BEST_BY='fcn_class_iou' is a figure of the FCN-score"):
        train.main(tiny_args(tiny_data, tmp_path / "no", BEST_BY="fcn_class_iou"))
    monkeypatch.setattr(fcn_score, "Recipe", functools.partial(fcn_score.Recipe, epochs=2, width=4, depth=3,
                                                               image_size=32))
    monkeypatch.chdir(tmp_path)  # the segmenter is saved under runs/fcn/
    # the tiny segmenter scores every epoch's outputs alike (one IoU three times: "best" chose nothing); the real
    # scores are computed, then their class IoU replaced: epoch 2's is the highest, and epoch 3's equal one does not
    # replace it
    real_result, scripted = fcn_score.FCNScorer.result, iter([0.2, 0.5, 0.5])

    def result(self):
        scores = real_result(self)
        scores["generated"]["class_iou"] = next(scripted)
        return scores
    monkeypatch.setattr(fcn_score.FCNScorer, "result", result)
    run = tmp_path / "run"
    assert train.main(tiny_args(tiny_data, run, FCN_SCORE=True, BEST_BY="fcn_class_iou", SAMPLE_EVERY=0,
                                N_EPOCHS=1, N_EPOCHS_DECAY=2)) == 0
    assert "FCN-score segmenter: training on" in capsys.readouterr().out
    rows = log_rows(run)
    ious = [float(r["val_fcn_class_iou"]) for r in rows]
    assert ious == [0.2, 0.5, 0.5] and all(0 <= float(r["val_fcn_pixel_acc"]) <= 1 for r in rows)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 + ious.index(max(ious)) and best["best_val"] == pytest.approx(-max(ious), rel=1e-5)
