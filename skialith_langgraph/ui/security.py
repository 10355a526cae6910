"""The viewer's guards: security headers on every response, and the token check.

* Every response carries a strict Content-Security-Policy (scripts and styles only from the
  viewer's own files, no inline script, no ``eval``, nothing fetched from elsewhere), and
  ``nosniff``, ``no-referrer`` and ``frame-ancestors 'none'``.
* With a token, every request must prove it: an ``Authorization: Bearer <token>`` (or
  ``X-Skialith-Token``) header, or the session cookie that ``?token=<token>`` sets (the login
  redirects to the same page without the token in the address). Comparisons are constant-time.
* :func:`check_bind` refuses to serve on an address other than loopback without a token.
* ``loopback_only`` (what ``skialith ui`` sets when it serves loopback without a token) refuses a
  request whose ``Host`` is not a loopback name or address: a web page cannot read the viewer
  through a DNS name rebound to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from ..errors import SkialithError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_ENV = "SKIALITH_UI_TOKEN"
COOKIE = "skialith_ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class UiError(SkialithError):
    """The viewer cannot start as asked (an address other than loopback without a token)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse (:class:`UiError`) to serve on ``host`` when it is not loopback and no token is set."""
    if token is not None and not token.strip():
        raise UiError("the viewer's token is empty; give a long random one (--token or $SKIALITH_UI_TOKEN)")
    if not is_loopback(host) and not token:
        raise UiError(
            f"refusing to serve the viewer on {host!r} without a token: anyone who reaches that "
            f"address could read every thread. Set ${TOKEN_ENV} (or --token) to a long random "
            "string, or bind 127.0.0.1 (the default)."
        )


def host_name(host: str) -> str:
    """The name or address of a ``Host`` header, without its port."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def cookie_value(token: str) -> str:
    """What the session cookie holds: a digest of the token, never the token itself."""
    return hmac.new(token.encode(), b"skialith-ui-session", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


class Guard:
    """ASGI middleware: security headers, and the token when one is set."""

    def __init__(self, app: ASGIApp, token: str | None, loopback_only: bool = False) -> None:
        self.app = app
        self.token = token or None
        self.cookie = cookie_value(token) if token else None
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.loopback_only and not is_loopback(host_name(headers.get("host", ""))):
            await _plain(send_with_headers, 403, "this viewer answers only to a loopback Host (127.0.0.1)")
            return
        if self.token is None or self.cookie is None:
            await self.app(scope, receive, send_with_headers)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given:  # the login: set the cookie, then the same address without the token
            if not _same(given[-1], self.token):
                await _plain(send_with_headers, 401, "wrong token")
                return
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            path = "/" + (scope.get("root_path", "") + scope["path"]).lstrip("/")  # never //other.host
            location = quote(path) + (f"?{rest}" if rest else "")
            cookie_path = (scope.get("root_path", "") or "") + "/"
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [
                        (b"location", location.encode("latin-1", "replace")),
                        (
                            b"set-cookie",
                            f"{COOKIE}={self.cookie}; Path={cookie_path}; HttpOnly; SameSite=Strict".encode(
                                "latin-1", "replace"
                            ),
                        ),
                    ],
                }
            )
            await send_with_headers({"type": "http.response.body", "body": b""})
            return
        if self._authorized(headers):
            await self.app(scope, receive, send_with_headers)
            return
        await _plain(
            send_with_headers,
            401,
            "this viewer needs its token: open it once as ...?token=<token> "
            "(or send 'Authorization: Bearer <token>')",
        )

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.token is not None and self.cookie is not None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and _same(auth[7:].strip(), self.token):
            return True
        if "x-skialith-token" in headers and _same(headers["x-skialith-token"], self.token):
            return True
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header proves nothing
            return False
        morsel = jar.get(COOKIE)
        return morsel is not None and _same(morsel.value, self.cookie)


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
