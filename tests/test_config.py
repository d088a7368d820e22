"""Settings: config.py and configurator.load_config: overrides and types, typo hints, presets; values parsed as
literals, never evaluated (code in a --KEY=value never runs); bad settings refused in one line naming the setting
and the valid values, before any data or model work, and train.py's command line exiting 2 on them; bench.py taking
the same settings; docs/configuration.md naming every setting (CPU, ~15 s; three subprocesses).

    python -m pytest tests/test_config.py -q
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import config as default_config
import train
from conftest import tiny_args
from harness.configurator import ConfigError, load_config
from harness.errors import exit_on_error

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_defaults_are_the_papers():
    cfg = load_config([])
    assert (cfg["BATCH_SIZE"], cfg["LEARNING_RATE"], cfg["BETA1"], cfg["L1_LAMBDA"]) == (1, 2e-4, 0.5, 100.0)
    assert cfg["IMAGE_SIZE"] == 256 and cfg["LOAD_SIZE"] == 286 and cfg["NUM_DOWNS"] == 8  # derived from 256
    assert cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"] == 200 and cfg["DISC_N_LAYERS"] == 3


def test_overrides_and_types():
    cfg = load_config(["--BATCH_SIZE=4", "--LEARNING_RATE=1e-3", "--JITTER=False", "--MIRROR=0",
                       "--DIRECTION=AtoB", "--RUN_DIR=runs/x y", "--IMAGE_SIZE=128", "--LOAD_SIZE=143"])
    assert cfg["BATCH_SIZE"] == 4 and type(cfg["BATCH_SIZE"]) is int
    assert cfg["LEARNING_RATE"] == 1e-3 and type(cfg["LEARNING_RATE"]) is float
    assert cfg["JITTER"] is False and cfg["MIRROR"] is False
    assert cfg["DIRECTION"] == "AtoB" and cfg["RUN_DIR"] == "runs/x y"  # strings taken verbatim
    assert cfg["NUM_DOWNS"] == 7  # derived from the overridden IMAGE_SIZE
    assert load_config(["--COMPILE=true"])["COMPILE"] is True and load_config(["--DROPOUT=yes"])["DROPOUT"] is True
    lr = load_config(["--LEARNING_RATE=1"])["LEARNING_RATE"]  # an int is fine where a float is expected
    assert lr == 1.0 and type(lr) is float
    assert load_config([])["BATCH_SIZE"] == 1 and default_config.BATCH_SIZE == 1  # overrides never leak


@pytest.mark.parametrize("arg, key", [("--BATCH_SIZE=1.5", "BATCH_SIZE"), ("--BATCH_SIZE=True", "BATCH_SIZE"),
                                      ("--LEARNING_RATE=fast", "LEARNING_RATE"), ("--JITTER=maybe", "JITTER"),
                                      ("--N_EPOCHS=[1]", "N_EPOCHS")])
def test_wrong_type_is_refused(arg, key):
    with pytest.raises(ConfigError, match=key):
        load_config([arg])


@pytest.mark.parametrize("arg, suggestion", [("--LEARNING_RATES=1", "LEARNING_RATE"),
                                             ("--batch_size=4", "BATCH_SIZE"),
                                             ("--IMAGESIZE=128", "IMAGE_SIZE")])
def test_unknown_key_suggests_closest(arg, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config([arg])
    assert "unknown setting" in str(err.value) and suggestion in str(err.value)


def test_malformed_argument():
    with pytest.raises(ConfigError, match="--KEY=value"):
        load_config(["BATCH_SIZE=4"])


@pytest.mark.parametrize("key", ["LEARNING_RATE", "BATCH_SIZE", "N_EPOCHS"])
def test_values_are_never_evaluated(tmp_path, key):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=key):
        load_config([f"--{key}=__import__('os').system('touch {marker}')"])
    assert not marker.exists()


def test_facades_preset():
    cfg = load_config(["--PRESET=facades"])
    assert cfg["DIRECTION"] == "BtoA" and cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"] == 200
    assert cfg["BATCH_SIZE"] == 1 and cfg["JITTER"] is True and cfg["MIRROR"] is True
    assert cfg["TRAIN_DIR"] == "data/facades/train" and cfg["RUN_DIR"] == "runs/facades"


def test_edges2shoes_preset_and_cli_beats_preset():
    cfg = load_config(["--PRESET=edges2shoes"])
    assert cfg["DIRECTION"] == "AtoB" and cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"] == 15
    assert cfg["BATCH_SIZE"] == 4 and cfg["JITTER"] is False and cfg["MIRROR"] is False
    for argv in (["--PRESET=edges2shoes", "--BATCH_SIZE=2", "--TRAIN_DIR=/d/t", "--VAL_DIR=/d/v"],
                 ["--BATCH_SIZE=2", "--TRAIN_DIR=/d/t", "--VAL_DIR=/d/v", "--PRESET=edges2shoes"]):  # any order
        cfg = load_config(argv)
        assert cfg["BATCH_SIZE"] == 2 and cfg["TRAIN_DIR"] == "/d/t" and cfg["DIRECTION"] == "AtoB"


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config(["--PRESET=facade"])
    assert "PRESET" in str(err.value) and "facades" in str(err.value) and "edges2shoes" in str(err.value)


@pytest.mark.parametrize("args, key", [
    (["--IMAGE_SIZE=100"], "IMAGE_SIZE"),
    (["--IMAGE_SIZE=64", "--NUM_DOWNS=7"], "IMAGE_SIZE"),
    (["--LOAD_SIZE=200"], "LOAD_SIZE"),
    (["--LEARNING_RATE=0"], "LEARNING_RATE"),
    (["--LEARNING_RATE=-1e-4"], "LEARNING_RATE"),
    (["--BATCH_SIZE=0"], "BATCH_SIZE"),
    (["--DIRECTION=AtoC"], "DIRECTION"),
    (["--NORM=group"], "NORM"),
    (["--PRECISION=fp8"], "PRECISION"),
    (["--IN_CHANNELS=2"], "IN_CHANNELS"),
    (["--N_EPOCHS=0", "--N_EPOCHS_DECAY=0"], "N_EPOCHS"),
    (["--BETA1=1.0"], "BETA1"),
    (["--DEVICE=tpu0"], "DEVICE"),
])
def test_validation_errors_name_the_setting(args, key):
    with pytest.raises(ConfigError) as err:
        load_config(args)
    assert key in str(err.value)


@pytest.mark.parametrize("arg, value", [("--NUM_WORKERS=auto", "auto"), ("--NUM_WORKERS=4", 4), ("--NUM_WORKERS=0", 0),
                                        ("--COMPILE=reduce-overhead", "reduce-overhead"), ("--COMPILE=True", True),
                                        ("--COMPILE=off", False), ("--PRECISION=tf32", "tf32")])
def test_settings_that_take_a_word_or_a_number(arg, value):
    key = arg[2:].split("=")[0]
    got = load_config([arg])[key]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("arg", ["--NUM_WORKERS=-1", "--NUM_WORKERS=2.5", "--NUM_WORKERS=many", "--NUM_WORKERS=True",
                                 "--COMPILE=max-autotune", "--COMPILE=2", "--PRECISION=fp64"])
def test_bad_words_or_numbers_are_one_line_setting_errors(arg):
    key = arg[2:].split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config([arg])
    assert f"{key}=" in str(err.value) and "\n" not in str(err.value) and ConfigError.exit_code == 2


def test_new_defaults_and_values_written_in_config_py(monkeypatch):
    """NUM_WORKERS=auto and CACHE_IMAGES=False by default; values edited into config.py go through the same checks
    (an int NUM_WORKERS, COMPILE="reduce-overhead"), and --NUM_WORKERS=auto still works over an int there."""
    cfg = load_config([])
    assert (cfg["NUM_WORKERS"], cfg["CACHE_IMAGES"], cfg["COMPILE"]) == ("auto", False, False)
    monkeypatch.setattr(default_config, "NUM_WORKERS", 3)
    monkeypatch.setattr(default_config, "COMPILE", "reduce-overhead")
    assert (load_config([])["NUM_WORKERS"], load_config([])["COMPILE"]) == (3, "reduce-overhead")
    assert load_config(["--NUM_WORKERS=auto"])["NUM_WORKERS"] == "auto"
    monkeypatch.setattr(default_config, "NUM_WORKERS", -2)
    with pytest.raises(ConfigError, match="NUM_WORKERS=-2"):
        load_config([])


@pytest.mark.parametrize("key, value", [("BATCH_SIZE", "4"), ("BATCH_SIZE", 4.0), ("IMAGE_SIZE", 256.0),
                                        ("LEARNING_RATE", "2e-4"), ("EVAL_BUDGET", "0.1"), ("JITTER", "False"),
                                        ("FID", "no"), ("DETERMINISTIC", 1), ("VAL_EVERY", True), ("RUN_DIR", None),
                                        ("TRAIN_DIR", 5), ("L1_LAMBDA", float("nan")), ("INIT_GAIN", float("inf"))])
def test_a_value_of_the_wrong_type_written_in_config_py_is_one_line(monkeypatch, key, value):
    """config.py's values are checked as the command line's are: a "4" used to fail deep in the run with a
    TypeError, a "False" read as true, a float IMAGE_SIZE stopped with an AttributeError."""
    monkeypatch.setattr(default_config, key, value)
    with pytest.raises(ConfigError) as err:
        load_config([])
    assert str(err.value).startswith(f"{key}={value!r} is not valid") and "\n" not in str(err.value)


def test_a_whole_number_in_config_py_stands_for_a_float_and_an_override_fixes_a_bad_value(monkeypatch):
    monkeypatch.setattr(default_config, "LEARNING_RATE", 1)
    assert load_config([])["LEARNING_RATE"] == 1.0 and type(load_config([])["LEARNING_RATE"]) is float
    with pytest.raises(ConfigError, match="LEARNING_RATE=inf is not valid; use a finite number"):
        load_config(["--LEARNING_RATE=1e400"])  # a literal too large for a float
    monkeypatch.setattr(default_config, "BATCH_SIZE", "4")  # the setting's type, not config.py's, reads --KEY
    assert load_config(["--BATCH_SIZE=4"])["BATCH_SIZE"] == 4


@pytest.mark.parametrize("table", ["PRESETS", "RECIPES"])
def test_an_unknown_setting_in_a_preset_or_recipe_is_named(monkeypatch, table):
    """A typo in config.py's PRESETS or RECIPES (D_SCALE for D_SCALES) used to be applied as a setting nobody reads:
    the recipe silently did nothing."""
    monkeypatch.setitem(getattr(default_config, table), "mine", {"D_SCALE": 2})
    with pytest.raises(ConfigError) as err:
        load_config([f"--{table[:-1]}=mine"])
    assert f"'D_SCALE' in config.py's {table}['mine']" in str(err.value) and "D_SCALES" in str(err.value)


def test_every_setting_in_config_py_has_the_type_the_configurator_checks():
    from harness.configurator import FLEXIBLE, SETTING_TYPES, default_settings
    defaults = default_settings()
    assert set(SETTING_TYPES) <= set(defaults)
    assert {k: type(v) for k, v in defaults.items() if k not in FLEXIBLE} == \
        {k: SETTING_TYPES.get(k, str) for k in defaults if k not in FLEXIBLE}


def test_load_size_may_be_smaller_without_jitter():
    assert load_config(["--LOAD_SIZE=200", "--JITTER=False"])["LOAD_SIZE"] == 200


def test_cuda_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="DEVICE"):
            load_config([f"--DEVICE={device}"])
    assert load_config(["--DEVICE=cpu"])["DEVICE"] == "cpu"


def test_a_scripts_missing_cuda_device_is_named_by_its_flag(monkeypatch):
    """predict/evaluate/export/demo take --device: their error names that flag, not train.py's DEVICE setting."""
    from harness.inference import load_for_inference
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"^--device='cuda' but 0 CUDA device\(s\) are available; use --device=auto"):
        load_for_inference("generator.pt", device="cuda")


