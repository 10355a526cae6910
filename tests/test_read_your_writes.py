"""Read-your-writes across processes: a write acknowledged in one process is visible in another,
from the log while the projector is stopped, and from the database once it has caught up."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint
from scripts.chain_graph import build

from skialith_langgraph import Projector, Settings, SkialithCheckpointer

SCRIPT = Path(__file__).parent / "scripts" / "chain_graph.py"


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SKIALITH_NATS_URL=settings.nats_url,
        SKIALITH_DATABASE_URL=settings.database_url,
        SKIALITH_STREAM=settings.stream,
        SKIALITH_SUBJECT_PREFIX=settings.subject_prefix,
    )
    return env


def _history(saver: SkialithCheckpointer, thread_id: str) -> list[tuple[str, int]]:
    app = build().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": thread_id}}
    return [
        (s.config["configurable"]["checkpoint_id"], s.metadata["step"]) for s in app.get_state_history(config)
    ]


async def test_another_process_reads_what_a_finished_process_wrote(settings: Settings) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "t-ryw"], env=_env(settings), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['start', 'plan', 'act', 'check']"

    # projector stopped: every read is answered from the log, promptly
    stopped = dataclasses.replace(settings, read_wait=0.2)
    with SkialithCheckpointer(settings=stopped) as saver:
        started = time.monotonic()
        app = build().compile(checkpointer=saver)
        state = app.get_state({"configurable": {"thread_id": "t-ryw"}})
        assert time.monotonic() - started < 5  # bounded by read_wait, never a hang
        assert state.values["steps"] == ["start", "plan", "act", "check"]
        assert state.next == ()
        from_log = _history(saver, "t-ryw")
        assert [step for _, step in from_log] == [3, 2, 1, 0, -1]
        assert saver.read_stats.log == 2 and saver.read_stats.database == 0

    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        with SkialithCheckpointer(settings=dataclasses.replace(settings, read_wait=10.0)) as saver:
            assert await asyncio.to_thread(_history, saver, "t-ryw") == from_log
            assert saver.read_stats.log == 0 and saver.read_stats.database == 1
            # and the next run continues the thread from the database
            app = build().compile(checkpointer=saver)
            result = await asyncio.to_thread(
                app.invoke, {"steps": ["again"]}, {"configurable": {"thread_id": "t-ryw"}}
            )
            assert result["steps"] == ["start", "plan", "act", "check", "again", "plan", "act", "check"]
            assert saver.read_stats.log == 0
    finally:
        await projector.stop()


async def test_reads_after_the_projector_stops_mid_thread_still_see_every_write(settings: Settings) -> None:
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    config = {"configurable": {"thread_id": "t-stop"}}
    async with SkialithCheckpointer(settings=dataclasses.replace(settings, read_wait=0.1)) as saver:
        app = build().compile(checkpointer=saver)
        await app.ainvoke({"steps": ["one"]}, config)
        await projector.stop()  # the projector goes away; writes go on
        await app.ainvoke({"steps": ["two"]}, config)
        state = await app.aget_state(config)
        assert state.values["steps"] == ["one", "plan", "act", "check", "two", "plan", "act", "check"]
    # a reader that did not write the thread has no head of it: it reads the log
    async with SkialithCheckpointer(settings=dataclasses.replace(settings, read_wait=0.1)) as reader:
        state = await build().compile(checkpointer=reader).aget_state(config)
        assert state.values["steps"] == ["one", "plan", "act", "check", "two", "plan", "act", "check"]
        assert reader.read_stats.log == 1 and reader.read_stats.head == 0


async def test_a_write_by_another_writer_is_seen_by_the_first(settings: Settings) -> None:
    """A process answers reads of a thread it writes from memory; a foreign write must end that."""
    config = {"configurable": {"thread_id": "t-two-writers"}}
    fast = dataclasses.replace(settings, read_wait=0.0)
    async with SkialithCheckpointer(settings=fast) as first, SkialithCheckpointer(settings=fast) as second:
        app1, app2 = build().compile(checkpointer=first), build().compile(checkpointer=second)
        await app1.ainvoke({"steps": ["a"]}, config)
        assert (await app1.aget_state(config)).values["steps"] == ["a", "plan", "act", "check"]
        assert first.read_stats.head >= 1
        await app2.ainvoke({"steps": ["b"]}, config)  # the other writer continues the thread
        served_from_head = first.read_stats.head
        state = await app1.aget_state(config)
        assert state.values["steps"] == ["a", "plan", "act", "check", "b", "plan", "act", "check"]
        assert first.read_stats.head == served_from_head  # not from the stale head
        await app1.ainvoke({"steps": ["c"]}, config)  # and writing again continues from the truth
        assert (await app2.aget_state(config)).values["steps"][-4:] == ["c", "plan", "act", "check"]


def _checkpoint(**values: object) -> dict:
    cp = empty_checkpoint()
    cp["channel_values"] = dict(values)
    cp["channel_versions"] = {k: "1" for k in values}
    return cp


async def _pipelined_writes(
    saver: SkialithCheckpointer, thread_id: str, between: Callable[[], Awaitable[object]] | None = None
) -> dict:
    """Two tasks' writes on a new checkpoint, published back to back (the second while the first is in
    flight); ``between`` runs after the first is acknowledged and before the second is sent."""
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    assert await saver.aget_tuple(config) is None  # a fresh thread: this process keeps its head
    stored = await saver.aput(config, _checkpoint(a=1), {"step": 0}, {"a": "1"})
    log = (await saver._acore()).log
    assert log is not None
    first_acked = asyncio.Event()
    publish = log.publish

    async def ordered_publish(subject: str, body: bytes, msg_id: str, *, expect: Any = None) -> int:
        if expect is not None:  # the first: sent with the head's expectation
            seq = await publish(subject, body, msg_id, expect=expect)
            first_acked.set()
            return seq
        await first_acked.wait()  # the second: sent while the first was in flight, but held here
        if between is not None:
            await between()
        return await publish(subject, body, msg_id)

    log.publish = ordered_publish  # type: ignore[method-assign]
    try:
        await asyncio.gather(
            saver.aput_writes(stored, [("a", 2)], "task-1"), saver.aput_writes(stored, [("a", 3)], "task-2")
        )
    finally:
        del log.publish
    return config


async def test_writes_published_back_to_back_keep_the_head_exact(settings: Settings) -> None:
    fast = dataclasses.replace(settings, read_wait=0.0)
    async with SkialithCheckpointer(settings=fast) as saver, SkialithCheckpointer(settings=fast) as other:
        # another thread's write lands between the two: a gap on the stream, but nothing on this thread
        config = await _pipelined_writes(
            saver,
            "t-pipelined",
            lambda: other.aput({"configurable": {"thread_id": "t-else"}}, _checkpoint(b=1), {}, {"b": "1"}),
        )
        heads_before = saver.read_stats.head
        mine = await saver.aget_tuple(config)
        assert saver.read_stats.head == heads_before + 1  # still answered from this process's head
        truth = await other.aget_tuple(config)  # no head there: read from the log
        assert mine is not None and truth is not None
        assert mine.pending_writes == truth.pending_writes == [("task-1", "a", 2), ("task-2", "a", 3)]


async def test_a_foreign_write_between_back_to_back_writes_ends_the_head(settings: Settings) -> None:
    fast = dataclasses.replace(settings, read_wait=0.0)
    async with SkialithCheckpointer(settings=fast) as saver, SkialithCheckpointer(settings=fast) as other:

        async def foreign() -> None:
            latest = await other.aget_tuple(
                {"configurable": {"thread_id": "t-squeezed", "checkpoint_ns": ""}}
            )
            assert latest is not None
            await other.aput_writes(latest.config, [("a", 9)], "task-foreign")

        config = await _pipelined_writes(saver, "t-squeezed", foreign)
        heads_before = saver.read_stats.head
        seen = await saver.aget_tuple(config)
        assert saver.read_stats.head == heads_before  # the head missed a write: not used
        assert seen is not None
        assert sorted(seen.pending_writes) == [
            ("task-1", "a", 2),
            ("task-2", "a", 3),
            ("task-foreign", "a", 9),
        ]
