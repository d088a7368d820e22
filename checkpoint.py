"""Checkpoints: what one holds (written once, below), atomic saving, loading without code, rebuilding a
generator from its file alone, and the checks before resuming. train.py saves and restores through
save_training_state/restore_training_state and save_generator; predict.py, evaluate.py, demo.py and export.py
load through load_generator.

Not run directly. In a notebook:
    from checkpoint import load_generator   # also: from utils import load_generator
    G = load_generator("runs/pix2pix/generator.pt")
"""
import contextlib
import os
import pickle
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import official_format
from atomic import atomic_path, fsync_folder
from discriminator_model import DISCRIMINATOR_KEYS
from generator_model import (GENERATOR_KEYS, LEGACY_GENERATOR_HPARAMS, UNetGenerator, generator_from_state,
                             use_test_mode)

CHECKPOINT_FORMAT = 1  # written into every checkpoint as "format"; bump when the layout below changes

# ----------------------------------------------------------------------------- the schema: what a checkpoint holds

# A training checkpoint (RUN_DIR/checkpoints/*.pt): everything an exact resume needs.
TRAINING_STATE = ("generator", "discriminator", "opt_G", "opt_D", "sched_G", "sched_D", "scaler_G", "scaler_D")
PROGRESS = ("epoch", "batch_in_epoch", "step", "best_val_l1")  # epoch = completed epochs
RNG_STATE = ("rng", "rank_rngs", "loader_rng")  # this rank's RNGs, every rank's, and the DataLoader's generator
OPTIONAL = ("best_val_l1", "rank_rngs")  # older checkpoints lack them; restoring uses the defaults
# Both kinds also hold "format", "config" (the run's settings) and "generator_hparams"/"discriminator_hparams"
# (enough to rebuild the networks without config.py). A generator export (generator.pt) holds "generator",
# "epoch", "config" and the hparams only.


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the requested run; the message says which file."""


def model_hparams(G: nn.Module, D: nn.Module) -> dict[str, dict]:
    return {"generator_hparams": {k: G.hparams[k] for k in GENERATOR_KEYS},
            "discriminator_hparams": {k: D.hparams[k] for k in DISCRIMINATOR_KEYS}}


def save_training_state(path: Path, state: dict[str, Any], progress: dict[str, Any], rngs: dict[str, Any],
                        cfg: dict[str, Any]) -> None:
    """state: TRAINING_STATE's objects (anything with state_dict()); progress: PROGRESS; rngs: RNG_STATE."""
    assert set(state) == set(TRAINING_STATE) and set(progress) == set(PROGRESS) and set(rngs) == set(RNG_STATE)
    atomic_save({"format": CHECKPOINT_FORMAT, **{k: state[k].state_dict() for k in TRAINING_STATE}, **progress,
                 **rngs, "config": cfg, **model_hparams(state["generator"], state["discriminator"])}, path)


def restore_training_state(ckpt: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Load TRAINING_STATE into `state`'s objects; returns PROGRESS and RNG_STATE (defaults where optional).
    Optimisers and loss scalers load through their own helpers: a run resumes under another CHANNELS_LAST or
    PRECISION."""
    loaders = {"opt_G": load_optimizer_state, "opt_D": load_optimizer_state,
               "scaler_G": load_scaler_state, "scaler_D": load_scaler_state}
    for k in TRAINING_STATE:
        if k in loaders:
            loaders[k](state[k], ckpt[k])
        else:
            state[k].load_state_dict(ckpt[k])
    defaults = {"best_val_l1": float("inf"), "rank_rngs": []}
    return {k: ckpt.get(k, defaults.get(k)) if k in OPTIONAL else ckpt[k] for k in (*PROGRESS, *RNG_STATE)}


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


def save_generator(path: Path, G: nn.Module, D: nn.Module, epoch: int, cfg: dict[str, Any]) -> None:
    """generator.pt: the generator alone, loadable by load_generator without config.py (on any machine)."""
    atomic_save({"format": CHECKPOINT_FORMAT, "generator": cpu_state_dict(G), "epoch": epoch, "config": cfg,
                 **model_hparams(G, D)}, path)


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict() as CPU tensors: an export that plain torch.load opens on any machine."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- saving and loading

def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temp file, flush+fsync, then os.replace: a crash mid-write never destroys `path`."""
    path = Path(path)
    try:  # Ctrl-C mid-save, an unpicklable value, ...: atomic_path leaves no half-written temp file behind
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            _pause_in_save_for_tests(path)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CheckpointError(f"could not write {path}: {e.strerror or e}. The previous {path.name} (if any) "
                              f"is intact; free disk space or fix permissions of {path.parent}, then resume") from e
    fsync_folder(path.parent)


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
    if ckpt.get("format", 1) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format']}, newer than this code reads "
                              f"({CHECKPOINT_FORMAT}); update the code (git pull)")
    return ckpt


