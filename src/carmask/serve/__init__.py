"""The HTTP service: a PNG/zip API, a remove.bg-compatible endpoint and a web page over one `Predictor`.

    carmask serve --port 8000            # then open http://127.0.0.1:8000/

Endpoints (OpenAPI at /openapi.json):

* ``GET /health`` (answered on the event loop, never queued behind work), ``GET /version``
* ``POST /api/cutout``: one photo (multipart field ``file``) -> PNG cut-out
* ``POST /api/cutout-set``: views of one or more cars (``files``, or a zip) -> zip of PNGs
* ``POST /v1.0/removebg``: remove.bg's API (its fields and their handling: `removebg.FIELDS`), so
  its clients work; with an API key every POST needs ``X-Api-Key``
* ``GET /``: the web page (``static/index.html``); ``GET /docs``, ``/redoc``: the API's pages, their
  scripts served from here (the ``fastapi-offline`` wheel), never from a CDN

Every cut-out goes through `cutout.remove_set` (`Service.cut`). Bounds: a request body over
the upload limit gets 413 (the body read and dropped up to a bound first, so
the client sees the answer); every image's pixels are counted from its header
before anything is decoded, against a per-request budget, and only JPEG, PNG,
WebP, TIFF and BMP are ever decoded (`open_photo`); reading uploads into
memory, unpacking zips, decoding and all work happen inside `PixelSlots`,
which admit a few requests and a fixed number of pixels at once; slow clients
meet header and body timeouts. Pages of other origins cannot drive the API
(Origin check), nor can other host names (Host check, against DNS rebinding),
nor clients without the API key: `guard.py`. Nothing a client sends is used as a path.
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import functools
import gc
import io
import json
import os
import re
import tempfile
import threading
import time
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile, params
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.datastructures import UploadFile as FormFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from carmask import __version__
from carmask import io as cio
from carmask.serve import removebg
from carmask.cutout import Cutout, parse_background, remove_set
from carmask.serve.guard import (BODY_TIMEOUT, MULTIPART_SLACK, Guard, error_response, local_hosts, origin,
                           removebg_path, served, timed_protocol)
from carmask.io import ImageError, group_by_car
from carmask.predict import Predictor
from carmask.serve.removebg import RemoveBgError
from carmask.views import MIN_VIEWS, NotEnoughViews

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 25 * MiB
DEFAULT_REQUEST_PIXELS = 48_000_000   # every image of one request together (a 16-view 1918x1280 set: 39 Mpx)
DEFAULT_PIXELS_AT_ONCE = 96_000_000   # decoded pixels in flight in the whole server
MAX_SET_FILES = 64                    # photos in one /api/cutout-set request
ZIP_EXPANSION = 4                     # a zip may unpack to at most this many times the upload limit
STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_URL = "/docs-assets"             # Swagger UI and ReDoc, from the fastapi-offline wheel (no CDN)
PNG_COMPRESS_LEVEL = 1                # fast; the photo's noise dominates the size anyway
# The only decoders a client's bytes reach: never EPS/PS (Pillow would run Ghostscript), nor any other.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
DRAIN_SECONDS = 30                    # on SIGTERM or Ctrl+C, requests in flight get this long to finish

EXPOSED_HEADERS = ["Content-Disposition", "X-Carmask-Warning", "X-Carmask-Cutouts", "X-Carmask-Skipped",
                   "X-Width", "X-Height", "X-Type", "X-Credits-Charged", "X-Foreground-Top", "X-Foreground-Left",
                   "X-Foreground-Width", "X-Foreground-Height"]  # readable by --allow-origin pages
IMAGE_TYPES_LOOSE = ("", "application/octet-stream", "binary/octet-stream")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip", "multipart/x-zip")
_LABEL_BAD = re.compile(r"[^\w.-]+")  # letters and digits of any script stay

PNG_RESPONSE = {"content": {"image/png": {}}, "description": "The cut-out as a PNG: RGBA (transparent), "
                                                            "L (mask) or RGB (over a colour or image)."}
ERRORS = {
    403: {"description": "A page of another origin, or a wrong or missing API key."},
    413: {"description": "Upload over the size limit, or images over the pixel budget."},
    415: {"description": "The upload is not an image (or, for sets, a zip)."},
    422: {"description": "Unreadable image, bad `bg`, or input the model cannot handle."},
}


# -- what the routes share: the app's state ---------------------------------------------------------

class PixelSlots:
    """At most `jobs` requests at work and `pixels` decoded pixels at once. A
    request waits for a job (`with slots.job():`) before it reads its uploads
    into memory or unpacks a zip, and then (`with slots(pixels):`), before
    decoding anything, until its pixels fit. A second after the last job
    ends, `on_idle` runs: by default the memory freed is given back to the
    system (glibc keeps it otherwise, and the server would stay at its peak size)."""

    def __init__(self, jobs: int, pixels: int, on_idle=None):
        self.jobs, self.pixels = jobs, pixels
        self._on_idle = on_idle or _trim_memory
        self._busy_jobs = self._busy_pixels = 0
        self._free = threading.Condition()
        self._worked = threading.Event()
        threading.Thread(target=self._trim_when_idle, name="carmask-trim", daemon=True).start()

    @contextmanager
    def job(self):
        with self._free:
            self._free.wait_for(lambda: self._busy_jobs < self.jobs)
            self._busy_jobs += 1
        try:
            yield
        finally:
            with self._free:
                self._busy_jobs -= 1
                self._free.notify_all()
            self._worked.set()

    @contextmanager
    def __call__(self, pixels: int):
        """Inside a job: wait until `pixels` more decoded pixels fit."""
        pixels = min(int(pixels), self.pixels)
        with self._free:
            self._free.wait_for(lambda: self._busy_pixels + pixels <= self.pixels)
            self._busy_pixels += pixels
        try:
            yield
        finally:
            with self._free:
                self._busy_pixels -= pixels
                self._free.notify_all()

    def _trim_when_idle(self) -> None:
        while self._worked.wait():
            time.sleep(1.0)  # the answers that were just made are sent and freed meanwhile
            with self._free:
                if self._busy_jobs:
                    continue
                self._worked.clear()
            self._on_idle()


def _trim_memory() -> None:
    gc.collect()  # arrays held by reference cycles (frames of finished requests)
    Image.core.clear_cache()  # the memory blocks Pillow keeps for the next decodes
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _server_malloc(arenas: int = 2, mmap_from: int = 4 * MiB) -> None:
    """glibc's malloc set for a long-lived server: at most `arenas` arenas (as
    MALLOC_ARENA_MAX) and blocks of `mmap_from` bytes or more always mapped
    (returned to the system when freed) rather than carved from an arena,
    where photo-sized buffers would leave the heap fragmented and the process
    at its peak size after a burst of requests."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, arenas)     # M_ARENA_MAX
        libc.mallopt(-3, mmap_from)  # M_MMAP_THRESHOLD (also stops glibc from raising it)
    except (OSError, AttributeError):
        pass


