"""bench.py --gpu-check: one command for anyone with an NVIDIA GPU, which prints ONE table (the README's GPU
figures quote it) and ends within 8 minutes on a single H100/H200-class GPU:

    python bench.py --gpu-check                                       # facades in data/facades (download_dataset.py)
    python bench.py --gpu-check --data ../shared/data/facades/train   # facades elsewhere (val/ or test/ beside it)
    python bench.py --gpu-check --official ../pytorch-CycleGAN-and-pix2pix   # and the official code timed beside

  1. the CUDA tests, tests/test_cuda.py;
  2. the official code's training step at batch 16 and 1 (harness/official_timing.py; with --official PATH, a
     checkout at its pinned commit: docs/performance.md#against-the-official-code-on-a-gpu);
  3. the target rows: bf16, channels-last, the whole step as one CUDA graph (CUDA_GRAPH) at batch 16 and 1, on a
     tensor and from the facades files with the set resident on the GPU (DATA_ON_DEVICE; with and without the
     graph), each with its MFU against the GPU's dense peak for the precision (DENSE_PEAKS);
  4. a short real facades run: one epoch, saved; then resumed from that checkpoint for a second epoch;
  5. bench.py's training step at batch 1 and 16 in fp32 / tf32 / bf16 x NCHW / channels-last x eager / compiled,
     and compiled with CUDA graphs (COMPILE=reduce-overhead) at batch 1; and training from the facades files at
     batch 16 through the DataLoader (NUM_WORKERS=auto) with and without CACHE_IMAGES.
Under the table: ours from files over the official step, per batch size, against the targets.

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
from harness.official_timing import PINNED_COMMIT

ROOT = Path(__file__).resolve().parent.parent
clock = time.monotonic  # the time budget's clock (tests replace it)
BUDGET_MINUTES = 7.25  # every part has started and ended by then: with the start-up, under 8 minutes
MIN_START_S = 20  # a part is not started with less time than this left
TESTS_LIMIT_S, TRAIN_LIMIT_S, BENCH_LIMIT_S = 240, 150, 180  # each part's own timeout (and the budget's remainder)
BENCH = ["--warmup", "5", "--steps", "20", "--repeats", "3"]  # CUDA graphs record in the warm-up's first calls


# dense (not 2:4-sparse) tensor-core peaks from NVIDIA's datasheets, TFLOP/s, by the name torch reports; the first
# name found as whole words wins ("L4" is not an L40, "A10" not an A10G). 16-bit = bf16 and fp16 (fp32
# accumulate); fp32 is the plain CUDA-core rate (TF32 off)
DENSE_PEAKS = (("H200 NVL", 835.5, 417.5, 60.0), ("H200", 989.4, 494.7, 66.9), ("H100 NVL", 835.5, 417.5, 60.0),
               ("H100 PCIe", 756.5, 378.0, 51.2), ("H100", 989.4, 494.7, 66.9), ("A100", 312.0, 156.0, 19.5),
               ("L40S", 362.1, 183.2, 91.6), ("L4", 121.0, 60.0, 30.3), ("A10", 125.0, 62.5, 31.2))


def dense_peak_tflops(name: str, precision: str) -> tuple[float | None, str]:
    """(the GPU's dense peak for `precision` in TFLOP/s, or None if this GPU is not in DENSE_PEAKS; its name)."""
    for pattern, half, tf32, fp32 in DENSE_PEAKS:
        if re.search(rf"\b{re.escape(pattern)}\b", name):
            return {"bf16": half, "fp16": half, "tf32": tf32, "fp32": fp32}[precision], name
    return None, name


def target_plan() -> list[dict[str, Any]]:
    """The rows the targets are read from (docs/performance.md): bf16, channels-last, the whole step as one CUDA
    graph, at batch 16 and 1, on a tensor and from the facades files with the set resident on the GPU."""
    rows = [dict(BATCH_SIZE=b, PRECISION="bf16", CHANNELS_LAST=True, COMPILE=False, CUDA_GRAPH=True) for b in (16, 1)]
    rows += [dict(BATCH_SIZE=b, PRECISION="bf16", CHANNELS_LAST=True, COMPILE=False, CUDA_GRAPH=graph,
                  DATA_ON_DEVICE=True) for b in (16, 1) for graph in (True, False)]
    return rows


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
                          CACHE_IMAGES=cache, DATA_ON_DEVICE=False) for cache in (False, True)]
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
            if code is None and err.startswith("not run"):
                return row("facades run", settings, ", ".join(rates), err.strip())
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
    compile_name = "one CUDA graph" if settings.get("CUDA_GRAPH") else compile_name
    text = (f"batch {settings['BATCH_SIZE']}, {settings['PRECISION']}, "
            f"{'channels-last' if settings['CHANNELS_LAST'] else 'NCHW'}, {compile_name}")
    if "CACHE_IMAGES" in settings:
        text += f", NUM_WORKERS=auto, cache {'on' if settings['CACHE_IMAGES'] else 'off'}"
    if settings.get("DATA_ON_DEVICE"):
        text += ", set resident on the GPU"
    return text


