"""Errors as the service answers them. The HTTP status and remove.bg's error code
come from the error's type, never from its text.

    Refusal and its kinds   BadRequest 400 (RemoveBgError: with remove.bg's code), Forbidden 403
                            (WrongKey: auth_failed), NotFound 404, Timeout 408, TooLarge 413,
                            WrongType 415, Unprocessable 422
    error_response          the endpoint's shape: remove.bg's {"errors": [{"title", "code"}]}
                            under /v1.0/, else {"detail"}
    install(app)            the handlers: refusals and the framework's own errors, unreadable
                            photos (`ImageError`: status and code by its kind, `IMAGE_ANSWERS`),
                            validation, bugs
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from carmask.outcomes import ImageError, Problem

# remove.bg's codes by status, for HTTP errors that carry no code of their own (the framework's)
CODES = {403: "forbidden", 408: "timeout", 413: "file_too_large", 415: "invalid_file_type"}


# A photo that cannot be used, by its kind: (status, remove.bg's status and code); IMAGE_ANSWER otherwise.
IMAGE_ANSWER = (422, 400, "invalid_image")
IMAGE_ANSWERS = {Problem.TOO_FEW_VIEWS: (422, 400, "unknown_foreground")}  # the model needs more views of the car


class Refusal(HTTPException):
    """A request the service refuses: the class says the status and remove.bg's
    code, the text why. An HTTPException, so that FastAPI lets one raised while
    it reads a body through (the guard's 408 and 413)."""

    status = 400
    code = "invalid_parameters"

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(self.status, detail, headers)


class BadRequest(Refusal):
    status = 400


class RemoveBgError(BadRequest):
    """A remove.bg request refused, with remove.bg's code for it."""

    def __init__(self, title: str, code: str = "invalid_parameters"):
        super().__init__(title)
        self.code = code


class Forbidden(Refusal):
    status, code = 403, "forbidden"


class WrongKey(Forbidden):
    code = "auth_failed"


class NotFound(Refusal):
    status = 404


class Timeout(Refusal):
    status, code = 408, "timeout"


class TooLarge(Refusal):
    status, code = 413, "file_too_large"


class WrongType(Refusal):
    status, code = 415, "invalid_file_type"


class Unprocessable(Refusal):
    status = 422


def removebg_path(path: str) -> bool:
    return path.startswith("/v1.0/")


def error_response(path: str, status: int, message: str, code: str | None = None, headers=None) -> JSONResponse:
    """An error as the endpoint's API shapes them: remove.bg's {"errors": [{"title", "code"}]}, else {"detail"}."""
    if removebg_path(path):
        code = code or CODES.get(status, "invalid_parameters")
        return JSONResponse({"errors": [{"title": message, "code": code}]}, status_code=status, headers=headers)
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(Exception, _internal_error)


def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Every HTTP error (refusals, and the framework's 404, 405 and form-parsing 400s) in the endpoint's shape."""
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return error_response(
        request.url.path, exc.status_code, detail, getattr(exc, "code", None), headers=getattr(exc, "headers", None)
    )


def _image_error(request: Request, exc: ImageError) -> JSONResponse:
    """A photo that cannot be read or cut out, named: 422; for remove.bg's clients 400,
    `unknown_foreground` when the model needs more views of the car, else `invalid_image`
    (by the error's kind: `IMAGE_ANSWERS`)."""
    path = request.url.path
    status, removebg_status, code = IMAGE_ANSWERS.get(exc.kind, IMAGE_ANSWER)
    if not removebg_path(path):
        return error_response(path, status, str(exc))
    return error_response(path, removebg_status, str(exc), code)


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: a 500 in the endpoint's shape, no internals (the traceback goes to the server's log)."""
    return error_response(
        request.url.path,
        500,
        "internal error: the server could not answer this request (its log has the details)",
        "internal_error",
    )


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field and what was wrong, never the value's repr."""
    route = request.scope.get("route")
    files = {
        field.name
        for field in getattr(getattr(route, "dependant", None), "body_params", ())
        if isinstance(field.field_info, params.File)
    }  # the route's file fields
    problems = [_problem(error, files) for error in exc.errors()]
    return error_response(request.url.path, 422, "; ".join(problems) or "the request is not valid")


def _problem(error: dict, files: set[str]) -> str:
    """The field and what is wrong with it, by the error's type (for other types the
    framework's own words, with reprs and addresses taken out)."""
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "header")]
    if error.get("type") == "missing":
        what = "is required"
    elif loc and loc[0] in files and isinstance(error.get("input"), str):
        what = "must be a file upload"
    else:
        what = re.sub(r"<[^>]*>|0x[0-9a-f]+", "", str(error.get("msg", "is not valid"))).strip()
    return f"field {'.'.join(loc) or 'request'!r} {what}"
