"""The predictor: the one way to turn photos into probabilities and masks.

The CLI, the HTTP service, the Python API, the Ray engine and evaluation all
call `Predictor`. Photos flow one way, a model batch (whole cars, up to
`batch_size` photos) at a time:

    decode      worker threads (nvjpeg on a GPU): full-resolution uint8 photos on the device
    inputs      frames, each car's median and mean, differences, the grouping check,
                crop boxes, crop and resize to the network's size (`inputs`)
    model       one call per model for all the cars of the batch
    postprocess holes filled, each crop resized into its box of the output,
                thresholded, run-boundary flags (`postprocess`, `rle`)
    copy back   pinned host memory, without blocking; read on the host while
                the next batch is computed

Everything from `inputs` to `postprocess` is torch on the predictor's device.
The next cars are decoded while a batch is computed, and a batch's results
are read back while the next one is computed; memory holds a batch, the cars
being decoded (`lookahead`) and one batch being read back.

`Predictor` is the facade over the parts in `carmask.predictor` (which never
import it): `runner` (the models), `compute` (sets, inputs, the network),
`finish` (placing, hooks, copy-back), `stream` (lookahead, batching, the
finishing thread), `photos` (a photo in flight, `Prediction`), `stages`.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from carmask.devices import pick_device, usable_cores
from carmask.inputs.build import car_inputs
from carmask.inputs.decode import Decoder, Source, decode
from carmask.inputs.spec import SETS, STUDIO_DIFFERING, STUDIO_SAME, Box
from carmask.io import PHOTO_TYPES, source_name
from carmask.kaggle import PhotoSet
from carmask.models import refiner as rf
from carmask.predictor.compute import Compute
from carmask.predictor.finish import CUTOUTS, Batch, Finish, Hook
from carmask.predictor.photos import Car, Prediction
from carmask.predictor.runner import Runner, Segmenter, network_batch
from carmask.predictor.stages import STAGES, Stages
from carmask.predictor.stream import Stream

__all__ = [
    "CUTOUTS",
    "SETS",
    "STAGES",
    "STUDIO_DIFFERING",
    "STUDIO_SAME",
    "Batch",
    "Prediction",
    "Predictor",
    "named_views",
    "network_batch",
]


class Predictor:
    """Photos to probabilities with one model, or the shipped defaults.

    `model`: a shipped name, a checkpoint path, a tier (`fast`, `accurate`) or
    None for the shipped defaults (on a GPU the most accurate tier shipped, on
    the CPU the fast one: `models.tiers_for`); with a tier or None, each photo
    gets the multi-view model of that tier in a set of at least 3 views of a
    car, the single-photo one otherwise (`models.default_for`).
    `output_size` (width, height) defaults to each photo's own. The network
    sees every photo upright, turned as its EXIF orientation says; `upright`
    gives the results so (cut-outs), False turns them back onto the stored
    pixel grid (Kaggle submissions, whose masks are on that grid; an output
    size is then the stored grid's too).
    `sets`: "auto" predicts a car's views as a set only when they share a
    studio (same size, and each agrees with their median background outside
    the car), else photo by photo with a warning; "always" trusts the names;
    "never" predicts every photo alone. `nvjpeg`: decode JPEGs on a CUDA
    device with torchvision ("auto": where it works). `refine`: a hook on
    full-size probabilities (see `Batch`), for every prediction; cut-outs use
    it too, or `refine.edges` when there is none. `refiner`: a learned edge
    refiner (a shipped name of `carmask models`' refiners, or a checkpoint)
    that re-decides the outline of every prediction at 512x512 before any
    resize, hook or cut-out; "auto": the shipped one made for the model
    (`models.refiner.chosen`: edge-refiner-fast after the fast tier, none
    after a checkpoint); None or "none": the network's own outline; with `tta` the
    refiner's correction, too, is averaged with the mirrored photo's. `profile`: time each stage (the
    device is synchronised between stages, so the stages no longer overlap)
    into `stage_seconds`. `close()` (or `with Predictor(...) as predictor:`)
    shuts its decoding threads down.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str = "auto",
        batch_size: int = 16,
        workers: int | None = None,
        tta: bool = False,
        compile: bool = False,
        upright: bool = True,
        sets: str = "auto",
        nvjpeg="auto",
        refine: Hook | None = None,
        refiner: str | os.PathLike | None = "auto",
        profile: bool = False,
    ):
        if sets not in SETS:
            raise ValueError(f"sets must be one of {', '.join(SETS)}, not {sets!r}")
        if batch_size < 1 or (workers is not None and workers < 1):
            raise ValueError(f"batch size and workers must be at least 1, not {batch_size} and {workers}")
        self.device = pick_device(device)
        # Decoding threads (Pillow releases the GIL): one per core, less the one
        # that the device work itself takes when the device is the CPU.
        workers = workers or max(1, usable_cores() - (self.device.type == "cpu"))
        self._runner = Runner(model, self.device, batch_size, tta=tta, compile=compile)
        self._stages = Stages(self.device, profile)
        self._compute = Compute(self._runner, sets, self._stages)
        # The lock is held while work is queued on the device outside the
        # decoding thread, and while nvjpeg decodes (which must find nothing queued).
        self.refiner = rf.chosen(refiner, model, self.device)  # a name or path, or None
        edge_refiner = rf.load(self.refiner)[0].to(self.device) if self.refiner is not None else None
        self._finish = Finish(self.device, upright, refine, threading.Lock(), self._stages, edge_refiner, tta)
        self._stream = Stream(self._compute, self._finish, self._stages, batch_size, workers, nvjpeg)

    # -- what it was made with ------------------------------------------------
    @property
    def model_name(self) -> str | os.PathLike | None:
        return self._runner.name

    @property
    def batch_size(self) -> int:
        return self._runner.batch_size

    @property
    def tta(self) -> bool:
        return self._runner.tta

    @property
    def compile(self) -> bool:
        return self._runner.compile

    @property
    def sets(self) -> str:
        return self._compute.sets

    @property
    def upright(self) -> bool:
        return self._finish.upright

    @property
    def refine(self) -> Hook | None:
        return self._finish.refine

    @property
    def workers(self) -> int:
        return self._stream.workers

    @property
    def nvjpeg(self):
        return self._stream.nvjpeg

    @property
    def stage_seconds(self) -> dict[str, float] | None:
        """Seconds per stage when profiling (a benchmark may reset it), else None."""
        return self._stages.seconds

    @stage_seconds.setter
    def stage_seconds(self, seconds: dict[str, float] | None) -> None:
        self._stages.seconds = seconds

    def model_for(self, views: int) -> Segmenter:
        """The model for a photo that comes with `views` views of its car."""
        return self._runner.model_for(views)

    @property
    def decoder(self) -> Decoder:
        """The decoding threads (and nvjpeg), made on first use."""
        return self._stream.decoder

    def close(self) -> None:
        """Shut the decoding threads down (after the photos being decoded). The
        predictor may be used again: it makes new ones on its next use."""
        self._stream.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the public ways in ---------------------------------------------------
    def predict_sets(
        self,
        photo_sets: Iterable[PhotoSet],
        output_size: tuple[int, int] | None = None,
        lookahead: int = 2,
        encode: bool = False,
        cutout: str | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions for sets of photo files, in order (each set's
        photos in its order). In memory: the sets of one model batch (whole
        cars, up to `batch_size` photos, at least one car), `lookahead` sets
        being decoded and one batch being read back. Unreadable photos come
        back as errors; the rest of their set still gets its background from
        the others. `encode`: return only each mask's run boundaries
        (`Prediction.runs`), found on the predictor's device, instead of
        full-size probabilities. `cutout`: "refined" or "plain" edges, see
        `predict_views`."""
        cars = (
            Car(s.car, [Source(Path(p), p) for p in s.paths]) if isinstance(s, PhotoSet) else _not_a_set(s)
            for s in photo_sets
        )
        return self._stream(cars, self._finish.output(output_size, encode, cutout), lookahead, throughput=True)

    def predict_views(
        self, views: Sequence[tuple[str, object]], output_size: tuple[int, int] | None = None, cutout: str | None = None
    ) -> list[Prediction]:
        """One car's views as (name, source), the source a path, bytes, a numpy
        array or a PIL image (e.g. uploads): decoded here, then predicted
        together like a set from `predict_sets`. `cutout`: return each photo's
        cut-out pieces, `alpha` and `foreground` at its own size, computed in
        the device batch and read back once: "refined" (the `refine` hook, by
        default `refine.edges`) or "plain" (the network's own soft edge)."""
        if isinstance(views, PHOTO_TYPES) or not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in views):
            raise TypeError(
                "predict_views takes a car's views as (name, photo) pairs, e.g. [('car_01.jpg', array), ...]"
            )
        car = Car(None, [Source(Path(str(name)), data) for name, data in views])
        return list(self._stream([car], self._finish.output(output_size, False, cutout), lookahead=0))

    def predict_photo(self, photo, output_size: tuple[int, int] | None = None, views: Sequence = ()) -> np.ndarray:
        """One photo (path, bytes, H x W x 3 uint8 array or PIL image) ->
        H x W probabilities; `views`: the car's other views (same kinds).
        Raises `ImageError` or `NotEnoughViews`; a warning (e.g. views that do
        not share a studio) goes to `warnings.warn`."""
        prediction = self.predict_views(named_views(photo, views), output_size)[0]
        if prediction.error:
            raise prediction.exception
        if prediction.warning:
            warnings.warn(prediction.warning, stacklevel=2)
        return prediction.probs

    @torch.inference_mode()
    def model_inputs(self, photos: Sequence) -> tuple[np.ndarray, list[Box]]:
        """What the network sees for `photos` (paths, bytes, arrays or PIL
        images) taken as one car, a set if the model compares views: N x H x W
        x C uint8, and each photo's crop box in frame pixels. The training
        cache holds exactly these."""
        spec = self.model_for(len(photos)).spec
        inputs = car_inputs([decode(p, device=self.device) for p in photos], spec)
        return inputs.x.permute(0, 2, 3, 1).cpu().numpy(), inputs.boxes


def _not_a_set(item) -> NoReturn:
    raise TypeError(
        f"predict_sets takes kaggle.PhotoSet items (kaggle.group_by_car(paths) makes them), not {type(item).__name__}"
    )


def named_views(photo, views: Sequence = (), name: str | None = None) -> list[tuple[str, object]]:
    """A photo and its car's other views as the (name, source) pairs of
    `Predictor.predict_views`: the photo named `name`, else by its path, else
    as what it is (<upload>, <array>, <image>); the views by their paths, else
    "view 2", "view 3"..."""
    if isinstance(views, PHOTO_TYPES):
        raise TypeError("views is a list of the car's other views; give one view as [view]")
    return [(name or source_name(photo), photo)] + [(source_name(v, f"view {i}"), v) for i, v in enumerate(views, 2)]
