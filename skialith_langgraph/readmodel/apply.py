"""Apply log messages to the read model: idempotent upserts, one transaction per batch.

The same code fills the projector's database and the in-memory SQLite model a read builds
from the log when the projector lags, so both answer alike. Upserts are
``INSERT ... ON DUPLICATE KEY UPDATE`` on MySQL/TiDB and ``ON CONFLICT`` on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Insert

from ..codec import CheckpointMsg, DeleteRunsMsg, DeleteThreadMsg, EventMsg, Msg, PruneMsg, WritesMsg
from ..errors import ProjectionError
from ..subjects import token
from .tables import (
    agent_events,
    blob_parts,
    checkpoint_blobs,
    checkpoint_writes,
    checkpoints,
    projection,
    thread_channels,
)

Row = dict[str, Any]

PART_SIZE = 1024 * 1024  # bytes per stored part of a large value
PARTS_PREFIX = "parts:"
# The parts of a thread's values are owned by its thread_key, those of an agent's by this prefix and
# its agent_key: tokens are [A-Za-z0-9_-] only, so the two never meet (a thread and an agent may
# share an id, and deleting the thread must not take the agent's values).
AGENT_OWNER = "a:"
# characters of one multi-row INSERT on MySQL/TiDB (a longer row goes alone); as aiomysql's
# executemany, under the 4 MiB max_allowed_packet of MySQL 5.7 (16 MiB on MariaDB, 64 MiB on 8.0)
MAX_STATEMENT = 1024 * 1024
YIELD_ROWS = 64  # rows rendered between yields to the loop while a statement is being sent


def upsert(dialect: str, table: Any, update: Sequence[str], *, greatest: bool = False) -> Insert:
    """An INSERT that overwrites ``update`` columns on a key conflict (none: keep the first row);
    with ``greatest``, each keeps the greater of the stored and the new value instead."""
    if dialect == "mysql":
        my = mysql.insert(table)
        cols = update or [next(iter(table.primary_key.columns)).name]
        if greatest:
            return my.on_duplicate_key_update({c: func.greatest(table.c[c], my.inserted[c]) for c in cols})
        return my.on_duplicate_key_update({c: my.inserted[c] for c in cols})
    if dialect in ("sqlite", "postgresql"):
        ins = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
        if not update:
            return ins.on_conflict_do_nothing()
        larger = func.max if dialect == "sqlite" else func.greatest  # SQLite's scalar max(a, b)
        return ins.on_conflict_do_update(
            index_elements=[c.name for c in table.primary_key.columns],
            set_={c: larger(table.c[c], ins.excluded[c]) if greatest else ins.excluded[c] for c in update},
        )
    raise ProjectionError(
        f"unsupported database dialect {dialect!r}; use SQLite, MySQL/MariaDB/TiDB or PostgreSQL"
    )


@functools.lru_cache(maxsize=64)
def _multirow(
    dialect: Any, table: Any, update: tuple[str, ...], keys: tuple[str, ...], greatest: bool
) -> tuple[str, str, tuple[str, ...]]:
    """(``INSERT ... VALUES``, ``ON DUPLICATE KEY ...``, key order) of a MySQL upsert of ``keys``."""
    compiled = upsert("mysql", table, update, greatest=greatest).compile(
        dialect=dialect, column_keys=list(keys)
    )
    sql = str(compiled)
    head, sep, rest = sql.partition(" VALUES (")
    if not sep or compiled.positiontup is None:
        raise ProjectionError(f"cannot render a multi-row upsert from {sql!r}")
    tail = rest[rest.index(")") + 1 :]
    # the statement runs without parameters, so "%%" (format paramstyle) means "%"
    return head.replace("%%", "%") + " VALUES ", tail.replace("%%", "%"), tuple(compiled.positiontup)


def _literal(v: Any) -> str:
    """``v`` as a MySQL literal. Text and bytes go as hex (a string column takes the bytes as its
    charset's encoding), which needs no escaping, whatever the session's sql_mode."""
    t = type(v)
    if t is str:
        return f"X'{v.encode().hex()}'" if v else "''"
    if t is bytes:
        return f"X'{v.hex()}'"
    if v is None:
        return "NULL"
    if t is int or t is bool:
        return str(int(v))
    if t is float:
        text = repr(v)
        if text in ("inf", "-inf", "nan"):
            raise ProjectionError(f"cannot store the float {v!r} in MySQL")
        return text if "e" in text else text + "e0"
    if isinstance(v, bytearray | memoryview):
        return f"X'{bytes(v).hex()}'"
    raise ProjectionError(f"cannot render a {t.__name__} as a MySQL literal: {v!r}")


class Batch:
    """Rows gathered from consecutive messages, flushed as a few multi-row statements."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.ckpts: list[Row] = []
        self.blobs: list[Row] = []
        self.writes_first: list[Row] = []  # ordinary writes: the first value wins
        self.writes_last: list[Row] = []  # special writes (negative idx): the last value wins
        self.events: list[Row] = []
        self.parts: list[Row] = []
        # (thread_key, ns_key, channel) -> newest version among the blobs, for skialith_thread_channels
        # (MySQL family only)
        self.channels: dict[tuple[str, str, str], str] | None = {} if self.dialect == "mysql" else None
        self._keys: dict[str, str] = {}  # id -> token; a batch holds many messages of few threads
        self._running: asyncio.Future[Any] | None = None  # the statement the server is executing

    def key(self, value: str, field: str) -> str:
        """``token(value)``, remembered for the batch."""
        key = self._keys.get(value)
        if key is None:
            key = self._keys[value] = token(value, field=field)
        return key

    def spill(self, owner_key: str, typ: str, data: bytes) -> tuple[str, bytes]:
        """Store a value over PART_SIZE in parts; return what the owning row keeps."""
        if len(data) <= PART_SIZE:
            return typ, data
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        n = (len(data) + PART_SIZE - 1) // PART_SIZE
        self.parts.extend(
            {
                "owner_key": owner_key,
                "digest": digest,
                "part": i,
                "data": data[i * PART_SIZE : (i + 1) * PART_SIZE],
            }
            for i in range(n)
        )
        return f"{PARTS_PREFIX}{n}:{digest}:{typ}", b""

    async def upsert_rows(
        self, table: Any, update: Sequence[str], rows: list[Row], *, greatest: bool = False
    ) -> None:
        """Upsert ``rows`` (all with the same keys) as few statements as the packet size allows
        (``update`` and ``greatest`` as :func:`upsert` takes them).

        On MySQL/TiDB the multi-row INSERTs are rendered here, values as hex literals: the
        driver's executemany does the same, but escapes bytes in Python at ~60 us per KiB, which
        was half of the projector's time. SQLite takes them as one executemany.
        """
        if not rows:
            return
        if self.dialect != "mysql":
            await self.conn.execute(upsert(self.dialect, table, update, greatest=greatest), rows)
            return
        literal = _literal
        head, tail, keys = _multirow(self.conn.dialect, table, tuple(update), tuple(rows[0]), greatest)
        sql = [head]
        size = len(head) + len(tail)
        for i, row in enumerate(rows, 1):
            v = "(" + ",".join([literal(row[k]) for k in keys]) + ")"
            if len(sql) > 1 and size + len(v) > MAX_STATEMENT:
                sql[-1] = tail  # the comma after the last row
                await self._send("".join(sql))
                sql, size = [head], len(head) + len(tail)
            sql += (v, ",")
            size += len(v) + 1
            if i % YIELD_ROWS == 0 and self._running is not None:
                await asyncio.sleep(0)  # let the loop write out the statement in flight
        sql[-1] = tail
        await self._send("".join(sql))

    async def _send(self, sql: str) -> None:
        """Start ``sql`` once the statement before it is done, and return while it runs: the
        server executes one statement while the next is rendered here."""
        await self._wait()
        self._running = asyncio.ensure_future(
            self.conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
        )
        await asyncio.sleep(0)  # it writes the statement, then waits for the server

    async def _wait(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            await running

    async def flush(self) -> None:
        try:
            for row in self.parts:  # one part per statement keeps each packet small
                await self.upsert_rows(blob_parts, [], [row])
            if self.ckpts:
                cols = [k for k in self.ckpts[0] if k not in ("thread_key", "ns_key", "checkpoint_id")]
                await self.upsert_rows(checkpoints, cols, self.ckpts)
            await self.upsert_rows(checkpoint_blobs, ["type", "blob"], self.blobs)
            if self.channels:
                rows = [
                    {"thread_key": t, "ns_key": n, "channel": c, "version": v}
                    for (t, n, c), v in sorted(self.channels.items())
                ]
                # the newest version wins, whichever batch brought it
                await self.upsert_rows(thread_channels, ["version"], rows, greatest=True)
            await self.upsert_rows(checkpoint_writes, [], self.writes_first)
            await self.upsert_rows(
                checkpoint_writes, ["channel", "type", "blob", "task_path"], self.writes_last
            )
            await self.upsert_rows(agent_events, ["agent_id", "type", "payload", "ts", "seq"], self.events)
            await self._wait()
        finally:
            if self._running is not None:  # failed while a statement ran: let it end before rollback
                await asyncio.wait([self._running])
                self._running = None
        self.ckpts, self.blobs, self.writes_first, self.writes_last, self.events = [], [], [], [], []
        self.parts = []
        if self.channels is not None:
            self.channels = {}

    async def add(self, seq: int, msg: Msg) -> None:
        if isinstance(msg, CheckpointMsg):
            tk, nk = self.key(msg.thread_id, "thread_id"), self.key(msg.checkpoint_ns, "checkpoint_ns")
            self.ckpts.append(
                {
                    "thread_key": tk,
                    "ns_key": nk,
                    "checkpoint_id": msg.checkpoint_id,
                    "thread_id": msg.thread_id,
                    "checkpoint_ns": msg.checkpoint_ns,
                    "parent_checkpoint_id": msg.parent_checkpoint_id,
                    "run_id": msg.run_id,
                    "type": msg.checkpoint[0],
                    "checkpoint": msg.checkpoint[1],
                    "metadata_type": msg.metadata[0],
                    "metadata": msg.metadata[1],
                    "seq": seq,
                }
            )
            for ch, ver, typ, data in msg.blobs:
                typ, data = self.spill(tk, typ, data)
                self.blobs.append(
                    {"thread_key": tk, "ns_key": nk, "channel": ch, "version": ver, "type": typ, "blob": data}
                )
                if self.channels is not None:
                    known = self.channels.get((tk, nk, ch))
                    if known is None or ver > known:  # code point order: the bytes' order in UTF-8
                        self.channels[(tk, nk, ch)] = ver
        elif isinstance(msg, WritesMsg):
            tk, nk = self.key(msg.thread_id, "thread_id"), self.key(msg.checkpoint_ns, "checkpoint_ns")
            # a repeated special write inside one put_writes keeps the last; ordinary ones the first
            seen: dict[int, Row] = {}
            for idx, ch, typ, data in msg.writes:
                typ, data = self.spill(tk, typ, data)
                row = {
                    "thread_key": tk,
                    "ns_key": nk,
                    "checkpoint_id": msg.checkpoint_id,
                    "task_id": msg.task_id,
                    "idx": idx,
                    "channel": ch,
                    "type": typ,
                    "blob": data,
                    "task_path": msg.task_path,
                }
                if idx < 0 or idx not in seen:
                    seen[idx] = row
            for idx, row in seen.items():
                (self.writes_last if idx < 0 else self.writes_first).append(row)
        elif isinstance(msg, EventMsg):
            ak = token(msg.agent_id, field="agent_id")
            typ, data = self.spill(agent_owner(ak), *msg.payload)
            self.events.append(
                {
                    "agent_key": ak,
                    "kind": msg.kind,
                    "step": msg.step,
                    "name": msg.name,
                    "agent_id": msg.agent_id,
                    "type": typ,
                    "payload": data,
                    "ts": msg.ts,
                    "seq": seq,
                }
            )
        else:
            await self.flush()
            await apply_op(self.conn, msg)


async def apply_op(conn: AsyncConnection, msg: Msg) -> None:
    """Apply a delete, prune or delete-for-runs, in log order."""
    if isinstance(msg, DeleteThreadMsg):
        tk = token(msg.thread_id, field="thread_id")
        for table in (checkpoints, checkpoint_blobs, checkpoint_writes, thread_channels):
            await conn.execute(delete(table).where(table.c.thread_key == tk))
        await conn.execute(delete(blob_parts).where(blob_parts.c.owner_key == tk))
    elif isinstance(msg, PruneMsg):
        tk = token(msg.thread_id, field="thread_id")
        keep = {(token(ns, field="checkpoint_ns"), cid) for ns, cid in msg.keep}
        rows = (
            await conn.execute(
                select(checkpoints.c.ns_key, checkpoints.c.checkpoint_id).where(
                    checkpoints.c.thread_key == tk
                )
            )
        ).all()
        drop = [(r.ns_key, r.checkpoint_id) for r in rows if (r.ns_key, r.checkpoint_id) not in keep]
        for part in _chunks(drop, 200):
            for table in (checkpoints, checkpoint_writes):
                await conn.execute(
                    delete(table).where(
                        table.c.thread_key == tk, tuple_(table.c.ns_key, table.c.checkpoint_id).in_(part)
                    )
                )
        keep_blobs = {(token(ns, field="checkpoint_ns"), ch, ver) for ns, ch, ver in msg.keep_blobs}
        blob_rows = (
            await conn.execute(
                select(
                    checkpoint_blobs.c.ns_key, checkpoint_blobs.c.channel, checkpoint_blobs.c.version
                ).where(checkpoint_blobs.c.thread_key == tk)
            )
        ).all()
        drop_blobs = [tuple(r) for r in blob_rows if tuple(r) not in keep_blobs]
        for part in _chunks(drop_blobs, 200):
            cols = (checkpoint_blobs.c.ns_key, checkpoint_blobs.c.channel, checkpoint_blobs.c.version)
            await conn.execute(
                delete(checkpoint_blobs).where(checkpoint_blobs.c.thread_key == tk, tuple_(*cols).in_(part))
            )
        await reclaim_parts(conn, [tk])
    elif isinstance(msg, DeleteRunsMsg):
        for part in _chunks(msg.run_ids, 200):
            victims = (
                await conn.execute(
                    select(checkpoints.c.thread_key, checkpoints.c.ns_key, checkpoints.c.checkpoint_id).where(
                        checkpoints.c.run_id.in_(part)
                    )
                )
            ).all()
            for vpart in _chunks([tuple(v) for v in victims], 200):
                w = checkpoint_writes.c
                await conn.execute(
                    delete(checkpoint_writes).where(
                        tuple_(w.thread_key, w.ns_key, w.checkpoint_id).in_(vpart)
                    )
                )
            await conn.execute(delete(checkpoints).where(checkpoints.c.run_id.in_(part)))
            await reclaim_parts(conn, {v[0] for v in victims})
    else:  # pragma: no cover - Batch.add handles the rest
        raise ProjectionError(f"cannot apply {type(msg).__name__}")


def agent_owner(agent_key: str) -> str:
    """The ``owner_key`` of an agent's stored parts (see :data:`AGENT_OWNER`)."""
    return AGENT_OWNER + agent_key


def parts_digest(typ: str) -> str | None:
    """The digest a row's ``type`` names when its value is stored in parts, else ``None``."""
    if not typ.startswith(PARTS_PREFIX):
        return None
    fields = typ.split(":", 3)
    return fields[2] if len(fields) == 4 else None


async def reclaim_parts(conn: AsyncConnection, thread_keys: Iterable[str]) -> None:
    """Delete the stored parts of ``thread_keys`` that no remaining blob or write refers to."""
    for tk in sorted(set(thread_keys)):
        stored = set(
            (
                await conn.execute(select(blob_parts.c.digest).where(blob_parts.c.owner_key == tk).distinct())
            ).scalars()
        )
        if not stored:
            continue
        used: set[str | None] = set()
        for table in (checkpoint_blobs, checkpoint_writes):
            found = await conn.execute(
                select(table.c.type)
                .where(table.c.thread_key == tk, table.c.type.like(PARTS_PREFIX + "%"))
                .distinct()
            )
            used.update(parts_digest(t) for t in found.scalars())
        for part in _chunks(sorted(stored - used), 200):
            await conn.execute(
                delete(blob_parts).where(blob_parts.c.owner_key == tk, blob_parts.c.digest.in_(part))
            )


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def apply_messages(
    conn: AsyncConnection, messages: Iterable[tuple[int, Msg]], *, name: str | None, upto: int = 0
) -> int:
    """Apply ``(seq, msg)`` pairs in order inside the caller's transaction.

    When ``name`` is given, messages at or below that projection's watermark are skipped
    (redeliveries) and the watermark is advanced in the same transaction, to ``upto`` at least
    (the last sequence of the fetched batch, which may end in parts or skipped messages).

    Returns:
        The highest sequence applied (0 when nothing was).
    """
    floor = await lock_watermark(conn, name) if name else 0
    batch = Batch(conn)
    top = 0
    for seq, msg in messages:
        if seq <= floor:
            continue
        await batch.add(seq, msg)
        top = max(top, seq)
    await batch.flush()
    top = max(top, upto)
    if name and top > floor:
        await set_watermark(conn, name, top)
    return top


async def lock_watermark(conn: AsyncConnection, name: str) -> int:
    """Read the watermark holding its row lock until the transaction ends.

    Projector replicas may run at once; this serializes their batches, so each applies only what
    no other replica applied before it, in stream order (a delete is never undone by a late put).
    On SQLite the UPDATE takes the database write lock; on MySQL/TiDB the upsert takes the row's
    exclusive lock whether it creates the row or not, and ``FOR UPDATE`` reads the latest value.
    On PostgreSQL the INSERT creates the row if missing and ``FOR UPDATE`` takes its lock, waiting
    for another replica's batch and then reading the value it committed.
    MySQL and PostgreSQL get plain SQL: built with SQLAlchemy Core, these statements cost ~0.5 ms
    of CPU each, which was most of a small batch's commit.
    """
    if conn.dialect.name == "postgresql":
        t, args = projection.name, {"name": name}
        await conn.exec_driver_sql(
            f"INSERT INTO {t} (name, last_seq) VALUES (%(name)s, 0) ON CONFLICT (name) DO NOTHING", args
        )
        found = await conn.exec_driver_sql(f"SELECT last_seq FROM {t} WHERE name = %(name)s FOR UPDATE", args)
        return int(found.scalar() or 0)
    if conn.dialect.name == "mysql":
        t = projection.name
        await conn.exec_driver_sql(
            f"INSERT INTO {t} (name, last_seq) VALUES (%s, 0) ON DUPLICATE KEY UPDATE name = name", (name,)
        )
        found = await conn.exec_driver_sql(f"SELECT last_seq FROM {t} WHERE name = %s FOR UPDATE", (name,))
        return int(found.scalar() or 0)
    await conn.execute(upsert(conn.dialect.name, projection, []), [{"name": name, "last_seq": 0}])
    lock = update(projection).where(projection.c.name == name).values(last_seq=projection.c.last_seq)
    await conn.execute(lock)
    return await watermark(conn, name)


async def watermark(conn: AsyncConnection, name: str) -> int:
    value = (await conn.execute(select(projection.c.last_seq).where(projection.c.name == name))).scalar()
    return int(value or 0)


async def set_watermark(conn: AsyncConnection, name: str, seq: int) -> None:
    """Set the watermark; the row exists and is locked (see :func:`lock_watermark`)."""
    if conn.dialect.name == "mysql":
        await conn.exec_driver_sql(f"UPDATE {projection.name} SET last_seq = %s WHERE name = %s", (seq, name))
        return
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(
            f"UPDATE {projection.name} SET last_seq = %(seq)s WHERE name = %(name)s",
            {"seq": seq, "name": name},
        )
        return
    await conn.execute(upsert(conn.dialect.name, projection, ["last_seq"]), [{"name": name, "last_seq": seq}])


# A running consumer records in its watermark row that it is alive, every ALIVE_EVERY seconds, idle or
# not; readers take one silent for ALIVE_STALE seconds (its clock against theirs) for stopped, and
# read the log at once instead of waiting for it (see views.consistent_view).
ALIVE_EVERY = 2.0
ALIVE_STALE = 15.0


async def record_alive(conn: AsyncConnection, name: str, at: float) -> None:
    """Record that the consumer of watermark ``name`` is alive at ``at`` (epoch seconds)."""
    row = {"name": name, "last_seq": 0, "alive_at": at}
    await conn.execute(upsert(conn.dialect.name, projection, ["alive_at"]), [row])


async def clear_alive(conn: AsyncConnection, name: str, mine: float) -> None:
    """Record that the consumer that last said ``mine`` stopped (unless another replica spoke since)."""
    c = projection.c
    await conn.execute(update(projection).where(c.name == name, c.alive_at == mine).values(alive_at=None))


async def alive_at(conn: AsyncConnection, name: str) -> float | None:
    """When the consumer of watermark ``name`` last said it is alive (``None``: never, or it stopped)."""
    value = (await conn.execute(select(projection.c.alive_at).where(projection.c.name == name))).scalar()
    return None if value is None else float(value)


__all__ = [
    "ALIVE_EVERY",
    "ALIVE_STALE",
    "alive_at",
    "clear_alive",
    "record_alive",
    "Batch",
    "agent_owner",
    "reclaim_parts",
    "lock_watermark",
    "apply_messages",
    "apply_op",
    "set_watermark",
    "watermark",
]


async def unspill(conn: AsyncConnection, owner_key: str, typ: str, data: bytes) -> tuple[str, bytes]:
    """The whole value of a row that may hold it in parts (see :meth:`Batch.spill`)."""
    if not typ.startswith(PARTS_PREFIX):
        return typ, data
    n_text, digest, original = typ[len(PARTS_PREFIX) :].split(":", 2)
    rows = (
        await conn.execute(
            select(blob_parts.c.part, blob_parts.c.data)
            .where(blob_parts.c.owner_key == owner_key, blob_parts.c.digest == digest)
            .order_by(blob_parts.c.part)
        )
    ).all()
    if len(rows) != int(n_text):
        raise ProjectionError(
            f"value {digest} of {owner_key!r} has {len(rows)} of {n_text} parts in the read model"
        )
    return original, b"".join(r.data for r in rows)
