"""The code's layout promises: the method at the top level imports nothing of the machinery in harness/ (train.py
only a few named calls), no command-line script imports another, the top level stays small, no test hooks live in
production code, the checkpoint schema is the one list that saving and loading use (its format number written and
read, older formats upgraded in one place, the discriminator's hyperparameters checked on resume), and the public
loader stays importable from utils. CPU, ~5 s.

    python -m pytest tests/test_layout.py -q
"""
import ast
import re
from pathlib import Path

import pytest
import torch

from harness import checkpoint
from harness.checkpoint import CHECKPOINT_FORMAT, PROGRESS, RNG_STATE, TRAINING_STATE, CheckpointError
from conftest import ROOT, tiny_args
from harness.configurator import ConfigError, load_config

# the programs a user runs; library modules with a small __main__ (generator_model.py, discriminator_model.py) are
# imported by design
SCRIPTS = {"train", "predict", "evaluate", "bench", "demo", "export", "download_dataset"}
# the method, read in this order by a newcomer
LEARNER_PATH = ["config", "pix2pix", "generator_model", "discriminator_model", "layers", "dataset", "train"]


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


def imports_of(name: str) -> set[str]:
    """Full dotted names of every module `name`.py imports (top level or inside functions), and the names
    imported from harness."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / f"{name}.py").read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | ({f"{node.module}.{a.name}" for a in node.names}
                                     if node.module.startswith("harness") else set())
    return found


def test_the_method_imports_nothing_of_the_harness_and_train_only_a_few_named_calls():
    for name in LEARNER_PATH[:-1]:
        assert not {m for m in imports_of(name) if m.split(".")[0] == "harness"}, name
    harness_names = {m for m in imports_of("train") if m.startswith("harness.") and m.count(".") == 2}
    assert 0 < len(harness_names) <= 24, harness_names  # each a named call in the loop's straight line


def test_the_learners_path_is_short_and_the_top_level_small():
    lines = {name: len((ROOT / f"{name}.py").read_text().splitlines()) for name in LEARNER_PATH}
    assert sum(lines.values()) <= 960, lines
    assert lines["train"] <= 220
    assert len(list(ROOT.glob("*.py"))) <= 16
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_no_environment_variable_test_hooks_in_production_code():
    production = [p for p in [*ROOT.glob("*.py"), *(ROOT / "harness").glob("*.py")]]
    hooks = {p.name: re.findall(r"environ[^\n]*PIX2PIX_\w+", p.read_text()) for p in production}
    assert {k: v for k, v in hooks.items() if v} == {}


def test_load_generator_is_still_importable_from_utils(tiny_run):
    from utils import load_generator
    path = tiny_run / "run" / "generator.pt"
    mine, theirs = load_generator(path, mode="eval"), checkpoint.load_generator(path, mode="eval")
    assert type(mine) is type(theirs) and not mine.training
    assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))


def test_a_training_checkpoint_holds_exactly_the_schema(tiny_run):
    ckpt = torch.load(tiny_run / "run" / "checkpoints" / "last.pt", weights_only=True)
    schema = {*TRAINING_STATE, *PROGRESS, *RNG_STATE, "format", "config", "train_data", "generator_hparams",
              "discriminator_hparams"}
    assert set(ckpt) == schema and ckpt["format"] == CHECKPOINT_FORMAT
    export = torch.load(tiny_run / "run" / "generator.pt", weights_only=True)
    assert set(export) == {"format", "generator", "epoch", "config", "generator_hparams", "discriminator_hparams"}


def test_a_checkpoint_from_a_newer_format_is_refused_with_its_name(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run / "run" / "generator.pt", weights_only=True)
    checkpoint.atomic_save(ckpt | {"format": CHECKPOINT_FORMAT + 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=rf"future.pt has checkpoint format {CHECKPOINT_FORMAT + 1}, newer"):
        checkpoint.load_generator(tmp_path / "future.pt")
    del ckpt["format"]  # files written before the format was recorded load as format 1
    checkpoint.atomic_save(ckpt, tmp_path / "old.pt")
    assert checkpoint.load_generator(tmp_path / "old.pt") is not None


def format_1(ckpt: dict) -> dict:
    """The same checkpoint as the previous schema wrote it: LR scheduler states, batches (not images) into the
    epoch, best_val_l1, no train_data."""
    old = {k: v for k, v in ckpt.items() if k not in ("images_in_epoch", "train_data", "best_val")}
    lr = {"base_lrs": [2e-4], "last_epoch": ckpt["epoch"]}
    return old | {"format": 1, "batch_in_epoch": 3, "sched_G": lr, "sched_D": lr, "best_val_l1": ckpt["best_val"]}


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


def test_a_resumed_run_continues_through_the_schema_and_older_formats_are_upgraded(tiny_run, tmp_path):
    """restore_training_state loads every TRAINING_STATE entry into a Pix2Pix and gives back the Progress; a format-1
    file (batches into the epoch, schedulers, no optional entries) is read as the current schema in one place."""
    import pix2pix
    ckpt = torch.load(tiny_run / "run" / "checkpoints" / "last.pt", weights_only=True)
    cfg = load_config(tiny_args(tiny_run / "data", tmp_path / "run"))
    G, D = pix2pix.build_models(cfg)
    model = pix2pix.Pix2Pix(G, D, *pix2pix.make_optimizers(G, D, cfg, torch.device("cpu")),
                            *pix2pix.make_grad_scalers(torch.device("cpu"), "fp32"))
    progress = checkpoint.restore_training_state(ckpt, model)
    assert progress == checkpoint.Progress(**{k: ckpt[k] for k in PROGRESS})
    assert all(torch.equal(v, ckpt["generator"][k]) for k, v in G.state_dict().items())

    old = format_1(ckpt)
    del old["best_val_l1"], old["rank_rngs"]
    old["config"] = old["config"] | {"BATCH_SIZE": 2}
    checkpoint.atomic_save(old, tmp_path / "old.pt")
    upgraded = checkpoint.load_checkpoint(tmp_path / "old.pt")
    assert upgraded["images_in_epoch"] == 3 * 2  # 3 batches of 2 images in 1 process
    assert upgraded["best_val"] == float("inf") and upgraded["rank_rngs"] == [] and upgraded["train_data"] == {}
    assert "sched_G" not in upgraded and "batch_in_epoch" not in upgraded
    checkpoint.check_resume_compatible(upgraded, old["config"] | cfg, "old.pt", D)
    assert checkpoint.restore_training_state(upgraded, model).images_in_epoch == 6


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


def test_the_configuration_reference_names_every_setting():
    """docs/configuration.md is the reference of config.py: a setting added without a row there fails here."""
    import config
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [k for k in vars(config) if k.isupper() and k != "PRESETS" and f"| `{k}` |" not in reference]
    assert missing == []
