"""What a checkpoint holds and how files of other versions are read: the schema (harness/checkpoint.py) is the one
list that saving and loading use; its format number is written, a newer one is refused by name, older ones are
upgraded in one place; a resume compares the discriminator the weights were written for. CPU, ~5 s.

    python -m pytest tests/test_checkpoint_schema.py -q
"""
import pytest
import torch

from conftest import tiny_args
from harness import checkpoint
from harness.checkpoint import CHECKPOINT_FORMAT, PROGRESS, RNG_STATE, TRAINING_STATE, CheckpointError
from harness.configurator import load_config


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
