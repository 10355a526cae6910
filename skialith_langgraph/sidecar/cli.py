"""``skialith serve`` (the sidecar) and ``skialith lss-check`` (the specification's checker).

Registered by ``skialith_langgraph/cli.py`` with one line, like the inspection commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError
from .defaults import DEFAULT_HOST, DEFAULT_MAX_BODY, DEFAULT_PORT, TOKEN_ENV

__all__ = ["add_serve_flags", "read_token", "register", "serving_in_up"]


def _out(text: str) -> None:
    print(text, flush=True)


def read_token(token_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The API token: ``--token-file``'s first line, else ``SKIALITH_API_TOKEN``, else ``None``.

    Raises:
        ConfigError: the file cannot be read or is empty.
    """
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the API token from {token_file!r}: {exc}") from exc
        if not token:
            raise ConfigError(f"the API token file {token_file!r} is empty")
        return token
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV) or None


def _byte_count(text: str) -> int:
    value = int(text)
    if value < 1024:
        raise argparse.ArgumentTypeError(f"must be >= 1024 bytes, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def add_serve_flags(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """The sidecar's flags (``prefix="serve-"`` for ``skialith up``)."""
    if prefix:
        parser.add_argument(
            "--serve", action="store_true", help="also run the HTTP sidecar (see 'skialith serve')"
        )
    parser.add_argument(
        f"--{prefix}host", default=DEFAULT_HOST, help="address to bind; other than loopback needs a token"
    )
    parser.add_argument(
        f"--{prefix}port", type=_port, default=DEFAULT_PORT, help="port to bind (0: a free one)"
    )
    parser.add_argument(
        f"--{prefix}token-file",
        default=None,
        help=f"file holding the bearer token clients must send (default: ${TOKEN_ENV}; none: no token, "
        "allowed on loopback only)",
    )
    parser.add_argument(
        f"--{prefix}max-body-bytes",
        type=_byte_count,
        default=DEFAULT_MAX_BODY,
        help="largest request body; larger ones get 413",
    )


async def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(args: argparse.Namespace) -> int:
    from ..cli import nats_overrides  # the shared flag readers of the main command
    from .server import running
    from .state import Limits

    overrides: dict[str, Any] = {k: v for k, v in nats_overrides(args).items() if v is not None}
    for name in ("database_url", "stream", "subject_prefix"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    settings = Settings.from_env(**overrides)
    token = read_token(args.token_file)
    stop = await _stop_event()
    async with running(
        settings, host=args.host, port=args.port, token=token, limits=Limits(max_body=args.max_body_bytes)
    ) as srv:
        _out(f"sidecar: {srv.url} (API: {srv.url}/openapi.json; token {'required' if token else 'off'})")
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, srv.task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if srv.task.done() and not stop.is_set():
            print("skialith serve: error: the HTTP server stopped", file=sys.stderr, flush=True)
            return 1
    _out("sidecar stopped.")
    return 0


def _serve_on_uvloop(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    """``skialith serve``'s entry: ``main()`` calls it before ``asyncio.run`` makes the loop, so
    setting uvloop's policy here gives the sidecar uvloop (installed by ``uvicorn[standard]``)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a minimal install: the stock loop
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return _serve(args)


async def _lss_check(args: argparse.Namespace) -> int:
    from .lss import run_checks

    token = args.token or os.environ.get(TOKEN_ENV) or None
    return await run_checks(
        args.url, token=token, timeout=args.timeout, hot_path_ms=args.hot_path_ms, out=_out
    )


def register(commands: Any) -> None:
    """Add ``serve`` and ``lss-check`` to the ``skialith`` parser's subcommands."""
    from ..cli._common import add_command  # the cli package imports this module
    from ..cli._nats import _connection_flags

    serve = add_command(
        commands,
        "serve",
        _serve_on_uvloop,
        help="HTTP sidecar: agents and threads over a JSON API",
        description=(
            "Serve the JSON API of docs/sidecar.md (SkialithAgent over HTTP, read access to threads, "
            "/healthz, /readyz, /metrics, /openapi.json) over the stream and read model of the "
            "connection flags, until Ctrl-C or SIGTERM. Binds 127.0.0.1 by default; with a token "
            f"(${TOKEN_ENV} or --token-file) every request needs 'Authorization: Bearer <token>', "
            "and another address is refused without one. Writes answer after the JetStream PubAck. "
            "Run the projector too (skialith up, or skialith projector)."
        ),
        log_level="INFO",
    )
    _connection_flags(serve)
    add_serve_flags(serve)

    check = add_command(
        commands,
        "lss-check",
        _lss_check,
        help="check a server against the LSS (docs/lss.md)",
        description=(
            "Run the observable checks of docs/lss.md (LSS-01..06) against the HTTP API at --url, "
            "print one PASS/FAIL line per requirement, and exit 1 if any fails. It writes to agents "
            "named lss-check-<random>."
        ),
    )
    check.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8322")
    check.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    check.add_argument(
        "--hot-path-ms",
        type=float,
        default=1.0,
        help="LSS-06: the bound on the p50 server-side time to the durability ack (Server-Timing)",
    )


@contextlib.asynccontextmanager
async def serving_in_up(args: argparse.Namespace, settings: Settings) -> AsyncIterator[str | None]:
    """The sidecar beside ``skialith up`` when ``--serve`` was given (its URL), else nothing."""
    if not getattr(args, "serve", False):
        yield None
        return
    from .server import running
    from .state import Limits

    token = read_token(args.serve_token_file)
    async with running(
        settings,
        host=args.serve_host,
        port=args.serve_port,
        token=token,
        limits=Limits(max_body=args.serve_max_body_bytes),
    ) as srv:
        _out(f"sidecar: {srv.url} (API: {srv.url}/openapi.json; token {'required' if token else 'off'})")
        yield srv.url
