"""The read model's one-statement read of a thread's latest checkpoint (statements.latest_all) and the
read that starts its first statement alongside the log lookups (checkpointer.get_tuple): what they
return must equal what the writer stored, whatever the thread's shape."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint

from skialith_langgraph import Projector, Settings, SkialithCheckpointer


def _checkpoint(versions: dict[str, str], values: dict[str, Any]) -> Any:
    cp = empty_checkpoint()
    cp["channel_values"] = dict(values)
    cp["channel_versions"] = dict(versions)
    return cp


async def _caught_up(reader: SkialithCheckpointer, config: RunnableConfig, checkpoint_id: str) -> Any:
    """The reader's latest tuple once the read model serves it (the projector runs in the test)."""
    deadline = time.monotonic() + 30
    while True:
        before = reader.read_stats.database
        tup = await reader.aget_tuple(config)
        if reader.read_stats.database > before and tup is not None:
            assert tup.config["configurable"]["checkpoint_id"] == checkpoint_id
            return tup
        assert time.monotonic() < deadline, "the read model never answered"
        await asyncio.sleep(0.05)


async def test_latest_checkpoint_forked_from_an_older_one_reads_its_own_channel_versions(
    settings: Settings,
) -> None:
    """The latest checkpoint names an older version of a channel than the thread's newest blob (a
    fork of an earlier checkpoint): another process reads that older value, and its pending writes."""
    fast = dataclasses.replace(settings, read_wait=0.0)
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        async with (
            SkialithCheckpointer(settings=fast) as writer,
            SkialithCheckpointer(settings=fast) as reader,
        ):
            base: RunnableConfig = {"configurable": {"thread_id": "t-fork", "checkpoint_ns": ""}}
            c1 = _checkpoint({"x": "1", "y": "1"}, {"x": "first", "y": "kept"})
            cfg1 = await writer.aput(base, c1, {"step": 0}, {"x": "1", "y": "1"})
            c2 = _checkpoint({"x": "2", "y": "1"}, {"x": "second", "y": "kept"})
            await writer.aput(cfg1, c2, {"step": 1}, {"x": "2"})
            # a fork of c1: newer id, but channel x at version 1 while version 2 is the newest blob
            c3 = _checkpoint({"x": "1", "y": "1"}, {"x": "first", "y": "kept"})
            cfg3 = await writer.aput(cfg1, c3, {"step": 1}, {})
            await writer.aput_writes(cfg3, [("x", "w0"), ("y", "w1")], "task-b")
            await writer.aput_writes(cfg3, [("x", "w2")], "task-a")

            tup = await _caught_up(reader, base, c3["id"])
            assert tup.checkpoint["channel_values"] == {"x": "first", "y": "kept"}
            assert tup.parent_config is not None
            assert tup.parent_config["configurable"]["checkpoint_id"] == c1["id"]
            assert tup.metadata["step"] == 1
            assert sorted(tup.pending_writes) == sorted(
                [("task-a", "x", "w2"), ("task-b", "x", "w0"), ("task-b", "y", "w1")]
            )
            # and the thread's unforked shape reads the same through the one statement
            c4 = _checkpoint({"x": "3", "y": "1"}, {"x": "fourth", "y": "kept"})
            await writer.aput(cfg3, c4, {"step": 2}, {"x": "3"})
            tup = await _caught_up(reader, base, c4["id"])
            assert tup.checkpoint["channel_values"] == {"x": "fourth", "y": "kept"}
            assert tup.pending_writes == []
    finally:
        await projector.stop()


