"""Untrusted files and settings never run code, and bad settings fail fast with a one-line error.

- checkpoints are loaded with weights_only=True everywhere (a pickle that would run code is refused)
- --KEY=value overrides are parsed as literals, never evaluated
- config validation: one line naming the setting and the valid values; `python train.py` exits 2
- download_dataset.py never writes outside its destination: tests/test_download_dataset.py
  (test_malicious_archive_is_refused), not repeated here

    python -m pytest tests/test_untrusted.py -q
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from conftest import ROOT, tiny_args
from harness.checkpoint import CheckpointError, load_checkpoint, load_generator
from harness.configurator import ConfigError, load_config

ENV = dict(os.environ, OMP_NUM_THREADS="1")




# ----------------------------------------------------------------------------- malicious checkpoints

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


def test_every_torch_load_in_the_project_is_weights_only():
    """Static guard for current and future scripts (predict.py, evaluate.py, ...): any torch.load call must
    pass weights_only=True literally."""
    offenders = []
    for path in sorted(ROOT.glob("*.py")):
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


# ----------------------------------------------------------------------------- overrides are never code

INJECTIONS = ["__import__('os').system('touch {m}')", "exec(\"open('{m}','w')\")", "[open('{m}', 'w')]",
              "(lambda: open('{m}','w'))()"]


@pytest.mark.parametrize("key", ["LEARNING_RATE", "BATCH_SIZE", "MIRROR", "SEED"])
@pytest.mark.parametrize("template", INJECTIONS)
def test_overrides_are_parsed_never_evaluated(tmp_path, key, template):
    marker = tmp_path / "MARKER"
    with pytest.raises(ConfigError) as e:
        load_config([f"--{key}={template.format(m=marker)}"])
    assert key in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_string_settings_are_taken_literally(tmp_path):
    marker = tmp_path / "MARKER"
    text = f"__import__('os').system('touch {marker}')"
    assert load_config([f"--RUN_DIR={text}"])["RUN_DIR"] == text
    assert not marker.exists()


# ----------------------------------------------------------------------------- validation, in-process

@pytest.mark.parametrize("override,names", [
    ("--IMAGE_SIZE=100", ["IMAGE_SIZE=100", "2^NUM_DOWNS=128", "multiple of 128"]),
    ("--IMAGE_SIZE=64 --NUM_DOWNS=8", ["IMAGE_SIZE=64", "2^NUM_DOWNS=256", "multiple of 256"]),
    ("--LOAD_SIZE=200", ["LOAD_SIZE=200", "IMAGE_SIZE=256", "LOAD_SIZE >= IMAGE_SIZE"]),
    ("--LEARNING_RATE=0", ["LEARNING_RATE=0.0", "> 0"]),
    ("--LEARNING_RATE=-2e-4", ["LEARNING_RATE=-0.0002", "> 0"]),
    ("--BATCH_SIZE=0", ["BATCH_SIZE=0", "> 0"]),
    ("--BATCH_SIZE=-4", ["BATCH_SIZE=-4", "> 0"]),
    ("--BATCH_SIZE=2.5", ["BATCH_SIZE", "expected int"]),
    ("--DIRECTION=AtoC", ["DIRECTION='AtoC'", "'AtoB', 'BtoA'"]),
    ("--NORM=group", ["NORM='group'", "'batch'", "'instance'"]),
    ("--PRECISION=fp8", ["PRECISION='fp8'", "'auto', 'fp32', 'tf32', 'bf16', 'fp16'"]),
    ("--DEVICE=cuda:99", ["DEVICE='cuda:99'", "CUDA device(s) are available", "DEVICE=auto or cpu"]),
    ("--DEVICE=tpu", ["DEVICE='tpu'", "auto, cpu, cuda"]),
    ("--BAD_FILES=ignore", ["BAD_FILES='ignore'", "'error', 'skip'"]),
    ("--ON_NAN=continue", ["ON_NAN='continue'", "'stop', 'skip'"]),
    ("--LERNING_RATE=1e-3", ["LERNING_RATE", "Did you mean LEARNING_RATE"]),
    ("--PRESET=facade", ["PRESET='facade'", "facades"]),
    ("BATCH_SIZE=4", ["BATCH_SIZE=4", "--KEY=value"]),
])
def test_bad_settings_are_one_line_errors_naming_setting_and_valid_values(override, names):
    with pytest.raises(ConfigError) as e:
        load_config(override.split())
    message = str(e.value)
    assert "\n" not in message
    assert all(n in message for n in names), message


def test_config_is_validated_before_any_data_or_model_work(tmp_path, monkeypatch):
    from harness import run
    monkeypatch.setattr(run, "training_data", lambda *a, **k: pytest.fail("data touched"))
    monkeypatch.setattr(train, "build_models", lambda *a, **k: pytest.fail("models built"))
    with pytest.raises(ConfigError, match="NORM"):
        train.main(tiny_args(tmp_path / "no-data", tmp_path / "run", NORM="layer"))
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- validation, the real CLI

CLI_CASES = {  # 2 cases only: each costs seconds of imports; the rest are checked in-process above
    "missing_cuda": (["--DEVICE=cuda:99"], "DEVICE='cuda:99'"),  # no machine has 100 GPUs
    "code_injection": (["--LEARNING_RATE=__import__('os').system('touch MARKER')"], "--LEARNING_RATE="),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict:
    """Run the CLI cases concurrently (each pays ~4 s of imports) from an empty folder."""
    cwd = tmp_path_factory.mktemp("cli")
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=ENV, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (args, _) in CLI_CASES.items()}
    results = {name: (p, *p.communicate(timeout=180)) for name, p in procs.items()}
    return {"cwd": cwd, **results}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_setting_exits_2_with_a_one_line_error(cli_results, case):
    proc, out, err = cli_results[case]
    assert proc.returncode == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert CLI_CASES[case][1] in err
    assert out == ""
    assert sorted(os.listdir(cli_results["cwd"])) == []  # no MARKER, no data/ or runs/ created
