"""POST /v1.0/removebg: remove.bg's endpoint. Its body (a form or JSON) is read into a
`RemoveBgRequest`, the photo cut out by `Service.cut`, the answer shaped and rendered
by `removebg` (its fields, options, geometry and formats as values)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import APIRouter, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile as FormFile

from carmask.serve import removebg
from carmask.serve.errors import RemoveBgError
from carmask.serve.service import Service, service
from carmask.serve.uploads import Budget, Upload, media_type

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

router = APIRouter()


@dataclass(frozen=True)
class RemoveBgRequest:
    """A remove.bg request as its body gave it, checked: the options, the text fields
    (the photo's base64 among them), the file parts, and whether the answer is JSON."""

    options: removebg.Options
    fields: Mapping[str, str]
    files: Mapping[str, UploadFile]
    as_json: bool

    @classmethod
    def of(cls, fields: Mapping[str, str], files: Mapping[str, UploadFile], as_json: bool) -> RemoveBgRequest:
        return cls(removebg.parse(fields, set(files)), fields, files, as_json)


# -- the schema of the endpoint ---------------------------------------------------------------------


def openapi() -> dict:
    """/v1.0/removebg's request and answers for /openapi.json: the form, the JSON body, 400 {"errors": [...]}."""

    def prop(name: str, field: removebg.Field, files: bool) -> dict:
        schema = (
            {"type": "string", "format": "binary"}
            if field.kind == "file" and files
            else {"type": "boolean"}
            if field.kind == "flag"
            else {"type": "string"}
        )
        if field.choices:
            schema["enum"] = list(field.choices)
        if field.default is not None:
            schema["default"] = removebg.FLAGS[field.default] if field.kind == "flag" else field.default
        return {**schema, "description": field.carmask}

    form = {"type": "object", "properties": {n: prop(n, f, True) for n, f in removebg.FIELDS.items()}}
    body = {
        "type": "object",
        "properties": {n: prop(n, f, False) for n, f in removebg.FIELDS.items() if f.kind != "file"},
    }
    errors = {
        "type": "object",
        "required": ["errors"],
        "properties": {
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["title", "code"],
                    "properties": {"title": {"type": "string"}, "code": {"type": "string"}},
                },
            }
        },
    }
    error = lambda text: {"description": text, "content": {"application/json": {"schema": errors}}}  # noqa: E731
    header = lambda text: {"description": text, "schema": {"type": "string"}}  # noqa: E731
    box = {f"foreground_{k}": {"type": "integer"} for k in ("top", "left", "width", "height")}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/x-www-form-urlencoded": {"schema": body},
                "application/json": {"schema": body},
            },
        },
        "responses": {
            "200": {
                "description": "The result: an image or a zip; with `Accept: application/json`, "
                '`{"data": {"result_b64", "foreground_top", ...}}`.',
                "headers": {
                    "X-Width": header("The result's width."),
                    "X-Height": header("The result's height."),
                    "X-Type": header("car (absent with type_level=none)."),
                    "X-Credits-Charged": header("Always 0."),
                    **{
                        f"X-Foreground-{k}": header(f"The car's box in the result: {k.lower()}.")
                        for k in ("Top", "Left", "Width", "Height")
                    },
                },
                "content": {
                    "image/png": {},
                    "image/jpeg": {},
                    "image/webp": {},
                    "application/zip": {},
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "data": {"type": "object", "properties": {"result_b64": {"type": "string"}, **box}}
                            },
                        }
                    },
                },
            },
            "400": error("A bad field, named in the title (conflicting fields, a URL, an unreadable photo...)."),
            "403": error("A wrong or missing X-Api-Key (code auth_failed), another host or another origin."),
            "413": error("Over the upload limit or the pixel limit."),
            "500": error("A bug: the server's log has the details."),
        },
    }


@router.post(
    "/v1.0/removebg",
    tags=["remove.bg"],
    summary="remove.bg-compatible cut-out",
    description="remove.bg's API: its fields as a form or a JSON body, its answers and error "
    "shape. Every field and what carmask does with it is described below; size "
    "defaults to preview (0.25 Mpx), as remove.bg's does: send size=full for the "
    "photo's own resolution.",
    response_class=Response,
    openapi_extra=openapi(),
)
async def removebg_cutout(request: Request) -> Response:
    """The fields are read here (form or JSON), the work done in a thread: one path for both."""
    state, kind = service(request), media_type(request.headers.get("content-type"))
    as_json = _wants_json(request)
    if kind == "application/json":
        fields = _json_fields(await request.body())
        return await run_in_threadpool(answer, state, RemoveBgRequest.of(fields, {}, as_json))
    if kind and kind not in FORM_TYPES:
        raise RemoveBgError(
            f"a body of type {kind[:60]!r}: send the fields as multipart/form-data, "
            "application/x-www-form-urlencoded or application/json"
        )
    async with request.form(max_files=8, max_fields=64, max_part_size=state.max_removebg_body) as form:
        fields, files = _form_fields(form)
        return await run_in_threadpool(answer, state, RemoveBgRequest.of(fields, files, as_json))