@dataclass
class Service:
    """The app's state (app.state.service): the predictor and the limits."""
    predictor: Predictor
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    request_pixels: int = DEFAULT_REQUEST_PIXELS
    slots: PixelSlots = None
    api_key: str | None = None
    refine: bool = True

    @property
    def max_removebg_body(self) -> int:
        """A remove.bg request's body: room for the photo as base64 text, url-encoded (4/3 and
        a little more: + and / become %2B, %2F), or for a photo and a background file."""
        return 2 * self.max_upload_bytes + MULTIPART_SLACK

    def model_names(self) -> list[str]:
        from carmask import models
        if self.predictor.model_name is not None:
            name = str(self.predictor.model_name)
            return [Path(name).stem if Path(name).suffix else name]
        return models.shipped()

    def too_big(self, what: str) -> HTTPException:
        return HTTPException(413, f"{what} is larger than the limit of {self.max_upload_bytes:,} bytes "
                                  f"({self.max_upload_bytes / MiB:.1f} MiB)")

    def cut(self, items: list[tuple[str, bytes]], background) -> list[Cutout]:
        """The one cut-out path (`cutout.remove_set`); call it inside the request's slots."""
        return remove_set(items, self.predictor, background, refine=self.refine)


def service(request: Request) -> Service:
    return request.app.state.service


# -- small helpers ------------------------------------------------------------------------------

def safe_label(name: str | None, default: str = "upload") -> str:
    """A client-supplied file name reduced to a harmless label (basename;
    letters and digits of any script, '.', '_' and '-')."""
    base = re.split(r"[\\/]", name or "")[-1]
    label = _LABEL_BAD.sub("_", base).lstrip(".")[:120]
    return label or default


def disposition(kind: str, filename: str) -> str:
    """A Content-Disposition header for `filename` (a safe label): plain ASCII
    as it is, else an ASCII fallback and the UTF-8 name (RFC 6266)."""
    fallback = filename.encode("ascii", "replace").decode().replace("?", "_")
    if fallback == filename:
        return f'{kind}; filename="{filename}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


def _stem(label: str) -> str:
    return PurePosixPath(label).stem or label


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    with Image.fromarray(array) as image:
        if fmt == "PNG":
            image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        else:
            image.convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def open_photo(data: bytes, label: str) -> Image.Image:
    """An uploaded image opened (its header read, nothing decoded) as one of
    PHOTO_FORMATS, else an ImageError naming it; too many pixels: 413."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except Image.DecompressionBombError:
        raise HTTPException(413, f"{label}: image has too many pixels") from None
    except Exception:  # noqa: BLE001 - whatever Pillow raises for what is no photo of these formats
        raise ImageError(label, "not a readable JPEG, PNG, WebP, TIFF or BMP image") from None


class Budget:
    """One request's pixels, counted from headers before any decoding."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def add(self, data: bytes, label: str) -> Image.Image:
        """The photo opened (`open_photo`) and its pixels counted."""
        image = open_photo(data, label)
        pixels = image.width * image.height
        if pixels > min(self.limit, cio.MAX_PIXELS):
            raise HTTPException(413, f"{label}: image has {pixels:,} pixels, over the limit of "
                                     f"{min(self.limit, cio.MAX_PIXELS):,}")
        self.used += pixels
        if self.used > self.limit:
            raise HTTPException(413, f"the images of this request have more than {self.limit:,} pixels "
                                     f"together ({label} passes the budget)")
        return image


def read_upload(upload: UploadFile, state: Service) -> bytes:
    """The upload's bytes, counted while reading (the body limit is checked earlier too)."""
    chunks, total = [], 0
    upload.file.seek(0)
    while chunk := upload.file.read(MiB):
        total += len(chunk)
        if total > state.max_upload_bytes:
            raise state.too_big(f"upload {safe_label(upload.filename)!r}")
        chunks.append(chunk)
    return b"".join(chunks)


def _content_type(upload: UploadFile) -> str:
    return (upload.content_type or "").split(";")[0].strip().lower()


def _is_zip(upload: UploadFile, data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04" or _content_type(upload) in ZIP_TYPES or \
        (upload.filename or "").lower().endswith(".zip")


def check_type(upload: UploadFile, allow_zip: bool = False) -> None:
    kind = _content_type(upload)
    if kind.startswith("image/") or kind in IMAGE_TYPES_LOOSE or (allow_zip and kind in ZIP_TYPES):
        return
    wanted = "an image or a zip" if allow_zip else "an image"
    raise HTTPException(415, f"{safe_label(upload.filename)}: content type {kind!r} is not {wanted}")


@dataclass
class Upload:
    """An uploaded image, opened and counted in the budget, decoded only inside the slots."""
    label: str
    image: Image.Image


def read_image(upload: UploadFile, state: Service, budget: Budget, default: str) -> Upload:
    """An uploaded image: its type checked, its bytes read, opened and counted in the request's pixels."""
    check_type(upload)
    label = safe_label(upload.filename, default)
    return Upload(label, budget.add(read_upload(upload, state), label))


def background_of(bg: str | None, upload: UploadFile | None, state: Service, budget: Budget):
    """The composition target: a kind or a colour (never a path), or an uploaded image."""
    if upload is not None and upload.filename:
        return read_image(upload, state, budget, "background")
    try:
        return parse_background(bg, files=False)
    except ValueError as exc:
        raise HTTPException(422, f"bg: {exc}") from None


def decoded(background):
    """A background ready for `compose`: an uploaded image decoded (inside the slots)."""
    return cio.read_photo(background.image, name=background.label) if isinstance(background, Upload) else background


def warning_header(result: Cutout) -> dict[str, str]:
    """The cut-out's warning (e.g. views that do not share a studio) as a header, if any."""
    if not result.warning:
        return {}
    return {"X-Carmask-Warning": re.sub(r"[^\x20-\x7e]", "?", result.warning)[:1000]}


def _chunks(spool, size: int = 256 * 1024) -> Iterator[bytes]:
    try:
        while chunk := spool.read(size):
            yield chunk
    finally:
        spool.close()


# -- routes -------------------------------------------------------------------------------------

router = APIRouter()


@router.head("/health", include_in_schema=False)  # one operation in the schema (GET), HEAD answered too
@router.get("/health", tags=["meta"], summary="Liveness check")
async def health() -> dict:
    return {"status": "ok"}  # async: answered on the event loop, never behind queued work


@router.get("/version", tags=["meta"], summary="Version, models and limits")
async def version(request: Request) -> dict:
    state = service(request)
    return {"version": __version__, "models": state.model_names(), "device": str(state.predictor.device),
            "max_upload_bytes": state.max_upload_bytes, "max_request_pixels": state.request_pixels,
            "max_pixels": min(state.request_pixels, cio.MAX_PIXELS), "min_views": MIN_VIEWS,
            "api_key": state.api_key is not None}


def once(*names: str) -> params.Depends:
    """A dependency refusing a form that repeats any of `names` (FastAPI would use one silently)."""
    async def check(request: Request) -> None:
        form = await request.form()  # the form FastAPI parsed, not parsed again
        for name in names:
            if len(form.getlist(name)) > 1:
                raise HTTPException(400, f"field {name!r} was sent {len(form.getlist(name))} times: send it once"
                                         + (" (several photos go to /api/cutout-set)" if name == "file" else ""))
    return Depends(check)


@router.post("/api/cutout", tags=["cutout"], summary="Cut the car out of one photo",
             response_class=Response, responses={200: PNG_RESPONSE, **ERRORS},
             dependencies=[once("file", "bg", "background")])
def cutout(request: Request,
           file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, TIFF or BMP)."),
           bg: str = Form("transparent", description="transparent (RGBA PNG), mask (L PNG), or a "
                                                     "colour: green, #00b900, 0,185,0 (RGB PNG)."),
           background: UploadFile | None = File(None, description="Optional background image "
                                                                    "(scaled to cover); wins over bg.")):
    state = service(request)
    with state.slots.job():  # a few requests at once from here: their uploads in memory
        budget = Budget(state.request_pixels)
        photo = read_image(file, state, budget, "photo")
        back = background_of(bg, background, state, budget)
        with state.slots(budget.used):  # decoding, the cut-out and its PNG: all inside
            [result] = state.cut([(photo.label, photo.image)], decoded(back))
            body = None if result.error else encode(result.image)
        if result.error:
            raise result.error
        return Response(body, media_type="image/png", headers={
            "Content-Disposition": disposition("inline", f"{_stem(photo.label)}.png"), **warning_header(result)})


