"""The SQL read model: engine ownership, schema set-up, and the projection watermark."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ..errors import MigrationError, ReadModelError
from .apply import watermark
from .migrations import migrate

logger = logging.getLogger(__name__)

PROJECTION = "main"
DOWN_PAUSE = 2.0  # seconds reads skip a database that just failed


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def create_engine(url: str, *, connect_timeout: float = 5.0) -> AsyncEngine:
    """An AsyncEngine for SQLite (file or memory) or MySQL/TiDB with sensible settings."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        database = u.database or ""
        if database and database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
            engine = create_async_engine(url, connect_args={"timeout": 10})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            return engine
        return create_async_engine(
            "sqlite+aiosqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    if backend in ("mysql", "mariadb"):
        return create_async_engine(
            url,
            pool_recycle=3600,
            # no pre-ping: it costs a round trip on every read; a dead pooled connection fails the
            # read, SQLAlchemy invalidates it, and views.consistent_view answers from the log meanwhile
            connect_args={"connect_timeout": max(1, int(connect_timeout))},
        )
    raise ReadModelError(
        f"unsupported database URL {safe_url(url)!r}: use sqlite+aiosqlite:// or mysql+aiomysql://",
        url=safe_url(url),
    )


class ReadModel:
    """The SQL read model behind one AsyncEngine (owned unless passed in)."""

    def __init__(
        self, engine: AsyncEngine, *, url: str, owned: bool = True, connect_timeout: float = 5.0
    ) -> None:
        self.engine = engine
        self.url = safe_url(url)
        self._owned = owned
        self._connect_timeout = connect_timeout
        self._ready = False
        self._lock = asyncio.Lock()
        self._down_until = 0.0  # monotonic time before which the database is assumed down
        self._outage = False  # failed since it last answered

    def mark_down(self, seconds: float = DOWN_PAUSE) -> bool:
        """Remember that the database failed, so reads go straight to the log for a while
        instead of each waiting for a connect timeout.

        A failure while already marked down (a read refused by that mark) does not extend it,
        so the database is tried again ``seconds`` after it failed however often reads come.

        Returns:
            True for the first failure since the database last answered (a new outage).
        """
        if self.down:
            return False
        self._down_until = time.monotonic() + seconds
        first, self._outage = not self._outage, True
        return first

    def mark_up(self) -> bool:
        """Remember that the database answered; True if that ends an outage."""
        if not self._outage:
            return False
        self._outage = False
        return True

    @property
    def down(self) -> bool:
        """Whether the database failed moments ago (see :meth:`mark_down`)."""
        return time.monotonic() < self._down_until

    def _check_down(self) -> None:
        if self.down:
            raise ReadModelError(
                f"the read model at {self.url!r} failed moments ago; not retrying yet", url=self.url
            )

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    @classmethod
    def from_url(cls, url: str, *, connect_timeout: float = 5.0) -> ReadModel:
        return cls(
            create_engine(url, connect_timeout=connect_timeout), url=url, connect_timeout=connect_timeout
        )

    @classmethod
    def memory(cls) -> ReadModel:
        """A private in-memory SQLite model (used to answer reads from the log)."""
        return cls(create_engine("sqlite+aiosqlite://"), url="sqlite+aiosqlite://")

    async def close(self) -> None:
        if self._owned:
            await self.engine.dispose()

    def _error(self, exc: BaseException) -> ReadModelError:
        return ReadModelError(
            f"cannot use the read model database at {self.url!r} ({type(exc).__name__}: {exc}); "
            "check that it is running and reachable ('skialith up' starts the SQLite default)",
            url=self.url,
        )

    async def setup(self) -> None:
        """Create or migrate the tables. Idempotent and cheap; run at every start."""
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            try:
                async with asyncio.timeout(self._connect_timeout * 4):
                    for attempt in range(5):
                        try:
                            async with self.engine.begin() as conn:
                                await migrate(conn)
                            break
                        except (IntegrityError, OperationalError) as exc:
                            # another process migrated at the same moment: look again
                            raced = isinstance(exc, IntegrityError) or "already exists" in str(exc)
                            if attempt == 4 or not (raced or "locked" in str(exc)):
                                raise
                            await asyncio.sleep(0.1 * (attempt + 1))
            except (OperationalError, DBAPIError, OSError, TimeoutError) as exc:
                raise self._error(exc) from exc
            except SQLAlchemyError as exc:
                raise MigrationError(
                    f"cannot migrate the read model at {self.url!r}: {exc}", url=self.url
                ) from exc
            self._ready = True

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (ready once ``setup`` ran)."""
        self._check_down()
        await self.setup()
        try:
            async with asyncio.timeout(self._connect_timeout):
                conn = await self.engine.connect()
        except (OperationalError, DBAPIError, OSError, TimeoutError) as exc:
            raise self._error(exc) from exc
        try:
            yield conn
        finally:
            await conn.close()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction (committed on success)."""
        await self.setup()
        try:
            async with asyncio.timeout(self._connect_timeout):
                conn = await self.engine.connect()
        except (OperationalError, DBAPIError, OSError, TimeoutError) as exc:
            raise self._error(exc) from exc
        try:
            async with conn.begin():
                yield conn
        finally:
            await conn.close()

    async def watermark(self, conn: AsyncConnection, name: str = PROJECTION) -> int:
        return await watermark(conn, name)
