"""remove.bg's API as values, with no HTTP in it (`removebg_endpoint` reads the request and calls these).

    FIELDS                      every remove.bg field: its kind, default and what carmask does with it
    parse(fields, files)        the request's fields -> `Options`; a bad one -> `RemoveBgError` naming it
    shape(rgba, options)        roi, size, crop, crop_margin, scale and position over a cut-out
    render(rgba, back, options) the answer's bytes and media type (format, channels, bg_color, bg_image_file)

The fields, the OpenAPI schema of /v1.0/removebg (`removebg_endpoint.openapi`)
and the compatibility table in docs/SERVICE.md are one list (`FIELDS`); a test
keeps that table in step.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor

from carmask.cutout import compose
from carmask.io import image_bytes
from carmask.serve.errors import RemoveBgError
from carmask.serve.images import MEDIA

WHITE = (255, 255, 255)  # remove.bg's JPEG background when none is given
FOREGROUND_ALPHA = 32  # alpha counted in the car's box (X-Foreground-*): not a faint haze
MARGIN_CAP_PX = 500  # remove.bg: a margin is at most 50% of the car's size and 500 px
SIZES = {
    "preview": 0.25e6,
    "small": 0.25e6,
    "regular": 0.25e6,
    "medium": 1.5e6,
    "hd": 4e6,
    "full": None,
    "4k": None,
    "50mp": None,
    "auto": None,
}  # most pixels; None: the photo's own
FORMATS = ("auto", "png", "jpg", "webp", "zip")
FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Field:
    """One remove.bg field. `kind`: text, flag, file or url; `carmask`: what is done with it."""

    kind: str
    carmask: str
    default: str | None = None
    choices: tuple[str, ...] = ()


FIELDS: dict[str, Field] = {
    "image_file": Field("file", "The photo (JPEG, PNG, WebP, TIFF or BMP)."),
    "image_file_b64": Field("text", "The photo as base64, as large as a file may be."),
    "image_url": Field("url", "Refused (400): this server fetches nothing; send image_file or image_file_b64."),
    "size": Field(
        "text",
        "The most pixels of the result (preview 0.25 Mpx, medium 1.5, hd 4; full, 4k, 50mp "
        "and auto: the photo's own, within this server's pixel limit). Default preview, "
        "as remove.bg's.",
        "preview",
        tuple(SIZES),
    ),
    "type": Field(
        "text",
        "Checked, then ignored: every photo is cut out as a car.",
        "auto",
        ("auto", "person", "product", "car", "animal", "graphic", "transportation"),
    ),
    "type_level": Field("text", "none: no X-Type header; else X-Type is car.", "1", ("none", "1", "2", "latest")),
    "format": Field(
        "text",
        "auto (JPEG over an opaque background, else PNG), png, jpg, webp, or zip (color.jpg and alpha.png).",
        "auto",
        FORMATS,
    ),
    "roi": Field("text", "Honoured: the car is looked for only in 'x1 y1 x2 y2' (px or %).", "0% 0% 100% 100%"),
    "crop": Field("flag", "Honoured: the result trimmed to the car.", "false"),
    "crop_margin": Field(
        "text", "Honoured with crop: 1, 2 or 4 values, px or % of the car's size (at most 50% and 500 px a side).", "0"
    ),
    "scale": Field(
        "text",
        "Honoured: the car scaled to 10%-100% of the image (then centred unless position is given), or original.",
        "original",
    ),
    "position": Field("text", "Honoured: original, center, or 'x%' / 'x% y%' of the free space.", "original"),
    "channels": Field(
        "text",
        "rgba: the cut-out; alpha: the matte alone, in the asked format (png, jpg, webp).",
        "rgba",
        ("rgba", "alpha"),
    ),
    "add_shadow": Field("flag", "Checked, then ignored: no shadow is drawn.", "false"),
    "shadow_type": Field("text", "Ignored: no shadow is drawn.", "none"),
    "shadow_opacity": Field("text", "Ignored: no shadow is drawn."),
    "semitransparency": Field(
        "flag", "Checked, then ignored: the car's edges are soft, its windows are not made see-through.", "true"
    ),
    "bg_color": Field("text", "Honoured: hex (81d4fa, fff, with alpha 81d4fa77 or fff7) or a colour name."),
    "bg_image_url": Field("url", "Refused (400): this server fetches nothing; send bg_image_file."),
    "bg_image_file": Field("file", "Honoured: the background image, scaled to cover."),
}
SOURCES = ("image_file", "image_file_b64", "image_url")
URLS = {"image_url": "image_file or image_file_b64", "bg_image_url": "bg_image_file"}  # refused, never fetched
BACKGROUNDS = ("bg_color", "bg_image_file", "bg_image_url")


@dataclass(frozen=True)
class Options:
    """A remove.bg request, checked. Lengths are (value, unit) with unit 'px' or '%' (a fraction)."""

    source: str = "image_file"
    size: float | None = SIZES["preview"]
    format: str = "auto"
    channels: str = "rgba"
    roi: tuple | None = None
    crop: bool = False
    crop_margin: tuple = ((0.0, "px"),) * 4  # top, right, bottom, left
    scale: float | None = None  # a fraction of the image, or None: original
    position: tuple[float, float] | None = None  # fractions of the free space, or None: original
    bg_color: tuple[int, int, int, int] | None = None
    bg_image: bool = False
    x_type: bool = True


def parse(fields: Mapping[str, str], files: set[str]) -> Options:
    """`fields`: the request's text fields (each given once); `files`: names of its file parts."""
    given = set(files) | {name for name, value in fields.items() if value != ""}
    for group, need in ((SOURCES, True), (BACKGROUNDS, False)):
        present = [name for name in group if name in given]
        if len(present) > 1:
            raise RemoveBgError(f"{' and '.join(present)} were both given: send only one of {', '.join(group)}")
        if need and not present:
            raise RemoveBgError("No image given: send image_file or image_file_b64", "missing_image")
    for name, instead in URLS.items():
        if name in given:
            raise RemoveBgError(
                f"{name} is not supported: this server fetches nothing; send {instead}", "url_not_supported"
            )
    text = {
        name: fields.get(name, "").strip()
        for name, field in FIELDS.items()
        if field.kind in ("text", "flag") and name not in SOURCES
    }  # not the photo's base64: no copy
    for name, value in text.items():
        field = FIELDS[name]
        if field.choices and value and value.lower() not in field.choices:
            raise RemoveBgError(f"{name} {value[:40]!r} is not one of {', '.join(field.choices)}")
        if field.kind == "flag" and value and value.lower() not in FLAGS:
            raise RemoveBgError(f"{name} {value[:40]!r}: use true or false")
    choice = lambda name: (text[name] or FIELDS[name].default).lower()  # noqa: E731
    scale = _scale(text["scale"])
    return Options(
        source=next(name for name in SOURCES if name in given),
        size=SIZES[choice("size")],
        format=choice("format"),
        channels=choice("channels"),
        roi=_roi(text["roi"]),
        crop=FLAGS[choice("crop")],
        crop_margin=_margin(text["crop_margin"]),
        scale=scale,
        position=_position(text["position"], scale),
        bg_color=_colour(text["bg_color"]),
        bg_image="bg_image_file" in given,
        x_type=choice("type_level") != "none",
    )