async def test_many_reads_at_once_then_close_return_every_connection(settings: Settings) -> None:
    """Reads return their connection to the pool after answering; closing waits for that, and a
    checkpointer read from many tasks at once answers each of them right."""
    fast = dataclasses.replace(settings, read_wait=0.0)
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        async with SkialithCheckpointer(settings=fast) as writer:
            ids = {}
            for i in range(8):
                base: RunnableConfig = {"configurable": {"thread_id": f"t-many-{i}", "checkpoint_ns": ""}}
                cp = _checkpoint({"v": "1"}, {"v": i})
                await writer.aput(base, cp, {"step": 0}, {"v": "1"})
                ids[i] = cp["id"]
        reader = SkialithCheckpointer(settings=fast)
        await reader.asetup()
        for i in range(8):
            await _caught_up(reader, {"configurable": {"thread_id": f"t-many-{i}"}}, ids[i])
        tuples = await asyncio.gather(
            *(reader.aget_tuple({"configurable": {"thread_id": f"t-many-{i % 8}"}}) for i in range(40))
        )
        assert [t.checkpoint["channel_values"]["v"] for t in tuples if t] == [i % 8 for i in range(40)]
        cores = list(reader._cores.values())
        pools = [c.model.engine.pool for c in cores]
        await reader.aclose()
        assert all(not c.releasing for c in cores)  # closing waited for every connection's return
        assert all(p.checkedout() == 0 for p in pools)  # type: ignore[attr-defined]
    finally:
        await projector.stop()


async def test_list_pages_past_a_hundred_checkpoints_with_their_writes_and_blobs(settings: Settings) -> None:
    """``alist`` from another process, served by the read model, pages a thread of more checkpoints
    than one page holds (100): every checkpoint once, newest first, each with its own channel
    values and pending writes; ``before``, ``limit``, ``filter`` and a namespace narrow it."""
    fast = dataclasses.replace(settings, read_wait=0.0)
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        async with (
            SkialithCheckpointer(settings=fast) as writer,
            SkialithCheckpointer(settings=fast) as reader,
        ):
            written: dict[str, list[str]] = {"": [], "sub": []}
            for ns, count in (("", 130), ("sub", 3)):
                cfg: RunnableConfig = {"configurable": {"thread_id": "t-pages", "checkpoint_ns": ns}}
                for i in range(count):
                    v = f"{i + 1:032}.0"
                    cp = _checkpoint({"x": v, "y": "1"}, {"x": f"{ns}-{i}", "y": "kept"})
                    cfg = await writer.aput(cfg, cp, {"step": i, "even": i % 2 == 0}, {"x": v, "y": "1"})
                    await writer.aput_writes(cfg, [("x", f"w-{ns}-{i}")], f"task-{i}")
                    written[ns].append(cp["id"])
            await _caught_up(
                reader, {"configurable": {"thread_id": "t-pages", "checkpoint_ns": ""}}, written[""][-1]
            )

            thread: RunnableConfig = {"configurable": {"thread_id": "t-pages", "checkpoint_ns": ""}}
            before = reader.read_stats.database
            tuples = [t async for t in reader.alist(thread)]
            assert reader.read_stats.database == before + 1  # served by the read model
            assert [t.config["configurable"]["checkpoint_id"] for t in tuples] == written[""][::-1]
            for n, t in zip(range(129, -1, -1), tuples, strict=True):
                assert t.checkpoint["channel_values"] == {"x": f"-{n}", "y": "kept"}
                assert t.pending_writes == [(f"task-{n}", "x", f"w--{n}")]
                assert t.metadata["step"] == n

            older = [
                t
                async for t in reader.alist(
                    thread, before={"configurable": {"checkpoint_id": written[""][120]}}, limit=3
                )
            ]
            assert [t.checkpoint["channel_values"]["x"] for t in older] == ["-119", "-118", "-117"]
            even = [t async for t in reader.alist(thread, filter={"even": True})]
            assert [t.metadata["step"] for t in even] == list(range(128, -1, -2))
            everything = [t async for t in reader.alist({"configurable": {"thread_id": "t-pages"}})]
            assert len(everything) == 133
            sub = [
                t.checkpoint["channel_values"]["x"]
                for t in everything
                if t.config["configurable"]["checkpoint_ns"]
            ]
            assert sub == ["sub-2", "sub-1", "sub-0"]
    finally:
        await projector.stop()