@pytest.mark.parametrize("device", ["meta", "xla", "xpu", "hip"])
def test_a_device_torch_names_but_pix2pix_cannot_run_on_is_a_config_error(device):
    """DEVICE=meta trained until its first sample grid ("Cannot copy out of meta tensor"), DEVICE=xla stopped with
    a RuntimeError traceback: torch.device() accepts them, so the check must name the devices that work."""
    with pytest.raises(ConfigError, match=f"DEVICE='{device}' is not a device pix2pix runs on; use auto, cpu"):
        load_config([f"--DEVICE={device}"])


def test_cli_error_is_one_line_exit_2(tmp_path):
    """A bad setting stops train.py before any heavy work: exit 2, one `error:` line, no traceback."""
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--BAD=1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "BAD" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing generated or written


def test_resume_setting_resolves_to_a_checkpoint_or_a_setting_error(tmp_path):
    """RESUME is a setting: auto finds last.pt, never refuses to overwrite it, a missing path is refused; the
    refusals are ConfigErrors (train.py exits 2 for them), raised before any data or model work."""
    from harness.configurator import resolve_resume
    ckpt_dir = tmp_path / "checkpoints"
    assert resolve_resume({"RESUME": "auto"}, ckpt_dir) is None
    assert resolve_resume({"RESUME": "never"}, ckpt_dir) is None
    ckpt_dir.mkdir()
    (ckpt_dir / "last.pt").write_bytes(b"saved")
    assert resolve_resume({"RESUME": "auto"}, ckpt_dir) == ckpt_dir / "last.pt"
    with pytest.raises(ConfigError, match="RESUME=never but .*last.pt exists"):
        resolve_resume({"RESUME": "never"}, ckpt_dir)
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        resolve_resume({"RESUME": str(tmp_path / "missing.pt")}, ckpt_dir)
    assert resolve_resume({"RESUME": str(ckpt_dir / "last.pt")}, ckpt_dir) == ckpt_dir / "last.pt"
    (ckpt_dir / "epoch_0001.pt").write_bytes(b"an earlier snapshot")  # RESUME=it would overwrite last.pt: refused
    with pytest.raises(ConfigError, match=r"RESUME=.*epoch_0001.pt' but .*last.pt exists and would be overwritten"):
        resolve_resume({"RESUME": str(ckpt_dir / "epoch_0001.pt")}, ckpt_dir)
    assert resolve_resume({"RESUME": str(ckpt_dir / "epoch_0001.pt")}, tmp_path / "new") == ckpt_dir / "epoch_0001.pt"


