"""
Download and safely extract an official pix2pix dataset, then print the train.py command; or download one of the
official code's pretrained generators, then print the predict.py command.

    python download_dataset.py facades                 # -> data/facades/{train,val,test}
    python download_dataset.py maps --output data/       # also: edges2shoes, edges2handbags, night2day
    python download_dataset.py cityscapes              # prints how to prepare it (not redistributable)
    python download_dataset.py --pretrained facades_label2photo   # -> pretrained/facades_label2photo.pth
                                   # also: sat2map, map2sat, edges2shoes, day2night

A pretrained generator is downloaded to <dest>/<name>.pth.part (resumed like an archive), checked (it must load as
a generator of the official code: harness/official_format.py; an HTML error page or a truncated file is refused
and deleted) and only then renamed to <name>.pth, where predict.py and evaluate.py load it as it is.

The archive is downloaded to <dest>/<name>.tar.gz.part; re-running after a failure resumes
it with an HTTP Range request. Once its size matches Content-Length it is renamed to
<name>.tar.gz, extracted into a temporary folder inside <dest> and moved to <dest>/<name>
only if extraction fully succeeded. The .tar.gz is then deleted (edges2shoes is ~2 GB).
An archive you put at <dest>/<name>.tar.gz yourself is extracted without any download.
"""
import argparse
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import Any, Callable

from tqdm import tqdm

from harness.errors import ConfigError, DownloadError, exit_on_error

BASE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets"
DATASETS = ["facades", "maps", "edges2shoes", "edges2handbags", "night2day"]
# the official code's scripts/download_pix2pix_model.sh: its pretrained PyTorch generators (unet_256)
MODELS_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch"
PRETRAINED = {  # name: what it translates, and which half of that dataset's A|B files is its input
    "facades_label2photo": ("facades label maps to photos", "BtoA"),
    "sat2map": ("aerial photos to maps", "AtoB"),
    "map2sat": ("maps to aerial photos", "BtoA"),
    "edges2shoes": ("edge maps to photos of shoes", "AtoB"),
    "day2night": ("daytime to night-time photos (night2day)", "BtoA"),
}
CHUNK = 1 << 16  # bytes per read
TIMEOUT = 30  # seconds without progress before giving up

CITYSCAPES_HELP = """\
cityscapes is not redistributable, so it cannot be downloaded by this script. To prepare it:
  1. register at https://www.cityscapes-dataset.com and download
     gtFine_trainvaltest.zip (labels) and leftImg8bit_trainvaltest.zip (photos)
  2. combine each photo and its color label side by side into one A|B image, e.g. with the
     official pix2pix repo's datasets/prepare_cityscapes_dataset.py:
       python datasets/prepare_cityscapes_dataset.py --gtFine_dir ./gtFine \\
         --leftImg8bit_dir ./leftImg8bit --output_dir {dest}/cityscapes
  3. python train.py --PRESET=cityscapes --TRAIN_DIR={dest}/cityscapes/train --VAL_DIR={dest}/cityscapes/val"""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the destination (or is a device file): nothing is extracted."""


def download(url: str, part: str, final: str, check: Callable[[str], Any] | None = None) -> None:
    """Download url to `final` through `part`, resuming an existing `part` with a Range request. `check(part)`
    may refuse the complete download with a DownloadError: `part` is then deleted and `final` never written."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise
        e.close()  # 416: the server can't continue our .part (e.g. file changed); start over
        os.remove(part)
        return download(url, part, final, check)
    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:  # partial content: append to what we have
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m[1]) != have:
                raise DownloadError(f"server resumed at an unexpected offset ({m and m[1]}, have {have})")
            total = int(m[2]) if m[2] != "*" else (have + int(length) if length else None)
            print(f"resuming {part} from {have} bytes")
        else:  # 200: the server ignored the Range header, so restart from zero
            if have:
                print("server does not support resuming; restarting download")
            have, total = 0, int(length) if length else None
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=os.path.basename(final),
        ) as bar:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = os.path.getsize(part)
    if total is not None and size != total:  # a dropped connection just ends the stream early
        raise DownloadError(f"connection closed after {size} of {total} bytes")
    if check is not None:
        try:
            check(part)
        except DownloadError:
            os.remove(part)  # complete but wrong: resuming it could only make it longer
            raise
    os.replace(part, final)