@router.post("/api/cutout-set", tags=["cutout"], summary="Cut out sets of views of cars (zip of PNGs)",
             response_class=Response,
             responses={200: {"content": {"application/zip": {}},
                              "description": "A zip of `<stem>.png` (`<stem>_mask.png` for masks), plus "
                                             "`errors.txt` naming every skipped file and why, and "
                                             "`warnings.txt` saying how some were cut out (e.g. taken out "
                                             "of a set whose views do not share a studio)."}, **ERRORS},
             dependencies=[once("bg", "background")])
def cutout_set(request: Request,
               files: list[UploadFile] = File(..., description="Photos named <car>_<NN>.jpg "
                                                               "(or one zip of them)."),
               bg: str = Form("transparent", description="As for /api/cutout."),
               background: UploadFile | None = File(None, description="Optional background image.")):
    state = service(request)
    with state.slots.job():  # a few at once from here: uploads and unpacked zips in memory
        for upload in files:
            check_type(upload, allow_zip=True)
        budget = Budget(state.request_pixels)
        back = background_of(bg, background, state, budget)
        errors: list[str] = []
        items = []
        for label, data, place in collect(files, state, errors):
            try:
                items.append((label, budget.add(data, label), place))
            except ImageError as exc:  # one photo: skipped, named in errors.txt
                errors.append(str(exc))
        if not items:
            raise HTTPException(422, "no photos to cut out" + (": " + "; ".join(errors[:10]) if errors else ""))
        suffix = "_mask.png" if back == "mask" else ".png"
        out = tempfile.SpooledTemporaryFile(max_size=32 * MiB)
        written, notes = 0, []
        try:
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive, state.slots(budget.used):
                target, by_place = decoded(back), {place: (label, image) for label, image, place in items}
                for photo_set in group_by_car(list(by_place)):  # keys only: no file access
                    for result in state.cut([by_place[p] for p in photo_set.paths], target):
                        if result.warning and result.warning not in notes:
                            notes.append(result.warning)
                        if result.error:
                            errors.append(str(result.error))
                            continue
                        archive.writestr(f"{_stem(result.name)}{suffix}", encode(result.image))
                        written += 1
                for name, lines in (("errors.txt", errors), ("warnings.txt", notes)):
                    if lines:
                        archive.writestr(name, "\n".join(lines) + "\n")
            if not written:
                raise HTTPException(422, "no photo could be cut out: " + "; ".join(errors[:10]))
        except BaseException:
            out.close()
            raise
        size = out.tell()
        out.seek(0)
        return StreamingResponse(_chunks(out), media_type="application/zip",
                                 headers={"Content-Disposition": 'attachment; filename="cutouts.zip"',
                                          "Content-Length": str(size),
                                          "X-Carmask-Cutouts": str(written),
                                          "X-Carmask-Skipped": str(len(errors))})


