"""bench.py --gpu-check: one command for anyone with an NVIDIA GPU, which prints ONE table (the README's GPU
figures quote it) and ends within 8 minutes on a single H100/H200-class GPU:

    python bench.py --gpu-check                                       # facades in data/facades (download_dataset.py)
    python bench.py --gpu-check --data ../shared/data/facades/train   # facades elsewhere (val/ or test/ beside it)

  1. the CUDA tests, tests/test_cuda.py;
  2. a short real facades run: one epoch, saved; then resumed from that checkpoint for a second epoch;
  3. bench.py's training step at batch 1 and 16 in fp32 / tf32 / bf16 x NCHW / channels-last x eager / compiled,
     and compiled with CUDA graphs (COMPILE=reduce-overhead) at batch 1; and training from the facades files at
     batch 16 (NUM_WORKERS=auto) with and without CACHE_IMAGES.

Every part runs in its own process with a timeout. Parts still waiting when the time budget is spent are listed as
"not run", so the check ends in time whatever happens; the most telling parts come first (--budget=MINUTES gives
the grid more time). Without CUDA it says so and runs nothing. Exit code 0 if nothing failed, 1 if a part failed.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
clock = time.monotonic  # the time budget's clock (tests replace it)
BUDGET_MINUTES = 7.25  # every part has started and ended by then: with the start-up, under 8 minutes
MIN_START_S = 20  # a part is not started with less time than this left
TESTS_LIMIT_S, TRAIN_LIMIT_S, BENCH_LIMIT_S = 240, 150, 180  # each part's own timeout (and the budget's remainder)
BENCH = ["--warmup", "5", "--steps", "20", "--repeats", "3"]  # CUDA graphs record in the warm-up's first calls


def bench_plan() -> list[dict[str, Any]]:
    """The bench.py settings timed, most telling first: eager with channels-last (the CUDA default layout),
    training from files with and without the cache, compiled with channels-last (and CUDA graphs at batch 1),
    then the same with NCHW."""
    plan = []
    for channels_last in (True, False):
        grid = [(b, p) for b in (1, 16) for p in ("fp32", "tf32", "bf16")]
        compiled = [(b, p) for b in (1, 16) for p in ("bf16", "tf32", "fp32")]  # the GPU default first
        plan += [dict(BATCH_SIZE=b, PRECISION=p, CHANNELS_LAST=channels_last, COMPILE=False) for b, p in grid]
        if channels_last:
            plan += [dict(BATCH_SIZE=16, PRECISION="bf16", CHANNELS_LAST=True, COMPILE=False, NUM_WORKERS="auto",
                          CACHE_IMAGES=cache) for cache in (False, True)]
        plan += [dict(BATCH_SIZE=b, PRECISION=p, CHANNELS_LAST=channels_last, COMPILE=mode) for b, p in compiled
                 for mode in (True, "reduce-overhead") if mode is True or b == 1]
    return plan


def run_command(cmd: list[str], limit_s: float, deadline: float) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr) of `cmd`, given at most `limit_s` and what is left of the budget; exit code None
    if it was not started (the budget is spent) or was stopped at its timeout, with the reason in stderr."""
    left = deadline - clock()
    if left < MIN_START_S:
        return None, "", "not run: the time budget is spent"
    return execute(cmd, min(limit_s, left))


