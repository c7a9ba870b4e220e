"""Photos and masks in, images out: reading any photo source (the one EXIF
reader), masks, the one image encoder, finding photo files, sizes.

Every reading error becomes an `ImageError` that names the file, so that batch
commands can report it and go on with the rest.
"""

from __future__ import annotations

import glob
import io as _io
import operator
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from carmask.files import atomic_write
from carmask.outcomes import ImageError, Problem

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# What carmask writes (cut-outs, the service's answers), by suffix: Pillow's format and settings.
# PNG at level 1: fast, and the photo's noise dominates the size anyway (docs/RESULTS.md).
WRITTEN = {
    "png": ("PNG", {"compress_level": 1}),
    "jpg": ("JPEG", {"quality": 92}),
    "jpeg": ("JPEG", {"quality": 92}),
    "webp": ("WEBP", {"quality": 90}),
}
WRITTEN_SUFFIXES = tuple(f".{fmt}" for fmt in WRITTEN)
MiB = 1 << 20
ORIENTATION_TAG = 0x0112  # EXIF: how the stored pixels are turned (1: as they are; 2-8: turned, mirrored)
# Larger than any camera: refuses decompression bombs before they are decoded.
MAX_PIXELS = 64_000_000
# What a photo may be, everywhere a photo is taken (`read_photo`).
PHOTO_TYPES = (str, os.PathLike, bytes, bytearray, np.ndarray, Image.Image)


