"""One training run per RUN_DIR: rank 0 holds an exclusive lock on RUN_DIR/.lock for the run's whole life.

Two runs on one folder (two terminals, a job started twice) would write every epoch of log.csv twice, two
TensorBoard event files, and a last.pt of whichever saved last. The lock is the kernel's (flock): it goes with the
process, so a run killed with kill -9 leaves nothing stale behind, and the next run takes it at once.
Not run directly; harness/run.py holds it.
"""
import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not guarded
    fcntl = None

from harness.errors import RunDirError

LOCK_NAME = ".lock"
_held: set[int] = set()  # descriptors of the locks this process holds: closed in forked children (see below)


def _close_in_child() -> None:
    """A forked child (a DataLoader worker, a compile worker) shares the lock's open file; closing its copy keeps
    the lock tied to this process alone, so it is released when this process dies, whatever its children do."""
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunDirLock:
    """Holds RUN_DIR/.lock until release(); raises RunDirError naming the folder and the holder's PID if another
    process holds it. Folders made for the lock are removed again on release if the run wrote nothing there."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self.created = [p for p in (run_dir, *run_dir.parents) if not os.path.lexists(p)]
        self.fd = None
        if fcntl is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirError(f"RUN_DIR={run_dir} is in use by another training run (PID {holder}); wait for it "
                                  f"to end or stop it, or choose another RUN_DIR") from None
            if self._still_at_path(fd):
                break
            os.close(fd)  # a releasing run unlinked the file we opened: lock the one at the path now
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        _held.add(fd)

    def _still_at_path(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Unlink the file while still holding it (a run waiting on the old file then retries), then unlock."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
            for folder in self.created:  # deepest first; only if the run left them empty
                folder.rmdir()
        _held.discard(self.fd)
        os.close(self.fd)
        self.fd = None
