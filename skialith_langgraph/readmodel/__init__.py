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
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
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


# the async driver each backend runs on: what users write (``mysql://``, ``postgres://``, a sync
# driver from another project's docs) is mapped to it, since the read paths use these drivers'
# own connections (see readmodel.statements.driver_rows)
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
}
URL_EXAMPLES = (
    "sqlite:///path/to/skialith.db, mysql://user:password@host:3306/db or "
    "postgresql://user:password@host:5432/db"
)


def async_url(url: str) -> str:
    """``url`` with the async driver Skialith uses for its backend (see :data:`ASYNC_DRIVERS`).

    ``sqlite:///x.db``, ``mysql://``, ``mariadb://``, ``mysql+pymysql://``, ``postgresql://``,
    ``postgres://`` and ``postgresql+psycopg2://`` (or ``+asyncpg``) all work as written.

    Raises:
        ReadModelError: not a database URL, or a database Skialith cannot use.
    """
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise ReadModelError(
            f"{safe_url(url)!r} is not a database URL; write it as {URL_EXAMPLES}", url=safe_url(url)
        ) from exc
    backend = u.drivername.split("+", 1)[0]
    target = ASYNC_DRIVERS.get(backend)
    if target is None:
        raise ReadModelError(
            f"unsupported database URL {safe_url(url)!r}: Skialith's read model runs on SQLite, "
            f"MySQL/MariaDB/TiDB or PostgreSQL, e.g. {URL_EXAMPLES}",
            url=safe_url(url),
        )
    if u.drivername == target:
        return url
    return u.set(drivername=target).render_as_string(hide_password=False)


def create_engine(url: str, *, connect_timeout: float = 5.0) -> AsyncEngine:
    """An AsyncEngine for SQLite (file or memory), MySQL/MariaDB/TiDB or PostgreSQL with sensible
    settings; ``url`` as users write it (see :func:`async_url`)."""
    url = async_url(url)
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
    # no pre-ping: it costs a round trip on every read; a dead pooled connection fails the read,
    # SQLAlchemy invalidates it, and views.consistent_view answers from the log meanwhile
    if backend == "mysql":
        return create_async_engine(
            url, pool_recycle=3600, connect_args={"connect_timeout": max(1, int(connect_timeout))}
        )
    return create_async_engine(  # postgresql+psycopg
        url, pool_recycle=3600, connect_args={"connect_timeout": max(2, int(connect_timeout))}
    )


def _asyncmy() -> bool:
    try:
        import asyncmy  # noqa: F401
    except ImportError:
        return False
    return True


def create_hot_engine(url: str, *, connect_timeout: float = 5.0) -> AsyncEngine | None:
    """The engine of the connections a process holds for its hot reads (see :mod:`.hot`), or None
    where the pool's connections serve them (SQLite).

    Every connection is in autocommit: each read statement sees its own snapshot, as PostgreSQL's
    READ COMMITTED gives anyway, and no BEGIN or ROLLBACK costs a round trip. On MySQL and MariaDB
    it runs on asyncmy when installed (a Cython protocol with server-side prepared statements: 0.55
    -> 0.38 ms for the latest checkpoint's statement, 1 KiB, measured) whatever driver the URL
    names, which the rest of the read model keeps using.
    """
    u = make_url(async_url(url))
    backend = u.get_backend_name()
    if backend == "mysql":
        if _asyncmy():
            u = u.set(drivername="mysql+asyncmy")
        args: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout))}
    elif backend == "postgresql":
        args = {"connect_timeout": max(2, int(connect_timeout))}
    else:
        return None
    return create_async_engine(
        u,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,  # autocommit: no transaction to end on return
        pool_recycle=3600,
        connect_args=args,
    )


class DatabaseAuthError(ReadModelError):
    """The database server refused the user name or password of the URL."""


class DatabaseNotFoundError(ReadModelError):
    """The server answers, but the database named in the URL does not exist on it."""


class DatabaseUnreachableError(ReadModelError):
    """No database server answers at the URL's host and port."""


# MySQL error numbers, and PostgreSQL SQLSTATEs and message fragments, of each failure
_MYSQL_AUTH, _MYSQL_UNKNOWN_DB = {1044, 1045, 1698}, {1049}
_MYSQL_UNREACHABLE = {2002, 2003, 2005, 2006, 2013}
_PG_AUTH = ("password authentication failed", "no password supplied", "authentication failed")
_PG_UNKNOWN_DB = ("does not exist",)
_PG_UNREACHABLE = (
    "connection refused",
    "failed to resolve host",
    "could not translate host name",
    "name or service not known",
    "timeout expired",
    "no route",
)