def test_deterministic_resnet_on_a_gpu_is_refused_before_any_work(monkeypatch):
    """torch.use_deterministic_algorithms raises in the ResNet's reflection-padding backward on CUDA: exit 2 up
    front, not a RuntimeError at the first step. On the CPU the combination is deterministic and allowed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"^DETERMINISTIC=True with GENERATOR='resnet_9blocks' on a CUDA GPU"):
        load_config(["--DETERMINISTIC=True", "--GENERATOR=resnet_9blocks"])
    assert load_config(["--DETERMINISTIC=True", "--GENERATOR=resnet_9blocks", "--DEVICE=cpu"])["DETERMINISTIC"]
    assert load_config(["--DETERMINISTIC=True"])["GENERATOR"] == "unet"


# ----------------------------------------------------------------------------- data folders and empty paths

def test_a_custom_train_dir_validates_on_its_own_held_out_folder_not_the_synthetic_set(tmp_path, monkeypatch):
    """VAL_DIR left at its default (the built-in synthetic set's, or a preset's) follows a custom TRAIN_DIR to its
    sibling val/ (else test/) folder; with neither, the mix is refused, naming both settings. A VAL_DIR given on the
    command line is kept as it is, and the defaults stay as they are."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        load_config(["--TRAIN_DIR=mine/train"])
    assert str(err.value) == ("TRAIN_DIR=mine/train but VAL_DIR is left at data/synthetic/val, another data set, and "
                              "there is no mine/val or mine/test folder to use instead; set --VAL_DIR to held-out "
                              "images of your task")
    (tmp_path / "mine" / "test").mkdir()
    assert load_config(["--TRAIN_DIR=mine/train"])["VAL_DIR"] == "mine/test"
    (tmp_path / "mine" / "val").mkdir()
    assert load_config(["--TRAIN_DIR=mine/train"])["VAL_DIR"] == "mine/val"
    assert load_config(["--PRESET=facades", "--TRAIN_DIR=mine/train"])["VAL_DIR"] == "mine/val"
    assert load_config(["--TRAIN_DIR=mine/train", "--VAL_DIR=elsewhere"])["VAL_DIR"] == "elsewhere"
    assert load_config([])["VAL_DIR"] == "data/synthetic/val"
    assert load_config(["--PRESET=maps"])["VAL_DIR"] == "data/maps/val"