# -- the text of lengths, boxes and colours ---------------------------------------------------------

_LENGTH = re.compile(r"(\d+(?:\.\d+)?)(px|%)?")


def _lengths(name: str, text: str, counts: tuple[int, ...], units=("px", "%")) -> list[tuple[float, str]]:
    parts = text.replace(",", " ").split()
    values = [_LENGTH.fullmatch(part.lower()) for part in parts]
    if len(parts) not in counts or not all(values) or any((m[2] or "px") not in units for m in values):
        how = " or ".join(str(c) for c in counts)
        unit = "px or %" if len(units) == 2 else "%"
        raise RemoveBgError(
            f"{name} {text[:60]!r}: give {how} values in {unit}, like {'30px' if 'px' in units else '50%'}"
        )
    return [(float(m[1]) / 100, "%") if m[2] == "%" else (float(m[1]), "px") for m in values]


def _roi(text: str):
    if not text:
        return None
    box = _lengths("roi", text, (4,))
    (x1, ux1), (y1, uy1), (x2, ux2), (y2, uy2) = box
    if (ux1 == ux2 and x1 >= x2) or (uy1 == uy2 and y1 >= y2):
        raise RemoveBgError(f"roi {text[:60]!r}: x1 y1 x2 y2 with x1 < x2 and y1 < y2")
    return tuple(box)


