"""The command line of train.py (and bench.py, harness.data_checks): config.py's settings < PRESET < --KEY=value,
parsed as literals against config.py's types and validated before any heavy work, as nanoGPT's configurator does.

Not run directly. In a notebook:
    from harness.configurator import load_config
    cfg = load_config(["--PRESET=facades", "--BATCH_SIZE=4"])
"""
import ast
import difflib
import os
import sys
from pathlib import Path
from typing import Any

import torch

import config as default_config
from dataset import PREPROCESS_MODES
from generator_model import DROPOUT_PLACEMENTS, TEST_MODES, num_downs_for
from harness.errors import ConfigError
from layers import NORMS
from utils import PRECISIONS, pick_device


def default_settings() -> dict[str, Any]:
    return {k: v for k, v in vars(default_config).items() if k.isupper() and k != "PRESETS"}


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(key: str, text: str, default: Any) -> Any:
    """Turn the text of --KEY=text into a value of the default's type; literals only, never code."""
    if key in FLEXIBLE:  # settings that take a word or a bool/number, whatever the type of config.py's value
        return FLEXIBLE[key](key, text)
    if isinstance(default, str):
        return text
    if isinstance(default, bool):
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise ConfigError(f"--{key}={text}: expected True or False")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--{key}={text}: not a {type(default).__name__} literal "
                          f"(config values are parsed, never evaluated)") from None
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        raise ConfigError(f"--{key}={text}: expected {type(default).__name__} like the default "
                          f"{default!r}, got {type(value).__name__}")
    return value


def bool_or_word(key: str, value: Any, words: tuple[str, ...]) -> str | bool:
    """A setting that is one of `words` or a bool: as text from the command line, or as is from config.py."""
    if isinstance(value, bool) or value in words:
        return value
    if str(value).lower() in TRUE + FALSE:
        return str(value).lower() in TRUE
    raise ConfigError(f"{key}={value!r} is not valid; choose {', '.join(words)}, True or False")


def auto_or_bool(key: str, value: Any) -> str | bool:
    """CHANNELS_LAST: "auto", True or False."""
    return bool_or_word(key, value, ("auto",))


def compile_mode(key: str, value: Any) -> str | bool:
    """COMPILE: False, True, or "reduce-overhead" (torch.compile's mode with CUDA graphs); the bools of older
    runs' settings mean what they meant."""
    return bool_or_word(key, value, ("reduce-overhead",))