def check_official(official: str, batch: int, deadline: float) -> dict[str, Any]:
    """The official code's training step (harness/official_timing.py) at `batch`, in its own process."""
    settings = f"batch {batch}, fp32 (cuDNN TF32), NCHW, its own step"
    if not official:
        return row("official code", settings, "", "not run: no --official PATH (docs/performance.md)")
    code, out, err = run_command([sys.executable, "-m", "harness.official_timing", official, "--batch", str(batch),
                                  *BENCH], BENCH_LIMIT_S, deadline)
    if code != 0:
        return row("official code", settings, "", last_line(err) or "failed",
                   failed=code is not None or "stopped after" in err)
    result = json.loads(last_line(out))
    commit = (result["commit"] or "?")[:7]
    note = f"commit {commit}" + ("" if commit.startswith(PINNED_COMMIT) else f" (pinned: {PINNED_COMMIT})")
    return row("official code", settings, f"{result['img_s']:.1f}", note)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Ours (from the facades files, resident, one CUDA graph) over the official step, per batch, against the
    targets, and MFU where it was given."""
    lines = []
    for batch, target in ((16, 3.0), (1, 2.5)):
        official = next((r for r in rows if r["part"] == "official code" and f"batch {batch}," in r["settings"]), None)
        ours = next((r for r in rows if r["part"] == "from files" and r["settings"].startswith(f"batch {batch},")
                     and "one CUDA graph" in r["settings"]), None)
        if official and ours and official["img/s"] and ours["img/s"]:
            ratio = float(ours["img/s"]) / float(official["img/s"])
            lines.append(f"batch {batch}: ours from files {ours['img/s']} img/s / official step {official['img/s']} "
                         f"img/s = {ratio:.2f}x (target >= {target:g}x)")
        else:
            lines.append(f"batch {batch}: ratio to the official code not run")
    return lines


def check_bench(settings: dict[str, Any], train_dir: Path, deadline: float) -> dict[str, Any]:
    files = "CACHE_IMAGES" in settings or "DATA_ON_DEVICE" in settings
    if files and not train_dir.is_dir():
        return row("from files", describe(settings), "", f"not run: no facades data at {train_dir}")
    skip = "infer,onnx,peak,save" if files else "files,infer,onnx,data,peak,save"  # peak: MFU is against the sheet
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
    notes += [f"{'step ' if files else ''}MFU {results['mfu']:.1%}"] if "mfu" in results else \
        [report["env"]["dense_peak"]] if "dense_peak" in report["env"] else []
    if files:
        notes += [f"step alone {results['train_img_s']:.0f}", f"batches alone {results['data_img_s']:.0f} img/s",
                  "whole epochs"] + ([] if settings.get("DATA_ON_DEVICE") else [f"{report['env']['workers']} workers"])
    notes.append(f"peak {results['peak_memory_mb'] / 1024:.1f} GB")
    rate = results["train_files_img_s"] if files else results["train_img_s"]
    return row(part, describe(settings), f"{rate:.1f}", "; ".join(notes))


def format_check(header: str, rows: list[dict[str, Any]]) -> str:
    """One markdown table: part | settings | images/s | notes."""
    lines = [header, "", "| part | settings | images/s | notes |", "|---|---|---:|---|"]
    lines += [f"| {r['part']} | {r['settings']} | {r['img/s']} | {'FAILED: ' if r['failed'] else ''}"
              f"{r['notes'].replace('|', '/')} |" for r in rows]
    return "\n".join(lines)


def gpu_check(train_dir: str, budget_minutes: float = BUDGET_MINUTES, official: str = "") -> int:
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
    official = str(Path(official).resolve()) if official else ""
    rows = [check_tests(deadline)]
    rows += [check_official(official, batch, deadline) for batch in (16, 1)]
    for settings in target_plan():
        rows.append(check_bench(settings, data, deadline))
        print(f"  {rows[-1]['settings']}: {rows[-1]['img/s'] or rows[-1]['notes']}", file=sys.stderr)
    rows.append(check_training(data, deadline))
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
    print("\n".join(["", *ratios(rows)]))
    return 1 if failed else 0
