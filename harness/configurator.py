"""The command line of train.py (and bench.py, harness.data_checks): config.py's settings < PRESET < RECIPE <
--KEY=value, parsed as literals against config.py's types and validated before any heavy work, as nanoGPT's
configurator does.

Not run directly. In a notebook:
    from harness.configurator import load_config
    cfg = load_config(["--PRESET=facades", "--BATCH_SIZE=4"])
"""
import ast
import difflib
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

import config as default_config
from dataset import PREPROCESS_MODES
from discriminator_model import downsample_side, feature_sides
from generator_model import DROPOUT_PLACEMENTS, GENERATORS, TEST_MODES
from harness.errors import CheckpointError, ConfigError
from layers import INITS, NORMS
from pix2pix import GAN_LOSSES, LR_POLICIES
from utils import PRECISIONS, pick_device


def default_settings() -> dict[str, Any]:
    return {k: v for k, v in vars(default_config).items() if k.isupper() and k not in ("PRESETS", "RECIPES")}


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(key: str, text: str, default: Any) -> Any:
    """Turn the text of --KEY=text into a value of the setting's type; literals only, never code."""
    if key in FLEXIBLE:  # settings that take a word or a bool/number, whatever the type of config.py's value
        return FLEXIBLE[key](key, text)
    kind = SETTING_TYPES.get(key, str)  # the setting's type, not that of whatever config.py holds
    if kind is str:
        return text
    if kind is bool:
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise ConfigError(f"--{key}={text}: expected True or False")
    valid = f"; valid: {VALID_VALUES[key]}" if key in VALID_VALUES else ""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--{key}={text}: not a {kind.__name__} literal "
                          f"(config values are parsed, never evaluated){valid}") from None
    value = as_kind(value, kind)
    if type(value) is not kind:
        raise ConfigError(f"--{key}={text}: expected {kind.__name__} like the default "
                          f"{default!r}, got {type(value).__name__}{valid}")
    return value


# Each setting's type (FLEXIBLE's take a word or a number; any other setting is text). Values written in config.py,
# its PRESETS or RECIPES are checked against it as the command line's are: a "4" there would fail deep in the run,
# and a "False" would read as true. tests/test_config.py keeps it in step with config.py.
SETTING_TYPES = dict.fromkeys(
    ("IN_CHANNELS", "OUT_CHANNELS", "LOAD_SIZE", "IMAGE_SIZE", "GEN_BASE_CHANNELS", "NUM_DOWNS", "DISC_BASE_CHANNELS",
     "DISC_N_LAYERS", "D_SCALES", "BATCH_SIZE", "N_EPOCHS", "N_EPOCHS_DECAY", "LR_DECAY_ITERS", "SEED",
     "DIST_TIMEOUT_S", "SAMPLE_EVERY", "N_SAMPLES", "VAL_EVERY", "VAL_MAX_IMAGES", "LOG_EVERY",
     "CHECKPOINT_EVERY_STEPS", "SNAPSHOT_EVERY"), int) | dict.fromkeys(
    ("INIT_GAIN", "LEARNING_RATE", "BETA1", "BETA2", "L1_LAMBDA", "FEATURE_MATCHING_LAMBDA", "G_EMA_HALF_LIFE",
     "G_EMA_RAMPUP", "EVAL_BUDGET", "CHECKPOINT_EVERY_MINUTES"), float) | dict.fromkeys(
    ("JITTER", "MIRROR", "CACHE_IMAGES", "DROPOUT", "SYNC_BN", "SPECTRAL_NORM", "FEATURE_MATCHING", "G_EMA",
     "DETERMINISTIC", "CUDA_GRAPH", "PIXEL_ACCURACY", "FCN_SCORE", "FID"), bool)
EXPECTED = {int: "a whole number", float: "a finite number", bool: "True or False", str: "text (in quotes)"}


def as_kind(value: Any, kind: type) -> Any:
    """A whole number stands for a float setting's value (LEARNING_RATE = 1 is 1.0); anything else as it is."""
    return float(value) if kind is float and isinstance(value, int) and not isinstance(value, bool) else value


def check_types(cfg: dict[str, Any]) -> None:
    """Every value of its setting's type (SETTING_TYPES), numbers finite; whole numbers stand for floats."""
    for key, value in cfg.items():
        if key in FLEXIBLE:
            continue
        kind = SETTING_TYPES.get(key, str)
        cfg[key] = value = as_kind(value, kind)
        if type(value) is not kind or (kind is float and not math.isfinite(value)):
            valid = f"; valid: {VALID_VALUES[key]}" if key in VALID_VALUES else ""
            raise ConfigError(f"{key}={value!r} is not valid; use {EXPECTED[kind]}{valid}")


