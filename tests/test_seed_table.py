"""harness/seed_table.py: arms x seeds from run folders' log.csv, the EMA arm beside the raw one, the win rule."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from harness.run_log import COLUMNS
from harness.seed_table import Arm, every_run_table, main, read_arms, read_logs, read_recorded, wins

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows([{"epoch": epoch, **values} for epoch, values in rows])
    return folder


def test_arms_are_grouped_by_name_with_the_raw_and_averaged_generators_from_one_run(tmp_path):
    runs = [write_run(tmp_path / f"facades_paper_s{seed}",
                      [(1, {"val_fcn_class_iou": 0.05, "val_raw_fcn_class_iou": 0.04}),
                       (2, {"val_fcn_class_iou": ema, "val_raw_fcn_class_iou": raw})])
            for seed, raw, ema in ((1, 0.10, 0.15), (2, 0.20, 0.25), (3, 0.30, 0.35))]
    runs.append(write_run(tmp_path / "facades_hinge_s1", [(1, {"val_fcn_class_iou": 0.5})]))  # no G_EMA, epoch 1 only
    arms, unfinished = read_arms(read_logs(runs), "fcn_class_iou", epoch=2)
    assert arms["facades_paper"].values == {1: 0.10, 2: 0.20, 3: 0.30}
    assert arms["facades_paper+ema"].values == {1: 0.15, 2: 0.25, 3: 0.35}
    assert arms["facades_paper"].mean == pytest.approx(0.2) and arms["facades_paper"].sd == pytest.approx(0.1)
    assert unfinished == ["facades_hinge_s1"]
    assert read_arms(read_logs(runs[-1:]), "fcn_class_iou", epoch=1)[0]["facades_hinge"].values == {1: 0.5}


def test_a_win_needs_more_than_twice_the_larger_sd_in_the_better_direction():
    base = Arm("paper", {1: 0.20, 2: 0.22, 3: 0.24})  # mean 0.22, sd 0.02
    assert wins(Arm("a", {1: 0.27, 2: 0.27, 3: 0.27}), base, lower_is_better=False)  # +0.05 > 0.04
    assert not wins(Arm("b", {1: 0.25, 2: 0.25, 3: 0.25}), base, lower_is_better=False)  # +0.03
    assert not wins(Arm("c", {1: 0.2, 2: 0.4, 3: 0.6}), base, lower_is_better=False)  # +0.18, but its sd is 0.2
    assert wins(Arm("d", {1: 0.17, 2: 0.17, 3: 0.17}), base, lower_is_better=True)  # lower L1 wins
    assert not wins(Arm("e", {1: 0.3}), base, lower_is_better=False)  # one seed has no sd: no claim


def test_the_table_prints_every_seed_and_marks_the_winner(tmp_path, capsys):
    for arm, values in (("paper", (0.20, 0.22, 0.24)), ("combo", (0.30, 0.30, 0.31))):
        for seed, value in enumerate(values, 1):
            write_run(tmp_path / f"{arm}_s{seed}", [(10, {"val_fcn_class_iou": value})])
    assert main([*map(str, sorted(tmp_path.iterdir())), "--epoch", "10", "--baseline", "paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| arm | seed 1 | seed 2 | seed 3 | mean ± sd | wins |"
    assert "| combo | 0.3000 | 0.3000 | 0.3100 | 0.3033 ± 0.0058 | yes |" in lines
    assert "| paper | 0.2000 | 0.2200 | 0.2400 | 0.2200 ± 0.0200 | — |" in lines


@pytest.mark.parametrize("case, words", [("unnamed", "must end in _s<seed>"), ("metric", "has no column val_nope"),
                                         ("baseline", "--baseline nope: no such arm"),
                                         ("recorded", "--recorded nope.md: cannot read it")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case, words):
    run = write_run(tmp_path / ("facades_paper" if case == "unnamed" else "facades_paper_s1"),
                    [(1, {"val_fcn_class_iou": 0.2})])
    extra = {"metric": ["--metric", "nope"], "baseline": ["--baseline", "nope"],
             "recorded": ["--recorded", "nope.md"]}.get(case, [])
    result = subprocess.run([sys.executable, "-m", "harness.seed_table", str(run), "--epoch", "1", *extra],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr


def test_without_an_epoch_every_epoch_is_a_column_with_the_seeds_that_reached_it(tmp_path, capsys):
    write_run(tmp_path / "paper_s1", [(1, {"val_l1": 0.3}), (2, {"val_l1": 0.2})])
    write_run(tmp_path / "paper_s2", [(1, {"val_l1": 0.5})])  # still training its second epoch
    assert main([str(tmp_path / "paper_s1"), str(tmp_path / "paper_s2"), "--metric", "l1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| arm | epoch 1 | epoch 2 |"
    assert lines[2] == "| paper | 0.4000 ± 0.1414 | 0.2000 (1) |"


def test_every_run_tables_read_back_as_the_runs_they_record(tmp_path, capsys):
    """A results page keeps each run's values (--every-run) when the run folders are gone with their machine; read
    back (--recorded) beside a new machine's run folder, they give the arms x seeds table the folders would."""
    runs = [write_run(tmp_path / f"paper_s{seed}", [(1, {"val_fcn_class_iou": ema - 0.1,
                                                         "val_raw_fcn_class_iou": raw - 0.1,
                                                         "val_fcn_pixel_acc": ema + 0.3}),
                                                     (2, {"val_fcn_class_iou": ema, "val_raw_fcn_class_iou": raw,
                                                          "val_fcn_pixel_acc": ema + 0.4})])
            for seed, raw, ema in ((1, 0.2, 0.25), (2, 0.22, 0.3))]
    runs.append(write_run(tmp_path / "hinge_s1", [(1, {"val_fcn_class_iou": 0.15, "val_fcn_pixel_acc": 0.4}),
                                                  (2, {"val_fcn_class_iou": 0.5, "val_fcn_pixel_acc": 0.6})]))
    logs = read_logs(runs)
    table = every_run_table(logs, "fcn_class_iou")
    assert table.splitlines()[0] == "| run (fcn_class_iou) | epoch 1 | epoch 2 |"
    assert "| paper s2 | 0.1200 | 0.2200 |" in table and "| paper+ema s2 | 0.2000 | 0.3000 |" in table
    assert "| hinge s1 | 0.1500 | 0.5000 |" in table and "hinge+ema" not in table  # no G_EMA: one row
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\n{table}\n\ntext\n\n{every_run_table(logs, 'fcn_pixel_acc')}\n")
    recorded = read_recorded(page)
    assert set(recorded) == {Path("paper_s1"), Path("paper_s2"), Path("hinge_s1")}
    for metric in ("fcn_class_iou", "fcn_pixel_acc"):
        for epoch in (1, 2):
            expected = {a.name: {seed: round(v, 4) for seed, v in a.values.items()}  # a table holds 4 decimals
                        for a in read_arms(logs, metric, epoch)[0].values()}
            assert {a.name: a.values for a in read_arms(recorded, metric, epoch)[0].values()} == expected

    # seed 2 lost with its machine (only recorded), seed 1's folder still here: one table of both
    (runs[1] / "log.csv").unlink()
    runs[1].rmdir()
    capsys.readouterr()
    assert main([str(runs[0]), "--recorded", str(page), "--epoch", "2", "--baseline", "paper"]) == 0
    out = capsys.readouterr().out
    assert "| paper | 0.2000 | 0.2200 | 0.2100 ± 0.0141 | — |" in out
    assert "| paper+ema | 0.2500 | 0.3000 | 0.2750 ± 0.0354 | no |" in out


