"""The read of a thread's latest checkpoint costs the same whatever the thread's history: the one
statement that serves it (statements.latest_all) finds the newest blob of each channel by a probe
per channel, on every read model, once the database has statistics for its tables (ANALYZE), with
many short threads beside one long one. Measured as the database's own count of rows read (MySQL's
Handler_read_* counters, PostgreSQL's EXPLAIN ANALYZE, SQLite's virtual machine steps), not as time.

Before the fix, MariaDB read every blob version of the thread (it never took the loose index scan
the statement counted on), PostgreSQL hash-joined the thread's versions, and SQLite with
statistics built a Bloom filter by reading the whole blobs table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.codec import CheckpointMsg, DeleteThreadMsg
from skialith_langgraph.readmodel import PROJECTION, ReadModel, queries, statements
from skialith_langgraph.readmodel.apply import apply_messages
from skialith_langgraph.readmodel.migrations import MIGRATIONS
from skialith_langgraph.readmodel.tables import pg_escape, schema_version, thread_channels
from skialith_langgraph.subjects import token

CHANNELS = ("alpha", "beta", "gamma")
LONG_RUNS = 200  # checkpoints on the long thread, each a new version of every channel
SHORT_THREADS = 150  # threads of one checkpoint: the table's average versions per channel stays low


async def _write(writer: SkialithCheckpointer, thread_id: str, runs: int) -> str:
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    for i in range(runs):
        cp = empty_checkpoint()
        version = f"{i + 1:08d}"
        cp["channel_values"] = {ch: f"{ch}-{i}" for ch in CHANNELS}
        cp["channel_versions"] = {ch: version for ch in CHANNELS}
        config = await writer.aput(config, cp, {"step": i}, {ch: version for ch in CHANNELS})
    return str(config["configurable"]["checkpoint_id"])


async def _rows_read(conn: AsyncConnection, thread_id: str) -> int:
    """How many rows (SQLite: virtual machine steps) the database reads to serve the latest read."""
    params = {"tk": token(thread_id, field="thread_id"), "nk": token("", field="checkpoint_ns")}
    params |= {"projection": PROJECTION, "cid": None, "stream": None, "created": None}
    dialect = conn.dialect.name
    if dialect == "mysql":

        async def counters() -> int:
            found = await conn.exec_driver_sql(
                "SHOW SESSION STATUS WHERE Variable_name IN ('Handler_read_next', 'Handler_read_prev')"
            )
            return sum(int(v) for _, v in found)

        before = await counters()
        row, _ = await queries.head_row(conn, thread_id, "", None, PROJECTION)
        assert row is not None
        return await counters() - before
    sql, names, defaults = statements._compiled(conn.dialect, "latest_all", 0, ())
    if dialect == "postgresql":
        args = {k: pg_escape(v) if isinstance(v, str) else v for k, v in {**defaults, **params}.items()}
        args = {k: v for k, v in args.items() if k in defaults}
        driver: Any = (await conn.get_raw_connection()).driver_connection
        async with driver.cursor() as cur:
            await cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, args)
            (plan,) = (await cur.fetchone())[0]

        def blob_rows(node: dict[str, Any]) -> int:
            own = node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
            here = own if node.get("Relation Name") == "skialith_checkpoint_blobs" else 0
            return here + sum(blob_rows(child) for child in node.get("Plans", []))

        return blob_rows(plan["Plan"])
    assert dialect == "sqlite"
    raw: Any = (await conn.get_raw_connection()).driver_connection
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    await raw.set_progress_handler(count, 1)
    try:
        async with raw.execute(sql, tuple(params[k] if k in params else defaults[k] for k in names)) as cur:
            assert len(await cur.fetchall()) == 1 + len(CHANNELS)
    finally:
        await raw.set_progress_handler(None, 1)
    return steps


async def _analyze(conn: AsyncConnection) -> None:
    if conn.dialect.name == "mysql":
        for table in ("skialith_checkpoint_blobs", "skialith_thread_channels", "skialith_checkpoints"):
            await conn.exec_driver_sql(f"ANALYZE TABLE {table}")
    else:
        await conn.exec_driver_sql("ANALYZE")


@contextlib.asynccontextmanager
async def _running(
    settings: Settings,
) -> AsyncIterator[tuple[SkialithCheckpointer, SkialithCheckpointer, ReadModel]]:
    """A projector, a writer, a reader standing for another process, and the read model itself."""
    fast = dataclasses.replace(settings, read_wait=0.0)
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    model = ReadModel.from_url(settings.database_url)
    try:
        async with (
            SkialithCheckpointer(settings=fast) as writer,
            SkialithCheckpointer(settings=fast) as reader,
        ):
            yield writer, reader, model
    finally:
        await model.close()
        await projector.stop()


async def _served(reader: SkialithCheckpointer, thread_id: str) -> Any:
    """The reader's latest tuple of ``thread_id`` once the read model serves it."""
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    deadline = time.monotonic() + 60
    while True:
        before = reader.read_stats.database
        tup = await reader.aget_tuple(config)
        if reader.read_stats.database > before and tup is not None:
            return tup
        assert time.monotonic() < deadline, f"the read model never served {thread_id!r}"
        await asyncio.sleep(0.05)


