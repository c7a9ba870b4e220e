"""Training under `torchrun`: who am I, and the few collectives training needs.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each process's environment.
Without them (plain `carmask train`) there is one process, no process group,
and every helper here is a no-op, so training has one code path for both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


def launched() -> bool:
    """True in a process that torchrun started with other processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that logs and writes files."""
    return rank() == 0


@contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for the duration; yields this process's device.

    gloo on the CPU, nccl on CUDA with one GPU per process (cuda:LOCAL_RANK).
    A group that the caller already set up is used and left alone.
    """
    if launched() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not launched() or dist.is_initialized():
        yield device
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel under torchrun, else `model` itself.
    `model` stays the plain module (to evaluate and save); train the result.

    BatchNorm: one process normalises over the whole batch, a DDP process over
    its share only. On CUDA the layers become SyncBatchNorm, whose statistics
    span all processes: the single-process result. On the CPU they stay
    per-process BatchNorm: PyTorch's SyncBatchNorm refuses CPU tensors (2.13
    checks, and has no CPU kernels for it). That still trains well, but a model
    with BatchNorm (unet) then ends with other weights than one process would;
    one without (seed) matches it.
    """
    if not dist.is_initialized():
        return model
    if device.type == "cuda":
        # Swaps the layers inside `model` in place; the parameters stay the same objects.
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def main_first(work: Callable[[], T]) -> T:
    """Run `work` on rank 0, then on the others: for work that leaves its result
    on disk (the input cache), so that the others find it there and only open it.
    The processes share one disk: torchrun on one machine."""
    if is_main():
        result = work()
    barrier()
    if not is_main():
        result = work()
    return result


def from_main(value: float, device: torch.device) -> float:
    """Rank 0's `value` on every rank (e.g. a share of a time budget, which each
    process's clock would measure a little differently)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.item()


def total(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of `values` over all ranks."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def share(rows: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of a batch whose size the world size divides."""
    size = len(rows) // world_size()
    return rows[rank() * size : (rank() + 1) * size]