def test_a_run_folder_given_with_recorded_runs_replaces_its_namesake_and_an_empty_one_does_not(tmp_path, capsys):
    """The page records paper_s1 and paper_s2; paper_s1's folder (trained again, other values) replaces its row
    instead of adding a third run of two seeds, and paper_s2's folder without a log.csv yet leaves its row alone."""
    page = tmp_path / "results.md"
    page.write_text("| run (l1) | epoch 1 |\n|---|---|\n| paper s1 | 0.3000 |\n| paper s2 | 0.5000 |\n")
    folder = write_run(tmp_path / "runs" / "paper_s1", [(1, {"val_l1": 0.1})])
    empty = tmp_path / "runs" / "paper_s2"
    empty.mkdir()
    for flags in (["--every-run"], []):
        capsys.readouterr()
        assert main([str(folder), str(empty), "--recorded", str(page), "--metric", "l1", *flags]) == 0
        out = capsys.readouterr().out
        if flags:
            assert sorted(out.splitlines()[2:]) == ["| paper s1 | 0.1000 |", "| paper s2 | 0.5000 |"]
        else:  # both seeds at epoch 1: the mean of two, no "(n)" of a run missing
            assert out.splitlines()[2] == "| paper | 0.3000 ± 0.2828 |"


def test_a_page_of_two_comparisons_gives_the_runs_of_the_metric_asked_for(tmp_path, capsys):
    """docs/results.md records facades runs (FCN-score) and maps runs (pixel accuracy): each table of arms reads the
    runs that record its metric, and a metric no run records is one line, exit 2."""
    page = tmp_path / "results.md"
    page.write_text("| run (fcn_class_iou) | epoch 1 | epoch 2 | epoch 3 |\n|---|---|---|---|\n"
                    "| facades_paper s1 | 0.1 | 0.2 | 0.3 |\n\n"
                    "| run (pixel_acc_16) | epoch 1 | epoch 2 | epoch 3 |\n|---|---|---|---|\n"
                    "| maps_paper s1 | 0.5 | 0.6 | 0.7 |\n| maps_paper+ema s1 | 0.6 | 0.7 | 0.8 |\n"
                    "| maps_paper s2 | 0.5 | 0.6 | 0.9 |\n| maps_paper+ema s2 | 0.6 | 0.7 | 0.85 |\n")
    for metric, baseline, expected in (
            ("pixel_acc_16", "maps_paper", ["| maps_paper | 0.7000 | 0.9000 | 0.8000 ± 0.1414 | — |",
                                            "| maps_paper+ema | 0.8000 | 0.8500 | 0.8250 ± 0.0354 | no |"]),
            ("fcn_class_iou", "facades_paper", ["| facades_paper | 0.3000 | 0.3000 (one seed) | — |"])):
        capsys.readouterr()
        assert main(["--recorded", str(page), "--epoch", "3", "--metric", metric, "--baseline", baseline]) == 0
        assert capsys.readouterr().out.splitlines()[2:] == expected
    result = subprocess.run([sys.executable, "-m", "harness.seed_table", "--recorded", str(page), "--metric", "rmse"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no runs of rmse" in result.stderr and "--metric rmse" in result.stderr
