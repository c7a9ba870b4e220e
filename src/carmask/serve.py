"""The HTTP service: a JSON/PNG API and a small web page over one `Predictor`.

    carmask serve --port 8000            # then open http://127.0.0.1:8000/

Endpoints (OpenAPI at /docs and /openapi.json):

* ``GET /health``, ``GET /version``
* ``POST /api/cutout``: one photo (multipart field ``file``) -> PNG cut-out
* ``POST /api/cutout-set``: views of one or more cars (``files``, or a zip) -> zip of PNGs
* ``GET /``: the web page (``static/index.html``)

The model is loaded once per app. Requests run concurrently in the server's
thread pool; at most `max_concurrency` photos are decoded, predicted and
encoded at the same time, so memory stays bounded however many clients queue.
Nothing a client sends is ever used as a file-system path: upload and zip
member names are labels only, and ``bg`` is a colour or a keyword.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image, ImageColor

from carmask import __version__
from carmask import io as cio
from carmask.cutout import KINDS, compose
from carmask.io import ImageError, group_by_car, read_photo
from carmask.predict import Predictor
from carmask.views import MIN_VIEWS, NotEnoughViews

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 25 * MiB
MULTIPART_SLACK = 64 * 1024        # room for multipart headers and form fields
MAX_SET_FILES = 500                # photos in one /api/cutout-set request
ZIP_EXPANSION = 4                  # a zip may hold at most this many times max_upload_bytes
STATIC_DIR = Path(__file__).resolve().parent / "static"
PNG_COMPRESS_LEVEL = 1             # fast; the photo's noise dominates the size anyway

IMAGE_TYPES_LOOSE = ("", "application/octet-stream", "binary/octet-stream")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip", "multipart/x-zip")

_COLOUR_NAME = re.compile(r"^[a-z]{3,30}$")
_HEX = re.compile(r"^#(?:[0-9a-f]{3}|[0-9a-f]{6})$")
_TRIPLE = re.compile(r"^\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*$")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9._-]+")

PNG_RESPONSE = {"content": {"image/png": {}}, "description": "The cut-out as a PNG: RGBA (transparent), "
                                                            "L (mask) or RGB (over a colour or image)."}
ERRORS = {
    413: {"description": "Upload over the size limit, or an image over the pixel limit."},
    415: {"description": "The upload is not an image (or, for sets, a zip)."},
    422: {"description": "Unreadable image, bad `bg`, or input the model cannot handle."},
}


# -- small helpers ------------------------------------------------------------------------------

def parse_client_background(text: str | None):
    """A client's `bg`: 'transparent', 'mask', or a colour -> str kind or (r, g, b).

    Unlike `cutout.parse_background` this never looks at the file system: only
    colour names, #hex and 'r,g,b' are accepted.
    """
    text = (text or "transparent").strip().lower()
    if text in KINDS:
        return text
    if _TRIPLE.match(text):
        parts = [int(p) for p in text.split(",")]
        if all(0 <= p <= 255 for p in parts):
            return tuple(parts)
    elif _HEX.match(text) or _COLOUR_NAME.match(text):
        try:
            return tuple(ImageColor.getrgb(text)[:3])
        except ValueError:
            pass
    raise HTTPException(422, f"bg {text[:60]!r} is not transparent, mask or a colour "
                             f"(a name like green, #00b900, or 0,185,0)")


def safe_label(name: str | None, default: str = "upload") -> str:
    """A client-supplied file name reduced to a harmless label (basename, [A-Za-z0-9._-])."""
    base = re.split(r"[\\/]", name or "")[-1]
    label = _LABEL_BAD.sub("_", base).lstrip(".")[:120]
    return label or default


def _stem(label: str) -> str:
    return PurePosixPath(label).stem or label


def _encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with Image.fromarray(array) as image:
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


class _Limits:
    def __init__(self, max_upload_bytes: int, max_pixels: int):
        self.max_upload_bytes = int(max_upload_bytes)
        # io.read_photo refuses more than io.MAX_PIXELS itself; never promise more than that.
        self.max_pixels = int(min(max_pixels, cio.MAX_PIXELS))

    def too_big(self, what: str) -> HTTPException:
        return HTTPException(413, f"{what} is larger than the limit of {self.max_upload_bytes:,} bytes "
                                  f"({self.max_upload_bytes / MiB:.1f} MiB)")

    def check_pixels(self, data: bytes, label: str) -> None:
        """413 when the image header announces more than max_pixels (before decoding).
        Anything unreadable is left for read_photo, which names the file (422)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    width, height = image.size
        except Image.DecompressionBombError:
            raise HTTPException(413, f"{label}: image has too many pixels") from None
        except Exception:  # noqa: BLE001 - not an image: read_photo reports it properly
            return
        if width * height > self.max_pixels:
            raise HTTPException(413, f"{label}: image is {width}x{height} = {width * height:,} pixels, "
                                     f"over the limit of {self.max_pixels:,}")


