"""Checkpoint files that cannot be trusted are refused in one line, before anything uses them:

- files that would run code: every load is weights_only=True (a pickle that names code is refused, and nothing runs),
  in load_checkpoint, load_generator and a training resume; no torch.load in the project says otherwise
- files that lie: weights with NaN/Inf values or negative running variances (torch keeps no checksum), malformed
  official files (a key without a dot, 5 input channels, a missing or wrong-shape tensor), a checkpoint made to
  inflate in memory, and garbage. Each is refused naming the file and what is wrong (the first bad tensor, the key
  and what was expected), in every script that loads it, before black images, n/a metrics or an all-NaN ONNX file
  are written, and (the inflating file) before torch allocates anything. An export whose outputs are NaN fails its
  check.

Bad settings: tests/test_config.py; bad image files: tests/test_bad_data.py; archives that would write outside their
destination: tests/test_download_dataset.py. Uses the session's tiny 32-px run (conftest.tiny_run). CPU, ~1 min.

    python -m pytest tests/test_bad_checkpoints.py -q
"""
import ast
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import export
import predict
import train
from conftest import ROOT, tiny_args, write_pairs
from generator_model import UNetGenerator
from harness import official_format
from harness import onnx_export
from harness.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_generator
from harness.weights import check_archive_size, read_weights_file

