"""The consumer loop shared by the projector and the trace ingest: log -> one table set, exactly once.

Each fetched batch is applied in one database transaction that also advances a watermark row of
``skialith_projection``; the batch is acknowledged only after the commit. A redelivered message
(after a crash between commit and ack) is at or below the watermark and is skipped, and every
write is an idempotent upsert, so nothing is applied twice and nothing is lost. A delivery that
never arrived (the consumer numbers them) is not acked past: the consumer is recreated at the
watermark. A large message whose parts cannot be read for a while is retried, not skipped.

A message that can never be applied (it does not decode, its parts are gone, or the database
refuses it for a reason other than being unavailable) is set aside, not retried forever: it gets
a row in ``skialith_dead_letters`` in the transaction that moves the watermark past it, one log
line (without its data) and a count (``stats.dead_letters``), and the consumer moves on. When a
batch fails that way, its messages are applied one by one, each in its own transaction, so that
only the culprit is set aside. Transient errors (connection lost, server gone, lock wait timeout,
deadlock, database down) are retried with backoff, as before, and logged once per outage.

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
import sqlalchemy.exc
from nats.aio.client import Client
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncConnection

from ._loop import cancel_until_done
from .codec import Msg, loads
from .config import Settings
from .errors import CodecError, LogError, ReadModelError, SkialithError
from .identity import StreamIdentity, StreamMismatchError, claim
from .log import Header, Log, MissingPartError
from .ownership import DEFAULT_LEASE_TTL, Lease
from .readmodel import DatabaseUnreachableError, ReadModel
from .readmodel.apply import ALIVE_EVERY, clear_alive, lock_watermark, record_alive, upsert, watermark
from .readmodel.tables import dead_letters

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

DEFAULT_BATCH_SIZE = 1000
DEFAULT_FETCH_TIMEOUT = 1.0  # seconds a fetch waits when the stream is idle
# seconds a batch smaller than batch_size waits for more before it commits: under a trickle of
# writes one transaction (with its fsync) per message costs the writers' cores more than the lag
DEFAULT_LINGER = 0.005
RETRY_MAX = 5.0  # seconds between attempts while the database is down
# what a JetStream cluster electing a leader, or without its quorum, answers an API request with
_ELECTING = (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError)
MAX_BATCH_BYTES = 64 * 1024 * 1024  # bytes one fetch may bring (at least two of the largest messages)
FETCH_GRACE = 1.0  # seconds a fetch waits past its expiry for the server's end-of-request status
# 409 statuses that only end a pull request; others (consumer deleted, ...) refuse it
REQUEST_ENDS = frozenset({"Batch Completed", "Message Size Exceeds MaxBytes", "Leadership Change"})
REASON_MAX = 200  # characters of an error kept in a log line or a dead letter's reason

# MySQL/MariaDB server errors that say the database is unavailable or busy, not that a message is
# bad (client errors, 2000-2999, are all about the connection): retried, never dead-lettered
TRANSIENT_MYSQL_ERRORS = frozenset(
    {
        1021,  # disk full
        1037,  # out of memory
        1038,  # out of sort memory
        1040,  # too many connections
        1041,  # out of memory
        1044,  # access denied to the database
        1045,  # access denied
        1049,  # unknown database
        1053,  # server shutdown in progress
        1081,  # cannot create a socket
        1114,  # the table is full
        1129,  # host blocked
        1130,  # host not allowed
        1146,  # a table does not exist (dropped by hand: the schema is set up again at start)
        1152,  # aborted connection
        1154,  # read error from the connection pipe
        1155,  # fcntl() error
        1156,  # packets out of order
        1157,  # could not uncompress a packet
        1158,  # read error
        1159,  # read timeout
        1160,  # write error
        1161,  # write timeout
        1180,  # commit failed
        1181,  # rollback failed
        1203,  # too many connections of a user
        1205,  # lock wait timeout
        1213,  # deadlock
        1226,  # a user's resource limit
        1290,  # server running with --read-only
        1317,  # query interrupted
        1614,  # transaction branch rolled back: deadlock
        1637,  # too many active transactions
        1792,  # read-only transaction
        1836,  # running in read-only mode
        1927,  # connection killed
        1969,  # statement timeout (MariaDB)
        3024,  # statement timeout (MySQL)
        4031,  # disconnected for inactivity
    }
)


def _root(exc: BaseException) -> BaseException:
    """The driver's exception behind a SQLAlchemy one, else ``exc`` itself."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def _mysql_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and type(args[0]) is int else None


