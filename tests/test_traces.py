"""TraceIngest: LangGraph runs and SkialithAgent events become rows of ``skialith_agent_traces``."""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import random
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, interrupt
from nats.aio.client import Client
from sqlalchemy import func, select

from skialith import SkialithAgent
from skialith_langgraph import Settings, SkialithCheckpointer
from skialith_langgraph.codec import loads
from skialith_langgraph.errors import LogError
from skialith_langgraph.log import Header, Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import agent_traces
from skialith_langgraph.traces import Stamped, Trace, TraceIngest, apply_traces, node_name, read_traces


class State(TypedDict):
    x: Annotated[list[Any], operator.add]


async def node_a(state: State) -> dict[str, Any]:
    await asyncio.sleep(0.06)
    return {"x": ["a"]}


def node_b(state: State) -> dict[str, Any]:
    time.sleep(0.02)
    return {"x": ["b"]}


def fan_out(state: State) -> list[Send]:
    return [Send("c", {"x": [i]}) for i in range(2)]


def node_c(state: State) -> dict[str, Any]:
    return {"x": ["c"]}


def build() -> Any:
    g = StateGraph(State)
    g.add_node("a", node_a)
    g.add_node("b", node_b)
    g.add_node("c", node_c)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_conditional_edges("b", fan_out, ["c"])
    g.add_edge("c", END)
    return g


def cfg(thread_id: str, run_id: str | None = None) -> RunnableConfig:
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    if run_id is not None:
        config["metadata"] = {"run_id": run_id}  # as the LangGraph server sets it
    return config


@pytest.fixture
def lite(nats_url: str, sqlite_url: str, unique: str) -> Settings:
    """Settings on SQLite only, for the tests that are not about the database."""
    return Settings(
        nats_url=nats_url, database_url=sqlite_url, stream=f"SK{unique}".upper(), subject_prefix=f"sk{unique}"
    )


@pytest.fixture
async def ingest(settings: Settings) -> AsyncIterator[TraceIngest]:
    t = TraceIngest(settings, fetch_timeout=0.2)
    await t.start()
    try:
        yield t
    finally:
        await t.stop()


@pytest.fixture
async def lite_ingest(lite: Settings) -> AsyncIterator[TraceIngest]:
    t = TraceIngest(lite, fetch_timeout=0.2)
    await t.start()
    try:
        yield t
    finally:
        await t.stop()


async def stream_messages(settings: Settings) -> list[Stamped]:
    """Every message of the test's stream with its JetStream timestamp, as the ingest sees them."""
    log = await Log.open(settings)
    try:
        psub = await log.js.pull_subscribe(log.subjects.all, stream=settings.stream)
        out: list[Stamped] = []
        last = await log.stream_last_seq()
        while not out or out[-1].seq < last:
            for m in await psub.fetch(100, timeout=2):
                meta = m.metadata
                if (m.headers or {}).get(Header.PART.value):
                    continue
                body = await log.join_parts(m.headers, m.data)
                out.append(Stamped(meta.sequence.stream, meta.timestamp.timestamp(), loads(body)))
                if meta.sequence.stream >= last:
                    break
        await psub.unsubscribe()
        return out
    finally:
        await log.close()


async def apply_all(url: str, batches: list[list[Stamped]], *, name: str | None = None) -> list[Trace]:
    model = ReadModel.from_url(url)
    try:
        await model.setup()
        for batch in batches:
            async with model.begin() as conn:
                await apply_traces(conn, batch, serde=TraceIngest().serde, name=name)
        async with model.connect() as conn:
            return await read_traces(conn)
    finally:
        await model.close()


def test_node_names_from_task_paths() -> None:
    assert node_name("~__pregel_pull, agent") == "agent"
    assert node_name("~__pregel_pull, a, b") == "a, b"
    assert node_name("~__pregel_push, 0000000001", ["x", "y"]) == "y"
    assert node_name("~__pregel_push, 0000000000, 0000000000", ["x", "y"]) == "x"
    assert node_name("~__pregel_push, 0000000001") == ""  # not known yet
    assert node_name("~__pregel_push, ~__pregel_pull, a, 0000000002, abc, true") == "__pregel_push"
    assert node_name("~__interrupt__, 0000000000") == "__update__"
    assert node_name("") == "__input__"


