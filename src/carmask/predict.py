"""The predictor: the one way to turn photos into probabilities and masks.

The CLI, the HTTP service, the Python API, the Ray engine and evaluation all
call `Predictor`. Photos flow one way, a model batch (whole cars, up to
`batch_size` photos) at a time:

    decode      worker threads (nvjpeg on a GPU): full-resolution uint8 photos on the device
    inputs      frames, each car's median and mean, differences, the grouping check,
                crop boxes, crop and resize to the network's size (`views`)
    model       one call per model for all the cars of the batch
    postprocess holes filled, each crop resized into its box of the output,
                thresholded, run-boundary flags (`postprocess`, `rle`)
    copy back   pinned host memory, without blocking; read on the host while
                the next batch is computed

Everything from `inputs` to `postprocess` is torch on the predictor's device.
The next cars are decoded while a batch is computed, and a batch's results
are read back while the next one is computed; memory holds a batch, the cars
being decoded (`lookahead`) and one batch being read back.
"""
from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NoReturn, Sequence

import numpy as np
import torch

from carmask.devices import pick_device, usable_cores
from carmask.inputs.build import Inputs, car_inputs, model_inputs
from carmask.inputs.decode import Decoded, Decoder, Source, decode, stored_grid
from carmask.inputs.resize import frames, resize_map
from carmask.inputs.spec import MIN_VIEWS, SETS, STUDIO_DIFFERING, STUDIO_SAME, Box, NotEnoughViews
from carmask.io import PHOTO_TYPES, check_size, source_name
from carmask.outcomes import ImageError, Note, NoteKind, Treatment, skip
from carmask.kaggle import PhotoSet
from carmask.postprocess import THRESHOLD, Placed, mask_flags, place
from carmask.predictor.runner import Runner, Segmenter, network_batch
from carmask.refine import Edges, edges, plain
from carmask.rle import box_boundaries, encode, encode_boundaries

CUTOUTS = ("refined", "plain")
STAGES = ("decode", "inputs", "model", "postprocess", "copy back")
__all__ = ["CUTOUTS", "SETS", "STAGES", "STUDIO_DIFFERING", "STUDIO_SAME", "Batch", "Prediction", "Predictor",
           "named_views", "network_batch"]


@dataclass
class Prediction:
    """The outcome for one photo: probabilities at output size (or only the
    mask's run boundaries, when asked to encode; or, for a cut-out, `alpha`
    H x W uint8 and `foreground` H x W x 3 uint8 at the photo's own size), or
    an `error` (an `ImageError`: its `kind` says why, `str()` names the photo
    and the reason). `note`: how the photo was predicted when the user should
    know (e.g. taken out of its set), the same `Note` on every photo it
    concerns; `warning` is its sentence. `exception` is the one behind `error`
    (e.g. `NotEnoughViews`)."""
    path: Path
    probs: np.ndarray | None = None
    error: ImageError | None = None
    runs: np.ndarray | None = None
    note: Note | None = None
    exception: Exception | None = field(default=None, repr=False, compare=False)
    alpha: np.ndarray | None = field(default=None, repr=False)
    foreground: np.ndarray | None = field(default=None, repr=False)

    @property
    def warning(self) -> str | None:
        """The note as a sentence, for people (the CLI, the service, `warnings.warn`)."""
        return str(self.note) if self.note else None

    @property
    def mask(self) -> np.ndarray:
        return (self.probs > THRESHOLD).astype(np.uint8)

    @property
    def rle(self) -> str:
        return encode_boundaries(self.runs) if self.runs is not None else encode(self.mask)


@dataclass
class Batch:
    """What a `refine` hook sees of a model batch, on the predictor's device.

    `photos[i]`: photo i decoded at full resolution, 3 x H x W uint8, upright
    (as the network sees it); `views[i]`: the
    indices in `photos` of the views its car's background came from (itself
    included; `[i]` for a photo predicted alone); `probs[i]`: its H x W
    float32 probabilities at its output size (the photo's own unless an
    output size was asked for), upright too. The hook returns, one per photo, either
    `refine.Edges` (alpha and the car's colour, at the photo's size: what a
    cut-out takes) or an alpha tensor alone (float 0..1 or uint8 0..255, at
    any size); for masks and probabilities, alpha is resized to the output
    size and thresholded like probabilities."""
    photos: list[torch.Tensor]
    views: list[list[int]]
    probs: list[torch.Tensor]


