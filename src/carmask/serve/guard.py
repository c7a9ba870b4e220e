"""What stands in front of the HTTP service's routes.

`Guard` (ASGI middleware, outermost) adds security headers to every answer
(a strict Content-Security-Policy unless the route sent its own: `policy`),
refuses Host names it does not serve (DNS rebinding; IP addresses are always
served, names only as `local_hosts` lists them), POSTs from pages of other
origins and, when the server has an API key, POSTs without it; answers a body
over the upload limit with a 413 after reading and dropping it (so that the
client sees the answer) and a body that takes too long with a 408.

Why not Starlette's `TrustedHostMiddleware` for the Host check: it cannot
serve every IP address without serving every name ("*"), and it refuses in
plain text, not in the endpoint's error shape (a test pins both).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import time
from urllib.parse import urlsplit

from carmask.io import MiB
from carmask.serve.errors import Forbidden, Refusal, Timeout, TooLarge, WrongKey, error_response, removebg_path
from carmask.serve.limits import MULTIPART_SLACK

DRAIN_BYTES = 256 * MiB  # an oversized body is read and dropped up to this, then answered
BODY_TIMEOUT = 60.0  # seconds for a client to send a request's body
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def policy(scripts: tuple[str, ...] = (), styles: tuple[str, ...] = ()) -> str:
    """The Content-Security-Policy: scripts and styles from this server's files only,
    plus the given sources (the API pages' inline blocks, by hash)."""
    return "; ".join(
        [
            "default-src 'self'",
            "img-src 'self' blob: data:",
            " ".join(["style-src 'self'", *styles]),
            " ".join(["script-src 'self'", *scripts]),
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


CSP = (b"content-security-policy", policy().encode())


def origin(text: str) -> str:
    """An allowed origin as browsers send it in the Origin header (scheme://host,
    with the port unless it is the scheme's default; lower case, no path);
    a ValueError naming the text for anything else, '*' included (any web page
    could then drive the server)."""
    parts = urlsplit(text.strip())
    if (
        text.strip() == "*"
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ValueError(
            f"{text[:80]!r} is not an origin: give scheme://host[:port] of one site, e.g. "
            "https://studio.example (repeat the option for more; '*' is not allowed)"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text[:80]!r}: the port is not a number 0..65535") from None
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


class Guard:
    """ASGI middleware, outermost: security headers on every answer; Host and
    Origin checks; the API key (`api_key`: required as X-Api-Key on every
    POST, the page's included); request bodies over `max_body` answered 413 after reading
    and dropping them (up to DRAIN_BYTES, so that the client sees the answer);
    a body that takes longer than `body_timeout` answered 408."""

    def __init__(
        self,
        app,
        max_body: int,
        hosts: set[str] | None,
        origins: set[str],
        body_timeout: float = BODY_TIMEOUT,
        api_key: str | None = None,
        max_removebg_body: int | None = None,
    ):
        self.app, self.max_body, self.hosts, self.origins = app, max_body, hosts, origins
        self.api_key = api_key
        self.body_timeout = body_timeout
        self.max_removebg_body = max_removebg_body or max_body  # remove.bg's photos may come as base64 text

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secure(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                own_policy = any(name.lower() == CSP[0] for name, _ in headers)
                message = {**message, "headers": headers + SECURITY_HEADERS + ([] if own_policy else [CSP])}
            await send(message)

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await self._refuse(scope, receive, send_secure, refusal)
        limit = self.max_removebg_body if removebg_path(scope["path"]) else self.max_body
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            # Read and dropped first, so the client sees the answer; not a body
            # that would never fit the bound (the answer would wait for the timeout).
            return await self._refuse(
                scope, receive, send_secure, TooLarge(self._too_large(limit)), drain=int(length) <= DRAIN_BYTES
            )
        return await self.app(scope, self._bounded(receive, limit), send_secure)

    def _refusal(self, scope, headers: dict[str, str]) -> Refusal | None:
        """Why the request is refused before the app sees it (host, origin, key), or None."""
        host, origin, post = headers.get("host", ""), headers.get("origin"), scope["method"] not in SAFE_METHODS
        if self.hosts is not None and not served(host, self.hosts):
            return Forbidden(f"host {host[:80]!r} is not served here (carmask serve --allow-host NAME adds a name)")
        if origin and post and origin != f"{scope.get('scheme', 'http')}://{host}" and origin not in self.origins:
            return Forbidden(
                f"requests from pages of {origin[:80]} are not allowed (carmask serve --allow-origin adds an origin)"
            )
        if (
            self.api_key is not None
            and post
            and not hmac.compare_digest(headers.get("x-api-key", "").encode("latin-1"), self.api_key.encode())
        ):
            return WrongKey("missing or wrong API key: this server needs it as the X-Api-Key header")
        return None

    def _bounded(self, receive, limit: int):
        """`receive` with the body's size and time bounded: raised inside the route's body
        parsing, the refusal is answered by the app's handler."""
        seen, deadline = 0, time.monotonic() + self.body_timeout

        async def bounded_receive():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise Timeout(
                    f"the request body took longer than {self.body_timeout:.0f} s", headers={"Connection": "close"}
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(self._too_large(limit), headers={"Connection": "close"})
            return message

        return bounded_receive

    def _too_large(self, limit: int) -> str:
        upload = self.max_body - MULTIPART_SLACK
        if limit != self.max_body:
            return (
                f"the request is larger than the limit of {limit:,} bytes (a photo of up to {upload:,} bytes, "
                "as a file or as base64)"
            )
        return f"upload is larger than the limit of {upload:,} bytes ({upload / MiB:.1f} MiB)"

    async def _refuse(self, scope, receive, send, refusal: Refusal, drain: bool | None = None):
        """Answer the refusal without the app; `drain`: read and drop the body
        first (default: for methods that have one)."""
        if scope["method"] not in ("GET", "HEAD") if drain is None else drain:
            await _drain(receive, self.body_timeout)
        await error_response(
            scope["path"], refusal.status_code, refusal.detail, refusal.code, headers={"Connection": "close"}
        )(scope, receive, send)


async def _drain(receive, timeout: float) -> None:
    """Read and drop a request body, up to DRAIN_BYTES and `timeout` seconds."""
    dropped, deadline = 0, time.monotonic() + timeout
    while dropped <= DRAIN_BYTES:
        try:
            message = await asyncio.wait_for(receive(), max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def served(host: str, names: set[str]) -> bool:
    """Whether a Host header is served: an IP address (no DNS, so no rebinding), or one of `names`."""
    name = _hostname(host)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in names


def local_hosts(host: str, allow=()) -> set[str]:
    """Host names (besides IP addresses) a server bound to `host` answers to:
    localhost, the bound name, and `allow` (--allow-host). The check stays on
    for every interface: a page of attacker.example rebound to this server
    sends Host: attacker.example, which is refused."""
    names = {"localhost"} | {host_name(name) for name in allow}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host.lower().strip("[]"))
    return names


def host_name(text: str) -> str:
    """A name for --allow-host (studio.example), lower case, else a ValueError naming it."""
    name = text.strip().lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", name):
        raise ValueError(
            f"{text[:80]!r} is not a host name: give a name as clients write it in their URLs, "
            "like studio.example (no scheme, port or wildcard; repeat the option for more)"
        )
    return name
