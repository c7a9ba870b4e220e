"""A model batch's probabilities to what the caller asked for, on the device:
holes filled and each crop placed at its output size (through the learned
edge refiner at 512x512 when there is one), the refine hook,
turned onto the stored grid, then run-boundary flags, probabilities or
cut-out pieces copied back to the host (pinned memory, without blocking)
and read there."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from carmask.inputs.decode import stored_grid
from carmask.inputs.resize import resize_map
from carmask.inputs.spec import Box
from carmask.io import check_size
from carmask.models import refiner as rf
from carmask.models import refiner_frames
from carmask.postprocess import Placed, mask_flags, place
from carmask.predictor.compute import Run
from carmask.predictor.photos import Car, Prediction, Slot
from carmask.predictor.stages import Stages
from carmask.refine import Edges, edges, plain
from carmask.rle import box_boundaries

CUTOUTS = ("refined", "plain")


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


Hook = Callable[[Batch], list[Edges | torch.Tensor]]


@dataclass(frozen=True)
class Output:
    """What a stream returns: probabilities at `size` (None: each photo's
    own), or only run boundaries (`encode`), or cut-out pieces made by the
    hook `cutout`. `full_photos`: a hook sees the photos at full resolution,
    so the decoding workers keep them. `small`: the edge refiner's size, at
    which the decoding workers also copy each photo (None: no refiner)."""

    size: tuple[int, int] | None
    encode: bool
    cutout: Callable[[Batch], list[Edges]] | None
    full_photos: bool
    small: tuple[int, int] | None = None


# Pieces read on the host once the device is done: a batch's results copied
# back, and what reads them into the slots.
Reader = Callable[[], None]


class Finish:
    """Finishes model batches on `device`: results `upright` or on the stored
    grid, through the learned edge `refiner` (a module of
    `carmask.models.refiner`, or None; `tta`: its mirrored correction
    averaged in) and the `refine` hook (see
    `Predictor`); `lock` held while work is queued on the device (nvjpeg must
    find none)."""

    def __init__(
        self,
        device: torch.device,
        upright: bool,
        refine: Hook | None,
        lock: threading.Lock,
        stages: Stages,
        refiner: torch.nn.Module | None = None,
        tta: bool = False,
    ):
        self.device, self.upright, self.refine, self.lock, self.stages = device, upright, refine, lock, stages
        self.refiner, self.tta = refiner, tta

    def output(self, size, encode: bool, cutout: str | None) -> Output:
        """What a stream is asked for, checked."""
        size = None if size is None else check_size(size)
        small = rf.SIZE if self.refiner is not None else None
        if cutout is None:
            return Output(size, encode, None, self.refine is not None, small)
        if cutout not in CUTOUTS:
            raise ValueError(f"cutout must be one of {', '.join(CUTOUTS)}, not {cutout!r}")
        if size is not None or encode:
            raise ValueError("cut-outs are made at each photo's own size, as pieces, not encoded")
        return Output(None, False, plain if cutout == "plain" else self.refine or edges, True, small)

    @torch.inference_mode()
    def __call__(self, cars: list[Car], runs: list[Run], output: Output) -> list[Prediction]:
        """Probabilities to the predictions of a batch's cars: holes, resize into
        the boxes, (refine,) threshold and run-boundary flags, or the cut-out
        pieces, on the device, copied to pinned host memory, read there."""
        # on the CPU nothing is queued on a device: batches may finish side by side
        with self.lock if self.device.type == "cuda" else nullcontext(), self.stages("postprocess"):
            read = self._on_device(self._placed(runs, output.size), output)
            ready = None
            if self.device.type == "cuda":
                ready = torch.cuda.Event()
                ready.record()
        with self.stages("copy back"):
            if ready is not None:
                ready.synchronize()
            read()
            return [slot.prediction() for car in cars for slot in car.slots]

    def _placed(self, runs: list[Run], size: tuple[int, int] | None) -> list[tuple[Slot, Placed]]:
        """Each photo's probabilities at its output `size` (None: its own), upright.

        `run.probs` are the network's crops, each in its box of the frame
        (`run.inputs.boxes`, frame `run.model.spec.frame`); `place` fills their
        holes and resizes them into the output, through the refiner if there is one."""
        placed: list[tuple[Slot, Placed]] = []
        for run in runs:
            sizes = [slot.upright_size(size, self.upright) for slot in run.slots]
            if self.refiner is None:
                placed += zip(run.slots, place(run.probs, run.inputs.boxes, run.model.spec.frame, sizes))
            else:
                placed += zip(run.slots, self._refined(run, sizes))
        return placed

    def _refined(self, run: Run, sizes: list[tuple[int, int]]) -> list[Placed]:
        """The learned edge refiner's stage: the crops pasted back on the
        refiner's 512x512 frame (the photo squashed to it, as the coarse
        models' frames are), the band around the outline re-decided there from
        the photo, the studio behind it (the set's, or the photo's own
        estimate) and the coarse probability, then placed at the output sizes."""
        frame, count = rf.SIZE, len(run.slots)
        placed = place(run.probs, run.inputs.boxes, run.model.spec.frame, [frame] * count)
        photos = torch.stack([slot.small_photo(self.device, frame) for slot in run.slots])
        index = {id(slot): i for i, slot in enumerate(run.slots)}
        views = [[index[id(v)] for v in slot.views if id(v) in index] or [i] for i, slot in enumerate(run.slots)]
        coarse = torch.stack([p.full() for p in placed])
        refined = refiner_frames.refine_frames(self.refiner, photos, coarse, views, tta=self.tta)
        # the refiner changes only the band, inside each coarse box: only that part is enlarged
        boxes = [p.box for p in placed]
        return [
            place(r[None, b.top : b.bottom, b.left : b.right], [b], frame, [size])[0]
            for r, b, size in zip(refined, boxes, sizes)
        ]

    def _on_device(self, placed: list[tuple[Slot, Placed]], output: Output) -> Reader:
        """The device work of what `output` asks for, its copies to the host
        begun; returns what reads them into the slots."""
        if output.cutout is not None:
            return self._pieces(placed, output.cutout)
        if self.refine is not None and placed:
            placed = [
                (slot, _as_probabilities(e, p.size)) for (slot, p), e in zip(placed, self._hook(self.refine, placed))
            ]
        placed = self._as_given(placed)
        _release(placed)
        return self._flags(placed) if output.encode else self._probabilities(placed)

    def _pieces(self, placed: list[tuple[Slot, Placed]], hook: Callable[[Batch], list[Edges]]) -> Reader:
        made = self._hook(hook, placed) if placed else []
        pieces = [
            (_to_host(self._grid(slot, e.alpha)), _to_host(self._grid(slot, e.foreground, (0, 1))))
            for (slot, _), e in zip(placed, made)
        ]
        _release(placed)

        def read() -> None:
            for (slot, _), (alpha, foreground) in zip(placed, pieces):
                slot.alpha, slot.foreground = alpha.numpy(), foreground.numpy()

        return read

    @staticmethod
    def _flags(placed: list[tuple[Slot, Placed]]) -> Reader:
        flags = _to_host(mask_flags([p for _, p in placed]))

        def read() -> None:
            host, start = flags.numpy(), 0
            for slot, p in placed:
                end = start + p.probs.shape[0] * (p.probs.shape[1] + 1)
                slot.runs = box_boundaries(host[start:end], p.box, p.size[0])
                start = end

        return read

    @staticmethod
    def _probabilities(placed: list[tuple[Slot, Placed]]) -> Reader:
        probs = [_to_host(p.full()) for _, p in placed]

        def read() -> None:
            for (slot, _), host in zip(placed, probs):
                slot.probs = host.numpy()

        return read

    def _as_given(self, placed: list[tuple[Slot, Placed]]) -> list[tuple[Slot, Placed]]:
        """Probabilities as the results are given: upright, or turned back onto the stored grid."""
        return placed if self.upright else [(slot, _on_grid(p, slot.orientation)) for slot, p in placed]

    def _grid(self, slot: Slot, piece: torch.Tensor, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
        """A cut-out piece as the results are given: upright, or on the stored grid."""
        return piece if self.upright else stored_grid(piece, slot.orientation, dims)

    def _hook(self, hook: Callable, placed: list[tuple[Slot, Placed]]) -> list[Edges | torch.Tensor]:
        """What a refine hook makes of the batch (see `Batch`)."""
        index = {id(slot): i for i, (slot, _) in enumerate(placed)}
        return hook(
            Batch(
                [slot.full_photo(self.device) for slot, _ in placed],
                [[index[id(v)] for v in slot.views] or [i] for i, (slot, _) in enumerate(placed)],
                [p.full() for _, p in placed],
            )
        )


def _release(placed: list[tuple[Slot, Placed]]) -> None:
    """Only the results travel on: the photos, frames and sets let go."""
    for slot, _ in placed:
        slot.photo, slot.frame, slot.small, slot.views = None, None, None, []


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


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A device tensor's copy in pinned host memory, begun without waiting (as is on the CPU)."""
    if tensor.device.type == "cpu":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
