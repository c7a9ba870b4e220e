"""carmask's own endpoints: /health, /version, /api/cutout (one photo -> PNG) and
/api/cutout-set (views of cars -> zip of PNGs). Each is a thin shell over `Service.cut`."""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from collections.abc import Iterator
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, params
from fastapi.responses import Response, StreamingResponse

from carmask import __version__
from carmask import io as cio
from carmask.cutout import Cutout
from carmask.inputs.spec import MIN_VIEWS
from carmask.io import MiB, image_bytes
from carmask.kaggle import group_by_car
from carmask.outcomes import ImageError, Note
from carmask.serve.errors import BadRequest, Unprocessable
from carmask.serve.service import Service, service
from carmask.serve.uploads import Budget, background_of, check_type, collect, decoded, read_image, stem

PNG_RESPONSE = {
    "content": {"image/png": {}},
    "description": "The cut-out as a PNG: RGBA (transparent), L (mask) or RGB (over a colour or image).",
}
ERRORS = {
    403: {"description": "A page of another origin, or a wrong or missing API key."},
    413: {"description": "Upload over the size limit, or images over the pixel budget."},
    415: {"description": "The upload is not an image (or, for sets, a zip)."},
    422: {"description": "Unreadable image, bad `bg`, or input the model cannot handle."},
}

router = APIRouter()


@router.head("/health", include_in_schema=False)  # one operation in the schema (GET), HEAD answered too
@router.get("/health", tags=["meta"], summary="Liveness check")
async def health() -> dict:
    return {"status": "ok"}  # async: answered on the event loop, never behind queued work


@router.get("/version", tags=["meta"], summary="Version, models and limits")
async def version(request: Request) -> dict:
    state = service(request)
    return {
        "version": __version__,
        "models": state.model_names(),
        "device": str(state.predictor.device),
        "max_upload_bytes": state.max_upload_bytes,
        "max_request_pixels": state.request_pixels,
        "max_pixels": min(state.request_pixels, cio.MAX_PIXELS),
        "min_views": MIN_VIEWS,
        "api_key": state.api_key is not None,
    }


def once(*names: str) -> params.Depends:
    """A dependency refusing a form that repeats any of `names` (FastAPI would use one silently)."""

    async def check(request: Request) -> None:
        form = await request.form()  # the form FastAPI parsed, not parsed again
        for name in names:
            if len(form.getlist(name)) > 1:
                raise BadRequest(
                    f"field {name!r} was sent {len(form.getlist(name))} times: send it once"
                    + (" (several photos go to /api/cutout-set)" if name == "file" else "")
                )

    return Depends(check)


@router.post(
    "/api/cutout",
    tags=["cutout"],
    summary="Cut the car out of one photo",
    response_class=Response,
    responses={200: PNG_RESPONSE, **ERRORS},
    dependencies=[once("file", "bg", "background")],
)
def cutout(
    request: Request,
    file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, TIFF or BMP)."),
    bg: str = Form(
        "transparent",
        description="transparent (RGBA PNG), mask (L PNG), or a colour: green, #00b900, 0,185,0 (RGB PNG).",
    ),
    background: UploadFile | None = File(
        None, description="Optional background image (scaled to cover); wins over bg."
    ),
):
    state = service(request)
    with state.admission.job():  # a few requests at once from here: their uploads in memory
        budget = state.budget()
        photo = read_image(file, budget, "photo")
        back = background_of(bg, background, budget)
        with state.admission.pixels(budget.pixels):  # decoding, the cut-out and its PNG: all inside
            [result] = state.cut([(photo.label, photo.image)], decoded(back))
            if result.error:
                raise result.error
            body = image_bytes(result.image)
    return Response(
        body,
        media_type="image/png",
        headers={"Content-Disposition": disposition("inline", f"{stem(photo.label)}.png"), **warning_header(result)},
    )