def collect(files: list[UploadFile], state: Service, errors: list[str]) -> list[tuple[str, bytes, Path]]:
    """(unique label, bytes, place) for every photo uploaded directly or inside
    a zip. The label names the output; the place groups views into cars: the
    photo's folder in its zip (a number, never the client's path) and its name,
    so that two cars' folders with the same file names stay two sets."""
    items: list[tuple[str, bytes, Path]] = []
    taken: set[str] = set()
    places: set[Path] = set()
    folders: dict[str, int] = {}

    def add(name: str | None, data: bytes, folder: str = "") -> None:
        label = safe_label(name, "photo")
        base = label
        if label in taken:
            stem, suffix = _stem(label), PurePosixPath(label).suffix
            n = 2
            while f"{stem}-{n}{suffix}" in taken:
                n += 1
            label = f"{stem}-{n}{suffix}"
        taken.add(label)
        place = Path(str(folders.setdefault(folder, len(folders)))) / base
        if place in places:  # the same name twice in one folder: a photo of its own
            place = place.with_name(label)
        places.add(place)
        items.append((label, data, place))
        if len(items) > MAX_SET_FILES:
            raise HTTPException(413, f"more than {MAX_SET_FILES} photos in one request")

    budget = [ZIP_EXPANSION * state.max_upload_bytes]  # total bytes unpacked from zips
    for upload in files:
        data = read_upload(upload, state)
        if _is_zip(upload, data):
            unzip(data, safe_label(upload.filename, "upload.zip"), add, budget, errors)
        else:
            add(upload.filename, data)
    return items


