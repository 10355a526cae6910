"""``skialith ui``: serve the web viewer with uvicorn.

Binds 127.0.0.1 by default. On any other address it refuses to start without a token
(``--token`` or ``$SKIALITH_UI_TOKEN``); with a token, open the printed address once with
``?token=<token>`` (the viewer sets a cookie and drops the token from the address).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from ..config import Settings
from .security import TOKEN_ENV, check_bind

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _settings(args: argparse.Namespace) -> Settings:
    from ..cli import nats_overrides  # the cli module imports this one

    return Settings.from_env(
        database_url=args.database_url,
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        **nats_overrides(args),
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    check_bind(args.host, token)
    settings = _settings(args)
    app = create_app(settings, token=token, loopback_only=token is None)
    sock = _listen(args.host, args.port)
    port = sock.getsockname()[1]
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown_host}:{port}/"
    hint = f"  (log in once with {url}?token=<your token>)" if token else ""
    sys.stdout.write(f"skialith ui: serving {url}{hint}\n")
    sys.stdout.flush()
    # no access log: a login address carries the token in its query string
    config = uvicorn.Config(app, log_level=args.uvicorn_log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
    return 0


def register(commands: Any) -> None:
    """Add ``skialith ui`` to the ``skialith`` parser's subcommands."""
    from ..cli._common import add_command  # the cli package imports this module
    from ..cli._nats import _connection_flags

    p = add_command(
        commands,
        "ui",
        run,
        help="web viewer: threads, timelines, diffs, timings, drift",
        description=(
            "Serve the web viewer: threads with search, a thread's checkpoints as a branch tree, "
            "the state at a checkpoint and its diff to the parent, node timings (a Gantt chart from "
            "skialith_agent_traces), interrupts and errors, drift between two runs and lineage. "
            "Binds 127.0.0.1 by default; on another address a token is required (--token or "
            f"${TOKEN_ENV}); open the viewer once with ?token=<token>. Read-only; answers from the "
            "log when the projector lags or is stopped."
        ),
    )
    _connection_flags(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST})")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: a free one)"
    )
    p.add_argument(
        "--token",
        default=None,
        help=f"require this token (default: ${TOKEN_ENV}; required unless the host is loopback)",
    )
    p.add_argument(
        "--uvicorn-log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default: warning; access logs are always off)",
    )
