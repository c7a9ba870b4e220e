"""Compose cut-outs from a photo and its car probabilities."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageColor

from carmask.io import read_photo
from carmask.views import resize

SEED_GREEN = (0, 185, 0)  # the seed write-up's background colour
KINDS = ("transparent", "mask")


def alpha_from_probs(probs: np.ndarray) -> np.ndarray:
    """Soft, anti-aliased alpha (uint8): a smoothstep around the 0.5 threshold,
    so the edge keeps the model's sub-pixel softness and the rest is crisp."""
    t = np.clip((probs - 0.25) / 0.5, 0.0, 1.0)
    return np.round(t * t * (3 - 2 * t) * 255).astype(np.uint8)


def parse_background(text: str):
    """'transparent', 'mask', a colour ('green', '#00b900', '0,185,0') or an image path."""
    if text in KINDS:
        return text
    if "," in text:
        parts = [int(p) for p in text.split(",")]
        if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
            raise ValueError(f"colour {text!r} must be three numbers 0..255, like 0,185,0")
        return tuple(parts)
    if Path(text).is_file():
        return read_photo(text)
    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise ValueError(f"--bg {text!r} is not transparent, mask, a colour or an image file") from None


def compose(photo: np.ndarray, probs: np.ndarray, background="transparent") -> np.ndarray:
    """RGBA (transparent), L (mask), or RGB over a colour or an image (scaled to cover)."""
    alpha = alpha_from_probs(probs)
    if isinstance(background, str):
        if background == "mask":
            return np.where(probs > 0.5, 255, 0).astype(np.uint8)
        if background == "transparent":
            return np.dstack([photo, alpha])
        background = parse_background(background)
    height, width = photo.shape[:2]
    if isinstance(background, np.ndarray):
        back = _cover(background, (width, height)).astype(np.float32)
    else:
        back = np.broadcast_to(np.array(background, np.float32), photo.shape)
    a = alpha[..., None].astype(np.float32) / 255
    return np.round(photo * a + back * (1 - a)).astype(np.uint8)


def _cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale an image to cover (width, height), keeping its aspect, and centre-crop."""
    h, w = image.shape[:2]
    scale = max(size[0] / w, size[1] / h)
    scaled = resize(image, (max(size[0], round(w * scale)), max(size[1], round(h * scale))))
    top, left = (scaled.shape[0] - size[1]) // 2, (scaled.shape[1] - size[0]) // 2
    return scaled[top:top + size[1], left:left + size[0]]


def remove(photo, predictor=None, background="transparent", views=()) -> np.ndarray:
    """One photo (array, path or bytes) to a cut-out; `views`: the car's other views."""
    from carmask.predict import Predictor
    photo = photo if isinstance(photo, np.ndarray) else read_photo(photo)
    predictor = predictor or Predictor()
    probs = predictor.predict_photo(photo, views=[v if isinstance(v, np.ndarray) else read_photo(v)
                                                 for v in views])
    return compose(photo, probs, background)
