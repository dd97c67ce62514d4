"""Data-parallel training under torchrun: who this process is, its process group, and the few
collectives the training loop needs. DistributedDataParallel averages the gradients; nothing here does.

Without torchrun's environment (WORLD_SIZE unset or 1) every function is a no-op on SINGLE, and
torch.distributed is never imported.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from lstmcli.errors import LstmcliError

log = logging.getLogger(__name__)
# How long a collective waits for the other ranks. torchrun ends the others within seconds when a
# worker dies; this bounds a hang it cannot see (a rank stuck, another node gone) and must outlast the
# longest gap between two collectives: one training step, or one shard of an evaluation's batches.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = "none"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """This rank's rows of a global batch (every world_size-th row from its rank: a batch sorted
        longest first stays so, and lengths stay alike across ranks), and whether it has any. A rank
        left without rows runs the batch's first row with weight 0, so that it still joins the
        gradient all-reduce of the step."""
        mine = rows[self.rank::self.world_size]
        return (mine, True) if len(mine) else (rows[:1], False)


SINGLE = Dist()


def from_env() -> Dist:
    """This process's place in a torchrun launch, or SINGLE outside one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def threads_per_process(dist: Dist, requested: int) -> int:
    """`requested` if set; under torchrun, the cores shared out between the local ranks (torchrun sets
    OMP_NUM_THREADS=1 when the user has not, which would leave all but one core idle per rank); else
    torch's own default."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if dist.enabled and os.environ.get("OMP_NUM_THREADS", "1") == "1":
        return max(1, cores // dist.local_world_size)
    return torch.get_num_threads()


def start(dist: Dist, device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group: gloo on the CPU, nccl on CUDA with one GPU per local rank. Ranks other
    than 0 log errors only."""
    if not dist.enabled:
        return dist, device
    import torch.distributed as td

    if device.type == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            gpus = torch.cuda.device_count()
            raise LstmcliError(f"local rank {dist.local_rank} has no GPU: this node has {gpus}; "
                               f"use --nproc-per-node {gpus}")
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise LstmcliError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {device.type}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not td.is_initialized():
        td.init_process_group(backend, timeout=TIMEOUT)
    if not dist.is_main:
        logging.getLogger("lstmcli").setLevel(logging.ERROR)
    return Dist(dist.rank, dist.world_size, dist.local_rank, dist.local_world_size, backend), device


def wrap(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """The module the training steps run: DistributedDataParallel around `model`, or `model` itself."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # no buffer changes in training (the NBSVM bag's counts are set before it, the same on every rank):
    # broadcasting them before every step, DDP's default, would move the whole (F, C) table each step
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def barrier(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        td.barrier()


def all_reduce_sum(dist: Dist, values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over all ranks (a copy; `values` itself on a single process)."""
    if not dist.enabled:
        return values
    import torch.distributed as td

    device = torch.device("cuda", torch.cuda.current_device()) if dist.backend == "nccl" else values.device
    total = values.to(device, copy=True)
    td.all_reduce(total)
    return total.to(values.device)


def broadcast(dist: Dist, obj):
    """Rank 0's `obj` on every rank."""
    if not dist.enabled:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather(dist: Dist, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not dist.enabled:
        return [obj]
    import torch.distributed as td

    out = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def stop(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
