"""Several processes with ``torchrun``: process group set-up, the device of each rank, small collectives.

``torchrun --nproc_per_node N -m c2w_fast.train ...`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; each rank trains on its share of every global batch (DDP averages the
gradients), rank 0 alone validates and writes the run folder. Backend: NCCL on GPUs,
gloo on CPUs (how the tests run two processes).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from c2w_fast.config import ConfigError


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(requested: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (error without one) or ``auto`` (CUDA when available), per local rank."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device / --device is 'cuda' but torch sees no CUDA GPU")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def setup(requested_device: str) -> tuple[Processes, torch.device]:
    """Join the process group when launched by torchrun; this process's ranks and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), choose_device(requested_device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device, local)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # rank 0 validates whole volumes while the others wait in a collective: allow it hours, not minutes
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    return Processes(dist.get_rank(), dist.get_world_size(), local), device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(flag: bool, processes: Processes, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "stop early")."""
    if not processes.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, 0)
    return bool(value.item())


def all_true(flag: bool, processes: Processes, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (e.g. "my checks passed"), known to all of them."""
    if not processes.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()
