"""Which stream a read model was filled from, so that it never answers for another one.

A stream's sequences mean nothing outside that stream: a stream deleted and created again (a lost
NATS store, an operator's ``nats stream rm``), or a second stream projecting into the same database
(another app, a changed ``SKIALITH_STREAM``), numbers its writes from 1 again, below a watermark
that counted another stream. So the read model records the identity of its stream: the stream's
name and its creation time, which JetStream keeps across restarts and which differs for a
re-created stream (:class:`StreamIdentity`).

* The projector (and the trace ingest) records it in the row of ``skialith_stream`` when the read
  model is empty, and compares it at every start and resubscribe: another stream is refused with
  :class:`StreamMismatchError` (``skialith projector --rebuild`` refills the read model from the
  stream it is pointed at). So it never resumes at a watermark of another stream.
* Readers learn their stream's identity once per connection (:class:`StreamWatch`) and refresh
  it when it may have changed: JetStream's stream advisories
  (``$JS.EVENT.ADVISORY.STREAM.{CREATED,DELETED,...}.<stream>``) and a NATS reconnect (advisories
  sent while disconnected are lost). The hot read compares it with the recorded one in the
  statement that already reads the watermark (``statements._WATERMARK``): another stream's read model
  yields no watermark, and the read is answered from the log, with one warning saying why.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.subscription import Subscription
from sqlalchemy import exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .cluster import why_no_ack
from .errors import LogError, ProjectionError, StreamNotFoundError
from .readmodel.tables import projection, stream_identity

if TYPE_CHECKING:
    from .log import Log
    from .readmodel import ReadModel

logger = logging.getLogger(__name__)

ROW = 1  # the key of the one row of ``skialith_stream``: one read model, one stream
UNWATCHED_TTL = 1.0  # seconds an identity is trusted when the advisories cannot be subscribed to


@dataclass(frozen=True, slots=True)
class StreamIdentity:
    """A stream's name and creation time (RFC 3339, UTC): distinct for a re-created stream."""

    stream: str
    created: str

    def __str__(self) -> str:
        return f"stream {self.stream!r} created {self.created}"


def _created(info: Any) -> str:
    created = getattr(info, "created", None)
    if created is None:
        return ""
    return created.isoformat() if hasattr(created, "isoformat") else str(created)


class StreamMismatchError(ProjectionError):
    """The read model was filled from another stream than the one the projector reads."""

    def __init__(
        self,
        message: str,
        *,
        recorded: StreamIdentity | None = None,
        current: StreamIdentity | None = None,
    ) -> None:
        super().__init__(message)
        self.recorded, self.current = recorded, current

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),), {"recorded": self.recorded, "current": self.current})


def _advice(current: StreamIdentity, url: str) -> str:
    return (
        f"run 'skialith projector --rebuild --stream {current.stream}' to refill this read model from "
        f"{current}, or point SKIALITH_DATABASE_URL at another database (read model: {url!r})"
    )


class StreamWatch:
    """The identity of one :class:`~skialith_langgraph.log.Log`'s stream, refreshed when it may change.

    The advisories are read without a callback: the read loop queues them before the replies to any
    later request on the connection, so a read that looked at the stream after a re-creation finds
    the advisory pending here, with no task switch needed. Without permission to subscribe, the
    identity is trusted for :data:`UNWATCHED_TTL` seconds.
    """

    def __init__(self, log: Log) -> None:
        self._log = log
        self._sub: Subscription | None = None
        self._watching = False  # the subscription was tried
        self._current: StreamIdentity | None = None
        self._reconnects = -1
        self._fetched = 0.0

    async def _watch(self) -> None:
        self._watching = True
        subject = f"$JS.EVENT.ADVISORY.STREAM.*.{self._log.settings.stream}"
        try:
            self._sub = await self._log.nc.subscribe(subject, pending_msgs_limit=1000)
        except nats.errors.Error as exc:
            logger.warning(
                "cannot subscribe to %s (%s); checking the stream every %.0f s", subject, exc, UNWATCHED_TTL
            )

    def _fresh(self) -> bool:
        if self._current is None or self._log.nc.stats["reconnects"] != self._reconnects:
            return False
        if self._sub is None:
            return time.monotonic() - self._fetched < UNWATCHED_TTL
        return self._sub.pending_msgs == 0

    async def get(self, *, fresh: bool = False) -> StreamIdentity:
        """The stream's identity; asks JetStream only when it may have changed (or ``fresh``).

        Raises:
            StreamNotFoundError: the stream does not exist (deleted, not created again yet).
            LogError: NATS did not answer.
        """
        if not fresh and self._fresh():
            assert self._current is not None
            return self._current
        if not self._watching:
            await self._watch()
        sub = self._sub
        while sub is not None and sub.pending_msgs:  # what they announced is in the answer below
            try:
                await sub.next_msg(timeout=None)
            except nats.errors.Error:
                break
        reconnects = self._log.nc.stats["reconnects"]
        name, url = self._log.settings.stream, self._log.url
        try:
            info = await self._log.js.stream_info(name)
        except nats.js.errors.NotFoundError as exc:
            self._current = None
            raise StreamNotFoundError(f"stream {name!r} not found at {url!r}; call setup()", url=url) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            why = await why_no_ack(self._log.nc, name)  # on a cluster: a lost quorum, say so
            raise LogError(
                f"cannot read the identity of stream {name!r} at {url!r} ({type(exc).__name__}: {exc})"
                + (f"; {why}" if why else ""),
                url=url,
            ) from exc
        self._current = StreamIdentity(name, _created(info))
        self._reconnects, self._fetched = reconnects, time.monotonic()
        return self._current

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None and not self._log.nc.is_closed:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass


# -- the read model's side --------------------------------------------------------------------


_S = stream_identity.c


def matches(mine: StreamIdentity | None) -> Any:
    """A SQL condition: the read model records ``mine`` as its stream."""
    stream = mine.stream if mine is not None else None
    created = mine.created if mine is not None else None
    return exists().where(_S.id == ROW, _S.stream == stream, _S.created == created)


async def recorded(conn: AsyncConnection) -> StreamIdentity | None:
    """The identity the read model records (``None``: none yet)."""
    row = (await conn.execute(select(_S.stream, _S.created).where(_S.id == ROW))).first()
    return None if row is None else StreamIdentity(row.stream, row.created)


async def _top(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.max(projection.c.last_seq)))).scalar() or 0)


async def watermark(conn: AsyncConnection, name: str, mine: StreamIdentity) -> int | None:
    """The watermark of ``name`` if the read model was filled from ``mine``, else ``None``."""
    query = select(projection.c.last_seq).where(projection.c.name == name, matches(mine))
    value = (await conn.execute(query)).scalar()
    return None if value is None else int(value)


_warned: weakref.WeakKeyDictionary[ReadModel, tuple[StreamIdentity | None, StreamIdentity]] = (
    weakref.WeakKeyDictionary()
)


async def judge(conn: AsyncConnection, model: ReadModel, name: str, mine: StreamIdentity) -> int | None:
    """After the watermark read with ``mine`` came back empty: the watermark to compare with (0
    for an empty read model the projector has not claimed yet), or ``None`` if the read model
    answers for another stream (it must not be used; warns once per model and pair of streams)."""
    found = await recorded(conn)
    if found == mine:  # claimed in between
        return await watermark(conn, name, mine) or 0
    if found is None and await _top(conn) == 0:
        return 0
    if _warned.get(model) != (found, mine):
        _warned[model] = (found, mine)
        what = f"was filled from {found}" if found else "records no stream (its projector is older)"
        logger.warning(
            "the read model at %r %s, not from %s that this process uses: reads are answered from "
            "the log until 'skialith projector --rebuild --stream %s' refills it",
            model.url,
            what,
            mine,
            mine.stream,
        )
    return None


async def claim(model: ReadModel, log: Log) -> StreamIdentity:
    """Record ``log``'s stream in an empty read model, or check that it is the recorded one.

    A read model made before identities were recorded is adopted when its watermark is not past the
    stream's last sequence (a re-created stream starts again below it).

    Returns:
        The stream's identity (as read now).

    Raises:
        StreamMismatchError: the read model was filled from another stream.
    """
    mine = await log.identity(fresh=True)
    for _ in range(3):
        try:
            async with model.begin() as conn:
                found = await recorded(conn)
                if found == mine:
                    return mine
                if found is not None:
                    raise StreamMismatchError(
                        f"the read model was filled from {found}, not from {mine} at {log.url!r}: its "
                        f"watermark counts the other stream's sequences, so resuming there would skip "
                        f"writes; {_advice(mine, model.url)}",
                        recorded=found,
                        current=mine,
                    )
                top = await _top(conn)
                if top:
                    last = await log.stream_last_seq()
                    if top > last:
                        raise StreamMismatchError(
                            f"the read model records no stream, and its watermark {top} is past the "
                            f"last sequence {last} of {mine} at {log.url!r}: it was filled from another "
                            f"stream (or this one was created again); {_advice(mine, model.url)}",
                            current=mine,
                        )
                    logger.warning(
                        "the read model at %r records no stream (made by an older version); adopting %s",
                        model.url,
                        mine,
                    )
                await conn.execute(
                    insert(stream_identity).values(id=ROW, stream=mine.stream, created=mine.created)
                )
                logger.info("the read model at %r now follows %s", model.url, mine)
                return mine
        except IntegrityError:
            continue  # another projector recorded its stream at the same moment: look again
    raise StreamMismatchError(f"cannot record {mine} in the read model at {model.url!r}", current=mine)
