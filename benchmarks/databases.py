"""Per-run MariaDB and PostgreSQL databases, and the durability settings the servers report.

Each run creates its own ``skbench_<hex>`` databases (with a suffix per use) and drops exactly
those at the end: nothing the benchmark did not create is ever dropped.
"""

from __future__ import annotations

import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import aiosqlite
import psycopg

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True, slots=True)
class MySQLTarget:
    """Where the MariaDB/MySQL server is, parsed from a ``mysql://user:pw@host:port/db`` URL."""

    host: str
    port: int
    user: str
    password: str

    @classmethod
    def from_url(cls, url: str) -> MySQLTarget:
        """Parse a ``mysql://`` (or ``mysql+aiomysql://``) URL; the database part is ignored."""
        p = urllib.parse.urlparse(url)
        return cls(
            host=p.hostname or "127.0.0.1",
            port=p.port or 3306,
            user=urllib.parse.unquote(p.username or "root"),
            password=urllib.parse.unquote(p.password or ""),
        )

    def url(self, db: str, scheme: str = "mysql+aiomysql") -> str:
        """Return a URL for database ``db`` in the given scheme."""
        auth = urllib.parse.quote(self.user, safe="")
        if self.password:
            auth += ":" + urllib.parse.quote(self.password, safe="")
        return f"{scheme}://{auth}@{self.host}:{self.port}/{db}"

    async def connect(self, db: str | None = None) -> aiomysql.Connection:
        """Open an autocommit aiomysql connection."""
        return await aiomysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, db=db, autocommit=True
        )


class Databases:
    """Creates and drops this run's databases.

    Args:
        mysql: the MariaDB/MySQL server.
        postgres_url: a libpq URL of any existing database on the PostgreSQL server.
        sqlite_dir: directory for SQLite files (removed by the caller).
    """

    def __init__(self, mysql: MySQLTarget, postgres_url: str, sqlite_dir: Path) -> None:
        self.mysql = mysql
        self.postgres_url = postgres_url
        self.sqlite_dir = sqlite_dir
        self.prefix = f"skbench_{secrets.token_hex(4)}"
        self._mysql_dbs: list[str] = []
        self._pg_dbs: list[str] = []

    async def create_mysql(self, suffix: str) -> str:
        """Create ``<prefix>_<suffix>`` in MariaDB and return its name."""
        name = f"{self.prefix}_{suffix}"
        conn = await self.mysql.connect()
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
        self._mysql_dbs.append(name)
        return name

    async def create_postgres(self, suffix: str) -> str:
        """Create ``<prefix>_<suffix>`` in PostgreSQL and return a URL to it."""
        name = f"{self.prefix}_{suffix}"
        async with await psycopg.AsyncConnection.connect(self.postgres_url, autocommit=True) as conn:
            await conn.execute(f'CREATE DATABASE "{name}"')
        self._pg_dbs.append(name)
        return self.postgres_db_url(name)

    def postgres_db_url(self, name: str) -> str:
        """Return the PostgreSQL URL with its database replaced by ``name``."""
        return urllib.parse.urlunparse(urllib.parse.urlparse(self.postgres_url)._replace(path=f"/{name}"))

    def sqlite_path(self, name: str) -> Path:
        """Return a path for a SQLite file in this run's directory."""
        return self.sqlite_dir / f"{name}.db"

    async def drop_all(self) -> list[str]:
        """Drop every database this object created; return the ones that could not be dropped."""
        failed: list[str] = []
        if self._mysql_dbs:
            conn = await self.mysql.connect()
            try:
                async with conn.cursor() as cur:
                    for name in self._mysql_dbs:
                        try:
                            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                        except Exception:
                            failed.append(f"mysql:{name}")
            finally:
                conn.close()
        if self._pg_dbs:
            async with await psycopg.AsyncConnection.connect(self.postgres_url, autocommit=True) as conn:
                for name in self._pg_dbs:
                    try:
                        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    except Exception:
                        failed.append(f"postgres:{name}")
        self._mysql_dbs.clear()
        self._pg_dbs.clear()
        return failed


async def mysql_settings(target: MySQLTarget) -> dict[str, Any]:
    """Read the durability-relevant settings of the MariaDB/MySQL server."""
    conn = await target.connect()
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin,"
                " @@group_concat_max_len, @@max_allowed_packet"
            )
            row = await cur.fetchone()
    finally:
        conn.close()
    version, flush, sync_binlog, log_bin, gc_len, packet = row
    return {
        "version": version,
        "innodb_flush_log_at_trx_commit": int(flush),
        "sync_binlog": int(sync_binlog),
        "log_bin": bool(log_bin),
        "group_concat_max_len": int(gc_len),
        "max_allowed_packet": int(packet),
    }


async def postgres_settings(url: str) -> dict[str, Any]:
    """Read the durability-relevant settings of the PostgreSQL server."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        out: dict[str, Any] = {}
        for name in ("server_version", "synchronous_commit", "fsync", "wal_sync_method"):
            cur = await conn.execute(f"SHOW {name}")
            row = await cur.fetchone()
            out[name] = row[0] if row else None
    return out


async def sqlite_settings(conn: aiosqlite.Connection) -> dict[str, Any]:
    """Read ``PRAGMA synchronous`` and ``journal_mode`` of an open SQLite connection."""
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    async with conn.execute("PRAGMA synchronous") as cur:
        sync_row = await cur.fetchone()
    async with conn.execute("PRAGMA journal_mode") as cur:
        journal_row = await cur.fetchone()
    sync = int(sync_row[0]) if sync_row else -1
    return {
        "synchronous": f"{sync} ({names.get(sync, '?')})",
        "journal_mode": journal_row[0] if journal_row else None,
        "sqlite_version": aiosqlite.sqlite_version,
    }
