"""Checkpoints: what one holds (the schema, declared once below), atomic saving, loading (without running code,
every tensor checked: harness/weights.py), rebuilding a generator from its file alone (load_generator, the public
loader), the checks before resuming, and how files written by older versions are read (the legacy section, the one
place that knows them).

Not run directly. In a notebook:
    from harness.checkpoint import load_generator
    G = load_generator("runs/pix2pix/generator.pt")
"""
import contextlib
import os
import random
import shutil
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from generator_model import TEST_MODES, ResnetGenerator, UNetGenerator, set_test_mode
from harness import official_format
from harness.atomic import atomic_path, fsync_folder
from harness.errors import CheckpointError
from harness.weights import check_weights, load_weights, named_tensors, read_weights_file

CHECKPOINT_FORMAT = 2  # written into every checkpoint as "format"; bump when the schema below changes

# ----------------------------------------------------------------------------- the schema: what a checkpoint holds

# A training checkpoint (RUN_DIR/checkpoints/*.pt) holds everything an exact resume needs:
# the training state: checkpoint key -> attribute of pix2pix.Pix2Pix (anything with state_dict())
TRAINING_STATE = {"generator": "G", "discriminator": "D", "opt_G": "opt_G", "opt_D": "opt_D",
                  "scaler_G": "scaler_G", "scaler_D": "scaler_D"}
RNG_STATE = ("rng", "rank_rngs", "loader_rng")  # this rank's RNGs, every rank's, and the DataLoader's generator
# and "format", "config" (the run's settings), "train_data" (what it trained on: data_fingerprint), PROGRESS below,
# and "generator_hparams"/"discriminator_hparams" (enough to rebuild the networks without config.py).
# With G_EMA also "generator_average": pix2pix.GeneratorAverage's state ({"generator": weights, "images": n}).
AVERAGE = "generator_average"
# A generator export (generator.pt) holds "format", "generator", "epoch", "config" and the hparams only, and with
# G_EMA "averaged": True: its "generator" is then the averaged generator.


@dataclass
class Progress:
    """Where a run is. `epoch` counts completed epochs; `images_in_epoch` the images the current epoch has trained
    on (all processes together), so a run resumes at the right image whatever its batch size or process count."""
    epoch: int = 0
    step: int = 0
    images_in_epoch: int = 0
    best_val: float = float("inf")  # the best validation BEST_BY so far, as a loss: lower is better
    plateau: dict = field(default_factory=dict)  # LR_POLICY="plateau": pix2pix.plateau_after's state
    shards: int = 1  # the epoch's order: 1 = one shuffle of the whole set, N = N processes' resident shards
    epoch_losses: dict = field(default_factory=dict)  # mid-epoch: its loss sums and counts so far (Reading.so_far)
    outputs_every: int = 1  # EVAL_BUDGET: samples, validation every SAMPLE_EVERY / VAL_EVERY x this (spaced_out)


PROGRESS = tuple(f.name for f in fields(Progress))


def model_hparams(G: nn.Module, D: nn.Module) -> dict[str, dict]:
    """The networks' constructor arguments, and skip_relu: False only for a generator from before the U-Net skip
    fix (use_legacy_skips), recorded so every file knows which function its generator computes."""
    unet = {"skip_relu": True} if "num_downs" in G.hparams else {}
    return {"generator_hparams": unet | G.hparams, "discriminator_hparams": dict(D.hparams)}


