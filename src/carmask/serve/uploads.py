"""Uploads: what one request may bring in, counted before anything is decoded.

Budget          one request's bytes (each upload, and what its zips unpack to) and pixels
                (every image's, from its header)
Upload          an image opened and counted, decoded only inside the pixels it was admitted with
read_image      an uploaded image: type checked, bytes read, opened, counted
background_of   the composition target: a kind, a colour (never a path) or an uploaded image
collect         the photos of a set request, uploaded or in zips, labelled and placed by car
safe_label      a client's file name as a harmless label (it names outputs, never a path)
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastapi import UploadFile
from PIL import Image

from carmask import io as cio
from carmask.cutout import parse_background
from carmask.outcomes import ImageError, Problem
from carmask.serve.errors import TooLarge, Unprocessable, WrongType
from carmask.serve.images import open_photo

MAX_SET_FILES = 64  # photos in one /api/cutout-set request
ZIP_EXPANSION = 4  # a request's zips unpack to at most this many times the upload limit
IMAGE_TYPES_LOOSE = ("", "application/octet-stream", "binary/octet-stream")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip", "multipart/x-zip")
_LABEL_BAD = re.compile(r"[^\w.-]+")  # letters and digits of any script stay


class Budget:
    """One request's allowance: each upload at most `max_upload_bytes` (counted
    while reading), its zips together unpacking to at most ZIP_EXPANSION times
    that, and its images at most `max_pixels` together (counted from their
    headers, before anything is decoded). `pixels`: those counted so far."""

    def __init__(self, max_upload_bytes: int, max_pixels: int):
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.unzip_left = ZIP_EXPANSION * max_upload_bytes
        self.pixels = 0

    def read(self, upload: UploadFile) -> bytes:
        """The upload's bytes, counted while reading (the guard bounds the body too)."""
        chunks, total = [], 0
        upload.file.seek(0)
        while chunk := upload.file.read(cio.MiB):
            total += len(chunk)
            self.check_bytes(total, f"upload {safe_label(upload.filename)!r}")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_bytes(self, count: int, what: str) -> None:
        if count > self.max_upload_bytes:
            raise TooLarge(
                f"{what} is larger than the limit of {self.max_upload_bytes:,} bytes "
                f"({self.max_upload_bytes / cio.MiB:.1f} MiB)"
            )

    def check_unzip(self, count: int, zip_label: str) -> None:
        """Whether `count` more bytes may be unpacked from this request's zips."""
        if count > self.unzip_left:
            raise TooLarge(f"{zip_label}: unpacks to more than {ZIP_EXPANSION}x the upload limit")

    def unzip(self, count: int, zip_label: str) -> None:
        """`count` more bytes unpacked from this request's zips."""
        self.check_unzip(count, zip_label)
        self.unzip_left -= count

    def open(self, data: bytes, label: str) -> Image.Image:
        """The image opened (`open_photo`: its header read) and its pixels counted."""
        image = open_photo(data, label)
        pixels, most = image.width * image.height, min(self.max_pixels, cio.MAX_PIXELS)
        if pixels > most:
            raise TooLarge(f"{label}: image has {pixels:,} pixels, over the limit of {most:,}")
        self.pixels += pixels
        if self.pixels > self.max_pixels:
            raise TooLarge(
                f"the images of this request have more than {self.max_pixels:,} pixels "
                f"together ({label} passes the budget)"
            )
        return image


@dataclass
class Upload:
    """An uploaded image, opened and counted in the budget, decoded only inside its pixels."""

    label: str
    image: Image.Image

    def decoded(self):
        return cio.read_photo(self.image, name=self.label)


def safe_label(name: str | None, default: str = "upload") -> str:
    """A client-supplied file name reduced to a harmless label (basename;
    letters and digits of any script, '.', '_' and '-')."""
    base = re.split(r"[\\/]", name or "")[-1]
    label = _LABEL_BAD.sub("_", base).lstrip(".")[:120]
    return label or default


def stem(label: str) -> str:
    return PurePosixPath(label).stem or label


def media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def check_type(upload: UploadFile, allow_zip: bool = False) -> None:
    kind = media_type(upload.content_type)
    if kind.startswith("image/") or kind in IMAGE_TYPES_LOOSE or (allow_zip and kind in ZIP_TYPES):
        return
    wanted = "an image or a zip" if allow_zip else "an image"
    raise WrongType(f"{safe_label(upload.filename)}: content type {kind!r} is not {wanted}")


