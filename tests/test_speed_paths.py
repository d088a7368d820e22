"""The fast paths (device/precision choice, autocast, grad scaling, channels-last, bench.py) are chosen right and
keep training numerically faithful. CUDA is not present here: its choices are tested with the CUDA queries mocked."""
import json

import pytest
import torch

import bench
from harness.configurator import default_settings
from pix2pix import Pix2Pix, build_models, make_grad_scalers, make_optimizers, train_step
from utils import autocast, pick_device, pick_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("capability, expected", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 0), "fp16"), ((7, 5), "fp16"),
                                                  ((6, 1), "fp32")])  # no tensor cores before Volta (7.0)
def test_auto_precision_on_cuda_follows_the_gpu_generation(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert pick_precision("auto", torch.device("cuda", 0)) == expected


@pytest.mark.parametrize("amx, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_uses_bf16_only_with_amx(monkeypatch, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert pick_precision("auto", CPU) == expected


@pytest.mark.parametrize("forced", ["fp32", "bf16", "fp16"])
def test_forced_precision_is_kept(forced):
    assert pick_precision(forced, CPU) == forced


def test_auto_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == CPU


def test_grad_scaler_is_enabled_for_fp16_only():
    assert all(s.is_enabled() for s in make_grad_scalers(CPU, "fp16"))
    assert not any(s.is_enabled() for s in make_grad_scalers(CPU, "bf16"))
    assert not any(s.is_enabled() for s in make_grad_scalers(CPU, "fp32"))


def test_autocast_runs_convolutions_in_the_chosen_dtype():
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    with autocast(CPU, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert conv(x).dtype == torch.float32


def one_step(precision: str, channels_last: bool) -> tuple[dict, torch.Tensor]:
    """One paper training step of a small model from a fixed seed; returns its losses and G's first weight after."""
    torch.manual_seed(0)
    cfg = default_settings() | {"IMAGE_SIZE": 32, "NUM_DOWNS": 5, "GEN_BASE_CHANNELS": 8, "DISC_BASE_CHANNELS": 8,
                                "DROPOUT": False}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    G, D = (m.to(memory_format=fmt) for m in build_models(cfg))
    opt_G, opt_D = make_optimizers(G, D, cfg, CPU)
    scaler_G, scaler_D = make_grad_scalers(CPU, precision)
    x = torch.rand(2, 3, 32, 32).mul(2).sub(1).contiguous(memory_format=fmt)
    y = torch.rand(2, 3, 32, 32).mul(2).sub(1).contiguous(memory_format=fmt)
    losses = train_step(Pix2Pix(G, D, opt_G, opt_D, scaler_G, scaler_D, 100.0, autocast(CPU, precision)), x, y)
    return losses, G.encoder[0][0].weight.detach().clone()


def test_channels_last_keeps_training_numerically_identical_up_to_rounding():
    losses_a, weight_a = one_step("fp32", channels_last=False)
    losses_b, weight_b = one_step("fp32", channels_last=True)
    for k in losses_a:
        assert losses_b[k].item() == pytest.approx(losses_a[k].item(), rel=1e-4, abs=1e-5), k
    assert torch.allclose(weight_a, weight_b, atol=1e-6)


def test_bf16_step_stays_close_to_fp32_and_its_losses_are_fp32():
    losses_fp32, _ = one_step("fp32", channels_last=True)
    losses_bf16, weight = one_step("bf16", channels_last=True)
    # losses computed in fp32, returned as device tensors (read by train.py only when it logs: no sync per step)
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in losses_bf16.values())
    assert losses_bf16["g_l1"].item() == pytest.approx(losses_fp32["g_l1"].item(), rel=0.05)
    assert losses_bf16["d_real"].item() == pytest.approx(losses_fp32["d_real"].item(), rel=0.1)
    assert weight.dtype == torch.float32 and torch.isfinite(weight).all()  # master weights stay fp32


def test_bench_reports_every_figure_as_json(capsys):
    code = bench.main(["--IMAGE_SIZE=32", "--steps", "1", "--repeats", "1", "--warmup", "1", "--NUM_WORKERS=0",
                       "--PRECISION=fp32", "--skip", "peak", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["env"]["precision"] == "fp32" and out["env"]["image_size"] == 32
    for key in ("train_img_s", "train_files_img_s", "infer_img_s", "onnx_infer_img_s", "data_img_s", "peak_memory_mb",
                "train_tflop_s"):
        assert out["results"][key] > 0, key
    # achieved TFLOP/s is the measured rate times the model's FLOPs per image (counted on meta tensors)
    results = out["results"]
    assert results["train_tflop_s"] == pytest.approx(results["train_img_s"] * results["train_gflop_per_img"] / 1e3)


def test_bench_compares_recipes_each_with_its_own_settings_interleaved(capsys, monkeypatch):
    """--recipes: every arm's step is built from its RECIPE word, its own :KEY=value settings and the command
    line's; the rounds alternate between the arms; the first arm is the unit of the ratios."""
    built, order = [], []
    real = bench.training_step_on_tensors

    def recording(cfg, runtime, fused):
        model, step_of, x, y = real(cfg, runtime, fused)
        built.append({k: cfg[k] for k in ("RECIPE", "D_SCALES", "FEATURE_MATCHING", "G_EMA", "IMAGE_SIZE")})
        tag = len(built)
        return model, lambda *a: (order.append(tag), step_of(*a))[1], x, y
    monkeypatch.setattr(bench, "training_step_on_tensors", recording)
    code = bench.main(["--recipes", "paper,msd_fm,paper:G_EMA=True", "--IMAGE_SIZE=64", "--LOAD_SIZE=72",
                       "--GEN_BASE_CHANNELS=8", "--DISC_BASE_CHANNELS=8", "--PRECISION=fp32", "--steps", "1",
                       "--repeats", "2", "--warmup", "1", "--json"])
    rows = json.loads(capsys.readouterr().out)["recipes"]
    assert code == 0 and [r["arm"] for r in rows] == ["paper", "msd_fm", "paper:G_EMA=True"]
    assert built == [dict(RECIPE="paper", D_SCALES=1, FEATURE_MATCHING=False, G_EMA=False, IMAGE_SIZE=64),
                     dict(RECIPE="msd_fm", D_SCALES=2, FEATURE_MATCHING=True, G_EMA=False, IMAGE_SIZE=64),
                     dict(RECIPE="paper", D_SCALES=1, FEATURE_MATCHING=False, G_EMA=True, IMAGE_SIZE=64)]
    assert order == [1, 2, 3] + [1, 2, 3] * 2  # the warm-up steps, then rounds that alternate
    assert rows[0]["vs_first"] == 1 and all(r["step_s"] > 0 and len(r["rounds"]) == 2 for r in rows)


def test_channels_last_auto_picks_the_layout_by_device_and_batch():
    from harness.configurator import load_config
    from harness.errors import ConfigError
    from utils import memory_format_for
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_format_for("auto", cpu, 1) == torch.contiguous_format  # measured faster at batch 1 on CPU
    assert memory_format_for("auto", cpu, 16) == torch.channels_last
    assert memory_format_for("auto", cuda, 1) == torch.channels_last
    assert memory_format_for(True, cpu, 1) == torch.channels_last  # an explicit choice is kept
    assert memory_format_for(False, cuda, 16) == torch.contiguous_format
    assert load_config([])["CHANNELS_LAST"] == "auto"
    assert load_config(["--CHANNELS_LAST=False"])["CHANNELS_LAST"] is False
    assert load_config(["--CHANNELS_LAST=true"])["CHANNELS_LAST"] is True
    with pytest.raises(ConfigError, match="CHANNELS_LAST='sometimes'"):
        load_config(["--CHANNELS_LAST=sometimes"])


# ----------------------------------------------------------------------------- what fp32 means; tf32

def test_fp32_is_ieee_on_a_gpu_and_tf32_turns_tf32_on(cuda_flags):
    """PyTorch runs fp32 convolutions as TF32 on Ampere+ GPUs by default; here PRECISION=fp32 switches that off, tf32
    switches it on (convolutions and matrix products), and bf16/fp16 keep the fp32 rest IEEE. Off CUDA the switches
    are left alone. (The switches are settable without a GPU.)"""
    import utils
    cuda = torch.device("cuda", 0)
    for precision, tf32 in (("tf32", True), ("fp32", False), ("tf32", True), ("bf16", False), ("fp16", False)):
        utils.set_float32_math(precision, cuda)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (tf32, tf32), precision
    utils.set_float32_math("tf32", CPU)
    assert not torch.backends.cudnn.allow_tf32


def test_tf32_is_fp32_off_cuda_and_never_autocast():
    assert pick_precision("tf32", CPU) == "fp32"  # TF32 is a CUDA tensor-core mode: elsewhere plain fp32
    assert pick_precision("tf32", torch.device("cuda", 0)) == "tf32"
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    with autocast(CPU, "tf32"):
        assert conv(x).dtype == torch.float32


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True), ("auto", False)])
def test_pick_runtime_sets_what_fp32_means_for_the_run(monkeypatch, cuda_flags, precision, tf32):
    """train.py, bench.py (pick_runtime) and predict/evaluate/demo (load_for_inference) set the switches."""
    import utils
    from harness import inference
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    torch.backends.cudnn.allow_tf32 = not tf32
    runtime = utils.pick_runtime(default_settings() | {"DEVICE": "cuda", "PRECISION": precision})
    assert runtime.precision == {"auto": "bf16"}.get(precision, precision)  # auto stays bf16 on Ampere+
    assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
    torch.backends.cudnn.allow_tf32 = not tf32
    G = build_models(default_settings() | {"IMAGE_SIZE": 32, "NUM_DOWNS": 5, "GEN_BASE_CHANNELS": 8})[0]
    G.train_config = {}  # as loaded from an official file: no settings
    monkeypatch.setattr(inference, "check_device", lambda name, setting: None)
    monkeypatch.setattr(inference, "load_generator", lambda path, device, mode: G)
    assert inference.load_for_inference("g.pt", "eval", "cuda", precision)[3] == runtime.precision
    assert torch.backends.cudnn.allow_tf32 is tf32


def test_evaluate_defaults_to_fp32_and_predict_to_auto():
    import evaluate
    import predict
    assert evaluate.parse_args(["--checkpoint", "g.pt", "--data", "d"]).precision == "fp32"
    assert evaluate.parse_args(["--checkpoint", "g.pt", "--data", "d", "--precision", "tf32"]).precision == "tf32"
    assert predict.parse_args(["--checkpoint", "g.pt", "--input", "x.png", "--output", "o"]).precision == "auto"


# ----------------------------------------------------------------------------- COMPILE="reduce-overhead"

@pytest.mark.parametrize("setting, options", [(True, {}), ("reduce-overhead", {"mode": "reduce-overhead"}),
                                              (False, None)])
def test_compile_setting_reaches_torch_compile(monkeypatch, setting, options):
    """COMPILE=True: torch.compile's default mode; "reduce-overhead": its CUDA-graph mode, for all three networks
    the step runs through; False: none."""
    import utils
    calls = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: calls.append(kw) or net)
    cfg = default_settings() | {"IMAGE_SIZE": 32, "NUM_DOWNS": 5, "GEN_BASE_CHANNELS": 8, "DISC_BASE_CHANNELS": 8}
    G, D = build_models(cfg)
    model = Pix2Pix(G, D, *make_optimizers(G, D, cfg, CPU), *make_grad_scalers(CPU, "fp32"))
    utils.wrap_for_training(model, setting)
    assert calls == ([] if options is None else [options] * 3)
    marks = []  # CUDA graphs: each call of G (once per step, first) begins a new step of the graph trees
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model.G_run(torch.zeros(1, 3, 32, 32))
    model.G_run(torch.zeros(1, 3, 32, 32))
    assert len(marks) == (2 if setting == "reduce-overhead" else 0)


