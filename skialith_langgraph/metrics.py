"""Projector progress for logs and Prometheus: watermark, lag, and a tiny ``GET /metrics`` endpoint.

The watermark is read from the read model (so it is right after a restart and across replicas),
the stream's last sequence from JetStream; the lag is their difference, in messages. The endpoint
is plain ``asyncio.start_server`` speaking just enough HTTP/1.0 for a Prometheus scrape.

Example:
    probe = ProgressProbe(log, model, projector)
    server = MetricsServer(lambda: render_metrics(projector, probe), port=9464)
    await server.start()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .log import Log
from .projector import Projector
from .readmodel import ReadModel

__all__ = ["MetricsServer", "Progress", "ProgressProbe", "render_metrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_HOST = "127.0.0.1"
REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request head
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
        projector: the projector (its in-process watermark counts when it is ahead of the table's).
    """

    def __init__(self, log: Log, model: ReadModel, projector: Projector) -> None:
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
                watermark = await self.model.watermark(conn, self.projector.name)
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


_METRICS: tuple[tuple[str, str, str], ...] = (
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
)


async def render_metrics(projector: Projector, probe: ProgressProbe) -> str:
    """The projector's metrics in the Prometheus text format (version 0.0.4)."""
    progress = await probe.sample()
    stats = projector.stats
    values = {
        "skialith_projector_applied_total": stats.applied,
        "skialith_projector_batches_total": stats.batches,
        "skialith_projector_failures_total": stats.failures,
        "skialith_projector_dead_letters_total": stats.dead_letters,
        "skialith_projector_watermark": progress.watermark,
        "skialith_projector_lag_messages": progress.lag,
    }
    labels = ",".join(
        f'{key}="{_escape(value)}"'
        for key, value in (
            ("stream", projector.settings.stream),
            ("projection", projector.name),
            ("replica", projector.replica),
        )
    )
    lines: list[str] = []
    for name, kind, help_text in _METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {values[name]}"]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """Serves ``GET /metrics`` on ``host:port`` with the text ``collect()`` returns.

    Args:
        collect: coroutine function returning the exposition text.
        host: address to listen on.
        port: TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    """

    def __init__(
        self, collect: Callable[[], Awaitable[str]], *, host: str = DEFAULT_HOST, port: int = 0
    ) -> None:
        self.collect = collect
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
            if method not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", "only GET is supported\n"
            elif path != "/metrics":
                status, body = "404 Not Found", "metrics are at /metrics\n"
            else:
                status, body = "200 OK", await self.collect()
            data = body.encode("utf-8")
            writer.write(
                (
                    f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
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
