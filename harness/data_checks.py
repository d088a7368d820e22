"""The data checks before training: every file decoded once, unpaired and unusable files listed (BAD_FILES=error
stops, skip leaves them out), shapes a batch can hold, and the built-in synthetic set made when no data is set.
So a bad file stops a run before step 1, with every problem in one message, not in epoch 37.

Check a folder as training would see it (layout, pairs, sizes, bad files; train.py's --KEY=value settings):
    python -m harness.data_checks ../shared/data/facades/train
    python -m harness.data_checks my_data/train --PREPROCESS=crop --IMAGE_SIZE=256
"""
import contextlib
import hashlib
import io
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image
from tqdm import tqdm

from dataset import CROP_MODES, Pair, PairedImageDataset, build_transform
from harness.errors import ConfigError, DatasetError, exit_on_error
from utils import pixel_limit_error

DEFAULT_DATA_ROOT = Path("data/synthetic")  # config.py's default TRAIN_DIR/VAL_DIR live here
SCAN_PROGRESS_MIN_FILES = 2000  # show a progress bar when scanning folders at least this big
LAYOUT_NAMES = {"A|B": "A|B files (input and target side by side in one file)",
                "A/B": "A/ and B/ folders (files paired by name stem)"}
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files below `folder` (nested folders included), sorted; hidden files and folders ignored."""
    files = []
    for root, dirs, names in os.walk(folder):  # os.walk does not follow symlinked folders: no loops
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in names if not n.startswith(".") and n.lower().endswith(IMG_EXTENSIONS)]
    return sorted(files)


def find_pairs(folder: str | os.PathLike) -> tuple[list[Pair], list[tuple[Path, str]]]:
    """(pairs, unmatched files with why). A/ and B/ sub-folders pair their files by path without extension;
    otherwise every image is an A|B file."""
    folder = Path(folder)
    if not ((folder / "A").is_dir() and (folder / "B").is_dir()):
        return [(p, None) for p in list_images(folder)], []
    stems = [{p.relative_to(folder / side).with_suffix("").as_posix(): p for p in list_images(folder / side)}
             for side in "AB"]
    a, b = stems
    unmatched = [(a[s], f"no B/{s}.* to pair with") for s in a.keys() - b.keys()]
    unmatched += [(b[s], f"no A/{s}.* to pair with") for s in b.keys() - a.keys()]
    return sorted((a[s], b[s]) for s in a.keys() & b.keys()), sorted(unmatched)


SIDES_SWAPPED = (5, 6, 7, 8)  # EXIF orientations that ImageOps.exif_transpose turns by 90 degrees


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as read_image will decode it (EXIF rotation applied), from its header
    only: exif_transpose itself would decode the whole image."""
    return im.size[::-1] if im.getexif().get(ExifTags.Base.Orientation) in SIDES_SWAPPED else im.size


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as it will be decoded (EXIF rotation applied), from its header only."""
    with Image.open(path) as im:
        return oriented_size(im)


def check_image(path: Path, split: bool = True) -> str | None:
    """Why `path` cannot be used (as an A|B pair if `split`, else as one half), or None if it can."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if too_big := pixel_limit_error(im):
                    return f"{too_big} or remove it"
                width, height = oriented_size(im)
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG DCT scaling: fast, and
                im.convert("RGB")                                                # still finds truncation
    except Exception as e:  # noqa: BLE001 - any decoder failure makes the file unusable
        return f"cannot be read as an image ({type(e).__name__}: {e})"
    if split and (width < 2 or height < 1):
        return f"{width}x{height} is too small to split into A|B halves"
    if split and width % 2:
        return f"width {width} is odd, so it cannot be split into two equal A|B halves; crop one column"
    return None


def find_bad(paths: list[Path], split: bool = True, folder: str = "") -> list[tuple[Path, str]]:
    """(file, why) for every unusable file; decodes each once (progress bar on big folders)."""
    iterator = tqdm(paths, desc=f"scanning {folder}", unit="img", leave=False) \
        if len(paths) >= SCAN_PROGRESS_MIN_FILES else paths
    return [(p, why) for p in iterator if (why := check_image(p, split))]


