"""What the long-running commands (``up``, ``projector``) share: the supervision loop with its
progress log, the metrics and health endpoints, the retention sweeper and their flags."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from ..config import (
    Settings,
)
from ..consumer import Consumer, describe
from ..log import Log
from ..metrics import DEFAULT_HOST, MetricsServer, ProgressProbe, Readiness
from ..projector import Projector
from ..readmodel import ReadModel
from ..retention import DEFAULT_SWEEP_INTERVAL, Sweeper
from ._common import (
    CliError,
    _non_negative_float,
    _non_negative_int,
    _out,
    _port,
    _positive_float,
)

logger = logging.getLogger("skialith_langgraph.cli")

SUPERVISE_INTERVAL = 0.5  # seconds between two looks at what 'skialith up' runs


def _consumer_failure(consumer: Consumer[Any]) -> BaseException | None:
    """The exception that ended a consumer's task, if it ended (Consumer has no public probe)."""
    task: asyncio.Task[None] | None = getattr(consumer, "_task", None)
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception() or RuntimeError(f"the {consumer.role} stopped on its own")


async def _serve(
    watch: Callable[[], Coroutine[Any, Any, None]],
    stop: asyncio.Event,
    probe: ProgressProbe,
    interval: float,
    *,
    quiet_idle: bool,
) -> None:
    """Call ``watch`` every half second and log progress every ``interval`` seconds, until ``stop``
    is set or ``watch`` raises.

    Raises:
        CliError: from ``watch``: what it watches ended, and is not restarted.
    """
    last: tuple[int, int] | None = None
    next_report = time.monotonic() + interval
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(SUPERVISE_INTERVAL, interval))
        if stop.is_set():
            break
        await watch()
        projector = probe.projector
        if stop.is_set() or time.monotonic() < next_report:
            continue
        next_report = time.monotonic() + interval
        progress = await probe.sample()
        now = (progress.watermark, progress.stream_last_seq)
        if quiet_idle and now == last:
            continue
        last = now
        stats = projector.stats
        logger.info(
            "projector %s: watermark=%d stream_last_seq=%d lag=%d applied=%d batches=%d failures=%d",
            projector.durable,
            progress.watermark,
            progress.stream_last_seq,
            progress.lag,
            stats.applied,
            stats.batches,
            stats.failures,
        )


@contextlib.asynccontextmanager
async def _probe(settings: Settings, projector: Projector) -> AsyncIterator[ProgressProbe]:
    """A progress probe with its own NATS connection and engine."""
    log = await Log.open(settings)
    model = ReadModel.from_url(settings.database_url, connect_timeout=settings.connect_timeout)
    try:
        yield ProgressProbe(log, model, projector)
    finally:
        try:
            await log.close()
        except Exception as exc:  # NATS gone for good: the caller raises why
            logger.debug("closing the progress probe's NATS connection failed: %s", describe(exc))
        await model.close()


@contextlib.asynccontextmanager
async def _health_server(
    args: argparse.Namespace, collect: Callable[[], Coroutine[Any, Any, str]], readiness: Readiness
) -> AsyncIterator[MetricsServer | None]:
    """Serve /metrics, /healthz and /readyz on ``--metrics-port`` (nothing without it)."""
    if args.metrics_port is None:
        yield None
        return
    server = MetricsServer(collect, host=args.metrics_host, port=args.metrics_port, ready=readiness.check)
    try:
        await server.start()
    except OSError as exc:
        raise CliError(
            f"cannot serve metrics on {args.metrics_host}:{args.metrics_port} ({exc}); "
            "choose another --metrics-port"
        ) from exc
    _out(f"metrics: {server.url} (health: /healthz, /readyz)")
    try:
        yield server
    finally:
        await server.close()


def _retention_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The retention and stream-limit flags of ``up``/``projector`` as Settings overrides."""
    return {
        "retention_idle_ttl": args.retention_idle_ttl,
        "retention_keep_last": args.retention_keep_last,
        "stream_max_age": args.stream_max_age,
        "stream_max_bytes": args.stream_max_bytes,
    }


@contextlib.asynccontextmanager
async def _sweeping(settings: Settings, interval: float) -> AsyncIterator[None]:
    """Run the retention sweeper every ``interval`` seconds while the block runs, if a policy is on."""
    sweeper = Sweeper(settings)
    if not sweeper.active:
        yield
        return
    _out(
        f"retention: idle TTL {sweeper.idle_ttl or 'off'} s, keep last {sweeper.keep_last or 'all'}, "
        f"a pass every {interval} s"
    )
    done = asyncio.Event()
    task = asyncio.create_task(sweeper.run(done, interval=interval))
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(Exception):
            await task
        await sweeper.close()


def _add_retention_flags(parser: argparse.ArgumentParser) -> None:
    """Retention and stream limits of ``up`` and ``projector`` (see docs/retention.md)."""
    parser.add_argument(
        "--retention-idle-ttl",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="delete threads idle this long, every --sweep-interval (default: "
        "$SKIALITH_RETENTION_IDLE_TTL, else 0: off)",
    )
    parser.add_argument(
        "--retention-keep-last",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="prune each thread to its N latest checkpoints per namespace, every --sweep-interval "
        "(default: $SKIALITH_RETENTION_KEEP_LAST, else 0: keep all)",
    )
    parser.add_argument(
        "--sweep-interval",
        type=_positive_float,
        default=DEFAULT_SWEEP_INTERVAL,
        metavar="SECONDS",
        help="seconds between retention passes (only when a retention policy is on)",
    )
    parser.add_argument(
        "--stream-max-age",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="JetStream drops messages older than this, applied or not (default: "
        "$SKIALITH_STREAM_MAX_AGE, else 0: unlimited; see docs/retention.md)",
    )
    parser.add_argument(
        "--stream-max-bytes",
        type=_non_negative_int,
        default=None,
        metavar="BYTES",
        help="cap on the stream's size; when full, writes fail (default: $SKIALITH_STREAM_MAX_BYTES, "
        "else 0: unlimited)",
    )


def _metrics_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics and the health probes "
        "/healthz and /readyz beside them (0: a free port; default: off)",
    )
    parser.add_argument("--metrics-host", default=DEFAULT_HOST, help="address of the metrics endpoint")
