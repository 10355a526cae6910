"""Schema migrations: a list whose index + 1 is the schema version. Never edit a released entry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import MigrationError
from .tables import dead_letters, metadata, schema_version


async def _v1(conn: AsyncConnection) -> None:
    await conn.run_sync(metadata.create_all, checkfirst=True)


async def _dead_letters(conn: AsyncConnection) -> None:
    """The table of messages the consumers set aside (issue 9, item 8)."""
    await conn.run_sync(lambda sync: dead_letters.create(sync, checkfirst=True))


MIGRATIONS: list[Callable[[AsyncConnection], Awaitable[None]]] = [_v1, _dead_letters]


async def migrate(conn: AsyncConnection) -> int:
    """Bring the schema up to date inside the caller's transaction; returns the version.

    Several processes may start at once on a fresh database: on MySQL/TiDB a named lock makes
    them take turns; on SQLite the loser of the race fails and ``ReadModel.setup`` retries.
    """
    if conn.dialect.name == "mysql":
        got = (await conn.execute(text("SELECT GET_LOCK('skialith_migrate', 60)"))).scalar()
        if got != 1:
            raise MigrationError("could not take the 'skialith_migrate' lock within 60 s")
        try:
            return await _migrate(conn)
        finally:
            await conn.execute(text("SELECT RELEASE_LOCK('skialith_migrate')"))
    return await _migrate(conn)


async def _migrate(conn: AsyncConnection) -> int:
    await conn.run_sync(lambda sync: schema_version.create(sync, checkfirst=True))
    current = (
        await conn.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc()))
    ).scalar()
    current = int(current or 0)
    for version, step in enumerate(MIGRATIONS, start=1):
        if version > current:
            await step(conn)
            await conn.execute(insert(schema_version).values(version=version))
    return len(MIGRATIONS)