def _root(exc: BaseException) -> BaseException:
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def classify(exc: BaseException, url: str) -> ReadModelError:
    """The error to raise for a failure to connect to the database at ``url`` (password hidden):
    a wrong user or password, an unknown database and an unreachable server each say what to do."""
    root = _root(exc)
    args: tuple[Any, ...] = getattr(root, "args", ())
    code = args[0] if args and type(args[0]) is int else None
    text = str(root).strip()
    low = text.lower()
    if code is not None and len(args) > 1:
        text = str(args[1])  # MySQL: (code, message)
    elif "FATAL:" in text:  # libpq: "connection failed: connection to server at ... failed: FATAL:  ..."
        text = text.rsplit("FATAL:", 1)[1]
    detail = text.strip().split("\n", 1)[0] or type(root).__name__
    sqlstate = getattr(root, "sqlstate", None)
    database = make_url(url).database if "://" in url else None
    role_missing = 'role "' in low and "does not exist" in low  # PostgreSQL: no such user
    auth = any(m in low for m in _PG_AUTH)
    if code in _MYSQL_AUTH or sqlstate in ("28P01", "28000") or role_missing or auth:
        return DatabaseAuthError(
            f"the database server at {url!r} refused the user name or password ({detail}); fix them "
            "in the URL (SKIALITH_DATABASE_URL or --database-url), or grant that user access",
            url=url,
        )
    if (
        code in _MYSQL_UNKNOWN_DB
        or sqlstate == "3D000"
        or ("database" in low and any(m in low for m in _PG_UNKNOWN_DB))
    ):
        return DatabaseNotFoundError(
            f"the database {database!r} does not exist on the server at {url!r} ({detail}); create it "
            f"(CREATE DATABASE {database}) or fix its name in the URL",
            url=url,
        )
    if (
        code in _MYSQL_UNREACHABLE
        or isinstance(root, OSError | TimeoutError)
        or any(m in low for m in _PG_UNREACHABLE)
    ):
        return DatabaseUnreachableError(
            f"no database server answers at {url!r} ({detail or 'timed out'}); check that it is "
            "running and that the URL's host and port are right",
            url=url,
        )
    return ReadModelError(
        f"cannot use the read model database at {url!r} ({type(exc).__name__}: {detail}); "
        "check that it is running and reachable ('skialith up' starts the SQLite default)",
        url=url,
    )


class ReadModel:
    """The SQL read model behind one AsyncEngine (owned unless passed in)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        url: str,
        owned: bool = True,
        connect_timeout: float = 5.0,
        hot_engine: AsyncEngine | None = None,
    ) -> None:
        self.engine = engine
        # the autocommit connections of the hot reads (see .hot), always owned; None: the pool's
        self.hot_engine = hot_engine
        self.url = safe_url(url)
        self._owned = owned
        self._connect_timeout = connect_timeout
        self._ready = False
        self._lock = asyncio.Lock()
        self._down_until = 0.0  # monotonic time before which the database is assumed down
        self._outage = False  # failed since it last answered
        # per watermark name: (monotonic time read, whether its projector runs); see views.projector_alive
        self.alive: dict[str, tuple[float, bool]] = {}
        self.alive_warned: set[str] = set()  # names whose missing projector was warned about

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
            create_engine(url, connect_timeout=connect_timeout),
            url=url,
            connect_timeout=connect_timeout,
            hot_engine=create_hot_engine(url, connect_timeout=connect_timeout),
        )

    @classmethod
    def memory(cls) -> ReadModel:
        """A private in-memory SQLite model (used to answer reads from the log)."""
        return cls(create_engine("sqlite+aiosqlite://"), url="sqlite+aiosqlite://")

    async def close(self) -> None:
        if self.hot_engine is not None:
            await self.hot_engine.dispose()
        if self._owned:
            await self.engine.dispose()

    def _error(self, exc: BaseException) -> ReadModelError:
        return classify(exc, self.url)

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

    async def connect_hot(self) -> AsyncConnection:
        """A new autocommit connection of :attr:`hot_engine` (ready once ``setup`` ran); the
        caller closes it."""
        assert self.hot_engine is not None
        self._check_down()
        await self.setup()
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self.hot_engine.connect()
        except (OperationalError, DBAPIError, OSError, TimeoutError) as exc:
            raise self._error(exc) from exc

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
