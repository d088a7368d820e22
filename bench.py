"""Measure pix2pix speed on this machine: training and inference throughput, training from files through the
DataLoader, the data pipeline alone, peak memory, model FLOPs and the fraction of the device's measured
convolution peak.

    python bench.py                                  # paper architecture, 256 px, batch 1, config.py settings
    python bench.py --BATCH_SIZE=16 --PRECISION=bf16 # any config.py setting, --KEY=value as for train.py
    python bench.py --data ../shared/data/facades/train --NUM_WORKERS=2   # training from real files, and the loader
    python bench.py --data ../shared/data/facades/train --CACHE_IMAGES=True   # ... with the decoded set in memory
    python bench.py --gpu-check                      # the GPU check: CUDA tests, a facades run, one table (GPU only)
    python bench.py --sweep                          # img/s and memory over sizes 128/256/512 x batch 1/4/16
    python bench.py --recipes paper,msd_fm,paper:G_EMA=True   # each recipe's step, interleaved: its cost
    python bench.py --json                           # machine-readable output
    python bench.py --profile --skip infer,data      # torch.profiler top ops of a training step
    python bench.py --skip train,data,peak           # inference only: PyTorch vs onnxruntime (CPU) img/s
    python bench.py --skip infer,onnx,data,peak      # training, and the stall of a checkpoint save

Settings of the run being measured (BATCH_SIZE, IMAGE_SIZE, PRECISION, DEVICE, CHANNELS_LAST, COMPILE,
NUM_WORKERS, CACHE_IMAGES, ...) come from config.py and --KEY=value exactly as for train.py (harness/configurator.py);
the lower-case --flags are the benchmark's own knobs (see --help). Every figure is the median of --repeats timed runs
of --steps iterations after --warmup iterations. "training" times steps on tensors already on the device; "training
from files" takes each batch from the training DataLoader (decode, augment, copy to the device), as train.py does,
so a loader slower than the step shows there.
"""
import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.configurator import load_config
from harness.cuda_graph import WARMUP_STEPS, training_step
from harness.errors import exit_on_error
from harness.gpu_check import BUDGET_MINUTES, dense_peak_tflops, gpu_check
from harness.loading import cache_images, loader_workers, training_loader
from harness.run_log import training_flops_per_image
from harness.step_guard import StepGuard
from pix2pix import Pix2Pix, beyond_the_paper, build_models, make_grad_scalers, make_optimizers, train_step
from utils import AMP_DTYPES, Runtime, pick_runtime, synchronize, test_mode, wrap_for_training


def is_setting(arg: str) -> bool:
    """--KEY=value with an upper-case KEY: a config.py setting (the benchmark's own flags are lower-case)."""
    return arg.startswith("--") and arg[2:].split("=", 1)[0].isupper()