def auto_or_count(key: str, value: Any) -> str | int:
    """NUM_WORKERS: "auto" or a whole number >= 0 (harness/loading.py turns "auto" into a number)."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"{key}={value!r} is not valid; choose auto or a whole number >= 0 (0 = load in the main "
                      f"process)")


FLEXIBLE = {"CHANNELS_LAST": auto_or_bool, "COMPILE": compile_mode, "NUM_WORKERS": auto_or_count}


def parse_overrides(argv: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"bad argument {arg!r}: use --KEY=value, e.g. --BATCH_SIZE=4")
        key, text = arg[2:].split("=", 1)
        if key not in defaults:
            close = difflib.get_close_matches(key.upper(), defaults, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown setting {key!r}.{hint} All settings are listed in config.py.")
        overrides[key] = parse_value(key, text, defaults[key])
    return overrides


def load_config(argv: list[str] | None = None) -> dict[str, Any]:
    """config.py defaults < PRESET < command-line --KEY=value overrides; validated before any heavy work."""
    cfg = default_settings()
    overrides = parse_overrides(sys.argv[1:] if argv is None else argv, cfg)
    preset = overrides.get("PRESET", cfg["PRESET"])
    if preset:
        if preset not in default_config.PRESETS:
            raise ConfigError(f"PRESET={preset!r} is unknown; valid: {', '.join(default_config.PRESETS)}")
        cfg.update(default_config.PRESETS[preset])
        cfg["RUN_DIR"] = f"runs/{preset}"
        cfg["TRAIN_DIR"], cfg["VAL_DIR"] = f"data/{preset}/train", f"data/{preset}/val"
    cfg.update(overrides)
    if cfg["NUM_DOWNS"] == 0:
        cfg["NUM_DOWNS"] = num_downs_for(cfg["IMAGE_SIZE"])
    validate_config(cfg)
    return cfg


def _one_of(cfg: dict, key: str, valid: tuple) -> None:
    if cfg[key] not in valid:
        raise ConfigError(f"{key}={cfg[key]!r} is not valid; choose one of {', '.join(map(repr, valid))}")


def _positive(cfg: dict, key: str, allow_zero: bool = False) -> None:
    if cfg[key] < 0 or (cfg[key] == 0 and not allow_zero):
        raise ConfigError(f"{key}={cfg[key]!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate_config(cfg: dict[str, Any]) -> None:
    for key, parse in FLEXIBLE.items():  # also the values written in config.py
        cfg[key] = parse(key, cfg[key])
    _one_of(cfg, "DIRECTION", ("AtoB", "BtoA"))
    _one_of(cfg, "NORM", NORMS)
    _one_of(cfg, "DROPOUT_PLACEMENT", DROPOUT_PLACEMENTS)
    _one_of(cfg, "PRECISION", PRECISIONS)
    _one_of(cfg, "BAD_FILES", ("error", "skip"))
    _one_of(cfg, "PREPROCESS", PREPROCESS_MODES)
    _one_of(cfg, "ON_NAN", ("stop", "skip"))
    _one_of(cfg, "TEST_MODE", TEST_MODES)
    _one_of(cfg, "BEST_BY", ("l1", "fcn_class_iou"))
    if cfg["BEST_BY"] != "l1" and not cfg["FCN_SCORE"]:
        raise ConfigError(f"BEST_BY={cfg['BEST_BY']!r} is a figure of the FCN-score: set FCN_SCORE=True as well, or "
                          f"BEST_BY='l1'")
    _one_of(cfg, "IN_CHANNELS", (1, 3))
    _one_of(cfg, "OUT_CHANNELS", (1, 3))
    _one_of(cfg, "DISC_N_LAYERS", (0, 1, 2, 3, 4, 5, 6))
    for key in ("LEARNING_RATE", "BATCH_SIZE", "IMAGE_SIZE", "LOAD_SIZE", "GEN_BASE_CHANNELS",
                "DISC_BASE_CHANNELS", "N_SAMPLES", "LOG_EVERY", "DIST_TIMEOUT_S", "NUM_DOWNS"):
        _positive(cfg, key)
    for key in ("N_EPOCHS", "N_EPOCHS_DECAY", "SAMPLE_EVERY", "VAL_EVERY", "VAL_MAX_IMAGES",
                "CHECKPOINT_EVERY_STEPS", "CHECKPOINT_EVERY_MINUTES", "SNAPSHOT_EVERY", "L1_LAMBDA"):
        _positive(cfg, key, allow_zero=True)
    if not 0 <= cfg["EVAL_BUDGET"] <= 1:
        raise ConfigError(f"EVAL_BUDGET={cfg['EVAL_BUDGET']!r} is a fraction of the run's time: use a value in [0, 1] "
                          f"(0 = no limit; default 0.1)")
    if cfg["N_EPOCHS"] + cfg["N_EPOCHS_DECAY"] == 0:
        raise ConfigError("N_EPOCHS + N_EPOCHS_DECAY is 0: nothing to train")
    if not (0 <= cfg["BETA1"] < 1 and 0 <= cfg["BETA2"] < 1):
        raise ConfigError(f"BETA1={cfg['BETA1']}, BETA2={cfg['BETA2']}: Adam betas must be in [0, 1)")
    side = 2 ** cfg["NUM_DOWNS"]
    if cfg["IMAGE_SIZE"] % side:
        raise ConfigError(f"IMAGE_SIZE={cfg['IMAGE_SIZE']} is not divisible by 2^NUM_DOWNS={side}; use a multiple "
                          f"of {side} or NUM_DOWNS=0 to derive the depth (7 for 128, 8 for 256, 9 for 512)")
    if cfg["JITTER"] and cfg["PREPROCESS"] in ("resize_and_crop", "scale_width_and_crop") \
            and cfg["LOAD_SIZE"] < cfg["IMAGE_SIZE"]:
        raise ConfigError(f"LOAD_SIZE={cfg['LOAD_SIZE']} < IMAGE_SIZE={cfg['IMAGE_SIZE']}: the random crop needs "
                          f"LOAD_SIZE >= IMAGE_SIZE (paper: 286 for 256)")
    check_device(cfg["DEVICE"])
    device = pick_device(cfg["DEVICE"])
    if cfg["SYNC_BN"] and int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type != "cuda":
        raise ConfigError(f"SYNC_BN=True needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU version), but "
                          f"DEVICE={cfg['DEVICE']} runs on {device.type}; use SYNC_BN=False, or NORM=instance, "
                          f"which needs no statistics shared across processes")


def check_device(name: str) -> None:
    """DEVICE (or --device): auto, or a device this machine has."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"DEVICE={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"DEVICE={name!r} but {torch.cuda.device_count()} CUDA device(s) are available; "
                          f"use DEVICE=auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"DEVICE={name!r} but MPS is not available; use DEVICE=auto or cpu")


def resolve_resume(cfg: dict[str, Any], checkpoint_dir: Path) -> Path | None:
    """RESUME: "auto" continues RUN_DIR's last.pt if there is one; "never" refuses to overwrite it; or a path."""
    last = checkpoint_dir / "last.pt"
    if cfg["RESUME"] == "auto":
        return last if last.exists() else None
    if cfg["RESUME"] == "never":
        if last.exists():
            raise ConfigError(f"RESUME=never but {last} exists and would be overwritten; choose a new RUN_DIR, "
                              f"or RESUME=auto to continue that run")
        return None
    path = Path(cfg["RESUME"])
    if not path.is_file():
        raise ConfigError(f"RESUME={cfg['RESUME']!r}: no such checkpoint file; use auto, never, or a .pt path")
    return path
