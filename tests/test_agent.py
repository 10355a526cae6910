"""SkialithAgent against a real nats-server and a real read model (SQLite, and MySQL when configured)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator

import nats
import pytest
from sqlalchemy import func, select

from skialith import AgentState, SkialithAgent
from skialith_langgraph import Projector, Settings
from skialith_langgraph.errors import ConfigError, ConnectError, SubjectError
from skialith_langgraph.readmodel import PROJECTION, ReadModel
from skialith_langgraph.readmodel.apply import watermark
from skialith_langgraph.readmodel.tables import agent_events
from skialith_langgraph.subjects import Subjects, token


async def stream_last_seq(settings: Settings) -> int:
    nc = await nats.connect(settings.nats_url)
    try:
        info = await nc.jetstream().stream_info(settings.stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def wait_projected(settings: Settings, timeout: float = 10.0) -> None:
    """Wait until the projector's watermark reaches the stream's last sequence."""
    target = await stream_last_seq(settings)
    model = ReadModel.from_url(settings.database_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            async with model.connect() as conn:
                if await watermark(conn, PROJECTION) >= target:
                    return
            assert time.monotonic() < deadline, f"projector did not reach seq {target}"
            await asyncio.sleep(0.02)
    finally:
        await model.close()


async def checkpoint_rows(settings: Settings, agent_id: str) -> list[tuple[int, str]]:
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.connect() as conn:
            rows = await conn.execute(
                select(agent_events.c.step, agent_events.c.kind)
                .where(agent_events.c.agent_key == token(agent_id, field="agent_id"))
                .order_by(agent_events.c.step, agent_events.c.kind)
            )
            return [(int(r.step), r.kind) for r in rows]
    finally:
        await model.close()


@pytest.fixture
async def projector(settings: Settings) -> AsyncIterator[Projector]:
    p = Projector(settings, fetch_timeout=0.2)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_fresh_agent_resumes_at_step_zero_with_empty_data(settings: Settings) -> None:
    async with SkialithAgent(agent_id="fresh", settings=settings) as agent:
        state = await agent.resume()
    assert state == AgentState(agent_id="fresh", step_index=0, data={})
    assert not state.resumed
    assert agent.step == 0


async def test_writes_are_acknowledged_before_returning(settings: Settings) -> None:
    """No projector runs: what the calls return is already in the stream, and a new process sees it."""
    async with SkialithAgent(agent_id="my-agent", settings=settings) as agent:
        before = await stream_last_seq(settings)
        seq_c = await agent.checkpoint(step=0, data={"messages": ["hi"]})
        seq_e = await agent.save_event("step-1", {"kind": "thought", "text": "..."})
        assert before < seq_c < seq_e == await stream_last_seq(settings)
        assert agent.step == 1
    nc = await nats.connect(settings.nats_url)
    try:
        subjects = Subjects(settings.subject_prefix)
        msg = await nc.jetstream().get_msg(settings.stream, seq_e)
        # one subject per agent and kind: resume's wildcard lookup does not slow down with steps
        assert msg.subject == subjects.agent_event(token("my-agent", field="agent_id"))
    finally:
        await nc.close()
    fast = dataclasses.replace(settings, read_wait=0.0)
    async with SkialithAgent(agent_id="my-agent", settings=fast) as again:
        state = await again.resume()
        records = await again.history()
    assert (state.step_index, state.data, state.last_step) == (1, {"messages": ["hi"]}, 0)
    assert state.checkpointed_at is not None and abs(state.checkpointed_at - time.time()) < 60
    assert [(r.kind, r.step, r.name, r.payload) for r in records] == [
        ("checkpoint", 0, "", {"messages": ["hi"]}),
        ("event", 1, "step-1", {"kind": "thought", "text": "..."}),
    ]


async def test_retried_step_leaves_one_row_and_resume_returns_the_latest(
    settings: Settings, projector: Projector
) -> None:
    async with SkialithAgent(agent_id="retry", settings=settings) as agent:
        await agent.checkpoint(step=0, data={"n": 0})
        await agent.checkpoint(step=1, data={"n": 1, "try": 1})
        await agent.save_event("llm", {"try": 1}, step=2)
        first = await agent.checkpoint(step=1, data={"n": 1, "try": 2})  # the step is retried
        again = await agent.checkpoint(step=1, data={"n": 1, "try": 2})  # a client retry of the same call
        assert again > first  # stored again under an id of its own (issue 9 item 12); one row per key
        await agent.save_event("llm", {"try": 2}, step=2)
        state = await agent.resume()
        assert (state.step_index, state.data) == (2, {"n": 1, "try": 2})
        await wait_projected(settings)
        assert await checkpoint_rows(settings, "retry") == [
            (0, "checkpoint"),
            (1, "checkpoint"),
            (2, "event"),
        ]
        events = await agent.history(kind="event")
    assert [(e.step, e.name, e.payload) for e in events] == [(2, "llm", {"try": 2})]


async def test_resume_sees_every_acknowledged_checkpoint_while_the_projector_lags(
    settings: Settings, projector: Projector
) -> None:
    async with SkialithAgent(agent_id="lagging", settings=settings) as agent:
        await agent.checkpoint(step=0, data={"v": "projected"})
        await wait_projected(settings)
        await projector.stop()  # from now on the read model is stale
        await agent.checkpoint(step=1, data={"v": "only in the log"})
        quick = dataclasses.replace(settings, read_wait=0.05)
        async with SkialithAgent(agent_id="lagging", settings=quick) as other:
            state = await other.resume()
    assert (state.step_index, state.data) == (2, {"v": "only in the log"})
    assert await checkpoint_rows(settings, "lagging") == [(0, "checkpoint")]  # the database did lag


async def test_resume_in_a_loop_runs_each_step_once(settings: Settings, projector: Projector) -> None:
    ran: list[int] = []

    async def run(crash_after: int | None) -> None:
        async with SkialithAgent(
            agent_id="loop", settings=dataclasses.replace(settings, read_wait=0.0)
        ) as agent:
            state = await agent.resume()
            data = state.data or {"total": 0}
            for step in range(state.step_index, 5):
                ran.append(step)
                data = {"total": data["total"] + step}
                await agent.save_event("work", {"step": step})
                await agent.checkpoint(step=step, data=data)
                if step == crash_after:
                    return

    await run(crash_after=2)
    await run(crash_after=None)
    assert ran == [0, 1, 2, 3, 4]
    async with SkialithAgent(agent_id="loop", settings=settings) as agent:
        state = await agent.resume()
    assert (state.step_index, state.data) == (5, {"total": 10})


@pytest.mark.parametrize(
    "agent_id", ["a.b", "*", ">", "with space", "sl/ash", "ünï😀", "x" * 500], ids=lambda v: v[:12]
)
async def test_awkward_agent_ids_are_kept_apart(settings: Settings, agent_id: str) -> None:
    async with SkialithAgent(agent_id, settings=settings) as agent:
        await agent.checkpoint(step=3, data={"id": agent_id})
    async with SkialithAgent("x", settings=settings) as other:
        await other.checkpoint(step=7, data={"id": "x"})
    async with SkialithAgent(agent_id, settings=dataclasses.replace(settings, read_wait=0.0)) as agent:
        state = await agent.resume()
    assert (state.step_index, state.data) == (4, {"id": agent_id})


async def test_bad_input_is_refused_before_anything_is_published(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="agent_id"):
        SkialithAgent(agent_id="", settings=settings)
    async with SkialithAgent(agent_id="bad", settings=settings) as agent:
        before = await stream_last_seq(settings)
        for step in (-1, True, "3", 1.5):
            with pytest.raises(ValueError, match="step"):
                await agent.checkpoint(step=step, data={})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not msgpack serializable"):
            await agent.checkpoint(step=0, data={"x": ...})
        with pytest.raises(TypeError, match="not msgpack serializable"):
            await agent.save_event("e", object())
        with pytest.raises(SubjectError, match="name") as info:
            await agent.save_event("n" * 256, {})
        assert info.value.field == "name"
        assert await stream_last_seq(settings) == before
        await agent.save_event("ünï code.*>", {"ok": True}, step=0)
        assert [r.name for r in await agent.history()] == ["ünï code.*>"]


async def test_large_checkpoint_round_trips(settings: Settings, projector: Projector) -> None:
    big = {"blob": "x" * 3_000_000}
    async with SkialithAgent(agent_id="big", settings=settings) as agent:
        await agent.checkpoint(step=0, data=big)
    async with SkialithAgent(agent_id="big", settings=dataclasses.replace(settings, read_wait=0.0)) as agent:
        assert (await agent.resume()).data == big  # from the log
    await wait_projected(settings)
    async with SkialithAgent(agent_id="big", settings=settings) as agent:
        assert (await agent.resume()).data == big  # from the database


async def test_unreachable_nats_names_the_url_within_bounded_time(sqlite_url: str) -> None:
    url = "nats://127.0.0.1:1"
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"nats://127\.0\.0\.1:1.*skialith up"):
        async with SkialithAgent(agent_id="a", nats_url=url, database_url=sqlite_url, connect_timeout=1.0):
            pass
    assert time.monotonic() - started < 5


async def test_settings_come_from_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in [
        ("NATS_URL", settings.nats_url),
        ("DATABASE_URL", settings.database_url),
        ("STREAM", settings.stream),
        ("SUBJECT_PREFIX", settings.subject_prefix),
    ]:
        monkeypatch.setenv(f"SKIALITH_{name}", value)
    agent = SkialithAgent(agent_id="env")
    assert agent.settings == settings
    with pytest.raises(ConfigError, match="either settings"):
        SkialithAgent(agent_id="env", settings=settings, read_wait=1.0)


async def test_event_timestamps_keep_sub_second_precision(settings: Settings, projector: Projector) -> None:
    """``checkpointed_at`` read back from the database is the time of the call, to the millisecond."""
    async with SkialithAgent(agent_id="clock", settings=settings) as agent:
        before = time.time()
        await agent.checkpoint(step=0, data={})
        after = time.time()
        await wait_projected(settings)
        state = await agent.resume()
    assert state.checkpointed_at is not None
    assert before - 0.001 <= state.checkpointed_at <= after + 0.001


async def test_history_is_json_friendly(settings: Settings) -> None:
    async with SkialithAgent(agent_id="h", settings=dataclasses.replace(settings, read_wait=0.0)) as agent:
        await agent.resume()
        await agent.save_event("plan", {"steps": 2})
        await agent.checkpoint(step=0, data={"a": 1})
        await agent.save_event("act", {"tool": "search"})
        records = await agent.history()
        only_step_1 = await agent.history(step=1)
        with pytest.raises(ConfigError, match="kind"):
            await agent.history(kind="other")
    assert json.dumps([r.payload for r in records]) == '[{"steps": 2}, {"a": 1}, {"tool": "search"}]'
    assert [(r.kind, r.step) for r in records] == [("event", 0), ("checkpoint", 0), ("event", 1)]
    assert [r.name for r in only_step_1] == ["act"]


async def test_database_rows_count_one_per_key(settings: Settings, projector: Projector) -> None:
    async with SkialithAgent(agent_id="count", settings=settings) as agent:
        for attempt in range(3):
            for step in range(3):
                await agent.save_event("e", {"attempt": attempt}, step=step)
                await agent.checkpoint(step=step, data={"attempt": attempt})
    await wait_projected(settings)
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.connect() as conn:
            n = (await conn.execute(select(func.count()).select_from(agent_events))).scalar()
    finally:
        await model.close()
    assert n == 6
