"""Compare training recipes across seeds: each run folder's log.csv at one epoch, grouped into arms by the folder's
name without its `_s<seed>` suffix, printed as a Markdown table of every seed's value and the mean ± sample sd.

    python -m harness.seed_table runs/recipes/facades_*_s* --metric fcn_class_iou --epoch 10 --baseline facades_paper
    python -m harness.seed_table runs/recipes/facades_*_s* --metric fcn_class_iou   # every epoch: mean ± sd (seeds)
    python -m harness.seed_table runs/recipes/facades_*_s* --metric fcn_class_iou --every-run   # each run, per epoch
    python -m harness.seed_table --recorded docs/results.md --epoch 10 --baseline facades_paper

A run folder does not outlive its machine: --every-run prints each run's value at every epoch as a Markdown table
(`| run (METRIC) | epoch 1 | ...`, one row per run and generator), which a results page keeps; --recorded reads
such tables back from a file as runs, so seeds trained on different machines (with one scoring file) form one
table; of a file's runs, those with a table of --metric. A run folder given as well replaces its recorded run (the
one of its name), once it has a log.csv.

With G_EMA runs, each arm appears twice: `arm` scores the raw G (log.csv's val_raw_*), `arm+ema` the averaged one
(val_*): EMA does not change training, so one run gives both. A recipe wins when its mean beats the baseline's by
more than twice the larger of the two sds (in the metric's better direction).
"""
import argparse
import csv
import re
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ConfigError, exit_on_error

LOWER_IS_BETTER = ("l1", "rmse", "fid", "kid", "ratio")
EMA = "+ema"  # an arm's name with this suffix: the same runs' averaged generator


@dataclass
class Arm:
    name: str
    values: dict[int, float] = field(default_factory=dict)  # seed -> the metric at the epoch

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values.values()) if len(self.values) > 1 else float("nan")


def split_name(run_dir: Path) -> tuple[str, int]:
    """`facades_paper_s2` -> ("facades_paper", 2); a folder not named ..._s<seed> is a ConfigError."""
    match = re.fullmatch(r"(.+)_s(\d+)", run_dir.name)
    if not match:
        raise ConfigError(f"{run_dir}: a run folder's name must end in _s<seed> (e.g. facades_paper_s1) to be "
                          f"grouped with its arm's other seeds")
    return match[1], int(match[2])


def read_logs(run_dirs: list[Path]) -> dict[Path, list[dict[str, str]]]:
    """Each run folder's log.csv rows (none where it has no log.csv yet), read once."""
    logs = {}
    for run_dir in run_dirs:
        split_name(run_dir)  # a folder that cannot be grouped is refused before anything is read
        logs[run_dir] = []
        if (run_dir / "log.csv").is_file():
            with open(run_dir / "log.csv", newline="") as f:
                logs[run_dir] = list(csv.DictReader(f))
    return logs