OFFICIAL_DEPTH = 6  # a 64-px official U-Net (the official code builds at least 5 levels)


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """A bare official-format generator (latest_net_G.pth's content) with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    G = UNetGenerator(3, 3, 8, OFFICIAL_DEPTH, "batch", True, "official")
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    return official_format.official_state_dict(G)


def scripts_refuse(checkpoint: Path, tmp_path: Path, capsys, size: int = 32, direction: bool = False) -> list[str]:
    """What predict.py, evaluate.py and export.py print when given `checkpoint` (each must exit 1 in one line and
    write nothing); returns their error lines."""
    write_pairs(tmp_path / "pairs", 2, size=size)
    extra = ["--direction", "BtoA"] if direction else []
    codes = [predict.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "pairs"), "--output",
                           str(tmp_path / "predicted"), *extra]),
             evaluate.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "pairs"), "--output",
                            str(tmp_path / "evaluated"), *extra]),
             export.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "g.onnx")])]
    lines = capsys.readouterr().err.strip().splitlines()
    assert codes == [1, 1, 1] and len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert not any((tmp_path / name).exists() for name in ("predicted", "evaluated", "g.onnx"))
    return lines


# ----------------------------------------------------------------------------- files that would run code

class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """(a .pt file shaped like a checkpoint whose unpickling would run code, the marker it would create)"""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"generator": Payload(marker), "generator_hparams": {}, "config": {}}, path)
    # the payload is real: an unsafe load does run it (so the assertions below mean something)
    probe = tmp_path / "probe_marker"
    torch.save({"x": Payload(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()
    return path, marker


def test_load_checkpoint_refuses_code(evil):
    path, marker = evil
    with pytest.raises(CheckpointError, match="refused on purpose"):
        load_checkpoint(path)
    assert not marker.exists()


def test_load_generator_refuses_code(evil):
    path, marker = evil
    with pytest.raises(CheckpointError):
        load_generator(path)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["RESUME=path", "auto-resume of RUN_DIR"])
def test_training_resume_refuses_code(evil, tiny_data, tmp_path, how):
    path, marker = evil
    run_dir = tmp_path / "run"
    if how == "RESUME=path":
        args = tiny_args(tiny_data, run_dir, RESUME=path)
    else:
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "last.pt").write_bytes(path.read_bytes())
        args = tiny_args(tiny_data, run_dir)
    with pytest.raises(CheckpointError):
        train.main(args)
    assert not marker.exists()
    assert not (run_dir / "log.csv").exists()  # refused before anything was written


def test_checkpoints_are_loaded_weights_only(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"generator": {}, "generator_hparams": {}, "payload": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_generator(path)
    assert not marker.exists()
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pix2pix checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_every_torch_load_in_the_project_is_weights_only():
    """Static guard for current and future scripts (predict.py, evaluate.py, ...) and the harness: any torch.load
    call must pass weights_only=True literally."""
    offenders = []
    for path in sorted([*ROOT.glob("*.py"), *ROOT.glob("harness/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "loads", "load") and getattr(getattr(node.func, "value", None), "id", "") == "pickle":
                offenders.append(f"{path.name}:{node.lineno} (pickle)")
    assert offenders == []


# ----------------------------------------------------------------------------- NaN / Inf weights

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_stop_predict_evaluate_export_and_the_demo_naming_the_tensor(tiny_run, tmp_path, capsys,
                                                                                        monkeypatch, value):
    """A generator.pt with one poisoned tensor loaded (black images, n/a metrics, exit 0); now each script refuses
    it, naming the file and the tensor."""
    ckpt = torch.load(tiny_run / "run" / "generator.pt", weights_only=True)
    ckpt["generator"]["decoder.1.0.weight"][0, 0, 0, 0] = value
    bad = tmp_path / "generator.pt"
    atomic_save(ckpt, bad)
    expected = (f"error: {bad}: tensor 'generator.decoder.1.0.weight' holds NaN/Inf values (1 of "
                f"{ckpt['generator']['decoder.1.0.weight'].numel()}); the file is damaged or was saved from a diverged "
                f"run. Use another checkpoint (a run keeps checkpoints/best.pt and epoch_*.pt) or retrain")
    assert scripts_refuse(bad, tmp_path, capsys) == [expected] * 3
    import demo
    monkeypatch.setattr(demo, "build_app", lambda *args, **kwargs: pytest.fail("the demo served a damaged file"))
    assert demo.main(["--checkpoint", str(bad)]) == 1
    assert capsys.readouterr().err == expected + "\n"


def test_a_negative_running_variance_is_refused(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run / "run" / "generator.pt", weights_only=True)
    ckpt["generator"]["encoder.1.1.running_var"][2] = -0.5
    atomic_save(ckpt, tmp_path / "generator.pt")
    with pytest.raises(CheckpointError) as e:
        load_generator(tmp_path / "generator.pt")
    assert str(e.value) == (f"{tmp_path / 'generator.pt'}: tensor 'generator.encoder.1.1.running_var' holds negative "
                            f"running variances (1 of 16), which no batch norm produces; the file is damaged")


def test_resuming_a_checkpoint_with_inf_in_its_optimiser_state_is_refused(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(tiny_run / "run" / "checkpoints" / "last.pt", weights_only=True)
    ckpt["opt_D"]["state"][0]["exp_avg_sq"].fill_(float("inf"))
    atomic_save(ckpt, last)
    with pytest.raises(CheckpointError, match=rf"^{last}: tensor 'opt_D.state.0.exp_avg_sq' holds NaN/Inf values"):
        train.main(tiny_args(tiny_run / "data", run_dir, N_EPOCHS=3))
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]


@pytest.mark.parametrize("damage, message", [
    ("nan weight", "tensor 'model.model.1.model.1.weight' holds NaN/Inf values (1 of 2048)"),
    ("nan running_var", "tensor 'model.model.1.model.2.running_var' holds NaN/Inf values (1 of 16)"),
    ("negative running_var", "tensor 'model.model.1.model.2.running_var' holds negative running variances (1 of 16)"),
])
def test_official_files_with_bad_values_are_refused(official_state, tmp_path, damage, message):
    state = {k: v.clone() for k, v in official_state.items()}
    key = "model.model.1.model.1.weight" if damage == "nan weight" else "model.model.1.model.2.running_var"
    state[key].view(-1)[0] = -1.0 if damage.startswith("negative") else float("nan")
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        load_generator(path)
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


class NaNSession:
    """Stands in for onnxruntime on an export whose outputs are all NaN."""

    def run(self, names, feeds):
        x = next(iter(feeds.values()))
        return [np.full((x.shape[0], 3, *x.shape[2:]), np.nan, np.float32)]


def test_the_export_check_fails_on_nan_outputs(tiny_run, tmp_path, capsys, monkeypatch):
    """An ONNX file computing NaN everywhere passed its check ("max abs difference 0.00e+00"): max(worst, nan)
    keeps worst. NaN now counts as a mismatch; the file is not written."""
    G = load_generator(tiny_run / "run" / "generator.pt", mode="eval")
    assert onnx_export.max_difference(G, NaNSession(), onnx_export.check_shapes(G)) == float("inf")
    monkeypatch.setattr(onnx_export, "onnx_session", lambda path, threads=0: NaNSession())
    out = tmp_path / "g.onnx"
    assert export.main(["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {out}: onnxruntime differs from PyTorch by up to inf (> 0.0001; NaN or Inf outputs); the " \
                  f"file was not written\n"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- malformed official files

def malformed(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    state = dict(state)
    if how == "a key without a dot":
        state["optimizer_state"] = torch.zeros(3)
    elif how == "5 input channels":
        state["model.model.0.weight"] = torch.zeros(8, 5, 4, 4)
    elif how == "a missing tensor":
        del state["model.model.1.model.2.running_var"]
    elif how == "a wrong-shape tensor":
        state["model.model.1.model.1.weight"] = torch.zeros(16, 8, 3, 3)
    return state


@pytest.mark.parametrize("how, message", [
    ("a key without a dot", "unexpected tensor 'optimizer_state': not a layer of an official U-Net of depth 6 (keys "
                            "like 'model.model.1.model.1.weight')"),
    ("5 input channels", "tensor 'model.model.0.weight' has shape (8, 5, 4, 4); an official U-Net's is (ngf, 1 or 3 "
                         "input channels, 4, 4)"),
    ("a missing tensor", "weights do not fit an official U-Net (ngf 8, depth 6, batch norm): tensor "
                         "'model.model.1.model.2.running_var' is missing; expected one of shape (16,)"),
    ("a wrong-shape tensor", "weights do not fit an official U-Net (ngf 8, depth 6, batch norm): tensor "
                             "'model.model.1.model.1.weight' has shape (16, 8, 3, 3); expected (16, 8, 4, 4)"),
])
def test_malformed_official_files_are_refused_naming_the_key(official_state, tmp_path, how, message):
    """They gave a ValueError traceback (a key without a dot), loaded and then crashed mid-run (5 input channels),
    or stopped at "Error(s) in loading state_dict for UNetGenerator:" without the key."""
    path = tmp_path / "latest_net_G.pth"
    torch.save(malformed(official_state, how), path)
    with pytest.raises(CheckpointError) as e:
        load_generator(path)
    assert str(e.value) == f"{path}: {message}"


@pytest.mark.parametrize("how", ["a key without a dot", "5 input channels"])
def test_every_script_refuses_a_malformed_official_file_in_one_line(official_state, tmp_path, capsys, how):
    import demo
    path = tmp_path / "latest_net_G.pth"
    torch.save(malformed(official_state, how), path)
    key = "'optimizer_state'" if how == "a key without a dot" else "'model.model.0.weight'"
    lines = scripts_refuse(path, tmp_path, capsys, size=2 ** OFFICIAL_DEPTH, direction=True)
    assert demo.main(["--checkpoint", str(path), "--port", "0"]) == 1
    lines += capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith(f"error: {path}: ") and key in line for line in lines), lines


def test_our_own_generator_with_a_wrong_shape_tensor_is_named(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run / "run" / "generator.pt", weights_only=True)
    ckpt["generator"]["decoder.0.0.weight"] = ckpt["generator"]["decoder.0.0.weight"][:, :4]
    atomic_save(ckpt, tmp_path / "generator.pt")
    with pytest.raises(CheckpointError) as e:
        load_generator(tmp_path / "generator.pt")
    assert str(e.value) == (f"{tmp_path / 'generator.pt'}: its generator weights do not match its hyperparameters: "
                            f"tensor 'decoder.0.0.weight' has shape (64, 4, 4, 4); expected (64, 64, 4, 4)")


# ----------------------------------------------------------------------------- a file made to inflate

def inflating_copy(source: Path, dest: Path, inflated_mib: int) -> None:
    """`source` (a torch.save zip archive) with its largest tensor record replaced by `inflated_mib` MiB of zeros,
    deflated: a file of about the same size on disk that would take that much memory to load."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(dest, "w") as new:
        records = old.infolist()
        largest = max((r for r in records if "/data/" in r.filename), key=lambda r: r.file_size)
        for record in records:
            if record is not largest:
                new.writestr(record, old.read(record))
                continue
            deflated = zipfile.ZipInfo(record.filename)
            deflated.compress_type = zipfile.ZIP_DEFLATED
            with new.open(deflated, "w", force_zip64=True) as out:
                zeros = bytes(2 ** 20)
                for _ in range(inflated_mib):
                    out.write(zeros)
    with zipfile.ZipFile(dest) as archive:  # it really is deflated in the file
        assert archive.getinfo(largest.filename).compress_type == zipfile.ZIP_DEFLATED