# ----------------------------------------------------------------------------- training from files

def test_bench_training_from_files_runs_whole_epochs_of_the_batches_a_run_would_use(tmp_path, monkeypatch, capsys):
    """bench.py's "training from files" and "batches alone" go through whole epochs (one warm-up epoch, then
    --repeats timed ones), each batch from what train.py would use: the DataLoader (DATA_ON_DEVICE=False: every
    item of every epoch drawn; CACHE_IMAGES honoured), or the resident set (each file decoded once)."""
    from conftest import write_pairs
    from dataset import PairedImageDataset
    write_pairs(tmp_path / "train", 6)
    drawn, read = [], []
    real, real_read = PairedImageDataset.__getitem__, PairedImageDataset.load_pair
    monkeypatch.setattr(PairedImageDataset, "__getitem__", lambda self, key: drawn.append(key) or real(self, key))
    monkeypatch.setattr(PairedImageDataset, "load_pair", lambda self, i: read.append(i) or real_read(self, i))
    args = ["--IMAGE_SIZE=32", "--LOAD_SIZE=36", "--BATCH_SIZE=2", "--NUM_WORKERS=0", "--PRECISION=fp32",
            "--data", str(tmp_path / "train"), "--warmup", "1", "--steps", "2", "--repeats", "2",
            "--skip", "infer,onnx,peak", "--json"]
    code = bench.main(args + ["--CACHE_IMAGES=True", "--DATA_ON_DEVICE=False"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 0 and out["results"]["train_files_img_s"] > 0 and out["results"]["data_img_s"] > 0
    assert out["env"]["cache_images"] is True and out["env"]["data_on_device"] is False
    assert len(drawn) == 2 * (1 + 2) * 6  # files and batches alone: (warm-up + 2 repeats) whole epochs of 6
    assert "CACHE_IMAGES: keeping the 6 training pairs" in captured.err
    drawn.clear(), read.clear()
    assert bench.main(args + ["--DATA_ON_DEVICE=True"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["results"]["train_files_img_s"] > 0 and not drawn
    assert len(read) == 2 * 6 and "DATA_ON_DEVICE: keeping the 6 training pairs" in captured.err  # once per part


# ----------------------------------------------------------------------------- bench.py --gpu-check

def test_gpu_check_without_cuda_says_so_in_one_line_and_runs_nothing(monkeypatch, capsys):
    from harness import gpu_check
    from harness.errors import exit_on_error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "execute", lambda cmd, timeout: pytest.fail(f"ran {cmd}"))
    assert exit_on_error(lambda: bench.main(["--gpu-check"])) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: bench.py --gpu-check needs an NVIDIA GPU with CUDA")
    assert "nothing was run" in err


def test_gpu_check_plan_covers_the_grid_once():
    """fp32/tf32/bf16 x batch 1/16 x NCHW/channels-last x eager/compiled, reduce-overhead at batch 1 only, and
    training from files with and without the cache; eager channels-last first (the CUDA default)."""
    from harness import gpu_check
    plan = gpu_check.bench_plan()
    keys = [tuple(sorted(s.items())) for s in plan]
    assert len(keys) == len(set(keys)) == 2 * 3 * 2 * 3 - 2 * 3 + 2  # no reduce-overhead at batch 16
    assert {s["COMPILE"] for s in plan if s["BATCH_SIZE"] == 16} == {False, True}
    assert sum(s["COMPILE"] == "reduce-overhead" for s in plan) == 3 * 2
    assert [s.get("CACHE_IMAGES") for s in plan if "CACHE_IMAGES" in s] == [False, True]
    assert all(s["DATA_ON_DEVICE"] is False for s in plan if "CACHE_IMAGES" in s)  # the DataLoader's rows
    assert all(s["CHANNELS_LAST"] and not s["COMPILE"] for s in plan[:6])


def fake_part(cmd: list[str]) -> tuple[int, str, str]:
    """What each part of the GPU check prints when it works."""
    if "pytest" in cmd:
        return 0, "........ [100%]\n8 passed in 61.2s\n", ""
    if "train.py" in cmd:
        resumed = "--N_EPOCHS_DECAY=1" in cmd
        return 0, ("resuming from run/checkpoints/last.pt: epoch 2, batch 0, step 400\n" if resumed else "") + \
            f"device cuda:0 (bf16), 1 process(es)\nepoch {1 + resumed}: 150.5 img/s, 1.2 TFLOP/s\n" \
            f"  val: L1 0.4100  PSNR 12.00 dB\n", ""
    if "harness.official_timing" in cmd:
        return 0, json.dumps({"img_s": 100.0, "commit": "2a7afba0", "device": "Fake H200"}) + "\n", ""
    if "--COMPILE=reduce-overhead" in cmd:
        return 1, "", "Traceback ...\nRuntimeError: simulated CUDA-graph failure\n"
    results = {"train_img_s": 300.0, "peak_memory_mb": 2048.0, "train_files_img_s": 250.0, "data_img_s": 900.0}
    return 0, json.dumps({"env": {"workers": 8}, "results": results}), ""


@pytest.mark.parametrize("budget_minutes, runs", [(100.0, "all"), (2.0, "some")])
def test_gpu_check_prints_one_table_and_keeps_to_its_budget(tmp_path, monkeypatch, capsys, budget_minutes, runs):
    """With CUDA mocked and every part 20 s on a fake clock: one markdown table with a row per part; a failing part
    is marked and gives exit code 1; parts that no longer fit the budget are "not run" (not started at all)."""
    from harness import gpu_check
    now, started = [0.0], []

    def execute(cmd, timeout):
        assert timeout <= gpu_check.BENCH_LIMIT_S + gpu_check.TESTS_LIMIT_S and now[0] + timeout <= 60 * budget_minutes
        started.append(cmd)
        now[0] += 20
        return fake_part(cmd)
    monkeypatch.setattr(gpu_check, "execute", execute)
    monkeypatch.setattr(gpu_check, "clock", lambda: now[0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    (tmp_path / "facades" / "train").mkdir(parents=True)
    (tmp_path / "facades" / "test").mkdir()
    code = bench.main(["--gpu-check", "--data", str(tmp_path / "facades" / "train"), "--budget", str(budget_minutes),
                       "--official", str(tmp_path / "official")])
    lines = capsys.readouterr().out.strip().splitlines()
    table, summary = lines[:-3], lines[-2:]  # the table, a blank line, the ratio per batch size
    plan, targets = gpu_check.bench_plan(), gpu_check.target_plan()
    assert table[0].startswith("GPU check on Fake H200 (compute capability 9.0)")
    assert table[2] == "| part | settings | images/s | notes |" and len(table) == 4 + 1 + 2 + len(targets) + 1 + len(plan)
    assert table[4] == "| CUDA tests | tests/test_cuda.py |  | 8 passed in 61.2s |"
    assert table[5] == "| official code | batch 16, fp32 (cuDNN TF32), NCHW, its own step | 100.0 | commit 2a7afba |"
    assert table[7] == "| training step | batch 16, bf16, channels-last, one CUDA graph | 300.0 | peak 2.0 GB |"
    assert table[9].startswith("| from files | batch 16, bf16, channels-last, one CUDA graph, set resident on the "
                               "GPU | 250.0 | step alone 300; batches alone 900 img/s; whole epochs; peak")
    facades = 4 + 1 + 2 + len(targets)  # after the tests, the official code and the target rows
    assert runs != "all" or table[facades].startswith("| facades run | PRESET=facades, 1 epoch saved + 1 epoch resumed, batch 1, "
                                     "bf16 | 150.5 / 150.5 | saved, resumed at epoch 2")
    assert runs != "all" or table[facades + 1] == "| training step | batch 1, fp32, channels-last, eager | 300.0 | " \
        "peak 2.0 GB |"
    not_run = [line for line in table[4:] if "not run: the time budget is spent" in line]
    failed = [line for line in table[4:] if "FAILED: RuntimeError: simulated CUDA-graph failure" in line]
    parts = len([c for c in started if "train.py" not in c]) + any("train.py" in c for c in started)
    assert parts + len(not_run) == 1 + 2 + len(targets) + 1 + len(plan)  # tests, official, rows, the runs' row
    assert summary[0] == "batch 16: ours from files 250.0 img/s / official step 100.0 img/s = 2.50x (target >= 3x)"
    if runs == "all":
        assert not not_run and len(failed) == 6 and code == 1
    else:
        assert len(started) == (60 * budget_minutes - gpu_check.MIN_START_S) // 20 + 1 and not failed
        assert code == 0


# a part that starts a worker of its own (as DataLoader and compile workers are), writes the worker's PID to
# sys.argv[1], then hangs; the worker holds no pipe of the part, so only a kill of the group can end it early
PART_WITH_A_WORKER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
open(sys.argv[1], "w").write(str(worker.pid))
print("started", flush=True)
time.sleep(600)
"""


def test_a_gpu_check_part_past_its_timeout_is_stopped_with_its_process_group(tmp_path):
    import os
    import select
    import signal
    import sys
    from harness import gpu_check
    code, out, err = gpu_check.execute([sys.executable, "-c", "print('hello')"], timeout=60)
    assert (code, out) == (0, "hello\n")
    code, out, err = gpu_check.execute([sys.executable, "-c", PART_WITH_A_WORKER, str(tmp_path / "worker")],
                                       timeout=5)
    assert code is None and out == "started\n" and err.startswith("stopped after 5 s")
    worker = int((tmp_path / "worker").read_text())
    try:
        ended = os.pidfd_open(worker)  # readable once the worker has ended (a zombie included)
    except ProcessLookupError:
        return  # ended and already reaped
    try:
        gone = bool(select.select([ended], [], [], 30)[0])
        if not gone:
            signal.pidfd_send_signal(ended, signal.SIGKILL)  # a failed test leaves nothing running
    finally:
        os.close(ended)
    assert gone, "the part's own worker outlived the part's timeout"


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5),
                                        ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.1), ("NVIDIA L40", None),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A10", 125.0),
                                        ("NVIDIA A10G", None)])
def test_the_mfu_peak_is_the_named_gpus_own(name, peak):
    """A GPU's peak is found by its whole name: an L40 is not an L4, an A10G not an A10 (no peak: no MFU)."""
    from harness.gpu_check import dense_peak_tflops
    assert dense_peak_tflops(name, "bf16") == (peak, name)