def read_recorded(path: Path) -> dict[Path, list[dict[str, str]]]:
    """Runs recorded in a Markdown file by --every-run tables, as read_logs gives them (log.csv's rows, with the
    columns the tables hold); a missing or unreadable file is a ConfigError naming it."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--recorded {path}: cannot read it ({e.strerror if isinstance(e, OSError) else e}); give "
                          f"a Markdown file with --every-run tables") from None
    values: dict[Path, dict[int, dict[tuple[str, bool], str]]] = {}  # run -> epoch -> (metric, averaged G) -> value
    metric = None
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and (header := re.fullmatch(r"run \((\w+)\)", cells[0])):
            metric = header[1]
        elif not cells:
            metric = None
        elif metric and (row := re.fullmatch(rf"(.+?)({re.escape(EMA)})? s(\d+)", cells[0])):
            run = values.setdefault(Path(f"{row[1]}_s{row[3]}"), {})
            for epoch, value in enumerate(cells[1:], 1):
                if value:
                    run.setdefault(epoch, {})[metric, bool(row[2])] = value
    logs = {}
    for run, epochs in values.items():  # with an averaged G, as its log.csv: val_* is that one, val_raw_* the raw G
        ema = {m for cells in epochs.values() for m, averaged in cells if averaged}
        logs[run] = [{"epoch": str(epoch), **{f"val_{'raw_' if m in ema and not averaged else ''}{m}": value
                                              for (m, averaged), value in cells.items()}}
                     for epoch, cells in sorted(epochs.items())]
    return logs


def merge_runs(recorded: dict[Path, list[dict[str, str]]], folders: dict[Path, list[dict[str, str]]]
               ) -> dict[Path, list[dict[str, str]]]:
    """The recorded runs, each replaced by the run folder of its name where one was given with a log.csv (a folder
    with none yet leaves its recorded run as it is)."""
    recorded_names = {run.name for run in recorded}
    folders = {d: log for d, log in folders.items() if log or d.name not in recorded_names}
    replaced = {d.name for d in folders}
    return {run: log for run, log in recorded.items() if run.name not in replaced} | folders


def read_arms(logs: dict[Path, list[dict[str, str]]], metric: str,
              epoch: int) -> tuple[dict[str, Arm], list[str]]:
    """Arms (raw G, and averaged G where the run logged one) from each run's log.csv row for `epoch` (logs as
    read_logs gives them); runs that have not reached it are listed in the second value."""
    arms: dict[str, Arm] = {}
    unfinished = []
    for run_dir, log in logs.items():
        arm, seed = split_name(run_dir)
        rows = [r for r in log if r["epoch"] == str(epoch)]
        if not rows:
            unfinished.append(run_dir.name)
            continue
        if f"val_{metric}" not in rows[0]:
            raise ConfigError(f"{run_dir / 'log.csv'} has no column val_{metric}; give --metric as log.csv names "
                              f"it without val_ (e.g. fcn_class_iou, l1, pixel_acc_5)")
        raw, averaged = rows[-1].get(f"val_raw_{metric}", ""), rows[-1][f"val_{metric}"]
        if raw:  # a G_EMA run: val_* is the averaged G, val_raw_* the raw one
            arms.setdefault(arm, Arm(arm)).values[seed] = float(raw)
            arms.setdefault(arm + EMA, Arm(arm + EMA)).values[seed] = float(averaged)
        elif averaged:
            arms.setdefault(arm, Arm(arm)).values[seed] = float(averaged)
    return arms, unfinished


def wins(arm: Arm, baseline: Arm, lower_is_better: bool) -> bool:
    """Beats the baseline by more than twice the larger of the two sample sds."""
    margin = baseline.mean - arm.mean if lower_is_better else arm.mean - baseline.mean
    return len(arm.values) > 1 and len(baseline.values) > 1 and margin > 2 * max(arm.sd, baseline.sd)


def table(arms: dict[str, Arm], metric: str, baseline: str | None) -> str:
    seeds = sorted({s for arm in arms.values() for s in arm.values})
    lower = metric.split("_")[0] in LOWER_IS_BETTER or metric in LOWER_IS_BETTER
    lines = [f"| arm | {' | '.join(f'seed {s}' for s in seeds)} | mean ± sd |" + (" wins |" if baseline else ""),
             "|---" * (len(seeds) + 2 + bool(baseline)) + "|"]
    for arm in arms.values():
        cells = [f"{arm.values[s]:.4f}" if s in arm.values else "" for s in seeds]
        sd = f" ± {arm.sd:.4f}" if len(arm.values) > 1 else " (one seed)"
        row = f"| {arm.name} | {' | '.join(cells)} | {arm.mean:.4f}{sd} |"
        if baseline:
            row += " — |" if arm.name == baseline else f" {'yes' if wins(arm, arms[baseline], lower) else 'no'} |"
        lines.append(row)
    return "\n".join(lines)


def per_epoch_table(logs: dict[Path, list[dict[str, str]]], metric: str) -> str:
    """Arms x epochs: each epoch's mean ± sd over the seeds, with their number where not every run got there."""
    n_runs = Counter(split_name(run_dir)[0] for run_dir in logs)
    epochs, cells = [], {}
    while (arms := read_arms(logs, metric, len(epochs) + 1)[0]):
        epochs.append(len(epochs) + 1)
        for arm in arms.values():
            n = len(arm.values)
            cells.setdefault(arm.name, {})[epochs[-1]] = (f"{arm.mean:.4f}" + (f" ± {arm.sd:.4f}" if n > 1 else "")
                                                          + (f" ({n})" if n < n_runs[arm.name.removesuffix(EMA)]
                                                             else ""))
    lines = [f"| arm | {' | '.join(f'epoch {e}' for e in epochs)} |", "|---" * (len(epochs) + 1) + "|"]
    lines += [f"| {arm} | {' | '.join(row.get(e, '') for e in epochs)} |" for arm, row in cells.items()]
    return "\n".join(lines)