def checkpoint_generator_hparams(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The generator's hyperparameters; keys added since a checkpoint was written take their legacy values, so
    an old checkpoint keeps computing the function it was trained as."""
    return LEGACY_GENERATOR_HPARAMS | ckpt["generator_hparams"]


def generator_from_checkpoint(ckpt: dict[str, Any]) -> UNetGenerator:
    return generator_from_state(ckpt["generator_hparams"], ckpt["generator"])


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
    use_test_mode(G, mode)  # for good: inference never changes the stored statistics
    G.requires_grad_(False)
    G.train_config = ckpt.get("config", {})
    return G


ARCHITECTURE_KEYS = ("IN_CHANNELS", "OUT_CHANNELS", "GEN_BASE_CHANNELS", "NUM_DOWNS", "NORM", "DROPOUT",
                     "DROPOUT_PLACEMENT", "DISC_BASE_CHANNELS", "DISC_N_LAYERS", "IMAGE_SIZE", "DIRECTION")
LEGACY_CONFIG = {"DROPOUT_PLACEMENT": "paper"}  # settings older checkpoints lack, at the value they were trained with


def check_resume_compatible(ckpt: dict[str, Any], cfg: dict[str, Any], path: str | os.PathLike,
                            D: nn.Module | None = None) -> None:
    """A resumed run must build the same networks; say which settings differ instead of a key-mismatch wall."""
    missing = [k for k in (*TRAINING_STATE, *PROGRESS, *RNG_STATE) if k not in ckpt and k not in OPTIONAL]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: not a training checkpoint (no {', '.join(missing)}; "
                              f"exports such as generator.pt hold the generator only); resume from the run's "
                              f"checkpoints/*.pt")
    saved = LEGACY_CONFIG | ckpt.get("config", {})
    diffs = [f"{k}: checkpoint {saved[k]!r} vs now {cfg[k]!r}" for k in ARCHITECTURE_KEYS
             if k in saved and saved[k] != cfg[k]]
    if D is not None:  # the discriminator the weights were written for (its hparams), against the one built now
        saved_d = ckpt.get("discriminator_hparams", {})
        diffs += [f"discriminator {k}: checkpoint {saved_d[k]!r} vs now {v!r}" for k, v in D.hparams.items()
                  if k in saved_d and saved_d[k] != v]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: settings differ ({'; '.join(diffs)}). Use the "
                              f"checkpoint's settings, or a new RUN_DIR (or RESUME=never with a new RUN_DIR) "
                              f"to start a fresh run")
    if cfg["DISC_N_LAYERS"] == 0 and cfg["NORM"] == "batch" and "model.5.bias" in ckpt["discriminator"]:
        raise CheckpointError(f"cannot resume from {path}: its PixelGAN discriminator was written before its last "
                              f"1x1 conv lost its bias (as in the official code); start a new RUN_DIR. Its "
                              f"generator still loads for predict.py/evaluate.py")