def answer(state: Service, request: RemoveBgRequest) -> Response:
    """The cut-out, shaped and rendered as remove.bg would answer `request`."""
    options = request.options
    with state.admission.job():  # a few requests at once from here: their uploads in memory
        budget = state.budget()
        photo = _photo(request, budget)
        back = _file("bg_image_file", request, budget) if options.bg_image else None
        with state.admission.pixels(budget.pixels):
            [result] = state.cut([(photo.label, photo.image)], "transparent")
            if result.error:
                raise result.error  # 400: unknown_foreground if the model needs more views, else invalid_image
            rgba = removebg.shape(result.image, options)
            body, media = removebg.render(rgba, back.decoded() if back else None, options)
    height, width = rgba.shape[:2]
    box = removebg.foreground_box(rgba[..., 3])
    headers = {
        "X-Width": str(width),
        "X-Height": str(height),
        "X-Credits-Charged": "0",
        **({"X-Type": "car"} if options.x_type else {}),
        **{f"X-Foreground-{k.title()}": str(v) for k, v in box.items()},
    }
    if request.as_json:  # remove.bg's JSON answer: the image as base64 beside the car's box
        return JSONResponse(
            {
                "data": {
                    "result_b64": base64.b64encode(body).decode("ascii"),
                    **{f"foreground_{k}": v for k, v in box.items()},
                }
            },
            headers=headers,
        )
    return Response(body, media_type=media, headers=headers)


def _photo(request: RemoveBgRequest, budget: Budget) -> Upload:
    """The photo, as a file or as base64."""
    if request.options.source == "image_file":
        return _file("image_file", request, budget)
    try:  # line breaks are common in base64 text
        data = base64.b64decode("".join(request.fields["image_file_b64"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise RemoveBgError("image_file_b64 is not valid base64") from None
    budget.check_bytes(len(data), "image_file_b64 (decoded)")
    return Upload("image_file_b64", budget.open(data, "image_file_b64"))


def _file(name: str, request: RemoveBgRequest, budget: Budget) -> Upload:
    """A remove.bg file field (of any content type, as its clients send them), named by the field."""
    return Upload(name, budget.open(budget.read(request.files[name]), name))


def _wants_json(request: Request) -> bool:
    """remove.bg answers JSON to `Accept: application/json` (its SDKs ask so), else the image."""
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "image/" not in accept


def _form_fields(form) -> tuple[dict[str, str], dict[str, UploadFile]]:
    """remove.bg's fields of a form: text and files apart, each given once (others are ignored)."""
    fields, files, seen = {}, {}, set()
    for name, value in form.multi_items():
        if name not in removebg.FIELDS:
            continue
        if name in seen:
            raise RemoveBgError(f"{name} was sent {len(form.getlist(name))} times: send it once")
        seen.add(name)
        is_file = removebg.FIELDS[name].kind == "file"
        if is_file != isinstance(value, FormFile):
            raise RemoveBgError(f"{name} must be {'a file upload' if is_file else 'a text field'}")
        (files if is_file else fields)[name] = value
    return fields, files


def _json_fields(body: bytes) -> dict[str, str]:
    """remove.bg's fields from a JSON body, as the text a form would carry (true, 12, ...)."""
    try:
        data = json.loads(body or b"{}", object_pairs_hook=_unique_names)
    except (ValueError, UnicodeDecodeError):
        raise RemoveBgError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RemoveBgError("the JSON body must be an object of remove.bg's fields")
    return {
        name: _as_text(name, value) for name, value in data.items() if name in removebg.FIELDS and value is not None
    }


def _unique_names(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose names are each given once (json keeps the last silently)."""
    names = [name for name, _ in pairs]
    for name in names:
        if names.count(name) > 1:
            raise RemoveBgError(f"{name} was sent {names.count(name)} times: send it once")
    return dict(pairs)


def _as_text(name: str, value) -> str:
    if removebg.FIELDS[name].kind == "file":
        raise RemoveBgError(
            f"{name} cannot be sent in a JSON body" + (": send image_file_b64" if name == "image_file" else "")
        )
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise RemoveBgError(f"{name} must be a string")
    return value