async def test_langgraph_run_becomes_tasks_with_steps_channels_and_times(
    settings: Settings, ingest: TraceIngest
) -> None:
    async with SkialithCheckpointer(settings=settings) as saver:
        app = build().compile(checkpointer=saver)
        result = await app.ainvoke({"x": ["in"]}, cfg("t-1", run_id="run-1"))
    assert result["x"] == ["in", "a", "b", "c", "c"]
    await ingest.catch_up()
    tasks = await ingest.traces(thread_id="t-1", kind="task")
    assert [(t.name, t.step, t.channels, t.status) for t in tasks] == [
        ("__start__", 0, ["x", "branch:to:a"], "ok"),
        ("a", 1, ["x", "branch:to:b"], "ok"),
        ("b", 2, ["x", "__pregel_tasks"], "ok"),
        ("c", 3, ["x"], "ok"),
        ("c", 3, ["x"], "ok"),
    ]
    checkpoints = await ingest.traces(thread_id="t-1", kind="checkpoint")
    assert [(c.name, c.step) for c in checkpoints] == [("input", -1)] + [("loop", s) for s in range(4)]
    assert checkpoints[3].sends == ["c", "c"]
    by_id = {c.checkpoint_id: c for c in checkpoints}
    assert {t.run_id for t in tasks + checkpoints} == {"run-1"}
    for t in tasks:
        parent = by_id[t.checkpoint_id]
        assert t.started_at == parent.finished_at
        assert t.duration == pytest.approx(t.finished_at - parent.finished_at)
        assert t.duration is not None and 0 <= t.duration < 5
        assert abs(t.finished_at - time.time()) < 60  # epoch seconds
    durations = {t.name: t.duration or 0.0 for t in tasks}
    assert durations["a"] >= 0.05  # a sleeps 60 ms
    for c in checkpoints[1:]:
        assert c.parent_checkpoint_id is not None
        assert c.started_at == by_id[c.parent_checkpoint_id].finished_at
    assert checkpoints[0].started_at is None and checkpoints[0].duration is None


async def test_sync_invoke_and_subgraph_namespaces(lite: Settings, lite_ingest: TraceIngest) -> None:
    inner = StateGraph(State)
    inner.add_node("inner_node", node_c)
    inner.add_edge(START, "inner_node")
    outer = StateGraph(State)
    outer.add_node("sub", inner.compile())
    outer.add_edge(START, "sub")
    with SkialithCheckpointer(settings=lite) as saver:
        app = outer.compile(checkpointer=saver)
        app.invoke({"x": []}, cfg("t-sub"))
    await lite_ingest.catch_up()
    tasks = await lite_ingest.traces(thread_id="t-sub", kind="task")
    assert [(t.name, t.step) for t in tasks if t.checkpoint_ns == ""] == [("__start__", 0), ("sub", 1)]
    inner_tasks = [(t.name, t.step) for t in tasks if t.checkpoint_ns != ""]
    assert inner_tasks == [("__start__", 0), ("inner_node", 1)]
    assert all(t.checkpoint_ns.startswith("sub:") for t in tasks if t.checkpoint_ns)