def training_checkpoint(model: Any, progress: Progress, rngs: dict[str, Any], cfg: dict[str, Any],
                        train_data: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of a run, as CPU copies (the live tensors may change as soon as this returns)."""
    assert set(rngs) == set(RNG_STATE)
    state = {key: cpu_copy(getattr(model, attr).state_dict()) for key, attr in TRAINING_STATE.items()}
    if model.average is not None:
        state[AVERAGE] = cpu_copy(model.average.state_dict())
    return {"format": CHECKPOINT_FORMAT, **state, **asdict(progress), **cpu_copy(rngs), "config": cfg,
            "train_data": train_data, **model_hparams(model.G, model.D)}


def generator_export(G: nn.Module, D: nn.Module, epoch: int, cfg: dict[str, Any], averaged: bool = False
                     ) -> dict[str, Any]:
    """generator.pt: the generator alone (`averaged`: G_EMA's average), loadable by load_generator without
    config.py (on any machine)."""
    return {"format": CHECKPOINT_FORMAT, "generator": cpu_copy(G.state_dict()), **({"averaged": True} if averaged else {}),
            "epoch": epoch, "config": cfg, **model_hparams(G, D)}


def export_of(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The generator export of a training checkpoint (its CPU copies, shared, not copied again): its averaged
    generator if it has one (G_EMA), else its generator."""
    averaged = {"averaged": True} if AVERAGE in ckpt else {}
    return {"format": CHECKPOINT_FORMAT, "generator": inference_weights(ckpt), **averaged,
            "epoch": ckpt["epoch"], "config": ckpt["config"], "generator_hparams": ckpt["generator_hparams"],
            "discriminator_hparams": ckpt["discriminator_hparams"]}


def inference_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The generator weights inference uses: the averaged ones where a checkpoint holds them (G_EMA)."""
    return ckpt[AVERAGE]["generator"] if AVERAGE in ckpt else ckpt["generator"]


def cpu_copy(obj: Any) -> Any:
    """`obj` with every tensor copied to the CPU (nested dicts, lists and tuples): a snapshot that plain
    torch.load opens on any machine."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def restore_training_state(ckpt: dict[str, Any], model: Any) -> Progress:
    """Load the training state into `model`'s objects; returns the progress. Optimisers and loss scalers load
    through their own helpers, so a run resumes under another CHANNELS_LAST or PRECISION."""
    for key, attr in TRAINING_STATE.items():
        target = getattr(model, attr)
        if key.startswith("opt_"):
            load_optimizer_state(target, ckpt[key])
        elif key.startswith("scaler_"):
            if ckpt[key]:  # empty unless saved in fp16; an fp16 state is ignored by a run without a scaler
                target.load_state_dict(ckpt[key])
        else:
            target.load_state_dict(ckpt[key])
    if model.average is not None and AVERAGE in ckpt:
        model.average.load_state_dict(ckpt[AVERAGE])
    elif model.average is not None:  # G_EMA off -> on: the average starts at the resumed G (check_resume_recipe)
        model.average.G.load_state_dict(model.G.state_dict())
    return Progress(**{k: ckpt[k] for k in PROGRESS})


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load Adam's state and give each moment its parameter's memory layout (strides): a run saved with another
    CHANNELS_LAST keeps the old layout, and the fused kernels would then pair up the wrong elements."""
    opt.load_state_dict(state)
    for p, saved in opt.state.items():
        for key, value in saved.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                saved[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


# ----------------------------------------------------------------------------- RNG states

def rng_states(device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """Every global RNG this process uses, in a form torch.load(weights_only=True) accepts (tensors, ints,
    tuples): the CUDA one of `device` only, so the checkpoint resumes on a machine with fewer GPUs."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else []}


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


# ----------------------------------------------------------------------------- saving and loading

def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temp file, flush+fsync, then os.replace: a crash mid-write never destroys `path`."""
    path = Path(path)
    try:  # Ctrl-C mid-save, an unpicklable value, ...: atomic_path leaves no half-written temp file behind
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CheckpointError(f"could not write {path}: {e.strerror or e}. The previous {path.name} (if any) "
                              f"is intact; free disk space or fix permissions of {path.parent}, then resume") from e
    except RuntimeError as e:
        if not any(sign in str(e) for sign in WRITER_FAILURES):
            raise
        reason = " ".join(str(e).split())[:160]
        raise CheckpointError(f"could not write {path}: torch's writer failed ({reason}), as it does when the disk "
                              f"is full ({free_space(path.parent)} free there). The previous {path.name} (if any) is "
                              f"intact; free disk space or fix permissions of {path.parent}, then resume") from e
    fsync_folder(path.parent)


# torch.save's zip writer reports a failed write (ENOSPC, EIO, ...) as a RuntimeError without the errno, e.g.
# "[enforce fail at inline_container.cc:...] . unexpected pos 123 vs 45" or "PytorchStreamWriter failed writing file"
WRITER_FAILURES = ("unexpected pos", "PytorchStreamWriter", "inline_container", "file write failed")


def free_space(folder: Path) -> str:
    """The space left on `folder`'s file system, for a message ("unknown" where it cannot be read)."""
    try:
        return f"{shutil.disk_usage(folder).free / 2 ** 20:.1f} MiB"
    except OSError:
        return "unknown"


class CheckpointWriter:
    """Writes checkpoints on a background thread, so that training does not wait for the disk: the caller hands over
    CPU copies (training_checkpoint, generator_export) and goes on, and each file is written atomically (temp file,
    fsync, rename) meanwhile. A second write waits for the first, so at most one set of copies is in memory; a
    failed write (a full disk, say) is raised on the caller's thread at the next write or at wait(), and the
    previous file stays intact."""

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def write(self, files: list[tuple[Any, Path]]) -> None:
        """Write each (object, path) in turn, in the background."""
        self.wait()
        self.thread = threading.Thread(target=self._write, args=(files,), name="checkpoint-writer")
        self.thread.start()

    def _write(self, files: list[tuple[Any, Path]]) -> None:
        try:
            for obj, path in files:
                atomic_save(obj, path)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread
            self.error = e

    def wait(self) -> None:
        """Block until the last write is on disk; raise its error, if it had one."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by train.py (a training checkpoint or a generator export), loaded without code and
    brought to the current schema."""
    return checked_checkpoint(read_weights_file(path), path)


def checked_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    if official_format.is_state_dict(ckpt):
        what = ("an official-code generator (latest_net_G.pth): load it with harness.checkpoint.load_generator, "
                "predict.py or evaluate.py; it holds no training state to resume") \
            if official_format.is_official_generator(ckpt) \
            else f"{official_format.describe(ckpt)}, not a pix2pix checkpoint"
        raise CheckpointError(f"{path} is {what}")
    if not isinstance(ckpt, dict) or "generator" not in ckpt or "generator_hparams" not in ckpt:
        raise CheckpointError(f"{path} loads, but is not a pix2pix checkpoint (no generator weights/hparams)")
    if ckpt.get("format", 1) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format']}, newer than this code reads "
                              f"({CHECKPOINT_FORMAT}); update the code (git pull)")
    check_weights((item for key in (*TRAINING_STATE, AVERAGE) if key in ckpt for item in named_tensors(ckpt[key], key)),
                  path)
    return upgrade_legacy(ckpt)


# ----------------------------------------------------------------------------- rebuilding a generator

def check_channels(hparams: dict[str, Any], where: str) -> None:
    """A generator for pix2pix images: 1 (grayscale) or 3 (RGB) channels in and out, as IN/OUT_CHANNELS allow."""
    for key in ("in_channels", "out_channels"):
        if hparams.get(key) not in (1, 3):
            raise CheckpointError(f"{where} gives {key}={hparams.get(key)!r}; pix2pix images have 1 or 3 channels")


def build_generator(hparams: dict[str, Any]) -> nn.Module:
    """The generator that generator_hparams (a checkpoint's, or a live model's G.hparams) describe: a ResNet (it has
    n_blocks), or a U-Net, legacy skips too."""
    if "n_blocks" in hparams:
        return ResnetGenerator(**hparams)
    G = UNetGenerator(**{k: v for k, v in hparams.items() if k != "skip_relu"})
    return use_legacy_skips(G) if hparams.get("skip_relu") is False else G


def generator_from_state(hparams: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a generator from a live model's complete hyperparameters (G.hparams) and load its weights."""
    G = build_generator(hparams)
    load_weights(G, state)
    return G


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu",
                   mode: str = "paper") -> nn.Module:
    """Rebuild the generator from generator.pt (or any training checkpoint) alone; config.py is not consulted.

    The generator is the one the file says (a U-Net or a ResNet, by its generator_hparams); from a checkpoint of a
    G_EMA run, the averaged generator. Also accepts an official-code latest_net_G.pth (a bare UnetGenerator or
    ResnetGenerator state dict): the network's shape, channels and norm are inferred (harness/official_format.py);
    such a file stores no settings (G.train_config = {}).

    mode: "paper" (default, the paper's test protocol: dropout on, batch statistics; running stats frozen)
    or "eval" (ordinary eval(): dropout off, running statistics). The checkpoint's training settings are
    available as G.train_config (e.g. G.train_config["DIRECTION"]).
    """
    if mode not in TEST_MODES:
        raise ValueError(f"mode must be one of {TEST_MODES}, got {mode!r}")
    ckpt = read_weights_file(path)
    if official_format.is_state_dict(ckpt):
        check_weights(ckpt.items(), path)
        try:
            G = official_format.generator_from_official(ckpt)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        ckpt = {}
    else:
        ckpt = checked_checkpoint(ckpt, path)  # read as the current schema: legacy settings filled in
        hparams = ckpt["generator_hparams"]
        check_channels(hparams, f"{path}: its generator_hparams")
        try:
            G = build_generator(hparams)
        except (TypeError, ValueError) as e:  # hand-made or damaged hyperparameters
            raise CheckpointError(f"{path}: its generator_hparams do not describe a generator ({e})") from None
        try:
            load_weights(G, inference_weights(ckpt))
        except CheckpointError as e:  # hparams and weights disagree: a damaged file
            raise CheckpointError(f"{path}: its generator weights do not match its hyperparameters: {e}") from None
    G = G.to(device)
    set_test_mode(G, mode)  # for good: inference never changes the stored statistics
    G.requires_grad_(False)
    G.train_config = ckpt.get("config", {})
    return G


# ----------------------------------------------------------------------------- resuming

ARCHITECTURE_KEYS = ("IN_CHANNELS", "OUT_CHANNELS", "GEN_BASE_CHANNELS", "NUM_DOWNS", "NORM", "DROPOUT",
                     "DROPOUT_PLACEMENT", "DISC_BASE_CHANNELS", "DISC_N_LAYERS", "IMAGE_SIZE", "DIRECTION")


def check_resume_compatible(ckpt: dict[str, Any], cfg: dict[str, Any], path: str | os.PathLike,
                            D: nn.Module | None = None) -> None:
    """A resumed run must build the same networks; say which settings differ instead of a key-mismatch wall."""
    missing = [k for k in (*TRAINING_STATE, *PROGRESS, *RNG_STATE) if k not in ckpt]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: not a training checkpoint (no {', '.join(missing)}; "
                              f"exports such as generator.pt hold the generator only); resume from the run's "
                              f"checkpoints/*.pt")
    saved = ckpt.get("config", {})
    check_resume_recipe(saved, cfg, path)
    if saved.get("BEST_BY", cfg["BEST_BY"]) != cfg["BEST_BY"]:  # best_val, plateau's best: in its figure's units
        raise CheckpointError(f"cannot resume from {path}: it keeps its best validation figure by BEST_BY="
                              f"{saved['BEST_BY']!r}, this run asks for {cfg['BEST_BY']!r}, and the two cannot be "
                              f"compared; resume with --BEST_BY={saved['BEST_BY']!r}, or train in a new RUN_DIR")
    diffs = [f"{k}: checkpoint {saved[k]!r} vs now {cfg[k]!r}" for k in ARCHITECTURE_KEYS
             if k in saved and saved[k] != cfg[k] and not (k == "NUM_DOWNS" and cfg["GENERATOR"] != "unet")]
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


# What a recipe changes in training: a run continues with the method it was trained with. The RECIPE word itself
# is only a shorthand for these (RECIPE=paper and no RECIPE are the same run). The optimisers' settings are
# compared as used: D's "same" is G's value. The harmless change: G_EMA off -> on (training is unchanged; the
# average starts at the resumed weights, and says so). On -> off is refused: it would drop the average the
# checkpoint holds, and generator.pt would silently become the raw G.
RECIPE_KEYS = ("GAN_LOSS", "D_SCALES", "FEATURE_MATCHING", "FEATURE_MATCHING_LAMBDA", "SPECTRAL_NORM",
               "LEARNING_RATE", "BETA1", "BETA2", "LEARNING_RATE_D", "BETA1_D", "BETA2_D", "GENERATOR", "G_EMA")


def as_used(c: dict[str, Any], key: str) -> Any:
    """A setting's value in training: D's LEARNING_RATE_D/BETA1_D/BETA2_D "same" is G's (as pix2pix.of_D)."""
    return c.get(key[:-2]) if key.endswith("_D") and c.get(key) == "same" else c.get(key)


def check_resume_recipe(saved: dict[str, Any], cfg: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse, in one line naming both, to resume a run under another recipe (settings missing from an older
    checkpoint are its defaults: upgrade_legacy)."""
    differ = [k for k in RECIPE_KEYS if k in saved and as_used(saved, k) != as_used(cfg, k)
              and not (k == "G_EMA" and cfg[k] and not saved[k])]
    if differ:
        def recipe(c: dict[str, Any]) -> str:
            return f"RECIPE={c.get('RECIPE', '')!r} (" + ", ".join(f"{k}={as_used(c, k)!r}" for k in differ) + ")"
        raise CheckpointError(f"cannot resume from {path}: it was trained with {recipe(saved)}, this run asks for "
                              f"{recipe(cfg)}; continue it with its own settings, or train the new recipe in a new "
                              f"RUN_DIR")


def check_same_data(saved: dict[str, Any], now: dict[str, Any], path: str | os.PathLike, forced: bool
                    ) -> str | None:
    """A run continues on the data it was trained on. `saved` and `now` are data fingerprints (the training
    folder, its number of images, a hash of their names and one of their contents' identity:
    harness.data_checks.data_fingerprint). Other files are refused, unless RESUME names the checkpoint (`forced`):
    then, and for a moved folder with the same files, or a checkpoint written before fingerprints, a note to print
    is returned. Checkpoints written before the content hash are compared by names."""
    if not saved:
        return f"note: {path} does not record its training data (written by an older version); not compared"
    same_content = saved.get("content", now["content"]) == now["content"]
    if (saved["images"], saved["names"]) == (now["images"], now["names"]) and same_content:
        if saved["folder"] == now["folder"]:
            return None
        return f"note: the training folder moved from {saved['folder']} to {now['folder']} (the same " \
               f"{now['images']} files)"
    differ = ")" if saved["images"] != now["images"] else ", other file names)" if saved["names"] != now["names"] \
        else ", the same file names with other contents)"
    other = f"{saved['folder']} ({saved['images']} images), not on {now['folder']} ({now['images']} images{differ}"
    if forced:
        return f"note: {path} was trained on {other}; continuing it on this data because RESUME names it"
    raise CheckpointError(f"cannot resume from {path}: it was trained on {other}. Start a fresh run in a new RUN_DIR "
                          f"(--RUN_DIR=...), or continue this run on the new data with --RESUME={path}")


# ----------------------------------------------------------------------------- files of older versions

def use_legacy_skips(G: UNetGenerator) -> UNetGenerator:
    """G as generators were before the U-Net skip fix: each decoder block saw its encoder's LeakyReLU'd output as
    it is, not ReLU'd as in the reference code (generator_model.py). G.hparams records it as skip_relu=False, so the
    checkpoints such a G writes load with the same function. Returns G."""
    G.skip_activation = nn.Identity()
    G.hparams["skip_relu"] = False
    return G


def keep_legacy_skips(G: UNetGenerator, ckpt: dict[str, Any]) -> bool:
    """Resuming a checkpoint written before the U-Net skip fix continues its own, legacy function (also recorded in
    the checkpoints it writes next); returns True if it is such a checkpoint."""
    if ckpt["generator_hparams"].get("skip_relu", True):  # the fixed U-Net, or a ResNet
        return False
    use_legacy_skips(G)
    return True


# Generator settings a checkpoint written before they existed was built with: its outputs must not change.
LEGACY_GENERATOR_HPARAMS = {"dropout_placement": "paper", "skip_relu": False}
LEGACY_CONFIG = {"DROPOUT_PLACEMENT": "paper", "RECIPE": "", "GENERATOR": "unet", "GAN_LOSS": "bce", "D_SCALES": 1,
                 "FEATURE_MATCHING": False, "FEATURE_MATCHING_LAMBDA": 10.0, "SPECTRAL_NORM": False, "G_EMA": False}


def upgrade_legacy(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of any earlier format, read as the current schema (in memory; the file is not changed).
    Format 1 had LR schedulers (the LR now follows from the epoch), counted batches rather than images into the
    epoch, and may lack best_val_l1 (now best_val), rank_rngs and train_data."""
    ckpt = dict(ckpt)
    if "n_blocks" not in ckpt["generator_hparams"]:  # a U-Net (the only generator before the ResNet)
        ckpt["generator_hparams"] = LEGACY_GENERATOR_HPARAMS | ckpt["generator_hparams"]
    if "config" in ckpt:
        ckpt["config"] = LEGACY_CONFIG | ckpt["config"]
    if ckpt.get("format", 1) == 1 and "batch_in_epoch" in ckpt:
        processes = max(1, len(ckpt.get("rank_rngs") or []))
        ckpt["images_in_epoch"] = ckpt.pop("batch_in_epoch") * ckpt["config"]["BATCH_SIZE"] * processes
        ckpt["best_val"] = ckpt.pop("best_val_l1", float("inf"))
        ckpt.setdefault("rank_rngs", [])
        for key in ("sched_G", "sched_D"):
            ckpt.pop(key, None)
    ckpt.setdefault("train_data", {})
    ckpt.setdefault("plateau", {})
    ckpt.setdefault("shards", 1)
    ckpt.setdefault("epoch_losses", {})
    ckpt.setdefault("outputs_every", 1)
    return ckpt