# One refusal after another, each with its own sentence: split, they would read worse.
def _open(source, name) -> Image.Image:  # noqa: C901
    """Open a path or bytes, refusing non-images and oversized images early."""
    try:
        data = _io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        if isinstance(source, (bytes, bytearray)) and not source:
            raise ImageError(name, "empty file (0 bytes)", Problem.EMPTY)
        if not isinstance(data, _io.BytesIO):
            info = os.stat(data)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(info.st_mode):  # opening a pipe would wait for a writer, forever
                raise ImageError(name, "not a regular file (a pipe or a device)", Problem.NOT_A_FILE)
            if info.st_size == 0:
                raise ImageError(name, "empty file (0 bytes)", Problem.EMPTY)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(data)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(name, "image has too many pixels (decompression bomb?)", Problem.TOO_LARGE) from None
    except FileNotFoundError:
        raise ImageError(name, "no such file", Problem.MISSING) from None
    except IsADirectoryError:
        raise ImageError(name, "is a folder, not an image", Problem.FOLDER) from None
    except Image.UnidentifiedImageError:  # its message shows Python's name of the stream
        raise ImageError(
            name, "not a readable image (not an image format that can be read)", Problem.UNREADABLE
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(name, f"not a readable image ({exc})", Problem.UNREADABLE) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(name, f"image is {width}x{height}, over the limit of {MAX_PIXELS:,} pixels", Problem.TOO_LARGE)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (grayscale, palette, RGBA, 16-bit, CMYK) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit and 32-bit grey: scale to 8 bits instead of clipping.
        values = np.asarray(image)
        top = 65535 if image.mode.startswith("I;16") or values.max() > 255 else 255
        return Image.fromarray(_eight_bits(values, top)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _eight_bits(values: np.ndarray, top: int) -> np.ndarray:
    """Integer values in 0..top scaled to uint8 (16-bit photos: top 65535)."""
    values = np.clip(values.astype(np.int64), 0, top)
    return (values * 255 // top).astype(np.uint8)


def source_name(source, default: str | None = None) -> str:
    """A photo's name in messages: its path, else `default`, else what it is
    (<upload> for bytes, <array>, <image>)."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if default:
        return default
    if isinstance(source, (bytes, bytearray)):
        return "<upload>"
    return "<array>" if isinstance(source, np.ndarray) else "<image>"


def check_source(source, name: str | None = None) -> None:
    """An ImageError, before any work, for what is no photo source at all."""
    if not isinstance(source, PHOTO_TYPES):
        raise ImageError(
            name or "photo",
            f"a {type(source).__name__} is not a photo: give a path, bytes, a numpy array or a PIL image",
            Problem.NOT_A_PHOTO,
        )


def read_photo(source, *, name: str | None = None, upright: bool = True) -> np.ndarray:
    """A photo as a uint8 H x W x 3 RGB array at its full resolution.

    `source`: a path, the file's bytes, a numpy array or a PIL image (any
    mode). An array is H x W (grey), H x W x 3 or H x W x 4 (alpha dropped):
    uint8, or floats in 0..1, or uint16 (16-bit, scaled to 8 bits), or bool,
    or other integers in 0..255. `upright`: turn the photo as its EXIF
    orientation says (as viewers show it, and as the network sees it); False
    keeps the stored pixel grid (the grid of Kaggle's masks, for training).
    Any failure is an `ImageError` naming `name` (or the path).
    """
    return read_turned(source, name=name, upright=upright)[0]


def read_turned(source, *, name: str | None = None, upright: bool = True) -> tuple[np.ndarray, int]:
    """`read_photo`, and the EXIF orientation (2-8) it turned the photo from,
    or 1 where it did not turn it."""
    check_source(source, name)
    name = str(name) if name else source_name(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, name), 1
    image = source if isinstance(source, Image.Image) else _open(source, name)
    try:
        turn = orientation(image) if upright else 1
        if turn != 1:  # (exif_transpose copies even an upright photo)
            image = ImageOps.exif_transpose(image)
        return np.asarray(_to_rgb(image)), turn
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(name, f"corrupt or truncated image ({exc})", Problem.CORRUPT) from None


def orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image (read from its header): 2-8
    where viewers turn or mirror the stored pixels, else 1."""
    turn = image.getexif().get(ORIENTATION_TAG, 1)
    return turn if turn in range(2, 9) else 1


def _from_array(array: np.ndarray, name: str) -> np.ndarray:
    """An array photo checked and brought to H x W x 3 uint8 (grey repeated,
    alpha dropped, other value types converted as `read_photo` says)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            hint = " (it looks channels-first: pass array.transpose(1, 2, 0))"
        elif array.ndim == 4 and array.shape[0] == 1:
            hint = " (one photo, not a batch: pass array[0])"
        raise ImageError(
            name, f"a photo array must be H x W, H x W x 3 or H x W x 4, not {array.shape}{hint}", Problem.NOT_A_PHOTO
        )
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageError(
            name,
            f"image is {array.shape[1]}x{array.shape[0]}, over the limit of {MAX_PIXELS:,} pixels",
            Problem.TOO_LARGE,
        )
    array = _as_uint8(array[..., :3], name)
    if any(stride < 0 for stride in array.strides):  # a flipped view: torch takes no negative strides
        array = np.ascontiguousarray(array)
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def _as_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 as it is; bool as 0/255; floats in 0..1 and integers in 0..255
    scaled or cast; uint16 scaled from 0..65535, as 16-bit image files are."""
    kind = array.dtype.kind
    if array.dtype == np.uint8:
        return array
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint16:
        return _eight_bits(array, 65535)
    if kind not in "fiu":
        raise ImageError(name, f"a photo array must hold numbers, not {array.dtype}", Problem.NOT_A_PHOTO)
    low, high = array.min(), array.max()
    if kind == "f":
        if not np.isfinite(low) or not np.isfinite(high):
            raise ImageError(name, f"a {array.dtype} photo array holds NaN or infinite values", Problem.NOT_A_PHOTO)
        if low < 0 or high > 1:
            raise ImageError(
                name,
                f"a {array.dtype} photo array must hold values in 0..1, found "
                f"{float(low):g}..{float(high):g} (for 0..255, pass array.astype(np.uint8))",
                Problem.NOT_A_PHOTO,
            )
        return np.rint(array * 255).astype(np.uint8)
    if low < 0 or high > 255:
        raise ImageError(
            name, f"a {array.dtype} photo array must hold values in 0..255, found {low}..{high}", Problem.NOT_A_PHOTO
        )
    return array.astype(np.uint8)


def read_mask(path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask (0/1 or 0/255) as uint8 0/1; `expected_size` is (width, height)."""
    image = _open(path, str(path))
    try:
        values = np.asarray(image if image.mode in ("P", "L", "1") else image.convert("L"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"corrupt or truncated mask ({exc})", Problem.CORRUPT) from None
    if expected_size and image.size != tuple(expected_size):
        raise ImageError(
            path,
            f"mask is {image.size[0]}x{image.size[1]}, expected {expected_size[0]}x{expected_size[1]}",
            Problem.BAD_MASK,
        )
    if values.dtype == bool:
        return values.astype(np.uint8)
    present = np.unique(values)
    if not (set(present.tolist()) <= {0, 1} or set(present.tolist()) <= {0, 255}):
        raise ImageError(path, f"mask values must be 0/1 or 0/255, found {present[:6].tolist()}", Problem.BAD_MASK)
    return (values > 0).astype(np.uint8)


def image_bytes(array: np.ndarray, fmt: str = "png", exif: Image.Exif | None = None) -> bytes:
    """An image as the bytes of a file: `fmt` one of WRITTEN (png, jpg, webp;
    a JPEG takes no alpha: RGB or L), with `exif` if given. The one encoder
    of what carmask writes."""
    pillow_format, settings = WRITTEN[fmt]
    buffer = _io.BytesIO()
    with Image.fromarray(array) as image:
        if pillow_format == "JPEG" and image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        image.save(buffer, format=pillow_format, **settings, **({"exif": exif} if exif is not None else {}))
    return buffer.getvalue()


def save_image(path, array: np.ndarray, replace: bool = True, exif: Image.Exif | None = None) -> None:
    """An array saved as an image (`image_bytes`, its format from the suffix:
    one of WRITTEN), atomically (`replace`: see `atomic_write`)."""
    data = image_bytes(array, Path(path).suffix.lower().lstrip("."), exif)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), replace)


def find_photos(inputs: Iterable, recursive: bool = False) -> list[Path]:
    """Photo files named by `inputs`: files, folders or globs, sorted. With
    `recursive`, folders are walked down and `**` in a glob matches sub-folders;
    hidden files and folders are left out, and a file reached through
    symlinks again counts once."""
    found: list[Path] = []
    for item in inputs:
        item = str(item)
        if any(ch in item for ch in "*?["):
            found += [Path(p) for p in glob.glob(item, recursive=recursive) if Path(p).suffix.lower() in PHOTO_SUFFIXES]
        elif Path(item).is_dir():
            root = Path(item)
            # anything with a photo's name but a folder: a broken link or a pipe is
            # named when it is read ("no such file", "not a regular file"), not dropped
            found += [
                p
                for p in (root.rglob("*") if recursive else root.iterdir())
                if p.suffix.lower() in PHOTO_SUFFIXES
                and not p.is_dir()
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            ]
        else:
            found.append(Path(item))  # a missing file is reported when it is read
    # One file met again through a symlink (a loop under `**` meets it at every
    # depth) counts once, under its shortest path. Only names met more than
    # once can be such a file: the others are not resolved (100,000 photos).
    found = list(dict.fromkeys(found))
    names = Counter(path.name for path in found)
    unique: dict[tuple[str, str], Path] = {}
    for path in sorted(found, key=lambda p: (len(p.parts), p)):
        unique.setdefault((os.path.realpath(path) if names[path.name] > 1 else str(path), path.name), path)
    return sorted(unique.values())


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'1918x1280' -> (1918, 1280) as (width, height)."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 1918x1280, not {text!r}")
    return check_size((int(match[1]), int(match[2])))


def check_size(size) -> tuple[int, int]:
    """A (width, height) of at least one pixel a side and at most `MAX_PIXELS`, else ValueError."""
    try:
        width, height = (operator.index(side) for side in size)  # whole numbers only
    except (TypeError, ValueError):
        raise ValueError(f"a size is (width, height) in whole pixels, not {size!r}") from None
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise ValueError(f"size {width}x{height} is not between 1x1 and {MAX_PIXELS:,} pixels")
    return width, height
