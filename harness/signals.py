"""Stopping a run cleanly: SIGINT/SIGTERM become a flag that the run checks after each step (finish the step,
save, print how to resume), every rank agreeing on it; DataLoader workers leave those signals to the main process.

Not run directly; harness/run.py uses it.
"""
import shlex
import signal
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader


class StopRequest:
    """SIGINT/SIGTERM set `signum`; the loop finishes its step, saves and exits. A second Ctrl-C aborts.
    release() gives the signals their previous handlers back: once the loop has ended, nothing would check the
    flag, and a SIGTERM must still end the process."""

    def __init__(self, announce: bool = True, install: bool = True):
        self.signum, self.announce = 0, announce  # announce: False on torchrun's other ranks (one message)
        self.interrupted = False  # a Ctrl-C came: the next one aborts
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)} \
            if install else {}

    def release(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt("aborted by a second Ctrl-C: nothing saved after the last checkpoint")
            self.interrupted = True
        self.signum = max(self.signum, signum)  # a SIGTERM stays one (exit 143) when a Ctrl-C follows it
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                  f"(Ctrl-C again to abort without saving)", file=sys.stderr)

    def exit_code(self) -> int:
        return 0 if self.signum == signal.SIGINT else 128 + self.signum


def agree_on_stop(signum: int, save_due: bool, world_size: int, device: torch.device) -> tuple[int, bool]:
    """(stop signal, timed save due) as every rank sees them: the largest signal number any rank caught, and
    whether rank 0's clock says a save is due. Under torchrun one small all-reduce, which waits for the device
    (so train.py agrees on logging steps and epoch ends there); in a single process its own values."""
    if world_size == 1:
        return signum, save_due
    flags = torch.tensor([signum, int(save_due)], dtype=torch.int64, device=device)  # nccl needs a CUDA tensor
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    signum, due = flags.tolist()
    return signum, bool(due)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process, which finishes its step and saves: a Ctrl-C
    or a scheduler's SIGTERM to the whole process group must not kill them (or make them print) mid-batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def shut_down_workers(loader: DataLoader) -> None:
    """Stop a DataLoader's persistent worker processes now, on every way out of training. Left to garbage
    collection, a loader that outlives the run (a reference cycle, a traceback holding its frame) keeps them
    until interpreter exit, where multiprocessing SIGTERMs them - ignored, see ignore_stop_signals - and then
    waits for them forever. Shutting them down sends each a stop message it obeys."""
    iterator, loader._iterator = getattr(loader, "_iterator", None), None
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


def resume_command(cfg: dict, args: list[str], world_size: int) -> str:
    """The command that continues this run: the script as it was invoked (a path from another folder stays that
    path), its overrides shell-quoted, with RESUME pointed at its own last.pt."""
    args = [str(a) for a in args if not str(a).startswith("--RESUME=")]
    script = sys.argv[0] if sys.argv[0].endswith(".py") else "train.py"
    launcher = "python" if world_size == 1 else "torchrun <the same torchrun options>"
    return f"{launcher} {shlex.quote(script)} {shlex.join(args + ([] if cfg['RESUME'] == 'auto' else ['--RESUME=auto']))}"
