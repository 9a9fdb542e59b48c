"""torchrun's environment decides: the same code runs on one CPU, one GPU or
many machines. RANK, WORLD_SIZE and LOCAL_RANK come from torchrun; without
them this is a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_users = 0  # init_distributed calls not yet matched by cleanup(): the last cleanup ends the group
_created = False  # whether init_distributed made the group (one made by a caller is left to it)


def resolve_device(name: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """'auto' picks cuda:<local_rank> when CUDA is present, else the CPU.
    ``key`` names the setting in errors (``--device`` of a script)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{key}={name} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str = "auto", key: str = "train.device") -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on
    CPU). Calls nest: a workflow that inits once and runs ``train.main`` per
    fold keeps one group, which only the outermost ``cleanup()`` destroys
    (gloo's rendezvous fails at random when a group is made again and again)."""
    global _users, _created
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, key)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _created = True
    _users += 1
    return DistInfo(rank, world_size, local_rank, device)


def cleanup() -> None:
    """Match one ``init_distributed``; the last destroys the group it made."""
    global _users, _created
    _users = max(0, _users - 1)
    if _users == 0 and _created and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _created = False


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's ``obj`` as a list, on every rank (a one-element list when
    not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module``.

    DDP keeps parameters in step but each rank's last forward updates its own
    BatchNorm running statistics (and an EMA averages them per rank), so
    without this the ranks would evaluate slightly different models.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src)


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar values over ranks (for logging only)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))
