"""Issue 9, the log side: message ids, duplicates, a delete racing a large put, forged messages,
and reads served from the log.

Every read goes through the public API of another instance than the writer's, once with the
projector stopped (the read is served from the log) and once with it running (the read model).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.types import ERROR

from skialith import SkialithAgent
from skialith_langgraph import CodecError, Projector, Settings, SkialithCheckpointer, codec
from skialith_langgraph.log import Header, Log
from skialith_langgraph.subjects import Subjects, token

BIG = 5000  # bytes: several parts at chunk_size=1024


def _config(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def _checkpoint(value: Any, version: str = "1") -> dict[str, Any]:
    cp = empty_checkpoint()
    cp["channel_values"] = {"v": value}
    cp["channel_versions"] = {"v": version}
    return cp


@asynccontextmanager
async def reading(settings: Settings, projector_running: bool) -> AsyncIterator[Settings]:
    """Settings for a reader: the projector running (reads from the read model) or stopped (the log)."""
    if not projector_running:
        yield settings.replace(read_wait=0.0)
        return
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    try:
        yield settings.replace(read_wait=30.0)
    finally:
        await projector.stop()


def _assert_path(reader: SkialithCheckpointer, projector_running: bool) -> None:
    stats = reader.read_stats
    if projector_running:
        assert stats.log == 0 and stats.database >= 1, stats
    else:
        assert stats.log >= 1 and stats.database == 0, stats


both = pytest.mark.parametrize("projector_running", [False, True], ids=["log", "model"])
sizes = pytest.mark.parametrize("size", [10, BIG], ids=["small", "parts"])


# -- items 2 and 12: no message id repeats a purged or superseded one ----------------------------


@both
@sizes
async def test_copy_to_a_thread_deleted_moments_ago_stores_the_copy(
    settings: Settings, projector_running: bool, size: int
) -> None:
    settings = settings.replace(chunk_size=1024)
    value = "s" * size
    async with SkialithCheckpointer(settings=settings.replace(read_wait=0.0)) as saver:
        stored = await saver.aput(_config("src"), _checkpoint(value), {"step": 0}, {"v": "1"})
        await saver.aput_writes(stored, [("v", "w")], "task")
        await saver.acopy_thread("src", "dst")
        await saver.adelete_thread("dst")
        await saver.acopy_thread("src", "dst")  # within the 120 s duplicate window
    async with reading(settings, projector_running) as rs, SkialithCheckpointer(settings=rs) as reader:
        tup = await reader.aget_tuple(_config("dst"))
        assert tup is not None and tup.checkpoint["channel_values"] == {"v": value}
        assert tup.pending_writes == [("task", "v", "w")]
        assert len([t async for t in reader.alist(_config("dst"))]) == 1
        _assert_path(reader, projector_running)


@both
@sizes
async def test_a_thread_deleted_and_written_again_with_the_same_checkpoint_has_it(
    settings: Settings, projector_running: bool, size: int
) -> None:
    settings = settings.replace(chunk_size=1024)
    cp = _checkpoint("x" * size)
    async with SkialithCheckpointer(settings=settings) as saver:
        for _ in range(2):  # a re-run after a delete: the same checkpoint and writes again
            stored = await saver.aput(_config("t"), cp, {"step": 0}, {"v": "1"})
            await saver.aput_writes(stored, [("v", "w" * size)], "task")
            await saver.adelete_thread("t")
        stored = await saver.aput(_config("t"), cp, {"step": 0}, {"v": "1"})
        await saver.aput_writes(stored, [("v", "w" * size)], "task")
    async with reading(settings, projector_running) as rs, SkialithCheckpointer(settings=rs) as reader:
        tup = await reader.aget_tuple(_config("t"))
        assert tup is not None and tup.checkpoint["id"] == cp["id"]
        assert tup.checkpoint["channel_values"] == {"v": "x" * size}
        assert tup.pending_writes == [("task", "v", "w" * size)]
        _assert_path(reader, projector_running)


@both
async def test_agent_writes_a_b_a_to_one_key_keep_a(settings: Settings, projector_running: bool) -> None:
    async with SkialithAgent("ag", settings=settings) as agent:
        for data in ("X", "Y", "X"):
            await agent.checkpoint(step=0, data={"d": data})
        for payload in (1, 2, 1):
            await agent.save_event("e", payload, step=0)
    async with reading(settings, projector_running) as rs, SkialithAgent("ag", settings=rs) as reader:
        assert (await reader.resume()).data == {"d": "X"}
        events = await reader.history(kind="event")
        assert [(e.name, e.payload) for e in events] == [("e", 1)]


@both
async def test_special_pending_writes_e1_e2_e1_keep_e1_as_in_memory_saver(
    settings: Settings, projector_running: bool
) -> None:
    e1, e2 = "e1", "e2"
    memory = InMemorySaver()
    async with SkialithCheckpointer(settings=settings) as saver:
        for s in (memory, saver):
            stored = await s.aput(_config("t"), _checkpoint(1), {"step": 0}, {"v": "1"})
            for err in (e1, e2, e1):
                await s.aput_writes(stored, [(ERROR, err)], "task")
    expected = (await memory.aget_tuple(_config("t"))).pending_writes  # type: ignore[union-attr]
    assert [(t, c, v) for t, c, v in expected] == [("task", ERROR, e1)]
    async with reading(settings, projector_running) as rs, SkialithCheckpointer(settings=rs) as reader:
        tup = await reader.aget_tuple(_config("t"))
        assert tup is not None
        assert tup.pending_writes == [("task", ERROR, e1)]
        _assert_path(reader, projector_running)


@sizes
async def test_a_publish_jetstream_takes_for_a_duplicate_is_stored_under_a_fresh_id(
    settings: Settings, size: int
) -> None:
    settings = settings.replace(chunk_size=1024)
    log = await Log.open(settings, ensure_stream=True)
    try:
        subject = log.subjects.checkpoint(token("t", field="thread_id"))
        a, b = b"a" * size, b"b" * size
        first = await log.publish(subject, a, "one-id")
        second = await log.publish(subject, b, "one-id")  # the same id: JetStream says duplicate
        assert second > first
        got = [(m.seq, m.body) async for m in log.read(log.subjects.thread(token("t", field="thread_id")))]
        assert got == [(first, a), (second, b)]
    finally:
        await log.close()


@both
async def test_a_write_under_a_repeated_id_is_not_reported_stored_unless_stored(
    settings: Settings, projector_running: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # force what deterministic ids did: the second write reuses the first one's id
    monkeypatch.setattr(codec, "msg_id", lambda key: key)
    async with SkialithCheckpointer(settings=settings) as saver:
        stored = await saver.aput(_config("t"), _checkpoint(1), {"step": 0}, {"v": "1"})
        await saver.aput_writes(stored, [(ERROR, "e1")], "task")
        await saver.aput_writes(stored, [(ERROR, "e2")], "task")
    async with reading(settings, projector_running) as rs, SkialithCheckpointer(settings=rs) as reader:
        tup = await reader.aget_tuple(_config("t"))
        assert tup is not None
        assert tup.pending_writes == [("task", ERROR, "e2")]


# -- item 3: a delete racing a large put -------------------------------------------------------


@both
@pytest.mark.parametrize("with_head", [False, True], ids=["plain", "head"])
async def test_a_delete_landing_between_the_parts_of_a_put_leaves_the_put_whole(
    settings: Settings, projector_running: bool, with_head: bool
) -> None:
    settings = settings.replace(chunk_size=1024)
    big = os.urandom(BIG)
    async with (
        SkialithCheckpointer(settings=settings) as writer,
        SkialithCheckpointer(settings=settings) as deleter,
    ):
        if with_head:
            assert await writer.aget_tuple(_config("t")) is None  # the writer keeps a head of the thread
        first = await writer.aput(_config("t"), _checkpoint("small"), {"step": 0}, {"v": "1"})
        core = writer._cores[asyncio.get_running_loop()]
        log = core.log
        assert log is not None
        publish = log._publish
        at_final, release = asyncio.Event(), asyncio.Event()

        async def held(subject: str, body: bytes, headers: dict[str, str]) -> int:
            if Header.PARTS.value in headers and not release.is_set():
                at_final.set()  # the parts are stored; hold the message naming them
                await release.wait()
            return await publish(subject, body, headers)

        log._publish = held  # type: ignore[method-assign]
        put = asyncio.create_task(writer.aput(first, _checkpoint(big, "2"), {"step": 1}, {"v": "2"}))
        await asyncio.wait_for(at_final.wait(), 30)
        await deleter.adelete_thread("t")  # publishes its tombstone and purges the parts
        release.set()
        stored = await put
    async with reading(settings, projector_running) as rs, SkialithCheckpointer(settings=rs) as reader:
        tup = await reader.aget_tuple(_config("t"))
        assert tup is not None and tup.checkpoint["id"] == stored["configurable"]["checkpoint_id"]
        assert tup.checkpoint["channel_values"] == {"v": big}
        history = [t async for t in reader.alist(_config("t"))]
        assert [t.checkpoint["id"] for t in history] == [tup.checkpoint["id"]]
        _assert_path(reader, projector_running)


async def test_a_read_from_the_log_skips_a_message_whose_parts_are_gone(settings: Settings) -> None:
    # the state a racing delete leaves behind a put that did not publish again: its parts purged
    settings = settings.replace(chunk_size=1024, read_wait=0.0)
    async with SkialithCheckpointer(settings=settings) as saver:
        first = await saver.aput(_config("t"), _checkpoint("small"), {"step": 0}, {"v": "1"})
        await saver.aput(first, _checkpoint("b" * BIG, "2"), {"step": 1}, {"v": "2"})
    log = await Log.open(settings)
    try:
        tk = token("t", field="thread_id")
        last = await log.last_seq(log.subjects.thread(tk))
        await log.purge(f"{log.subjects.prefix}.t.{tk}.k.>", before_seq=last)
    finally:
        await log.close()
    async with SkialithCheckpointer(settings=settings) as reader:
        tup = await reader.aget_tuple(_config("t"))
        assert tup is not None and tup.checkpoint["channel_values"] == {"v": "small"}
        assert reader.read_stats.log == 1


# -- item 9: malformed headers and junk on a thread's subject ---------------------------------


async def test_a_malformed_parts_header_is_a_codec_error(settings: Settings) -> None:
    log = await Log.open(settings)
    prefix = settings.subject_prefix
    try:
        for value in (
            "x",
            "two words",
            "0 " + f"{prefix}.t.bdA.k.d",
            "-1 " + f"{prefix}.t.bdA.k.d",
            "99999999999 " + f"{prefix}.t.bdA.k.d",
            "2 " + f"{prefix}.t.bdA.k.*",
            "2 " + f"{prefix}.t.bdA.k.>",
            "2 other.t.bdA.k.d",
            "2 " + f"{prefix}.t..k.d",
            "2 ",
        ):
            with pytest.raises(CodecError):
                await log.join_parts({Header.PARTS.value: value}, b"")
        with pytest.raises(CodecError):  # the parts of another thread than the message's
            await log.join_parts(
                {Header.PARTS.value: f"2 {prefix}.t.bOther.k.d"}, b"", subject=f"{prefix}.t.bdA.c"
            )
    finally:
        await log.close()


async def test_junk_and_bad_headers_on_a_thread_leave_its_checkpoints_readable_from_the_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.replace(read_wait=0.0)
    subjects = Subjects(settings.subject_prefix)
    tk = token("t", field="thread_id")
    async with SkialithCheckpointer(settings=settings) as saver:
        first = await saver.aput(_config("t"), _checkpoint("one"), {"step": 0}, {"v": "1"})
        nc = await nats.connect(settings.nats_url)
        try:
            js = nc.jetstream()
            await js.publish(subjects.checkpoint(tk), b"\x00\xffJUNK-PAYLOAD")
            for bad in ("x y", f"2 {settings.subject_prefix}.t.{tk}.k.*", f"3 elsewhere.t.{tk}.k.d"):
                await js.publish(subjects.checkpoint(tk), b"", headers={Header.PARTS.value: bad})
        finally:
            await nc.close()
        second = await saver.aput(first, _checkpoint("two", "2"), {"step": 1}, {"v": "2"})
    caplog.set_level(logging.DEBUG, logger="skialith_langgraph")
    async with SkialithCheckpointer(settings=settings) as reader:
        tup = await reader.aget_tuple(_config("t"))
        assert tup is not None and tup.checkpoint["id"] == second["configurable"]["checkpoint_id"]
        assert tup.checkpoint["channel_values"] == {"v": "two"}
        history = [t.checkpoint["id"] async for t in reader.alist(_config("t"))]
        assert history == [second["configurable"]["checkpoint_id"], first["configurable"]["checkpoint_id"]]
        assert reader.read_stats.log == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]
    assert len(warnings) == 4, [r.getMessage() for r in warnings]  # once per message, not per read
    assert not any("JUNK-PAYLOAD" in r.getMessage() for r in caplog.records)


# -- item 11: reads from the log walk the thread in batches, whole ----------------------------


async def test_a_thread_of_hundreds_of_messages_reads_back_whole_from_the_log(settings: Settings) -> None:
    settings = settings.replace(chunk_size=1024)
    rng = random.Random(11)
    log = await Log.open(settings, ensure_stream=True)
    try:
        tk = token("t", field="thread_id")
        sent: list[tuple[int, bytes]] = []
        for i in range(300):
            size = rng.choice([0, 10, 900, 1024, 1025, 3000, 9000]) if i % 7 else 20_000
            body = rng.randbytes(size)
            subject = log.subjects.checkpoint(tk) if i % 2 else log.subjects.writes(tk)
            sent.append((await log.publish(subject, body, codec.msg_id(str(i))), body))
            if i == 200:  # another thread in between
                await log.publish(log.subjects.checkpoint("bOther"), b"o" * 3000, codec.msg_id("o"))
        thread = log.subjects.thread(tk)
        got = [(m.seq, m.body) async for m in log.read(thread)]
        assert got == sent
        middle = sent[250][0]
        assert [(m.seq, m.body) async for m in log.read(thread, until_seq=middle)] == sent[:251]
        assert [(m.seq, m.body) async for m in log.read(thread, start_seq=middle + 1)] == sent[251:]
        assert [m async for m in log.read(log.subjects.thread("bNobody"))] == []
    finally:
        await log.close()


async def test_a_checkpoint_history_with_large_values_reads_back_whole_from_the_log(
    settings: Settings,
) -> None:
    settings = settings.replace(chunk_size=1024, read_wait=0.0)
    values = [("v" * (3000 if i % 3 == 0 else 5)) + str(i) for i in range(60)]
    async with SkialithCheckpointer(settings=settings) as saver:
        config = _config("t")
        for i, value in enumerate(values):
            config = await saver.aput(config, _checkpoint(value, str(i + 1)), {"step": i}, {"v": str(i + 1)})
            await saver.aput_writes(config, [("v", value)], f"task-{i}")
    async with SkialithCheckpointer(settings=settings) as reader:
        history = [t async for t in reader.alist(_config("t"))]
        assert [t.checkpoint["channel_values"]["v"] for t in history] == values[::-1]
        assert [t.pending_writes for t in history] == [[(f"task-{i}", "v", v)] for i, v in enumerate(values)][
            ::-1
        ]
        assert reader.read_stats.log == 1