def test_a_checkpoint_made_to_inflate_is_refused_before_torch_reads_it(tiny_run, tmp_path, monkeypatch, capsys):
    """A few MB on disk that would inflate to gigabytes (here 96 MiB): refused from the archive's directory, in
    one line naming the file, before torch.load allocates anything; ordinary checkpoints pass the check."""
    bomb = tmp_path / "generator.pt"
    inflating_copy(tiny_run / "run" / "generator.pt", bomb, inflated_mib=96)
    assert bomb.stat().st_size < 4 * 2 ** 20
    for ordinary in ("generator.pt", "checkpoints/last.pt"):
        check_archive_size(tiny_run / "run" / ordinary)

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called on the inflating file")
    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(CheckpointError) as e:
        load_generator(bomb)
    assert str(e.value).startswith(f"{bomb} would inflate to 0.09 GiB in memory from ") and str(e.value).endswith(
        "MiB on disk: torch.save stores tensors uncompressed, so this file was made to inflate; it is refused before "
        "loading")
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    assert predict.main(["--checkpoint", str(bomb), "--input", str(image), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {bomb} would inflate to ")


# ----------------------------------------------------------------------------- garbage

@pytest.mark.parametrize("content", [b"garbage", bytes(100), pickle.dumps([1, 2, 3], protocol=2)[:-1] + b"Z"])
def test_a_garbage_file_is_refused_without_torchs_advice_to_load_it_unsafely(tmp_path, content):
    """torch's message for a file it refuses advises loading it again with weights_only=False, which would run
    whatever code a hostile file names: the message keeps torch's reason and drops the advice."""
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        read_weights_file(path)
    message = str(e.value)
    assert message.startswith(f"{path} is not a loadable pix2pix checkpoint (UnpicklingError")
    assert "weights_only" not in message and "\n" not in message, message
