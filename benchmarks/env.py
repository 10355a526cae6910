"""Everything one benchmark run stands on: servers, databases, floors and contenders.

``async with BenchEnv(options) as env`` starts private nats-server(s), creates this run's
databases, opens every saver and the floors, and undoes all of it on the way out (servers
stopped by pid, only this run's databases dropped).
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomysql
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from . import peers
from .contender import FLOOR, FLOOR_ALWAYS, SKIALITH, SKIALITH_ALWAYS, SKIALITH_PG, Contender
from .databases import (
    DEFAULT_MYSQL_URL,
    DEFAULT_POSTGRES_URL,
    Databases,
    MySQLTarget,
    mysql_settings,
    postgres_settings,
)
from .jetstream_side import (
    Floor,
    SkialithApi,
    SkialithSide,
    load_skialith,
    open_floor,
    open_skialith,
    skialith_settings,
)
from .nats_server import NatsServer
from .projector_proc import PgWatermark, Watermark

RAW_TABLE = "raw_insert"


@dataclass(frozen=True, slots=True)
class Options:
    """Command-line options of one run."""

    quick: bool = False
    iterations: int | None = None
    sync_always: bool = False
    out: Path = Path("benchmarks/results")
    mysql_url: str = DEFAULT_MYSQL_URL
    postgres_url: str = DEFAULT_POSTGRES_URL
    sections: tuple[str, ...] = ("latency", "graph", "concurrency", "projector")


@dataclass(slots=True)
class BenchEnv:
    """The servers, databases and contenders of one run (see module docstring)."""

    options: Options
    mysql: MySQLTarget = field(init=False)
    dbs: Databases = field(init=False)
    workdir: Path = field(init=False)
    nats: NatsServer = field(init=False)
    nats_always: NatsServer | None = None
    floors: dict[str, Floor] = field(default_factory=dict)
    raw_conn: Any = None
    peers: list[Contender] = field(default_factory=list)
    skialith: list[SkialithSide] = field(default_factory=list)
    skialith_api: SkialithApi | None = None
    notes: list[str] = field(default_factory=list)
    mysql_info: dict[str, Any] = field(default_factory=dict)
    sqla_engine: Any = None
    sqla_stmt: Any = None
    agent: Any = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def __aenter__(self) -> BenchEnv:
        self.workdir = Path(tempfile.mkdtemp(prefix="skbench-"))
        self.mysql = MySQLTarget.from_url(self.options.mysql_url)
        self.dbs = Databases(self.mysql, self.options.postgres_url, self.workdir)
        try:
            await self._open()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _open(self) -> None:
        stack = self._stack
        stack.push_async_callback(self._drop_databases)
        self.nats = NatsServer(label="nats").start()
        stack.callback(self.nats.stop)
        if self.options.sync_always:
            self.nats_always = NatsServer(sync_always=True, label="nats-always").start()
            stack.callback(self.nats_always.stop)
        self.mysql_info = await mysql_settings(self.mysql)

        self.floors[FLOOR] = await open_floor(stack, self.nats)
        if self.nats_always is not None:
            self.floors[FLOOR_ALWAYS] = await open_floor(stack, self.nats_always)

        peer_db = await self.dbs.create_mysql("peer")
        self.raw_conn = await self.mysql.connect(peer_db)
        stack.callback(self.raw_conn.close)
        async with self.raw_conn.cursor() as cur:
            await cur.execute(
                f"CREATE TABLE {RAW_TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, payload BLOB NOT NULL)"
            )

        self.sqla_engine = create_async_engine(self.mysql.url(peer_db))
        stack.push_async_callback(self.sqla_engine.dispose)
        table = sa.Table(
            RAW_TABLE,
            sa.MetaData(),
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("payload", sa.LargeBinary),
        )
        self.sqla_stmt = sa.insert(table)

        self.peers = [
            await peers.open_mysql(stack, self.mysql, peer_db),
            await peers.open_postgres(stack, await self.dbs.create_postgres("peer")),
            await peers.open_sqlite(stack, self.dbs.sqlite_path("peer")),
            await peers.open_memory(),
        ]

        api = load_skialith()
        if isinstance(api, str):
            self.notes.append(f"Skialith contender skipped: {api}")
            return
        self.skialith_api = api
        servers = [(SKIALITH, self.nats, "SKBENCH", "mysql")]
        if self.nats_always is not None:
            servers.append((SKIALITH_ALWAYS, self.nats_always, "SKBENCH_SYNC", "mysql"))
        servers.append((SKIALITH_PG, self.nats, "SKBENCH_PG", "postgres"))
        for name, server, stream, backend in servers:
            try:
                watermark: Watermark
                if backend == "mysql":
                    db = await self.dbs.create_mysql(stream.lower())
                    database_url = self.mysql.url(db)
                    watermark = Watermark(self.mysql, db)
                    stack.callback(watermark.close)
                    db_settings = {
                        "innodb_flush_log_at_trx_commit": self.mysql_info["innodb_flush_log_at_trx_commit"]
                    }
                else:
                    pg_url = await self.dbs.create_postgres(stream.lower())
                    database_url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
                    pg_watermark = PgWatermark(pg_url)
                    stack.push_async_callback(pg_watermark.aclose)
                    watermark = pg_watermark
                    db_settings = {
                        k: v
                        for k, v in (await postgres_settings(pg_url)).items()
                        if k in ("synchronous_commit", "fsync")
                    }
                side = await open_skialith(
                    stack,
                    api,
                    name=name,
                    server=server,
                    database_url=database_url,
                    watermark=watermark,
                    stream=stream,
                    workdir=self.workdir,
                    db_settings=db_settings,
                )
            except Exception as exc:
                self.notes.append(f"{name} contender skipped: {type(exc).__name__}: {exc}")
                continue
            self.skialith.append(side)
            if name == SKIALITH:
                self.agent = api.agent(
                    "bench-agent", settings=skialith_settings(api, server, database_url, stream)
                )
                await self.agent.open()
                stack.push_async_callback(self.agent.close)

    async def raw_insert(self, payload: bytes) -> None:
        """One autocommit ``INSERT`` of ``payload`` into the raw table."""
        async with self.raw_conn.cursor() as cur:
            await cur.execute(f"INSERT INTO {RAW_TABLE} (payload) VALUES (%s)", (payload,))

    async def sqla_insert(self, payload: bytes) -> None:
        """One ``INSERT`` of ``payload`` into the raw table through SQLAlchemy, in its own
        transaction (``engine.begin()``), the way a database-first event store writes an event."""
        async with self.sqla_engine.begin() as conn:
            await conn.execute(self.sqla_stmt, {"payload": payload})

    async def pool(self, size: int) -> aiomysql.Pool:
        """An autocommit aiomysql pool on the peer database (closed at the end of the run)."""
        pool = await aiomysql.create_pool(
            host=self.mysql.host,
            port=self.mysql.port,
            user=self.mysql.user,
            password=self.mysql.password,
            db=f"{self.dbs.prefix}_peer",
            autocommit=True,
            minsize=size,
            maxsize=size,
        )
        return pool

    @property
    def contenders(self) -> list[Contender]:
        """Every saver of the whole-graph and concurrency sections: Skialith (MariaDB read model)
        first, then the peers. Skialith on PostgreSQL runs in the latency section only
        (:attr:`latency_contenders`), to keep a full run near three minutes."""
        return [s.contender for s in self.skialith if s.contender.name != SKIALITH_PG] + self.peers

    @property
    def latency_contenders(self) -> list[Contender]:
        """Every saver of the latency section."""
        return [s.contender for s in self.skialith] + self.peers

    async def caught_up(self) -> None:
        """Wait until every Skialith projection has applied its whole stream."""
        for side in self.skialith:
            await side.caught_up()

    async def _drop_databases(self) -> None:
        failed = await self.dbs.drop_all()
        if failed:
            self.notes.append(f"could not drop: {', '.join(failed)}")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._stack.aclose()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
