"""The predictor: the one way to turn photos into probabilities and masks.

The CLI, the HTTP service and the Python API all call `Predictor`. It streams
one car's set of views at a time (bounded memory), decoding the next sets in
worker threads while the current one is computed.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from carmask import models
from carmask.devices import pick_device, usable_cores
from carmask.io import ImageError, PhotoSet, read_frame
from carmask.postprocess import THRESHOLD, full_size
from carmask.rle import batch_run_boundaries, encode, encode_boundaries, run_boundaries
from carmask.views import NotEnoughViews, resize, set_inputs


@dataclass
class Prediction:
    """The outcome for one photo: probabilities at output size (or only the
    mask's run boundaries, when asked to encode), or an error."""
    path: Path
    probs: np.ndarray | None = None
    error: str | None = None
    runs: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        return (self.probs > THRESHOLD).astype(np.uint8)

    @property
    def rle(self) -> str:
        return encode_boundaries(self.runs) if self.runs is not None else encode(self.mask)


class Predictor:
    """Photos to probabilities with one model, or the shipped defaults.

    `model`: a shipped name, a checkpoint path, a tier (`fast`, `accurate`) or
    None for the most accurate tier shipped; with a tier or None, each photo
    gets the multi-view model of that tier in a set of at least 3 views of a
    car, the single-photo one otherwise (`models.default_for`).
    `output_size` (width, height) defaults to each photo's own.
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto",
                 batch_size: int = 16, workers: int | None = None, tta: bool = False,
                 compile: bool = False):
        self.device = pick_device(device)
        # torch.compile (CUDA graphs on a GPU): pays back its start-up on large runs
        self.compile = compile
        self.batch_size = batch_size
        self.tta = tta  # also predict the mirrored photo and average
        self.workers = workers or usable_cores()  # decoding threads (Pillow releases the GIL)
        self.model_name = model
        self._models: dict[str, models.Segmenter] = {}
        self._forwards: dict[int, Callable] = {}

    # -- models ---------------------------------------------------------------
    def _load(self, name) -> models.Segmenter:
        key = str(name)
        if key not in self._models:
            model, _ = models.load(name)
            model = model.to(self.device)
            if self.device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            self._models[key] = model
        return self._models[key]

    def model_for(self, views: int) -> models.Segmenter:
        """The model for a photo that comes with `views` views of its car."""
        if self.model_name is not None and str(self.model_name) not in models.TIERS:
            return self._load(self.model_name)
        return self._load(models.default_for(views, tier=self.model_name))  # None: best tier shipped

    # -- arrays ---------------------------------------------------------------
    def probabilities(self, model: models.Segmenter, inputs: np.ndarray) -> np.ndarray:
        """N x H x W x C uint8 inputs -> N x H x W float32 probabilities."""
        return self._probabilities(model, inputs).cpu().numpy()

    @torch.inference_mode()
    def _probabilities(self, model: models.Segmenter, inputs: np.ndarray) -> torch.Tensor:
        """As `probabilities`, left on the predictor's device."""
        out = []
        for start in range(0, len(inputs), self.batch_size):
            batch = torch.from_numpy(inputs[start:start + self.batch_size])
            batch = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            probs = self._run(model, batch)
            if self.tta:
                probs = (probs + self._run(model, batch.flip(-1)).flip(-1)) / 2
            out.append(probs[:, 0].float())
        return torch.cat(out) if out else torch.zeros((0,) + inputs.shape[1:3], device=self.device)

    def _run(self, model, batch: torch.Tensor) -> torch.Tensor:
        forward, count = self._forward(model), len(batch)
        if self.compile and count < self.batch_size:  # one shape: no recompiling, one graph
            batch = torch.cat([batch, batch.new_zeros((self.batch_size - count,) + batch.shape[1:])])
        if self.device.type != "cuda":
            return torch.sigmoid(forward(batch))[:count]
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return torch.sigmoid(forward(batch).float())[:count]

    def _forward(self, model) -> Callable:
        if not self.compile or not isinstance(model, torch.nn.Module):  # an ONNX model runs as is
            return model
        if id(model) not in self._forwards:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._forwards[id(model)] = torch.compile(model, mode=mode, dynamic=False)
        return self._forwards[id(model)]

    def predict_frames(self, frames: np.ndarray, sizes: Sequence[tuple[int, int]],
                       output_size: tuple[int, int] | None = None) -> list[np.ndarray]:
        """Frames of one car (or one photo) -> probabilities at output size."""
        return [p.cpu().numpy() for p in self._full_size(frames, sizes, output_size)]

    @torch.inference_mode()
    def _full_size(self, frames: np.ndarray, sizes: Sequence[tuple[int, int]],
                   output_size: tuple[int, int] | None) -> list[torch.Tensor]:
        """As `predict_frames`, left on the predictor's device."""
        model, inputs, boxes = self._inputs(frames)
        probs = self._probabilities(model, inputs)
        return full_size(probs, boxes, model.spec.frame, [output_size or size for size in sizes])

    def _inputs(self, frames: np.ndarray) -> tuple[models.Segmenter, np.ndarray, list]:
        """One car's frames -> its model, the model's inputs and each photo's crop box."""
        model = self.model_for(len(frames))
        spec = model.spec
        frames = np.stack([resize(f, spec.frame) for f in frames])
        if spec.needs_views or len(frames) == 1:
            inputs, boxes = set_inputs(frames, spec)
        else:  # a photo-only model on a set: each view on its own
            pairs = [set_inputs(f[None], spec) for f in frames]
            inputs, boxes = np.concatenate([p[0] for p in pairs]), [p[1][0] for p in pairs]
        return model, inputs, list(boxes)

    def predict_photo(self, photo: np.ndarray, output_size: tuple[int, int] | None = None,
                      views: Sequence[np.ndarray] = ()) -> np.ndarray:
        """One RGB photo (H x W x 3 uint8) -> probabilities; `views`: the car's other views."""
        photos = [photo, *views]
        sizes = [(p.shape[1], p.shape[0]) for p in photos]
        return self.predict_frames(np.stack([resize(p, self._frame_for(len(photos))) for p in photos]),
                                   sizes, output_size)[0]

    def _frame_for(self, views: int) -> tuple[int, int]:
        return self.model_for(views).spec.frame

    # -- files ----------------------------------------------------------------
    def predict_sets(self, photo_sets: Iterable[PhotoSet],
                     output_size: tuple[int, int] | None = None,
                     lookahead: int = 2, encode: bool = False) -> Iterator[Prediction]:
        """Stream predictions for sets of photo files, in order. In memory: the
        sets of one model batch (whole cars, up to `batch_size` photos, at
        least one car) plus `lookahead` sets being decoded. Unreadable photos
        come back as errors; the rest of their set still gets its background
        from the others. `encode`: return only each mask's run boundaries
        (`Prediction.runs`), found on the predictor's device, instead of
        full-size probabilities."""
        with ThreadPoolExecutor(self.workers) as pool:
            pending: deque[tuple[list[Path], list[Future]]] = deque()
            sets = iter(photo_sets)

            def fill() -> None:  # a batch's worth of photos plus `lookahead` sets
                while len(pending) <= lookahead or sum(len(p) for p, _ in pending) < self.batch_size:
                    photo_set = next(sets, None)
                    if photo_set is None:
                        return
                    frame = self._frame_for(len(photo_set.paths))
                    pending.append((photo_set.paths, [pool.submit(read_frame, p, frame)
                                                      for p in photo_set.paths]))

            fill()
            while pending:
                batch = [pending.popleft()]
                while pending and sum(len(p) for p, _ in batch) + len(pending[0][0]) <= self.batch_size:
                    batch.append(pending.popleft())
                fill()
                yield from self._predict_loaded(batch, output_size, encode)

    def predict_views(self, views: Sequence[tuple[str, object]],
                      output_size: tuple[int, int] | None = None) -> list[Prediction]:
        """One car's views as (name, path or bytes), e.g. uploads: decoded here,
        then predicted together like a set from `predict_sets`."""
        frame = self._frame_for(len(views))
        futures = []
        for name, source in views:
            future: Future = Future()
            try:
                future.set_result(read_frame(source, frame, name=name))
            except ImageError as exc:
                future.set_exception(exc)
            futures.append(future)
        return list(self._predict_loaded([([Path(name) for name, _ in views], futures)], output_size))

    @torch.inference_mode()
    def _predict_loaded(self, sets: list[tuple[list[Path], list[Future]]],
                        output_size, encode: bool = False) -> Iterator[Prediction]:
        """Sets being decoded -> predictions, set by set in order; the cars that
        share a model go through it together."""
        outcomes: list[list[Prediction]] = []
        by_model: dict[int, list[_Car]] = {}
        for paths, futures in sets:
            outcomes.append([])
            car = self._prepare(paths, futures, output_size, outcomes[-1])
            if car is not None:
                by_model.setdefault(id(car.model), []).append(car)
        for cars in by_model.values():
            self._predict_together(cars, encode)
        for outcome in outcomes:
            yield from outcome

    def _prepare(self, paths, futures, output_size, outcome: list[Prediction]) -> _Car | None:
        """One car's decoded views -> its model inputs; unreadable photos and
        unusable sets go to `outcome` as errors."""
        loaded = []
        for path, future in zip(paths, futures):
            try:
                loaded.append((path, *future.result()))
            except ImageError as exc:
                outcome.append(Prediction(path, error=str(exc)))
        if not loaded:
            return None
        try:
            model, inputs, boxes = self._inputs(np.stack([frame for _, frame, _ in loaded]))
        except (NotEnoughViews, ValueError) as exc:
            outcome += [Prediction(path, error=f"{path}: {exc}") for path, _, _ in loaded]
            return None
        return _Car(model, [path for path, _, _ in loaded], inputs, boxes,
                    [output_size or size for _, _, size in loaded], outcome)

    def _predict_together(self, cars: list[_Car], encode: bool) -> None:
        """Cars that share a model: one model call, one resize, one copy back."""
        model = cars[0].model
        probs = self._probabilities(model, np.concatenate([car.inputs for car in cars]))
        probs = full_size(probs, [box for car in cars for box in car.boxes], model.spec.frame,
                          [size for car in cars for size in car.sizes])
        outs = iter(boundaries(probs) if encode else [p.cpu().numpy() for p in probs])
        for car in cars:  # zip takes only this car's share of `outs`
            car.outcome += [Prediction(path, runs=out) if encode else Prediction(path, out)
                            for path, out in zip(car.paths, outs)]


@dataclass
class _Car:
    """One car's readable views, ready for its model."""
    model: models.Segmenter
    paths: list[Path]
    inputs: np.ndarray
    boxes: list
    sizes: list[tuple[int, int]]
    outcome: list[Prediction]  # its predictions go here, after its errors


def boundaries(probs: list[torch.Tensor]) -> list[np.ndarray]:
    """Run boundaries of thresholded probabilities. On a GPU in one batch where
    the sizes agree (one device-to-host copy per model batch); on the CPU numpy's
    flatnonzero is ~15x faster than torch's nonzero."""
    if not probs or probs[0].device.type == "cpu":
        return [run_boundaries(p.numpy() > THRESHOLD) for p in probs]
    masks = [p > THRESHOLD for p in probs]
    if len({m.shape for m in masks}) == 1:
        return batch_run_boundaries(torch.stack(masks))
    return [batch_run_boundaries(m[None])[0] for m in masks]
