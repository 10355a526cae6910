"""prune(keep_latest) trims the thread's superseded messages from the stream (issue 9, item 11).

Before, every message ever written on a pruned thread stayed on the stream, so a read served from
the log replayed the thread's whole history. Now the prune stores the kept content again and
purges what it superseded: few messages remain, reads from the log answer as before, and a
projector that starts from scratch after the prune ends with the rows of one that ran throughout.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from graphs import delta
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from support import dump, wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.log import Header, Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.subjects import token
from skialith_langgraph.traces import TraceIngest

N_CHECKPOINTS = 300


@pytest.fixture
async def log(settings: Settings) -> AsyncIterator[Log]:
    log = await Log.open(settings, ensure_stream=True)
    try:
        yield log
    finally:
        await log.close()


async def thread_messages(log: Log, thread_id: str) -> int:
    """How many messages the stream holds on the thread's subjects."""
    subjects = log.subjects.thread(token(thread_id, field="thread_id"))
    info = await log.js.stream_info(log.settings.stream, subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


def config(thread_id: str, checkpoint_id: str | None = None) -> RunnableConfig:
    conf: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


async def write_history(savers: list[Any], thread_id: str, n: int) -> None:
    """``n`` checkpoints, each with a new value of one channel (a channel written once at the
    start keeps its blob in the first message), writes on every checkpoint (pending on the last)."""
    parent: str | None = None
    versions: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for i in range(n):
        ckpt = empty_checkpoint()
        new: dict[str, Any] = {}
        if i == 0:
            values["constant"], new["constant"] = "set once", "1"
        values["counter"] = {"i": i, "pad": "x" * 50}
        new["counter"] = f"{i + 2:032}.0"
        versions.update(new)
        ckpt["channel_values"] = dict(values)
        ckpt["channel_versions"] = dict(versions)
        meta: dict[str, Any] = {"source": "loop", "step": i, "parents": {}}
        for saver in savers:
            await saver.aput(config(thread_id, parent), ckpt, meta, new)
            await saver.aput_writes(
                config(thread_id, ckpt["id"]), [("counter", i), ("other", [i])], f"task-{i}"
            )
            await saver.aput_writes(config(thread_id, ckpt["id"]), [("__error__", f"e{i}")], f"err-{i}")
        parent = ckpt["id"]


def comparable(t: CheckpointTuple | None) -> Any:
    assert t is not None
    return (t.config, t.checkpoint, t.metadata, t.parent_config, sorted(t.pending_writes or []))


async def test_prune_trims_the_thread_and_reads_still_agree(
    settings: Settings, log: Log, tmp_path: Path
) -> None:
    projector = Projector(settings, fetch_timeout=0.2)  # runs throughout
    await projector.start()
    writer = SkialithCheckpointer(settings=settings)
    reference = InMemorySaver()
    try:
        await write_history([writer, reference], "t", N_CHECKPOINTS)
        await write_history([writer, reference], "other", 3)
        assert await thread_messages(log, "t") == 3 * N_CHECKPOINTS
        expected = comparable(await reference.aget_tuple(config("t")))

        await writer.aprune(["t"], strategy="keep_latest")
        await writer.aput_writes(
            config("t", expected[0]["configurable"]["checkpoint_id"]), [("late", 1)], "after"
        )
        expected[4].append(("after", "late", 1))
        expected[4].sort()

        # the prune, the kept checkpoint, its two tasks' writes, the write made after it
        assert await thread_messages(log, "t") <= 5
        assert await thread_messages(log, "other") == 9  # other threads untouched

        # a reader whose read model is empty reads the log, and sees what InMemorySaver would
        lone = dataclasses.replace(
            settings, database_url=f"sqlite+aiosqlite:///{tmp_path / 'none.db'}", read_wait=0.0
        )
        reader = SkialithCheckpointer(settings=lone)
        try:
            got = await reader.aget_tuple(config("t"))
            assert comparable(got) == expected
            listed = [comparable(t) async for t in reader.alist(config("t"))]
            assert listed == [expected]
            assert reader.read_stats.log >= 2 and reader.read_stats.database == 0
            other = [comparable(t) async for t in reader.alist(config("other"))]
            assert other == [comparable(t) async for t in reference.alist(config("other"))]
        finally:
            await reader.aclose()

        # a projector started from scratch after the prune ends with the same rows
        last = await log.stream_last_seq()
        fresh_settings = dataclasses.replace(
            settings, database_url=f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        )
        fresh = Projector(fresh_settings, fetch_timeout=0.2, replica="fresh")
        await fresh.start()
        try:
            fresh_model = ReadModel.from_url(fresh_settings.database_url)
            await wait_for_watermark(fresh_model, last)
            throughout_model = ReadModel.from_url(settings.database_url)
            await wait_for_watermark(throughout_model, last)
            async with fresh_model.connect() as a, throughout_model.connect() as b:
                assert await dump(a) == await dump(b)
            await fresh_model.close()
            await throughout_model.close()
        finally:
            await fresh.stop()
    finally:
        await writer.aclose()
        await projector.stop()


async def test_prune_trim_leaves_traces_as_they_were(settings: Settings, log: Log) -> None:
    ingest = TraceIngest(settings, fetch_timeout=0.2)
    await ingest.start()
    writer = SkialithCheckpointer(settings=settings)
    try:
        await write_history([writer], "t", 20)
        await ingest.catch_up(timeout=30)
        before = await ingest.traces(thread_id="t")
        assert len(before) == 60  # 20 checkpoints, 40 tasks
        await writer.aprune(["t"], strategy="keep_latest")
        assert await thread_messages(log, "t") <= 4  # trimmed
        await ingest.catch_up(timeout=30)
        assert await ingest.traces(thread_id="t") == before  # nothing traced twice, nothing moved
    finally:
        await writer.aclose()
        await ingest.stop()


async def test_prune_trim_keeps_delta_channel_ancestors(settings: Settings, log: Log, tmp_path: Path) -> None:
    writer = SkialithCheckpointer(settings=settings)
    calls: Counter[str] = Counter()
    app = delta(calls).compile(checkpointer=writer)
    cfg: RunnableConfig = {"configurable": {"thread_id": "d"}}
    try:
        for i in range(12):
            await app.ainvoke({"items": [f"in{i}"]}, cfg)
        await app.aupdate_state(cfg, {"items": ["u"]})  # the head is between snapshots
        want = (await app.aget_state(cfg)).values
        before = await thread_messages(log, "d")
        await writer.aprune(["d"], strategy="keep_latest")
        kept = [s async for s in app.aget_state_history(cfg)]
        assert 1 < len(kept) < 10
        assert await thread_messages(log, "d") < before // 3

        lone = dataclasses.replace(
            settings, database_url=f"sqlite+aiosqlite:///{tmp_path / 'none.db'}", read_wait=0.0
        )
        reader = SkialithCheckpointer(settings=lone)
        try:
            rapp = delta(Counter()).compile(checkpointer=reader)
            assert (await rapp.aget_state(cfg)).values == want
            history = [(s.config, s.values, s.metadata) async for s in rapp.aget_state_history(cfg)]
            assert history == [(s.config, s.values, s.metadata) for s in kept]
            assert reader.read_stats.database == 0
            # and the thread goes on from the trimmed log
            assert (await rapp.ainvoke({"items": ["more"]}, cfg))["items"][-3:] == [
                "u",
                "more",
                "n1",
            ]  # a fresh node counter
        finally:
            await reader.aclose()
    finally:
        await writer.aclose()


async def test_prune_does_not_purge_when_the_thread_is_written_meanwhile(
    settings: Settings, log: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put from another writer landing while the prune stores its kept content again stops the
    trim: nothing is purged, and reads see the prune, the kept content and the new put."""
    writer, other = SkialithCheckpointer(settings=settings), SkialithCheckpointer(settings=settings)
    reference = InMemorySaver()
    try:
        await write_history([writer, reference], "t", 10)
        head = comparable(await reference.aget_tuple(config("t")))
        cid = head[0]["configurable"]["checkpoint_id"]
        publish = Log.publish
        injected = False

        async def racing(self: Log, subject: str, body: bytes, msg_id: str, **kw: Any) -> int:
            nonlocal injected
            if subject.endswith(".r") and not injected:
                injected = True  # a real put from another writer, between two republished messages
                await other.aput_writes(config("t", cid), [("raced", 1)], "racer")
            return await publish(self, subject, body, msg_id, **kw)

        monkeypatch.setattr(Log, "publish", racing)
        await writer.aprune(["t"], strategy="keep_latest")
        monkeypatch.setattr(Log, "publish", publish)
        assert injected
        assert await thread_messages(log, "t") > 30  # not purged
        lone = dataclasses.replace(
            settings, database_url=f"sqlite+aiosqlite:///{tmp_path / 'none.db'}", read_wait=0.0
        )
        reader = SkialithCheckpointer(settings=lone)
        try:
            got = comparable(await reader.aget_tuple(config("t")))
            assert got[:4] == head[:4]
            assert got[4] == sorted([*head[4], ("racer", "raced", 1)])
            assert [comparable(t)[0] async for t in reader.alist(config("t"))] == [head[0]]
        finally:
            await reader.aclose()
    finally:
        await writer.aclose()
        await other.aclose()


BIG = 5000  # bytes: several parts at chunk_size=1024


def big_checkpoint(value: Any, version: str) -> Any:
    cp = empty_checkpoint()
    cp["channel_values"] = {"v": value}
    cp["channel_versions"] = {"v": version}
    return cp


async def test_prune_trims_the_parts_of_large_values_it_superseded(settings: Settings, log: Log) -> None:
    """The parts of large values the prune superseded leave the stream too: what remains on the
    thread's part subjects is what the kept checkpoint needs."""
    settings = settings.replace(chunk_size=1024)
    async with SkialithCheckpointer(settings=settings) as saver:
        saved = config("t")
        for i in range(10):
            value = bytes([i]) * BIG
            saved = await saver.aput(saved, big_checkpoint(value, f"{i + 1}"), {"step": i}, {"v": f"{i + 1}"})
        tk = token("t", field="thread_id")
        parts = log.subjects.thread_parts(tk)
        before = await log.js.stream_info(log.settings.stream, subjects_filter=parts)
        await saver.aprune(["t"], strategy="keep_latest")
        after = await log.js.stream_info(log.settings.stream, subjects_filter=parts)
        n_before = sum((before.state.subjects or {}).values())
        n_after = sum((after.state.subjects or {}).values())
        assert n_before >= 10 * 5 and n_after <= 2 * 5, (n_before, n_after)  # the kept value, at most twice
    lone = settings.replace(database_url="sqlite+aiosqlite://", read_wait=0.0)
    async with SkialithCheckpointer(settings=lone) as reader:
        tup = await reader.aget_tuple(config("t"))
        assert tup is not None and tup.checkpoint["channel_values"] == {"v": bytes([9]) * BIG}


@pytest.mark.parametrize("projector_running", [False, True], ids=["log", "model"])
async def test_a_prune_landing_between_the_parts_of_a_put_leaves_the_put_whole(
    settings: Settings, projector_running: bool
) -> None:
    """A large put whose parts are stored before a prune and whose final message after it (so the
    prune's trim purges those parts) publishes itself again whole, as it does for a delete."""
    settings = settings.replace(chunk_size=1024)
    big = b"x" * BIG
    async with (
        SkialithCheckpointer(settings=settings) as writer,
        SkialithCheckpointer(settings=settings) as pruner,
    ):
        first = await writer.aput(config("t"), big_checkpoint("small", "1"), {"step": 0}, {"v": "1"})
        core = writer._cores[next(iter(writer._cores))]
        wlog = core.log
        assert wlog is not None
        publish = wlog._publish
        at_final, release = asyncio.Event(), asyncio.Event()

        async def held(subject: str, body: bytes, headers: dict[str, str]) -> int:
            if Header.PARTS.value in headers and not release.is_set():
                at_final.set()  # the parts are stored; hold the message naming them
                await release.wait()
            return await publish(subject, body, headers)

        wlog._publish = held  # type: ignore[method-assign]
        put = asyncio.create_task(writer.aput(first, big_checkpoint(big, "2"), {"step": 1}, {"v": "2"}))
        await asyncio.wait_for(at_final.wait(), 30)
        await pruner.aprune(["t"], strategy="keep_latest")  # trims what came before it: the parts too
        release.set()
        stored = await put
    projector = Projector(settings, fetch_timeout=0.1) if projector_running else None
    if projector is not None:
        await projector.start()
    try:
        rs = settings.replace(read_wait=30.0 if projector_running else 0.0)
        async with SkialithCheckpointer(settings=rs) as reader:
            tup = await reader.aget_tuple(config("t"))
            assert tup is not None and tup.checkpoint["id"] == stored["configurable"]["checkpoint_id"]
            assert tup.checkpoint["channel_values"] == {"v": big}
            if projector_running:
                assert reader.read_stats.database >= 1 and reader.read_stats.log == 0
            else:
                assert reader.read_stats.log >= 1
    finally:
        if projector is not None:
            await projector.stop()