def is_transient(exc: BaseException) -> bool:
    """Whether a failed apply may succeed if tried again as it is (the database was unavailable,
    busy or locked), rather than never (the message holds something the database refuses)."""
    if isinstance(exc, ReadModelError | OSError | TimeoutError | sqlalchemy.exc.TimeoutError):
        return True
    if isinstance(exc, sqlalchemy.exc.DisconnectionError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        root = _root(exc)
        if isinstance(root, OSError | TimeoutError):
            return True
        code = _mysql_code(root)
        if code is not None:
            return code in TRANSIENT_MYSQL_ERRORS or 2000 <= code < 3000
        # SQLite (database locked, disk I/O error, unable to open the file) and unknown drivers:
        # an operational or interface error is about the database, not the message
        return isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
    return isinstance(_root(exc), OSError | TimeoutError)


def describe(exc: BaseException) -> str:
    """``Class: first line of the message``, at most :data:`REASON_MAX` characters.

    SQLAlchemy's messages carry the statement and its parameters (the whole rendered INSERT, user
    data included); the driver's error behind it does not, so that one is described.
    """
    root = _root(exc)
    name = type(exc).__name__ if root is exc else f"{type(exc).__name__} ({type(root).__name__})"
    text = str(root).strip().split("\n", 1)[0]
    if len(text) > REASON_MAX:
        text = text[: REASON_MAX - 3] + "..."
    return f"{name}: {text}" if text else name


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


@dataclass(slots=True)
class DeadLetter:
    """A message set aside: where it is on the stream and why, never what it holds."""

    seq: int
    subject: str
    reason: str
    size: int


@dataclass(slots=True)
class _Fetched(Generic[Item]):
    """Decoded deliveries in stream order: the items, what each came as, the ones set aside."""

    items: list[Item]
    info: list[tuple[int, str, int]]  # (seq, subject, size) of each item
    dead: list[DeadLetter]
    last: NatsMsg  # the last delivery (acked after the commit)

    def extend(self, more: _Fetched[Item]) -> None:
        self.items += more.items
        self.info += more.info
        self.dead += more.dead
        self.last = more.last


class _Outage:
    """One warning when something starts failing, DEBUG lines while it goes on, and one line with
    the count and duration when it works again (a database outage used to log every attempt)."""

    def __init__(self, role: str, what: str) -> None:
        self.role, self.what = role, what
        self.since: float | None = None
        self.attempts = 0

    def failed(self, exc: BaseException, delay: float) -> None:
        self.attempts += 1
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "%s cannot %s (%s); retrying with backoff (up to %.0f s) until it works",
                self.role,
                self.what,
                describe(exc),
                RETRY_MAX,
            )
        else:
            logger.debug("%s cannot %s (%s); retrying in %.2f s", self.role, self.what, describe(exc), delay)

    def recovered(self) -> None:
        if self.since is not None:
            logger.warning(
                "%s can %s again, after %d failed attempts in %.1f s",
                self.role,
                self.what,
                self.attempts,
                time.monotonic() - self.since,
            )
        self.since, self.attempts = None, 0


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
    dead_letters: int = 0  # messages set aside in skialith_dead_letters by this process
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
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.lease_ttl = lease_ttl
        self._lease: Lease | None = None
        self._subscribed = False
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
        self._stream: StreamIdentity | None = None  # the stream the read model was checked against
        self._commit_outage = _Outage(self.role, "commit a batch")
        self._resume_outage = _Outage(self.role, "read its watermark")
        self._fetch_outage = _Outage(self.role, "fetch from the stream")
        self._alive_at: float | None = None  # the last time this consumer said it is alive

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
        if self._lease is None:
            # before the database: a second process with this replica id is refused even while it is down
            lease = Lease(
                self._log.js,
                self.settings.stream,
                self.durable,
                role=self.role,
                replica=self.replica,
                ttl=self.lease_ttl,
                replicas=self.settings.replicas,
            )
            await lease.acquire()
            self._lease = lease
        if self._model is None:
            self._model = ReadModel.from_url(
                self.settings.database_url, connect_timeout=self.settings.connect_timeout
            )
        await self._setup_model(self._model)
        # refuse a read model filled from another stream before anything resumes at its watermark
        self._stream = await claim(self._model, self._log)

    async def _setup_model(self, model: ReadModel) -> None:
        """Create or migrate the tables, waiting with backoff while the database server does not
        answer (a projector started before its database, as a service manager may, waits for it
        instead of exiting); a wrong password or an unknown database fails at once."""
        outage, delay = _Outage(self.role, f"reach its database at {model.url!r}"), 0.05
        while True:
            try:
                await model.setup()
            except DatabaseUnreachableError as exc:
                if self._stopping.is_set():
                    raise
                outage.failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            outage.recovered()
            return

    async def close(self) -> None:
        await self._release_lease()
        if self._log is not None:
            await self._log.close()
            self._log = None
        if self._model is not None:
            await self._model.close()
            self._model = None

    async def start(self) -> None:
        """Open, then run in a task on the current loop until :meth:`stop`."""
        await self.open()
        assert self._model is not None
        await self._beat(self._model)  # readers wait for it from now on, not from its first batch
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

    @property
    def subscribed(self) -> bool:
        """Whether the durable consumer is subscribed now (for ``/readyz``)."""
        return self._subscribed and self.running

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up now (for ``/readyz``)."""
        return self._log is not None and self._log.nc.is_connected

    async def run(self) -> None:
        """Consume until stopped, renewing this replica's lease meanwhile.

        Raises:
            LeaseLostError: another process took the lease (the batch in hand is finished first).
        """
        await self.open()
        assert self._lease is not None
        keeper = asyncio.create_task(self._lease.keep(), name=f"{self.durable}-lease")
        body = asyncio.create_task(self._run())
        try:
            await asyncio.wait({keeper, body}, return_when=asyncio.FIRST_COMPLETED)
            if keeper.done() and not body.done():
                self._stopping.set()  # the lease is lost: finish the batch in hand, then end
                await asyncio.wait({body})
                keeper.result()
            await body
        finally:
            await cancel_until_done(keeper, body)
            for task in (keeper, body):
                if not task.cancelled():
                    task.exception()  # retrieved: what counts was raised above
            if not self._stopping.is_set():
                # ended on its own error: give the lease back now, so that a replacement (``up``'s
                # restart, another host) starts at once instead of being refused until it expires
                await self._release_lease()

    async def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None and self._log is not None:
            await lease.release()

    async def _run(self) -> None:
        """Consume until stopped. Database outages are retried with backoff; nothing is acked early."""
        assert self._log is not None and self._model is not None
        log, model = self._log, self._model
        logger.info("%s %s consuming %s from %s", self.role, self.durable, self.settings.stream, log.url)
        heartbeat = asyncio.create_task(self._heartbeat(model), name=f"{self.durable}-alive")
        try:
            await self._loop(log, model)
        finally:
            await cancel_until_done(heartbeat)  # a beat may be connecting: once may not be enough
            await self._said_stopped(model)

    async def _heartbeat(self, model: ReadModel) -> None:
        """Say in the read model that this consumer runs, every ALIVE_EVERY seconds, idle or not:
        readers wait for a consumer that runs, and read the log at once when none does."""
        while True:
            await self._beat(model)
            await asyncio.sleep(ALIVE_EVERY)

    async def _beat(self, model: ReadModel) -> None:
        at = time.time()
        try:
            async with asyncio.timeout(ALIVE_EVERY * 2), model.begin() as conn:
                await record_alive(conn, self.watermark_name, at)
            self._alive_at = at
        except Exception as exc:  # the database is down: the commit loop reports outages
            logger.debug("%s %s cannot record that it is alive: %s", self.role, self.durable, describe(exc))

    async def _said_stopped(self, model: ReadModel) -> None:
        """Take back this consumer's last heartbeat (another replica's later one stays)."""
        at, self._alive_at = self._alive_at, None
        if at is None:
            return
        try:
            async with asyncio.timeout(ALIVE_EVERY), model.begin() as conn:
                await clear_alive(conn, self.watermark_name, at)
        except Exception as exc:
            logger.debug("%s %s cannot record that it stopped: %s", self.role, self.durable, describe(exc))

    async def _loop(self, log: Log, model: ReadModel) -> None:
        """(Re)subscribe at the watermark and consume, until stopped."""
        first, delay = True, 0.05
        while not self._stopping.is_set():
            # The database watermark, not the consumer's ack floor, says where to resume: a batch
            # that a killed consumer fetched but never committed would otherwise be acked along
            # with the next batch (AckPolicy.ALL) and never applied. So the consumer is recreated at
            # watermark + 1, at start and whenever a delivery went missing (see _fetch).
            try:
                puller = await self._subscribe(log, await self._resume_point(log, model))
            except nats.errors.Error as exc:
                if self._stopping.is_set():
                    raise
                if first and not isinstance(exc, _ELECTING):
                    # any other error at start is a configuration error, and ends the consumer at
                    # once; a cluster electing a leader or without its quorum answers late or with
                    # a 503 ("temporarily unavailable"): waited out with backoff, as after start
                    # and as a database that does not answer yet
                    raise
                logger.warning("%s cannot subscribe (%s); retrying in %.2f s", self.role, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if not await self._same_stream(log):
                # created again between the check and the subscribe: check again before consuming
                await puller.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            first, delay = False, 0.05
            self._subscribed = True
            try:
                await self._consume(log, model, puller)
            finally:
                self._subscribed = False
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
        batches: asyncio.Queue[_Fetched[Item] | None] = asyncio.Queue(maxsize=2)
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
                # small batches fetched while the last commit ran, or within ``linger``, go in this
                # one transaction: under a light load a message waits for one commit, not for one
                # per batch queued, and a trickle does not cost a transaction per message
                resubscribe = False
                deadline = time.monotonic() + self.linger
                while len(batch.items) < self.batch_size:
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
                    batch.extend(more)
                last = batch.last.metadata
                top = await self._commit(model, batch, last.sequence.stream)
                await batch.last.ack()
                self.stats.batches += 1
                self.stats.applied += len(batch.items)
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
                    "%s applied batch of %d up to seq %d", self.role, len(batch.items), last.sequence.stream
                )
                if resubscribe:
                    return
        finally:
            fetcher.cancel()
            await asyncio.wait({fetcher}, timeout=self.fetch_timeout + FETCH_GRACE + 1.0)

    async def _fetch(self, log: Log, puller: Puller, batches: asyncio.Queue[_Fetched[Item] | None]) -> None:
        """Fetch and decode batches in stream order; unacked ones are redelivered after a crash.

        Deliveries of one consumer are numbered without gaps. A gap means a message was lost on
        the way (a reconnect, or a full client buffer); acking past it (AckPolicy.ALL) would drop
        it for good, so only the deliveries before it are passed on, then a None that asks for a
        new consumer at the watermark.

        A message that cannot be decoded (junk, a malformed ``Skialith-Parts`` header, parts gone
        from the stream) becomes a :class:`DeadLetter`, written when its batch commits.
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
                self._fetch_outage.failed(exc, 0.5)
                await asyncio.sleep(0.5)
                continue
            self._fetch_outage.recovered()
            if not msgs:
                continue
            decoded: list[Item] = []
            info: list[tuple[int, str, int]] = []
            dead: list[DeadLetter] = []
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
                        await batches.put(_Fetched(decoded, info, dead, msgs[i - 1]))
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
                        except (MissingPartError, CodecError, ValueError) as exc:
                            # a malformed header or parts gone for good: it will never decode
                            dead.append(DeadLetter(seq, m.subject, describe(exc), len(body)))
                            continue
                        if joined is None:
                            return  # stopping: the batch stays unacked, for the next start
                        body = joined
                try:
                    decoded.append(item(seq, m.reply, loads(body)))
                except CodecError as exc:
                    dead.append(DeadLetter(seq, m.subject, describe(exc), len(body)))
                    continue
                info.append((seq, m.subject, len(body)))
            await batches.put(_Fetched(decoded, info, dead, msgs[-1]))

    async def _join_parts(self, log: Log, headers: dict[str, str], body: bytes, seq: int) -> bytes | None:
        """The whole body of a message sent in parts. Retried while NATS does not answer (skipping
        the message would lose it for good); ``None`` if stopped meanwhile.

        Raises:
            MissingPartError: a part is gone from the stream (its thread was deleted since).
            CodecError, ValueError: the ``Skialith-Parts`` header is malformed.
        """
        delay = 0.05
        while True:
            try:
                return await log.join_parts(headers, body)
            except (MissingPartError, CodecError, ValueError):
                raise
            except SkialithError as exc:
                if self._stopping.is_set():
                    return None
                logger.warning("%s cannot read the parts of seq=%d (%s); retrying", self.role, seq, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _same_stream(self, log: Log) -> bool:
        """Whether the stream is still the one :meth:`_resume_point` checked the read model against."""
        try:
            return await log.identity(fresh=True) == self._stream
        except SkialithError as exc:
            logger.warning("%s cannot check its stream (%s)", self.role, exc)
            return False

    async def _resume_point(self, log: Log, model: ReadModel) -> int:
        """The first stream sequence not yet in the read model (waits while the database or the
        stream is missing), once the read model is known to be filled from this stream.

        Raises:
            StreamMismatchError: the read model was filled from another stream; its watermark
                means nothing here.
        """
        delay = 0.05
        while True:
            try:
                self._stream = await claim(model, log)
                async with model.connect() as conn:
                    found = await watermark(conn, self.watermark_name) + 1
                self._resume_outage.recovered()
                return found
            except StreamMismatchError:
                raise
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                self._resume_outage.failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _commit(self, model: ReadModel, batch: _Fetched[Item], upto: int) -> int:
        """Apply one batch and its dead letters in one transaction, retrying while the database is
        unavailable; if the database refuses the batch for good, apply it message by message."""
        try:
            top, fresh = await self._transaction(model, batch.items, batch.dead, upto)
        except Exception as exc:
            if self._stopping.is_set():
                raise
            logger.warning(
                "%s %s: a batch of %d messages up to seq %d failed (%s); applying them one by one "
                "to set aside the one at fault",
                self.role,
                self.durable,
                len(batch.items),
                upto,
                describe(exc),
            )
            return await self._isolate(model, batch, upto)
        self._set_aside(fresh)
        return top

    async def _isolate(self, model: ReadModel, batch: _Fetched[Item], upto: int) -> int:
        """Apply a batch that failed one message per transaction; set aside those that fail alone."""
        steps: list[tuple[int, Item | None, DeadLetter | None]] = [
            (seq, it, None) for it, (seq, _, _) in zip(batch.items, batch.info, strict=True)
        ]
        steps += [(d.seq, None, d) for d in batch.dead]
        steps.sort(key=lambda step: step[0])
        subjects = {seq: (subject, size) for seq, subject, size in batch.info}
        top = 0
        for seq, it, dead in steps:
            if it is not None:
                try:
                    applied, _ = await self._transaction(model, [it], [], seq)
                    top = max(top, applied)
                    continue
                except Exception as exc:
                    if self._stopping.is_set():
                        raise
                    subject, size = subjects[seq]
                    dead = DeadLetter(seq, subject, describe(exc), size)
            assert dead is not None
            applied, fresh = await self._transaction(model, [], [dead], seq)
            top = max(top, applied)
            self._set_aside(fresh)
        applied, _ = await self._transaction(model, [], [], upto)
        return max(top, applied)

    async def _transaction(
        self, model: ReadModel, items: list[Item], dead: list[DeadLetter], upto: int
    ) -> tuple[int, list[DeadLetter]]:
        """Apply ``items``, record ``dead`` and advance the watermark to ``upto``, in one transaction.

        Retries forever (with backoff, one warning per outage) while the error is transient;
        raises any other error.

        Returns:
            The highest sequence applied, and the dead letters recorded now (not before).
        """
        delay = 0.05
        while True:
            try:
                async with model.begin() as conn:
                    fresh: list[DeadLetter] = []
                    if dead:
                        floor = await lock_watermark(conn, self.watermark_name)
                        fresh = [d for d in dead if d.seq > floor]
                        await record_dead_letters(conn, self.watermark_name, fresh)
                    top = await self._apply(conn, items, upto)
            except Exception as exc:
                self.stats.failures += 1
                if self._stopping.is_set() or not is_transient(exc):
                    raise
                self._commit_outage.failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self._commit_outage.recovered()
            return max(top, max((d.seq for d in fresh), default=0)), fresh

    def _set_aside(self, fresh: list[DeadLetter]) -> None:
        """Count and log (one line each, without the data) dead letters just recorded."""
        for d in fresh:
            self.stats.dead_letters += 1
            logger.error(
                "%s %s set aside message seq=%d subject=%s (%d bytes) in skialith_dead_letters: %s",
                self.role,
                self.durable,
                d.seq,
                d.subject,
                d.size,
                d.reason,
            )


async def record_dead_letters(conn: AsyncConnection, name: str, dead: list[DeadLetter]) -> None:
    """Insert rows of ``skialith_dead_letters`` for projection ``name`` (a row already there stays)."""
    if not dead:
        return
    now = time.time()
    rows = [
        {
            "projection": name,
            "seq": d.seq,
            "subject": d.subject,
            "reason": d.reason,
            "size": d.size,
            "at": now,
        }
        for d in dead
    ]
    await conn.execute(upsert(conn.dialect.name, dead_letters, []), rows)
