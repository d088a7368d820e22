"""DDP as train.py builds it, for GPUs, checked with what gloo on the CPU can show: the DDP options per
normalisation and device (buffers synced each forward only for per-process batch-norm statistics;
gradient_as_bucket_view and static_graph on GPUs), rank 0 training the FCN segmenter while the others wait outside the training's collectives (so
DIST_TIMEOUT_S does not kill the job), and DEVICE=cuda:N under torchrun refused in one line. SYNC_BN on two GPUs:
tests/test_cuda.py.

    python -m pytest tests/test_ddp_setup.py -q
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from conftest import ROOT, tiny_args, write_pairs
from harness.configurator import default_settings, load_config
from harness.errors import ConfigError
from pix2pix import build_models
from test_distributed import launch
from utils import RealFakeScores, ddp, ddp_options, has_own_statistics


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process (DDP needs one to be built)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("norm, sync_bn, broadcast", [("batch", False, True), ("instance", False, False),
                                                      ("batch", True, False)])
def test_ddp_broadcasts_buffers_only_for_per_process_batch_norm_statistics(one_process_group, norm, sync_bn,
                                                                           broadcast):
    cfg = default_settings() | {"IMAGE_SIZE": 32, "NUM_DOWNS": 5, "GEN_BASE_CHANNELS": 8, "DISC_BASE_CHANNELS": 8,
                                "NORM": norm}
    G, D = build_models(cfg)
    if sync_bn:
        G, D = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
    for module in (G, RealFakeScores(D)):
        assert has_own_statistics(module) is broadcast
        gpu = ddp_options(module, torch.device("cuda", 1))
        assert gpu == dict(device_ids=[torch.device("cuda", 1)], forward_sync_buffers=broadcast,
                           gradient_as_bucket_view=True, static_graph=True)
        if not sync_bn:  # SyncBatchNorm is built under DDP on GPUs only (tests/test_cuda.py)
            wrapped = ddp(module, torch.device("cpu"))  # gloo on a CPU: DDP's defaults, measured no slower
            assert not wrapped.gradient_as_bucket_view and not wrapped.static_graph
            assert wrapped.forward_sync_buffers is broadcast


def test_ranks_wait_for_rank0s_fcn_segmenter_longer_than_dist_timeout(tmp_path):
    """FCN_SCORE under torchrun: rank 0 trains the segmenter (here a 25 s stand-in) before the first training step,
    longer than DIST_TIMEOUT_S=15 (which also bounds the other collectives, such as the final barrier that waits
    for rank 0's last writes: seconds on a loaded machine); rank 1 waits for it in a barrier of its own (not in the
    step's all-reduce, whose timeout would stop the job), and the run finishes."""
    write_pairs(tmp_path / "data" / "train", 4, seed=0)
    write_pairs(tmp_path / "data" / "val", 2, seed=1)
    args = tiny_args(tmp_path / "data", tmp_path / "run", FCN_SCORE=True, DIST_TIMEOUT_S=15, VAL_EVERY=0,
                     SAMPLE_EVERY=0, N_EPOCHS_DECAY=0, BATCH_SIZE=2)
    run = launch(tmp_path, "fcn", args, ("--slow-fcn=25",))
    assert run.returncode == 0 and None not in run.dumps, run.describe()
    assert [d["exit"] for d in run.dumps] == [0, 0]
    # the stand-in ran, on rank 0 only, before the first training step
    assert run.dumps[0]["segmenter_at_step"] == 0 and "segmenter_at_step" not in run.dumps[1], run.describe()


def test_device_cuda_n_under_torchrun_is_refused_in_one_line(monkeypatch):
    """Every process would sit on GPU N while NCCL binds each to its LOCAL_RANK: a setting error (exit 2) before
    anything starts, checked before whether this machine has that GPU."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"DEVICE=cuda:1 under torchrun .* use DEVICE=cuda \(or auto\)"):
        load_config(["--DEVICE=cuda:1"])
    env = os.environ | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    out = subprocess.run([sys.executable, "train.py", "--DEVICE=cuda:0"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert out.stderr.startswith("error: DEVICE=cuda:0 under torchrun") and "CUDA_VISIBLE_DEVICES" in out.stderr
