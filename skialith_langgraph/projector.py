"""The projector: a durable JetStream pull consumer that materialises the log into the read model.

Each fetched batch is applied in one database transaction that also advances the projection
watermark; the batch is acknowledged only after the commit. A redelivered message (after a crash
between commit and ack) is at or below the watermark and is skipped, and every write is an
idempotent upsert, so nothing is applied twice and nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .codec import Msg, loads
from .config import Settings
from .errors import CodecError, SkialithError
from .log import Header, Log
from .readmodel import PROJECTION, ReadModel
from .readmodel.apply import apply_messages, watermark

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
DEFAULT_FETCH_TIMEOUT = 1.0  # seconds a fetch waits when the stream is idle
RETRY_MAX = 5.0  # seconds between attempts while the database is down


@dataclass(slots=True)
class ProjectorStats:
    """Progress, for logs and metrics."""

    applied: int = 0  # messages applied
    batches: int = 0
    last_seq: int = 0  # watermark after the last commit
    stream_last_seq: int = 0
    failures: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def lag(self) -> int:
        return max(0, self.stream_last_seq - self.last_seq)


class Projector:
    """Log -> read model. Several replicas (distinct ``replica`` ids) may run at once.

    Example:
        >>> projector = Projector(Settings())  # doctest: +SKIP
        >>> await projector.start()            # doctest: +SKIP
        >>> await projector.stop()             # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        name: str = PROJECTION,
        replica: str = "0",
        batch_size: int = DEFAULT_BATCH_SIZE,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.replica = replica
        self.name = name
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.stats = ProjectorStats()
        self._log: Log | None = None
        self._model: ReadModel | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def durable(self) -> str:
        """Each replica has its own durable consumer over the whole stream; the watermark row lock
        makes them take turns, so any number may run (for availability, not throughput)."""
        return f"skialith-projector-{self.name}-{self.replica}"

    async def open(self) -> None:
        """Connect to NATS and the database, ensure the stream, the tables and the consumer."""
        if self._log is None:
            self._log = await Log.open(self.settings)
        await self._log.ensure_stream()
        if self._model is None:
            self._model = ReadModel.from_url(
                self.settings.database_url, connect_timeout=self.settings.connect_timeout
            )
        await self._model.setup()

    async def close(self) -> None:
        if self._log is not None:
            await self._log.close()
            self._log = None
        if self._model is not None:
            await self._model.close()
            self._model = None

    async def start(self) -> None:
        """Open, then run in a task on the current loop until :meth:`stop`."""
        await self.open()
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(), name=self.durable)

    async def stop(self) -> None:
        """Finish the batch in hand, then stop and close (for SIGTERM)."""
        self._stopping.set()
        try:
            if self._task is not None:
                await self._task
        finally:
            self._task = None
            await self.close()

    @property
    def running(self) -> bool:
        """True while the task started by :meth:`start` runs."""
        return self._task is not None and not self._task.done()

    async def wait(self) -> None:
        """Wait until the task started by :meth:`start` ends; re-raises what ended it."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def run(self) -> None:
        """Consume until stopped. Database outages are retried with backoff; nothing is acked early."""
        await self.open()
        assert self._log is not None and self._model is not None
        log, model = self._log, self._model
        # The database watermark, not the consumer's ack floor, says where to resume: a batch that a
        # killed projector fetched but never committed would otherwise be acked along with the next
        # batch (AckPolicy.ALL) and never applied. So the consumer is recreated at watermark + 1.
        start = await self._resume_point(model)
        try:
            await log.js.delete_consumer(self.settings.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_wait=60.0,
            max_ack_pending=max(10 * self.batch_size, 10_000),
            filter_subject=log.subjects.all,
        )
        psub = await log.js.pull_subscribe(
            log.subjects.all, durable=self.durable, stream=self.settings.stream, config=config
        )
        logger.info("projector %s consuming %s from %s", self.durable, self.settings.stream, log.url)
        # the next batch is fetched and decoded while the current one commits
        batches: asyncio.Queue[tuple[list[tuple[int, Msg]], Any]] = asyncio.Queue(maxsize=2)
        fetcher = asyncio.create_task(self._fetch(log, psub, batches), name=f"{self.durable}-fetch")
        last_report = time.monotonic()
        try:
            while not self._stopping.is_set():
                get = asyncio.ensure_future(batches.get())
                stop = asyncio.ensure_future(self._stopping.wait())
                done, _ = await asyncio.wait({get, stop, fetcher}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    stop.cancel()
                    if fetcher in done:
                        fetcher.result()  # re-raise what ended the fetcher
                    continue
                stop.cancel()
                decoded, last_msg = get.result()
                last = last_msg.metadata
                top = await self._commit(model, decoded, last.sequence.stream)
                await last_msg.ack()
                self.stats.batches += 1
                self.stats.applied += len(decoded)
                self.stats.last_seq = max(self.stats.last_seq, top, last.sequence.stream)
                self.stats.stream_last_seq = last.sequence.stream + last.num_pending
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    logger.info(
                        "projector %s: watermark=%d lag=%d applied=%d batches=%d",
                        self.durable,
                        self.stats.last_seq,
                        self.stats.lag,
                        self.stats.applied,
                        self.stats.batches,
                    )
                logger.debug("applied batch of %d up to seq %d", len(decoded), last.sequence.stream)
        finally:
            # nats-py's fetch can swallow a cancellation (it turns it into a timeout), so the fetcher
            # also stops on the flag, and we never wait for it longer than one fetch
            self._stopping.set()
            fetcher.cancel()
            await asyncio.wait({fetcher}, timeout=self.fetch_timeout + 1.0)

    async def _fetch(
        self, log: Log, psub: Any, batches: asyncio.Queue[tuple[list[tuple[int, Msg]], Any]]
    ) -> None:
        """Fetch and decode batches in stream order; unacked ones are redelivered after a crash."""
        while not self._stopping.is_set():
            try:
                msgs = await psub.fetch(self.batch_size, timeout=self.fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except (nats.errors.ConnectionClosedError, nats.js.errors.Error, nats.errors.Error) as exc:
                logger.warning("projector fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                continue
            decoded: list[tuple[int, Msg]] = []
            for m in msgs:
                headers = m.headers or {}
                if headers.get(Header.PART.value):
                    continue
                seq = m.metadata.sequence.stream
                try:
                    body = await log.join_parts(headers, m.data)
                    decoded.append((seq, loads(body)))
                except (CodecError, SkialithError) as exc:
                    logger.error("skipping undecodable message seq=%d subject=%s: %s", seq, m.subject, exc)
            await batches.put((decoded, msgs[-1]))

    async def _resume_point(self, model: ReadModel) -> int:
        """The first stream sequence not yet in the read model (waits while the database is down)."""
        delay = 0.05
        while True:
            try:
                async with model.connect() as conn:
                    return await watermark(conn, self.name) + 1
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                logger.warning("projector cannot read its watermark (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _commit(self, model: ReadModel, decoded: list[tuple[int, Msg]], upto: int) -> int:
        """Apply one batch in one transaction, retrying while the database is unavailable."""
        delay = 0.05
        while True:
            try:
                async with model.begin() as conn:
                    return await apply_messages(conn, decoded, name=self.name, upto=upto)
            except Exception as exc:
                self.stats.failures += 1
                if self._stopping.is_set():
                    raise
                logger.warning("projector could not commit a batch (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
