"""Helpers shared by train.py, predict.py, evaluate.py and bench.py: config parsing, device and precision,
seeding, atomic checkpoints, rebuilding a generator from its checkpoint, the LR schedule and sample grids.

Not run directly. In a notebook:
    from utils import load_generator
    G = load_generator("runs/pix2pix/generator.pt")   # rebuilds the U-Net from the file alone
    G = load_generator("latest_net_G.pth")            # also a generator of the official pix2pix code
"""
import ast
import contextlib
import copy
import difflib
import errno
import os
import pickle
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

import config as default_config
import official_format
from discriminator_model import DISCRIMINATOR_KEYS, PatchDiscriminator
from generator_model import (DROPOUT_PLACEMENTS, GENERATOR_KEYS, LEGACY_GENERATOR_HPARAMS, UNetGenerator,
                             num_downs_for)
from layers import NORMS

CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names it and the valid values."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the requested run; the message says which file."""


class RunDirError(RuntimeError):
    """RUN_DIR cannot hold the run's files (not a folder, not writable, read-only or full); found before step 1."""


# ----------------------------------------------------------------------------- config

def default_settings() -> dict[str, Any]:
    return {k: v for k, v in vars(default_config).items() if k.isupper() and k != "PRESETS"}


def parse_value(key: str, text: str, default: Any) -> Any:
    """Turn the text of --KEY=text into a value of the default's type; literals only, never code."""
    if isinstance(default, str):
        return text
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
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
    _one_of(cfg, "DIRECTION", ("AtoB", "BtoA"))
    _one_of(cfg, "NORM", NORMS)
    _one_of(cfg, "DROPOUT_PLACEMENT", DROPOUT_PLACEMENTS)
    _one_of(cfg, "PRECISION", ("auto", "fp32", "bf16", "fp16"))
    _one_of(cfg, "BAD_FILES", ("error", "skip"))
    _one_of(cfg, "PREPROCESS", ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"))
    _one_of(cfg, "ON_NAN", ("stop", "skip"))
    _one_of(cfg, "TEST_MODE", ("paper", "eval"))
    _one_of(cfg, "IN_CHANNELS", (1, 3))
    _one_of(cfg, "OUT_CHANNELS", (1, 3))
    _one_of(cfg, "DISC_N_LAYERS", (0, 1, 2, 3, 4, 5, 6))
    for key in ("LEARNING_RATE", "BATCH_SIZE", "IMAGE_SIZE", "LOAD_SIZE", "GEN_BASE_CHANNELS",
                "DISC_BASE_CHANNELS", "N_SAMPLES", "LOG_EVERY", "DIST_TIMEOUT_S", "NUM_DOWNS"):
        _positive(cfg, key)
    for key in ("N_EPOCHS", "N_EPOCHS_DECAY", "NUM_WORKERS", "SAMPLE_EVERY", "VAL_EVERY", "VAL_MAX_IMAGES",
                "CHECKPOINT_EVERY_STEPS", "SNAPSHOT_EVERY", "L1_LAMBDA"):
        _positive(cfg, key, allow_zero=True)
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
    pick_device(cfg["DEVICE"])  # raises ConfigError for a device that is not there


# ----------------------------------------------------------------------------- device, precision, seeds

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"DEVICE={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"DEVICE={name!r} but {torch.cuda.device_count()} CUDA device(s) are available; "
                          f"use DEVICE=auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"DEVICE={name!r} but MPS is not available; use DEVICE=auto or cpu")
    return device


def pick_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware runs it natively, fp16 on Volta/Turing CUDA, else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        major = torch.cuda.get_device_capability(device)[0]
        # fp16 pays off only with tensor cores (Volta, compute capability 7+); older GPUs run fp32 faster
        return "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"
    if device.type == "cpu" and torch.cpu._is_amx_tile_supported():
        return "bf16"  # without AMX tiles (AVX512-BF16 alone) bf16 convolutions are slower than fp32
    return "fp32"


def use_device(device: torch.device) -> None:
    """Make `device` the current CUDA device (DEVICE=cuda:N): otherwise pin-memory threads, argument-less CUDA
    calls and new contexts land on GPU 0."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op off CUDA), e.g. before reading a timer."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """DETERMINISTIC=True: deterministic kernels only, no cuDNN autotuning, so a resumed GPU run continues
    bit-exactly (slower). Otherwise let cuDNN pick the fastest kernels for our fixed input sizes."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic results
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.amp autocast for bf16/fp16; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[precision])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_states(device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """Every global RNG this process uses, in a form torch.load(weights_only=True) accepts (tensors, ints,
    tuples): the CUDA one of `device` only, so the checkpoint resumes on a machine with fewer GPUs."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else [],
    }


def set_rng_states(states: dict[str, Any], device: torch.device = torch.device("cpu")) -> None:
    random.setstate(states["python"])
    name, key, *rest = states["numpy"]
    np.random.set_state((name, key.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per GPU the saving machine had
        index = device.index if device.index is not None else 0
        cuda = cuda[index] if index < len(cuda) else None
    if device.type == "cuda" and cuda is not None:  # none saved (a CPU run): the seeded state stays
        torch.cuda.set_rng_state(cuda, device)


# ----------------------------------------------------------------------------- models and schedule

def build_models(cfg: dict[str, Any]) -> tuple[UNetGenerator, PatchDiscriminator]:
    G = UNetGenerator(cfg["IN_CHANNELS"], cfg["OUT_CHANNELS"], cfg["GEN_BASE_CHANNELS"], cfg["NUM_DOWNS"],
                      cfg["NORM"], cfg["DROPOUT"], cfg["DROPOUT_PLACEMENT"])
    D = PatchDiscriminator(cfg["IN_CHANNELS"], cfg["OUT_CHANNELS"], cfg["DISC_BASE_CHANNELS"],
                           cfg["DISC_N_LAYERS"], cfg["NORM"])
    return G, D


def make_optimizers(G: nn.Module, D: nn.Module, cfg: dict[str, Any], device: torch.device,
                    fused: bool | None = None) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """paper §3.3: Adam for both nets, lr 2e-4, betas (0.5, 0.999); fused kernels where the device has them."""
    fused = device.type in ("cuda", "cpu") if fused is None else fused
    adam = dict(lr=cfg["LEARNING_RATE"], betas=(cfg["BETA1"], cfg["BETA2"]), fused=fused)
    return torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)


def make_grad_scalers(device: torch.device, precision: str) -> tuple[torch.amp.GradScaler, torch.amp.GradScaler]:
    """One loss scaler per network, enabled for fp16 only: bf16 has fp32's range and needs no scaling."""
    return (torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
            torch.amp.GradScaler(device.type, enabled=precision == "fp16"))


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """A saved loss-scaler state; a run saved without fp16 (empty state) starts a fresh scaler, and an fp16 state
    is ignored by a run without one: a checkpoint resumes under any PRECISION."""
    if state:
        scaler.load_state_dict(state)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load Adam's state and give each moment its parameter's memory layout (strides): a run saved with another
    CHANNELS_LAST keeps the old layout, and the fused kernels would then pair up the wrong elements."""
    opt.load_state_dict(state)
    for p, saved in opt.state.items():
        for key, value in saved.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                saved[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict() as CPU tensors: an export that plain torch.load opens on any machine."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """Multiplier of the base LR during 0-based `epoch`: 1 for n_epochs, then linear to 0 (official schedule)."""
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


@contextlib.contextmanager
def fixed_noise(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the RNG for a block (e.g. paper-mode dropout at test time) and give the caller's RNG state back
    afterwards, so repeated evaluations match and training's random stream is untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def test_mode(G: nn.Module, mode: str = "paper") -> Iterator[None]:
    """Run G for inference, restoring its training state afterwards.

    "paper" (§3.3): dropout on and batch-norm with the test batch's statistics; running stats are left
    untouched (momentum 0) so sampling never changes the model. "eval": ordinary eval() mode.
    """
    was_training = G.training
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    G.train(mode == "paper")
    for m in bns:
        m.momentum = 0.0
    try:
        with torch.no_grad():
            yield
    finally:
        G.train(was_training)
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum


# ----------------------------------------------------------------------------- undoing a skipped step

def state_before_step(G: nn.Module, D: nn.Module, opt_D: torch.optim.Optimizer,
                      scaler_D: torch.amp.GradScaler) -> dict[str, Any]:
    """What a training step can change before its last loss is known to be finite: the D step (D's weights, its
    optimiser and loss scaler) and both networks' batch-norm statistics (updated in the forward pass). G's
    weights and optimiser are stepped last, after every check. D is small, so a full copy is cheap."""
    return {"D": copy.deepcopy(D.state_dict()), "opt_D": copy.deepcopy(opt_D.state_dict()),
            "scaler_D": scaler_D.state_dict(), "G_buffers": [b.clone() for b in G.buffers()]}


def undo_step(saved: dict[str, Any], G: nn.Module, D: nn.Module, opt_D: torch.optim.Optimizer,
              scaler_D: torch.amp.GradScaler) -> None:
    """Put back everything state_before_step saved (ON_NAN=skip): the skipped step leaves no trace."""
    D.load_state_dict(saved["D"])  # copies into the existing tensors: DDP and the optimiser keep theirs
    opt_D.load_state_dict(copy.deepcopy(saved["opt_D"]))
    if saved["scaler_D"]:  # empty unless fp16
        scaler_D.load_state_dict(saved["scaler_D"])
    with torch.no_grad():
        for buffer, value in zip(G.buffers(), saved["G_buffers"]):
            buffer.copy_(value)


# ----------------------------------------------------------------------------- checkpoints

def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temp file, flush+fsync, then os.replace: a crash mid-write never destroys `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            _pause_in_save_for_tests(path)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {e.strerror or e}. The previous {path.name} (if any) "
                              f"is intact; free disk space or fix permissions of {path.parent}, then resume") from e
    except BaseException:  # Ctrl-C mid-save, an unpicklable value, ...: no half-written temp file left behind
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself (POSIX); best effort elsewhere
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


RUN_DIR_HINTS = {errno.ENOTDIR: "a part of the path is a file, not a folder",
                 errno.EEXIST: "it is a file, not a folder", errno.EACCES: "no permission to write there",
                 errno.EPERM: "no permission to write there", errno.EROFS: "the file system is read-only",
                 errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}


def check_run_dir(run_dir: Path) -> None:
    """Create RUN_DIR and write, fsync and delete a small file in it, so that a folder that cannot hold the run
    stops it now with one line, not with a traceback after the data and models are built. Folders this check
    created are removed again: an error later on (a bad checkpoint, bad data) leaves nothing behind."""
    created = [p for p in (run_dir, *run_dir.parents) if not os.path.lexists(p)]
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        hint = RUN_DIR_HINTS.get(e.errno, e.strerror or type(e).__name__)
        raise RunDirError(f"RUN_DIR={run_dir} cannot be used: {hint} ({e.strerror or e}: {e.filename or run_dir}). "
                          f"Choose a RUN_DIR in a writable folder with free space") from None
    finally:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


_SAVES: dict[str, int] = {}  # atomic_save calls in this process per file name, for the test hook below


def _pause_in_save_for_tests(path: Path) -> None:
    """Test hook, off unless PIX2PIX_TEST_PAUSE_IN_SAVE=NAME:N:FILE is set: the N-th save to a file called NAME
    stops after writing its temp file, before flush, fsync and rename, writes FILE and waits to be killed.
    tests/test_faults.py SIGKILLs it there: the most fragile moment of a save, every time, not by luck."""
    hook = os.environ.get("PIX2PIX_TEST_PAUSE_IN_SAVE")
    if not hook:
        return
    name, n, ready = hook.split(":", 2)
    _SAVES[path.name] = _SAVES.get(path.name, 0) + 1
    if path.name == name and _SAVES[path.name] == int(n):
        Path(ready).write_text(str(os.getpid()))
        time.sleep(600)  # bounded: a test that failed before its kill leaves nothing running for long


def remove_stale_temp_files(*folders: Path) -> None:
    """Delete the temp files of saves that a killed run never finished (never loaded, only wasting disk)."""
    for tmp in [t for folder in folders if folder.is_dir() for t in folder.glob(".*.tmp-*")]:
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        if os.name == "posix":  # elsewhere, a file still open in another process cannot be deleted anyway
            try:
                os.kill(int(pid), 0)
                continue  # that process is still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_weights_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True: a checkpoint can hold tensors and plain data, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # it names code to import; torch's advice (weights_only=False) would run it
            raise CheckpointError(f"{path} holds objects other than tensors and plain data; loading it could run "
                                  f"code, so it is refused on purpose. Use a checkpoint written by train.py") from None
        raise CheckpointError(f"{path} is not a loadable pix2pix checkpoint (UnpicklingError: {str(e)[:200]}); it may "
                              f"be truncated or not a checkpoint") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"{path} is not a loadable pix2pix checkpoint ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:200]}); it may be truncated or not a checkpoint. "
                              f"Files that need arbitrary code to load are refused on purpose.") from None
    return ckpt


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by train.py (a training checkpoint or a generator export), loaded without code."""
    return checked_checkpoint(read_weights_file(path), path)


def checked_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    if official_format.is_state_dict(ckpt):
        what = ("an official-code generator (latest_net_G.pth): load it with utils.load_generator, predict.py or "
                "evaluate.py; it holds no training state to resume") if official_format.is_official_unet(ckpt) \
            else f"{official_format.describe(ckpt)}, not a pix2pix checkpoint"
        raise CheckpointError(f"{path} is {what}")
    if not isinstance(ckpt, dict) or "generator" not in ckpt or "generator_hparams" not in ckpt:
        raise CheckpointError(f"{path} loads, but is not a pix2pix checkpoint (no generator weights/hparams)")
    return ckpt


def checkpoint_generator_hparams(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The generator's hyperparameters; keys added since a checkpoint was written take their legacy values, so
    an old checkpoint keeps computing the function it was trained as."""
    return LEGACY_GENERATOR_HPARAMS | ckpt["generator_hparams"]


def generator_from_checkpoint(ckpt: dict[str, Any]) -> UNetGenerator:
    hparams = checkpoint_generator_hparams(ckpt)
    G = UNetGenerator(**{k: hparams[k] for k in GENERATOR_KEYS})
    G.load_state_dict(ckpt["generator"])
    return G


def keep_legacy_skips(G: UNetGenerator, ckpt: dict[str, Any]) -> bool:
    """Resuming a checkpoint written before the U-Net skip fix (issue 9) continues its own, legacy function
    (skip_relu=False, also recorded in the checkpoints it writes next); returns True if it is such a checkpoint."""
    G.skip_relu = G.hparams["skip_relu"] = checkpoint_generator_hparams(ckpt)["skip_relu"]
    return not G.skip_relu


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu",
                   mode: str = "paper") -> UNetGenerator:
    """Rebuild the generator from generator.pt (or any training checkpoint) alone; config.py is not consulted.

    Also accepts an official-code latest_net_G.pth (a bare UnetGenerator state dict): depth, width, channels and
    norm are inferred, with the official dropout placement; such a file stores no settings (G.train_config = {}).

    mode: "paper" (default, the paper's test protocol: dropout on, batch statistics; running stats frozen)
    or "eval" (ordinary eval(): dropout off, running statistics). The checkpoint's training settings are
    available as G.train_config (e.g. G.train_config["DIRECTION"]).
    """
    if mode not in ("paper", "eval"):
        raise ValueError(f"mode must be 'paper' or 'eval', got {mode!r}")
    ckpt = read_weights_file(path)
    if official_format.is_state_dict(ckpt):
        try:
            G = official_format.generator_from_official(ckpt)
        except official_format.OfficialFormatError as e:
            raise CheckpointError(f"{path}: {e}") from None
        ckpt = {}
    else:
        ckpt = checked_checkpoint(ckpt, path)
        try:
            G = generator_from_checkpoint(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # hparams and weights disagree: a damaged file
            raise CheckpointError(f"{path}: its generator weights do not match its hyperparameters "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    G = G.to(device)
    G.train(mode == "paper")
    for m in G.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0  # inference never changes the stored statistics
    G.requires_grad_(False)
    G.train_config = ckpt.get("config", {})
    return G


def model_hparams(G: nn.Module, D: nn.Module) -> dict[str, dict]:
    return {"generator_hparams": {k: G.hparams[k] for k in GENERATOR_KEYS},
            "discriminator_hparams": {k: D.hparams[k] for k in DISCRIMINATOR_KEYS}}


ARCHITECTURE_KEYS = ("IN_CHANNELS", "OUT_CHANNELS", "GEN_BASE_CHANNELS", "NUM_DOWNS", "NORM", "DROPOUT",
                     "DROPOUT_PLACEMENT", "DISC_BASE_CHANNELS", "DISC_N_LAYERS", "IMAGE_SIZE", "DIRECTION")
LEGACY_CONFIG = {"DROPOUT_PLACEMENT": "paper"}  # settings older checkpoints lack, at the value they were trained with


def check_resume_compatible(ckpt: dict[str, Any], cfg: dict[str, Any], path: str | os.PathLike) -> None:
    """A resumed run must build the same networks; say which settings differ instead of a key-mismatch wall."""
    missing = [k for k in ("discriminator", "opt_G", "opt_D", "step", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: not a training checkpoint (no {', '.join(missing)}; "
                              f"exports such as generator.pt hold the generator only); resume from the run's "
                              f"checkpoints/*.pt")
    saved = LEGACY_CONFIG | ckpt.get("config", {})
    diffs = [f"{k}: checkpoint {saved[k]!r} vs now {cfg[k]!r}" for k in ARCHITECTURE_KEYS
             if k in saved and saved[k] != cfg[k]]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: settings differ ({'; '.join(diffs)}). Use the "
                              f"checkpoint's settings, or a new RUN_DIR (or RESUME=never with a new RUN_DIR) "
                              f"to start a fresh run")
    if cfg["DISC_N_LAYERS"] == 0 and cfg["NORM"] == "batch" and "model.5.bias" in ckpt["discriminator"]:
        raise CheckpointError(f"cannot resume from {path}: its PixelGAN discriminator was written before its last "
                              f"1x1 conv lost its bias (as in the official code); start a new RUN_DIR. Its "
                              f"generator still loads for predict.py/evaluate.py")


# ----------------------------------------------------------------------------- images

def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] network range -> [0, 1] image range, as 3 channels so grids and metrics mix 1- and 3-channel."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def sample_grid(x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One row per image: input | generated | target, in [0, 1]."""
    import torchvision.utils as vutils
    rows = torch.stack([to_unit(x), to_unit(fake), to_unit(y)], dim=1).flatten(0, 1)
    return vutils.make_grid(rows.cpu(), nrow=3, padding=2, pad_value=1.0)


# ----------------------------------------------------------------------------- runs, distributed, FLOPs

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


def training_flops_per_image(cfg: dict[str, Any]) -> float:
    """Model FLOPs of one training image (D step + G step), counted on meta tensors (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        G, D = build_models(cfg)
        x = torch.empty(1, cfg["IN_CHANNELS"], cfg["IMAGE_SIZE"], cfg["IMAGE_SIZE"])
        with FlopCounterMode(display=False) as g_count:
            fake = G(x)
        with FlopCounterMode(display=False) as d_count:
            D(x, fake)
    # backward costs ~2x forward; D runs three times (real, fake, and in the G step)
    return 3.0 * g_count.get_total_flops() + 9.0 * d_count.get_total_flops()


def measure_peak_flops(device: torch.device, precision: str, seconds: float = 0.5) -> float:
    """Achieved FLOP/s of a representative 4x4 convolution (C256->C512 at 32x32) in this precision: the
    practical peak that the MFU figure is relative to."""
    dtype = AMP_DTYPES.get(precision, torch.float32)
    # made on the CPU with its RNG forked: train.py probes after restoring a checkpoint's RNG state, and
    # drawing from it here would change the dropout noise of a resumed run (no longer an exact resume)
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