def read_image(upload: UploadFile, budget: Budget, default: str) -> Upload:
    """An uploaded image: its type checked, its bytes read, opened and counted in the request's pixels."""
    check_type(upload)
    label = safe_label(upload.filename, default)
    return Upload(label, budget.open(budget.read(upload), label))


def background_of(bg: str | None, upload: UploadFile | None, budget: Budget):
    """The composition target: a kind or a colour (never a path), or an uploaded image."""
    if upload is not None and upload.filename:
        return read_image(upload, budget, "background")
    try:
        return parse_background(bg, files=False)
    except ValueError as exc:
        raise Unprocessable(f"bg: {exc}") from None


def decoded(background):
    """A background ready for `compose`: an uploaded image decoded (inside the pixels)."""
    return background.decoded() if isinstance(background, Upload) else background


# -- sets: photos uploaded one by one or in zips -----------------------------------------------------


class Labels:
    """The photos of one set request, as (unique label, bytes, place). The
    label names the output; the place groups views into cars: the photo's
    folder in its zip (a number, never the client's path) and its name, so
    that two cars' folders with the same file names stay two sets."""

    def __init__(self):
        self.items: list[tuple[str, bytes, Path]] = []
        self._taken: set[str] = set()
        self._places: set[Path] = set()
        self._folders: dict[str, int] = {}

    def add(self, name: str | None, data: bytes, folder: str = "") -> None:
        base = label = safe_label(name, "photo")
        n = 2
        while label in self._taken:  # another photo has this name: <stem>-2.jpg, -3, ...
            label, n = f"{stem(base)}-{n}{PurePosixPath(base).suffix}", n + 1
        self._taken.add(label)
        place = Path(str(self._folders.setdefault(folder, len(self._folders)))) / base
        if place in self._places:  # the same name twice in one folder: a photo of its own
            place = place.with_name(label)
        self._places.add(place)
        self.items.append((label, data, place))
        if len(self.items) > MAX_SET_FILES:
            raise TooLarge(f"more than {MAX_SET_FILES} photos in one request")


def collect(files: list[UploadFile], budget: Budget, errors: list[ImageError]) -> list[tuple[str, bytes, Path]]:
    """(unique label, bytes, place) for every photo uploaded directly or inside a zip
    (`Labels`); what is skipped is named in `errors`."""
    labels = Labels()
    for upload in files:
        data = budget.read(upload)
        if _is_zip(upload, data):
            for name, content, folder in unzip(data, safe_label(upload.filename, "upload.zip"), budget, errors):
                labels.add(name, content, folder)
        else:
            labels.add(upload.filename, data)
    return labels.items


def _is_zip(upload: UploadFile, data: bytes) -> bool:
    return (
        data[:4] == b"PK\x03\x04"
        or media_type(upload.content_type) in ZIP_TYPES
        or (upload.filename or "").lower().endswith(".zip")
    )


def unzip(data: bytes, zip_label: str, budget: Budget, errors: list[ImageError]) -> Iterator[tuple[str, bytes, str]]:
    """(name, bytes, folder) of the photos inside a zip; member names are labels only, never paths."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise Unprocessable(f"{zip_label}: not a readable zip ({exc})") from None
    with archive:
        for member in _photo_members(archive, zip_label, errors):
            base = re.split(r"[\\/]", member.filename)[-1]
            budget.check_unzip(member.file_size, zip_label)  # by its header: refused before reading
            try:
                with archive.open(member) as stream:
                    content = stream.read(budget.unzip_left + 1)  # never trust the header's size
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                errors.append(ImageError(safe_label(base), f"cannot be unpacked ({exc})", Problem.UNREADABLE))
                continue
            budget.unzip(len(content), zip_label)
            yield base, content, f"{zip_label}/{PurePosixPath(member.filename).parent}"


def _photo_members(archive: zipfile.ZipFile, zip_label: str, errors: list[ImageError]) -> Iterator[zipfile.ZipInfo]:
    """The members that may be photos: no folders, hidden files or macOS resource forks;
    other suffixes named in `errors`."""
    members = archive.infolist()
    if len(members) > 4 * MAX_SET_FILES:
        raise TooLarge(f"{zip_label}: more than {4 * MAX_SET_FILES} entries")
    for member in members:
        name = member.filename
        base = re.split(r"[\\/]", name)[-1]
        if member.is_dir() or not base or base.startswith(".") or "__MACOSX" in name:
            continue
        if PurePosixPath(base).suffix.lower() not in cio.PHOTO_SUFFIXES:
            errors.append(ImageError(safe_label(base), "not a photo (skipped)", Problem.NOT_A_PHOTO))
            continue
        yield member
