"""The process's share of a ``torchrun`` job: which process it is, its slice of the
work, its device, and gathering what every process computed on rank 0.

Evaluation gives each process a contiguous shard of the images and training a shard of
each batch; both use :func:`shard_from_environment` to join the process group that
``torchrun`` describes, and :func:`leave` to leave it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from certify.core.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int
    world_size: int
    # Whether this shard's run joined the process group itself (and so must leave it),
    # rather than running inside one that a caller, e.g. training, already holds.
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this process's share of ``n`` items, in order."""
        per, extra = divmod(n, self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return start, start + per + (1 if self.rank < extra else 0)


SINGLE = Shard(0, 1)


def shard_from_environment(device: torch.device) -> Shard:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size(), owns_group=True)


def device_for(shard: Shard, device: torch.device) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if device.type != "cuda" or shard.world_size == 1 or device.index is not None:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise UsageError(
            f"process {local} has no GPU of its own ({torch.cuda.device_count()} visible); "
            "start at most one process per GPU"
        )
    # The current device too: NCCL's object collectives (all_gather_object) use it.
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def gather(local: T, shard: Shard) -> list[T] | None:
    """Every process's ``local`` on rank 0, in rank order; None on the others."""
    if shard.world_size == 1:
        return [local]
    parts: list[T | None] = [None] * shard.world_size
    dist.all_gather_object(parts, local)  # the objects must live on the CPU
    return [p for p in parts if p is not None] if shard.is_main else None


def merge_seconds(local: dict[str, float], shard: Shard) -> dict[str, float]:
    """Wall time of each stage: the slowest process's."""
    if shard.world_size == 1:
        return local
    parts: list[dict[str, float] | None] = [None] * shard.world_size
    dist.all_gather_object(parts, local)
    return {k: max(p[k] for p in parts if p) for k in local}


def leave(shard: Shard) -> None:
    """Leave a process group this run joined (torch warns about one left open)."""
    if shard.owns_group and dist.is_initialized():
        dist.destroy_process_group()
