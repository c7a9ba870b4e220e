"""The HTTP service: a PNG/zip API, a remove.bg-compatible endpoint and a web page over one `Predictor`.

    carmask serve --port 8000            # then open http://127.0.0.1:8000/

Endpoints (OpenAPI at /openapi.json):

* ``GET /health`` (answered on the event loop, never queued behind work), ``GET /version``
* ``POST /api/cutout``: one photo (multipart field ``file``) -> PNG cut-out
* ``POST /api/cutout-set``: views of one or more cars (``files``, or a zip) -> zip of PNGs
* ``POST /v1.0/removebg``: remove.bg's API (its fields and their handling: `removebg.FIELDS`), so
  its clients work; with an API key every POST needs ``X-Api-Key``
* ``GET /``: the web page (``static/``: index.html, page.js, page.css); ``GET /docs``, ``/redoc``: the
  API's pages, their scripts served from here (the ``fastapi-offline`` wheel), never from a CDN

Every cut-out goes through `cutout.remove_set` (`Service.cut`). Bounds: a request body over
the upload limit gets 413 (the body read and dropped up to a bound first, so
the client sees the answer); every image's pixels are counted from its header
before anything is decoded, against a per-request `Budget` of bytes and pixels,
and only JPEG, PNG, WebP, TIFF and BMP are ever decoded (`images.open_photo`);
reading uploads into memory, unpacking zips, decoding and all work happen
inside `Admission`, which admits a few requests and a fixed number of pixels at
once; slow clients meet header and body timeouts. Pages of other origins cannot
drive the API (Origin check), nor can other host names (Host check, against DNS
rebinding), nor clients without the API key: `guard`. Nothing a client sends is
used as a path.

The modules, one concern each:

    app                 create_app: the state, routes, pages, error handlers, the guard
    service             Service: the predictor, the limits, the one cut-out path (`cut`)
    routes              /health, /version, /api/cutout, /api/cutout-set
    removebg_endpoint   /v1.0/removebg: the body read into a `RemoveBgRequest`, the answer
    removebg            remove.bg's API as values: fields, options, geometry, formats
    uploads             Budget (bytes and pixels), reading uploads and zips, labels
    images              the only decoders a client's bytes meet, the answers' encoder
    limits              Admission (jobs and pixels at once), memory given back when idle
    errors              typed refusals (status and remove.bg code by type), the handlers
    guard               security headers and CSP, Host/Origin checks, API key, body bounds
    pages               the web page, /docs and /redoc
    server              run (`carmask serve`) under uvicorn
"""

from carmask.serve.app import create_app
from carmask.serve.server import run

__all__ = ["create_app", "run"]
