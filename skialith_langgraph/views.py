"""Read-your-writes: a database connection that reflects every acknowledged write on some subjects.

The read model serves the read once its projection watermark has passed the last stream
sequence on the subjects asked about. Until then the read waits up to ``read_wait`` seconds if a
projector runs (it says so in the read model, see :func:`projector_alive`), then replays those
subjects from the log into a private in-memory SQLite model, through the same apply code the
projector uses, so a read never returns stale data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from . import codec, identity
from .config import DEFAULT_DATABASE_URL
from .errors import CodecError, ReadModelError
from .identity import StreamIdentity
from .log import Log
from .readmodel import PROJECTION, ReadModel, queries
from .readmodel.apply import ALIVE_STALE, alive_at, apply_messages
from .readmodel.tables import metadata

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ReadStats:
    """Where reads were served from: counters a user (or a test) can watch."""

    database: int = 0  # the read model had caught up (possibly after a short wait)
    log: int = 0  # the projector lagged or the database was down: replayed from the log
    waited: int = 0  # reads that had to wait for the projector
    head: int = 0  # answered from this process's own exact head of the thread (see heads.py)


MODEL_ERRORS = (ReadModelError, SQLAlchemyError, TimeoutError)  # the read model failed or hung


async def model_failed(model: ReadModel, conn: AsyncConnection | None, exc: BaseException) -> None:
    """After a read-model failure: skip the database for a while and drop the connection.

    Logs one warning per outage (its first failure), the other failures at DEBUG; see
    :func:`model_answered` for the line that ends it.
    """
    first = model.mark_down()
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.invalidate()  # its socket may be stuck: keep it out of the pool
    level = logging.WARNING if first else logging.DEBUG
    logger.log(level, "read model %s unavailable (%r); serving reads from the log", model.url, exc)


def model_answered(model: ReadModel) -> None:
    """After the read model answered: if that ends an outage, say so once."""
    if model.mark_up():
        logger.info("read model %s answers again; serving reads from it", model.url)


@asynccontextmanager
async def consistent_view(
    log: Log,
    model: ReadModel,
    filters: Sequence[str] | None,
    *,
    read_wait: float,
    name: str = PROJECTION,
    stats: ReadStats | None = None,
    target: int | None = None,
    scratch: Scratch | None = None,
) -> AsyncIterator[AsyncConnection]:
    """Yield a connection that sees every write acknowledged on ``filters`` before this call.

    Args:
        log: the stream.
        model: the read model the projector fills.
        filters: subject filters the read depends on; ``None`` means the whole stream.
        read_wait: seconds to wait for the projector before reading the log.
        name: the projection whose watermark counts.
        stats: counters to update.
        target: the sequence to reach, when the caller already asked JetStream for it.
        scratch: a reusable in-memory model for the log replay.
    """
    # The log lookup runs alongside the connect and the first watermark read: a snapshot taken
    # before the lookup answers, whose watermark is at or past the log's end, holds every write
    # acknowledged before this call (as in checkpointer.get_tuple).
    stream = await log.identity()
    lookup: asyncio.Future[int] | None = None
    if target is None:
        lookup = asyncio.ensure_future(log.stream_last_seq() if filters is None else log.last_seq(*filters))
    async with AsyncExitStack() as stack:
        conn: AsyncConnection | None = None
        candidate: AsyncConnection | None = None
        mark: int | None = None
        unread = True  # no watermark read yet for ``stream``
        try:
            try:
                # bounded: a database that stops answering (a partition) must not hang the read
                async with asyncio.timeout(model.connect_timeout + read_wait):
                    candidate = await stack.enter_async_context(model.connect())
                    mark, unread = await _watermark(candidate, model, name, stream), False
            except MODEL_ERRORS:
                raise
            except BaseException:
                if lookup is not None:
                    lookup.cancel()
                raise
            finally:
                if lookup is not None and not lookup.cancelled():
                    target = await lookup  # a NATS failure is the read's error, as without a database
                    # after the target: an advisory of the stream's re-creation arrived before that reply
                    now = await log.identity()
                    if now != stream:
                        stream, unread = now, True
            assert target is not None and candidate is not None
            async with asyncio.timeout(model.connect_timeout + read_wait):
                if unread:
                    mark = await _watermark(candidate, model, name, stream)
                # a read model filled from another stream (None) never catches up: read the log now
                caught_up = mark is not None and mark >= target
                # and one that no projector fills neither
                wait = mark is not None and not caught_up and await projector_alive(candidate, model, name)
                if wait and stats is not None:
                    stats.waited += 1
                deadline = time.monotonic() + read_wait
                delay = 0.0005
                while wait and not caught_up and time.monotonic() < deadline:
                    await candidate.rollback()  # the next statement takes a fresh snapshot
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.02)
                    mark = await _watermark(candidate, model, name, stream)
                    caught_up = mark is not None and mark >= target
            model_answered(model)
            if caught_up:
                conn = candidate
            else:
                logger.debug("projection %s is behind seq %d for %s; reading the log", name, target, filters)
        except MODEL_ERRORS as exc:
            await model_failed(model, candidate, exc)
        if conn is not None:
            if stats is not None:
                stats.database += 1
            yield conn
            return
    if stats is not None:
        stats.log += 1
    assert target is not None  # the lookup answered, or its failure ended the read
    async with replay(log, filters, target, scratch) as mem:
        yield mem


ALIVE_RECHECK = 1.0  # seconds a projector's liveness, once read, is trusted by a read model's readers


async def projector_alive(conn: AsyncConnection, model: ReadModel, name: str) -> bool:
    """Whether a consumer of watermark ``name`` runs (said so within ALIVE_STALE seconds): a read
    waits for it only then. When none does, warns once (until one runs again), naming the database
    and how to start the projector."""
    now = time.monotonic()
    known = model.alive.get(name)
    if known is not None and now - known[0] < ALIVE_RECHECK:
        return known[1]
    at = await alive_at(conn, name)
    alive = at is not None and time.time() - at < ALIVE_STALE
    model.alive[name] = (now, alive)
    if alive:
        model.alive_warned.discard(name)
    elif name not in model.alive_warned:
        model.alive_warned.add(name)
        logger.warning("%s", no_projector_message(model.url, name, at))
    return alive


def no_projector_message(url: str, name: str, at: float | None) -> str:
    """What the warning of :func:`projector_alive` says."""
    since = "has never run" if at is None else f"has not said it runs for {time.time() - at:.0f} s"
    text = (
        f"no projector fills the read model at {url!r} (its {name!r} projector {since}): reads are "
        "answered from the stream at once, without waiting for it; start one with 'skialith up', or "
        f"'skialith projector --database-url {url}' (with the NATS URL and stream this process uses)"
    )
    if url == DEFAULT_DATABASE_URL:
        path = os.path.abspath(make_url(url).database or "")
        text += (
            f". This process uses the default database {url!r}, which is relative to the working "
            f"directory: here {path}; 'skialith up' fills the file in the directory where it was "
            "started, so start it in this directory, or give both the same SKIALITH_DATABASE_URL"
        )
    return text


async def _watermark(
    conn: AsyncConnection, model: ReadModel, name: str, stream: StreamIdentity
) -> int | None:
    """The watermark of ``name``, or ``None`` if the read model answers for another stream."""
    mark = await queries.watermark(conn, name, (stream.stream, stream.created))
    return mark if mark is not None else await identity.judge(conn, model, name, stream)


class Scratch:
    """A reusable private in-memory model for log replays (creating one costs ~100 ms of DDL).

    Replays through one scratch model take turns; each starts from empty tables.
    """

    def __init__(self, on_create: Callable[[ReadModel], object] | None = None) -> None:
        self._model: ReadModel | None = None
        self._lock = asyncio.Lock()
        self._on_create = on_create  # told of each in-memory model made, before it connects

    @asynccontextmanager
    async def empty(self) -> AsyncIterator[ReadModel]:
        async with self._lock:
            if self._model is None:
                self._model = ReadModel.memory()
                if self._on_create is not None:
                    self._on_create(self._model)
                await self._model.setup()
            else:
                async with self._model.begin() as conn:
                    for table in reversed(metadata.sorted_tables):
                        await conn.execute(delete(table))
            yield self._model

    async def close(self) -> None:
        if self._model is not None:
            await self._model.close()
            self._model = None


@asynccontextmanager
async def replay(
    log: Log, filters: Sequence[str] | None, until_seq: int, scratch: Scratch | None = None
) -> AsyncIterator[AsyncConnection]:
    """An in-memory read model holding the messages on ``filters`` up to ``until_seq``.

    Messages that cannot be read (junk bytes, a malformed header, parts purged by a delete) are
    skipped and logged once each, without their payload.
    """
    messages: list[tuple[int, codec.Msg]] = []
    for f in [log.subjects.all] if filters is None else filters:
        async for m in log.read(f, until_seq=until_seq):
            try:
                messages.append((m.seq, codec.loads(m.body)))
            except CodecError as exc:
                # a forged or corrupt message is not the thread's: the rest of it stays readable
                log.note_skip(m.seq, logging.WARNING, f"on {m.subject} skipped, cannot be decoded: {exc}")
    messages.sort(key=lambda item: item[0])
    own = scratch or Scratch()
    try:
        async with own.empty() as mem:
            async with mem.begin() as conn:
                await apply_messages(conn, messages, name=None)
            async with mem.connect() as conn:
                yield conn
    finally:
        if scratch is None:
            await own.close()
