"""Writing a file or folder so that a crash, a kill or Ctrl-C never leaves half of it at its destination: write a
temp sibling (same file system), then rename it into place; os.replace is atomic on POSIX and Windows, so readers
see the old version or the new one, never a mix. Used for checkpoints, log.csv, curves.png, ONNX exports, the
synthetic dataset and downloaded archives. A library module (standard library only): nothing to run.
"""
import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def temp_sibling(path: Path) -> Path:
    """The temp name beside `path`: hidden, and marked with this process's id (see checkpoint's stale-file clean-up)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove(path: Path) -> None:
    """Delete a file, link or folder if it exists (asking only then: on a read-only file system even deleting a
    missing file fails, and would hide the error that made the write fail)."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp sibling of `path` to write (a file or a folder). When the block ends normally it replaces
    `path` in one rename; if anything fails (including KeyboardInterrupt) it is deleted and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove(tmp)  # nothing left after a successful rename


def fsync_folder(folder: Path) -> None:
    """Persist a rename inside `folder` (POSIX); best effort elsewhere."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
