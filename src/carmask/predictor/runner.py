"""The model runner: models loaded by name or tier, made ready for inference,
compiled, and run in calls of one size, with TTA and autocast.

Every model meets one protocol, `Segmenter`: torch's (`models.Segmenter`) and
an ONNX export run by onnxruntime (`onnx_runtime.OnnxSegmenter`) alike, so
nothing here asks which one it holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from carmask import models
from carmask.inputs.spec import InputSpec


@runtime_checkable
class Segmenter(Protocol):
    """What the runner asks of a model."""

    spec: InputSpec

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W float inputs in [0, 255] -> N x 1 x H x W logits, on x's device."""

    def for_inference(self, device: torch.device) -> Segmenter:
        """The model ready to predict on `device` (torch's: batch norms folded,
        moved there, channels last)."""

    def compiled(self, mode: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """Its forward compiled for one input shape (`torch.compile` with `mode`), or as it is."""


# Photos per network call on the CPU, whatever --batch-size: calls of 4 run the
# pipeline faster end to end than calls of 1 (docs/RESULTS.md, "Prediction speed
# (CPU)"); a single photo pays for 3 padded ones.
CPU_NETWORK_BATCH = 4


def network_batch(device: torch.device, batch_size: int) -> int:
    """Photos per network call, the last call padded. A convolution's result
    for a photo depends on the call's batch size (the kernels it picks: 1
    pixel of 1 mask in 48 differed between --batch-size 1 and 16), never on
    the other photos in the call; so each call takes this many, and a
    photo's probabilities depend on nothing else in its batch (resumed runs
    and the Ray engine batch photos otherwise). On the CPU CPU_NETWORK_BATCH:
    independent of the batch size too; on a GPU `batch_size`, which a resume
    then compares."""
    return CPU_NETWORK_BATCH if torch.device(device).type == "cpu" else batch_size


class Runner:
    """The models of one predictor on its `device`, each loaded once, on first use.

    `model`: a shipped name, a checkpoint path, a tier or None (see
    `Predictor`); `tta`: also predict the mirrored photo and average;
    `compile`: `torch.compile` (CUDA graphs on a GPU), which pays back its
    start-up on large runs; calls are padded to `network_batch` photos, so it
    compiles once."""

    def __init__(
        self,
        model: str | os.PathLike | None,
        device: torch.device,
        batch_size: int,
        tta: bool = False,
        compile: bool = False,
    ):
        self.name, self.device, self.batch_size, self.tta, self.compile = model, device, batch_size, tta, compile
        self._models: dict[str, Segmenter] = {}
        self._forwards: dict[int, Callable] = {}

    @property
    def defaults(self) -> bool:
        """Whether each photo gets a shipped model for its case (no model, or a tier, was named)."""
        return self.name is None or str(self.name) in models.TIERS

    def load(self, name) -> Segmenter:
        key = str(name)
        if key not in self._models:
            model, _ = models.load(name)
            self._models[key] = model.for_inference(self.device)
        return self._models[key]

    def model_for(self, views: int) -> Segmenter:
        """The model for a photo that comes with `views` views of its car."""
        if not self.defaults:
            return self.load(self.name)
        return self.load(models.default_for(views, self.name, self.device))  # None: the device's first tier shipped

    @torch.inference_mode()
    def probabilities(self, model: Segmenter, inputs: torch.Tensor) -> torch.Tensor:
        """N x C x H x W uint8 inputs on the device -> N x H x W float32 probabilities there."""
        out, step = [], network_batch(self.device, self.batch_size)
        for start in range(0, len(inputs), step):
            batch = inputs[start : start + step].float()
            probs = self._run(model, batch)
            if self.tta:
                probs = (probs + self._run(model, batch.flip(-1)).flip(-1)) / 2
            out.append(probs[:, 0].float())
        return torch.cat(out) if out else inputs.new_zeros((0, *inputs.shape[2:]), dtype=torch.float32)

    def _run(self, model: Segmenter, batch: torch.Tensor) -> torch.Tensor:
        forward, count, size = self._forward(model), len(batch), network_batch(self.device, self.batch_size)
        if count < size:  # one shape (see network_batch); compiled, one graph
            batch = torch.cat([batch, batch.new_zeros((size - count,) + batch.shape[1:])])
        batch = batch.contiguous(memory_format=torch.channels_last)
        if self.device.type != "cuda":
            return torch.sigmoid(forward(batch))[:count]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return torch.sigmoid(forward(batch).float())[:count]

    def _forward(self, model: Segmenter) -> Callable:
        if not self.compile:
            return model
        if id(model) not in self._forwards:
            self._forwards[id(model)] = model.compiled("reduce-overhead" if self.device.type == "cuda" else None)
        return self._forwards[id(model)]