class Predictor:
    """Photos to probabilities with one model, or the shipped defaults.

    `model`: a shipped name, a checkpoint path, a tier (`fast`, `accurate`) or
    None for the most accurate tier shipped; with a tier or None, each photo
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
    it too, or `refine.edges` when there is none. `profile`: time each stage (the
    device is synchronised between stages, so the stages no longer overlap)
    into `stage_seconds`. `close()` (or `with Predictor(...) as predictor:`)
    shuts its decoding threads down.
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto",
                 batch_size: int = 16, workers: int | None = None, tta: bool = False,
                 compile: bool = False, upright: bool = True, sets: str = "auto", nvjpeg="auto",
                 refine: Callable[[Batch], list[Edges | torch.Tensor]] | None = None, profile: bool = False):
        if sets not in SETS:
            raise ValueError(f"sets must be one of {', '.join(SETS)}, not {sets!r}")
        if batch_size < 1 or (workers is not None and workers < 1):
            raise ValueError(f"batch size and workers must be at least 1, not {batch_size} and {workers}")
        self.device = pick_device(device)
        self._runner = Runner(model, self.device, batch_size, tta=tta, compile=compile)
        # Decoding threads (Pillow releases the GIL): one per core, less the one
        # that the device work itself takes when the device is the CPU.
        self.workers = workers or max(1, usable_cores() - (self.device.type == "cpu"))
        self.upright, self.sets, self.nvjpeg, self.refine = upright, sets, nvjpeg, refine
        self.stage_seconds: dict[str, float] | None = dict.fromkeys(STAGES, 0.0) if profile else None
        self._decoder: Decoder | None = None
        # Held while work is queued on the device outside the decoding thread,
        # and while nvjpeg decodes (which must find nothing queued).
        self._device_lock = threading.Lock()

    # -- the model runner ---------------------------------------------------
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

    def model_for(self, views: int) -> Segmenter:
        """The model for a photo that comes with `views` views of its car."""
        return self._runner.model_for(views)

    @property
    def decoder(self) -> Decoder:
        """The decoding threads (and nvjpeg), made on first use."""
        if self._decoder is None:
            self._decoder = Decoder(self.device, self.workers, nvjpeg=self.nvjpeg, lock=self._device_lock)
        return self._decoder

    def close(self) -> None:
        """Shut the decoding threads down (after the photos being decoded). The
        predictor may be used again: it makes new ones on its next use."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the public ways in ---------------------------------------------------
    def predict_sets(self, photo_sets: Iterable[PhotoSet],
                     output_size: tuple[int, int] | None = None,
                     lookahead: int = 2, encode: bool = False, cutout: str | None = None) -> Iterator[Prediction]:
        """Stream predictions for sets of photo files, in order (each set's
        photos in its order). In memory: the sets of one model batch (whole
        cars, up to `batch_size` photos, at least one car), `lookahead` sets
        being decoded and one batch being read back. Unreadable photos come
        back as errors; the rest of their set still gets its background from
        the others. `encode`: return only each mask's run boundaries
        (`Prediction.runs`), found on the predictor's device, instead of
        full-size probabilities. `cutout`: "refined" or "plain" edges, see
        `predict_views`."""
        cars = (_Car(s.car, [Source(Path(p), p) for p in s.paths]) if isinstance(s, PhotoSet) else _not_a_set(s)
                for s in photo_sets)
        return self._stream(cars, self._output(output_size, encode, cutout), lookahead, throughput=True)

    def predict_views(self, views: Sequence[tuple[str, object]],
                      output_size: tuple[int, int] | None = None, cutout: str | None = None) -> list[Prediction]:
        """One car's views as (name, source), the source a path, bytes, a numpy
        array or a PIL image (e.g. uploads): decoded here, then predicted
        together like a set from `predict_sets`. `cutout`: return each photo's
        cut-out pieces, `alpha` and `foreground` at its own size, computed in
        the device batch and read back once: "refined" (the `refine` hook, by
        default `refine.edges`) or "plain" (the network's own soft edge)."""
        if isinstance(views, PHOTO_TYPES) or not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in views):
            raise TypeError("predict_views takes a car's views as (name, photo) pairs, e.g. "
                            "[('car_01.jpg', array), ...]")
        car = _Car(None, [Source(Path(str(name)), data) for name, data in views])
        return list(self._stream([car], self._output(output_size, False, cutout), lookahead=0))

    def predict_photo(self, photo, output_size: tuple[int, int] | None = None,
                      views: Sequence = ()) -> np.ndarray:
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

    # -- the stream -----------------------------------------------------------
    def _output(self, size, encode: bool, cutout: str | None) -> _Output:
        size = None if size is None else check_size(size)
        if cutout is None:
            return _Output(size, encode, None)
        if cutout not in CUTOUTS:
            raise ValueError(f"cutout must be one of {', '.join(CUTOUTS)}, not {cutout!r}")
        if size is not None or encode:
            raise ValueError("cut-outs are made at each photo's own size, as pieces, not encoded")
        return _Output(None, False, plain if cutout == "plain" else self.refine or edges)

    def _stream(self, cars: Iterable[_Car], output: _Output, lookahead: int,
                throughput: bool = False) -> Iterator[Prediction]:
        """Predictions for the cars, in order. `throughput` (a stream of many
        cars on the CPU): torch ops run on one thread each, since the decoding
        workers and the finishing thread already keep every core busy, and
        torch's own threads only wait for one another then."""
        with _single_threaded_torch(throughput and self.device.type == "cpu"):
            yield from self._stream_batches(cars, output, lookahead)

    def _stream_batches(self, cars, output: _Output, lookahead: int) -> Iterator[Prediction]:
        decoder, pending = self.decoder, deque()
        cars, decoded_before = iter(cars), decoder.seconds

        def fill() -> None:  # a batch's worth of photos plus `lookahead` cars, decoding
            while len(pending) <= lookahead or sum(len(c.sources) for c in pending) < self.batch_size:
                car = next(cars, None)
                if car is None:
                    return
                frame, keep = self._expected_frame(len(car.sources)), bool(self.refine or output.cutout)
                car.futures = [decoder.submit(source, frame, keep) for source in car.sources]
                pending.append(car)

        # Postprocessing and reading back run in a thread of their own, one
        # batch behind; inline when profiling, so that the stages do not
        # overlap, and for one car's views (`lookahead` 0), where there is
        # nothing to overlap and a second thread's torch ops only compete with
        # the first's (a refined 1918x1280 cut-out: 0.052 s inline, 0.082 s not).
        finisher = _Finisher(lambda batch: self._finish(batch, output),
                             threaded=self.stage_seconds is None and lookahead > 0)
        try:
            fill()
            while pending:
                batch = [pending.popleft()]
                while pending and sum(len(c.sources) for c in batch) + len(pending[0].sources) <= self.batch_size:
                    batch.append(pending.popleft())
                fill()
                finisher.put(self._compute(batch))
                yield from finisher.done()
            yield from finisher.close()
        finally:
            # Stopped early (Ctrl-C, a closed generator): no decoding for cars
            # never to be predicted, and no thread left in torch when Python
            # exits (that aborted the process: "terminate called...").
            for car in pending:
                for future in car.futures:
                    future.cancel()
            finisher.stop()
        if self.stage_seconds is not None:  # the workers' decoding time (they overlap the rest)
            self.stage_seconds["decode"] += decoder.seconds - decoded_before

    def _expected_frame(self, views: int) -> tuple[int, int] | None:
        """The frame the photos of a car of `views` views will most likely need."""
        as_set = views >= MIN_VIEWS and self.sets != "never"
        try:
            return self.model_for(views if as_set else 1).spec.frame
        except (NotEnoughViews, ValueError):  # no such model: said where it is needed
            return None

    def _frames(self, slots: list[_Slot], size: tuple[int, int]) -> torch.Tensor:
        """The slots' photos at the frame `size`: made by the decoding workers, or here."""
        return frames([s.frame if s.frame is not None and s.frame.shape[-1] == size[0]
                       and s.frame.shape[-2] == size[1] else s.full_photo(self) for s in slots], size)

    @contextmanager
    def _stage(self, name: str):
        """Times a stage when profiling (waiting for the device at its end)."""
        if self.stage_seconds is None:
            yield
            return
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stage_seconds[name] += time.perf_counter() - start

    @torch.inference_mode()
    def _compute(self, cars: list[_Car]) -> tuple[list[_Car], list[tuple]]:
        """A model batch's decoded photos to the network's probabilities: the
        cars, and model by model (model, its photos, their inputs, N x h x w
        probabilities)."""
        photos = iter(self.decoder.gather([f for car in cars for f in car.futures]))
        for car in cars:
            car.slots, car.futures = [_Slot(source, next(photos)) for source in car.sources], []
        with self._stage("inputs"):
            runs = self._inputs([unit for car in cars for unit in self._group(car)])
        out = []
        for model, units, inputs in runs:
            with self._stage("model"):
                probs = self._runner.probabilities(model, inputs.x)
            out.append((model, [slot for unit in units for slot in unit.slots], inputs, probs))
        return cars, out

    @torch.inference_mode()
    def _finish(self, computed, output: _Output) -> list[Prediction]:
        """Probabilities to the predictions of a batch's cars: holes, resize into
        the boxes, (refine,) threshold and run-boundary flags, or the cut-out
        pieces, on the device, copied to pinned host memory, read there."""
        cars, runs = computed
        with self._device_lock, self._stage("postprocess"):
            placed = self._place(runs, output.size)
            if output.cutout is not None:
                made = self._hook(output.cutout, placed) if placed else []
                pieces = [(_to_host(self._grid(slot, e.alpha)), _to_host(self._grid(slot, e.foreground, (0, 1))))
                          for (slot, _), e in zip(placed, made)]
            elif self.refine is not None and placed:
                placed = [(slot, _as_probabilities(e, p.size))
                          for (slot, p), e in zip(placed, self._hook(self.refine, placed))]
            if output.cutout is None:
                placed = self._as_given(placed)
            slots = [slot for slot, _ in placed]
            for slot in slots:
                slot.photo, slot.frame, slot.views = None, None, []  # only the results travel on
            if output.encode:
                flags = _to_host(mask_flags([p for _, p in placed]))
            elif output.cutout is None:
                probs = [_to_host(p.full()) for _, p in placed]
            if self.device.type == "cuda":
                ready = torch.cuda.Event()
                ready.record()
        with self._stage("copy back"):
            if self.device.type == "cuda":
                ready.synchronize()
            if output.encode:
                host, start = flags.numpy(), 0
                for slot, (_, p) in zip(slots, placed):
                    end = start + p.probs.shape[0] * (p.probs.shape[1] + 1)
                    slot.runs = box_boundaries(host[start:end], p.box, p.size[0])
                    start = end
            elif output.cutout is not None:
                for slot, (alpha, foreground) in zip(slots, pieces):
                    slot.alpha, slot.foreground = alpha.numpy(), foreground.numpy()
            else:
                for slot, host in zip(slots, probs):
                    slot.probs = host.numpy()
            return [slot.prediction() for car in cars for slot in car.slots]

    def _group(self, car: _Car) -> list[_Unit]:
        """A car's readable photos as units predicted together: its set, or
        single photos (with a warning where the set was not used)."""
        readable = [slot for slot in car.slots if slot.error is None]
        if len(readable) < (1 if car.name else 2) or self.sets == "never":  # a named car's one view: said
            return [_Unit([slot]) for slot in readable]
        if not self.model_for(max(len(readable), MIN_VIEWS)).spec.needs_views:
            return [_Unit([slot]) for slot in readable]  # a photo-only model: each alone
        units: list[_Unit] = []
        if self.sets == "auto" and len({slot.size for slot in readable}) > 1:
            common = max({slot.size for slot in readable}, key=[slot.size for slot in readable].count)
            odd = [slot for slot in readable if slot.size != common]
            readable = [slot for slot in readable if slot.size == common]
            note = Note(NoteKind.OTHER_SIZE, _names(odd), Treatment.ALONE, car.name, common)
            units += [_Unit([slot], note) for slot in odd]
        if len(readable) >= MIN_VIEWS:
            return [_Unit(readable, check=self.sets == "auto", car=car.name)] + units
        if self._runner.defaults:  # a default model for each case
            note = Note(NoteKind.TOO_FEW_VIEWS, _names(readable), Treatment.SINGLE_PHOTO_MODEL, car.name,
                        views=len(readable))
            return [_Unit([slot], note) for slot in readable] + units
        return [_Unit([slot]) for slot in readable] + units  # the named model says what it needs

    def _inputs(self, units: list[_Unit]) -> list[tuple[Segmenter, list[_Unit], object]]:
        """Model inputs for the units, by model: sets first, then single photos
        (with the photos of sets that turn out not to share a studio)."""
        sets, singles = [u for u in units if len(u.slots) > 1], [u for u in units if len(u.slots) == 1]
        runs = []
        if sets:
            model = self.model_for(MIN_VIEWS)
            alone = not self.model_for(1).spec.needs_views  # else a failed check keeps the set
            inputs = model_inputs(self._frames([s for u in sets for s in u.slots], model.spec.frame),
                                  [len(u.slots) for u in sets], model.spec)
            kept, rows, start = [], [], 0
            for unit in sets:
                shares = inputs.differing[start:start + len(unit.slots)]
                shared = STUDIO_SAME <= min(shares) and max(shares) <= STUDIO_DIFFERING
                failed, note = unit.check and not shared, None
                if failed:
                    apart = max(shares) > STUDIO_DIFFERING
                    note = Note(NoteKind.NOT_ONE_STUDIO if apart else NoteKind.ONE_PHOTO, _names(unit.slots),
                                Treatment.PHOTO_BY_PHOTO if alone else Treatment.AS_A_SET, car=unit.car,
                                share=float(max(shares) if apart else min(shares)))
                if failed and alone:
                    singles += [_Unit([slot], note) for slot in unit.slots]
                else:
                    for slot in unit.slots:
                        slot.note = note
                    kept.append(unit)
                    rows += range(start, start + len(unit.slots))
                start += len(unit.slots)
            if kept:
                for unit in kept:
                    for slot in unit.slots:
                        slot.views = unit.slots
                if len(rows) < len(inputs.boxes):  # some sets left for single photos
                    index = torch.tensor(rows, device=inputs.x.device)
                    inputs = Inputs(inputs.x[index], [inputs.boxes[r] for r in rows], None)
                runs.append((model, kept, inputs))
        if singles:
            model = self.model_for(1)
            if model.spec.needs_views:
                error = NotEnoughViews(f"this model compares each photo with its car's other views: "
                                       f"it needs a set of at least {MIN_VIEWS} views")
                for unit in singles:
                    unit.slots[0].fail(error, unit.note)
            else:
                for unit in singles:
                    unit.slots[0].note = unit.note
                runs.append((model, singles, model_inputs(self._frames([u.slots[0] for u in singles],
                                                                       model.spec.frame),
                                                          [1] * len(singles), model.spec)))
        return runs

    def _place(self, runs, size: tuple[int, int] | None) -> list[tuple[_Slot, Placed]]:
        """Each photo's probabilities at its output `size` (None: its own), upright."""
        placed: list[tuple[_Slot, Placed]] = []
        for model, members, inputs, probs in runs:
            sizes = [slot.upright_size(size, self.upright) for slot in members]
            placed += zip(members, place(probs, inputs.boxes, model.spec.frame, sizes))
        return placed

    def _as_given(self, placed: list[tuple[_Slot, Placed]]) -> list[tuple[_Slot, Placed]]:
        """Probabilities as the results are given: upright, or turned back onto the stored grid."""
        return placed if self.upright else [(slot, _on_grid(p, slot.orientation)) for slot, p in placed]

    def _grid(self, slot: _Slot, piece: torch.Tensor, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
        """A cut-out piece as the results are given: upright, or on the stored grid."""
        return piece if self.upright else stored_grid(piece, slot.orientation, dims)

    def _hook(self, hook: Callable, placed: list[tuple[_Slot, Placed]]) -> list[Edges | torch.Tensor]:
        """What a refine hook makes of the batch (see `Batch`)."""
        index = {id(slot): i for i, (slot, _) in enumerate(placed)}
        return hook(Batch([slot.full_photo(self) for slot, _ in placed],
                          [[index[id(v)] for v in slot.views] or [i] for i, (slot, _) in enumerate(placed)],
                          [p.full() for _, p in placed]))


@dataclass(frozen=True)
class _Output:
    """What a stream returns: probabilities at `size` (None: each photo's
    own), or only run boundaries (`encode`), or cut-out pieces made by the
    hook `cutout`."""
    size: tuple[int, int] | None
    encode: bool
    cutout: Callable[[Batch], list[Edges]] | None


def _on_grid(placed: Placed, orientation: int) -> Placed:
    """Upright probabilities turned back onto the stored grid of a photo with
    the EXIF `orientation` (whole: its box turns with it)."""
    if orientation == 1:
        return placed
    probs = stored_grid(placed.full(), orientation)
    size = (probs.shape[1], probs.shape[0])
    return Placed(probs, Box(0, 0, *size), size)


def _as_probabilities(refined: Edges | torch.Tensor, size: tuple[int, int]) -> Placed:
    """A refine hook's alpha as probabilities at the output `size` (width, height)."""
    alpha = refined.alpha if isinstance(refined, Edges) else refined
    alpha = alpha.float() / 255 if alpha.dtype == torch.uint8 else alpha.float()
    return Placed(resize_map(alpha[None, None], size)[0, 0], Box(0, 0, *size), size)


@dataclass
class _Car:
    """One car's photos (or one photo) as the caller gave them."""
    name: str | None
    sources: list[Source]
    futures: list[Future] = field(default_factory=list)
    slots: list[_Slot] = field(default_factory=list)


class _Slot:
    """One photo on its way through a batch: its decoded pixels, then its outcome."""

    def __init__(self, source: Source, decoded: Decoded | Exception):
        self.source, self.path, self.runs, self.probs = source, source.name, None, None
        self.note: Note | None = None
        self.alpha = self.foreground = None
        self.error: Exception | None = decoded if isinstance(decoded, Exception) else None
        self.photo = self.frame = self.size = None
        self.orientation = 1  # the EXIF orientation it was turned upright from
        self.views: list[_Slot] = []  # the slots of its set, when predicted as one
        if self.error is None:
            self.photo, self.frame, self.size = decoded.photo, decoded.frame, decoded.size
            self.orientation = decoded.orientation

    def upright_size(self, size: tuple[int, int] | None, upright: bool) -> tuple[int, int]:
        """Where its probabilities are placed, upright: `size` (width, height,
        on the stored grid when the results go back there), else its own."""
        if size is None:
            return self.size
        return (size[1], size[0]) if not upright and self.orientation in (5, 6, 7, 8) else size

    def full_photo(self, predictor: Predictor) -> torch.Tensor:
        """The photo at full resolution: kept from decoding, or decoded again
        (on the CPU the workers keep only the frame its model was expected to need)."""
        if self.photo is None:
            self.photo = decode(self.source.data, name=str(self.path), device=predictor.device)
        return self.photo

    def fail(self, error: Exception, note: Note | None = None) -> None:
        self.error, self.note, self.photo = error, note, None

    def prediction(self) -> Prediction:
        if self.error is not None:
            return Prediction(self.path, error=skip(self.path, self.error), note=self.note, exception=self.error)
        return Prediction(self.path, probs=self.probs, runs=self.runs, note=self.note,
                          alpha=self.alpha, foreground=self.foreground)


@dataclass
class _Unit:
    """Photos predicted together by one model: a car's set, or one photo."""
    slots: list[_Slot]
    note: Note | None = None
    check: bool = False  # test that the set shares one studio
    car: str | None = None  # its car's name (None: uploads)


class _Finisher:
    """Runs `work` on each batch handed to `put`, in order, in a thread of its
    own (or inline), one batch behind at most; `done` hands out the
    predictions finished so far."""

    def __init__(self, work: Callable, threaded: bool = True):
        self._work, self._threaded = work, threaded
        self._todo: queue.Queue = queue.Queue(maxsize=1)  # bounded: memory stays bounded
        self._finished: deque = deque()
        self._error: BaseException | None = None
        self._stopped = False
        if threaded:
            self._thread = threading.Thread(target=self._run, name="carmask-finish", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (batch := self._todo.get()) is not None:
            if self._error is None and not self._stopped:
                try:
                    self._finished.append(self._work(batch))
                except BaseException as exc:  # handed to the caller by done()/close()
                    self._error = exc

    def put(self, batch) -> None:
        self._check()
        if self._threaded:
            self._todo.put(batch)
        else:
            self._finished.append(self._work(batch))

    def done(self) -> Iterator[Prediction]:
        self._check()
        while self._finished:
            yield from self._finished.popleft()

    def close(self) -> Iterator[Prediction]:
        """The rest of the predictions, once every batch is finished."""
        if self._threaded:
            self._todo.put(None)
            self._thread.join()
            self._threaded = False
        yield from self.done()

    def stop(self) -> None:
        """End the thread without more work (the caller stopped reading): the
        batch in hand is finished, then the thread is gone."""
        self._stopped = True
        if self._threaded:
            self._todo.put(None)
            self._thread.join()
            self._threaded = False

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


_THREADS_LOCK = threading.Lock()
_THREADS_HELD: list[int] = []  # torch's thread count before the first stream that holds it at 1


@contextmanager
def _single_threaded_torch(active: bool):
    """torch's intra-op threads at 1 while any such stream runs (streams may
    overlap, in threads of their own), then back to what they were."""
    if not active:
        yield
        return
    with _THREADS_LOCK:
        if not _THREADS_HELD:
            _THREADS_HELD.append(torch.get_num_threads())
            torch.set_num_threads(1)
        _THREADS_HELD.append(0)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_HELD.pop()
            if len(_THREADS_HELD) == 1:
                torch.set_num_threads(_THREADS_HELD.pop())


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A device tensor's copy in pinned host memory, begun without waiting (as is on the CPU)."""
    if tensor.device.type == "cpu":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def _not_a_set(item) -> NoReturn:
    raise TypeError(f"predict_sets takes kaggle.PhotoSet items (kaggle.group_by_car(paths) makes them), "
                    f"not {type(item).__name__}")


def named_views(photo, views: Sequence = (), name: str | None = None) -> list[tuple[str, object]]:
    """A photo and its car's other views as the (name, source) pairs of
    `Predictor.predict_views`: the photo named `name`, else by its path, else
    as what it is (<upload>, <array>, <image>); the views by their paths, else
    "view 2", "view 3"..."""
    if isinstance(views, PHOTO_TYPES):
        raise TypeError("views is a list of the car's other views; give one view as [view]")
    return [(name or source_name(photo), photo)] + [(source_name(v, f"view {i}"), v)
                                                             for i, v in enumerate(views, 2)]


def _names(slots: Sequence[_Slot]) -> tuple[str, ...]:
    return tuple(slot.path.name for slot in slots)