def every_run_table(logs: dict[Path, list[dict[str, str]]], metric: str) -> str:
    """Each run's value at every epoch (runs x epochs; `+ema`: the same run's averaged G), as --recorded reads it."""
    n_epochs = max((int(r["epoch"]) for log in logs.values() for r in log), default=0)
    lines = [f"| run ({metric}) | {' | '.join(f'epoch {e}' for e in range(1, n_epochs + 1))} |",
             "|---" * (n_epochs + 1) + "|"]
    for run_dir, log in logs.items():
        arm, seed = split_name(run_dir)
        averaged = any(r.get(f"val_raw_{metric}") for r in log)  # a G_EMA run: val_* is the averaged G
        columns = [("", f"val_raw_{metric}"), (EMA, f"val_{metric}")] if averaged else [("", f"val_{metric}")]
        for tag, column in columns:
            values = {int(r["epoch"]): f"{float(r[column]):.4f}" for r in log if r.get(column)}
            lines.append(f"| {arm}{tag} s{seed} | {' | '.join(values.get(e, '') for e in range(1, n_epochs + 1))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Arms x seeds table of run folders' log.csv at one epoch.")
    parser.add_argument("runs", nargs="*", type=Path, help="run folders named <arm>_s<seed>")
    parser.add_argument("--recorded", type=Path, help="also the runs of a file's --every-run tables (e.g. "
                                                       "docs/results.md); a run folder given too replaces its row")
    parser.add_argument("--every-run", action="store_true", help="each run's value at every epoch, to record")
    parser.add_argument("--metric", default="fcn_class_iou", help="a log.csv column without val_ (default: "
                                                                      "fcn_class_iou)")
    parser.add_argument("--epoch", type=int, help="the epoch to compare (default: every epoch, means ± sds)")
    parser.add_argument("--baseline", help="the arm every other is judged against (e.g. facades_paper)")
    args = parser.parse_args(argv)

    def run() -> int:
        recorded = read_recorded(args.recorded) if args.recorded else {}
        # a page records several comparisons (facades, maps): only the runs with a table of this metric take part
        recorded = {run: log for run, log in recorded.items() if any(f"val_{args.metric}" in r for r in log)}
        logs = merge_runs(recorded, read_logs(args.runs))
        if not logs:
            raise ConfigError(f"no runs of {args.metric}: give run folders, or --recorded FILE with an --every-run "
                              f"table of --metric {args.metric}")
        if args.every_run:
            print(every_run_table(logs, args.metric))
            return 0
        if args.epoch is None:
            print(per_epoch_table(logs, args.metric))
            return 0
        arms, unfinished = read_arms(logs, args.metric, args.epoch)
        if args.baseline and args.baseline not in arms:
            raise ConfigError(f"--baseline {args.baseline}: no such arm among {', '.join(arms) or 'no runs'}")
        print(table(arms, args.metric, args.baseline) if arms else f"no run has reached epoch {args.epoch}")
        if unfinished:
            print(f"not yet at epoch {args.epoch}: {', '.join(unfinished)}", file=sys.stderr)
        return 0
    return exit_on_error(run)


if __name__ == "__main__":
    raise SystemExit(main())