@pytest.mark.parametrize("key", ["TRAIN_DIR", "VAL_DIR", "RUN_DIR", "RESUME"])
def test_an_empty_path_setting_is_a_config_error(key):
    """--KEY= (what an unset shell variable gives) would mean the current folder: train on whatever images are
    there, or write the run into it. It is refused in one line naming the setting."""
    with pytest.raises(ConfigError) as err:
        load_config([f"--{key}="])
    assert str(err.value).startswith(f"{key} is empty (an unset shell variable?); an empty path would mean the "
                                     f"current folder") and "\n" not in str(err.value)


def test_cli_empty_paths_exit_2_and_write_nothing(tmp_path):
    """`python train.py --TRAIN_DIR= --RUN_DIR=` in a folder holding images: exit 2, one line, nothing trained or
    written there; an empty --output of predict.py is an argument error too (exit 2)."""
    from conftest import write_pairs
    write_pairs(tmp_path / "pictures", 3)
    before = sorted(tmp_path.rglob("*"))
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--TRAIN_DIR=", "--RUN_DIR="], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: TRAIN_DIR is empty") and \
        result.stderr.count("\n") == 1, result.stderr
    assert sorted(tmp_path.rglob("*")) == before
    import predict
    with pytest.raises(SystemExit) as exit_:
        predict.parse_args(["--checkpoint", "g.pt", "--input", "pictures", "--output", ""])
    assert exit_.value.code == 2


