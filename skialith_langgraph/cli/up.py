"""``skialith up``: an embedded NATS server and the projector, with how to connect."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .. import cluster
from ..config import (
    DEFAULT_HOME,
    DEFAULT_NATS_PORT,
    DEFAULT_NATS_URL,
    NATS_TOKEN_FILE,
)
from ..metrics import ProgressProbe, Readiness, render_metrics
from ..readmodel import safe_url
from ..server import RANDOM_PORT
from ..sidecar import cli as sidecar_cli
from ._common import (
    DEFAULT_PROGRESS_INTERVAL,
    _home_database_url,
    _out,
    _port,
    _positive_float,
    _stop_signals,
    add_command,
)
from ._running import (
    _add_retention_flags,
    _health_server,
    _metrics_flags,
    _probe,
    _retention_overrides,
    _serve,
    _sweeping,
)
from .stack import EmbeddedStack

logger = logging.getLogger("skialith_langgraph.cli")


def _connect_banner(stack: EmbeddedStack) -> list[str]:
    settings = stack.settings
    nats_url, shown_db = settings.nats_url, safe_url(settings.database_url)
    hidden = shown_db != settings.database_url
    # DEFAULT_DATABASE_URL is SQLite in ./.skialith, relative to where the checkpointer runs
    default_db = _home_database_url(Path(DEFAULT_HOME).resolve())
    defaults = nats_url == DEFAULT_NATS_URL and settings.database_url == default_db
    if defaults:
        snippet_args = ""
    else:
        snippet_args = f"{nats_url!r}, {shown_db!r}"
    lines = [
        "Skialith is up.",
        f"  NATS       {nats_url}  (nats-server pid {stack.server.pid})",
        f"  JetStream  {stack.server.store_dir}",
        f"  server log {stack.server.log_file}",
        f"  NATS auth  token in {stack.token_file} (readable by you only; 127.0.0.1 only)",
        f"  database   {shown_db}" + ("  (password hidden)" if hidden else ""),
        f"  projector  {stack.projector.durable if stack.projector else '-'} on stream {settings.stream}",
        "",
        "Connect from another shell:",
        f"  export SKIALITH_NATS_URL={nats_url}",
        f'  export SKIALITH_NATS_TOKEN="$(cat {stack.token_file})"',
        f"  export SKIALITH_DATABASE_URL={shown_db}" + ("  # put the real password in" if hidden else ""),
        "",
        "and in Python:",
        "  from skialith_langgraph import SkialithCheckpointer",
        f"  checkpointer = SkialithCheckpointer({snippet_args})",
        "  app = graph.compile(checkpointer=checkpointer)",
        "",
    ]
    if defaults:
        lines += [
            "(From this directory, SkialithCheckpointer() with no arguments connects here;",
            f" it reads the token from ./{DEFAULT_HOME}/{NATS_TOKEN_FILE}.)",
            "",
        ]
    lines.append("Press Ctrl-C to stop.")
    return lines


async def _up(args: argparse.Namespace) -> int:
    port = RANDOM_PORT if args.nats_port == 0 else args.nats_port
    stack = EmbeddedStack(
        Path(args.home),
        port,
        args.database_url,
        sync_always=args.sync_always,
        overrides=_retention_overrides(args),
    )
    if args.cluster > 1:  # N clustered nodes and an RN stream (skialith_langgraph/cluster.py)
        cluster.use_cluster(stack, args.cluster)
    async with _stop_signals() as stop:
        await stack.start()
        try:
            for line in _connect_banner(stack):
                _out(line)
            assert stack.projector is not None and stack.traces is not None
            async with _probe(stack.settings, stack.projector) as probe:
                traces = ProgressProbe(probe.log, probe.model, stack.traces)

                async def watch() -> None:
                    await stack.supervise()
                    if stack.projector is not None:
                        probe.projector = stack.projector
                    if stack.traces is not None:
                        traces.projector = stack.traces

                readiness = Readiness(
                    lambda: stack.consumers, probe.model, {"nats-server": stack.server_problem}
                )
                async with (
                    _health_server(args, lambda: render_metrics([probe, traces], stack.restarts), readiness),
                    _sweeping(stack.settings, args.sweep_interval),
                    sidecar_cli.serving_in_up(args, stack.settings),
                ):
                    await _serve(watch, stop, probe, args.progress_interval, quiet_idle=True)
        finally:
            await stack.stop()
    _out("Skialith stopped.")
    return 0


# -- registration --------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``skialith up``."""
    up = add_command(
        subparsers,
        "up",
        _up,
        log_level="INFO",
        help="start an embedded NATS server and the projector",
        description=(
            "Start nats-server (JetStream on, data under HOME/nats, 127.0.0.1 only, token in "
            "HOME/nats.token) and the projector in this process, print how to connect, and run until "
            "Ctrl-C, SIGTERM or SIGHUP; then the projector finishes its batch and the server stops. "
            "The server dies with this process; a second 'up' on the same HOME is refused. The "
            "defaults are what SkialithCheckpointer() connects to."
        ),
    )
    up.add_argument(
        "--nats-port",
        type=_port,
        default=DEFAULT_NATS_PORT,
        help="NATS client port on 127.0.0.1 (0: a free one)",
    )
    up.add_argument(
        "--home",
        default=f"./{DEFAULT_HOME}",
        help="data directory, private to you (JetStream store, logs, SQLite, NATS token)",
    )
    up.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy async URL of the read model, e.g. mysql+aiomysql://user:pw@host/db "
        "(default: $SKIALITH_DATABASE_URL, else SQLite at HOME/skialith.db)",
    )
    up.add_argument(
        "--sync-always",
        action="store_true",
        help="fsync every JetStream write, so acknowledged writes survive a power cut, not only a crash",
    )
    up.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=DEFAULT_PROGRESS_INTERVAL,
        help="seconds between progress log lines (only when something changed)",
    )
    up.add_argument(
        "--cluster",
        type=int,
        choices=[1, 3, 5],
        default=1,
        help="run N clustered nats-servers (client ports NATS_PORT.., routes +2000, stores in "
        "HOME/cluster) and create the stream with N replicas; prints every URL",
    )
    _add_retention_flags(up)
    _metrics_flags(up)
    sidecar_cli.add_serve_flags(up, prefix="serve-")
