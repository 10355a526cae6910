"""A throwaway sidecar for tests in other languages: ``python -m skialith_langgraph.sidecar.devserver``.

Starts a nats-server (JetStream, free port, temporary store), a SQLite read model in a temporary
directory, the projector, and the sidecar on a free 127.0.0.1 port; prints ONE JSON line
``{"url", "natsUrl", "databaseUrl", "stream", "subjectPrefix", "pid"}`` on stdout when ready;
and removes everything on SIGTERM, SIGINT, SIGHUP or end of stdin. It dies with its parent
(``PR_SET_PDEATHSIG``) and so does its nats-server, so a killed test runner leaves no orphans.

Options: ``--token TOKEN`` (clients must send it), ``--database-url URL`` (instead of SQLite),
``--no-projector`` (reads are then answered from the log).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..config import Settings
from ..projector import Projector
from ..server import NatsServer
from .server import running
from .state import Limits

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux); exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent or parent == 1:
        raise SystemExit(1)


async def _stdin_closed() -> None:
    """Returns when stdin reaches end of file (the parent closed it or died)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):  # not a pipe (a terminal, /dev/null): read in a thread instead
        await asyncio.to_thread(sys.stdin.buffer.read)
        return
    while await reader.read(65536):
        pass


async def _run(args: argparse.Namespace, home: Path, server: NatsServer) -> int:
    database_url = args.database_url or f"sqlite+aiosqlite:///{home / 'readmodel.db'}"
    settings = Settings(
        nats_url=server.url, database_url=database_url, stream=args.stream, subject_prefix=args.subject_prefix
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    projector = None if args.no_projector else Projector(settings)
    if projector is not None:
        await projector.start()
    try:
        async with running(
            settings, port=0, token=args.token, limits=Limits(max_body=args.max_body_bytes)
        ) as srv:
            ready = {
                "url": srv.url,
                "natsUrl": server.url,
                "databaseUrl": database_url,
                "stream": settings.stream,
                "subjectPrefix": settings.subject_prefix,
                "pid": os.getpid(),
            }
            print(json.dumps(ready), flush=True)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(_stdin_closed()), srv.task]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits[:2]:
                w.cancel()
    finally:
        if projector is not None:
            with contextlib.suppress(Exception):
                await projector.stop()
            await projector.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skialith_langgraph.sidecar.devserver")
    parser.add_argument("--token", default=None)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--stream", default="SKIALITH")
    parser.add_argument("--subject-prefix", default="skialith")
    parser.add_argument("--max-body-bytes", type=int, default=Limits().max_body)
    parser.add_argument("--no-projector", action="store_true")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    _die_with_parent()
    with tempfile.TemporaryDirectory(prefix="skialith-dev-") as tmp:
        home = Path(tmp)
        server = NatsServer(store_dir=home / "nats", port=-1, log_file=home / "nats-server.log")
        server.start()  # on the main thread: it dies with this one
        try:
            with contextlib.suppress(ImportError):
                import uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return asyncio.run(_run(args, home, server))
        finally:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