async def test_errors_interrupts_and_resumes_show_in_status(lite: Settings, lite_ingest: TraceIngest) -> None:
    attempts: list[str] = []

    def ask(state: State) -> dict[str, Any]:
        attempts.append("ask")
        return {"x": [interrupt("approve?")]}

    def boom(state: State) -> dict[str, Any]:
        if state["x"][-1] != "yes":
            raise ValueError("no approval")
        return {"x": ["done"]}

    g = StateGraph(State)
    g.add_node("ask", ask)
    g.add_node("boom", boom)
    g.add_edge(START, "ask")
    g.add_edge("ask", "boom")
    async with SkialithCheckpointer(settings=lite) as saver:
        app = g.compile(checkpointer=saver)
        await app.ainvoke({"x": []}, cfg("t-int"))
        await lite_ingest.catch_up()
        asked = [t for t in await lite_ingest.traces(thread_id="t-int", kind="task") if t.name == "ask"]
        assert [(t.step, t.status, t.channels) for t in asked] == [(1, "interrupted", ["__interrupt__"])]
        with pytest.raises(ValueError, match="no approval"):
            await app.ainvoke(Command(resume="no"), cfg("t-int"))
    await lite_ingest.catch_up()
    tasks = {t.name: t for t in await lite_ingest.traces(thread_id="t-int", kind="task")}
    assert tasks["ask"].status == "ok" and "x" in tasks["ask"].channels  # the same task, resumed
    assert tasks["ask"].finished_at > asked[0].finished_at
    assert (tasks["boom"].step, tasks["boom"].status, tasks["boom"].channels) == (2, "error", ["__error__"])
    assert attempts == ["ask", "ask"]


async def test_agent_checkpoints_and_events(settings: Settings, ingest: TraceIngest) -> None:
    async with SkialithAgent(agent_id="agent-1", settings=settings) as agent:
        await agent.save_event("plan", {"kind": "thought"})
        await asyncio.sleep(0.05)
        await agent.checkpoint(step=0, data={"n": 0})
        await asyncio.sleep(0.1)
        await agent.save_event("tool", {"kind": "call"})
        await agent.checkpoint(step=1, data={"n": 1})
    await ingest.catch_up()
    rows = await ingest.traces(agent_id="agent-1")
    assert [(r.source, r.kind, r.step, r.name) for r in rows] == [
        ("agent", "event", 0, "plan"),
        ("agent", "checkpoint", 0, ""),
        ("agent", "event", 1, "tool"),
        ("agent", "checkpoint", 1, ""),
    ]
    plan, ck0, tool, ck1 = rows
    assert plan.started_at == plan.finished_at and plan.duration == 0
    assert ck0.started_at == plan.finished_at and ck0.duration is not None and ck0.duration >= 0.04
    assert ck1.started_at == ck0.finished_at and ck1.duration is not None and ck1.duration >= 0.09
    assert await ingest.traces(thread_id="agent-1") == []  # agents and threads do not mix


