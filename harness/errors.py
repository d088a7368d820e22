"""Every error this project reports to a user, and its exit code: the one place to learn which is which.

    2  the command is wrong: an unknown or invalid setting or argument (fix the command line or config.py)
    1  something found at run time: data, a checkpoint, the run folder, a diverged loss, a download, an export,
     the Inception weights of FID/KID
  130  interrupted by Ctrl-C before anything could be saved

Each message names the file or setting, says what is wrong and how to fix it; `exit_on_error` prints it as one
line, `error: ...`, instead of a traceback.
"""
import argparse
import sys
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


def exit_on_error(main: Callable[[], int], interrupted: str = "interrupted by Ctrl-C") -> int:
    """Run a script's main(); a known error becomes one `error: ...` line on stderr and its exit code."""
    try:
        return main()
    except Pix2PixError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system at run time: a file that vanished or changed, a full disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"\n{e.args[0] if e.args else interrupted}", file=sys.stderr)
        return 130


def path_argument(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type for a path option: an empty value (an unset shell variable) is an argument error (exit 2),
    not the current folder."""
    def parse(text: str) -> Any:
        if not text.strip():
            raise argparse.ArgumentTypeError("empty path (an unset shell variable?); give a file or folder")
        return kind(text)
    parse.__name__ = "path"  # argparse names the type in its messages
    return parse
