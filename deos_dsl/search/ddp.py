"""Devices and data-parallel processes for the search.

Device: `auto` picks CUDA when available (`cuda:LOCAL_RANK` under torchrun), else the CPU;
`cpu`, `cuda`, `cuda:<i>` are taken as given (CUDA asked for but absent is a `SearchError`).

Data parallel: launched with `torchrun --nproc-per-node W -m deos_dsl.cli search ...`, each
process joins the default process group (gloo on CPU, nccl on GPU), wraps the relaxed graph in
`DistributedDataParallel` (only the operator parameters train: they are replicated and their
gradients averaged; the frozen model is never synchronised after the start) and takes its
shard of every batch (`data.DataSpec.train_batch`). Without torchrun (`WORLD_SIZE` unset or
1) nothing is initialised and `World()` is the single process. Gradient accumulation over
micro-batches synchronises the last one only (`no_sync`); `peak_memory` is what a run used.

Sharded (`--shard`, FSDP2): instead of DDP, every BLOCK part of the relaxed graph
(`recompute.partitioned`) goes through `torch.distributed.fsdp.fully_shard` over all processes:
each process keeps 1/W of every block's frozen weights and gathers one block's at a time (before
its forward, again before its backward), the operator parameters stay replicated
(`ignored_params`), and their gradients are averaged by `average_gradients` after the last
micro-batch; `release` then frees the full copies of the sharded weights the loaded model held.
"""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from deos_dsl.errors import SearchError


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that logs, checkpoints and writes the result."""
        return self.rank == 0


def pick_device(requested: str) -> torch.device:
    """The device for `--device` (module docstring)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if requested == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise SearchError(f"unknown device `{requested}`", "use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SearchError(f"device `{requested}` asked for, but CUDA is not available here", "use --device auto or cpu")
        return torch.device("cuda", device.index if device.index is not None else local)
    return device


def join(device: torch.device) -> World:
    """Join the torchrun process group when there is one (gloo on CPU, nccl on CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def no_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager[None]:
    """Around one micro-batch's forward and backward: DDP synchronises the gradients of the
    `last` one only (the others accumulate locally); a plain module needs nothing."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def peak_memory(device: torch.device) -> int:
    """Bytes: the CUDA allocator's peak on `device` since the process started (or its last
    reset), else the process's peak resident set size (Linux reports kibibytes)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def leave(world: World) -> None:
    """Leave the process group joined by `join` (no-op for a single process)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def replicate(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """`module` wrapped for data-parallel training (its trainable parameters replicated)."""
    if world.size == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def mean_over(values: torch.Tensor, world: World) -> torch.Tensor:
    """`values` (on this process's device: nccl reduces CUDA tensors only) averaged over the processes."""
    if world.size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world.size


def shard(blocks: list[nn.Module], world: World, device: torch.device, replicated: set[nn.Parameter]) -> list[nn.Parameter]:
    """Shard every module of `blocks` over the processes with FSDP2 (module docstring), the
    `replicated` parameters left whole; returns the full parameters that were sharded (their
    storage is the loaded model's: free it with `release` once nothing runs the unsharded graph)."""
    mesh = init_device_mesh(device.type, (world.size,))
    full: list[nn.Parameter] = []
    for block in blocks:
        kept = {param for param in block.parameters() if param in replicated}
        full += [param for param in block.parameters() if param not in kept]
        fully_shard(block, mesh=mesh, ignored_params=kept, reshard_after_forward=True)
    return full


def release(params: list[nn.Parameter]) -> None:
    """Free the storage of `params` (their values now live in shards)."""
    for param in params:
        param.data = torch.empty(0, dtype=param.dtype, device=param.device)


def average_gradients(params: list[nn.Parameter], world: World) -> None:
    """Average the gradients of the replicated `params` over the processes (what DDP does)."""
    if world.size == 1:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world.size
