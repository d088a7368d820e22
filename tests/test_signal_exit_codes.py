"""A stop signal's exit code holds wherever it arrives: SIGTERM during the final validation (after the ranks
last agreed on stopping) still ends the run with 143, as SIGTERM during training does, once everything is saved.

    python -m pytest tests/test_signal_exit_codes.py -q
"""
import os
import signal

import train
from conftest import tiny_args
from harness import run as harness_run
from harness.checkpoint import load_checkpoint


def test_sigterm_during_the_final_validation_ends_with_143_after_saving(tiny_data, tmp_path, monkeypatch, capsys):
    real, calls = harness_run.validation_metrics, []

    def validate_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the last epoch's validation (VAL_EVERY=1, 2 epochs)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(harness_run, "validation_metrics", validate_then_sigterm)
    code = train.main(tiny_args(tiny_data, tmp_path / "run", SAMPLE_EVERY=0))
    assert len(calls) == 2 and code == 128 + signal.SIGTERM
    assert "done:" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 2  # everything saved