def unzip(data: bytes, zip_label: str, add, budget: list[int], errors: list[str]) -> None:
    """Photos inside a zip; member names are labels only, never paths."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise HTTPException(422, f"{zip_label}: not a readable zip ({exc})") from None
    with archive:
        members = archive.infolist()
        if len(members) > 4 * MAX_SET_FILES:
            raise HTTPException(413, f"{zip_label}: more than {4 * MAX_SET_FILES} entries")
        for member in members:
            name = member.filename
            base = re.split(r"[\\/]", name)[-1]
            if member.is_dir() or not base or base.startswith(".") or "__MACOSX" in name:
                continue
            label = safe_label(base)
            if PurePosixPath(base).suffix.lower() not in cio.PHOTO_SUFFIXES:
                errors.append(f"{label}: not a photo (skipped)")
                continue
            if member.file_size > budget[0]:
                raise HTTPException(413, f"{zip_label}: unpacks to more than {ZIP_EXPANSION}x the upload limit")
            try:
                with archive.open(member) as stream:
                    content = stream.read(budget[0] + 1)  # never trust the header's size
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                errors.append(f"{label}: cannot be unpacked ({exc})")
                continue
            budget[0] -= len(content)
            if budget[0] < 0:
                raise HTTPException(413, f"{zip_label}: unpacks to more than {ZIP_EXPANSION}x the upload limit")
            add(base, content, f"{zip_label}/{PurePosixPath(name).parent}")


# -- remove.bg's API ----------------------------------------------------------------------------

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@router.post("/v1.0/removebg", tags=["remove.bg"], summary="remove.bg-compatible cut-out",
             description="remove.bg's API: its fields as a form or a JSON body, its answers and error "
                         "shape. Every field and what carmask does with it is described below; size "
                         "defaults to preview (0.25 Mpx), as remove.bg's does: send size=full for the "
                         "photo's own resolution.",
             response_class=Response, openapi_extra=removebg.openapi())
async def removebg_cutout(request: Request) -> Response:
    """The fields are read here (form or JSON), the work done in a thread: one path for both."""
    state, kind = service(request), _media_type(request.headers.get("content-type"))
    as_json = _wants_json(request)
    if kind == "application/json":
        return await run_in_threadpool(_removebg, state, _json_fields(await request.body()), {}, as_json)
    if kind and kind not in FORM_TYPES:
        raise RemoveBgError(400, f"a body of type {kind[:60]!r}: send the fields as multipart/form-data, "
                                 "application/x-www-form-urlencoded or application/json", "invalid_parameters")
    async with request.form(max_files=8, max_fields=64, max_part_size=state.max_removebg_body) as form:
        fields, files = _form_fields(form)
        return await run_in_threadpool(_removebg, state, fields, files, as_json)


def _removebg(state: Service, fields: dict[str, str], files: dict[str, UploadFile], as_json: bool) -> Response:
    options = removebg.parse(fields, set(files))
    with state.slots.job():  # a few requests at once from here: their uploads in memory
        budget = Budget(state.request_pixels)
        photo = _removebg_photo(options, fields, files, state, budget)
        back = _file_field("bg_image_file", files, state, budget) if options.bg_image else None
        with state.slots(budget.used):
            [result] = state.cut([(photo.label, photo.image)], "transparent")
            if result.error and isinstance(result.error.__cause__, NotEnoughViews):
                raise RemoveBgError(400, str(result.error), "unknown_foreground")
            if result.error:
                raise result.error
            rgba = removebg.shape(result.image, options)
            body, media = removebg.render(rgba, decoded(back) if back else None, options)
    height, width = rgba.shape[:2]
    box = removebg.foreground_box(rgba[..., 3])
    headers = {"X-Width": str(width), "X-Height": str(height), "X-Credits-Charged": "0",
               **({"X-Type": "car"} if options.x_type else {}),
               **{f"X-Foreground-{k.title()}": str(v) for k, v in box.items()}}
    if as_json:  # remove.bg's JSON answer: the image as base64 beside the car's box
        return JSONResponse({"data": {"result_b64": base64.b64encode(body).decode("ascii"),
                                      **{f"foreground_{k}": v for k, v in box.items()}}}, headers=headers)
    return Response(body, media_type=media, headers=headers)


def _removebg_photo(options: removebg.Options, fields: dict[str, str], files: dict[str, UploadFile],
                    state: Service, budget: Budget) -> Upload:
    """The photo, as a file or as base64."""
    if options.source == "image_file":
        return _file_field("image_file", files, state, budget)
    try:  # line breaks are common in base64 text
        data = base64.b64decode("".join(fields["image_file_b64"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise RemoveBgError(400, "image_file_b64 is not valid base64", "invalid_parameters") from None
    if len(data) > state.max_upload_bytes:
        raise state.too_big("image_file_b64 (decoded)")
    return Upload("image_file_b64", budget.add(data, "image_file_b64"))


def _file_field(name: str, files: dict[str, UploadFile], state: Service, budget: Budget) -> Upload:
    """A remove.bg file field (of any content type, as its clients send them), named by the field."""
    return Upload(name, budget.add(read_upload(files[name], state), name))


def _form_fields(form) -> tuple[dict[str, str], dict[str, UploadFile]]:
    """remove.bg's fields of a form: text and files apart, each given once (others are ignored)."""
    fields, files, seen = {}, {}, set()
    for name, value in form.multi_items():
        if name not in removebg.FIELDS:
            continue
        if name in seen:
            raise RemoveBgError(400, f"{name} was sent {len(form.getlist(name))} times: send it once",
                                "invalid_parameters")
        seen.add(name)
        is_file = removebg.FIELDS[name].kind == "file"
        if is_file != isinstance(value, FormFile):
            raise RemoveBgError(400, f"{name} must be {'a file upload' if is_file else 'a text field'}",
                                "invalid_parameters")
        if is_file:
            files[name] = value
        else:
            fields[name] = value
    return fields, files


def _json_fields(body: bytes) -> dict[str, str]:
    """remove.bg's fields from a JSON body, as the text a form would carry (true, 12, ...)."""
    try:
        data = json.loads(body or b"{}", object_pairs_hook=_unique_names)
    except (ValueError, UnicodeDecodeError):
        raise RemoveBgError(400, "the request body is not valid JSON", "invalid_parameters") from None
    if not isinstance(data, dict):
        raise RemoveBgError(400, "the JSON body must be an object of remove.bg's fields", "invalid_parameters")
    return {name: _as_text(name, value) for name, value in data.items()
            if name in removebg.FIELDS and value is not None}


