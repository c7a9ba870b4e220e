"""The stages a model batch goes through, and their timing when profiling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

STAGES = ("decode", "inputs", "model", "postprocess", "copy back")


class Stages:
    """Seconds per stage (`seconds`, None when not profiling). Profiling
    synchronises the device at the end of each stage, so that the stages no
    longer overlap."""

    def __init__(self, device: torch.device, profile: bool):
        self.device = device
        self.seconds: dict[str, float] | None = dict.fromkeys(STAGES, 0.0) if profile else None

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Times a stage when profiling (waiting for the device at its end)."""
        if self.seconds is None:
            yield
            return
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Time measured elsewhere (the decoding workers'), when profiling."""
        if self.seconds is not None:
            self.seconds[name] += seconds
