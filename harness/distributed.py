"""DDP plumbing for train.py under torchrun: process-group setup, agreement between ranks, and the small
collectives that keep every rank stepping, skipping and stopping together.

Not run directly:  torchrun --standalone --nproc_per_node=N train.py [--KEY=value ...]
"""
import datetime
import io
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from harness.errors import ConfigError, Pix2PixError
from utils import pick_device


@dataclass
class Ranks:
    """This process's place in a torchrun job (0, 0, 1 in a single process). Rank 0 writes every file."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(timeout_s: int, device: str) -> Ranks:
    """Initialises torch.distributed when launched by torchrun (several processes); else a single process. The
    backend follows DEVICE: nccl where the run uses GPUs, gloo for DEVICE=cpu (also on a machine with GPUs)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if pick_device(device).type == "cuda" else "gloo"
    device_id = None
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              f"start at most that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
        device_id = torch.device("cuda", local_rank)  # barriers and object collectives use this GPU
    # the timeout turns a dead or stuck rank into an error on the others instead of a hang
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), device_id=device_id)
    return Ranks(dist.get_rank(), local_rank, dist.get_world_size())


RANK0_WORK_TIMEOUT_S = 6 * 3600  # what rank 0 may take for one-off work the others wait for (the FCN segmenter)


def while_rank0_works(world_size: int, work, timeout_s: float = RANK0_WORK_TIMEOUT_S):
    """`work()` on rank 0 (its result; None on the other ranks) while the other ranks wait in a barrier of a gloo
    group with its own timeout, `timeout_s`: minutes of one-off work (training the FCN-score's segmenter) must not
    meet DIST_TIMEOUT_S, or NCCL's watchdog, in the training's first collective. If rank 0 fails, torchrun stops
    the others."""
    if world_size == 1:
        return work()
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = work() if dist.get_rank() == 0 else None
        dist.barrier(group=group)
    finally:
        dist.destroy_process_group(group)
    return result


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def gather_from_ranks(value: object, world_size: int) -> list:
    """Every rank's `value` (tensors and plain data), in rank order, on every rank; [value] in a single process.
    Sent as torch.save bytes: all_gather_object cannot unpickle tensors itself."""
    if world_size == 1:
        return [value]
    buffer = io.BytesIO()
    torch.save(value, buffer)
    seen = [None] * world_size
    dist.all_gather_object(seen, buffer.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in seen]


def refuse_on_every_rank(error: Pix2PixError | None, ranks: Ranks) -> None:
    """Rank 0's refusal to start (`error`: RUN_DIR in use or unusable; None to go on), raised on every rank, in
    the job's first collective. A rank left waiting in a later one for a rank 0 that has gone would end with
    gloo's "Connection closed by peer" traceback instead. The other ranks print the same one line and exit first;
    rank 0 raises once they all have (its exit makes torchrun stop the rest)."""
    if is_distributed():
        seen = [None] * ranks.world_size
        dist.all_gather_object(seen, (str(error), error.exit_code) if error else None)
        if seen[0] is not None:
            message, exit_code = seen[0]
            if not ranks.master:
                print(f"error: {message}", file=sys.stderr, flush=True)
            dist.barrier()  # every rank has said it
            if not ranks.master:
                raise SystemExit(exit_code)
    if error is not None:
        raise error


def check_ranks_agree(world_size: int, **facts) -> None:
    """Stop every rank with one clear message if the processes would train differently, e.g. a node that cannot
    see the checkpoint (multi-node: RUN_DIR and the data must be shared or identical on every node)."""
    if world_size == 1:
        return
    seen = [None] * world_size
    dist.all_gather_object(seen, facts)  # plain data: pickled as it is
    differ = [f"rank {r}: {s}" for r, s in enumerate(seen) if s != seen[0]]
    if differ:
        raise ConfigError(f"the processes disagree (rank 0: {seen[0]}; {'; '.join(differ)}). Every node must see "
                          f"the same RUN_DIR checkpoints and TRAIN_DIR files: use shared storage or identical copies")


def without_sync_bn(G: nn.Module) -> nn.Module:
    """G, or with SYNC_BN a copy with plain BatchNorm: in the paper's test mode batch-norm uses batch statistics,
    and a SyncBatchNorm would gather them from ranks that are not there (rank 0 samples and validates alone)."""
    if not any(isinstance(m, nn.SyncBatchNorm) for m in G.modules()):
        return G
    from harness.checkpoint import generator_from_state  # SyncBatchNorm and BatchNorm2d share state-dict keys
    return generator_from_state(G.hparams, G.state_dict()).to(next(G.parameters()).device)
