"""Schema migrations: a list whose index + 1 is the schema version. Never edit a released entry."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import delete, exists, func, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import MigrationError
from .apply import PARTS_PREFIX, agent_owner, parts_digest, upsert
from .tables import (
    agent_events,
    blob_parts,
    checkpoint_blobs,
    checkpoint_writes,
    checkpoints_thread_seq,
    dead_letters,
    metadata,
    nopad_collation,
    projection,
    schema_version,
    stream_identity,
    thread_channels,
)

logger = logging.getLogger(__name__)


async def _v1(conn: AsyncConnection) -> None:
    await conn.run_sync(metadata.create_all, checkfirst=True)


async def _nopad_keys(conn: AsyncConnection) -> None:
    """MySQL family: convert the ``utf8mb4_bin`` VARCHAR columns of the skialith_* tables (PAD SPACE:
    "x" and "x " were one key) to the server's binary NO PAD collation, in place.

    The collation is the one the server has (``SHOW COLLATION``): ``utf8mb4_nopad_bin`` on MariaDB,
    ``utf8mb4_0900_bin`` on MySQL 8.0.17+ and TiDB v7.4+ (with its new collation framework, the
    default for new clusters; TiDB changes an indexed column's collation only from v7.x on). A
    server with neither (MySQL 5.7) keeps ``utf8mb4_bin``, with a warning. Turning PAD into NO PAD
    cannot make two stored keys equal, so the ALTERs cannot fail on duplicates. SQLite compares
    bytes already, and PostgreSQL's id columns are in the "C" collation from the start.
    """
    if conn.dialect.name not in ("mysql", "mariadb"):
        return
    found = {
        r[0]
        for r in await conn.exec_driver_sql(
            "SHOW COLLATION WHERE Collation IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')"
        )
    }
    preferred = nopad_collation(conn.dialect)
    target = preferred if preferred in found else next(iter(sorted(found, reverse=True)), None)
    if target is None:
        logger.warning(
            "this MySQL server has no NO PAD binary utf8mb4 collation: ids that differ only by "
            "trailing spaces collide in the read model (MySQL 8.0.17+, MariaDB or TiDB v7.4+ have one)"
        )
        return
    rows = await conn.execute(
        text(
            "SELECT TABLE_NAME, COLUMN_NAME, CHARACTER_MAXIMUM_LENGTH, IS_NULLABLE "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE :tables "
            "AND DATA_TYPE = 'varchar' AND COLLATION_NAME = 'utf8mb4_bin' "
            "ORDER BY TABLE_NAME, ORDINAL_POSITION"
        ),
        {"tables": "skialith\\_%"},
    )
    by_table: dict[str, list[str]] = {}
    for table, column, length, nullable in rows:
        null = "NULL" if nullable == "YES" else "NOT NULL"
        by_table.setdefault(table, []).append(
            f"MODIFY `{column}` VARCHAR({int(length)}) CHARACTER SET utf8mb4 COLLATE {target} {null}"
        )
    for table, changes in by_table.items():
        await conn.exec_driver_sql(f"ALTER TABLE `{table}` " + ", ".join(changes))


async def _agent_parts_owner(conn: AsyncConnection) -> None:
    """Give the stored parts of agents' large values their own owner key (``apply.agent_owner``):
    they were owned by the agent's token, which is also the key of a thread with the same id, so
    deleting that thread deleted them. Copies what agents refer to; drops the old copy unless a
    thread row refers to the same value too."""
    e, p = agent_events.c, blob_parts.c
    refs = await conn.execute(select(e.agent_key, e.type).where(e.type.like(PARTS_PREFIX + "%")).distinct())
    for agent_key, typ in refs.all():
        digest = parts_digest(typ)
        if digest is None:
            continue
        parts = (
            await conn.execute(select(p.part, p.data).where(p.owner_key == agent_key, p.digest == digest))
        ).all()
        if parts:
            owner = agent_owner(agent_key)
            await conn.execute(
                upsert(conn.dialect.name, blob_parts, []),
                [{"owner_key": owner, "digest": digest, "part": r.part, "data": r.data} for r in parts],
            )
        pattern = f"{PARTS_PREFIX}%:{digest}:%"
        shared = (
            await conn.execute(
                select(
                    exists().where(
                        checkpoint_blobs.c.thread_key == agent_key, checkpoint_blobs.c.type.like(pattern)
                    )
                    | exists().where(
                        checkpoint_writes.c.thread_key == agent_key,
                        checkpoint_writes.c.type.like(pattern),
                    )
                )
            )
        ).scalar()
        if not shared:
            await conn.execute(delete(blob_parts).where(p.owner_key == agent_key, p.digest == digest))


async def _stream_identity(conn: AsyncConnection) -> None:
    """The ``skialith_stream`` table: which stream the read model was filled from (issue 9, item 6)."""
    await conn.run_sync(lambda sync: stream_identity.create(sync, checkfirst=True))


async def _dead_letters(conn: AsyncConnection) -> None:
    """The table of messages the consumers set aside (issue 9, item 8)."""
    await conn.run_sync(lambda sync: dead_letters.create(sync, checkfirst=True))


async def _projector_alive(conn: AsyncConnection) -> None:
    """The ``alive_at`` column of ``skialith_projection``: the running projector's heartbeat
    (issue 11, item 3). Tables created at version 1 by this code already have it."""
    columns = await conn.run_sync(lambda sync: inspect(sync).get_columns(projection.name))
    if any(c["name"] == "alive_at" for c in columns):
        return
    kind = projection.c.alive_at.type.compile(dialect=conn.dialect)
    await conn.exec_driver_sql(f"ALTER TABLE {projection.name} ADD COLUMN alive_at {kind} NULL")


async def _inspect_thread_seq_index(conn: AsyncConnection) -> None:
    """The index (thread_key, seq) of skialith_checkpoints, so the thread list of the inspection
    views (issue 12, item 6) reads an index instead of every checkpoint row."""
    await conn.run_sync(lambda sync: checkpoints_thread_seq.create(sync, checkfirst=True))


async def _thread_channels(conn: AsyncConnection) -> None:
    """The ``skialith_thread_channels`` table, filled from the stored blobs on MySQL-family servers
    (the only ones that read it): without it their read of a latest checkpoint scanned every blob
    version of the thread. One pass over the blobs' key."""
    await conn.run_sync(lambda sync: thread_channels.create(sync, checkfirst=True))
    if conn.dialect.name != "mysql":
        return
    b = checkpoint_blobs.c
    newest = select(b.thread_key, b.ns_key, b.channel, func.max(b.version)).group_by(
        b.thread_key, b.ns_key, b.channel
    )
    await conn.execute(
        insert(thread_channels)
        .prefix_with("IGNORE")
        .from_select(["thread_key", "ns_key", "channel", "version"], newest)
    )


# index + 1 is the schema version; append only
MIGRATIONS: list[Callable[[AsyncConnection], Awaitable[None]]] = [
    _v1,
    _nopad_keys,
    _agent_parts_owner,
    _stream_identity,
    _dead_letters,
    _projector_alive,
    _inspect_thread_seq_index,  # issue 12 (inspection)
    _thread_channels,  # issue 11: latest reads on MySQL independent of a thread's history
]

# the key of PostgreSQL's transaction-level advisory lock that serializes migrations
PG_MIGRATE_LOCK = 0x736B69616C697468  # "skialith"


async def migrate(conn: AsyncConnection) -> int:
    """Bring the schema up to date inside the caller's transaction; returns the version.

    Several processes may start at once on a fresh database: on MySQL/TiDB a named lock makes
    them take turns (an advisory lock held until the transaction ends on PostgreSQL); on SQLite the
    loser of the race fails and ``ReadModel.setup`` retries.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATE_LOCK})
        return await _migrate(conn)
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
