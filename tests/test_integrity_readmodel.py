"""Issue 9, items 1, 4, 5, 11 (parts), 14 and 16: prune is atomic with the log, deletes reclaim
stored parts, keys compare byte for byte, agent parts are not a thread's, list pages by key."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from contextlib import aclosing
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlalchemy import event, func, insert, select, text, update
from sqlalchemy.engine import Engine
from support import dump, dump_of_log, wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithAgent, SkialithCheckpointer
from skialith_langgraph.codec import CheckpointMsg, EventMsg
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel, queries
from skialith_langgraph.readmodel.apply import apply_messages, unspill
from skialith_langgraph.readmodel.migrations import MIGRATIONS
from skialith_langgraph.readmodel.tables import agent_events, blob_parts, checkpoint_blobs, schema_version
from skialith_langgraph.subjects import token
from skialith_langgraph.views import replay

SERDE = JsonPlusSerializer()


def _cp(i: int, **values: Any) -> dict[str, Any]:
    cp = empty_checkpoint()
    cp["id"] = f"{i:08d}-{random.random():.6f}"
    cp["channel_values"] = {"n": i, **values}
    cp["channel_versions"] = {"n": f"{i:08d}", **{k: f"{i:08d}" for k in values}}
    return cp


def _thread(thread: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


async def _latest_everywhere(settings: Settings, thread: str) -> tuple[str | None, str | None]:
    """The latest checkpoint id of ``thread`` in the caught-up read model and in the log."""
    log = await Log.open(settings)
    model = ReadModel.from_url(settings.database_url)
    try:
        last = await log.stream_last_seq()
        await wait_for_watermark(model, last)
        async with model.connect() as conn:
            found = await queries.get_tuple(conn, SERDE, thread, "", None)
        tk = token(thread, field="thread_id")
        async with replay(log, [log.subjects.thread(tk), log.subjects.global_ops], last) as conn:
            logged = await queries.get_tuple(conn, SERDE, thread, "", None)
    finally:
        await model.close()
        await log.close()
    return (
        None if found is None else found.config["configurable"]["checkpoint_id"],
        None if logged is None else logged.config["configurable"]["checkpoint_id"],
    )


# -- item 1: prune racing puts -------------------------------------------------------------------


async def test_prune_racing_puts_never_deletes_the_newest_acknowledged_checkpoint(settings: Settings) -> None:
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    rng = random.Random(1)
    lost: list[str] = []
    try:
        async with (
            SkialithCheckpointer(settings=settings) as writer,
            SkialithCheckpointer(settings=settings) as pruner,
        ):
            for trial in range(20):
                thread = f"race-{trial}"
                config = await writer.aput(_thread(thread), _cp(0), {}, {"n": "00000000"})

                async def put_loop(config: Any = config) -> str:
                    for i in range(1, 25):
                        config = await writer.aput(config, _cp(i), {"step": i}, {"n": f"{i:08d}"})
                    return str(config["configurable"]["checkpoint_id"])

                async def prune(thread: str = thread) -> None:
                    await asyncio.sleep(rng.uniform(0, 0.03))
                    await pruner.aprune([thread], strategy="keep_latest")

                newest, _ = await asyncio.gather(put_loop(), prune())
                seen = await writer.aget_tuple(_thread(thread))
                model_id, log_id = await _latest_everywhere(settings, thread)
                got = None if seen is None else seen.config["configurable"]["checkpoint_id"]
                if (got, model_id, log_id) != (newest, newest, newest):
                    lost.append(f"{thread}: newest {newest}, get_tuple {got}, model {model_id}, log {log_id}")
    finally:
        await projector.stop()
    assert not lost, "\n".join(lost)


# -- item 11 (part): deletes reclaim the stored parts of large values ------------------------------


async def _parts_of(settings: Settings, owner: str) -> int:
    log = await Log.open(settings)
    model = ReadModel.from_url(settings.database_url)
    try:
        await wait_for_watermark(model, await log.stream_last_seq())
        async with model.connect() as conn:
            count = (
                await conn.execute(
                    select(func.count()).select_from(blob_parts).where(blob_parts.c.owner_key == owner)
                )
            ).scalar()
    finally:
        await model.close()
        await log.close()
    return int(count or 0)


async def test_prune_and_delete_for_runs_leave_no_parts_behind(settings: Settings) -> None:
    """Five checkpoints with a 1.5 MiB value each (two parts), and a 1.5 MiB pending write of a run."""
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    tk = token("big", field="thread_id")
    try:
        async with SkialithCheckpointer(settings=settings) as saver:
            config = _thread("big")
            for i in range(5):
                cp = _cp(i, big=random.randbytes(1_500_000))
                config = await saver.aput(config, cp, {"run_id": f"run-{i}"}, cp["channel_versions"])
            await saver.aput_writes(config, [("big", random.randbytes(1_500_000))], "task-1")
            assert await _parts_of(settings, tk) == 12  # 5 blobs and 1 write of two parts each
            await saver.aprune(["big"], strategy="keep_latest")
            assert await _parts_of(settings, tk) == 4  # the kept head's blob and its pending write
            await saver.adelete_for_runs(["run-4"])  # the head and its write go
            assert await _parts_of(settings, tk) == 2  # the head's blob remains (prune's keep-set)
            kept = await saver.aget_tuple(_thread("big"))
            assert kept is None  # its only checkpoint was in run-4
    finally:
        await projector.stop()


# -- item 14: an agent's large values are not a thread's --------------------------------------------


async def test_delete_thread_of_the_same_id_keeps_an_agents_large_checkpoint(settings: Settings) -> None:
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    big = random.randbytes(1_500_000)
    try:
        async with SkialithAgent(agent_id="X", settings=settings) as agent:
            await agent.checkpoint(step=0, data={"blob": big})
            async with SkialithCheckpointer(settings=settings) as saver:
                await saver.aput(_thread("X"), _cp(1, big=random.randbytes(1_500_000)), {}, {"big": "1"})
                await saver.adelete_thread("X")
            await _parts_of(settings, "")  # waits for the projector
            state = await agent.resume()
            assert state.data == {"blob": big}
            assert [r.payload for r in await agent.history()] == [{"blob": big}]
    finally:
        await projector.stop()


# -- item 4: ids that differ only by trailing spaces are distinct keys ------------------------------


async def test_ids_differing_by_trailing_spaces_stay_distinct_in_the_read_model(settings: Settings) -> None:
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    try:
        async with SkialithCheckpointer(settings=settings) as saver:
            for cid, value in (("0001", "plain"), ("0001 ", "spaced")):
                cp = empty_checkpoint()
                cp["id"] = cid
                cp["channel_values"] = {"x": f"{value}-x", "x ": f"{value}-x-space"}
                cp["channel_versions"] = {"x": f"v{value}", "x ": f"v{value}"}
                config = await saver.aput(_thread("pad"), cp, {"v": value}, cp["channel_versions"])
                await saver.aput_writes(config, [("x", f"{value}-t")], "t")
                await saver.aput_writes(config, [("x", f"{value}-t-space")], "t ")
            async with SkialithAgent(agent_id="pad-agent", settings=settings) as agent:
                await agent.save_event("e", 1, step=0)
                await agent.save_event("e ", 2, step=0)
            log = await Log.open(settings)
            model = ReadModel.from_url(settings.database_url)
            try:
                await wait_for_watermark(model, await log.stream_last_seq())
                async with model.connect() as conn:
                    projected = await dump(conn)
                    from_model = {
                        cid: await queries.get_tuple(conn, SERDE, "pad", "", cid) for cid in ("0001", "0001 ")
                    }
                expected = await dump_of_log(log)
            finally:
                await model.close()
                await log.close()
            async with SkialithAgent(agent_id="pad-agent", settings=settings) as agent:
                events = sorted((r.name, r.payload) for r in await agent.history(kind="event"))
    finally:
        await projector.stop()
    assert projected == expected
    assert len(projected["skialith_checkpoints"]) == 2
    assert len(projected["skialith_checkpoint_blobs"]) == 4
    assert len(projected["skialith_checkpoint_writes"]) == 4
    for cid, value in (("0001", "plain"), ("0001 ", "spaced")):
        tup = from_model[cid]
        assert tup is not None and tup.config["configurable"]["checkpoint_id"] == cid
        assert tup.checkpoint["channel_values"] == {"x": f"{value}-x", "x ": f"{value}-x-space"}
        assert sorted(w[:2] for w in tup.pending_writes) == [("t", "x"), ("t ", "x")]
        assert sorted(w[2] for w in tup.pending_writes) == sorted([f"{value}-t", f"{value}-t-space"])
    assert events == [("e", 1), ("e ", 2)]


async def test_migration_makes_existing_mysql_keys_byte_exact_and_moves_agent_parts(mysql_url: str) -> None:
    """A read model created at schema version 1 (4b9c872: utf8mb4_bin keys, agent parts owned by
    the agent's token) holds rows; setup() migrates it in place."""
    from skialith_langgraph.readmodel.apply import agent_owner  # new with the migration

    def ckpt(cid: str, channel: str, value: bytes) -> CheckpointMsg:
        return CheckpointMsg(
            thread_id="m",
            checkpoint_ns="",
            checkpoint_id=cid,
            parent_checkpoint_id=None,
            run_id=None,
            checkpoint=("bytes", b"c"),
            metadata=("bytes", b"m"),
            blobs=[(channel, "1", "bytes", value)],
        )

    big = random.randbytes(1_500_000)
    ak = token("agent-m", field="agent_id")
    model = ReadModel.from_url(mysql_url)
    try:
        async with model.engine.begin() as conn:
            await conn.run_sync(lambda sync: schema_version.create(sync, checkfirst=True))
            await MIGRATIONS[0](conn)
            await conn.execute(insert(schema_version).values(version=1))
            # version 1 as 4b9c872 created it: every verbatim id in utf8mb4_bin (PAD SPACE)
            columns = await conn.execute(
                text(
                    "SELECT TABLE_NAME, COLUMN_NAME, IS_NULLABLE FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME LIKE '%nopad%' "
                    "OR TABLE_SCHEMA = DATABASE() AND COLLATION_NAME = 'utf8mb4_0900_bin'"
                )
            )
            for table, column, nullable in columns.all():
                null = "NULL" if nullable == "YES" else "NOT NULL"
                await conn.exec_driver_sql(
                    f"ALTER TABLE `{table}` MODIFY `{column}` VARCHAR(255) "
                    f"CHARACTER SET utf8mb4 COLLATE utf8mb4_bin {null}"
                )
            event = EventMsg(
                agent_id="agent-m", kind="checkpoint", name="", step=0, payload=("bytes", big), ts=1.0
            )
            await apply_messages(conn, [(1, ckpt("c", "x", b"old")), (2, event)], name=None)
            await conn.execute(
                update(blob_parts).where(blob_parts.c.owner_key == agent_owner(ak)).values(owner_key=ak)
            )
            # PAD SPACE: "x " is the key "x"
            await apply_messages(conn, [(3, ckpt("c", "x ", b"collides"))], name=None)
            assert (await conn.execute(select(func.count()).select_from(checkpoint_blobs))).scalar() == 1
        await model.setup()
        async with model.begin() as conn:
            await apply_messages(
                conn, [(4, ckpt("c", "x", b"plain")), (5, ckpt("c ", "x ", b"spaced"))], name=None
            )
            blobs = sorted(
                tuple(r)
                for r in await conn.execute(select(checkpoint_blobs.c.channel, checkpoint_blobs.c.blob))
            )
            ids = sorted(
                r[0] for r in await conn.execute(text("SELECT checkpoint_id FROM skialith_checkpoints"))
            )
            row = (await conn.execute(select(agent_events.c.type, agent_events.c.payload))).one()
            assert await unspill(conn, agent_owner(ak), row.type, row.payload) == ("bytes", big)
            owners = {r[0] for r in await conn.execute(select(blob_parts.c.owner_key))}
            left = (
                await conn.execute(
                    text(
                        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                        "AND COLLATION_NAME = 'utf8mb4_bin' AND DATA_TYPE = 'varchar'"
                    )
                )
            ).scalar()
    finally:
        await model.close()
    assert blobs == [("x", b"plain"), ("x ", b"spaced")]
    assert ids == ["c", "c "]
    assert owners == {agent_owner(ak)}
    assert left == 0


# -- items 5 and 16: list pages by key and streams ----------------------------------------------------


async def _fill(saver: SkialithCheckpointer, thread: str, n: int, start: int = 0) -> None:
    latest = await saver.aget_tuple(_thread(thread))
    config = latest.config if latest is not None else _thread(thread)
    for i in range(start, start + n):
        config = await saver.aput(config, _cp(i), {"step": i}, {"n": f"{i:08d}"})


async def test_list_during_concurrent_writes_has_no_duplicates_and_is_ordered(settings: Settings) -> None:
    settings = dataclasses.replace(settings, read_wait=10.0)  # served by the read model, not the log
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    problems: list[str] = []
    try:
        async with (
            SkialithCheckpointer(settings=settings) as writer,
            SkialithCheckpointer(settings=settings) as reader,
        ):
            await _fill(writer, "busy", 250)
            done = asyncio.Event()

            async def write() -> None:
                try:
                    for i in range(250, 330):
                        await _fill(writer, "busy", 1, start=i)
                        await asyncio.sleep(0.002)
                finally:
                    done.set()

            async def read() -> int:
                lists = 0
                while not done.is_set() or lists < 2:
                    ids = [
                        t.config["configurable"]["checkpoint_id"] async for t in reader.alist(_thread("busy"))
                    ]
                    lists += 1
                    if len(ids) != len(set(ids)):
                        problems.append(f"list {lists}: {len(ids) - len(set(ids))} duplicates")
                    if ids != sorted(ids, reverse=True):
                        problems.append(f"list {lists}: not newest first")
                return lists

            _, lists = await asyncio.gather(write(), read())
            assert lists >= 2
            assert reader.read_stats.log == 0
            final = [
                t.config["configurable"]["checkpoint_id"]
                for t in await asyncio.to_thread(lambda: list(reader.list(_thread("busy"))))
            ]
            assert len(final) == len(set(final)) == 330
    finally:
        await projector.stop()
    assert not problems, problems


class _HeadQueries:
    """Counts the statements that read a page of checkpoint rows, on any engine: through
    SQLAlchemy, or on the driver's cursor (the hot statements, see readmodel.statements)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.count = 0
        driver_rows = queries.driver_rows

        async def counted(conn: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "page":
                self.count += 1
            return await driver_rows(conn, name, *args, **kwargs)

        monkeypatch.setattr(queries, "driver_rows", counted)

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (
            "FROM skialith_checkpoints" in statement
            and "ORDER BY skialith_checkpoints.checkpoint_id DESC" in statement
        ):
            self.count += 1


async def test_list_yields_its_first_item_after_the_first_page(settings: Settings, monkeypatch: Any) -> None:
    settings = dataclasses.replace(settings, read_wait=10.0)
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    heads = _HeadQueries(monkeypatch)
    try:
        async with SkialithCheckpointer(settings=settings) as writer:
            await _fill(writer, "long", 350)
        await _parts_of(settings, "")  # the projector caught up
        event.listen(Engine, "before_cursor_execute", heads)
        try:
            async with SkialithCheckpointer(settings=settings) as saver:
                async with aclosing(saver.alist(_thread("long"))) as items:
                    first = await anext(items)
                    assert heads.count == 1  # one page of 100 rows read, not all 350
                    # paused half-way: other reads still work, on their own connection
                    assert (await saver.aget_tuple(_thread("long"))) is not None
                    rest = [t async for t in items]
                assert len(rest) == 349 and first.metadata["step"] == 349
                loop_core = saver._cores[asyncio.get_running_loop()]
                assert loop_core.model.engine.pool.checkedout() == 0

                def sync_face() -> tuple[int, int, int]:
                    before = heads.count
                    items = saver.list(_thread("long"))
                    next(items)
                    at_first = heads.count - before
                    saver.get_tuple(_thread("long"))  # paused half-way: no deadlock
                    next(items)
                    items.close()  # abandoned: its read is closed on the loop thread
                    core = saver._cores[saver._loop_thread.loop]
                    return at_first, core.model.engine.pool.checkedout(), heads.count - before

                at_first, checked_out, total = await asyncio.to_thread(sync_face)
                assert at_first == 1
                assert checked_out == 0
                assert total == 1
        finally:
            event.remove(Engine, "before_cursor_execute", heads)
    finally:
        await projector.stop()


async def test_list_served_from_the_log_can_pause_and_read_again(settings: Settings) -> None:
    """No projector: the list is replayed from the log; a caller pausing it and reading again
    must not wait for itself (the replay model is locked while in use)."""
    settings = dataclasses.replace(settings, read_wait=0.0)
    async with SkialithCheckpointer(settings=settings) as writer:
        await _fill(writer, "logged", 5)
    async with SkialithCheckpointer(settings=settings) as saver:
        items = saver.alist(_thread("logged"))
        first = await anext(items)
        again = await asyncio.wait_for(saver.aget_tuple(_thread("logged")), 10)
        assert again is not None and again.config == first.config
        assert len([t async for t in items]) == 4

        def sync_face() -> int:
            items = saver.list(_thread("logged"))
            next(items)
            saver.get_tuple(_thread("logged"))
            return 1 + len(list(items))

        assert await asyncio.wait_for(asyncio.to_thread(sync_face), 20) == 5
        assert saver.read_stats.database == 0