def _margin(text: str):
    if not text:
        return Options.crop_margin
    values = _lengths("crop_margin", text, (1, 2, 4))
    return tuple(values * 4 if len(values) == 1 else values * 2 if len(values) == 2 else values)


def _scale(text: str) -> float | None:
    if not text or text.lower() == "original":
        return None
    [(value, _)] = _lengths("scale", text, (1,), units=("%",))
    if not 0.1 <= value <= 1:
        raise RemoveBgError(f"scale {text[:40]!r}: give 10% to 100%, or original")
    return value


def _position(text: str, scale: float | None) -> tuple[float, float] | None:
    if not text or text.lower() == "original":
        return (0.5, 0.5) if scale is not None and not text else None  # scale implies center
    if text.lower() == "center":
        return 0.5, 0.5
    values = [value for value, _ in _lengths("position", text, (1, 2), units=("%",))]
    if not all(0 <= value <= 1 for value in values):
        raise RemoveBgError(f"position {text[:40]!r}: give 0% to 100%")
    return (values[0], values[-1])


def _colour(text: str) -> tuple[int, int, int, int] | None:
    """remove.bg's bg_color: hex without '#' (3, 4, 6 or 8 digits: with alpha) or a colour name."""
    if not text:
        return None
    spec = f"#{text}" if re.fullmatch(r"[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8}", text) else text.lower()
    try:
        return tuple(ImageColor.getcolor(spec, "RGBA"))
    except ValueError:
        raise RemoveBgError(
            f"bg_color {text[:40]!r} is not a colour: give hex like 81d4fa, fff or 81d4fa77 "
            "(with alpha), or a name like green"
        ) from None


# -- geometry ---------------------------------------------------------------------------------------


def shape(rgba: np.ndarray, options: Options) -> np.ndarray:
    """The cut-out (H x W x 4 at the photo's resolution) as remove.bg shapes it:
    roi (in the photo's pixels), size, then crop with its margin, then scale and position."""
    if options.roi:
        rgba = _region(rgba, options.roi)
    rgba = limit(rgba, options.size)
    if options.crop:
        rgba = _crop(rgba, options.crop_margin)
    if options.scale is not None or options.position is not None:
        rgba = _place(rgba, options.scale, options.position)
    return rgba


def foreground_box(alpha: np.ndarray) -> dict[str, int]:
    """The car's box in the result: top, left, width, height (zeros when there is none)."""
    car = alpha >= FOREGROUND_ALPHA
    rows, cols = np.flatnonzero(car.any(axis=1)), np.flatnonzero(car.any(axis=0))
    if not len(rows):
        return {"top": 0, "left": 0, "width": 0, "height": 0}
    return {
        "top": int(rows[0]),
        "left": int(cols[0]),
        "width": int(cols[-1] - cols[0] + 1),
        "height": int(rows[-1] - rows[0] + 1),
    }


def _pixels(length: tuple[float, str], whole: int) -> int:
    value, unit = length
    return round(value * whole) if unit == "%" else round(value)


def _region(rgba: np.ndarray, roi) -> np.ndarray:
    """Everything outside the region of interest is background."""
    height, width = rgba.shape[:2]
    x1, x2 = (min(width, _pixels(v, width)) for v in roi[0::2])
    y1, y2 = (min(height, _pixels(v, height)) for v in roi[1::2])
    inside = np.zeros((height, width), bool)
    inside[y1:y2, x1:x2] = True
    out = rgba.copy()
    out[..., 3] *= inside
    return out


def limit(rgba: np.ndarray, pixels: float | None) -> np.ndarray:
    """At most `pixels` pixels, the aspect kept (never enlarged)."""
    height, width = rgba.shape[:2]
    if not pixels or width * height <= pixels:
        return rgba
    scale = (pixels / (width * height)) ** 0.5
    return _resized(rgba, (max(1, int(width * scale)), max(1, int(height * scale))))


