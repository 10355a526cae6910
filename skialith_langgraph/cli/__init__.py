"""The ``skialith`` command; the only place that configures logging.

One module per command group, each with ``register(subparsers)`` (built on
:func:`._common.add_command`) and its handlers; :func:`build_parser` calls them in the order
``skialith --help`` lists them:

* ``up`` (:mod:`.up`) starts an embedded nats-server (JetStream, data under ``./.skialith/``,
  127.0.0.1 only, a generated token in ``./.skialith/nats.token``) and the projector, prints how
  to connect, and runs until Ctrl-C, SIGTERM or SIGHUP, restarting what dies within a budget
  (:mod:`.stack`).
* ``projector`` (:mod:`.projector`) runs the projector alone (``--rebuild``, ``--forget REPLICA``),
  with progress in the log and, on request, Prometheus metrics and health endpoints.
* ``status`` (:mod:`.status`) shows the stream, each consumer and the read model.
* ``gc`` (:mod:`.gc`) runs one retention pass.
* ``demo`` (:mod:`.demo`) kills an agent with kill -9 between two nodes and resumes it.
* ``threads``, ``history``, ``show``, ``diff``, ``drift``, ``lineage``, ``audit``, ``export``,
  ``import`` (:mod:`.inspect`) read what agents did, through :class:`skialith_langgraph.inspect.Inspector`.
* ``ui`` (:mod:`skialith_langgraph.ui.cli`) serves the web viewer over the same Inspector.
* ``serve`` and ``lss-check`` (:mod:`skialith_langgraph.sidecar.cli`): the HTTP sidecar and the check
  of a server against the Lithic State Specification.
* ``mirror`` and ``promote`` (:mod:`skialith_langgraph.regions`): a second region's mirror and its
  promotion on failover.

A new command: a module here with ``register(subparsers)`` calling ``add_command(subparsers, NAME,
RUN, help=ONE_LINE, description=...)``, and one line in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .. import __version__, regions
from ..errors import SkialithError
from ..sidecar import cli as sidecar_cli
from . import demo, gc, inspect, projector, status, up
from ._common import CliError, _HelpFormatter, _home_database_url, common_flags
from ._nats import add_nats_flags, nats_overrides
from .stack import RESTART_LIMIT, RESTART_WINDOW, EmbeddedStack

__all__ = [
    "RESTART_LIMIT",
    "RESTART_WINDOW",
    "CliError",
    "EmbeddedStack",
    "_home_database_url",
    "add_nats_flags",
    "build_parser",
    "configure_logging",
    "main",
    "nats_overrides",
]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
PRIVATE_UMASK = 0o077  # what 'up' and 'demo' create is readable by this user only


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``skialith`` command."""
    parser = argparse.ArgumentParser(
        prog="skialith",
        parents=common_flags(),
        formatter_class=_HelpFormatter,
        description=(
            "Skialith for LangGraph: checkpoints are written to NATS JetStream first and served "
            "from a SQL read model that the projector fills."
        ),
        epilog=(
            "Quick start: run 'skialith up' in one shell, then use SkialithCheckpointer() in Python. "
            "Environment: SKIALITH_NATS_URL, SKIALITH_NATS_TOKEN, SKIALITH_DATABASE_URL, SKIALITH_STREAM, "
            "SKIALITH_SUBJECT_PREFIX; NATS credentials and TLS: SKIALITH_NATS_USER, SKIALITH_NATS_PASSWORD, "
            "SKIALITH_NATS_NKEY_SEED, SKIALITH_NATS_CREDS, SKIALITH_NATS_TLS_CA, SKIALITH_NATS_TLS_CERT, "
            "SKIALITH_NATS_TLS_KEY (docs/security.md)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"skialith-langgraph {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", required=True)
    # one line per command group, in the order of 'skialith --help'
    up.register(commands)
    projector.register(commands)
    status.register(commands)
    gc.register(commands)
    demo.register(commands)
    inspect.register(commands)
    from ..ui import cli as ui_cli  # the viewer's module imports Starlette only when it runs

    ui_cli.register(commands)
    sidecar_cli.register(commands)
    regions.register(commands)
    return parser


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``; libraries' own chatter only from WARNING (aiosqlite: INFO) up."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    numeric = logging.getLevelName(level)
    logging.getLogger("nats").setLevel(max(logging.WARNING, numeric))
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, numeric))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``skialith`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    os.umask(PRIVATE_UMASK)  # data directories 0700, files 0600: checkpoints are user data
    configure_logging(getattr(args, "log_level", None) or args.default_log_level)
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.run
    try:
        code = asyncio.run(command(args))
    except (CliError, SkialithError, OSError) as exc:
        print(f"skialith {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
