"""The pages: the web page at / (static/index.html, page.js, page.css) and the API's pages,
/docs (Swagger UI) and /redoc, their files from the fastapi-offline wheel (MIT), never a CDN."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from carmask.serve.errors import NotFound
from carmask.serve.guard import policy

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_URL = "/docs-assets"  # Swagger UI's and ReDoc's files
NO_DOCS = (
    "the API pages need the fastapi-offline package (pip install 'carmask[serve]'); the schema is at /openapi.json"
)

router = APIRouter(include_in_schema=False)

_PAGE = (
    (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    if (STATIC_DIR / "index.html").is_file()
    else "<!doctype html><title>carmask</title><p>The web page is not installed; see /openapi.json.</p>"
)


def _docs_assets() -> Path | None:
    """Swagger UI's and ReDoc's files as the fastapi-offline wheel ships them, or None."""
    spec = importlib.util.find_spec("fastapi_offline")
    folder = Path(next(iter(spec.submodule_search_locations or ()), "")) / "static" if spec else None
    return folder if folder and (folder / "swagger-ui-bundle.js").is_file() else None


DOCS_ASSETS = _docs_assets()


def mount(app: FastAPI) -> None:
    """The pages' routes and files."""
    app.include_router(router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if DOCS_ASSETS is not None:
        app.mount(DOCS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def index() -> HTMLResponse:
    return HTMLResponse(_PAGE)


@router.get("/docs")
async def docs() -> HTMLResponse:
    if DOCS_ASSETS is None:
        raise NotFound(NO_DOCS)
    return _own_blocks_only(
        get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="carmask API",
            swagger_js_url=f"{DOCS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
    )  # else a badge from swagger.io


@router.get(f"{DOCS_URL}/redoc.standalone.js")  # a route: before the mount of DOCS_URL
async def redoc_script() -> Response:
    if DOCS_ASSETS is None:
        raise NotFound(NO_DOCS)
    return Response(_redoc_script(), media_type="text/javascript")


@functools.cache
def _redoc_script() -> bytes:
    """ReDoc's script, its one outside request (its logo, from a CDN) pointed here instead."""
    script = (DOCS_ASSETS / "redoc.standalone.js").read_bytes()
    return script.replace(b"https://cdn.redoc.ly/redoc/logo-mini.svg", f"{DOCS_URL}/favicon.png".encode())


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    if DOCS_ASSETS is None:
        raise NotFound(NO_DOCS)
    return _own_blocks_only(
        get_redoc_html(
            openapi_url="/openapi.json",
            title="carmask API",
            redoc_js_url=f"{DOCS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_URL}/favicon.png",
            with_google_fonts=False,
        ),
        styles_at_run_time=True,
    )


def _own_blocks_only(page: HTMLResponse, styles_at_run_time: bool = False) -> HTMLResponse:
    """FastAPI's page with a CSP that admits its inline <script> and <style> blocks by
    their hashes (the page is made here, from no client's text), and nothing else inline.
    `styles_at_run_time`: ReDoc (styled-components) writes <style> elements as it
    renders, which no hash can name: inline styles are allowed there, scripts never."""
    html = page.body.decode()
    scripts = tuple(_source(block) for block in re.findall(r"<script>(.*?)</script>", html, re.S))
    styles = (
        ("'unsafe-inline'",)
        if styles_at_run_time
        else tuple(_source(block) for block in re.findall(r"<style>(.*?)</style>", html, re.S))
    )
    page.headers["Content-Security-Policy"] = policy(scripts, styles)
    return page


def _source(block: str) -> str:
    """An inline block as a CSP source: its SHA-256."""
    return f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
