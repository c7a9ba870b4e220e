"""Where work runs: the torch device for `--device`, and the cores this process may use."""

from __future__ import annotations

import os
import re

import torch


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pick_device(device: str = "auto") -> torch.device:
    """`auto` (a CUDA GPU where there is one, else the CPU), `cpu` or `cuda[:N]`;
    a ValueError that says so for any other, or for a GPU that is not there."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device != "cpu" and not gpu:
        raise ValueError(f"device {device[:40]!r} is not one of auto, cpu, cuda, cuda:N")
    if gpu and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but no CUDA GPU is available")
    if gpu and gpu[1] and int(gpu[1]) >= torch.cuda.device_count():
        raise ValueError(f"device {device} was asked for, but there are {torch.cuda.device_count()} CUDA GPUs")
    return torch.device(device)
