"""Progress for logs and Prometheus (watermark, lag), and a tiny HTTP endpoint for metrics and health.

The watermark is read from the read model (so it is right after a restart and across replicas),
the stream's last sequence from JetStream; the lag is their difference, in messages. The endpoint
is plain ``asyncio.start_server`` speaking just enough HTTP/1.0 for a Prometheus scrape and for
probes (every metric is described in ``docs/metrics.md``):

* ``GET /metrics``: the Prometheus text format.
* ``GET /healthz``: 200 while the process and its event loop answer (a stuck loop answers nothing).
* ``GET /readyz``: 200 when connected to NATS, the database answers, each consumer holds its lease
  and is subscribed (and, for ``skialith up``, its nats-server runs); else 503. Both bodies are
  JSON: ``{"status": "ready" | "not ready", "checks": {"nats": "ok", "database": "...", ...}}``.

Example:
    probe = ProgressProbe(log, model, projector)
    ready = Readiness(lambda: [projector], model).check
    server = MetricsServer(lambda: render_metrics([probe]), port=9464, ready=ready)
    await server.start()
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from .consumer import Consumer, describe
from .log import Log
from .readmodel import ReadModel

__all__ = ["METRICS", "MetricsServer", "Progress", "ProgressProbe", "Readiness", "render_metrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_HOST = "127.0.0.1"
REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request head
READY_TIMEOUT = 2.0  # seconds the database may take to answer a readiness check
READY_CACHE = 1.0  # seconds a database check is reused (probes of several endpoints at once)
_MAX_HEAD = 16 * 1024  # bytes


@dataclass(frozen=True, slots=True)
class Progress:
    """Where the projection stands.

    Attributes:
        watermark: the last stream sequence applied to the read model.
        stream_last_seq: the last sequence in the stream.
    """

    watermark: int = 0
    stream_last_seq: int = 0

    @property
    def lag(self) -> int:
        """Messages in the stream that the read model does not reflect yet."""
        return max(0, self.stream_last_seq - self.watermark)


class ProgressProbe:
    """Samples :class:`Progress` for one projector, using its own NATS and database connections.

    A failed sample (NATS or the database away) logs a warning once and returns the last good one.

    Args:
        log: a connection to the projector's stream.
        model: the projector's read model.
        projector: the projector or trace ingest (its in-process watermark counts when it is ahead
            of the table's); ``skialith up`` puts a restarted one in its place.
    """

    def __init__(self, log: Log, model: ReadModel, projector: Consumer[Any]) -> None:
        self.log = log
        self.model = model
        self.projector = projector
        self.last = Progress()
        self._failing = False

    async def sample(self) -> Progress:
        """Read the watermark and the stream's last sequence now."""
        try:
            stream_last_seq = await self.log.stream_last_seq()
            async with self.model.connect() as conn:
                watermark = await self.model.watermark(conn, self.projector.watermark_name)
        except Exception as exc:
            if not self._failing:
                logger.warning("cannot sample projector progress (%s: %s)", type(exc).__name__, exc)
            self._failing = True
            return self.last
        if self._failing:
            logger.info("projector progress can be sampled again")
        self._failing = False
        watermark = max(watermark, self.projector.stats.last_seq)
        self.last = Progress(watermark=watermark, stream_last_seq=max(stream_last_seq, watermark))
        return self.last


# name, type, help: docs/metrics.md describes each (a test keeps the two in step)
_CONSUMER_METRICS: tuple[tuple[str, str, str], ...] = (
    ("skialith_projector_applied_total", "counter", "Messages applied to the read model by this process."),
    ("skialith_projector_batches_total", "counter", "Batches committed by this process."),
    ("skialith_projector_failures_total", "counter", "Failed batch commits (retried) in this process."),
    (
        "skialith_projector_dead_letters_total",
        "counter",
        "Messages set aside in skialith_dead_letters (never applicable) by this process.",
    ),
    ("skialith_projector_watermark", "gauge", "Last stream sequence reflected in the read model."),
    ("skialith_projector_lag_messages", "gauge", "Messages in the stream not yet in the read model."),
    ("skialith_projector_subscribed", "gauge", "1 while the durable consumer is subscribed, else 0."),
)
_RESTARTS = (
    "skialith_up_restarts_total",
    "counter",
    "Restarts by 'skialith up' of a component that died (nats-server, projector, trace ingest).",
)
METRICS: tuple[tuple[str, str, str], ...] = (*_CONSUMER_METRICS, _RESTARTS)


async def render_metrics(probes: Sequence[ProgressProbe], restarts: Mapping[str, int] | None = None) -> str:
    """The metrics of each probe's consumer (and of ``up``'s restarts) in the Prometheus text format 0.0.4.

    The series of a consumer are labelled ``stream``, ``projection`` (its watermark row: ``main`` for
    the projector, ``traces-main`` for the trace ingest) and ``replica``.
    """
    series: dict[str, list[str]] = {name: [] for name, _, _ in METRICS}
    for probe in probes:
        progress = await probe.sample()
        consumer = probe.projector
        stats = consumer.stats
        values = {
            "skialith_projector_applied_total": stats.applied,
            "skialith_projector_batches_total": stats.batches,
            "skialith_projector_failures_total": stats.failures,
            "skialith_projector_dead_letters_total": stats.dead_letters,
            "skialith_projector_watermark": progress.watermark,
            "skialith_projector_lag_messages": progress.lag,
            "skialith_projector_subscribed": int(consumer.subscribed),
        }
        labels = _labels(
            stream=consumer.settings.stream, projection=consumer.watermark_name, replica=consumer.replica
        )
        for name, value in values.items():
            series[name].append(f"{name}{{{labels}}} {value}")
    if restarts is not None:
        name = _RESTARTS[0]
        series[name] = [f"{name}{{{_labels(component=c)}}} {n}" for c, n in sorted(restarts.items())]
    lines: list[str] = []
    for name, kind, help_text in METRICS:
        if series[name]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *series[name]]
    return "\n".join(lines) + "\n"


