"""``skialith projector``: the projector alone; ``--rebuild`` and ``--forget REPLICA``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.js.errors
from sqlalchemy.exc import SQLAlchemyError

from .._loop import cancel_until_done
from ..config import (
    Settings,
    safe_nats_url,
)
from ..consumer import describe
from ..errors import ReadModelError
from ..log import Log
from ..metrics import ProgressProbe, Readiness, render_metrics
from ..ownership import Holder, consumer_names, forget, live_leases
from ..projector import DEFAULT_BATCH_SIZE, Projector
from ..readmodel import ReadModel, safe_url
from ..readmodel.tables import metadata
from ..traces import TraceIngest
from ._common import (
    DEFAULT_PROGRESS_INTERVAL,
    CliError,
    _out,
    _positive_float,
    _positive_int,
    _stop_signals,
    _unless_stopped,
    add_command,
)
from ._nats import _connection_flags, nats_overrides
from ._running import (
    _add_retention_flags,
    _consumer_failure,
    _health_server,
    _metrics_flags,
    _probe,
    _retention_overrides,
    _serve,
    _sweeping,
)

logger = logging.getLogger("skialith_langgraph.cli")


async def _stop_projector(projector: Projector) -> None:
    """Stop the projector: it finishes and acknowledges the batch in hand, then closes.

    Raises:
        CliError: the projector's run task had failed (``stop()`` re-raises its error).
    """
    try:
        await projector.stop()
    except Exception as exc:
        raise CliError(f"the projector stopped with an error: {type(exc).__name__}: {exc}") from exc
    finally:
        await projector.close()  # stop() skips it when the run task failed


async def _rebuild(settings: Settings, projector: Projector) -> int:
    """Drop and re-create the read-model tables and delete the durable consumer.

    Returns:
        The stream's last sequence: the rebuild is complete once the watermark reaches it.
    """
    shown = safe_url(settings.database_url)
    log = await Log.open(settings)
    try:
        live = await live_leases(log.js, settings.stream)
    finally:
        await log.close()
    if live:
        raise CliError(
            f"refusing to rebuild while replicas of stream {settings.stream} are live (the rebuild drops "
            f"the tables they write): {_describe_live(live)}; stop them first"
        )
    _out(f"rebuild: dropping the read-model tables in {shown}")
    model = ReadModel.from_url(settings.database_url, connect_timeout=settings.connect_timeout)
    try:
        try:
            async with model.engine.begin() as conn:
                await conn.run_sync(metadata.drop_all)
        except (SQLAlchemyError, OSError) as exc:
            raise ReadModelError(
                f"cannot drop the read-model tables in {shown!r} ({type(exc).__name__}: {exc})", url=shown
            ) from exc
        _out("rebuild: creating them again")
        await model.setup()
    finally:
        await model.close()
    log = await Log.open(settings)
    try:
        await log.ensure_stream()
        # every replica of this projection has its own durable; all must start again from sequence 1
        prefix = projector.durable.removesuffix(projector.replica)
        durables = {projector.durable} | {
            n for n in await consumer_names(log.js, settings.stream) if n.startswith(prefix)
        }
        for durable in sorted(durables):
            try:
                await log.js.delete_consumer(settings.stream, durable)
                _out(f"rebuild: deleted the durable consumer {durable} on stream {settings.stream}")
            except nats.js.errors.NotFoundError:
                pass
        last = await log.stream_last_seq()
    finally:
        await log.close()
    _out(f"rebuild: projecting stream {settings.stream} from sequence 1 (last sequence now {last})")
    return last


async def _announce_caught_up(probe: ProgressProbe, target: int, started: float) -> None:
    while True:
        progress = await probe.sample()
        if progress.watermark >= target:
            _out(
                f"rebuild: done; the read model reflects the stream up to sequence {progress.watermark} "
                f"({time.monotonic() - started:.1f} s). Still running; Ctrl-C or SIGTERM stops."
            )
            return
        await asyncio.sleep(0.2)


async def _projector(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        database_url=args.database_url,
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        **_retention_overrides(args),
        **nats_overrides(args),
    )
    if args.forget is not None:
        return await _forget(settings, args.forget)
    projector = Projector(settings, replica=args.replica, batch_size=args.batch_size)
    async with _stop_signals() as stop:
        started = time.monotonic()
        target = await _rebuild(settings, projector) if args.rebuild else None
        try:
            # start waits for a database that does not answer yet: a stop signal ends the wait
            if not await _unless_stopped(projector.start(), stop):
                await projector.close()
                _out("projector stopped before it started")
                return 0
        except BaseException:
            await projector.close()
            raise
        announce: asyncio.Task[None] | None = None
        try:
            _out(
                f"projector {projector.durable}: stream {settings.stream} at "
                f"{safe_nats_url(settings.nats_url)} -> {safe_url(settings.database_url)}"
            )
            async with _probe(settings, projector) as probe:
                readiness = Readiness(lambda: [projector], probe.model)
                async with _health_server(args, lambda: render_metrics([probe]), readiness):
                    if target is not None:
                        announce = asyncio.create_task(_announce_caught_up(probe, target, started))

                    async def watch() -> None:
                        failure = _consumer_failure(projector)
                        if failure is not None:
                            raise CliError(f"the projector stopped: {describe(failure)}") from failure

                    try:
                        async with _sweeping(settings, args.sweep_interval):
                            await _serve(watch, stop, probe, args.progress_interval, quiet_idle=False)
                    finally:
                        if announce is not None:
                            await cancel_until_done(announce)  # it polls the database: see there
                            if not announce.cancelled():
                                announce.exception()  # retrieved: its failure is not the projector's
        finally:
            await _stop_projector(projector)
    stats = projector.stats
    _out(f"projector stopped: applied={stats.applied} batches={stats.batches} watermark={stats.last_seq}")
    return 0


def _describe_live(live: dict[str, Holder]) -> str:
    return "; ".join(
        f"{h.role} replica {h.replica!r} ({key}) on {h.describe()}" for key, h in sorted(live.items())
    )


async def _forget(settings: Settings, replica: str) -> int:
    """Delete the durable consumers (projector and trace ingest) and lease of a replica that is gone.

    Raises:
        CliError: the replica is live (its lease is held), or it has no consumer on the stream.
    """
    durables = [Projector(settings, replica=replica).durable, TraceIngest(settings, replica=replica).durable]
    log = await Log.open(settings)
    try:
        live = {k: h for k, h in (await live_leases(log.js, settings.stream)).items() if k in durables}
        if live:
            raise CliError(
                f"refusing to forget replica {replica!r}: it is live ({_describe_live(live)}); stop it first"
            )
        existing = set(await consumer_names(log.js, settings.stream))
        found = [d for d in durables if d in existing]
        if not found:
            others = ", ".join(sorted(existing)) or "none"
            raise CliError(
                f"replica {replica!r} has no durable consumer on stream {settings.stream} "
                f"(its consumers: {others})"
            )
        for durable in found:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await log.js.delete_consumer(settings.stream, durable)
            await forget(log.js, settings.stream, durable)
            _out(
                f"forgot replica {replica!r}: deleted the durable consumer {durable} "
                f"on stream {settings.stream}"
            )
    finally:
        await log.close()
    return 0


# -- registration --------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``skialith projector``."""
    proj = add_command(
        subparsers,
        "projector",
        _projector,
        log_level="INFO",
        help="run the projector alone (log -> SQL read model)",
        description=(
            "Consume the stream with a durable pull consumer and apply it to the SQL read model, "
            "one transaction per batch, until SIGTERM or Ctrl-C (the batch in hand is finished). "
            "Several replicas may run at once. Progress (watermark, lag) is logged every "
            "--progress-interval seconds; --metrics-port serves Prometheus metrics."
        ),
    )
    _connection_flags(proj)
    proj.add_argument(
        "--replica",
        default="0",
        help="this replica's id; replicas running at once need distinct ids (e.g. the pod name), "
        "each has its own durable consumer and they take turns on the read model",
    )
    proj.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="messages per fetch"
    )
    _metrics_flags(proj)
    proj.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=DEFAULT_PROGRESS_INTERVAL,
        help="seconds between progress log lines",
    )
    proj.add_argument(
        "--rebuild",
        action="store_true",
        help="drop the read-model tables and the durable consumers of every replica, then project the "
        "whole stream again from sequence 1 (refused while other replicas are live)",
    )
    proj.add_argument(
        "--forget",
        metavar="REPLICA",
        default=None,
        help="delete the durable consumers (projector and trace ingest) of replica REPLICA, which is gone "
        "for good, and exit (refused while it is live)",
    )
    _add_retention_flags(proj)
