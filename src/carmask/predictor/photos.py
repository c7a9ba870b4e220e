"""Photos on their way through the predictor: a car as the caller gave it
(`Car`), one photo through a model batch (`Slot`), and what the caller gets
back for it (`Prediction`)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from carmask.inputs.decode import Decoded, Source, decode
from carmask.inputs.resize import resize_image
from carmask.outcomes import ImageError, Note, skip
from carmask.postprocess import THRESHOLD
from carmask.rle import encode, encode_boundaries


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
class Car:
    """One car's photos (or one photo) as the caller gave them."""

    name: str | None
    sources: list[Source]
    futures: list[Future] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)


class Slot:
    """One photo on its way through a batch: its decoded pixels, then its outcome."""

    def __init__(self, source: Source, decoded: Decoded | Exception):
        self.source, self.path, self.runs, self.probs = source, source.name, None, None
        self.note: Note | None = None
        self.alpha = self.foreground = None
        self.error: Exception | None = decoded if isinstance(decoded, Exception) else None
        self.photo = self.frame = self.small = self.size = None
        self.orientation = 1  # the EXIF orientation it was turned upright from
        self.views: list[Slot] = []  # the slots of its set, when predicted as one
        if self.error is None:
            self.photo, self.frame, self.size, self.small = decoded.photo, decoded.frame, decoded.size, decoded.small
            self.orientation = decoded.orientation

    def upright_size(self, size: tuple[int, int] | None, upright: bool) -> tuple[int, int]:
        """Where its probabilities are placed, upright: `size` (width, height,
        on the stored grid when the results go back there), else its own."""
        if size is None:
            return self.size
        return (size[1], size[0]) if not upright and self.orientation in (5, 6, 7, 8) else size

    def full_photo(self, device: torch.device) -> torch.Tensor:
        """The photo at full resolution: kept from decoding, or decoded again
        (on the CPU the workers keep only the frame its model was expected to need)."""
        if self.photo is None:
            self.photo = decode(self.source.data, name=str(self.path), device=device)
        return self.photo

    def small_photo(self, device: torch.device, size: tuple[int, int]) -> torch.Tensor:
        """The photo at `size` (width, height: the edge refiner's): the copy the
        decoding worker made, or made here from the full-resolution photo."""
        if self.small is None or (self.small.shape[-1], self.small.shape[-2]) != size:
            self.small = resize_image(self.full_photo(device)[None], size)[0]
        return self.small

    def fail(self, error: Exception, note: Note | None = None) -> None:
        self.error, self.note, self.photo, self.small = error, note, None, None

    def prediction(self) -> Prediction:
        if self.error is not None:
            return Prediction(self.path, error=skip(self.path, self.error), note=self.note, exception=self.error)
        return Prediction(
            self.path, probs=self.probs, runs=self.runs, note=self.note, alpha=self.alpha, foreground=self.foreground
        )