@router.post(
    "/api/cutout-set",
    tags=["cutout"],
    summary="Cut out sets of views of cars (zip of PNGs)",
    response_class=Response,
    responses={
        200: {
            "content": {"application/zip": {}},
            "description": "A zip of `<stem>.png` (`<stem>_mask.png` for masks), plus "
            "`errors.txt` naming every skipped file and why, and "
            "`warnings.txt` saying how some were cut out (e.g. taken out "
            "of a set whose views do not share a studio), and "
            "`manifest.json` (with either): the same as values (`skipped`: "
            "photo, kind, reason, text; `notes`: kind, photos, treatment, "
            "text...).",
        },
        **ERRORS,
    },
    dependencies=[once("bg", "background")],
)
def cutout_set(
    request: Request,
    files: list[UploadFile] = File(..., description="Photos named <car>_<NN>.jpg (or one zip of them)."),
    bg: str = Form("transparent", description="As for /api/cutout."),
    background: UploadFile | None = File(None, description="Optional background image."),
):
    state = service(request)
    with state.admission.job():  # a few at once from here: uploads and unpacked zips in memory
        for upload in files:
            check_type(upload, allow_zip=True)
        budget = state.budget()
        back = background_of(bg, background, budget)
        errors: list[ImageError] = []
        items = []
        for label, data, place in collect(files, budget, errors):
            try:
                items.append((place, (label, budget.open(data, label))))
            except ImageError as exc:  # one photo: skipped, named in errors.txt
                errors.append(exc)
        if not items:
            raise Unprocessable("no photos to cut out" + (": " + "; ".join(map(str, errors[:10])) if errors else ""))
        out = tempfile.SpooledTemporaryFile(max_size=32 * MiB)
        try:
            written = _zip_cutouts(out, dict(items), back, state, budget, errors)
        except BaseException:
            out.close()
            raise
    size = out.tell()
    out.seek(0)
    return StreamingResponse(
        _chunks(out),
        media_type="application/zip",
        headers={
            "Content-Disposition": 'attachment; filename="cutouts.zip"',
            "Content-Length": str(size),
            "X-Carmask-Cutouts": str(written),
            "X-Carmask-Skipped": str(len(errors)),
        },
    )


def _zip_cutouts(out, photos: dict, back, state: Service, budget: Budget, errors: list[ImageError]) -> int:
    """The cut-outs of `photos` ({place: (label, image)}), car by car, into a zip written to
    `out`, with errors.txt, warnings.txt and manifest.json; how many were written (none: 422)."""
    suffix = "_mask.png" if back == "mask" else ".png"
    written, notes = 0, []  # notes: each once (the same note is on every photo it concerns)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive, state.admission.pixels(budget.pixels):
        target = decoded(back)
        for photo_set in group_by_car(list(photos)):  # keys only: no file access
            for result in state.cut([photos[place] for place in photo_set.paths], target):
                if result.note and result.note not in notes:
                    notes.append(result.note)
                if result.error:
                    errors.append(result.error)
                    continue
                archive.writestr(f"{stem(result.name)}{suffix}", image_bytes(result.image))
                written += 1
        for name, lines in (("errors.txt", errors), ("warnings.txt", notes)):
            if lines:
                archive.writestr(name, "\n".join(map(str, lines)) + "\n")
        if errors or notes:  # as errors.txt and warnings.txt: a zip of cut-outs alone holds only them
            archive.writestr("manifest.json", json.dumps(manifest(written, errors, notes)))
    if not written:
        raise Unprocessable("no photo could be cut out: " + "; ".join(map(str, errors[:10])))
    return written


def manifest(written: int, errors: list[ImageError], notes: list[Note]) -> dict:
    """What a zip of cut-outs holds, as values: how many were `written`, the
    `skipped` photos and the `notes`, each as its dict with its sentence (`text`)."""
    return {
        "written": written,
        "skipped": [{**error.as_dict(), "text": str(error)} for error in errors],
        "notes": [{**note.as_dict(), "text": str(note)} for note in notes],
    }


def _chunks(spool, size: int = 256 * 1024) -> Iterator[bytes]:
    try:
        while chunk := spool.read(size):
            yield chunk
    finally:
        spool.close()


def disposition(kind: str, filename: str) -> str:
    """A Content-Disposition header for `filename` (a safe label): plain ASCII
    as it is, else an ASCII fallback and the UTF-8 name (RFC 6266)."""
    fallback = filename.encode("ascii", "replace").decode().replace("?", "_")
    if fallback == filename:
        return f'{kind}; filename="{filename}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


def warning_header(result: Cutout) -> dict[str, str]:
    """The cut-out's note (e.g. views that do not share a studio), if any: its sentence
    (made printable ASCII, as a header must be) and its kind."""
    if not result.note:
        return {}
    return {
        "X-Carmask-Warning": re.sub(r"[^\x20-\x7e]", "?", str(result.note))[:1000],
        "X-Carmask-Note": result.note.kind.name,
    }