async def test_list_after_a_write_the_projector_has_not_applied_includes_that_write(
    settings: Settings,
) -> None:
    """``alist`` from another process reads its first page alongside the log lookups; when the read
    model is behind the thread's last write (its projector stopped), that page is not used and the
    list still holds every acknowledged checkpoint, newest first."""
    fast = dataclasses.replace(settings, read_wait=0.0)
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    stopped = False
    try:
        async with (
            SkialithCheckpointer(settings=fast) as writer,
            SkialithCheckpointer(settings=fast) as reader,
        ):
            cfg: RunnableConfig = {"configurable": {"thread_id": "t-behind", "checkpoint_ns": ""}}
            ids = []
            for i in range(3):
                cp = _checkpoint({"x": f"{i + 1}"}, {"x": i})
                cfg = await writer.aput(cfg, cp, {"step": i}, {"x": f"{i + 1}"})
                ids.append(cp["id"])
            thread: RunnableConfig = {"configurable": {"thread_id": "t-behind"}}
            await _caught_up(reader, thread, ids[-1])
            before = reader.read_stats.database
            assert [t.config["configurable"]["checkpoint_id"] async for t in reader.alist(thread)] == ids[
                ::-1
            ]
            assert reader.read_stats.database == before + 1

            await projector.stop()
            stopped = True
            cp = _checkpoint({"x": "4"}, {"x": 3})
            await writer.aput(cfg, cp, {"step": 3}, {"x": "4"})
            ids.append(cp["id"])
            logged = reader.read_stats.log
            listed = [t async for t in reader.alist(thread)]
            assert [t.config["configurable"]["checkpoint_id"] for t in listed] == ids[::-1]
            assert listed[0].checkpoint["channel_values"] == {"x": 3}
            assert reader.read_stats.log == logged + 1  # answered from the log, not the stale page
    finally:
        if not stopped:
            await projector.stop()


async def test_reads_use_the_pool_when_their_held_connections_cannot_be_opened(
    settings: Settings, caplog: Any
) -> None:
    """The hot reads' connections (readmodel.hot) are opened by their own engine (asyncmy on MySQL):
    one that the server refuses while the pool's connections work (here a user the server does not
    know) must not pause the read model. Reads are served by the read model through the pool,
    with one warning naming the database; the held connections open again once they can."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite reads on the pool's connections: no held ones")
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    fast = dataclasses.replace(settings, read_wait=0.0)
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        async with (
            SkialithCheckpointer(settings=fast) as writer,
            SkialithCheckpointer(settings=fast) as reader,
        ):
            base: RunnableConfig = {"configurable": {"thread_id": "t-pool", "checkpoint_ns": ""}}
            cp = _checkpoint({"v": "1"}, {"v": "one"})
            await writer.aput(base, cp, {"step": 0}, {"v": "1"})
            await reader.asetup()
            core = reader._cores[asyncio.get_running_loop()]
            model = core.model
            good = model.hot_engine
            assert good is not None
            refused = make_url(str(good.url.render_as_string(hide_password=False))).set(
                username="skialith_no_such_user", password="wrong"
            )
            model.hot_engine = create_async_engine(refused, isolation_level="AUTOCOMMIT")
            try:
                for _ in range(3):
                    tup = await _caught_up(reader, base, cp["id"])
                    assert tup.checkpoint["channel_values"] == {"v": "one"}
                assert not model.down
                assert len(core.hot) == 0  # nothing held: every read went through the pool
                warned = [r for r in caplog.records if "cannot open a read connection" in r.getMessage()]
                assert len(warned) == 1, warned
                assert model.url in warned[0].getMessage()
            finally:
                await model.hot_engine.dispose()
                model.hot_engine = good
            core.hot._off_until = 0.0  # the retry pause over: held connections again
            await _caught_up(reader, base, cp["id"])
            assert len(core.hot) == 1
    finally:
        await projector.stop()
