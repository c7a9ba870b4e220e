"""Image formats at the service's edge: the only decoders a client's bytes meet, and the answers' encoder.

    open_photo(data, label)   JPEG, PNG, WebP, TIFF or BMP opened (header read, nothing decoded)
    encode(array, fmt)        PNG, JPEG or WebP bytes
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from carmask.io import ImageError
from carmask.serve.errors import TooLarge

# The only decoders a client's bytes reach: never EPS/PS (Pillow would run Ghostscript), nor any other.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
PNG_COMPRESS_LEVEL = 1  # fast; the photo's noise dominates the size anyway


def open_photo(data: bytes, label: str) -> Image.Image:
    """An uploaded image opened (its header read, nothing decoded) as one of
    PHOTO_FORMATS, else an ImageError naming it; too many pixels for Pillow: 413."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except Image.DecompressionBombError:
        raise TooLarge(f"{label}: image has too many pixels") from None
    except Exception:  # noqa: BLE001 - whatever Pillow raises for what is no photo of these formats
        raise ImageError(label, "not a readable JPEG, PNG, WebP, TIFF or BMP image") from None


def encode(array: np.ndarray, fmt: str = "png") -> bytes:
    """An answer's image: `fmt` png, jpg (no alpha: RGB or L) or webp."""
    buffer = io.BytesIO()
    with Image.fromarray(array) as image:
        if fmt == "png":
            image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        elif fmt == "webp":
            image.save(buffer, format="WEBP", quality=90)
        else:
            image.convert(image.mode if image.mode in ("L", "RGB") else "RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()
