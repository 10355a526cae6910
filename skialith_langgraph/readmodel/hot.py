"""The connections one event loop holds for its hot reads (a thread's latest checkpoint, a list).

Checking a connection out of SQLAlchemy's pool, beginning, and returning it (a ROLLBACK round trip
on MySQL) cost a read more than its statement; a few autocommit connections of
:attr:`ReadModel.hot_engine` are kept checked out instead, each serving one read at a time. A read
that finds none idle while :data:`HOT_KEEP` are busy uses the pool as before, so the number held
stays bounded however many reads run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from . import DatabaseUnreachableError, ReadModel

logger = logging.getLogger(__name__)

HOT_KEEP = 4  # connections one loop holds for reads at most
HOT_IDLE = 300.0  # seconds: a connection idle longer is closed instead of used (server timeouts)
HOT_RETRY = 30.0  # seconds reads use the pool after a hot connection could not be opened
# where a hot connection's Connection.info keeps its driver connection (statements.driver_rows)
DRIVER = "skialith.hot_driver"
PREPARED = "skialith.prepared"  # and its prepared statements, by statement and shape


class HotConnections:
    """The hot connections of one loop's read model (see the module docstring)."""

    def __init__(self, model: ReadModel) -> None:
        self.model = model
        self._idle: list[tuple[AsyncConnection, float]] = []  # (connection, monotonic time returned)
        self._held = 0  # connections open, idle or serving a read
        self._closed = False
        self._closing: set[asyncio.Future[None]] = set()
        self._off_until = 0.0  # monotonic time before which no new hot connection is tried
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.model.hot_engine is not None and not self._closed

    async def take(self) -> AsyncConnection | None:
        """An idle connection, or a new one while fewer than :data:`HOT_KEEP` are held; None when
        there is no hot engine, all are busy, or one could not be opened moments ago (the caller
        uses the pool: a driver that cannot connect where the engine's can, asyncmy refusing an
        authentication method, must not pause the read model).

        Raises:
            DatabaseUnreachableError: no database server answers (the caller reads the log).
        """
        if not self.enabled:
            return None
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if now - since < HOT_IDLE:
                return conn
            self.drop(conn)  # idle too long: the server may have closed it
        if self._held >= HOT_KEEP or now < self._off_until:
            return None
        self._held += 1
        try:
            conn = await self.model.connect_hot()
            raw = await conn.get_raw_connection()
        except (DatabaseUnreachableError, TimeoutError):
            self._held -= 1
            raise  # the database is down: the caller reads the log, as the pool's failure would say
        except Exception as exc:
            self._held -= 1
            self._off_until = time.monotonic() + HOT_RETRY
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            logger.log(
                level, "cannot open a read connection to %s (%r); reads use the pool", self.model.url, exc
            )
            return None
        except BaseException:
            self._held -= 1
            raise
        raw.info[DRIVER] = raw.driver_connection
        raw.info[PREPARED] = {}
        return conn

    def give(self, conn: AsyncConnection) -> None:
        """Take back a connection after its read (closed instead if it broke or the loop's
        read model is closing)."""
        if self._closed or conn.closed or conn.invalidated:
            self.drop(conn)
            if not self._closed and not conn.closed:
                # it failed: the idle ones may be as dead (a database restarted), and each would
                # fail a read and pause the database again
                idle, self._idle = self._idle, []
                for other, _ in idle:
                    self.drop(other)
        else:
            self._idle.append((conn, time.monotonic()))

    def drop(self, conn: AsyncConnection, *, invalidate: bool = False) -> None:
        """Close ``conn`` in the background (``invalidate``: its protocol state is unknown, as
        after a read cancelled mid-statement, so it must not go back to the pool)."""
        self._held -= 1

        async def close() -> None:
            try:
                if invalidate and not conn.invalidated:
                    await conn.invalidate()
                await conn.close()
            except Exception as exc:
                logger.debug("closing a hot read connection failed: %r", exc)

        task = asyncio.ensure_future(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close the idle connections now, and the busy ones as they are given back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            self.drop(conn)
        if self._closing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._closing)

    def forget(self) -> None:
        """After their loop was closed without closing them (their sockets closed directly, see
        ``_loop.Connections``): detach the idle connections from the pool, which would otherwise
        log each as garbage-collected while checked out. No I/O."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._held -= 1
            with contextlib.suppress(Exception):
                conn.sync_connection.connection.detach()  # type: ignore[union-attr]

    def __len__(self) -> int:
        return self._held


def driver_of(conn: AsyncConnection) -> Any | None:
    """The driver connection of a hot connection (None for a pool connection)."""
    return conn.info.get(DRIVER)