def check_member(m: tarfile.TarInfo, root: str) -> None:
    """Raise UnsafeArchiveError if extracting `m` under `root` could write outside it."""
    def refuse(why: str) -> None:
        raise UnsafeArchiveError(f"refusing unsafe archive member {m.name!r}: {why}")

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.normpath(path)]) == root

    if os.path.isabs(m.name) or m.name.startswith(("/", "\\")):
        refuse("absolute path")
    if ".." in re.split(r"[/\\]", m.name):
        refuse("'..' path component")
    target = os.path.join(root, m.name)
    if not inside(target):
        refuse("path outside the destination")
    if m.issym():  # symlink targets are relative to the link's own folder
        if os.path.isabs(m.linkname) or not inside(os.path.join(os.path.dirname(target), m.linkname)):
            refuse(f"symlink pointing outside the destination ({m.linkname!r})")
    elif m.islnk():  # hardlink targets are relative to the archive root
        if os.path.isabs(m.linkname) or not inside(os.path.join(root, m.linkname)):
            refuse(f"hardlink pointing outside the destination ({m.linkname!r})")
    elif not (m.isfile() or m.isdir()):
        refuse("device file, fifo or other special file")


def extract(archive: str, dest: str, name: str) -> str:
    """Extract into a temp folder inside dest, then move it to dest/name only if all succeeded."""
    out = os.path.join(dest, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.extracting-", dir=dest)
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; it may become the dataset folder itself
    try:
        root = os.path.realpath(tmp)
        with tarfile.open(archive, "r:*") as tar:
            for m in tar.getmembers():  # check everything before writing anything
                check_member(m, root)
            if hasattr(tarfile, "data_filter"):  # second line of defence (Python 3.11.4+)
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        # the official archives hold a single top-level <name>/ folder; unwrap it
        entries = os.listdir(tmp)
        top = os.path.join(tmp, entries[0]) if len(entries) == 1 else tmp
        if not os.path.isdir(top) or os.path.islink(top):
            top = tmp
        os.replace(top, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op if tmp itself was moved
    return out


def train_command(dest: str, name: str) -> str:
    """The train.py command for an extracted dataset; VAL_DIR is val/ if present, else test/."""
    root = os.path.join(dest, name)
    cmd = f"python train.py --PRESET={name} --TRAIN_DIR={os.path.join(root, 'train')}"
    val = next((s for s in ("val", "test") if os.path.isdir(os.path.join(root, s))), None)
    return cmd + (f" --VAL_DIR={os.path.join(root, val)}" if val else "")


def official_generator(path: str) -> str:
    """What `path` holds if it loads as a generator of the official pix2pix code (harness/official_format.py), in a
    few words; else a DownloadError saying what it is instead (a web page, a truncated or foreign file)."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head[:1] == b"<":  # an HTML error or login page served with status 200
        raise DownloadError(f"the server sent a web page, not a weights file (it starts {head[:24]!r})")
    from harness.weights import read_weights_file
    from harness.errors import CheckpointError
    from harness.official_format import describe, generator_from_official, is_official_unet, is_state_dict
    try:
        state = read_weights_file(path)
        if not is_official_unet(state):
            raise CheckpointError(f"it is {describe(state)}" if is_state_dict(state) else
                                  "it loads, but holds no generator of the official code")
        hp = generator_from_official(state).hparams
    except CheckpointError as e:
        raise DownloadError(f"the file is not an official pix2pix generator: {e}") from None
    return f"U-Net of {hp['num_downs']} levels, ngf {hp['base_channels']}, {hp['norm']} norm"


def make_folder(path: str) -> None:
    """--output's folder, made if missing; a path that cannot be one is an argument error naming it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a file there or above it, no permission, a read-only disk
        raise ConfigError(f"--output {path}: cannot make a folder there ({e.strerror}); give a writable folder") from None


def predict_command(path: str) -> str:
    return f"python predict.py --checkpoint {path} --input your_images/ --output results/"


def fetch_pretrained(name: str, dest: str, url: str | None) -> int:
    """Download, check and place one official pretrained generator, then say how to use it."""
    final = os.path.join(dest, f"{name}.pth")
    what, direction = PRETRAINED[name]
    usage = (f"To translate your images ({what}):\n  {predict_command(final)}\n"
             f"On A|B files of its dataset (predict.py --paired, evaluate.py) add --direction {direction}.")
    if os.path.exists(final):
        print(f"{final} already exists; not downloading again. {usage}")
        return 0
    make_folder(dest)
    url = url or f"{MODELS_URL}/{name}.pth"
    part = final + ".part"
    print(f"downloading {url}")
    try:
        download(url, part, final, check=official_generator)
    except (OSError, http.client.HTTPException, DownloadError) as e:  # URLError/timeouts are OSError
        kept = f"; {part} is kept and re-running resumes it" if os.path.exists(part) else "; nothing was saved"
        print(f"error: download of {url} failed: {e}{kept}", file=sys.stderr)
        return 1
    print(f"saved {final}: the official {name} generator ({official_generator(final)}). {usage}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Download and extract a pix2pix dataset, or a pretrained generator.")
    p.add_argument("name", nargs="?", choices=DATASETS + ["cityscapes"], help="the dataset")
    p.add_argument("--pretrained", metavar="MODEL", default=None,
                   help=f"instead, an official pretrained generator: {', '.join(PRETRAINED)}")
    p.add_argument("--output", "--dest", default=None,
                   help="folder to put it in (default: data, or pretrained with --pretrained); --dest is its former "
                        "name")
    p.add_argument("--url", default=None,
                   help="override the URL (default: BASE_URL/<name>.tar.gz, MODELS_URL/<model>.pth)")
    args = p.parse_args(argv)

    if args.pretrained is not None:
        if args.name:
            p.error("give a dataset name or --pretrained MODEL, not both")
        if args.pretrained not in PRETRAINED:
            print(f"error: unknown pretrained model {args.pretrained!r}; the official ones are "
                  f"{', '.join(PRETRAINED)}", file=sys.stderr)
            return 2
        return fetch_pretrained(args.pretrained, args.output or "pretrained", args.url)
    if args.name is None:
        p.error(f"name a dataset ({', '.join(DATASETS)}, cityscapes) or a model with --pretrained")
    args.output = args.output or "data"
    if args.name == "cityscapes":
        print(CITYSCAPES_HELP.format(dest=args.output.rstrip("/") or "."))
        return 0
    out = os.path.join(args.output, args.name)
    if os.path.isdir(out):
        print(f"{out} already exists; not downloading again. To train:\n  {train_command(args.output, args.name)}")
        return 0

    make_folder(args.output)
    url = args.url or f"{BASE_URL}/{args.name}.tar.gz"
    archive = os.path.join(args.output, f"{args.name}.tar.gz")
    part = archive + ".part"
    if os.path.exists(archive):
        print(f"found {archive}; extracting it without downloading")
    else:
        print(f"downloading {url}")
        try:
            download(url, part, archive)
        except (OSError, http.client.HTTPException, DownloadError) as e:  # URLError/timeouts are OSError
            print(f"error: download failed: {e}\n"
                  f"  fetch it by hand from: {url}\n"
                  f"  and save it as:        {archive}\n"
                  f"  then re-run this command: an archive already there is extracted without downloading.",
                  file=sys.stderr)
            if os.path.exists(part):
                print(f"  (partial download kept in {part}; re-running resumes it)", file=sys.stderr)
            return 1

    try:
        extract(archive, args.output, args.name)
    except UnsafeArchiveError as e:
        print(f"error: {e}\n  nothing was extracted; {archive} was left for inspection.", file=sys.stderr)
        return 1
    except (tarfile.TarError, OSError, EOFError) as e:  # corrupt or truncated archive, disk full, ...
        print(f"error: could not extract {archive}: {e}\n"
              f"  nothing was written to {out}; delete the archive and re-run to download it again.",
              file=sys.stderr)
        return 1
    os.remove(archive)  # the extracted folder is what we keep
    if not os.path.isdir(os.path.join(out, "train")):
        print(f"warning: no train/ folder in {out}; check its layout", file=sys.stderr)
    print(f"dataset ready in {out}. To train:\n  {train_command(args.output, args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_error(main, interrupted="interrupted by Ctrl-C: a partial download is kept as .part, and "
                                             "re-running the command resumes it"))
