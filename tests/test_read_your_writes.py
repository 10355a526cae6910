"""Read-your-writes across processes: a write acknowledged in one process is visible in another,
from the log while the projector is stopped, and from the database once it has caught up."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

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
