"""Image formats at the service's edge: the only decoders a client's bytes meet.

    open_photo(data, label)   JPEG, PNG, WebP, TIFF or BMP opened (header read, nothing decoded)

The answers are written by carmask's one encoder, `io.image_bytes`.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from carmask.outcomes import ImageError, Problem
from carmask.serve.errors import TooLarge

# The only decoders a client's bytes reach: never EPS/PS (Pillow would run Ghostscript), nor any other.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}  # the answers' types, by format


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
        raise ImageError(label, "not a readable JPEG, PNG, WebP, TIFF or BMP image", Problem.UNREADABLE) from None
