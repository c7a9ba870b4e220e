"""Cut-outs: the one path from photos to a transparent PNG, a mask or the car over a background.

    remove(photo)                        one photo: path, bytes, array or PIL image
    remove(photo, views=other_views)     the same photo, with its car's other views
    remove_set([(name, source), ...])    every view of a car at once

All three decode, predict (`Predictor`), refine the edges at the photo's own
resolution (`refine`) and build the image (`compose`). The CLI, the HTTP
service and the Python API call them.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageColor

from carmask.io import ImageError, read_photo
from carmask.views import MIN_VIEWS, NotEnoughViews, resize

SEED_GREEN = (0, 185, 0)  # the seed write-up's background colour
KINDS = ("transparent", "mask")

_COLOUR_NAME = re.compile(r"^[a-z]{3,30}$")
_HEX = re.compile(r"^#(?:[0-9a-f]{3}|[0-9a-f]{6})$")
_TRIPLE = re.compile(r"^\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}$")


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


def load(image, name: str | None = None) -> np.ndarray:
    """A photo as an upright RGB uint8 array, from a path, bytes, an array or a
    PIL image; anything unusable is an ImageError that names it."""
    if not isinstance(image, (bytes, bytearray, str, Path, np.ndarray, Image.Image)):
        raise ImageError(name or type(image).__name__,
                         "is not a photo: give a path, bytes, a numpy array or a PIL image")
    return read_photo(image, name=name)


def alpha_from_probs(probs: np.ndarray) -> np.ndarray:
    """Soft alpha (uint8) without refinement: a smoothstep around the 0.5 threshold."""
    t = np.clip((probs - 0.25) / 0.5, 0.0, 1.0)
    return np.round(t * t * (3 - 2 * t) * 255).astype(np.uint8)


def compose(photo: np.ndarray, alpha: np.ndarray, background="transparent") -> np.ndarray:
    """The output image: RGBA (transparent), L 0/255 (mask), or RGB over a
    colour or an image (scaled to cover). `alpha`: H x W, float 0..1 or uint8."""
    alpha = alpha.astype(np.float32) / 255 if alpha.dtype == np.uint8 else alpha.astype(np.float32)
    if isinstance(background, str):
        background = parse_background(background)
    if isinstance(background, str) and background == "mask":
        return np.where(alpha > 0.5, 255, 0).astype(np.uint8)
    if isinstance(background, str):  # transparent
        return np.dstack([photo, np.round(alpha * 255).astype(np.uint8)])
    height, width = photo.shape[:2]
    if isinstance(background, np.ndarray):
        back = _cover(background, (width, height)).astype(np.float32)
    else:
        back = np.broadcast_to(np.array(background, np.float32), photo.shape)
    a = alpha[..., None]
    return np.round(photo * a + back * (1 - a)).astype(np.uint8)


def _cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale an image to cover (width, height), keeping its aspect, and centre-crop."""
    h, w = image.shape[:2]
    scale = max(size[0] / w, size[1] / h)
    scaled = resize(image, (max(size[0], round(w * scale)), max(size[1], round(h * scale))))
    top, left = (scaled.shape[0] - size[1]) // 2, (scaled.shape[1] - size[0]) // 2
    return scaled[top:top + size[1], left:left + size[0]]


def cut_out(photos: Sequence[np.ndarray], probs: Sequence[np.ndarray], background="transparent",
            refine: bool = True, keep: Sequence[int] | None = None, chunk: int = 4) -> list[np.ndarray]:
    """Cut-outs of photos of one car (or of one photo) from their probabilities
    at the photos' size. With `refine`, the edges are re-decided at full
    resolution, and photos of one size that form a set of at least 3 views
    give each other the studio behind the car. `keep`: the indices to return
    (default all)."""
    keep = range(len(photos)) if keep is None else keep
    if not refine:
        return [compose(photos[i], alpha_from_probs(probs[i]), background) for i in keep]
    import torch

    from carmask.refine import refine as refine_edges
    out = {}
    for size in dict.fromkeys(p.shape for p in photos):
        same = [i for i, p in enumerate(photos) if p.shape == size]
        wanted = [i for i in same if i in keep]
        if not wanted:
            continue
        stack = lambda indices: torch.from_numpy(np.stack([photos[i] for i in indices])).permute(0, 3, 1, 2)  # noqa: E731
        chances = lambda indices: torch.from_numpy(np.stack([probs[i] for i in indices])).float()  # noqa: E731
        views = (stack(same), chances(same)) if len(same) >= MIN_VIEWS else (None, None)
        for start in range(0, len(wanted), chunk):  # memory: a few full-size photos at a time
            part = wanted[start:start + chunk]
            alpha, foreground = refine_edges(stack(part), chances(part), *views)
            for i, a, f in zip(part, alpha.numpy(), foreground.permute(0, 2, 3, 1).numpy()):
                out[i] = compose(f, a, background)
    return [out[i] for i in keep]


def remove(image, predictor=None, background="transparent", views=(), *, refine: bool = True,
           name: str | None = None) -> np.ndarray:
    """One photo to its cut-out: `image` and `views` (the car's other views)
    are paths, bytes, arrays or PIL images; `background` is transparent, mask,
    a colour, an image path or an array. Raises ImageError naming what could
    not be read or cut out."""
    from carmask.predict import Predictor
    photo = load(image, name)
    others = [load(v, f"view {i + 1}") for i, v in enumerate(views)]
    if isinstance(background, str):
        background = parse_background(background)
    predictor = predictor or Predictor()
    photos = [photo, *others]
    label = name or _label(image)
    try:  # the predictor's one path from a photo to the network, the views as its set
        predictions = predictor.predict_views([(label, photo)] + [(f"view {i + 1}", v) for i, v in enumerate(others)])
    except (NotEnoughViews, ValueError) as exc:
        raise ImageError(label, str(exc)) from None
    for prediction in predictions:
        if prediction.error:
            raise ImageError(label, str(prediction.exception or prediction.error))
    if predictions[0].warning:
        warnings.warn(predictions[0].warning, stacklevel=2)
    return cut_out(photos, [p.probs for p in predictions], background, refine, keep=[0])[0]


def remove_set(items: Sequence[tuple[str, object]], predictor=None, background="transparent", *,
               refine: bool = True) -> list[tuple[str, np.ndarray | ImageError]]:
    """Every view of one car, as (name, path or bytes) pairs, to its cut-out or
    the ImageError that names why not; a lone photo is a set of one."""
    from carmask.predict import Predictor
    predictor = predictor or Predictor()
    try:
        predictions = predictor.predict_views(list(items))
    except (NotEnoughViews, ValueError) as exc:
        return [(name, ImageError(name, str(exc))) for name, _ in items]
    sources = dict(items)
    results: dict[str, np.ndarray | ImageError] = {}
    photos, probs, names = [], [], []
    for prediction in predictions:
        name = str(prediction.path)
        if prediction.error:
            results[name] = ImageError(name, prediction.error.split(": ", 1)[-1])
            continue
        try:
            photos.append(load(sources[name], name))
        except ImageError as exc:
            results[name] = exc
            continue
        probs.append(prediction.probs)
        names.append(name)
    results.update(zip(names, cut_out(photos, probs, background, refine)))
    return [(name, results[name]) for name, _ in items]


def _label(image) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return {np.ndarray: "<array>", bytes: "<bytes>"}.get(type(image), "<image>")