def _read_upload(upload: UploadFile, limits: _Limits) -> bytes:
    """The upload's bytes, counted while reading (the body limit is checked earlier too)."""
    chunks, total = [], 0
    upload.file.seek(0)
    while chunk := upload.file.read(MiB):
        total += len(chunk)
        if total > limits.max_upload_bytes:
            raise limits.too_big(f"upload {safe_label(upload.filename)!r}")
        chunks.append(chunk)
    return b"".join(chunks)


def _content_type(upload: UploadFile) -> str:
    return (upload.content_type or "").split(";")[0].strip().lower()


def _is_zip(upload: UploadFile, data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04" or _content_type(upload) in ZIP_TYPES or \
        (upload.filename or "").lower().endswith(".zip")


def _check_image_type(upload: UploadFile, allow_zip: bool = False) -> None:
    kind = _content_type(upload)
    if kind.startswith("image/") or kind in IMAGE_TYPES_LOOSE or (allow_zip and kind in ZIP_TYPES):
        return
    wanted = "an image or a zip" if allow_zip else "an image"
    raise HTTPException(415, f"{safe_label(upload.filename)}: content type {kind!r} is not {wanted}")


# -- the upload-size guard ----------------------------------------------------------------------

class UploadLimit:
    """ASGI middleware: refuse request bodies over `max_body` bytes with 413.

    Checks Content-Length before reading anything, and counts the bytes while
    they are read (chunked uploads, lying headers)."""

    def __init__(self, app, max_body: int, message: str):
        self.app, self.max_body, self.message = app, max_body, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_long = int(length) > self.max_body
            except ValueError:
                too_long = False
            if too_long:
                response = JSONResponse({"detail": self.message}, status_code=413,
                                        headers={"Connection": "close"})
                return await response(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    # Raised inside the route's body parsing: FastAPI re-raises
                    # HTTPExceptions, and its exception handler answers 413.
                    raise HTTPException(413, self.message)
            return message

        return await self.app(scope, counting_receive, send)


# -- the app ------------------------------------------------------------------------------------

def create_app(predictor: Predictor | None = None, model=None, device: str = "auto",
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = cio.MAX_PIXELS,
               max_concurrency: int | None = None) -> FastAPI:
    """The FastAPI app. `predictor`: use this one; else one is made from `model`
    (a shipped name, a checkpoint path, or None for the shipped defaults) and `device`."""
    predictor = predictor or Predictor(model, device=device)
    limits = _Limits(max_upload_bytes, max_pixels)
    slots = threading.BoundedSemaphore(max_concurrency or max(2, min(4, os.cpu_count() or 1)))
    load_lock = threading.Lock()
    _preload(predictor)

    app = FastAPI(
        title="carmask",
        version=__version__,
        description="Remove the studio background from car photos. Upload one photo to "
                    "`/api/cutout`, or the views of a car (`<car>_<NN>.jpg`, at least "
                    f"{MIN_VIEWS}) to `/api/cutout-set` for the multi-view model.",
    )
    app.state.predictor, app.state.limits = predictor, limits

    def model_for(views: int):
        with load_lock:  # the first request may load a model: load it once
            return predictor.model_for(views)

    def model_names() -> list[str]:
        from carmask import models
        if predictor.model_name is not None:
            name = str(predictor.model_name)
            return [Path(name).stem if Path(name).suffix else name]
        return models.shipped()

    # -- meta -----------------------------------------------------------------------------------
    @app.get("/health", tags=["meta"], summary="Liveness check")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/version", tags=["meta"], summary="Version, models and limits")
    def version() -> dict:
        return {"version": __version__, "models": model_names(), "device": str(predictor.device),
                "max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                "min_views": MIN_VIEWS}

    # -- one photo ------------------------------------------------------------------------------
    def _background(bg: str | None, background: UploadFile | None):
        """The composition target: a kind, a colour, or an uploaded image (which wins)."""
        if background is not None and background.filename:
            _check_image_type(background)
            data = _read_upload(background, limits)
            label = safe_label(background.filename, "background")
            limits.check_pixels(data, label)
            return read_photo(data, name=label)
        return parse_client_background(bg)

    @app.post("/api/cutout", tags=["cutout"], summary="Cut the car out of one photo",
              response_class=Response, responses={200: PNG_RESPONSE, **ERRORS})
    def cutout(file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, ...)."),
               bg: str = Form("transparent", description="transparent (RGBA PNG), mask (L PNG), or a "
                                                         "colour: green, #00b900, 0,185,0 (RGB PNG)."),
               background: UploadFile | None = File(None, description="Optional background image "
                                                                        "(scaled to cover); wins over bg.")):
        _check_image_type(file)
        label = safe_label(file.filename, "photo")
        data = _read_upload(file, limits)
        try:
            back = _background(bg, background)
            limits.check_pixels(data, label)
            with slots:
                photo = read_photo(data, name=label)
                del data
                model_for(1)
                probs = predictor.predict_photo(photo)
                png = _encode_png(compose(photo, probs, back))
                del photo, probs
        except ImageError as exc:
            raise HTTPException(422, str(exc)) from None
        except (NotEnoughViews, ValueError) as exc:
            raise HTTPException(422, f"{label}: {exc}") from None
        return Response(png, media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{_stem(label)}.png"'})

    # -- sets of views --------------------------------------------------------------------------
    @app.post("/api/cutout-set", tags=["cutout"], summary="Cut out sets of views of cars (zip of PNGs)",
              response_class=Response,
              responses={200: {"content": {"application/zip": {}},
                               "description": "A zip of `<stem>.png`, plus `errors.txt` naming "
                                              "every skipped file and why."}, **ERRORS})
    def cutout_set(files: list[UploadFile] = File(..., description="Photos named <car>_<NN>.jpg "
                                                                   "(or one zip of them)."),
                   bg: str = Form("transparent", description="As for /api/cutout."),
                   background: UploadFile | None = File(None, description="Optional background image.")):
        for upload in files:
            _check_image_type(upload, allow_zip=True)
        back = _background(bg, background)
        errors: list[str] = []
        items = _collect(files, limits, errors)
        if not items:
            raise HTTPException(422, "no photos to cut out" + (": " + "; ".join(errors[:10]) if errors else ""))
        by_label = dict(items)
        sets = group_by_car([Path(label) for label, _ in items])  # labels only: no file access
        out = tempfile.SpooledTemporaryFile(max_size=32 * MiB)
        written = 0
        try:
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
                for photo_set in sets:
                    labels = [p.name for p in photo_set.paths]
                    for label, png in _cut_set(labels, by_label, back, errors):
                        archive.writestr(f"{_stem(label)}.png", png)
                        written += 1
                    for label in labels:
                        by_label.pop(label, None)  # free uploads as soon as their set is done
                if errors:
                    archive.writestr("errors.txt", "\n".join(errors) + "\n")
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

    def _cut_set(labels: list[str], data: dict[str, bytes], back, errors: list[str]
                 ) -> Iterator[tuple[str, bytes]]:
        """PNGs for one car's views (multi-view when >= MIN_VIEWS readable) or a lone photo."""
        readable = []
        for label in labels:
            try:
                limits.check_pixels(data[label], label)
                readable.append(label)
            except HTTPException as exc:
                errors.append(str(exc.detail))
        if len(readable) >= MIN_VIEWS:
            results, readable = _predict_set(readable, data, errors)
            for label, probs in results:
                try:
                    with slots:
                        png = _encode_png(compose(read_photo(data[label], name=label), probs, back))
                except ImageError as exc:
                    errors.append(str(exc))
                    continue
                except ValueError as exc:
                    errors.append(f"{label}: {exc}")
                    continue
                yield label, png
        for label in readable:  # lone photos, and sets too small for the multi-view model
            try:
                with slots:
                    photo = read_photo(data[label], name=label)
                    model_for(1)
                    png = _encode_png(compose(photo, predictor.predict_photo(photo), back))
                    del photo
            except ImageError as exc:
                errors.append(str(exc))
                continue
            except (NotEnoughViews, ValueError) as exc:
                errors.append(f"{label}: {exc}")
                continue
            yield label, png

    def _predict_set(labels: list[str], data: dict[str, bytes], errors: list[str]):
        """The multi-view path: the predictor decodes and predicts the views together.
        Returns ([(label, probs)], []) — the second list is for photos left to the
        single-photo path, which the predictor's own model choice makes empty."""
        with slots:
            try:
                predictions = predictor.predict_views([(label, data[label]) for label in labels])
            except (NotEnoughViews, ValueError) as exc:
                errors.extend(f"{label}: {exc}" for label in labels)
                return [], []
        errors.extend(p.error for p in predictions if p.error)
        return [(p.path.name, p.probs) for p in predictions if not p.error], []

    # -- the page -------------------------------------------------------------------------------
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8") if (STATIC_DIR / "index.html").is_file() \
        else "<!doctype html><title>carmask</title><p>The web page is not installed; see /docs.</p>"

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    if STATIC_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Outermost: refuse oversized bodies before anything reads them.
    app.add_middleware(UploadLimit, max_body=limits.max_upload_bytes + MULTIPART_SLACK,
                       message=f"upload is larger than the limit of {limits.max_upload_bytes:,} bytes "
                               f"({limits.max_upload_bytes / MiB:.1f} MiB)")
    return app


def _preload(predictor: Predictor) -> None:
    """Load the models now (once), not in the first requests. A missing shipped
    single-photo model is not an error here: such requests get a 422 later."""
    for views in (1, MIN_VIEWS):
        try:
            predictor.model_for(views)
        except NotEnoughViews:
            pass


def _collect(files: list[UploadFile], limits: _Limits, errors: list[str]) -> list[tuple[str, bytes]]:
    """(unique label, bytes) for every photo uploaded directly or inside a zip."""
    items: list[tuple[str, bytes]] = []
    taken: set[str] = set()

    def add(name: str | None, data: bytes) -> None:
        label = safe_label(name, "photo")
        if label in taken:
            stem, suffix = _stem(label), PurePosixPath(label).suffix
            n = 2
            while f"{stem}-{n}{suffix}" in taken:
                n += 1
            label = f"{stem}-{n}{suffix}"
        taken.add(label)
        items.append((label, data))
        if len(items) > MAX_SET_FILES:
            raise HTTPException(413, f"more than {MAX_SET_FILES} photos in one request")

    budget = [ZIP_EXPANSION * limits.max_upload_bytes]  # total bytes unpacked from zips
    for upload in files:
        data = _read_upload(upload, limits)
        if _is_zip(upload, data):
            _unzip(data, safe_label(upload.filename, "upload.zip"), add, budget, errors)
        else:
            add(upload.filename, data)
    return items


def _unzip(data: bytes, zip_label: str, add, budget: list[int], errors: list[str]) -> None:
    """Photos inside a zip; member names are labels only, never paths."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise HTTPException(422, f"{zip_label}: not a readable zip ({exc})") from None
    with archive:
        for member in archive.infolist():
            name = member.filename
            base = re.split(r"[\\/]", name)[-1]
            if member.is_dir() or not base or base.startswith(".") or "__MACOSX" in name:
                continue
            label = safe_label(base)
            if PurePosixPath(base).suffix.lower() not in cio.PHOTO_SUFFIXES:
                errors.append(f"{label}: not a photo (skipped)")
                continue
            if member.file_size > budget[0]:
                raise HTTPException(413, f"{zip_label}: unpacks to more than "
                                         f"{ZIP_EXPANSION}x the upload limit")
            try:
                with archive.open(member) as stream:
                    content = stream.read(budget[0] + 1)  # never trust the header's size
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                errors.append(f"{label}: cannot be unpacked ({exc})")
                continue
            budget[0] -= len(content)
            if budget[0] < 0:
                raise HTTPException(413, f"{zip_label}: unpacks to more than "
                                         f"{ZIP_EXPANSION}x the upload limit")
            add(base, content)


def _chunks(spool, size: int = 256 * 1024) -> Iterator[bytes]:
    try:
        while chunk := spool.read(size):
            yield chunk
    finally:
        spool.close()


def run(host: str = "127.0.0.1", port: int = 8000, model=None, device: str = "auto") -> None:
    """Serve the API and the page with uvicorn (the `carmask serve` verb)."""
    import uvicorn
    app = create_app(model=model, device=device)
    print(f"carmask {__version__}: open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="info")