@pytest.mark.parametrize("script, argv", [
    ("evaluate", ["--checkpoint", "g.pt", "--data", "val", "--fcn-train", ""]),
    ("evaluate", ["--checkpoint", "g.pt", "--data", "val", "--segmenter", ""]),
    ("export", ["--checkpoint", "g.pt", "--output", ""]),
    ("demo", ["--checkpoint", "g.pt", "--val-dir", ""]),
    ("harness.fcn_score", ["--train", "", "--test", "test", "--cache", "seg.pt"]),
    ("harness.fcn_score", ["--train", "train", "--test", "test", "--cache", ""]),
    ("download_dataset", ["facades", "--output", "data/x"])])  # not empty, below a file: the same exit 2
def test_a_path_argument_that_cannot_be_used_is_exit_2_before_any_work(script, argv, tmp_path, monkeypatch, capsys):
    """An empty path argument (an unset shell variable) would mean the current folder: an argument error, exit 2,
    one line naming the option; nothing is read, trained or written."""
    import importlib
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").write_text("a file where a folder is asked for")
    module = importlib.import_module(script)
    run = module.parse_args if hasattr(module, "parse_args") else module.main
    with pytest.raises(SystemExit) as exit_:
        code = exit_on_error(lambda: run(argv)) if script == "download_dataset" else run(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse: usage, then "<prog>: error: argument --x: ..."
    assert exit_.value.code == 2 and "error: " in last and "--" in last and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# ----------------------------------------------------------------------------- the smallest images

@pytest.mark.parametrize("n_layers", [0, 1, 2, 3, 4, 5, 6])
def test_the_size_check_accepts_exactly_the_images_the_networks_can_train_on(n_layers):
    """check_image_size agrees, size by size, with a PatchGAN of DISC_N_LAYERS layers taking a training step's
    forward at batch 1 (batch norm in train mode: more than one value per channel, patch logits of 1x1 or more);
    the U-Net needs 2 levels."""
    from discriminator_model import PatchDiscriminator
    from harness.configurator import check_image_size
    D = PatchDiscriminator(3, 3, 2, n_layers, "batch").train()
    for size in range(4, 3 * 2 ** n_layers + 9, 2):
        try:
            check_image_size(size, 2, n_layers)
            accepted = True
        except ConfigError:
            accepted = False
        try:
            with torch.no_grad():
                works = D(torch.randn(1, 3, size, size), torch.randn(1, 3, size, size)).shape[-1] >= 1
        except (ValueError, RuntimeError):
            works = False
        assert accepted == works, (size, accepted, works)
    with pytest.raises(ConfigError, match="the U-Net needs at least 2 levels"):
        check_image_size(32, 1, n_layers)


@pytest.mark.parametrize("args, message", [
    (["--IMAGE_SIZE=16", "--LOAD_SIZE=16"], "IMAGE_SIZE=16 is too small for the PatchGAN of DISC_N_LAYERS=3: its "
                                            "feature maps would shrink to 1x1 and its patch logits to 0x0. Use "
                                            "IMAGE_SIZE >= 24 (e.g. 32) or a smaller DISC_N_LAYERS"),
    (["--IMAGE_SIZE=2", "--LOAD_SIZE=2"], "IMAGE_SIZE=2, NUM_DOWNS=1: the U-Net needs at least 2 levels "
                                          "(NUM_DOWNS >= 2, so IMAGE_SIZE >= 4)"),
])
def test_too_small_images_are_a_config_error_not_a_traceback(args, message):
    """`python train.py ... --IMAGE_SIZE=16 --LOAD_SIZE=16` failed in its first step with batch norm's ValueError."""
    with pytest.raises(ConfigError) as err:
        load_config(args)
    assert str(err.value) == message
    assert load_config(["--IMAGE_SIZE=32", "--LOAD_SIZE=32"])["IMAGE_SIZE"] == 32


def test_an_image_size_that_is_no_power_of_two_gets_advice_that_fits_a_derived_depth():
    """NUM_DOWNS=0 (the default) derives the depth; the advice must not be to set NUM_DOWNS=0, which it already is."""
    with pytest.raises(ConfigError) as e:
        load_config(["--IMAGE_SIZE=300", "--LOAD_SIZE=320"])
    assert str(e.value) == ("IMAGE_SIZE=300 is not divisible by 2^NUM_DOWNS=512, the depth that NUM_DOWNS=0 derives "
                            "from it (9); use IMAGE_SIZE=256 or a multiple of 512, or set NUM_DOWNS=2 (2^2 divides "
                            "300)")
    assert load_config(["--IMAGE_SIZE=300", "--LOAD_SIZE=320", "--NUM_DOWNS=2"])["NUM_DOWNS"] == 2
    with pytest.raises(ConfigError, match="use a multiple of 256 or NUM_DOWNS=0"):  # a depth the user chose
        load_config(["--IMAGE_SIZE=300", "--LOAD_SIZE=320", "--NUM_DOWNS=8"])


# ----------------------------------------------------------------------------- overrides are never code

INJECTIONS = ["__import__('os').system('touch {m}')", "exec(\"open('{m}','w')\")", "[open('{m}', 'w')]",
              "(lambda: open('{m}','w'))()"]


@pytest.mark.parametrize("key", ["LEARNING_RATE", "BATCH_SIZE", "MIRROR", "SEED"])
@pytest.mark.parametrize("template", INJECTIONS)
def test_overrides_are_parsed_never_evaluated(tmp_path, key, template):
    marker = tmp_path / "MARKER"
    with pytest.raises(ConfigError) as e:
        load_config([f"--{key}={template.format(m=marker)}"])
    assert key in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_string_settings_are_taken_literally(tmp_path):
    marker = tmp_path / "MARKER"
    text = f"__import__('os').system('touch {marker}')"
    assert load_config([f"--RUN_DIR={text}"])["RUN_DIR"] == text
    assert not marker.exists()


# ----------------------------------------------------------------------------- bad settings, in-process

@pytest.mark.parametrize("override,names", [
    ("--IMAGE_SIZE=100", ["IMAGE_SIZE=100", "2^NUM_DOWNS=128", "multiple of 128"]),
    ("--IMAGE_SIZE=64 --NUM_DOWNS=8", ["IMAGE_SIZE=64", "2^NUM_DOWNS=256", "multiple of 256"]),
    ("--LOAD_SIZE=200", ["LOAD_SIZE=200", "IMAGE_SIZE=256", "LOAD_SIZE >= IMAGE_SIZE"]),
    ("--LEARNING_RATE=0", ["LEARNING_RATE=0.0", "> 0"]),
    ("--LEARNING_RATE=-2e-4", ["LEARNING_RATE=-0.0002", "> 0"]),
    ("--BATCH_SIZE=0", ["BATCH_SIZE=0", "> 0"]),
    ("--BATCH_SIZE=-4", ["BATCH_SIZE=-4", "> 0"]),
    ("--BATCH_SIZE=2.5", ["BATCH_SIZE", "expected int"]),
    ("--DIRECTION=AtoC", ["DIRECTION='AtoC'", "'AtoB', 'BtoA'"]),
    ("--NORM=group", ["NORM='group'", "'batch'", "'instance'"]),
    ("--PRECISION=fp8", ["PRECISION='fp8'", "'auto', 'fp32', 'tf32', 'bf16', 'fp16'"]),
    ("--DEVICE=cuda:99", ["DEVICE='cuda:99'", "CUDA device(s) are available", "DEVICE=auto or cpu"]),
    ("--DEVICE=tpu", ["DEVICE='tpu'", "auto, cpu, cuda"]),
    ("--BAD_FILES=ignore", ["BAD_FILES='ignore'", "'error', 'skip'"]),
    ("--ON_NAN=continue", ["ON_NAN='continue'", "'stop', 'skip'"]),
    ("--LERNING_RATE=1e-3", ["LERNING_RATE", "Did you mean LEARNING_RATE"]),
    ("--PRESET=facade", ["PRESET='facade'", "facades"]),
    ("BATCH_SIZE=4", ["BATCH_SIZE=4", "--KEY=value"]),
])
def test_bad_settings_are_one_line_errors_naming_setting_and_valid_values(override, names):
    with pytest.raises(ConfigError) as e:
        load_config(override.split())
    message = str(e.value)
    assert "\n" not in message
    assert all(n in message for n in names), message


def test_config_is_validated_before_any_data_or_model_work(tmp_path, monkeypatch):
    from harness import run
    monkeypatch.setattr(run, "training_data", lambda *a, **k: pytest.fail("data touched"))
    monkeypatch.setattr(train, "build_models", lambda *a, **k: pytest.fail("models built"))
    with pytest.raises(ConfigError, match="NORM"):
        train.main(tiny_args(tmp_path / "no-data", tmp_path / "run", NORM="layer"))
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- bad settings, the real CLI

CLI_CASES = {  # 2 cases only: each costs seconds of imports; the rest are checked in-process above
    "missing_cuda": (["--DEVICE=cuda:99"], "DEVICE='cuda:99'"),  # no machine has 100 GPUs
    "code_injection": (["--LEARNING_RATE=__import__('os').system('touch MARKER')"], "--LEARNING_RATE="),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict:
    """Run the CLI cases concurrently (each pays ~4 s of imports) from an empty folder."""
    cwd = tmp_path_factory.mktemp("cli")
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=ENV, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (args, _) in CLI_CASES.items()}
    results = {name: (p, *p.communicate(timeout=180)) for name, p in procs.items()}
    return {"cwd": cwd, **results}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_setting_exits_2_with_a_one_line_error(cli_results, case):
    proc, out, err = cli_results[case]
    assert proc.returncode == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert CLI_CASES[case][1] in err
    assert out == ""
    assert sorted(os.listdir(cli_results["cwd"])) == []  # no MARKER, no data/ or runs/ created


# ----------------------------------------------------------------------------- bench.py and the reference

def test_bench_takes_config_settings_as_train_does(capsys):
    import bench
    with pytest.raises(ConfigError, match="unknown setting 'BATCH_SIZ'"):
        bench.main(["--BATCH_SIZ=2", "--skip", "train,infer,onnx,data,peak"])
    assert bench.main(["--IMAGE_SIZE=32", "--BATCH_SIZE=2", "--PRECISION=fp32", "--json",
                       "--skip", "train,infer,onnx,data,peak"]) == 0
    out = capsys.readouterr().out
    assert '"image_size": 32' in out and '"batch_size": 2' in out


def test_the_configuration_reference_names_every_setting():
    """docs/configuration.md is the reference of config.py: a setting added without a row there fails here."""
    import config
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [k for k in vars(config) if k.isupper() and k != "PRESETS" and f"| `{k}` |" not in reference]
    assert missing == []