async def test_out_of_order_and_redelivered_messages_give_the_same_rows(
    lite: Settings, tmp_path: Any
) -> None:
    async with SkialithCheckpointer(settings=lite) as saver:
        app = build().compile(checkpointer=saver)
        await app.ainvoke({"x": []}, cfg("t-order"), durability="sync")
    async with SkialithAgent(agent_id="ag", settings=lite) as agent:
        await agent.save_event("e", {})
        await agent.checkpoint(step=0, data={})
        await agent.checkpoint(step=1, data={})
    msgs = await stream_messages(lite)
    assert len(msgs) > 10
    expected = await apply_all(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", [msgs])
    assert [t.name for t in expected if t.kind == "task"] == ["__start__", "a", "b", "c", "c"]

    # each writes message moved before the checkpoint it belongs to (async durability may do that)
    early: list[Stamped] = []
    for it in msgs:
        early.append(it)
        if type(it.msg).__name__ == "WritesMsg":
            i = next(
                j
                for j, o in enumerate(early)
                if getattr(o.msg, "checkpoint_id", None) == it.msg.checkpoint_id  # type: ignore[union-attr]
            )
            early.insert(i, early.pop())
    assert [m.seq for m in early] != [m.seq for m in msgs]
    assert await apply_all(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", [early]) == expected
    one_by_one = [[m] for m in early]
    assert await apply_all(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", one_by_one) == expected
    # redelivery without a watermark: every message twice, in random batches
    rng = random.Random(7)
    twice = msgs + msgs[: rng.randrange(len(msgs))]
    cuts = sorted(rng.sample(range(1, len(twice)), 5))
    batches = [twice[i:j] for i, j in zip([0, *cuts], [*cuts, len(twice)], strict=True)]
    assert await apply_all(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}", [msgs, *batches]) == expected
    # with a watermark, a redelivered batch is skipped altogether
    url = f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"
    assert await apply_all(url, [msgs, msgs[:5]], name="traces-main") == expected


async def test_ingest_resumes_from_its_durable_consumer(settings: Settings, tmp_path: Any) -> None:
    first = TraceIngest(settings, fetch_timeout=0.2, batch_size=3)
    await first.start()
    async with SkialithCheckpointer(settings=settings) as saver:
        app = build().compile(checkpointer=saver)
        await app.ainvoke({"x": []}, cfg("t-a"))
        await first.catch_up()
        await first.stop()
        await app.ainvoke({"x": []}, cfg("t-b"))  # while the ingest is down
        await app.ainvoke({"x": []}, cfg("t-a"))
    second = TraceIngest(settings, fetch_timeout=0.2, batch_size=3)
    await second.start()
    try:
        await second.catch_up()
        rows = await second.traces()
    finally:
        await second.stop()
    assert first.stats.batches > 1
    rebuilt = await apply_all(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", [await stream_messages(settings)])
    assert rows == rebuilt
    assert sum(1 for t in rows if t.trace_id == "t-a" and t.kind == "task") == 10
    assert sum(1 for t in rows if t.trace_id == "t-b" and t.kind == "task") == 5


async def test_deletes_remove_traces_and_prune_keeps_them(lite: Settings, lite_ingest: TraceIngest) -> None:
    async with SkialithCheckpointer(settings=lite) as saver:
        app = build().compile(checkpointer=saver)
        for thread in ("t-del", "t-keep", "t-runs", "t-prune"):
            await app.ainvoke({"x": []}, cfg(thread, run_id=f"run-{thread}"))
        await lite_ingest.catch_up()
        run_id = (await lite_ingest.traces(thread_id="t-runs"))[0].run_id
        assert run_id == "run-t-runs"
        before = len(await lite_ingest.traces(thread_id="t-prune"))
        await saver.adelete_thread("t-del")
        await saver.adelete_for_runs([run_id])
        await saver.aprune(["t-prune"], strategy="keep_latest")
    await lite_ingest.catch_up()
    assert await lite_ingest.traces(thread_id="t-del") == []
    assert await lite_ingest.traces(thread_id="t-runs") == []
    assert len(await lite_ingest.traces(thread_id="t-keep")) == 10
    assert len(await lite_ingest.traces(thread_id="t-prune")) == before == 10


async def test_catch_up_fails_clearly_when_the_ingest_is_not_running(lite: Settings) -> None:
    async with SkialithAgent(agent_id="x", settings=lite) as agent:
        await agent.save_event("e", {})
    idle = TraceIngest(lite)
    try:
        with pytest.raises(Exception, match="not running|is it running"):
            await idle.catch_up(timeout=0.2)
    finally:
        await idle.close()


async def test_table_is_plain_sql(settings: Settings, ingest: TraceIngest) -> None:
    """What a dashboard would run: one row per node run, with its step and duration."""
    async with SkialithCheckpointer(settings=settings) as saver:
        await build().compile(checkpointer=saver).ainvoke({"x": []}, cfg("t-sql"))
    await ingest.catch_up()
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.connect() as conn:
            t = agent_traces.c
            rows = (
                await conn.execute(
                    select(t.name, t.step, t.duration)
                    .where(t.trace_id == "t-sql", t.kind == "task")
                    .order_by(t.step, t.name)
                )
            ).all()
            total = (await conn.execute(select(func.count()).select_from(agent_traces))).scalar()
    finally:
        await model.close()
    assert [(r.name, r.step) for r in rows] == [("__start__", 0), ("a", 1), ("b", 2), ("c", 3), ("c", 3)]
    assert rows[1].duration >= 0.05
    assert total == 10


async def test_timestamps_are_the_servers_and_survive_redelivery(lite: Settings) -> None:
    before = time.time()
    async with SkialithAgent(agent_id="ts", settings=lite) as agent:
        await agent.save_event("e", {})
    first = await stream_messages(lite)
    await asyncio.sleep(0.05)
    again = await stream_messages(lite)  # a new consumer: a later delivery of the same messages
    assert [m.ts for m in first] == [m.ts for m in again]
    assert before - 1 < first[0].ts < time.time() + 1


async def test_replicas_take_turns_and_agree_with_a_rebuild(lite: Settings, tmp_path: Any) -> None:
    replicas = [TraceIngest(lite, replica=str(i), fetch_timeout=0.1, batch_size=4) for i in range(2)]
    assert replicas[0].durable != replicas[1].durable
    for r in replicas:
        await r.start()
    try:
        async with SkialithCheckpointer(settings=lite) as saver:
            app = build().compile(checkpointer=saver)
            await asyncio.gather(*(app.ainvoke({"x": []}, cfg(f"t-{i}")) for i in range(4)))
            await saver.adelete_thread("t-0")
        for r in replicas:
            await r.catch_up()
        rows = await replicas[1].traces()
    finally:
        for r in replicas:
            await r.stop()
    rebuilt = await apply_all(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", [await stream_messages(lite)])
    assert rows == rebuilt
    assert sorted({t.trace_id for t in rows}) == ["t-1", "t-2", "t-3"]


async def test_a_delivery_lost_on_the_way_is_applied_after_a_resubscribe(
    lite: Settings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A delivery the client never got (cut off by a reconnect, or dropped by a full client buffer)
    # is a fault NATS cannot be made to produce on cue, so the client loses the 5th delivery of the
    # ingest's consumer as it comes off the socket. Acking the batch after it (AckPolicy.ALL) would
    # drop it for good and leave its row out.
    lost: list[bytes] = []
    receive = Client._process_msg

    async def lossy(
        self: Client, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        t = reply.split(b".")
        if not lost and len(t) == 9 and t[3].startswith(b"skialith-traces-") and t[6] == b"5":
            lost.append(reply)
            return
        await receive(self, sid, subject, reply, data, headers)

    monkeypatch.setattr(Client, "_process_msg", lossy)
    async with SkialithAgent(agent_id="lossy", settings=lite) as agent:
        for i in range(12):
            await agent.save_event(f"e{i}", {"i": i})
    ingest = TraceIngest(lite, batch_size=100, fetch_timeout=0.1)
    await ingest.start()
    try:
        await ingest.catch_up()
        rows = await ingest.traces()
    finally:
        await ingest.stop()
    rebuilt = await apply_all(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", [await stream_messages(lite)])
    assert lost, "no delivery was lost"
    assert len([t for t in rows if t.kind == "event"]) == 12
    assert rows == rebuilt


async def test_a_large_message_whose_parts_cannot_be_read_for_a_while_is_applied_not_skipped(
    lite: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NATS not answering the direct gets of a large message's parts for a moment (a restart, a
    # slow server) is a timing a real server does not produce on cue, so the first reads fail.
    small = dataclasses.replace(lite, chunk_size=1024)
    failures: list[int] = []
    join = Log.join_parts

    async def flaky(self: Log, headers: dict[str, str] | None, data: bytes) -> bytes:
        if (headers or {}).get(Header.PARTS.value) and len(failures) < 3:
            failures.append(1)
            raise LogError("NATS did not answer a read within 5 s", url=self.url)
        return await join(self, headers, data)

    monkeypatch.setattr(Log, "join_parts", flaky)
    async with SkialithCheckpointer(settings=small) as saver:
        cp = empty_checkpoint()
        cp["channel_values"] = {"text": "x" * 10_000}
        cp["channel_versions"] = {"text": "1"}
        config = {"configurable": {"thread_id": "large", "checkpoint_ns": ""}}
        await saver.aput(config, cp, {"step": 0, "source": "input"}, {"text": "1"})
    ingest = TraceIngest(small, batch_size=100, fetch_timeout=0.1)
    await ingest.start()
    try:
        await ingest.catch_up()
        rows = await ingest.traces(thread_id="large")
    finally:
        await ingest.stop()
    assert len(failures) == 3
    assert [(t.kind, t.name, t.step, t.channels) for t in rows] == [("checkpoint", "input", 0, ["text"])]
