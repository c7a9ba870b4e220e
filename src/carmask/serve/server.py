"""The service under uvicorn: `run` (the `carmask serve` verb) and what it adds to uvicorn.

uvicorn has no public setting for either addition, so each subclasses one of its
classes; `tests/test_serve_frameworks.py` pins what they rely on, and fails when uvicorn
changes under them:

    timed_protocol   H11Protocol closing connections whose request headers are late
    Server           a second SIGTERM quits at once, as a second Ctrl+C does
"""

from __future__ import annotations

import os

from carmask import __version__
from carmask.serve.app import create_app
from carmask.serve.guard import local_hosts, served
from carmask.serve.limits import server_malloc
from carmask.serve.service import DEFAULT_MAX_UPLOAD_BYTES

HEADER_TIMEOUT = 10.0  # seconds for a client to send a request's headers
DRAIN_SECONDS = 30  # on SIGTERM or Ctrl+C, requests in flight get this long to finish


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    model=None,
    device: str = "auto",
    refiner="auto",
    api_key: str | None = None,
    allow_origins=(),
    allow_hosts=(),
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_concurrency: int | None = None,
    drain_seconds: float = DRAIN_SECONDS,
) -> None:
    """Serve the API and the page with uvicorn (the `carmask serve` verb)."""
    import uvicorn

    server_malloc()
    hosts = local_hosts(host, allow_hosts)
    app = create_app(
        model=model,
        device=device,
        refiner=refiner,
        api_key=api_key,
        hosts=hosts,
        allow_origins=allow_origins,
        max_upload_bytes=max_upload_bytes,
        max_concurrency=max_concurrency,
    )
    print("\n".join(startup_lines(host, port, hosts, drain_seconds)), flush=True)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        http=timed_protocol(),
        timeout_keep_alive=5,
        limit_concurrency=512,
        timeout_graceful_shutdown=drain_seconds,
    )
    server_class()(config).run()


def page_url(host: str, port: int) -> str:
    """Where to open the page of a server bound to `host` (an IPv6 address in brackets)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def startup_lines(host: str, port: int, hosts: set[str], drain_seconds: float) -> list[str]:
    """What `carmask serve` says before it serves: where, which host names, how it stops."""
    names = sorted(name for name in hosts if not served(name, set()))  # IP addresses go without saying
    return [
        f"carmask {__version__}: open {page_url(host, port)}",
        f"Answers requests addressed to {', '.join(names)} or to an IP address; other host names "
        "are refused (against DNS rebinding): add each name that clients use with --allow-host NAME "
        "(repeatable).",
        f"Ctrl+C or SIGTERM: requests in flight get up to {drain_seconds:g} s to finish; "
        "a second signal quits at once.",
    ]


def server_class():
    """uvicorn's Server, but a second SIGTERM quits at once too (uvicorn forces only on a
    second Ctrl+C, and would wait out a slow upload)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit and not self.force_exit:
                os.write(2, b"carmask: a second signal: quitting now, requests in flight are dropped\n")
                self.force_exit = True
            super().handle_exit(sig, frame)

    return Server


def timed_protocol(header_timeout: float = HEADER_TIMEOUT):
    """uvicorn's h11 protocol, closing connections whose request headers take
    longer than `header_timeout` seconds (slow clients cannot hold them open).
    It relies on `connection_made`, `on_response_complete`, `loop`, `cycle` and
    `transport`: uvicorn's own, not a public API."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm_header_timer()

        def _arm_header_timer(self):
            cycle = self.cycle  # the request under way when armed; a new one means the headers came
            self.loop.call_later(header_timeout, self._headers_late, cycle)

        def _headers_late(self, cycle):
            if self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol
