"""``skialith demo``: kill -9 an agent between two nodes and resume it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import urllib.parse
from collections.abc import Coroutine
from typing import Any

from .._loop import cancel_until_done
from ..config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_NATS_URL,
    safe_nats_url,
)
from ..readmodel import safe_url
from ..server import LOCAL_HOSTS
from ._common import (
    CliError,
    _out,
    _stop_signals,
    add_command,
)
from .stack import EmbeddedStack

logger = logging.getLogger("skialith_langgraph.cli")


def _servers(nats_url: str) -> list[tuple[str, int]]:
    found = []
    for raw in nats_url.split(","):
        parts = urllib.parse.urlsplit(raw.strip() if "://" in raw else f"nats://{raw.strip()}")
        found.append((parts.hostname or "127.0.0.1", parts.port or 4222))
    return found


async def _answers(nats_url: str, timeout: float = 0.5) -> bool:
    """Whether any server of ``nats_url`` accepts a TCP connection."""
    for host, port in _servers(nats_url):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


async def _until_stopped(run: Coroutine[Any, Any, int], stop: asyncio.Event) -> int:
    """Run the demo until it ends or a stop signal arrives (then 130, as a shell reports Ctrl-C)."""
    task = asyncio.create_task(run)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        await cancel_until_done(task)  # it may be connecting: once may not be enough (see there)
        if not task.cancelled():
            task.exception()  # retrieved: interrupted all the same
        _out("interrupted")
        return 130
    return task.result()


async def _demo(args: argparse.Namespace) -> int:
    from .. import demo  # LangGraph graph building is only needed here

    nats_url = args.nats_url or os.environ.get("SKIALITH_NATS_URL") or DEFAULT_NATS_URL
    _out("skialith demo: kill -9 an agent between two nodes, then resume it.")
    async with _stop_signals() as stop:
        # a private directory for this run; what a killed run left behind is removed first
        with demo.workspace() as work:
            if await _answers(nats_url):
                database_url = (
                    args.database_url or os.environ.get("SKIALITH_DATABASE_URL") or DEFAULT_DATABASE_URL
                )
                _out(f"  NATS      {safe_nats_url(nats_url)} (already running)")
                _out(f"  database  {safe_url(database_url)}")
                return await _until_stopped(demo.run(nats_url, database_url, out=_out, work=work), stop)
            servers = _servers(nats_url)
            host, port = servers[0]
            if len(servers) > 1 or host not in LOCAL_HOSTS:
                raise CliError(
                    f"nothing answers at {safe_nats_url(nats_url)!r}; start NATS there, or run "
                    "'skialith demo' without --nats-url to use an embedded server"
                )
            home = work / "home"
            stack = EmbeddedStack(home, port, args.database_url)
            await stack.start()
            try:
                settings = stack.settings
                _out(
                    f"  NATS      {settings.nats_url} (embedded: nats-server pid {stack.server.pid}, "
                    f"home {home}; stopped at the end)"
                )
                _out(f"  database  {safe_url(settings.database_url)}")
                run = demo.run(
                    settings.nats_url, settings.database_url, token=stack.token, out=_out, work=work
                )
                return await _until_stopped(run, stop)
            finally:
                await stack.stop()


# -- registration --------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``skialith demo``."""
    demo = add_command(
        subparsers,
        "demo",
        _demo,
        help="kill -9 an agent between two nodes and resume it",
        description=(
            "Run a four-node LangGraph pipeline in a child process, kill it with SIGKILL after the "
            "second node's checkpoint is acknowledged, and resume the thread here: the first two "
            "nodes do not run again. If nothing answers at the NATS URL, an embedded NATS server "
            "and projector are started in a temporary directory and stopped at the end."
        ),
    )
    demo.add_argument(
        "--nats-url", default=None, help=f"NATS URL (default: $SKIALITH_NATS_URL, else {DEFAULT_NATS_URL})"
    )
    demo.add_argument(
        "--database-url",
        default=None,
        help="read model URL (default: $SKIALITH_DATABASE_URL, else the default SQLite file, or a "
        "temporary one with the embedded server)",
    )