# The valid values of the numeric recipe settings, named in their errors (word settings list theirs: _one_of)
VALID_VALUES = {"D_SCALES": "1 (the paper), 2 or 3", "FEATURE_MATCHING_LAMBDA": "a number >= 0 (pix2pixHD: 10)",
                "G_EMA_HALF_LIFE": "images, a number >= 0 (0 = 10,000 x global batch / 32)",
                "G_EMA_RAMPUP": "a fraction >= 0 (stylegan2-ada: 0.05; 0 = none)", "INIT_GAIN": "a number > 0",
                "LR_DECAY_ITERS": "epochs, a whole number > 0"}


def bool_or_word(key: str, value: Any, words: tuple[str, ...]) -> str | bool:
    """A setting that is one of `words` or a bool: as text from the command line, or as is from config.py."""
    if isinstance(value, bool) or value in words:
        return value
    if str(value).lower() in TRUE + FALSE:
        return str(value).lower() in TRUE
    raise ConfigError(f"{key}={value!r} is not valid; choose {', '.join(words)}, True or False")


def auto_or_bool(key: str, value: Any) -> str | bool:
    """CHANNELS_LAST, DATA_ON_DEVICE: "auto", True or False."""
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


def same_or_number(key: str, value: Any) -> str | float:
    """LEARNING_RATE_D, BETA1_D, BETA2_D: "same" (as G's setting) or a number."""
    if value == "same":
        return value
    try:
        number = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError):
        number = None
    if isinstance(number, (int, float)) and not isinstance(number, bool):
        return float(number)
    raise ConfigError(f"{key}={value!r} is not valid; choose same (G's value) or a number, e.g. {key}=4e-4")


FLEXIBLE = {"CHANNELS_LAST": auto_or_bool, "COMPILE": compile_mode, "NUM_WORKERS": auto_or_count,
            "LEARNING_RATE_D": same_or_number, "BETA1_D": same_or_number, "BETA2_D": same_or_number,
            "DATA_ON_DEVICE": auto_or_bool}


def parse_overrides(argv: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"bad argument {arg!r}: use --KEY=value, e.g. --BATCH_SIZE=4")
        key, text = arg[2:].split("=", 1)
        check_known([key], defaults)
        overrides[key] = parse_value(key, text, defaults[key])
    return overrides