def _resized(rgba: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    with Image.fromarray(rgba) as image:
        return np.asarray(image.resize(size, Image.LANCZOS))


def _car(rgba: np.ndarray) -> np.ndarray:
    box = foreground_box(rgba[..., 3])
    if not box["width"]:
        raise RemoveBgError("no car was found to crop, scale or position", "unknown_foreground")
    return rgba[box["top"] : box["top"] + box["height"], box["left"] : box["left"] + box["width"]]


def _crop(rgba: np.ndarray, margin) -> np.ndarray:
    """Trimmed to the car, with a transparent margin (top, right, bottom, left)."""
    car = _car(rgba)
    height, width = car.shape[:2]
    top, right, bottom, left = (
        min(_pixels(m, whole), whole // 2, MARGIN_CAP_PX) for m, whole in zip(margin, (height, width, height, width))
    )
    out = np.zeros((height + top + bottom, width + left + right, 4), np.uint8)
    out[top : top + height, left : left + width] = car
    return out


def _place(rgba: np.ndarray, scale: float | None, position: tuple[float, float] | None) -> np.ndarray:
    """The car scaled to `scale` of the image (fitted) and put at `position`
    (fractions of the free space: 0 left or top, 1 right or bottom); the rest transparent."""
    height, width = rgba.shape[:2]
    box = foreground_box(rgba[..., 3])
    car = _car(rgba)
    if scale is not None:
        factor = scale * min(width / car.shape[1], height / car.shape[0])
        car = _resized(
            car, (max(1, min(width, round(car.shape[1] * factor))), max(1, min(height, round(car.shape[0] * factor))))
        )
    h, w = car.shape[:2]
    if position is None:  # where it was (its centre kept when it was scaled)
        top = min(max(0, box["top"] + (box["height"] - h) // 2), height - h)
        left = min(max(0, box["left"] + (box["width"] - w) // 2), width - w)
    else:
        left, top = round((width - w) * position[0]), round((height - h) * position[1])
    out = np.zeros_like(rgba)
    out[top : top + h, left : left + w] = car
    return out


# -- the answer -------------------------------------------------------------------------------------


def render(rgba: np.ndarray, background: np.ndarray | None, options: Options) -> tuple[bytes, str]:
    """The result's bytes and media type. `background`: the decoded bg_image_file, if any."""
    alpha = rgba[..., 3]
    if options.format == "zip":  # remove.bg's zip: the colour image and the matte, to combine later
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("color.jpg", image_bytes(_over(rgba, background, options.bg_color, flat=True), "jpg"))
            archive.writestr("alpha.png", image_bytes(alpha, "png"))
        return buffer.getvalue(), "application/zip"
    if options.channels == "alpha":  # the matte alone, in the format asked for
        fmt = "png" if options.format == "auto" else options.format
        return image_bytes(alpha, fmt), MEDIA[fmt]
    opaque = background is not None or (options.bg_color is not None and options.bg_color[3] == 255)
    fmt = ("jpg" if opaque else "png") if options.format == "auto" else options.format
    return image_bytes(_over(rgba, background, options.bg_color, flat=fmt == "jpg"), fmt), MEDIA[fmt]


def _over(rgba: np.ndarray, background: np.ndarray | None, colour, flat: bool) -> np.ndarray:
    """The car over the background image or colour (its alpha kept: RGBA); `flat`: no
    transparency left (a JPEG): what stays see-through goes over white."""
    photo, alpha = rgba[..., :3], rgba[..., 3]
    if background is not None:
        return compose(photo, alpha, background)
    if colour is None or colour[3] == 0:
        return compose(photo, alpha, WHITE) if flat else rgba
    if colour[3] == 255:
        return compose(photo, alpha, colour[:3])
    a, b = alpha[..., None] / 255.0, colour[3] / 255.0  # the car over a see-through colour
    out_a = a + b * (1 - a)
    rgb = (photo * a + np.array(colour[:3]) * b * (1 - a)) / np.maximum(out_a, 1e-6)
    layered = np.dstack([np.round(rgb), np.round(out_a * 255)]).astype(np.uint8)
    return compose(layered[..., :3], layered[..., 3], WHITE) if flat else layered
