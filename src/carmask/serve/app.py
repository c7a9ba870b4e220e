"""The app factory: the service's state, its routes and pages, error handlers and the guard."""

from __future__ import annotations

import os

from fastapi import FastAPI

from carmask import __version__
from carmask.inputs.spec import MIN_VIEWS, NotEnoughViews
from carmask.predict import Predictor
from carmask.serve import errors, pages, removebg_endpoint, routes
from carmask.serve.guard import BODY_TIMEOUT, Guard, origin
from carmask.serve.limits import Admission
from carmask.serve.service import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_PIXELS_AT_ONCE, DEFAULT_REQUEST_PIXELS, Service

EXPOSED_HEADERS = [
    "Content-Disposition",
    "X-Carmask-Warning",
    "X-Carmask-Cutouts",
    "X-Carmask-Skipped",
    "X-Width",
    "X-Height",
    "X-Type",
    "X-Credits-Charged",
    "X-Foreground-Top",
    "X-Foreground-Left",
    "X-Foreground-Width",
    "X-Foreground-Height",
]  # readable by --allow-origin pages
DESCRIPTION = (
    "Remove the studio background from car photos. Upload one photo to `/api/cutout`, or the "
    f"views of a car (`<car>_<NN>.jpg`, at least {MIN_VIEWS}) to `/api/cutout-set` for the "
    "multi-view model; `/v1.0/removebg` speaks remove.bg's API (its `size` defaults to preview, "
    "0.25 Mpx, as remove.bg's does). Photos: JPEG, PNG, WebP, TIFF or BMP."
)


def create_app(
    predictor: Predictor | None = None,
    model=None,
    device: str = "auto",
    refiner="auto",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_REQUEST_PIXELS,
    max_concurrency: int | None = None,
    pixels_at_once: int = DEFAULT_PIXELS_AT_ONCE,
    api_key: str | None = None,
    hosts: set[str] | None = None,
    allow_origins=(),
    refine: bool = True,
    body_timeout: float = BODY_TIMEOUT,
) -> FastAPI:
    """The FastAPI app. `predictor`: use this one; else one is made from `model`
    (a shipped name, a checkpoint path, or None for the shipped defaults),
    `device` and `refiner` (a learned edge refiner; "auto", as `Predictor`, or None). `max_pixels`:
    every image of one request together. `hosts`: the Host names served
    besides IP addresses (`guard.local_hosts`; None: any, for tests and
    proxies that check). `allow_origins`: other origins whose pages
    may POST (ValueError for what is no origin). `api_key`: required as
    X-Api-Key on every POST (the page asks for it)."""
    allow_origins = [origin(o) for o in allow_origins]
    predictor = predictor or Predictor(model, device=device, refiner=refiner)
    jobs = max_concurrency or max(2, min(4, os.cpu_count() or 1))
    state = Service(
        predictor,
        Admission(jobs, max(int(pixels_at_once), int(max_pixels))),
        int(max_upload_bytes),
        int(max_pixels),
        api_key,
        refine,
    )
    _preload(predictor)
    app = FastAPI(title="carmask", version=__version__, docs_url=None, redoc_url=None, description=DESCRIPTION)
    app.state.service = state
    app.include_router(routes.router)
    app.include_router(removebg_endpoint.router)
    pages.mount(app)
    errors.install(app)
    app.add_middleware(
        Guard,
        max_body=state.max_body,
        hosts=hosts,
        origins=set(allow_origins),
        body_timeout=body_timeout,
        api_key=api_key,
        max_removebg_body=state.max_removebg_body,
    )
    if allow_origins:  # outermost: their pages may read every answer, the guard's refusals too
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allow_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["X-Api-Key", "Accept"],
            expose_headers=EXPOSED_HEADERS,
        )
    return app


def _preload(predictor: Predictor) -> None:
    """Load the models now (once), not in the first requests. A missing shipped
    single-photo model is not an error here: such requests get a 422 later."""
    for views in (1, MIN_VIEWS):
        try:
            predictor.model_for(views)
        except NotEnoughViews:
            pass