def report(bad: list[tuple[Path, str]], bad_files: str, error_head: str, skip_head: str) -> str:
    """The error text listing `bad` under `error_head` (BAD_FILES=error), or '' after printing it once (skip)."""
    if not bad:
        return ""
    listing = "\n".join(f"  {p}: {why}" for p, why in bad)
    if bad_files == "error":
        return f"{error_head}:\n{listing}"
    print(f"{skip_head}:\n{listing}", file=sys.stderr)
    return ""


def check_layout(folder: Path, flag: str = "") -> None:
    """A folder that exists, holds images, and is clearly one of the two layouts. `flag`: the script's option that
    named it (evaluate.py's --data), else it is a TRAIN_DIR/VAL_DIR setting."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"{flag} {folder} {what}; give a folder of side-by-side A|B images or of A/ + B/ folders"
                           if flag else f"data folder {folder} {what}; set TRAIN_DIR/VAL_DIR in config.py or pass "
                           f"--TRAIN_DIR=... (python download_dataset.py facades fetches the paper's data)")
    has = {side: (folder / side).is_dir() for side in "AB"}
    if has["A"] != has["B"]:
        present, missing = ("A", "B") if has["A"] else ("B", "A")
        raise DatasetError(f"{folder} has a {present}/ folder but no {missing}/ folder: for separate inputs and "
                           f"targets put them in {folder / 'A'} and {folder / 'B'} with matching file names; for "
                           f"side-by-side A|B files rename {folder / present}")
    for side in "AB" if has["A"] else "":
        stems = Counter(p.relative_to(folder / side).with_suffix("").as_posix() for p in list_images(folder / side))
        if dup := [s for s, n in stems.items() if n > 1]:
            raise DatasetError(f"{folder / side} has several files that share the name {dup[0]!r}, so the pairing "
                               f"is ambiguous; keep one of them")
    if not list_images(folder):
        raise DatasetError(f"data folder {folder} has no images ({', '.join(IMG_EXTENSIONS)}); it must hold "
                           f"side-by-side A|B files, or A/ and B/ folders of paired files")


def usable_pairs(folder: str | os.PathLike, cfg: dict[str, Any], bad_files: str | None = None, scan: bool = True
                 ) -> tuple[list[Pair], list[tuple[Path, str]], str]:
    """(usable pairs, skipped files with why, error text) of a folder. The error text lists unpaired and unusable
    files under BAD_FILES=error (empty if none); with skip they are printed once and left out."""
    folder = Path(folder)
    bad_files = bad_files or cfg["BAD_FILES"]
    check_layout(folder)
    pairs, unmatched = find_pairs(folder)
    errors = [report(unmatched, bad_files, f"{len(unmatched)} file(s) in {folder} have no partner of the same name "
                     f"(any extension) in the other of A/ and B/",
                     f"skipping {len(unmatched)} file(s) without a partner in {folder}")]
    bad = []
    if scan:
        files = [p for pair in pairs for p in pair if p is not None]
        bad = find_bad(files, split=bool(pairs) and pairs[0][1] is None, folder=str(folder))
        if cfg["PREPROCESS"] == "crop":  # a crop without resizing: every half must be big enough
            bad_set = {p for p, _ in bad}
            bad += [(a, why) for a, b in pairs if not bad_set & {a, b} and (why := too_small(half_size((a, b)), cfg))]
        errors.append(report(bad, bad_files, f"{len(bad)} of {len(files)} files in {folder} cannot be used",
                             f"skipping {len(bad)} unusable file(s) in {folder}"))
    bad_set = {p for p, _ in bad}
    skipped = unmatched + bad + [(p, "its partner is unusable") for pair in pairs if bad_set & set(pair)
                                 for p in pair if p is not None and p not in bad_set]
    good = [pair for pair in pairs if not bad_set & set(pair)]
    error = "\n".join(e for e in errors if e)
    if not good and not error:
        error = f"every file in {folder} is unusable; nothing to train on"
    return good, skipped, error


def raise_if(errors: list[str]) -> None:
    if any(errors):
        raise DatasetError("\n".join(e for e in errors if e) + "\nFix or remove them, or set BAD_FILES=skip to "
                                                                "train without them.")


def checked_dataset(folder: str | os.PathLike, cfg: dict[str, Any], train: bool, bad_files: str | None = None,
                    scan: bool = True) -> PairedImageDataset:
    """A PairedImageDataset of the usable pairs of `folder`; unusable files raise or are skipped (BAD_FILES)."""
    pairs, skipped, error = usable_pairs(folder, cfg, bad_files, scan)
    raise_if([error])
    return PairedImageDataset(pairs, cfg, train, Path(folder), skipped)


def training_data(cfg: dict[str, Any], rank: int = 0, barrier=lambda: None
                  ) -> tuple[PairedImageDataset, PairedImageDataset]:
    """(train, val) datasets of a config, checked: the bad files of BOTH folders in one message, and shapes that a
    batch of BATCH_SIZE can hold. Makes the synthetic set first if the defaults are set and missing (rank 0)."""
    if rank == 0:
        ensure_default_data(cfg)
    barrier()
    quiet = contextlib.redirect_stderr(io.StringIO()) if rank else contextlib.nullcontext()
    with quiet:  # the scan's progress and the skipped files: shown once, by rank 0
        found = [usable_pairs(cfg[key], cfg) for key in ("TRAIN_DIR", "VAL_DIR")]
    raise_if([error for _, _, error in found])
    datasets = []
    for (pairs, skipped, _), key, train in zip(found, ("TRAIN_DIR", "VAL_DIR"), (True, False)):
        dataset = PairedImageDataset(pairs, cfg, train, Path(cfg[key]), skipped)
        check_batchable(dataset, cfg["BATCH_SIZE"], key)
        datasets.append(dataset)
    return datasets[0], datasets[1]


FINGERPRINT_BYTES = 16 * 1024  # read from each end of a file for its content fingerprint


def data_fingerprint(dataset: PairedImageDataset) -> dict[str, Any]:
    """What a run trains on, cheaply (no decoding): the training folder, its number of images, a hash of their
    file names, and a hash of their contents' identity (content_identity); saved in checkpoints as train_data and
    compared on resume (checkpoint.check_same_data)."""
    folder = Path(dataset.folder)
    paths = [p for pair in dataset.pairs for p in pair if p is not None]
    names = sorted(p.relative_to(folder).as_posix() for p in paths)
    return {"folder": str(folder.resolve()), "images": len(dataset.pairs),
            "names": hashlib.sha256("\n".join(names).encode()).hexdigest()[:16],
            "content": contents_digest(folder, paths)[:16]}


def contents_digest(folder: Path, paths: list[Path]) -> str:
    """sha256 (hex) of the files' paths relative to `folder` and their content_identity, in path order: what they
    hold, without decoding them (a copy with new modification times gives the same digest)."""
    digest = hashlib.sha256()
    for name, path in sorted((p.relative_to(folder).as_posix(), p) for p in paths):
        digest.update(name.encode() + b"\0" + content_identity(path))
    return digest.hexdigest()


def content_identity(path: Path) -> bytes:
    """A file's size and a hash of its first and last FINGERPRINT_BYTES: different images under the same name (the
    paper's datasets are all 1.jpg ... N.jpg) differ in it, while a copy with new modification times does not.
    Reads at most 32 KiB, which the data scan has just brought into the page cache."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(FINGERPRINT_BYTES)
        f.seek(max(len(head), size - FINGERPRINT_BYTES))
        return str(size).encode() + hashlib.sha256(head + b"\0" + f.read()).digest()


