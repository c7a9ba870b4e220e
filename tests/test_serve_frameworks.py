"""What the service takes from its frameworks, pinned: the two uvicorn classes it
subclasses (no public setting does their job), and why the Host check is its own
rather than Starlette's TrustedHostMiddleware. Each test fails when the framework
changes under it: then look again."""

import asyncio
import inspect
import signal

import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.middleware.trustedhost import TrustedHostMiddleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from carmask.serve.guard import Guard, local_hosts  # noqa: E402
from carmask.serve.server import server_class, timed_protocol  # noqa: E402

IP_ADDRESSES = ("192.168.1.20:8000", "[fe80::1]:8000", "10.0.0.7")


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _client(middleware, **options) -> TestClient:
    app = Starlette(
        routes=[
            Route("/v1.0/removebg", lambda request: PlainTextResponse("ok")),
            Route("/health", lambda request: PlainTextResponse("ok")),
        ]
    )
    app.add_middleware(middleware, **options)
    return TestClient(app)


def test_trusted_host_middleware_cannot_serve_every_ip_address_and_no_other_name():
    """Starlette's TrustedHostMiddleware takes names and `*.domain` patterns: listing
    the served names refuses the IP addresses a server must answer on any interface;
    "*" serves every name, a rebound attacker.example too. And it refuses in plain
    text, not in the endpoint's error shape. The guard does both."""
    names = _client(TrustedHostMiddleware, allowed_hosts=sorted(local_hosts("0.0.0.0")))
    for host in IP_ADDRESSES:
        refused = names.get("/health", headers={"Host": host})
        assert refused.status_code == 400 and refused.headers["content-type"].startswith("text/plain"), host
        assert refused.text == "Invalid host header"
    with pytest.raises(AssertionError):  # no pattern names addresses
        TrustedHostMiddleware(_ok, allowed_hosts=["*.*.*.*"])
    anything = _client(TrustedHostMiddleware, allowed_hosts=["*"])
    assert anything.get("/health", headers={"Host": "attacker.example"}).status_code == 200

    guard = _client(Guard, max_body=1000, hosts=local_hosts("0.0.0.0"), origins=set())
    for host in (*IP_ADDRESSES, "localhost:8000"):
        assert guard.get("/health", headers={"Host": host}).status_code == 200, host
    rebound = guard.get("/health", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403 and "--allow-host" in rebound.json()["detail"]
    as_removebg = guard.get("/v1.0/removebg", headers={"Host": "attacker.example"})
    assert as_removebg.status_code == 403 and as_removebg.json()["errors"][0]["code"] == "forbidden"


def test_the_h11_protocol_subclass_still_fits_uvicorn():
    """`timed_protocol` subclasses uvicorn's private H11Protocol: it extends
    `connection_made(transport)` and `on_response_complete()` and reads `loop`,
    `cycle` (None until a request's headers arrive, a new one per request) and
    `transport`. Made as uvicorn makes it (the header timeout 0 s: the timer
    fires at the loop's next turn), a connection whose headers never come is
    closed, and one whose headers came is answered."""
    assert list(inspect.signature(H11Protocol.connection_made).parameters) == ["self", "transport"]
    assert list(inspect.signature(H11Protocol.on_response_complete).parameters) == ["self"]
    assert list(inspect.signature(H11Protocol.__init__).parameters)[:4] == [
        "self",
        "config",
        "server_state",
        "app_state",
    ]

    async def connect(request: bytes | None) -> "Transport":
        config = uvicorn.Config(_ok, lifespan="off", log_level="warning")
        protocol = timed_protocol(header_timeout=0)(config=config, server_state=ServerState(), app_state={})
        assert protocol.cycle is None and protocol.loop is asyncio.get_running_loop()
        transport = Transport()
        protocol.connection_made(transport)
        assert protocol.transport is transport
        if request:
            protocol.data_received(request)
            assert protocol.cycle is not None  # the headers came before the timer's turn
        for _ in range(20):  # the timer's turn, and the app's
            await asyncio.sleep(0)
        return transport

    late = asyncio.run(connect(None))
    assert late.closed and late.written == b""
    answered = asyncio.run(connect(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    assert answered.written.startswith(b"HTTP/1.1 200") and answered.written.endswith(b"ok")


def test_the_server_subclass_still_fits_uvicorn(capfd):
    """`server_class` extends uvicorn's `Server.handle_exit(sig, frame)` and reads its
    `should_exit` and `force_exit`: a first SIGTERM asks for a graceful exit, a second forces it."""
    assert list(inspect.signature(uvicorn.Server.handle_exit).parameters) == ["self", "sig", "frame"]
    server = server_class()(uvicorn.Config(_ok, lifespan="off"))
    assert server.should_exit is False and server.force_exit is False
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit is True and server.force_exit is False
    server.handle_exit(signal.SIGTERM, None)
    assert server.force_exit is True
    assert "a second signal: quitting now" in capfd.readouterr().err


class Transport(asyncio.Transport):
    """A connection's transport that keeps what is written and whether it was closed."""

    def __init__(self):
        super().__init__()
        self.written, self.closed = b"", False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