def _labels(**labels: str) -> str:
    return ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())


class Readiness:
    """The checks of ``/readyz``: NATS connected, database reachable, each consumer subscribed.

    Args:
        consumers: returns the consumers to check now (``skialith up`` replaces restarted ones).
        model: a read model engine to ask ``SELECT 1`` (not a consumer's own, which may be busy).
        extra: more checks, each returning ``None`` when fine or the reason it is not.
    """

    def __init__(
        self,
        consumers: Callable[[], Sequence[Consumer[Any]]],
        model: ReadModel,
        extra: Mapping[str, Callable[[], str | None]] | None = None,
    ) -> None:
        self.consumers = consumers
        self.model = model
        self.extra = dict(extra or {})
        self._database: tuple[float, str | None] = (0.0, None)

    async def _database_check(self) -> str | None:
        at, reason = self._database
        if time.monotonic() - at < READY_CACHE:
            return reason
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                async with self.model.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            reason = None
        except TimeoutError:
            reason = f"the database does not answer within {READY_TIMEOUT} s"
        except Exception as exc:
            reason = f"the database is unreachable ({describe(exc)})"
        self._database = (time.monotonic(), reason)
        return reason

    async def check(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check: "ok" or the reason it failed})."""
        checks: dict[str, str | None] = {}
        for name, check in self.extra.items():
            checks[name] = check()
        consumers = self.consumers()
        if not consumers:
            checks["consumers"] = "not started"
        for c in consumers:
            checks[f"{c.durable} nats"] = None if c.connected else "not connected to NATS"
            checks[f"{c.durable} subscribed"] = (
                None if c.subscribed else "its durable consumer is not subscribed (starting, or waiting)"
            )
        checks["database"] = await self._database_check()
        ready = all(reason is None for reason in checks.values())
        return ready, {name: reason or "ok" for name, reason in checks.items()}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """Serves ``GET /metrics`` on ``host:port`` with the text ``collect()`` returns.

    Also ``GET /healthz`` and, if ``ready`` is given, ``GET /readyz`` (see the module docstring).

    Args:
        collect: coroutine function returning the exposition text.
        host: address to listen on.
        port: TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
        ready: coroutine function returning (ready, checks), e.g. :meth:`Readiness.check`.
    """

    def __init__(
        self,
        collect: Callable[[], Awaitable[str]],
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        ready: Callable[[], Awaitable[tuple[bool, dict[str, str]]]] | None = None,
    ) -> None:
        self.collect = collect
        self.ready = ready
        self.started = time.monotonic()
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The listening port (the real one once started)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}/metrics"

    async def start(self) -> None:
        """Listen. Raises ``OSError`` when the port is taken."""
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.info("serving Prometheus metrics on %s", self.url)

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            if len(head) > _MAX_HEAD:
                return
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            content_type = CONTENT_TYPE
            if method not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", "only GET is supported\n"
            elif path == "/metrics":
                status, body = "200 OK", await self.collect()
            elif path == "/healthz":
                content_type = "application/json"
                uptime = round(time.monotonic() - self.started, 3)
                status, body = "200 OK", json.dumps({"status": "alive", "uptime": uptime}) + "\n"
            elif path == "/readyz" and self.ready is not None:
                content_type = "application/json"
                ready, checks = await self.ready()
                status = "200 OK" if ready else "503 Service Unavailable"
                body = json.dumps({"status": "ready" if ready else "not ready", "checks": checks}) + "\n"
            else:
                status, body = "404 Not Found", "see /metrics, /healthz and /readyz\n"
            data = body.encode("utf-8")
            writer.write(
                (
                    f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")
            )
            if method != "HEAD":
                writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:
            logger.exception("metrics request failed")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