def parse_args(argv: list[str] | None) -> tuple[dict[str, Any], argparse.Namespace]:
    """(the config, as train.py would load it from the --KEY=value arguments; the benchmark's own flags)."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True, help="fused Adam")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default="", help="A|B training folder for the figures from files (default: synthetic "
                                              "files; with --gpu-check: data/facades/train)")
    p.add_argument("--pairs", type=int, default=0, help="synthetic training pairs for the figures from files (default: "
                                                         "64 on a GPU, 8 on a CPU, whose step takes a second)")
    p.add_argument("--official", default="", help="--gpu-check: a checkout of the official pix2pix code (see "
                                                  "docs/performance.md), timed beside ours")
    p.add_argument("--skip", default="", help="comma list of parts to skip: train,files,infer,onnx,data,peak,save")
    p.add_argument("--sweep", action="store_true", help="training img/s + memory over sizes and batch sizes")
    p.add_argument("--recipes", default="", help="comma list of arms, each a RECIPE word with :KEY=value settings of "
                                                 "its own (paper,msd_fm,paper:G_EMA=True): their training steps "
                                                 "interleaved, --repeats rounds of --steps each; the cost of each")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of two training steps")
    p.add_argument("--json", action="store_true")
    p.add_argument("--gpu-check", action="store_true", help="the GPU check (harness/gpu_check.py): needs CUDA")
    p.add_argument("--budget", type=float, default=BUDGET_MINUTES, help="--gpu-check's time budget, minutes")
    return load_config([a for a in argv if is_setting(a)]), p.parse_args([a for a in argv if not is_setting(a)])


def measure_peak_flops(device: torch.device, precision: str, seconds: float = 0.5) -> float:
    """Achieved FLOP/s of a representative 4x4 convolution (C256->C512 at 32x32) in this precision: the
    practical peak that the fraction-of-peak figure is relative to."""
    dtype = AMP_DTYPES.get(precision, torch.float32)
    # made on the CPU with its RNG forked: the caller's random stream is untouched
    with torch.random.fork_rng(devices=[]):
        conv = nn.Conv2d(256, 512, 4, padding=1, bias=False)
        x = torch.randn(8, 256, 32, 32)
    conv = conv.to(device, dtype).to(memory_format=torch.channels_last)
    x = x.to(device, dtype).to(memory_format=torch.channels_last)
    flops = 2 * 8 * 512 * 31 * 31 * 256 * 16
    sync = lambda: synchronize(device)  # noqa: E731
    with torch.no_grad():
        conv(x)
        sync()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n < 3:
            conv(x)
            n += 1
        sync()
        return flops * n / (time.perf_counter() - start)


def timed(fn, n: int, sync) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return time.perf_counter() - start


def median_rate(fn, images_per_call: int, args: argparse.Namespace, sync, warmup: int | None = None) -> float:
    timed(fn, args.warmup if warmup is None else warmup, sync)
    return statistics.median(images_per_call * args.steps / timed(fn, args.steps, sync) for _ in range(args.repeats))


def bench_model(cfg: dict[str, Any], args: argparse.Namespace, runtime: Runtime, train_set: Any) -> dict[str, Any]:
    """The training step exactly as train.py builds and wraps it (pix2pix.Pix2Pix, utils.wrap_for_training), on
    random tensors already on the device, and from the files of `train_set` through the training DataLoader;
    and G's inference."""
    device, precision = runtime.device, runtime.precision
    sync = lambda: synchronize(device)  # noqa: E731 - the device timed, not the current one
    results: dict[str, Any] = {}
    model, step_of, x, y = training_step_on_tensors(cfg, runtime, args.fused)
    start = time.perf_counter()
    G = model.G
    amp = runtime.amp
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    if "train" not in args.skip:
        step = lambda: step_and_average(step_of, model, x, y)  # noqa: E731
        if cfg["COMPILE"]:
            step()
            results["compile_s"] = time.perf_counter() - start
        # CUDA_GRAPH: the eager warm-up steps and the capture stay out of the timed steps
        warmup = max(args.warmup, WARMUP_STEPS + 2) if cfg["CUDA_GRAPH"] else None
        results["train_img_s"] = median_rate(step, cfg["BATCH_SIZE"], args, sync, warmup)
        flops = training_flops_per_image(cfg)
        results["train_gflop_per_img"] = flops / 1e9
        results["train_tflop_s"] = results["train_img_s"] * flops / 1e12
        if args.profile:
            print_profile(step)
    if "files" not in args.skip:
        results["train_files_img_s"] = bench_from_files(step_of, model, train_set, cfg, args, runtime)
    if "infer" not in args.skip:
        def infer():
            with test_mode(G, "eval"), amp:
                G(x)
        results["infer_img_s"] = median_rate(infer, cfg["BATCH_SIZE"], args, sync)
    if "onnx" not in args.skip:
        results["onnx_infer_img_s"] = bench_onnx(G, x, args)
    results["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                                 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20
    if "save" not in args.skip and "train" not in args.skip:  # after the peak: its CPU copies are not the step's
        results |= bench_save(model, cfg, args)  # Adam's state exists once training has stepped
    return results


def training_step_on_tensors(cfg: dict[str, Any], runtime: Runtime, fused: bool
                             ) -> tuple[Pix2Pix, Any, torch.Tensor, torch.Tensor]:
    """(the model, its step as train.py builds and wraps it: with the NaN/Inf guard, eager or one CUDA graph
    (CUDA_GRAPH), and a random batch (x, y) already on the device)."""
    G, D = (m.to(runtime.device, memory_format=runtime.memory_format) for m in build_models(cfg))
    model = Pix2Pix(G, D, *make_optimizers(G, D, cfg, runtime.device, fused=fused),
                    *make_grad_scalers(runtime.device, runtime.precision), cfg["L1_LAMBDA"], runtime.amp,
                    **beyond_the_paper(cfg, G))
    wrap_for_training(model, cfg["COMPILE"])
    guard = StepGuard(cfg["ON_NAN"], runtime.device, runtime.precision == "fp16")
    step_of = training_step(model, guard, train_step, cfg, runtime, say=lambda text: print(text, file=sys.stderr))
    shape = (cfg["BATCH_SIZE"], cfg["IN_CHANNELS"], cfg["IMAGE_SIZE"], cfg["IMAGE_SIZE"])
    return model, step_of, runtime.to_device(torch.randn(shape)), runtime.to_device(torch.randn(shape).clamp(-1, 1))


def compare_recipes(arms: list[str], settings: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The training step of each arm (a RECIPE word, with :KEY=value settings of its own, over the command line's
    --KEY=value), in one process and interleaved: each of --repeats rounds times --steps steps of every arm in
    turn, so that the machine's drift reaches all of them alike. Per arm: the median step time, and the median of
    its per-round ratios to the first arm's."""
    steps, rounds = {}, {}
    for arm in arms:
        word, *own = arm.split(":")
        cfg = load_config([*settings, f"--RECIPE={word}", *(f"--{s}" for s in own)])
        runtime = pick_runtime(cfg)
        model, step_of, x, y = training_step_on_tensors(cfg, runtime, args.fused)
        steps[arm] = (lambda m=model, s=step_of, x=x, y=y: step_and_average(s, m, x, y), runtime.device)
        timed(steps[arm][0], args.warmup, lambda d=runtime.device: synchronize(d))
        rounds[arm] = []
    for _ in range(args.repeats):
        for arm, (step, device) in steps.items():
            rounds[arm].append(timed(step, args.steps, lambda: synchronize(device)) / args.steps)
    first = rounds[arms[0]]
    return [{"arm": arm, "step_s": statistics.median(times),
             "vs_first": statistics.median(t / f for t, f in zip(times, first)), "rounds": times}
            for arm, times in rounds.items()]


def step_and_average(step_of: Any, model: Pix2Pix, x: torch.Tensor, y: torch.Tensor) -> None:
    """A training step as train.py takes it (`step_of`: harness/cuda_graph.training_step's): with G_EMA, the
    averaged generator's update too."""
    step_of(x, y, 0)
    if model.average:
        model.average.update(model.G, len(x))


def bench_save(model: Pix2Pix, cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """How long a checkpoint save holds training: written on the training thread (copy, write, fsync, rename), and
    with the background writer train.py uses (only the copy to CPU memory; the write overlaps training). Median
    of --repeats saves of last.pt with both networks and both Adam states, to a temp folder on this disk."""
    from harness.checkpoint import CheckpointWriter, Progress, atomic_save, training_checkpoint
    rngs = {"rng": {}, "rank_rngs": [], "loader_rng": torch.get_rng_state()}
    snapshot = lambda: training_checkpoint(model, Progress(), rngs, cfg, {})  # noqa: E731
    on_thread, stall = [], []
    writer = CheckpointWriter()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for _ in range(args.repeats):
            start = time.perf_counter()
            atomic_save(snapshot(), Path(tmp) / "last.pt")
            on_thread.append(time.perf_counter() - start)
            start = time.perf_counter()
            writer.write([(snapshot(), Path(tmp) / "last.pt")])
            stall.append(time.perf_counter() - start)
            writer.wait()  # not timed: it overlaps the next steps in a run
    return {"save_on_thread_s": statistics.median(on_thread), "save_stall_s": statistics.median(stall)}


def bench_onnx(G: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> float:
    """The same generator exported as export.py does (eval mode, fp32), run by onnxruntime on the CPU with as
    many threads as PyTorch uses."""
    from harness.onnx_export import INPUT_NAME, export_onnx, onnx_session
    G_cpu = copy.deepcopy(G).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(G_cpu, Path(tmp) / "generator.onnx")
        session = onnx_session(Path(tmp) / "generator.onnx", threads=torch.get_num_threads())
    feed = {INPUT_NAME: x.float().cpu().contiguous().numpy()}
    return median_rate(lambda: session.run(None, feed), x.shape[0], args, lambda: None)


def print_profile(step) -> None:
    """Where a training step's time goes: the top operators by self time (what bounds the throughput)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=40), file=sys.stderr)


def training_set(cfg: dict[str, Any], args: argparse.Namespace, tmp: str) -> Any:
    """The training set of --data (default: --pairs synthetic pairs made in `tmp`) as train.py builds it (the data
    checks' dataset, the training augmentation), in memory with CACHE_IMAGES=True."""
    from harness.data_checks import checked_dataset
    folder = args.data
    if not folder:
        from harness import synthetic_data
        pairs = args.pairs or (64 if torch.cuda.is_available() and cfg["DEVICE"] != "cpu" else 8)
        synthetic_data.generate(Path(tmp) / "syn", n_train=pairs, n_val=1, size=cfg["IMAGE_SIZE"])
        folder = str(Path(tmp) / "syn" / "train")
    dataset = checked_dataset(folder, cfg, train=True)
    if cfg["CACHE_IMAGES"]:
        cache_images(dataset, loader_workers(cfg["NUM_WORKERS"]), say=lambda text: print(text, file=sys.stderr))
    return dataset


def training_batches_of(train_set: Any, cfg: dict[str, Any], runtime: Runtime) -> tuple[Any, Any, Any]:
    """(batches, sampler, shut down) as train.py makes them: resident on the device (DATA_ON_DEVICE) or the
    training DataLoader (NUM_WORKERS, CACHE_IMAGES), over a fresh sampler."""
    from dataset import AugmentationSampler
    from harness.device_data import training_batches
    from harness.signals import shut_down_workers
    sampler = AugmentationSampler(len(train_set), seed=0)
    resident = training_batches(train_set, sampler, cfg, runtime.device, runtime.memory_format,
                                say=lambda text: print(text, file=sys.stderr))
    if resident is not None:
        return resident, sampler, lambda: None
    loader = training_loader(train_set, sampler, cfg, runtime.device, torch.Generator().manual_seed(0))
    return loader, sampler, lambda: shut_down_workers(loader)


def whole_epochs(batches: Any, sampler: Any, args: argparse.Namespace, sync, on_batch=None) -> float:
    """Images/s over whole epochs, the median of --repeats epochs after one warm-up epoch (which starts the
    workers and the caches): every batch of an epoch, so each epoch boundary and the workers' queue at it count,
    as in a run."""
    rates = []
    for epoch in range(args.repeats + 1):
        sampler.set_epoch(epoch)
        sync()
        start, seen = time.perf_counter(), 0
        for x, y in batches:
            if on_batch:
                on_batch(x, y)
            seen += len(x)
        sync()
        if epoch:
            rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_from_files(step: Any, model: Pix2Pix, train_set: Any, cfg: dict[str, Any], args: argparse.Namespace,
                     runtime: Runtime) -> float:
    """Training images/s over whole epochs of the training set, every batch from the batches train.py would use
    (resident on the device with DATA_ON_DEVICE, else the DataLoader with NUM_WORKERS and CACHE_IMAGES) and
    copied to the device, as in train.py's loop: the smaller of the step's and the loader's speed, epoch
    boundaries included."""
    batches, sampler, shut_down = training_batches_of(train_set, cfg, runtime)
    try:
        return whole_epochs(batches, sampler, args, lambda: synchronize(runtime.device),
                            lambda x, y: step_and_average(step, model, runtime.to_device(x), runtime.to_device(y)))
    finally:
        shut_down()


def bench_data(train_set: Any, cfg: dict[str, Any], args: argparse.Namespace, runtime: Runtime) -> float:
    """The batches alone (decode + joint augmentation, or the resident set's gather), images/s over whole epochs,
    copied to the device as train.py does."""
    batches, sampler, shut_down = training_batches_of(train_set, cfg, runtime)
    try:
        return whole_epochs(batches, sampler, args, lambda: synchronize(runtime.device),
                            lambda x, y: (runtime.to_device(x), runtime.to_device(y)))
    finally:
        shut_down()


def sweep(cfg: dict[str, Any], settings: list[str]) -> list[dict[str, Any]]:
    """Each point in a fresh process, so peak memory is that configuration's own; `settings` (the command line's
    --KEY=value) apply to every point, sizes and batch sizes are the sweep's."""
    rows = []
    for size in (128, 256, 512):
        for batch in (1, 4, 16):
            cmd = [sys.executable, __file__, "--json", "--skip", "files,infer,onnx,data,peak,save", *settings,
                   f"--IMAGE_SIZE={size}", f"--LOAD_SIZE={max(size, cfg['LOAD_SIZE'])}", f"--BATCH_SIZE={batch}",
                   "--warmup", "1", "--steps", str(max(1, 8 // batch)), "--repeats", "1"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                rows.append({"image_size": size, "batch_size": batch, "error": out.stderr.strip()[-300:]})
            else:
                rows.append({"image_size": size, "batch_size": batch} | json.loads(out.stdout)["results"])
            print(f"  {size:4d} px  batch {batch:2d}: " + (f"{rows[-1]['train_img_s']:6.2f} img/s, peak "
                  f"{rows[-1]['peak_memory_mb']:7.0f} MB" if "error" not in rows[-1] else rows[-1]["error"]),
                  file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, args = parse_args(argv)
    if args.gpu_check:
        return gpu_check(args.data or "data/facades/train", args.budget, args.official)
    runtime = pick_runtime(cfg)  # as train.py picks it; DEVICE=cuda:N: time and allocate on GPU N
    device, precision = runtime.device, runtime.precision
    env = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else device),
           "precision": precision, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "batch_size": cfg["BATCH_SIZE"], "image_size": cfg["IMAGE_SIZE"],
           "channels_last": runtime.memory_format == torch.channels_last,
           "compile": cfg["COMPILE"], "fused_adam": args.fused, "workers": loader_workers(cfg["NUM_WORKERS"]),
           "cache_images": cfg["CACHE_IMAGES"], "data_on_device": cfg["DATA_ON_DEVICE"],
           "cuda_graph": cfg["CUDA_GRAPH"]}
    if args.sweep:
        rows = sweep(cfg, [a for a in argv if is_setting(a)])
        print(json.dumps({"env": env, "sweep": rows}, indent=2) if args.json else format_sweep(env, rows))
        return 0
    if args.recipes:
        rows = compare_recipes(args.recipes.split(","), [a for a in argv if is_setting(a)], args)
        print(json.dumps({"env": env, "recipes": rows}, indent=2) if args.json else format_recipes(env, rows))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        needs_files = "files" not in args.skip or "data" not in args.skip
        train_set = training_set(cfg, args, tmp) if needs_files else None
        results = bench_model(cfg, args, runtime, train_set)
        if "data" not in args.skip:
            results["data_img_s"] = bench_data(train_set, cfg, args, runtime)
    if "peak" not in args.skip:
        results["peak_tflop_s"] = measure_peak_flops(device, precision, seconds=2.0) / 1e12
        if "train_tflop_s" in results:
            results["fraction_of_peak"] = results["train_tflop_s"] / results["peak_tflop_s"]
    if device.type == "cuda" and "train_tflop_s" in results:
        peak, name = dense_peak_tflops(torch.cuda.get_device_name(device), precision)
        env["dense_peak"] = f"{name}, {precision}: {peak:g} TFLOP/s" if peak else f"unknown GPU: {name}, MFU not given"
        if peak:
            results["mfu"] = results["train_tflop_s"] / peak
    print(json.dumps({"env": env, "results": results}, indent=2) if args.json else format_table(env, results))
    return 0


LABELS = {"train_img_s": "training (D+G step), images/s",
          "train_files_img_s": "training from files, whole epochs, images/s",
          "infer_img_s": "inference (G forward), images/s",
          "onnx_infer_img_s": "inference, onnxruntime CPU fp32, images/s",
          "data_img_s": "batches alone, whole epochs, images/s", "peak_memory_mb": "peak memory, MB",
          "train_gflop_per_img": "model GFLOP per training image", "train_tflop_s": "achieved TFLOP/s (training)",
          "peak_tflop_s": "measured conv peak, TFLOP/s", "fraction_of_peak": "fraction of measured peak",
          "mfu": "MFU (model FLOPs / the GPU's dense peak)",
          "compile_s": "torch.compile + first step, s",
          "save_on_thread_s": "checkpoint save on the training thread, s", "save_stall_s": "checkpoint save stall, "
          "background writer, s"}


def format_table(env: dict, results: dict) -> str:
    lines = ["  ".join(f"{k}={v}" for k, v in env.items()), ""]
    lines += [f"{LABELS[k]:<44s} {v:10.3f}" for k, v in results.items()]
    return "\n".join(lines)


def format_recipes(env: dict, rows: list[dict]) -> str:
    lines = ["  ".join(f"{k}={v}" for k, v in env.items()), "",
             f"{'arm':<28s} {'median step, s':>14s}  vs {rows[0]['arm']} (median per-round ratio)"]
    lines += [f"{r['arm']:<28s} {r['step_s']:14.3f}  {r['step_s'] / rows[0]['step_s']:.2f} ({r['vs_first']:.2f})"
              for r in rows]
    return "\n".join(lines)


def format_sweep(env: dict, rows: list[dict]) -> str:
    lines = ["  ".join(f"{k}={v}" for k, v in env.items() if k not in ("batch_size", "image_size")), "",
             "image size  batch  train img/s  peak memory MB"]
    for r in rows:
        lines.append(f"{r['image_size']:10d}  {r['batch_size']:5d}  " + (
            f"{r['train_img_s']:11.2f}  {r['peak_memory_mb']:14.0f}" if "error" not in r else f"error: {r['error']}"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