def half_size(pair: Pair) -> tuple[int, int]:
    """(width, height) of a pair's halves as read (an A|B file's half; the A file)."""
    width, height = header_size(pair[0])
    return (width // 2, height) if pair[1] is None else (width, height)


def too_small(size: tuple[int, int], cfg: dict[str, Any]) -> str | None:
    """Why a half of this (width, height) cannot be cropped to IMAGE_SIZE, or None."""
    width, height = size
    h, w = build_transform(cfg, train=False).resized_size(height, width)
    if cfg["PREPROCESS"] in CROP_MODES and min(h, w) < cfg["IMAGE_SIZE"]:
        return (f"{width}x{height} is smaller than the {cfg['IMAGE_SIZE']}x{cfg['IMAGE_SIZE']} crop of "
                f"PREPROCESS={cfg['PREPROCESS']}; use a larger image or PREPROCESS=resize_and_crop")
    return None


def output_sizes(dataset: PairedImageDataset) -> Counter:
    """Counter of (height, width) the transform gives, over all pairs (reads each file's header)."""
    return Counter(dataset.transform.output_size(*half_size(p)[::-1]) for p in dataset.pairs)


def check_batchable(dataset: PairedImageDataset, batch_size: int, name: str = "data folder") -> None:
    """An uncropped PREPROCESS keeps each image's shape: refuse a batch size > 1 over images of several sizes."""
    if batch_size == 1 or dataset.transform.preprocess in CROP_MODES:
        return
    sizes = output_sizes(dataset)
    if len(sizes) > 1:
        raise DatasetError(f"{name} {getattr(dataset, 'folder', '')}: PREPROCESS={dataset.transform.preprocess} "
                           f"keeps each image's shape, giving {len(sizes)} sizes ({format_sizes(sizes)}), which "
                           f"cannot share a batch of {batch_size}; use batch size 1, images of one shape, or a "
                           f"cropping PREPROCESS ({', '.join(CROP_MODES)})")


def format_sizes(sizes: Counter, limit: int = 8) -> str:
    """'256x256: 400, 512x256: 6' (width x height: count), most common first."""
    text = ", ".join(f"{w}x{h}: {n}" for (h, w), n in sizes.most_common(limit))
    return text + (f", ... ({len(sizes) - limit} more)" if len(sizes) > limit else "")


def ensure_default_data(cfg: dict[str, Any]) -> None:
    """Generate the built-in synthetic set when the configured folders are the defaults and missing."""
    defaults = (DEFAULT_DATA_ROOT / "train", DEFAULT_DATA_ROOT / "val")
    if (Path(cfg["TRAIN_DIR"]), Path(cfg["VAL_DIR"])) != defaults or DEFAULT_DATA_ROOT.exists():
        return
    from harness import synthetic_data
    print(f"no dataset configured: generating the built-in synthetic labels->photo set in {DEFAULT_DATA_ROOT}/ "
          f"(see README for real data)")
    try:
        synthetic_data.generate(DEFAULT_DATA_ROOT, seed=0)
    except OSError as e:
        raise DatasetError(f"cannot write the synthetic dataset to {DEFAULT_DATA_ROOT}: {e.strerror or e}; run from "
                           f"a writable folder, or set TRAIN_DIR and VAL_DIR to your data") from None


def describe(cfg: dict[str, Any], folder: str) -> str:
    """What a data folder holds, as training sees it: layout, pairs, sizes, bad files, one item."""
    ds = checked_dataset(folder, cfg, train=True, bad_files="skip")
    halves = Counter(half_size(p)[::-1] for p in ds.pairs)
    layout = "A/B" if ds.pairs and ds.pairs[0][1] is not None else "A|B"
    x, y = ds[0]
    lines = [f"folder:   {folder}",
             f"layout:   {LAYOUT_NAMES[layout]}",
             f"pairs:    {len(ds)} usable, {len(ds.skipped)} file(s) skipped",
             f"sizes:    {len(halves)} distinct ({'A' if layout == 'A/B' else 'each half'}, WxH: count): "
             f"{format_sizes(halves)}",
             f"training: PREPROCESS={cfg['PREPROCESS']} IMAGE_SIZE={cfg['IMAGE_SIZE']} LOAD_SIZE={cfg['LOAD_SIZE']} "
             f"JITTER={cfg['JITTER']} -> {format_sizes(output_sizes(ds))}; first pair: input {tuple(x.shape)}, "
             f"target {tuple(y.shape)} ({cfg['DIRECTION']})"]
    if layout == "A/B":
        b_sizes = Counter(header_size(b)[::-1] for _, b in ds.pairs)
        lines.insert(4, f"B sizes:  {format_sizes(b_sizes)} (each B is resized to its A's size)")
    lines.append(f"skipped:  {len(ds.skipped)}" + "".join(f"\n  {p}: {why}" for p, why in ds.skipped))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from harness.configurator import load_config
    argv = sys.argv[1:] if argv is None else argv
    folders = [a for a in argv if not a.startswith("--")]
    if len(folders) > 1 or argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 2

    def run() -> int:
        cfg = load_config([a for a in argv if a.startswith("--")])
        print(describe(cfg, folders[0] if folders else cfg["TRAIN_DIR"]))
        return 0
    return exit_on_error(run)


if __name__ == "__main__":
    sys.exit(main())
