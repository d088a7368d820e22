"""Reading weight files and checking their tensors, for checkpoints (harness/checkpoint.py) and the official
code's generators (harness/official_format.py) alike: loading without running code, refusing files made to
inflate, NaN/Inf or impossible values, and missing, unexpected or mis-shaped tensors named in one line.

Not run directly. In a notebook:
    from harness.weights import read_weights_file
    ckpt = read_weights_file("runs/pix2pix/checkpoints/last.pt")   # a dict of tensors and plain data
"""
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from harness.errors import CheckpointError


def read_weights_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True: a checkpoint can hold tensors and plain data, never code. The archive's
    size is checked first (check_archive_size), so a file made to inflate is refused before torch allocates it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {not_a_file(path)}")
    check_archive_size(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = unpickling_reason(e)
        if "global" in reason.lower():  # it names code to import: loading it anyway could run that code
            raise CheckpointError(f"{path} holds objects other than tensors and plain data; loading it could run "
                                  f"code, so it is refused on purpose. Use a checkpoint written by train.py") from None
        raise CheckpointError(f"{path} is not a loadable pix2pix checkpoint ({reason}); it may be truncated or not a "
                              f"checkpoint") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        reason = (str(e).splitlines() or [""])[0].split(". ")[0][:200]
        raise CheckpointError(f"{path} is not a loadable pix2pix checkpoint ({type(e).__name__}: {reason}); it may "
                              f"be truncated or not a checkpoint. Files that need arbitrary code to load are refused "
                              f"on purpose.") from None
    return ckpt


def not_a_file(path: Path) -> str:
    """Why `path` (not a regular file) cannot be read: a dangling link, a folder, or nothing there."""
    if path.is_symlink() and not path.exists():
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    if path.is_dir():
        return "is a folder, not a checkpoint file"
    return "is not a regular file" if path.exists() else "does not exist"


def unpickling_reason(e: pickle.UnpicklingError) -> str:
    """torch's own reason for refusing a file, without its advice to retry with weights_only=False: that would
    run whatever code the file names, the one thing never to do with a file one cannot vouch for."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    reason = " ".join(text.split())[:200]
    return "UnpicklingError" if not reason or "weights_only" in reason else f"UnpicklingError: {reason}"


# Bytes an archive may inflate to beyond twice its own size: torch.save stores every record uncompressed, so a
# checkpoint's records add up to less than its file; the slack only allows for a repacked, deflated copy.
INFLATION_SLACK = 16 * 2 ** 20


def check_archive_size(path: Path) -> None:
    """Refuse a checkpoint whose records would take far more memory than the file's own size, reading only the
    zip archive's directory (each record's uncompressed size): megabytes of deflated zeros would otherwise make
    torch allocate gigabytes before anything could be checked. Files that are no zip archive (torch's legacy
    format, or not a checkpoint at all) are left to torch.load."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(record.file_size for record in archive.infolist())
    except Exception:  # noqa: BLE001 - not a zip archive, or a damaged one: torch.load reports it
        return
    size = path.stat().st_size
    if inflated > 2 * size + INFLATION_SLACK:
        raise CheckpointError(f"{path} would inflate to {inflated / 2 ** 30:.2f} GiB in memory from "
                              f"{size / 2 ** 20:.2f} MiB on disk: torch.save stores tensors uncompressed, so this "
                              f"file was made to inflate; it is refused before loading")


def named_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every tensor in nested dicts, lists and tuples (a state dict, an optimiser's)."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from named_tensors(value, f"{prefix}.{i}" if prefix else str(i))


def check_weights(tensors: Iterable[tuple[str, torch.Tensor]], path: str | os.PathLike) -> None:
    """Refuse weights that can only compute garbage: NaN/Inf values, or negative batch-norm running variances.
    torch stores no checksum, so a damaged or hand-edited file loads as if it were fine, and then every output
    is NaN (black images, n/a metrics) without a word. Names the file and the first bad tensor."""
    for name, t in tensors:
        if not t.is_floating_point():
            continue
        finite = torch.isfinite(t)
        if not finite.all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN/Inf values ({int((~finite).sum())} of "
                                  f"{t.numel()}); the file is damaged or was saved from a diverged run. Use another "
                                  f"checkpoint (a run keeps checkpoints/best.pt and epoch_*.pt) or retrain")
        if name.endswith("running_var") and (t < 0).any():
            raise CheckpointError(f"{path}: tensor {name!r} holds negative running variances ({int((t < 0).sum())} "
                                  f"of {t.numel()}), which no batch norm produces; the file is damaged")


def load_weights(module: nn.Module, state: Any, name: Callable[[str], str] = str) -> None:
    """module.load_state_dict(state), after refusing in one line the first tensor that is missing, unexpected or of
    the wrong shape, by its name in the file (`name` maps the module's key to it): torch lists them all on many
    lines, which a one-line error would cut before the first key."""
    if not isinstance(state, dict):
        raise CheckpointError(f"the weights are a {type(state).__name__}, not a dict of named tensors")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" ({len(missing)} tensors are missing in all)" if len(missing) > 1 else ""
        raise CheckpointError(f"tensor {name(missing[0])!r} is missing; expected one of shape "
                              f"{tuple(expected[missing[0]].shape)}{more}")
    for key, want in expected.items():
        got = state[key]
        if not torch.is_tensor(got) or got.shape != want.shape:
            shape = tuple(got.shape) if torch.is_tensor(got) else type(got).__name__
            raise CheckpointError(f"tensor {name(key)!r} has shape {shape}; expected {tuple(want.shape)}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"tensor {name(unexpected[0])!r} is not part of a {type(module).__name__} with these "
                              f"hyperparameters")
    module.load_state_dict(state)
