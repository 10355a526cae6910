"""The consumer loop shared by the projector and the trace ingest: log -> one table set, exactly once.

Each fetched batch is applied in one database transaction that also advances a watermark row of
``skialith_projection``; the batch is acknowledged only after the commit. A redelivered message
(after a crash between commit and ack) is at or below the watermark and is skipped, and every
write is an idempotent upsert, so nothing is applied twice and nothing is lost. A delivery that
never arrived (the consumer numbers them) is not acked past: the consumer is recreated at the
watermark. A large message whose parts cannot be read for a while is retried, not skipped.

A subclass names its durable consumer and watermark, turns a decoded message into the item it
applies (:meth:`Consumer._item`) and applies a batch of items (:meth:`Consumer._apply`).

Throughput: the next batch is fetched and decoded while one commits; see :class:`Puller` and
``readmodel.apply.Batch`` for where the time per message went and what was done about it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncConnection

from .codec import Msg, loads
from .config import Settings
from .errors import CodecError, LogError, SkialithError
from .log import Header, Log, MissingPartError
from .readmodel import ReadModel
from .readmodel.apply import watermark

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

DEFAULT_BATCH_SIZE = 1000
DEFAULT_FETCH_TIMEOUT = 1.0  # seconds a fetch waits when the stream is idle
# seconds a batch smaller than batch_size waits for more before it commits: under a trickle of
# writes one transaction (with its fsync) per message costs the writers' cores more than the lag
DEFAULT_LINGER = 0.005
RETRY_MAX = 5.0  # seconds between attempts while the database is down
MAX_BATCH_BYTES = 64 * 1024 * 1024  # bytes one fetch may bring (at least two of the largest messages)
FETCH_GRACE = 1.0  # seconds a fetch waits past its expiry for the server's end-of-request status
# 409 statuses that only end a pull request; others (consumer deleted, ...) refuse it
REQUEST_ENDS = frozenset({"Batch Completed", "Message Size Exceeds MaxBytes", "Leadership Change"})


def _ack_tokens(reply: str) -> list[str]:
    """The tokens of a delivery's ack subject, without the domain and account hash if any.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``, or
    with ``<domain>.<account hash>`` after ``ACK`` and a random token at the end.
    """
    t = reply.split(".")
    if len(t) == 9 and t[0] == "$JS":
        return t
    if len(t) >= 11 and t[0] == "$JS":
        return t[:2] + t[4:11]
    raise LogError(f"not a JetStream delivery: reply subject {reply!r}")


def _sequences(reply: str) -> tuple[int, int]:
    """(stream sequence, consumer sequence) of a delivery, from its ack subject (see :func:`_ack_tokens`).

    nats-py's ``Msg.metadata`` parses the same but builds a datetime and three objects: ~10 us a message.
    """
    t = reply.split(".")
    if len(t) == 9 and t[0] == "$JS":
        return int(t[5]), int(t[6])
    if len(t) >= 11 and t[0] == "$JS":
        return int(t[7]), int(t[8])
    raise LogError(f"not a JetStream delivery: reply subject {reply!r}")


def _timestamp_ns(reply: str) -> int:
    """When the server stored a delivered message, in epoch nanoseconds, from its ack subject."""
    return int(_ack_tokens(reply)[7])


class _PullRefused(Exception):
    """JetStream refused a pull request (the consumer was deleted, for instance)."""


class Puller:
    """Pull requests for one durable consumer, answered on a private inbox that a callback reads.

    nats-py's ``fetch`` takes each message with ``next_msg``: a uuid, a task and a ``wait_for``
    per message, ~60 us (the whole projector now spends ~100 us of CPU per checkpoint). Here a
    message costs a list append. A request is ``no_wait`` with an expiry: the server waits up to
    the expiry for a first message, sends what is available up to ``batch`` messages and
    ``max_bytes``, then ends the request with a status (404 no more messages, 408 expired, 409
    batch completed or size reached), so a fetch returns as soon as the available messages have
    arrived.

    Messages come in stream order on one inbox, so ones that arrive after their fetch gave up
    (their end was lost in a reconnect) are returned by the next fetch, still in order.
    """

    def __init__(self, nc: Client, stream: str, durable: str, *, max_bytes: int = MAX_BATCH_BYTES) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        # a single message (at most max_payload, plus headers) must fit in a fetch
        self._max_bytes = max(max_bytes, 2 * nc.max_payload + 65536)
        self._msgs: list[NatsMsg] = []
        self._wanted = 0  # data messages the open requests may still deliver
        self._ended = asyncio.Event()
        self._refused: str | None = None
        self._sub: Subscription | None = None

    async def start(self) -> None:
        # a message dropped here (slow consumer) shows as a gap in the consumer sequence
        self._sub = await self._nc.subscribe(
            self._inbox,
            cb=self._on_msg,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=4 * self._max_bytes,
        )

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except nats.errors.Error:  # the connection is closed or reconnecting: nothing to undo
                pass

    async def _on_msg(self, msg: NatsMsg) -> None:
        headers = msg.headers
        # deliveries carry an ack subject as reply; the server's statuses do not
        status = headers.get("Status") if headers is not None and not msg.reply else None
        if headers is None or status is None:
            self._msgs.append(msg)
            self._wanted -= 1
            if self._wanted <= 0:
                self._ended.set()
        elif status != "100":  # 100: an idle heartbeat
            description = headers.get("Description", "")
            if status not in ("404", "408") and description not in REQUEST_ENDS:
                self._refused = f"{status} {description}"
            self._wanted = 0
            self._ended.set()

    async def fetch(self, batch: int, timeout: float) -> list[NatsMsg]:
        """Up to ``batch`` messages (more if late ones came in), waiting up to ``timeout`` for the first.

        Raises:
            _PullRefused: the server refused the request and sent nothing.
        """
        if len(self._msgs) < batch:
            self._wanted = batch - len(self._msgs)
            self._ended.clear()
            request = {
                "batch": self._wanted,
                "max_bytes": self._max_bytes,
                "expires": int(timeout * 1e9),
                "no_wait": True,
            }
            await self._nc.publish(self._subject, json.dumps(request).encode(), reply=self._inbox)
            try:
                await asyncio.wait_for(self._ended.wait(), timeout + FETCH_GRACE)
            except TimeoutError:
                pass  # the end of the request was lost: ask again, late messages stay in order
        msgs, self._msgs = self._msgs, []
        refused, self._refused = self._refused, None
        if refused and not msgs:
            raise _PullRefused(f"JetStream refused a pull request on {self._subject!r}: {refused}")
        return msgs


@dataclass(slots=True)
class ConsumerStats:
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


class Consumer(Generic[Item]):
    """A durable pull consumer over the whole stream that applies each batch in one transaction.

    Subclasses set :attr:`role` (for logs) and define :attr:`durable`, :attr:`watermark_name`,
    :meth:`_item` and :meth:`_apply`. Several replicas (distinct durables, one watermark) may run
    at once: the watermark row lock makes their batches take turns, in stream order.
    """

    role = "consumer"

    def __init__(
        self,
        settings: Settings | None,
        *,
        name: str,
        replica: str,
        batch_size: int,
        fetch_timeout: float,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.name = name
        self.replica = replica
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.linger = linger
        self.stats = ConsumerStats()
        self._log: Log | None = None
        self._model: ReadModel | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def durable(self) -> str:
        raise NotImplementedError

    @property
    def watermark_name(self) -> str:
        """The row of ``skialith_projection`` that holds this consumer's watermark."""
        raise NotImplementedError

    def _wants(self, subject: str) -> bool:
        """Whether messages on ``subject`` are applied (the others only advance the watermark)."""
        return True

    def _item(self, seq: int, reply: str, msg: Msg) -> Item:
        """What :meth:`_apply` takes for the message at stream sequence ``seq`` (``reply``: ack subject)."""
        raise NotImplementedError

    async def _apply(self, conn: AsyncConnection, items: list[Item], upto: int) -> int:
        """Apply ``items`` in the caller's transaction and advance the watermark to ``upto`` at least.

        Returns:
            The highest sequence applied.
        """
        raise NotImplementedError

    async def open(self) -> None:
        """Connect to NATS and the database, ensure the stream and the tables. Idempotent."""
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
        logger.info("%s %s consuming %s from %s", self.role, self.durable, self.settings.stream, log.url)
        first, delay = True, 0.05
        while not self._stopping.is_set():
            # The database watermark, not the consumer's ack floor, says where to resume: a batch
            # that a killed consumer fetched but never committed would otherwise be acked along
            # with the next batch (AckPolicy.ALL) and never applied. So the consumer is recreated at
            # watermark + 1, at start and whenever a delivery went missing (see _fetch).
            try:
                puller = await self._subscribe(log, await self._resume_point(model))
            except nats.errors.Error as exc:
                if first or self._stopping.is_set():
                    raise
                logger.warning("%s cannot resubscribe (%s); retrying in %.2f s", self.role, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            first, delay = False, 0.05
            try:
                await self._consume(log, model, puller)
            finally:
                await puller.close()

    async def _subscribe(self, log: Log, start: int) -> Puller:
        """(Re)create the durable consumer at stream sequence ``start`` and a puller for it."""
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
        await log.js.add_consumer(self.settings.stream, config)
        puller = Puller(log.nc, self.settings.stream, self.durable)
        await puller.start()
        return puller

    async def _consume(self, log: Log, model: ReadModel, puller: Puller) -> None:
        """Commit fetched batches until stopped, or until the fetcher asks for a new consumer."""
        # the next batch is fetched and decoded while the current one commits; None: resubscribe
        batches: asyncio.Queue[tuple[list[Item], NatsMsg] | None] = asyncio.Queue(maxsize=2)
        fetcher = asyncio.create_task(self._fetch(log, puller, batches), name=f"{self.durable}-fetch")
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
                batch = get.result()
                if batch is None:
                    return
                items, last_msg = batch
                # small batches fetched while the last commit ran, or within ``linger``, go in this
                # one transaction: under a light load a message waits for one commit, not for one
                # per batch queued, and a trickle does not cost a transaction per message
                resubscribe = False
                deadline = time.monotonic() + self.linger
                while len(items) < self.batch_size:
                    if not batches.empty():
                        more = batches.get_nowait()
                    else:
                        left = deadline - time.monotonic()
                        if left <= 0 or self._stopping.is_set():
                            break
                        try:
                            more = await asyncio.wait_for(batches.get(), left)
                        except TimeoutError:
                            break
                    if more is None:
                        resubscribe = True
                        break
                    items, last_msg = items + more[0], more[1]
                last = last_msg.metadata
                top = await self._commit(model, items, last.sequence.stream)
                await last_msg.ack()
                self.stats.batches += 1
                self.stats.applied += len(items)
                self.stats.last_seq = max(self.stats.last_seq, top, last.sequence.stream)
                self.stats.stream_last_seq = last.sequence.stream + last.num_pending
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    logger.info(
                        "%s %s: watermark=%d lag=%d applied=%d batches=%d",
                        self.role,
                        self.durable,
                        self.stats.last_seq,
                        self.stats.lag,
                        self.stats.applied,
                        self.stats.batches,
                    )
                logger.debug(
                    "%s applied batch of %d up to seq %d", self.role, len(items), last.sequence.stream
                )
                if resubscribe:
                    return
        finally:
            fetcher.cancel()
            await asyncio.wait({fetcher}, timeout=self.fetch_timeout + FETCH_GRACE + 1.0)

    async def _fetch(
        self, log: Log, puller: Puller, batches: asyncio.Queue[tuple[list[Item], NatsMsg] | None]
    ) -> None:
        """Fetch and decode batches in stream order; unacked ones are redelivered after a crash.

        Deliveries of one consumer are numbered without gaps. A gap means a message was lost on
        the way (a reconnect, or a full client buffer); acking past it (AckPolicy.ALL) would drop
        it for good, so only the deliveries before it are passed on, then a None that asks for a
        new consumer at the watermark.
        """
        expected = 1  # the consumer sequence of the next delivery
        part, parts = Header.PART.value, Header.PARTS.value
        item = self._item
        while not self._stopping.is_set():
            try:
                msgs = await puller.fetch(self.batch_size, self.fetch_timeout)
            except _PullRefused as exc:
                logger.warning("%s %s: %s; resubscribing", self.role, self.durable, exc)
                await asyncio.sleep(0.5)
                await batches.put(None)
                return
            except (nats.errors.ConnectionClosedError, nats.errors.Error) as exc:
                logger.warning("%s fetch failed (%s); retrying", self.role, exc)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                continue
            decoded: list[Item] = []
            for i, m in enumerate(msgs):
                seq, delivery = _sequences(m.reply)
                if delivery != expected:
                    logger.warning(
                        "%s %s: delivery %d arrived when %d was due (a message was lost on the "
                        "way); resubscribing at the watermark",
                        self.role,
                        self.durable,
                        delivery,
                        expected,
                    )
                    if i:  # the deliveries before the gap are whole
                        await batches.put((decoded, msgs[i - 1]))
                    await batches.put(None)
                    return
                expected += 1
                if not self._wants(m.subject):
                    continue
                headers = m.headers
                body = m.data
                if headers:
                    if headers.get(part):
                        continue
                    if headers.get(parts):
                        try:
                            joined = await self._join_parts(log, headers, body, seq)
                        except MissingPartError as exc:
                            logger.error("%s skips message seq=%d: %s", self.role, seq, exc)
                            continue
                        if joined is None:
                            return  # stopping: the batch stays unacked, for the next start
                        body = joined
                try:
                    decoded.append(item(seq, m.reply, loads(body)))
                except CodecError as exc:
                    logger.error(
                        "%s skips undecodable message seq=%d subject=%s: %s", self.role, seq, m.subject, exc
                    )
            await batches.put((decoded, msgs[-1]))

    async def _join_parts(self, log: Log, headers: dict[str, str], body: bytes, seq: int) -> bytes | None:
        """The whole body of a message sent in parts. Retried while NATS does not answer (skipping
        the message would lose it for good); ``None`` if stopped meanwhile.

        Raises:
            MissingPartError: a part is gone from the stream (its thread was deleted since).
        """
        delay = 0.05
        while True:
            try:
                return await log.join_parts(headers, body)
            except MissingPartError:
                raise
            except SkialithError as exc:
                if self._stopping.is_set():
                    return None
                logger.warning("%s cannot read the parts of seq=%d (%s); retrying", self.role, seq, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _resume_point(self, model: ReadModel) -> int:
        """The first stream sequence not yet in the read model (waits while the database is down)."""
        delay = 0.05
        while True:
            try:
                async with model.connect() as conn:
                    return await watermark(conn, self.watermark_name) + 1
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                logger.warning("%s cannot read its watermark (%s); retrying in %.2f s", self.role, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _commit(self, model: ReadModel, items: list[Item], upto: int) -> int:
        """Apply one batch in one transaction, retrying while the database is unavailable."""
        delay = 0.05
        while True:
            try:
                async with model.begin() as conn:
                    return await self._apply(conn, items, upto)
            except Exception as exc:
                self.stats.failures += 1
                if self._stopping.is_set():
                    raise
                logger.warning("%s could not commit a batch (%s); retrying in %.2f s", self.role, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
