"""The code's layout promises (issue 10): no command-line script imports another, the checkpoint schema is the one
list that saving and loading use (its format number written and read, the discriminator's hyperparameters checked
on resume), and the public loader stays importable from utils. CPU, ~5 s.

    python -m pytest tests/test_layout.py -q
"""
import ast
from pathlib import Path

import pytest
import torch

import checkpoint
from checkpoint import CHECKPOINT_FORMAT, OPTIONAL, PROGRESS, RNG_STATE, TRAINING_STATE, CheckpointError
from conftest import ROOT, tiny_args
from configurator import ConfigError, load_config

# the programs a user runs; library modules with a small __main__ (dataset.py, generator_model.py,
# synthetic_data.py) are imported by design
SCRIPTS = {"train", "predict", "evaluate", "bench", "demo", "export", "download_dataset"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_script_imports_another_script():
    ours = {p.stem for p in ROOT.glob("*.py")}
    assert SCRIPTS <= ours
    offenders = {p.name: sorted(imported_modules(p) & SCRIPTS - {p.stem}) for p in ROOT.glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_load_generator_is_still_importable_from_utils():
    from utils import load_generator
    assert load_generator is checkpoint.load_generator


def test_a_training_checkpoint_holds_exactly_the_schema(tiny_run):
    ckpt = torch.load(tiny_run / "run" / "checkpoints" / "last.pt", weights_only=True)
    schema = {*TRAINING_STATE, *PROGRESS, *RNG_STATE, "format", "config", "generator_hparams",
              "discriminator_hparams"}
    assert set(ckpt) == schema and ckpt["format"] == CHECKPOINT_FORMAT
    export = torch.load(tiny_run / "run" / "generator.pt", weights_only=True)
    assert set(export) == {"format", "generator", "epoch", "config", "generator_hparams", "discriminator_hparams"}
    assert set(OPTIONAL) <= schema


def test_a_checkpoint_from_a_newer_format_is_refused_with_its_name(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run / "run" / "generator.pt", weights_only=True)
    checkpoint.atomic_save(ckpt | {"format": CHECKPOINT_FORMAT + 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=rf"future.pt has checkpoint format {CHECKPOINT_FORMAT + 1}, newer"):
        checkpoint.load_generator(tmp_path / "future.pt")
    del ckpt["format"]  # files written before the format was recorded load as format 1
    checkpoint.atomic_save(ckpt, tmp_path / "old.pt")
    assert checkpoint.load_generator(tmp_path / "old.pt") is not None


def test_resume_compares_the_discriminator_the_weights_were_written_for(tiny_run, tmp_path):
    """A checkpoint whose stored discriminator_hparams differ from the discriminator built now is refused by name,
    even when its config agrees (e.g. a hand-edited or foreign file)."""
    import pix2pix
    run = tiny_run / "run"
    cfg = load_config(tiny_args(tiny_run / "data", tmp_path / "run"))
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    _, D = pix2pix.build_models(cfg)
    checkpoint.check_resume_compatible(ckpt, cfg, "last.pt", D)  # the run's own settings: accepted
    ckpt["discriminator_hparams"] = ckpt["discriminator_hparams"] | {"n_layers": 5}
    with pytest.raises(CheckpointError, match=r"settings differ \(discriminator n_layers: checkpoint 5 vs now"):
        checkpoint.check_resume_compatible(ckpt, cfg, "last.pt", D)


def test_a_resumed_run_continues_through_the_schema(tiny_run, tmp_path):
    """restore_training_state gives back every PROGRESS and RNG_STATE entry; a file without the optional ones
    (older checkpoints) gets their defaults."""
    ckpt = torch.load(tiny_run / "run" / "checkpoints" / "last.pt", weights_only=True)
    cfg = load_config(tiny_args(tiny_run / "data", tmp_path / "run"))
    import pix2pix
    G, D = pix2pix.build_models(cfg)
    opt_G, opt_D = pix2pix.make_optimizers(G, D, cfg, torch.device("cpu"))
    sched = [torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0) for o in (opt_G, opt_D)]
    scalers = [torch.amp.GradScaler("cpu", enabled=False) for _ in range(2)]
    state = dict(zip(TRAINING_STATE, (G, D, opt_G, opt_D, *sched, *scalers)))
    for k in OPTIONAL:
        del ckpt[k]
    saved = checkpoint.restore_training_state(ckpt, state)
    assert set(saved) == {*PROGRESS, *RNG_STATE}
    assert saved["best_val_l1"] == float("inf") and saved["rank_rngs"] == []
    assert all(torch.equal(v, ckpt["generator"][k]) for k, v in G.state_dict().items())


def test_bench_takes_config_settings_as_train_does(capsys):
    import bench
    with pytest.raises(ConfigError, match="unknown setting 'BATCH_SIZ'"):
        bench.main(["--BATCH_SIZ=2", "--skip", "train,infer,onnx,data,peak"])
    assert bench.main(["--IMAGE_SIZE=32", "--BATCH_SIZE=2", "--PRECISION=fp32", "--json",
                       "--skip", "train,infer,onnx,data,peak"]) == 0
    out = capsys.readouterr().out
    assert '"image_size": 32' in out and '"batch_size": 2' in out


def test_old_output_flag_names_still_work(tiny_run, tmp_path):
    import evaluate
    args = ["--checkpoint", str(tiny_run / "run" / "generator.pt"), "--data", str(tiny_run / "data" / "val"),
            "--max-images", "1"]
    assert evaluate.main([*args, "--output", str(tmp_path / "new")]) == 0
    assert evaluate.main([*args, "--out", str(tmp_path / "old")]) == 0
    assert (tmp_path / "new" / "summary.json").is_file() and (tmp_path / "old" / "summary.json").is_file()
