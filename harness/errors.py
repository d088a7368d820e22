"""Every error this project reports to a user, and its exit code: the one place to learn which is which.

    2  the command is wrong: an unknown or invalid setting or argument (fix the command line or config.py)
    1  something found at run time: data, a checkpoint, the run folder, a diverged loss, a download, an export,
     the Inception weights of FID/KID
  130  interrupted by Ctrl-C before anything could be saved
  143  stopped by SIGTERM before anything could be saved (128 + SIGTERM, as a process the signal ends)

Each message names the file or setting, says what is wrong and how to fix it; `exit_on_error` prints it as one
line, `error: ...`, instead of a traceback.
"""
import argparse
import signal
import sys
import threading
from typing import Any, Callable


class Pix2PixError(Exception):
    """An error a user can fix; its message is the whole story."""
    exit_code = 1


class ConfigError(Pix2PixError, ValueError):
    """A setting or argument is unknown or has a bad value."""
    exit_code = 2


class DatasetError(Pix2PixError, ValueError):
    """A data folder or file cannot be used."""


class CheckpointError(Pix2PixError, RuntimeError):
    """A checkpoint is missing, unreadable, damaged or does not fit the requested run."""


class SegmenterError(CheckpointError):
    """The FCN-score's saved segmenter file is unreadable, damaged, or was made for other data or settings."""


class OfficialFormatError(CheckpointError):
    """A file is not a generator of the official code, or a generator cannot be written in its format."""


class RunDirError(Pix2PixError, RuntimeError):
    """RUN_DIR cannot hold the run (not a folder, not writable, full) or another run holds it."""


class NonFiniteLoss(Pix2PixError, RuntimeError):
    """A loss became NaN/Inf (ON_NAN=stop): training stopped before any poisoned weights were saved."""


class ExportError(Pix2PixError, RuntimeError):
    """An exported file does not compute what the PyTorch generator computes, or cannot be written."""


class DownloadError(Pix2PixError, RuntimeError):
    """A download (a dataset, a pretrained generator) failed, was cut off, or is not what it should be."""


class InceptionWeightsError(Pix2PixError, RuntimeError):
    """FID/KID's Inception-v3 weights file is missing or is not that file (harness/fid.py says where it comes from)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM where a Ctrl-C would end the process at once (see exit_on_error): the same clean-up and one line,
    exit 143."""
    exit_code = 128 + 15


def exit_on_error(main: Callable[[], int], interrupted: str = "interrupted by Ctrl-C",
                  terminated: str = "stopped by SIGTERM") -> int:
    """Run a script's main(); a known error becomes one `error: ...` line on stderr and its exit code. A SIGTERM
    ends it as a Ctrl-C does (the same clean-up, one line, exit 143) wherever main() has not taken the signal
    itself (train.py does while it trains)."""
    previous = signal.getsignal(signal.SIGTERM)
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        signal.signal(signal.SIGTERM, lambda signum, frame: raise_terminated(terminated))
    try:
        return main()
    except Pix2PixError as e:
        print(f"error: {message_of(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system at run time: a file that vanished or changed, a full disk
        print(f"error: {message_of(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"\n{e.args[0] if e.args else interrupted}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def message_of(error: Exception) -> str:
    """The error's own message. Raised in a DataLoader worker, torch re-raises it in the main process as the same
    type with the worker's whole traceback as its message ("Caught OSError in DataLoader worker process 0. Original
    Traceback ..."): its last line holds the message."""
    text = str(error)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "OSError: <the message>"
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def raise_terminated(message: str) -> None:
    raise Terminated(message)


def path_argument(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type for a path option: an empty value (an unset shell variable) is an argument error (exit 2),
    not the current folder."""
    def parse(text: str) -> Any:
        if not text.strip():
            raise argparse.ArgumentTypeError("empty path (an unset shell variable?); give a file or folder")
        return kind(text)
    parse.__name__ = "path"  # argparse names the type in its messages
    return parse
