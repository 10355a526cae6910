"""Pieces every ``skialith`` command shares: the error a user can fix, output, argument types,
the help formatter, stop signals, and :func:`add_command`, with which a module registers its
subcommand."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from .._loop import cancel_until_done

logger = logging.getLogger("skialith_langgraph.cli")


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 1."""


def _home_database_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home / 'skialith.db'}"


def _resolve_database_url(flag: str | None, home: Path) -> str:
    """``--database-url``, then ``SKIALITH_DATABASE_URL``, then SQLite under ``home``."""
    return flag or os.environ.get("SKIALITH_DATABASE_URL") or _home_database_url(home)


@contextlib.asynccontextmanager
async def _stop_signals() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT, SIGTERM or SIGHUP (a closed terminal) while the block runs."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it); whether it ran to the end."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()
        return True
    await cancel_until_done(task)  # once may not be enough (see cancel_until_done)
    if not task.cancelled():
        task.result()  # it ended by itself as the stop came: its error, if it failed
    return False


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        logger.info("received %s; shutting down", sig.name)
    stop.set()


def _out(text: str = "") -> None:
    print(text, flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0..65535 (0: a free one), got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where the help text does not already explain it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


DEFAULT_PROGRESS_INTERVAL = 10.0  # seconds between progress lines

_LOG_LEVEL = argparse.ArgumentParser(add_help=False)
_LOG_LEVEL.add_argument(
    "--log-level",
    default=argparse.SUPPRESS,
    type=str.upper,
    choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    help="log verbosity on stderr (default: INFO for up and projector, WARNING for demo)",
)


def common_flags() -> list[argparse.ArgumentParser]:
    """The flags every command takes (``--log-level``), as argparse parents."""
    return [_LOG_LEVEL]


def add_command(
    subparsers: Any,
    name: str,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    *,
    help: str,
    description: str,
    log_level: str = "WARNING",
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` to ``skialith``: ``help`` is its one line in ``skialith --help``,
    ``run(args)`` its coroutine (returns the exit code), ``log_level`` its default verbosity.

    A command module's ``register(subparsers)`` calls this, then adds its own flags.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, parents=common_flags(), formatter_class=_HelpFormatter, help=help, description=description
    )
    parser.set_defaults(run=run, default_log_level=log_level)
    return parser