async def test_the_latest_read_does_not_read_the_threads_history(settings: Settings) -> None:
    async with _running(settings) as (writer, reader, model):
        long_id = await _write(writer, "t-long", LONG_RUNS)
        for i in range(SHORT_THREADS):
            await _write(writer, f"t-short-{i}", 1)
        last_short = await _write(writer, "t-short-last", 1)
        # another process reads both from the read model, with the right values
        tup = await _served(reader, "t-long")
        assert tup.config["configurable"]["checkpoint_id"] == long_id
        assert tup.checkpoint["channel_values"] == {ch: f"{ch}-{LONG_RUNS - 1}" for ch in CHANNELS}
        short = await _served(reader, "t-short-last")
        assert short.config["configurable"]["checkpoint_id"] == last_short
        async with model.connect() as conn:
            await _analyze(conn)
        async with model.connect() as conn:
            long_rows = await _rows_read(conn, "t-long")
            short_rows = await _rows_read(conn, "t-short-last")
            total = (await conn.exec_driver_sql("SELECT COUNT(*) FROM skialith_checkpoint_blobs")).scalar()
    versions = LONG_RUNS * len(CHANNELS)
    report = json.dumps(
        {"long": long_rows, "short": short_rows, "blob rows": total, "long versions": versions}
    )
    if settings.database_url.startswith("sqlite"):
        # steps, not rows: reading every blob row (what a Bloom filter over the table does) takes
        # several steps per row
        assert long_rows < total, report
        assert long_rows <= 2 * short_rows + 100, report
    else:
        # rows read: a probe per channel reads a handful; the history is 600 versions
        assert long_rows <= 10 * len(CHANNELS), report
        assert short_rows <= 10 * len(CHANNELS), report


def _ckpt(cid: str, version: str) -> CheckpointMsg:
    return CheckpointMsg(
        thread_id="m",
        checkpoint_ns="",
        checkpoint_id=cid,
        parent_checkpoint_id=None,
        run_id=None,
        checkpoint=("bytes", b"c"),
        metadata=("bytes", b"m"),
        blobs=[(ch, version, "bytes", f"{ch}@{version}".encode()) for ch in CHANNELS],
    )


async def _channels(conn: AsyncConnection) -> set[tuple[str, str, str, str]]:
    c = thread_channels.c
    rows = await conn.execute(select(c.thread_key, c.ns_key, c.channel, c.version))
    return {(r.thread_key, r.ns_key, r.channel, r.version) for r in rows}


async def test_a_read_model_from_before_the_channel_table_gets_it_filled_at_migration(
    database_url: str,
) -> None:
    """A read model at the schema version before ``skialith_thread_channels`` holds a thread: the
    migration creates the table and, on MySQL (the one dialect that reads it), fills it with each
    channel's newest version from the stored blobs, so that thread's latest read finds every newest
    blob in its one statement."""
    tk, nk = token("m", field="thread_id"), token("", field="checkpoint_ns")
    old = ReadModel.from_url(database_url)
    try:
        await old.setup()
        async with old.begin() as conn:
            messages = [(i + 1, _ckpt(f"c{i:03d}", f"{i:04d}")) for i in range(30)]
            await apply_messages(conn, messages, name=None)
            await conn.exec_driver_sql(f"DROP TABLE {thread_channels.name}")
            await conn.execute(delete(schema_version).where(schema_version.c.version == len(MIGRATIONS)))
    finally:
        await old.close()
    model = ReadModel.from_url(database_url)  # the next start migrates
    try:
        await model.setup()
        async with model.connect() as conn:
            found = await _channels(conn)
            row, _ = await queries.head_row(conn, "m", "", None, None)
        mysql = model.engine.dialect.name == "mysql"
        assert found == ({(tk, nk, ch, "0029") for ch in CHANNELS} if mysql else set())
        assert row is not None and row.checkpoint_id == "c029"
        newest = {(r.channel, r.version, r.blob) for r in row.rest if r.kind == "b"}
        assert newest == {(ch, "0029", f"{ch}@0029".encode()) for ch in CHANNELS}
        async with model.begin() as conn:  # a fork's blobs at an older version: the newest stays
            await apply_messages(conn, [(99, _ckpt("c100", "0005"))], name=None)
            assert await _channels(conn) == found
        async with model.begin() as conn:
            await apply_messages(conn, [(100, DeleteThreadMsg(thread_id="m"))], name=None)
            assert await _channels(conn) == set()
    finally:
        await model.close()


async def test_a_channel_the_table_does_not_list_is_still_read(settings: Settings) -> None:
    """The channel table is an index, never the truth: with its rows gone (a database restored
    from an older dump, a hand-made edit), another process still reads every value right."""
    async with _running(settings) as (writer, reader, model):
        last = await _write(writer, "t-gone", 5)
        await _served(reader, "t-gone")
        async with model.begin() as conn:
            await conn.execute(delete(thread_channels))
        before = reader.read_stats.database
        tup = await reader.aget_tuple({"configurable": {"thread_id": "t-gone", "checkpoint_ns": ""}})
        assert reader.read_stats.database == before + 1  # served by the read model, not the log
        assert tup is not None and tup.config["configurable"]["checkpoint_id"] == last
        assert tup.checkpoint["channel_values"] == {ch: f"{ch}-4" for ch in CHANNELS}