def check_known(keys: Any, defaults: dict[str, Any], where: str = "") -> None:
    """Every key a setting of config.py; else the first unknown one, with the closest names."""
    for key in keys:
        if key not in defaults:
            close = difflib.get_close_matches(key.upper(), defaults, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown setting {key!r}{where}.{hint} All settings are listed in config.py.")


def load_config(argv: list[str] | None = None) -> dict[str, Any]:
    """config.py defaults < PRESET < RECIPE < command-line --KEY=value overrides; validated before any heavy work."""
    cfg = default_settings()
    overrides = parse_overrides(sys.argv[1:] if argv is None else argv, cfg)
    preset = overrides.get("PRESET", cfg["PRESET"])
    implied_val_dirs = {IMPLIED_VAL_DIR}  # VAL_DIRs nobody chose: the built-in set's, a preset's
    if preset:
        if preset not in default_config.PRESETS:
            raise ConfigError(f"PRESET={preset!r} is unknown; valid: {', '.join(default_config.PRESETS)}")
        check_known(default_config.PRESETS[preset], cfg, f" in config.py's PRESETS[{preset!r}]")
        cfg.update(default_config.PRESETS[preset])
        cfg["RUN_DIR"] = f"runs/{preset}"
        cfg["TRAIN_DIR"], cfg["VAL_DIR"] = f"data/{preset}/train", f"data/{preset}/val"
        implied_val_dirs.add(cfg["VAL_DIR"])
    recipe = overrides.get("RECIPE", cfg["RECIPE"])
    if recipe:
        if recipe not in default_config.RECIPES:
            raise ConfigError(f"RECIPE={recipe!r} is unknown; valid: {', '.join(default_config.RECIPES)}")
        check_known(default_config.RECIPES[recipe], cfg, f" in config.py's RECIPES[{recipe!r}]")
        cfg.update(default_config.RECIPES[recipe])
    cfg.update(overrides)
    check_types(cfg)
    if cfg["NUM_DOWNS"] == 0:
        cfg["NUM_DOWNS"] = num_downs_for(cfg["IMAGE_SIZE"])
        if cfg["GENERATOR"] == "unet":  # the ResNet's depth is fixed: its sides need multiples of 4 only
            check_derived_depth(cfg["IMAGE_SIZE"], cfg["NUM_DOWNS"])
    validate_config(cfg)
    if "VAL_DIR" not in overrides and cfg["VAL_DIR"] in implied_val_dirs:
        cfg["VAL_DIR"] = val_dir_for(cfg["TRAIN_DIR"], cfg["VAL_DIR"])
    return cfg


def num_downs_for(image_size: int) -> int:
    """Depth whose 1x1 bottleneck matches the image: 7 for 128 px, 8 for 256 px (unet_256), 9 for 512 px."""
    return max(1, (image_size - 1).bit_length())


def check_derived_depth(image_size: Any, num_downs: int) -> None:
    """NUM_DOWNS=0 derives the U-Net's depth from IMAGE_SIZE (its 1x1 bottleneck): that fits a power of two only."""
    if not isinstance(image_size, int) or image_size < 1 or image_size % 2 ** num_downs == 0:
        return  # a bad IMAGE_SIZE is validate_config's to name
    fits = (image_size & -image_size).bit_length() - 1  # the deepest U-Net whose 2^depth divides IMAGE_SIZE
    explicit = f", or set NUM_DOWNS={fits} (2^{fits} divides {image_size})" if fits >= 2 else ""
    raise ConfigError(f"IMAGE_SIZE={image_size} is not divisible by 2^NUM_DOWNS={2 ** num_downs}, the depth that "
                      f"NUM_DOWNS=0 derives from it ({num_downs}); use IMAGE_SIZE={2 ** (num_downs - 1)} or a multiple "
                      f"of {2 ** num_downs}{explicit}")


IMPLIED_VAL_DIR = "data/synthetic/val"  # config.py's VAL_DIR, beside its TRAIN_DIR (the built-in synthetic set)
PATH_SETTINGS = ("TRAIN_DIR", "VAL_DIR", "RUN_DIR", "RESUME")


def val_dir_for(train_dir: str, val_dir: str) -> str:
    """The VAL_DIR of a TRAIN_DIR when VAL_DIR was left at its default: that default if it lies beside TRAIN_DIR,
    else TRAIN_DIR's sibling val/ or test/ folder (as the standard data sets have). Validating a custom
    TRAIN_DIR on the built-in synthetic set would report metrics of another task without a word."""
    if Path(train_dir).parent == Path(val_dir).parent:
        return val_dir
    for name in ("val", "test"):
        sibling = Path(train_dir).parent / name
        if sibling.is_dir() and sibling != Path(train_dir):
            return str(sibling)
    raise ConfigError(f"TRAIN_DIR={train_dir} but VAL_DIR is left at {val_dir}, another data set, and there is no "
                      f"{Path(train_dir).parent / 'val'} or {Path(train_dir).parent / 'test'} folder to use instead; "
                      f"set --VAL_DIR to held-out images of your task")


def _one_of(cfg: dict, key: str, valid: tuple) -> None:
    if cfg[key] not in valid:
        raise ConfigError(f"{key}={cfg[key]!r} is not valid; choose one of {', '.join(map(repr, valid))}")


def _positive(cfg: dict, key: str, allow_zero: bool = False) -> None:
    if cfg[key] < 0 or (cfg[key] == 0 and not allow_zero):
        raise ConfigError(f"{key}={cfg[key]!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate_config(cfg: dict[str, Any]) -> None:
    for key in PATH_SETTINGS:
        if not cfg[key].strip():  # what an unset shell variable gives: it would mean the current folder
            raise ConfigError(f"{key} is empty (an unset shell variable?); an empty path would mean the current "
                              f"folder. Give {key} a path" + ("" if key != "RESUME" else ", or auto or never"))
    for key, parse in FLEXIBLE.items():  # also the values written in config.py
        cfg[key] = parse(key, cfg[key])
    _one_of(cfg, "DIRECTION", ("AtoB", "BtoA"))
    _one_of(cfg, "NORM", NORMS)
    _one_of(cfg, "GENERATOR", GENERATORS)
    _one_of(cfg, "INIT", INITS)
    _one_of(cfg, "GAN_LOSS", GAN_LOSSES)
    _one_of(cfg, "LR_POLICY", LR_POLICIES)
    _one_of(cfg, "D_SCALES", (1, 2, 3))
    for key in ("INIT_GAIN", "LR_DECAY_ITERS"):
        _positive(cfg, key)
    for key in ("FEATURE_MATCHING_LAMBDA", "G_EMA_HALF_LIFE", "G_EMA_RAMPUP"):
        _positive(cfg, key, allow_zero=True)
    if cfg["LR_POLICY"] == "plateau" and not cfg["VAL_EVERY"]:
        raise ConfigError("LR_POLICY='plateau' lowers the LR when validation stops improving, but VAL_EVERY=0 "
                          "never validates: set VAL_EVERY > 0, or another LR_POLICY")
    if cfg["LR_POLICY"] == "cosine" and not cfg["N_EPOCHS"]:
        raise ConfigError("LR_POLICY='cosine' anneals over N_EPOCHS, which is 0: set N_EPOCHS > 0")
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
    for beta1, beta2 in (("BETA1", "BETA2"), ("BETA1_D", "BETA2_D")):
        if not all(cfg[k] == "same" or 0 <= cfg[k] < 1 for k in (beta1, beta2)):
            raise ConfigError(f"{beta1}={cfg[beta1]}, {beta2}={cfg[beta2]}: Adam betas must be in [0, 1)")
    if cfg["LEARNING_RATE_D"] != "same" and cfg["LEARNING_RATE_D"] <= 0:
        raise ConfigError(f"LEARNING_RATE_D={cfg['LEARNING_RATE_D']!r} must be > 0, or same")
    if cfg["GENERATOR"] != "unet":
        if cfg["IMAGE_SIZE"] % 4:
            raise ConfigError(f"IMAGE_SIZE={cfg['IMAGE_SIZE']} is not divisible by 4, which GENERATOR="
                              f"{cfg['GENERATOR']!r} needs (two stride-2 downsamplings); use a multiple of 4")
    elif cfg["IMAGE_SIZE"] % 2 ** cfg["NUM_DOWNS"]:
        side = 2 ** cfg["NUM_DOWNS"]
        raise ConfigError(f"IMAGE_SIZE={cfg['IMAGE_SIZE']} is not divisible by 2^NUM_DOWNS={side}; use a multiple "
                          f"of {side} or NUM_DOWNS=0 to derive the depth (7 for 128, 8 for 256, 9 for 512)")
    on_cuda = cfg["DEVICE"] in ("auto", "cuda") or str(cfg["DEVICE"]).startswith("cuda:")
    if cfg["DETERMINISTIC"] and cfg["GENERATOR"] != "unet" and on_cuda and torch.cuda.is_available():
        raise ConfigError(f"DETERMINISTIC=True with GENERATOR={cfg['GENERATOR']!r} on a CUDA GPU: PyTorch has no "
                          f"deterministic CUDA backward for the ResNet's reflection padding (the first step would "
                          f"fail); use GENERATOR='unet', DETERMINISTIC=False, or DEVICE=cpu")
    check_image_size(cfg["IMAGE_SIZE"], cfg["NUM_DOWNS"], cfg["DISC_N_LAYERS"])
    check_coarsest_scale(cfg["IMAGE_SIZE"], cfg["D_SCALES"], cfg["DISC_N_LAYERS"])
    if cfg["JITTER"] and cfg["PREPROCESS"] in ("resize_and_crop", "scale_width_and_crop") \
            and cfg["LOAD_SIZE"] < cfg["IMAGE_SIZE"]:
        raise ConfigError(f"LOAD_SIZE={cfg['LOAD_SIZE']} < IMAGE_SIZE={cfg['IMAGE_SIZE']}: the random crop needs "
                          f"LOAD_SIZE >= IMAGE_SIZE (paper: 286 for 256)")
    if cfg["CUDA_GRAPH"] and cfg["COMPILE"]:
        raise ConfigError(f"CUDA_GRAPH=True captures the eager step, and COMPILE={cfg['COMPILE']!r} compiles it "
                          f"(\"reduce-overhead\" with CUDA graphs of its own): use one of them")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and cfg["DEVICE"].startswith("cuda:"):
        raise ConfigError(f"DEVICE={cfg['DEVICE']} under torchrun would put every process on that one GPU, while "
                          f"NCCL gives each process GPU LOCAL_RANK: use DEVICE=cuda (or auto), and choose the GPUs "
                          f"with CUDA_VISIBLE_DEVICES")
    check_device(cfg["DEVICE"])
    device = pick_device(cfg["DEVICE"])
    if cfg["SYNC_BN"] and int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type != "cuda":
        raise ConfigError(f"SYNC_BN=True needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU version), but "
                          f"DEVICE={cfg['DEVICE']} runs on {device.type}; use SYNC_BN=False, or NORM=instance, "
                          f"which needs no statistics shared across processes")


def patchgan_sides(image_size: int, n_layers: int) -> list[int]:
    """Side of each normalised feature map of the PatchGAN at this image size (every convolution's output but the
    first and the last), then of its patch logits."""
    return feature_sides(image_size, n_layers)[1:]


def check_image_size(image_size: int, num_downs: int, disc_n_layers: int) -> None:
    """The smallest images the networks accept: a U-Net of at least 2 levels, and a PatchGAN whose every
    normalised map keeps more than one value per channel at batch 1 and whose patch logits are at least 1x1.
    Smaller ones would fail in the first step with a traceback."""
    if num_downs < 2:
        raise ConfigError(f"IMAGE_SIZE={image_size}, NUM_DOWNS={num_downs}: the U-Net needs at least 2 levels "
                          f"(NUM_DOWNS >= 2, so IMAGE_SIZE >= 4)")
    sides = patchgan_sides(image_size, disc_n_layers)
    if min(sides[:-1]) < 2 or sides[-1] < 1:
        smallest = next(s for s in range(4, 2 ** 16) if min(patchgan_sides(s, disc_n_layers)[:-1]) >= 2
                        and patchgan_sides(s, disc_n_layers)[-1] >= 1)
        raise ConfigError(f"IMAGE_SIZE={image_size} is too small for the PatchGAN of DISC_N_LAYERS={disc_n_layers}: "
                          f"its feature maps would shrink to {min(sides[:-1])}x{min(sides[:-1])} and its patch "
                          f"logits to {max(sides[-1], 0)}x{max(sides[-1], 0)}. Use IMAGE_SIZE >= {smallest} (e.g. "
                          f"{1 << (smallest - 1).bit_length()}) or a smaller DISC_N_LAYERS")


def coarsest_side(image_size: int, scales: int) -> int:
    """The side of the images the last of D_SCALES discriminators sees (each pools the pair by 2)."""
    for _ in range(scales - 1):
        image_size = downsample_side(image_size)
    return image_size


def check_coarsest_scale(image_size: int, scales: int, disc_n_layers: int) -> None:
    """D_SCALES: the coarsest discriminator's PatchGAN needs images as large as the paper's one does."""
    def fits(size: int) -> bool:
        sides = patchgan_sides(coarsest_side(size, scales), disc_n_layers)
        return min(sides[:-1]) >= 2 and sides[-1] >= 1
    if scales > 1 and not fits(image_size):
        smallest = next(s for s in range(4, 2 ** 16) if fits(s))
        raise ConfigError(f"IMAGE_SIZE={image_size} is too small for D_SCALES={scales}: its coarsest discriminator "
                          f"would see {coarsest_side(image_size, scales)} px images, too few for the PatchGAN of "
                          f"DISC_N_LAYERS={disc_n_layers}. Use IMAGE_SIZE >= {smallest}, fewer D_SCALES or a "
                          f"smaller DISC_N_LAYERS")


def check_device(name: str, setting: str = "DEVICE") -> None:
    """DEVICE (or a script's `setting` --device): auto, or a device this machine has; errors name `setting`."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting}={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):  # torch knows more (meta, xla, ...): none runs this project
        raise ConfigError(f"{setting}={name!r} is not a device pix2pix runs on; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"{setting}={name!r} but {torch.cuda.device_count()} CUDA device(s) are available; "
                          f"use {setting}=auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{setting}={name!r} but MPS is not available; use {setting}=auto or cpu")


def resolve_resume(cfg: dict[str, Any], checkpoint_dir: Path) -> Path | None:
    """RESUME: "auto" continues RUN_DIR's last.pt if there is one; "never" refuses to overwrite it; or a path."""
    last = checkpoint_dir / "last.pt"
    if last.is_symlink() and not last.exists() and cfg["RESUME"] in ("auto", "never"):
        raise CheckpointError(f"{last} is a symbolic link to {os.readlink(last)}, which does not exist: restore that "
                              f"file to continue the run, or remove the link to start it over")
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
    if last.exists() and not last.samefile(path):  # another checkpoint (a snapshot, another run's) over this run
        raise ConfigError(f"RESUME={cfg['RESUME']!r} but {last} exists and would be overwritten; continue from that "
                          f"checkpoint in a new RUN_DIR, or move {last} aside first to rewind this run to it")
    return path