def execute(cmd: list[str], timeout: float) -> tuple[int | None, str, str]:
    """`cmd` run from the repository root in its own process group, which goes as a whole at the timeout
    (DataLoader workers, compile workers)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, f"stopped after {timeout:.0f} s (its timeout)\n{err}"
    return proc.returncode, out, err


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def row(part: str, settings: str, rate: str = "", note: str = "", failed: bool = False) -> dict[str, Any]:
    return {"part": part, "settings": settings, "img/s": rate, "notes": note, "failed": failed}


def check_tests(deadline: float) -> dict[str, Any]:
    code, out, err = run_command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  "tests/test_cuda.py"], TESTS_LIMIT_S, deadline)
    summary = last_line(out) or last_line(err)
    return row("CUDA tests", "tests/test_cuda.py", "", summary, failed=code not in (0, None) or "stopped after" in err)


def check_training(train_dir: Path, deadline: float) -> dict[str, Any]:
    """One facades epoch, saved; then the same command resumed for a second epoch from that checkpoint."""
    val_dir = next((train_dir.parent / n for n in ("val", "test") if (train_dir.parent / n).is_dir()), None)
    settings = "PRESET=facades, 1 epoch saved + 1 epoch resumed"
    if not train_dir.is_dir() or val_dir is None:
        return row("facades run", settings, "", f"not run: no facades data at {train_dir} (and val/ or test/ "
                   f"beside it); python download_dataset.py facades, or --data DIR", failed=True)
    rates, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "train.py", "--PRESET=facades", f"--TRAIN_DIR={train_dir}", f"--VAL_DIR={val_dir}",
                f"--RUN_DIR={Path(tmp) / 'run'}", "--N_EPOCHS=1", "--VAL_MAX_IMAGES=50"]
        for decay, expect in ((0, "epoch 1: "), (1, "resuming from ")):
            code, out, err = run_command(base + [f"--N_EPOCHS_DECAY={decay}"], TRAIN_LIMIT_S, deadline)
            rates += re.findall(r"^epoch \d+: ([\d.]+) img/s", out, re.MULTILINE)
            notes += re.findall(r"^device \S+ \((\w+)\)", out, re.MULTILINE)[:1]
            if code != 0 or expect not in out:
                return row("facades run", settings, ", ".join(rates), f"failed: {last_line(err) or last_line(out)}",
                           failed=True)
        val = re.findall(r"val: L1 ([\d.]+)", out)
    return row("facades run", f"{settings}, batch 1, {notes[0] if notes else '?'}", " / ".join(rates),
               f"saved, resumed at epoch 2, finished; val L1 {val[-1] if val else '?'}")


def describe(settings: dict[str, Any]) -> str:
    compile_name = {False: "eager", True: "compiled", "reduce-overhead": "reduce-overhead"}[settings["COMPILE"]]
    text = (f"batch {settings['BATCH_SIZE']}, {settings['PRECISION']}, "
            f"{'channels-last' if settings['CHANNELS_LAST'] else 'NCHW'}, {compile_name}")
    if "CACHE_IMAGES" in settings:
        text += f", NUM_WORKERS=auto, cache {'on' if settings['CACHE_IMAGES'] else 'off'}"
    return text


def check_bench(settings: dict[str, Any], train_dir: Path, deadline: float) -> dict[str, Any]:
    files = "CACHE_IMAGES" in settings
    if files and not train_dir.is_dir():
        return row("from files", describe(settings), "", f"not run: no facades data at {train_dir}")
    skip = "infer,onnx,peak,save" if files else "files,infer,onnx,data,peak,save"
    cmd = [sys.executable, "bench.py", "--json", "--skip", skip, "--DEVICE=cuda", *BENCH,
           *([f"--data={train_dir}"] if files else []), *(f"--{k}={v}" for k, v in settings.items())]
    code, out, err = run_command(cmd, BENCH_LIMIT_S, deadline)
    part = "from files" if files else "training step"
    if code != 0:
        return row(part, describe(settings), "", last_line(err) or "failed",
                   failed=code is not None or "stopped after" in err)
    report = json.loads(out)
    results = report["results"]
    notes = [f"compile + first step {results['compile_s']:.0f} s"] if "compile_s" in results else []
    if files:
        notes += [f"step alone {results['train_img_s']:.0f}", f"loader alone {results['data_img_s']:.0f} img/s",
                  f"{report['env']['workers']} workers"]
    notes.append(f"peak {results['peak_memory_mb'] / 1024:.1f} GB")
    rate = results["train_files_img_s"] if files else results["train_img_s"]
    return row(part, describe(settings), f"{rate:.1f}", "; ".join(notes))


def format_check(header: str, rows: list[dict[str, Any]]) -> str:
    """One markdown table: part | settings | images/s | notes."""
    lines = [header, "", "| part | settings | images/s | notes |", "|---|---|---:|---|"]
    lines += [f"| {r['part']} | {r['settings']} | {r['img/s']} | {'FAILED: ' if r['failed'] else ''}"
              f"{r['notes'].replace('|', '/')} |" for r in rows]
    return "\n".join(lines)


def gpu_check(train_dir: str, budget_minutes: float = BUDGET_MINUTES) -> int:
    """The whole check; prints its table. ConfigError (exit 2) without CUDA: nothing is run."""
    if not torch.cuda.is_available():
        raise ConfigError(f"bench.py --gpu-check needs an NVIDIA GPU with CUDA, and torch.cuda.is_available() is "
                          f"False on this machine (torch {torch.__version__}); nothing was run. Run it where "
                          f"nvidia-smi shows a GPU, or run bench.py without --gpu-check")
    start = clock()
    deadline = start + 60 * budget_minutes
    data = Path(train_dir).resolve()  # the parts run from the repository root
    print(f"GPU check: tests, a facades run and {len(bench_plan())} bench.py settings, within "
          f"{budget_minutes:.1f} minutes ...", file=sys.stderr)
    rows = [check_tests(deadline), check_training(data, deadline)]
    for settings in bench_plan():
        rows.append(check_bench(settings, data, deadline))
        print(f"  {rows[-1]['settings']}: {rows[-1]['img/s'] or rows[-1]['notes']}", file=sys.stderr)
    name = torch.cuda.get_device_name(0)
    capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
    failed = sum(r["failed"] for r in rows)
    header = (f"GPU check on {name} (compute capability {capability}), torch {torch.__version__}, CUDA "
              f"{torch.version.cuda}, {os.cpu_count()} CPU cores: {(clock() - start) / 60:.1f} min, "
              f"{failed} part(s) failed")
    print(format_check(header, rows))
    return 1 if failed else 0
