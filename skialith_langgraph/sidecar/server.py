"""Running the sidecar app on uvicorn inside an asyncio program (``serve``, ``up``, the devserver)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from ..config import Settings
from ..errors import ConfigError
from .app import create_app
from .defaults import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV
from .state import Limits

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_ENV", "Running", "check_bind", "running"]

logger = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds for the app to connect and bind
STOP_TIMEOUT = 10.0  # seconds for open requests to finish at shutdown


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a token.

    Raises:
        ConfigError: ``host`` is not a loopback address and ``token`` is empty.
    """
    if not token and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host!r} without a token: anyone who reaches it could read and write "
            f"agent state; set {TOKEN_ENV} (or --token-file), or bind 127.0.0.1"
        )


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the program that runs it owns SIGINT/SIGTERM."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield


@dataclass(slots=True)
class Running:
    server: uvicorn.Server
    task: asyncio.Task[None]
    url: str


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    limits: Limits | None = None,
    app: ASGIApp | None = None,
) -> AsyncIterator[Running]:
    """Serve the sidecar until the block ends (uvicorn's own signal handling is off: the caller's
    stop signal ends the block).

    ``app`` serves another ASGI app instead of :func:`create_app`'s (tests of the checker).

    Raises:
        ConfigError: a non-loopback ``host`` without ``token``.
        OSError: the port cannot be bound, or the app did not start (NATS or the database down).
    """
    check_bind(host, token)
    if app is None:
        app = create_app(settings, token=token, limits=limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # uvicorn picks httptools ("auto"); the serve command runs on uvloop
        proxy_headers=False,  # no per-request X-Forwarded-* pass: they would only name the client in logs
        lifespan="on",
        timeout_graceful_shutdown=int(STOP_TIMEOUT),
        server_header=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="skialith-sidecar")
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started:
                if task.done():
                    break
                await asyncio.sleep(0.02)
    except TimeoutError:
        server.should_exit = True
        raise OSError(f"the sidecar did not start within {START_TIMEOUT} s") from None
    if task.done() or not server.started:
        exc = None if task.cancelled() else task.exception()
        raise OSError(
            f"the sidecar could not start on {host}:{port} (see the log above"
            f"{': ' + str(exc) if exc else ''}); is the port free, are NATS and the database up?"
        )
    sock = server.servers[0].sockets[0].getsockname()
    shown = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
    try:
        yield Running(server, task, f"http://{shown}:{sock[1]}")
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, STOP_TIMEOUT + 5)