def _unique_names(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose names are each given once (json keeps the last silently)."""
    names = [name for name, _ in pairs]
    for name in names:
        if names.count(name) > 1:
            raise RemoveBgError(400, f"{name} was sent {names.count(name)} times: send it once", "invalid_parameters")
    return dict(pairs)


def _as_text(name: str, value) -> str:
    if removebg.FIELDS[name].kind == "file":
        raise RemoveBgError(400, f"{name} cannot be sent in a JSON body"
                                 + (": send image_file_b64" if name == "image_file" else ""), "invalid_parameters")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise RemoveBgError(400, f"{name} must be a string", "invalid_parameters")
    return value


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def _wants_json(request: Request) -> bool:
    """remove.bg answers JSON to `Accept: application/json` (its SDKs ask so), else the image."""
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "image/" not in accept


def _removebg_error(request: Request, exc: RemoveBgError) -> JSONResponse:
    return error_response(request.url.path, exc.status, exc.title, exc.code)


# -- the page -----------------------------------------------------------------------------------

_PAGE = (STATIC_DIR / "index.html").read_text(encoding="utf-8") if (STATIC_DIR / "index.html").is_file() \
    else "<!doctype html><title>carmask</title><p>The web page is not installed; see /openapi.json.</p>"


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse)
async def index() -> HTMLResponse:
    return HTMLResponse(_PAGE)


def _docs_assets() -> Path | None:
    """Swagger UI's and ReDoc's files as the fastapi-offline wheel ships them (MIT), or None."""
    import importlib.util
    spec = importlib.util.find_spec("fastapi_offline")
    folder = Path(next(iter(spec.submodule_search_locations or ()), "")) / "static" if spec else None
    return folder if folder and (folder / "swagger-ui-bundle.js").is_file() else None


DOCS_ASSETS = _docs_assets()


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    if DOCS_ASSETS is None:
        raise HTTPException(404, "the API pages need the fastapi-offline package (pip install 'carmask[serve]'); "
                                 "the schema is at /openapi.json")
    return get_swagger_ui_html(openapi_url="/openapi.json", title="carmask API",
                               swagger_js_url=f"{DOCS_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_URL}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})  # else a badge from swagger.io


@router.get(f"{DOCS_URL}/redoc.standalone.js", include_in_schema=False)  # before the mount of DOCS_URL
async def redoc_script() -> Response:
    if DOCS_ASSETS is None:
        raise HTTPException(404, "the API pages need the fastapi-offline package")
    return Response(_redoc_script(), media_type="text/javascript")


@functools.cache
def _redoc_script() -> bytes:
    """ReDoc's script, its one outside request (its logo, from a CDN) pointed here instead."""
    script = (DOCS_ASSETS / "redoc.standalone.js").read_bytes()
    return script.replace(b"https://cdn.redoc.ly/redoc/logo-mini.svg", f"{DOCS_URL}/favicon.png".encode())


@router.get("/redoc", include_in_schema=False)
async def redoc() -> HTMLResponse:
    if DOCS_ASSETS is None:
        raise HTTPException(404, "the API pages need the fastapi-offline package (pip install 'carmask[serve]'); "
                                 "the schema is at /openapi.json")
    return get_redoc_html(openapi_url="/openapi.json", title="carmask API",
                          redoc_js_url=f"{DOCS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{DOCS_URL}/favicon.png", with_google_fonts=False)


# -- errors without Python internals ------------------------------------------------------------

def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field and what was wrong, never the value's repr."""
    route = request.scope.get("route")
    files = {field.name for field in getattr(getattr(route, "dependant", None), "body_params", ())
             if isinstance(field.field_info, params.File)}  # the route's file fields
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "header")]
        what = "is required" if error.get("type") == "missing" else \
            "must be a file upload" if loc and loc[0] in files and isinstance(error.get("input"), str) else \
            re.sub(r"<[^>]*>|0x[0-9a-f]+", "", str(error.get("msg", "is not valid"))).strip()  # no reprs
        problems.append(f"field {'.'.join(loc) or 'request'!r} {what}")
    return error_response(request.url.path, 422, "; ".join(problems) or "the request is not valid")


