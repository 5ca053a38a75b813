"""Distributed data parallel helpers (torchrun environment, gloo on CPU, nccl on CUDA).

The training loop draws the *global* batch's data indices, noise levels, noise and label drops on
every rank from identically seeded generators and each rank keeps its contiguous slice, so the
averaged DDP gradient is the gradient of the global batch: a run on W ranks equals the
single-process run with the same global batch (up to float summation order).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "teardown", "all_mean", "broadcast_float", "broadcast_flag"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str = "cpu", timeout: float | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); a plain single process gets world 1. CUDA ranks use cuda:LOCAL_RANK.
    ``timeout``: seconds a collective waits for a missing rank before failing (None: torch's default)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    here = False
    if not dist.is_initialized():
        kw = {} if timeout is None else {"timeout": datetime.timedelta(seconds=float(timeout))}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **kw)
        here = True
    if dist.get_world_size() != world:
        raise ValueError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks")
    return DistInfo(dist.get_rank(), world, local, dev, here)


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (identity on one process)."""
    if not info.enabled:
        return value
    v = value.clone()
    dist.all_reduce(v)
    return v / info.world


def broadcast_float(value: float, info: DistInfo) -> float:
    """Rank 0's number, on every rank (the elapsed budget, so that all ranks stop together and use the
    same learning rate)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.broadcast(t, 0)
    return float(t.item())


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's boolean, on every rank."""
    return broadcast_float(1.0 if flag else 0.0, info) == 1.0
