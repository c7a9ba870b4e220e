"""Cut-outs: the one path from photos to a transparent PNG, a mask or the car over a background.

    remove(photo)                        one photo: path, bytes, array or PIL image
    remove(photo, views=other_views)     the same photo, with its car's other views
    remove_set([(name, source), ...])    every view of a car at once
    remove_sets(photo_sets)              sets of photo files, streamed (the CLI)

All of them ask the predictor for each photo's cut-out pieces (alpha and the
car's own colour, refined at the photo's resolution in its device batch by
`refine.edges`, see `Predictor.predict_views(cutout=...)`) and build the
image with `compose`. The CLI, the HTTP service and the Python API call them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor

from carmask.inputs.resize import resize
from carmask.inputs.spec import NotEnoughViews
from carmask.io import check_source, read_photo
from carmask.kaggle import PhotoSet
from carmask.outcomes import ImageError, Note, skip
from carmask.predict import Predictor, named_views

SEED_GREEN = (0, 185, 0)  # the seed write-up's background colour
KINDS = ("transparent", "mask")

_COLOUR_NAME = re.compile(r"^[a-z]{3,30}$")
_HEX = re.compile(r"^#(?:[0-9a-f]{3}|[0-9a-f]{6})$")
_TRIPLE = re.compile(r"^\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}$")


@dataclass
class Cutout:
    """One photo's cut-out (`image`), or the ImageError that names why not
    (its `kind`); `note`: how it was made, when the user should know (e.g.
    taken out of its set), and `warning` its sentence."""

    name: str
    image: np.ndarray | None = None
    error: ImageError | None = None
    note: Note | None = None

    @property
    def path(self) -> Path:
        return Path(self.name)

    @property
    def warning(self) -> str | None:
        return str(self.note) if self.note else None


def parse_background(text: str, files: bool = True):
    """'transparent', 'mask', a colour ('green', '#00b900', '0,185,0') -> the
    kind or (r, g, b); with `files`, also an image path -> the image.
    A client of the service gets files=False: its text never reaches the file system."""
    clean = (text or "transparent").strip().lower()
    if clean in KINDS:
        return clean
    if _TRIPLE.match(clean):
        parts = tuple(int(p) for p in clean.split(","))
        if all(0 <= p <= 255 for p in parts):
            return parts
        raise ValueError(f"colour {text!r} must be three numbers 0..255, like 0,185,0")
    if _HEX.match(clean) or _COLOUR_NAME.match(clean):
        try:
            return tuple(ImageColor.getrgb(clean)[:3])
        except ValueError:
            pass
    if files and Path(text).is_file():
        return read_photo(text)
    what = "a colour or an image file" if files else "a colour (a name like green, #00b900, or 0,185,0)"
    raise ValueError(f"{text[:60]!r} is not transparent, mask, {what}")


def compose(photo: np.ndarray, alpha: np.ndarray, background="transparent") -> np.ndarray:
    """The output image: RGBA (transparent), L 0/255 (mask), or RGB over a
    colour or an image (scaled to cover). `photo`: H x W x 3 uint8 (a cut-out's
    foreground); `alpha`: H x W, uint8 0..255 or float 0..1."""
    if alpha.dtype != np.uint8:
        alpha = np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8)
    background = _background(background)
    if isinstance(background, str) and background == "mask":
        return np.where(alpha > 127, 255, 0).astype(np.uint8)
    if isinstance(background, str):  # transparent
        return np.dstack([photo, alpha])
    height, width = photo.shape[:2]
    if isinstance(background, np.ndarray):
        back = _cover(background, (width, height))
    else:
        back = np.array(background, np.uint8)
    a = alpha[..., None].astype(np.uint16)  # integer blending, rounded: (p a + b (255 - a) + 127) // 255
    return ((photo * a + back * (255 - a) + 127) // 255).astype(np.uint8)


def _cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale an image to cover (width, height), keeping its aspect, and centre-crop."""
    h, w = image.shape[:2]
    scale = max(size[0] / w, size[1] / h)
    scaled = resize(image, (max(size[0], round(w * scale)), max(size[1], round(h * scale))))
    top, left = (scaled.shape[0] - size[1]) // 2, (scaled.shape[1] - size[0]) // 2
    return scaled[top : top + size[1], left : left + size[0]]


def remove(
    image, predictor=None, background="transparent", views=(), *, refine: bool = True, name: str | None = None
) -> np.ndarray:
    """One photo to its cut-out: `image` and `views` (the car's other views)
    are paths, bytes, arrays or PIL images; `background` is transparent, mask,
    a colour, an image path or an array. `refine`: the edges re-decided at the
    photo's resolution (else the network's own soft edge). Raises ImageError
    naming what could not be read or cut out; a warning (e.g. views that do
    not share a studio) goes to `warnings.warn`."""
    named = named_views(image, views, name)
    for item_name, item in named:
        check_source(item, item_name)
    result = remove_set(named, predictor, background, refine=refine)[0]
    if result.error:
        raise result.error
    if result.warning:
        warnings.warn(result.warning, stacklevel=2)
    return result.image


def remove_set(
    items: Sequence[tuple[str, object]], predictor=None, background="transparent", *, refine: bool = True
) -> list[Cutout]:
    """Every view of one car, as (name, path, bytes, array or PIL image)
    pairs, to a `Cutout` each, in order; a lone photo is a set of one."""
    predictor, background = _ready(predictor, background)
    try:
        predictions = predictor.predict_views(list(items), cutout=_edges(refine))
    except (NotEnoughViews, ValueError) as exc:
        return [Cutout(name, error=_of_the_set(name, exc)) for name, _ in items]
    return [_cutout(name, p, background) for (name, _), p in zip(items, predictions)]


def remove_sets(
    photo_sets: Iterable[PhotoSet], predictor=None, background="transparent", *, refine: bool = True
) -> Iterator[Cutout]:
    """Sets of photo files (`kaggle.group_by_car`) to a `Cutout` each, streamed in
    order: the next cars are decoded while one batch is cut out."""
    predictor, background = _ready(predictor, background)
    for prediction in predictor.predict_sets(photo_sets, cutout=_edges(refine)):
        yield _cutout(str(prediction.path), prediction, background)


def _of_the_set(name: str, error: Exception) -> ImageError:
    """What kept a whole set from being cut out, as the skip of its photo `name`
    (of the error's kind; `error` as its cause)."""
    skipped = ImageError(name, str(error), skip(name, error).kind)
    skipped.__cause__ = error
    return skipped


def _ready(predictor, background):
    return predictor or Predictor(), _background(background)


def _background(background):
    """A kind, an (r, g, b) colour, or an H x W x 3 uint8 image: text parsed,
    an array or PIL image read as any photo is (grey, floats, 16-bit...)."""
    if isinstance(background, str):
        return parse_background(background)
    if isinstance(background, (np.ndarray, Image.Image)):
        return read_photo(background, name="background")
    return background


def _edges(refine: bool) -> str:
    return "refined" if refine else "plain"


def _cutout(name: str, prediction, background) -> Cutout:
    if prediction.error:
        return Cutout(name, error=skip(name, prediction.exception), note=prediction.note)
    return Cutout(name, compose(prediction.foreground, prediction.alpha, background), note=prediction.note)