def _image_error(request: Request, exc: ImageError) -> JSONResponse:
    """A photo that cannot be read or cut out, named: 422 (400 invalid_image for remove.bg's clients)."""
    path = request.url.path
    return error_response(path, 400 if removebg_path(path) else 422, str(exc), "invalid_image")


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: a 500 in the endpoint's shape, no internals (the traceback goes to the server's log)."""
    return error_response(request.url.path, 500, "internal error: the server could not answer this request "
                                                 "(its log has the details)", "internal_error")


def _http_error(request: Request, exc) -> JSONResponse:
    """Every HTTP error (also the framework's 404, 405 and form-parsing 400s) in the endpoint's shape."""
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return error_response(request.url.path, exc.status_code, detail, headers=getattr(exc, "headers", None))


# -- the app ------------------------------------------------------------------------------------

def create_app(predictor: Predictor | None = None, model=None, device: str = "auto",
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_REQUEST_PIXELS,
               max_concurrency: int | None = None, pixels_at_once: int = DEFAULT_PIXELS_AT_ONCE,
               api_key: str | None = None, hosts: set[str] | None = None, allow_origins=(),
               refine: bool = True, body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The FastAPI app. `predictor`: use this one; else one is made from `model`
    (a shipped name, a checkpoint path, or None for the shipped defaults) and
    `device`. `max_pixels`: every image of one request together. `hosts`: the
    Host names served besides IP addresses (`guard.local_hosts`; None: any, for
    tests and proxies that check). `allow_origins`: other origins whose pages
    may POST (ValueError for what is no origin). `api_key`: required as
    X-Api-Key on every POST (the page asks for it)."""
    allow_origins = [origin(o) for o in allow_origins]
    predictor = predictor or Predictor(model, device=device)
    jobs = max_concurrency or max(2, min(4, os.cpu_count() or 1))
    state = Service(predictor, int(max_upload_bytes), int(max_pixels),
                    PixelSlots(jobs, max(int(pixels_at_once), int(max_pixels))), api_key, refine)
    _preload(predictor)
    app = FastAPI(title="carmask", version=__version__, docs_url=None, redoc_url=None,
                  description="Remove the studio background from car photos. Upload one photo to "
                              "`/api/cutout`, or the views of a car (`<car>_<NN>.jpg`, at least "
                              f"{MIN_VIEWS}) to `/api/cutout-set` for the multi-view model; "
                              "`/v1.0/removebg` speaks remove.bg's API (its `size` defaults to preview, "
                              "0.25 Mpx, as remove.bg's does). Photos: JPEG, PNG, WebP, TIFF or BMP.")
    app.state.service = state
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RemoveBgError, _removebg_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(Exception, _internal_error)
    from fastapi.staticfiles import StaticFiles
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if DOCS_ASSETS is not None:
        app.mount(DOCS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.add_middleware(Guard, max_body=state.max_upload_bytes + MULTIPART_SLACK, hosts=hosts,
                       origins=set(allow_origins), body_timeout=body_timeout, api_key=api_key,
                       max_removebg_body=state.max_removebg_body)
    if allow_origins:  # outermost: their pages may read every answer, the guard's refusals too
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["GET", "HEAD", "POST"],
                           allow_headers=["X-Api-Key", "Accept"], expose_headers=EXPOSED_HEADERS)
    return app


def _preload(predictor: Predictor) -> None:
    """Load the models now (once), not in the first requests. A missing shipped
    single-photo model is not an error here: such requests get a 422 later."""
    for views in (1, MIN_VIEWS):
        try:
            predictor.model_for(views)
        except NotEnoughViews:
            pass


def page_url(host: str, port: int) -> str:
    """Where to open the page of a server bound to `host` (an IPv6 address in brackets)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def startup_lines(host: str, port: int, hosts: set[str], drain_seconds: float) -> list[str]:
    """What `carmask serve` says before it serves: where, which host names, how it stops."""
    names = sorted(name for name in hosts if not served(name, set()))  # IP addresses go without saying
    return [f"carmask {__version__}: open {page_url(host, port)}",
            f"Answers requests addressed to {', '.join(names)} or to an IP address; other host names "
            "are refused (against DNS rebinding): add each name that clients use with --allow-host NAME "
            "(repeatable).",
            f"Ctrl+C or SIGTERM: requests in flight get up to {drain_seconds:g} s to finish; "
            "a second signal quits at once."]


def run(host: str = "127.0.0.1", port: int = 8000, model=None, device: str = "auto",
        api_key: str | None = None, allow_origins=(), allow_hosts=(),
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_concurrency: int | None = None,
        drain_seconds: float = DRAIN_SECONDS) -> None:
    """Serve the API and the page with uvicorn (the `carmask serve` verb)."""
    import uvicorn
    _server_malloc()
    hosts = local_hosts(host, allow_hosts)
    app = create_app(model=model, device=device, api_key=api_key, hosts=hosts,
                     allow_origins=allow_origins, max_upload_bytes=max_upload_bytes,
                     max_concurrency=max_concurrency)
    print("\n".join(startup_lines(host, port, hosts, drain_seconds)), flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", http=timed_protocol(),
                            timeout_keep_alive=5, limit_concurrency=512, timeout_graceful_shutdown=drain_seconds)
    _server(config).run()


def _server(config):
    """uvicorn's server, but a second SIGTERM quits at once too (uvicorn forces only on a
    second Ctrl+C, and would wait out a slow upload)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit and not self.force_exit:
                os.write(2, b"carmask: a second signal: quitting now, requests in flight are dropped\n")
                self.force_exit = True
            super().handle_exit(sig, frame)

    return Server(config)
