"""Where work runs: the torch device for `--device`, and the cores this process may use."""
from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pick_device(device: str = "auto") -> torch.device:
    """`auto` (a CUDA GPU where there is one, else the CPU), `cpu` or `cuda[:N]`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(device)
