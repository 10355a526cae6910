"""Real LangGraph graphs on one ``SkialithCheckpointer``, with the projector running.

Each scenario is an async function that drives a compiled graph the way a user does, asserts
LangGraph's documented behaviour as it goes, and returns a transcript of everything it observed
(ids and timestamps left out). It runs first against ``InMemorySaver`` (which checks the
scenario's own expectations), then against Skialith, and the two transcripts must be equal.

Sync LangGraph calls run in a worker thread (``asyncio.to_thread``), so the projector keeps
running on the test's loop, except in the Jupyter test, which blocks the loop on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import threading
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from graphs import (
    Flag,
    chat,
    checkpoint_id,
    chunk,
    delta,
    history,
    interrupts,
    linear,
    parallel_with_failure,
    snapshot,
    with_interrupt,
    with_subgraph,
    with_subgraph_node,
)
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot
from sqlalchemy import func, select

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import checkpoint_writes, checkpoints

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

Transcript = list[Any]
App = CompiledStateGraph[Any, Any, Any, Any]


def thread(name: str) -> RunnableConfig:
    return {"configurable": {"thread_id": name}}


@pytest.fixture
async def projector(settings: Settings) -> AsyncIterator[Projector]:
    """The projector, running on the test's loop for the whole test."""
    p = Projector(settings, fetch_timeout=0.2)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def saver(settings: Settings, projector: Projector) -> AsyncIterator[SkialithCheckpointer]:
    """One checkpointer for the whole test, used through both its sync and async faces."""
    s = SkialithCheckpointer(settings=settings)
    try:
        yield s
    finally:
        await s.aclose()


async def caught_up(projector: Projector, settings: Settings, timeout: float = 15.0) -> None:
    """Wait until the projector has applied everything on the stream (reads then come from SQL)."""
    log = await Log.open(settings)
    try:
        target = await log.stream_last_seq()
    finally:
        await log.close()
    async with asyncio.timeout(timeout):
        while projector.stats.last_seq < target:
            await asyncio.sleep(0.02)


async def count_rows(database_url: str, table: Any) -> int:
    model = ReadModel.from_url(database_url)
    try:
        async with model.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    finally:
        await model.close()


async def sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call LangGraph's sync API from a worker thread (the loop keeps serving the projector)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def states(app: App, config: RunnableConfig, **kwargs: Any) -> list[StateSnapshot]:
    found: list[StateSnapshot] = await sync(lambda: list(app.get_state_history(config, **kwargs)))
    return found


def ancestry(snapshots: list[StateSnapshot], head: StateSnapshot) -> list[str]:
    """Checkpoint ids from ``head`` back to the root, following ``parent_config``."""
    by_id = {checkpoint_id(s): s for s in snapshots}
    out: list[str] = []
    cursor: StateSnapshot | None = head
    while cursor is not None:
        out.append(checkpoint_id(cursor))
        parent = cursor.parent_config
        cursor = by_id.get(checkpoint_id(parent)) if parent else None
    return out


async def compare(
    scenario: Callable[[Callable[[Counter[str]], App], Counter[str]], Awaitable[Transcript]],
    build: Callable[[BaseCheckpointSaver[Any], Counter[str]], App],
    saver: BaseCheckpointSaver[Any],
) -> Transcript:
    """Run ``scenario`` on InMemorySaver, then on ``saver``; the transcripts must be equal."""
    reference = InMemorySaver()
    expected = await scenario(lambda calls: build(reference, calls), Counter())
    got = await scenario(lambda calls: build(saver, calls), Counter())
    assert got == expected
    return got


# -- scenarios ------------------------------------------------------------------------------------


async def invoke_and_stream(make: Callable[[Counter[str]], App], calls: Counter[str]) -> Transcript:
    app, cfg = make(calls), thread("t-run")
    out: Transcript = []
    r1 = await sync(app.invoke, {"log": ["x"]}, cfg)
    assert r1 == {"log": ["x", "a1", "b1", "c1"]}
    r2 = await app.ainvoke({"log": ["y"]}, cfg)
    assert r2 == {"log": ["x", "a1", "b1", "c1", "y", "a2", "b2", "c2"]}
    values = await sync(lambda: list(app.stream({"log": ["z"]}, cfg, stream_mode="values")))
    assert values[0]["log"][-1] == "z" and values[-1]["log"][-3:] == ["a3", "b3", "c3"]
    assert len(values) == 4  # the input, then one per node
    updates = await sync(lambda: list(app.stream({"log": ["w"]}, cfg, stream_mode="updates")))
    assert updates == [{"a": {"log": ["a4"]}}, {"b": {"log": ["b4"]}}, {"c": {"log": ["c4"]}}]
    both = [c async for c in app.astream({"log": ["v"]}, cfg, stream_mode=["values", "updates"])]
    assert [mode for mode, _ in both] == [
        "values",
        "updates",
        "values",
        "updates",
        "values",
        "updates",
        "values",
    ]
    state = await sync(app.get_state, cfg)
    astate = await app.aget_state(cfg)
    assert snapshot(state) == snapshot(astate)
    assert state.values["log"][-4:] == ["v", "a5", "b5", "c5"] and state.next == ()
    assert dict(calls) == {"a": 5, "b": 5, "c": 5}
    out += [r1, r2, values, updates, both, snapshot(state)]
    return out


async def history_and_time_travel(make: Callable[[Counter[str]], App], calls: Counter[str]) -> Transcript:
    app, cfg = make(calls), thread("t-history")
    out: Transcript = []
    await sync(app.invoke, {"log": ["x"]}, cfg)
    first = await states(app, cfg)
    assert [(s.metadata or {}).get("step") for s in first] == [3, 2, 1, 0, -1]
    assert [(s.metadata or {}).get("source") for s in first] == ["loop"] * 4 + ["input"]
    assert [s.next for s in first] == [(), ("c",), ("b",), ("a",), ("__start__",)]
    assert ancestry(first, first[0]) == [checkpoint_id(s) for s in first]  # newest first, one chain
    out.append(history(first))

    # time travel: run again from the checkpoint taken after "a", before "b"
    fork = first[2]
    assert fork.next == ("b",) and fork.values == {"log": ["x", "a1"]}
    forked = await sync(app.invoke, None, fork.config)
    assert forked == {"log": ["x", "a1", "b2", "c2"]}  # b and c ran again, a did not
    assert dict(calls) == {"a": 1, "b": 2, "c": 2}
    second = await states(app, cfg)
    assert len(second) == len(first) + 3  # the old branch is kept, the fork adds three
    head = await sync(app.get_state, cfg)
    assert head.values == forked and checkpoint_id(head) == checkpoint_id(second[0])
    branch = ancestry(second, head)
    assert checkpoint_id(fork) in branch and checkpoint_id(first[0]) not in branch
    fork_point = next(s for s in second if (s.metadata or {}).get("source") == "fork")
    assert fork_point.parent_config is not None
    assert checkpoint_id(fork_point.parent_config) == checkpoint_id(fork)
    # the old branch still reads as it was
    old = await sync(app.get_state, first[0].config)
    assert old.values == {"log": ["x", "a1", "b1", "c1"]}
    out += [forked, history(second), snapshot(old)]

    # update_state, then the next invoke sees the update
    await sync(app.update_state, cfg, {"log": ["u"]})
    updated = await app.aget_state(cfg)
    assert updated.values["log"][-1] == "u" and (updated.metadata or {}).get("source") == "update"
    after = await sync(app.invoke, {"log": ["y"]}, {**cfg, "metadata": {"run_tag": "after-update"}})
    assert after["log"] == ["x", "a1", "b2", "c2", "u", "y", "a2", "b3", "c3"]
    out += [snapshot(updated), after]

    # list with filter / before / limit, through get_state_history
    full = await states(app, cfg)
    assert len(full) == len(second) + 1 + 5
    only_updates = await states(app, cfg, filter={"source": "update"})
    assert [s.values["log"][-1] for s in only_updates] == ["u"]
    step2 = await states(app, cfg, filter={"step": 2})
    assert {(s.metadata or {}).get("source") for s in step2} == {"loop", "fork"} and len(step2) == 2
    limited = await states(app, cfg, limit=2)
    assert [checkpoint_id(s) for s in limited] == [checkpoint_id(s) for s in full[:2]]
    before = await states(app, cfg, before=full[3].config)
    assert [checkpoint_id(s) for s in before] == [checkpoint_id(s) for s in full[4:]]
    before_limited = await states(app, cfg, before=full[3].config, limit=3)
    assert [checkpoint_id(s) for s in before_limited] == [checkpoint_id(s) for s in full[4:7]]
    filtered_limited = await states(app, cfg, filter={"source": "loop"}, limit=2)
    assert [checkpoint_id(s) for s in filtered_limited] == [checkpoint_id(s) for s in full[:2]]
    tagged = await states(app, cfg, filter={"run_tag": "after-update"})  # config metadata is kept
    assert [checkpoint_id(s) for s in tagged] == [checkpoint_id(s) for s in full[:5]]
    async_full = [s async for s in app.aget_state_history(cfg)]
    assert history(async_full) == history(full)
    lists = (full, only_updates, step2, limited, before, before_limited, filtered_limited, tagged)
    out += [history(x) for x in lists]

    # edit a past state (a fork by update_state), then run on from the edit
    edit_cfg = await sync(app.update_state, fork.config, {"log": ["edit"]})
    edit = await app.aget_state(edit_cfg)
    assert edit.next == ("b",) and (edit.metadata or {}).get("source") == "update"
    assert edit.parent_config is not None and checkpoint_id(edit.parent_config) == checkpoint_id(fork)
    rerun = await sync(app.invoke, None, edit_cfg)
    assert rerun == {"log": ["x", "a1", "edit", "b4", "c4"]}
    assert dict(calls) == {"a": 2, "b": 4, "c": 4}
    out += [snapshot(edit), rerun, history(await states(app, cfg))]
    return out


async def interrupt_and_resume(make: Callable[[Counter[str]], App], calls: Counter[str]) -> Transcript:
    app, cfg = make(calls), thread("t-interrupt")
    first = await sync(app.invoke, {"log": ["x"]}, cfg)
    question = {"question": "name?", "seen": ["x", "before1"]}
    assert chunk(first) == {"log": ["x", "before1"], "__interrupt__": [{"interrupt": question}]}
    paused = await sync(app.get_state, cfg)
    assert paused.next == ("ask",)
    assert interrupts(paused.interrupts) == [question]
    assert [interrupts(t.interrupts) for t in paused.tasks] == [[question]]
    resumed = await app.ainvoke(Command(resume="Ada"), cfg)
    assert resumed == {"log": ["x", "before1", "ask:Ada", "after1"], "answer": "Ada"}
    assert dict(calls) == {"before": 1, "ask": 2, "after": 1}  # only the interrupted node ran again
    done = await sync(app.get_state, cfg)
    assert done.next == () and done.interrupts == () and done.values == resumed
    # a second round, resumed through the sync face and streamed
    await app.ainvoke({"log": ["y"]}, cfg)
    streamed = await sync(lambda: list(app.stream(Command(resume="Bob"), cfg, stream_mode="updates")))
    assert streamed == [{"ask": {"answer": "Bob", "log": ["ask:Bob"]}}, {"after": {"log": ["after2"]}}]
    hist = await states(app, cfg)
    return [chunk(first), snapshot(paused), resumed, snapshot(done), streamed, history(hist)]


async def subgraph_interrupt(make: Callable[[Counter[str]], App], calls: Counter[str]) -> Transcript:
    app, cfg = make(calls), thread("t-subgraph")
    first = await sync(app.invoke, {"log": ["x"]}, cfg)
    question = {"question": "name?", "trail": ["s1"]}
    assert chunk(first) == {"log": ["x", "pre1"], "__interrupt__": [{"interrupt": question}]}
    paused = await sync(app.get_state, cfg, subgraphs=True)
    assert paused.next == ("call_sub",)
    [task] = paused.tasks
    assert isinstance(task.state, StateSnapshot)
    sub_ns = task.state.config["configurable"]["checkpoint_ns"]
    assert sub_ns.startswith("call_sub:")
    assert task.state.values == {"trail": ["s1"]} and task.state.next == ("ask",)
    assert interrupts(task.state.interrupts) == [question]
    assert (task.state.metadata or {}).get("parents") == {"": checkpoint_id(paused)}
    apaused = await app.aget_state(cfg, subgraphs=True)
    assert snapshot(apaused) == snapshot(paused)
    # the subgraph's checkpoints live under their own namespace
    sub_cfg: RunnableConfig = {"configurable": {"thread_id": "t-subgraph", "checkpoint_ns": sub_ns}}
    checkpointer = app.checkpointer
    assert isinstance(checkpointer, BaseCheckpointSaver)
    sub_list = await sync(lambda: list(checkpointer.list(sub_cfg)))
    assert sub_list and all(t.config["configurable"]["checkpoint_ns"] == sub_ns for t in sub_list)
    sub_tuple = await checkpointer.aget_tuple(sub_cfg)
    assert sub_tuple is not None and sub_tuple.checkpoint["channel_values"]["trail"] == ["s1"]

    resumed = await sync(app.invoke, Command(resume="Ada"), cfg)
    assert resumed == {"log": ["x", "pre1", "s1", "ask:Ada", "s2", "post1"], "answer": "Ada"}
    # the parent node and the interrupted node run again; s1 (before the interrupt) does not
    assert dict(calls) == {"pre": 1, "call_sub": 2, "s1": 1, "ask": 2, "s2": 1, "post": 1}
    done = await app.aget_state(cfg, subgraphs=True)
    assert done.next == () and done.tasks == ()
    return [chunk(first), snapshot(paused), len(sub_list), resumed, snapshot(done)]


async def subgraph_node_update_state(make: Callable[[Counter[str]], App], calls: Counter[str]) -> Transcript:
    app, cfg = make(calls), thread("t-subnode")
    first = await app.ainvoke({"log": ["x"]}, cfg)
    assert chunk(first) == {
        "log": ["x", "pre1"],
        "__interrupt__": [{"interrupt": {"question": "name?", "trail": ["s1"]}}],
    }
    paused = await sync(app.get_state, cfg, subgraphs=True)
    [task] = paused.tasks
    assert task.name == "sub" and isinstance(task.state, StateSnapshot)
    sub_config = task.state.config
    assert sub_config["configurable"]["checkpoint_ns"].startswith("sub:")
    # the subgraph's own state, read and edited through its config
    direct = await sync(app.get_state, sub_config)
    assert direct.values == {"trail": ["s1"]} and direct.next == ("ask",)
    await sync(app.update_state, sub_config, {"trail": ["edited"]})
    edited = await app.aget_state(cfg, subgraphs=True)
    assert isinstance(edited.tasks[0].state, StateSnapshot)
    assert edited.tasks[0].state.values == {"trail": ["s1", "edited"]}
    assert edited.tasks[0].state.next == ("ask",)
    resumed = await sync(app.invoke, Command(resume="Ada"), cfg)
    assert resumed == {"log": ["x", "pre1", "post:Ada:s1+edited"], "answer": "Ada:s1+edited"}
    assert dict(calls) == {"pre": 1, "s1": 1, "ask": 2, "post": 1}
    done = await sync(app.get_state, cfg, subgraphs=True)
    assert done.next == () and done.tasks == ()
    return [chunk(first), snapshot(paused), snapshot(direct), snapshot(edited), resumed, snapshot(done)]


async def chat_messages(make: Callable[[Counter[str]], App], calls: Counter[str]) -> Transcript:
    app, cfg = make(calls), thread("t-chat")
    first = await sync(app.invoke, {"messages": [HumanMessage(content="hi", id="h-1")]}, cfg)
    second = await app.ainvoke({"messages": [("user", "again")]}, cfg)
    messages = second["messages"]
    assert [type(m).__name__ for m in messages] == ["HumanMessage", "AIMessage", "HumanMessage", "AIMessage"]
    assert [m.content for m in messages] == ["hi", "echo: hi", "again", "echo: again"]
    # add_messages replaces a message with the same id
    await sync(app.update_state, cfg, {"messages": [AIMessage(content="edited", id="ai-1")]})
    state = await app.aget_state(cfg)
    assert [m.content for m in state.values["messages"]] == ["hi", "edited", "again", "echo: again"]
    dumped = [[m.model_dump(exclude={"id"}) for m in v["messages"]] for v in (first, second, state.values)]
    return [dumped, [(s.metadata or {}).get("step") for s in await states(app, cfg)]]


def compile_with(
    builder: Callable[[Counter[str]], Any],
) -> Callable[[BaseCheckpointSaver[Any], Counter[str]], App]:
    def build(checkpointer: BaseCheckpointSaver[Any], calls: Counter[str]) -> App:
        app: App = builder(calls).compile(checkpointer=checkpointer)
        return app

    return build


# -- tests ----------------------------------------------------------------------------------------


async def test_invoke_ainvoke_and_stream_on_one_instance(
    saver: SkialithCheckpointer, projector: Projector
) -> None:
    await compare(invoke_and_stream, compile_with(linear), saver)
    assert projector.stats.applied > 0


async def test_concurrent_sync_and_async_invokes_on_one_instance(saver: SkialithCheckpointer) -> None:
    """Several threads (sync face) and tasks (async face) run graphs on one instance at once."""

    async def run(i: int, use_async: bool) -> tuple[dict[str, Any], list[StateSnapshot]]:
        app, cfg = linear(Counter()).compile(checkpointer=saver), thread(f"t-many-{i}")
        for item in (f"in{i}", "again"):
            if use_async:
                result = await app.ainvoke({"log": [item]}, cfg)
            else:
                result = await sync(app.invoke, {"log": [item]}, cfg)
        return result, await states(app, cfg)

    outcomes = await asyncio.gather(*(run(i, use_async=i % 2 == 0) for i in range(8)))
    for i, (result, hist) in enumerate(outcomes):
        assert result == {"log": [f"in{i}", "a1", "b1", "c1", "again", "a2", "b2", "c2"]}
        assert [(s.metadata or {}).get("step") for s in hist] == list(range(8, -2, -1))
        assert {s.config["configurable"]["thread_id"] for s in hist} == {f"t-many-{i}"}


async def test_two_instances_on_one_thread(
    saver: SkialithCheckpointer, settings: Settings, projector: Projector
) -> None:
    """Two checkpointers (two processes, as far as they know) take turns on one thread: each
    sees the other's runs, updates, forks and delete at once."""

    async def scenario(a: App, b: App) -> Transcript:
        cfg = thread("t-shared")
        assert isinstance(b.checkpointer, BaseCheckpointSaver)
        r1 = await sync(a.invoke, {"log": ["x"]}, cfg)
        await b.aupdate_state(cfg, {"log": ["from-b"]})
        r2 = await sync(a.invoke, {"log": ["y"]}, cfg)
        assert r2 == {"log": ["x", "a1", "b1", "c1", "from-b", "y", "a2", "b2", "c2"]}
        assert (await b.aget_state(cfg)).values == r2
        fork = next(s for s in await states(b, cfg) if s.next == ("b",))  # the latest run, after a2
        forked = await b.ainvoke(None, fork.config)
        assert forked["log"][-2:] == ["b3", "c3"]
        assert (await sync(a.get_state, cfg)).values == forked
        r3 = await sync(a.invoke, {"log": ["z"]}, cfg)
        assert r3["log"][-4:] == ["z", "a3", "b4", "c4"]
        history_a, history_b = await states(a, cfg), history(await states(b, cfg))
        assert history(history_a) == history_b
        await b.checkpointer.adelete_thread("t-shared")
        gone = await sync(a.get_state, cfg)
        assert gone.values == {} and await states(a, cfg) == []
        again = await sync(a.invoke, {"log": ["new"]}, cfg)
        assert again == {"log": ["new", "a4", "b5", "c5"]}
        return [r1, r2, forked, r3, history_b, again]

    reference, ref_calls = InMemorySaver(), Counter[str]()
    expected = await scenario(
        linear(ref_calls).compile(checkpointer=reference), linear(ref_calls).compile(checkpointer=reference)
    )
    calls = Counter[str]()
    async with SkialithCheckpointer(settings=settings) as other:
        got = await scenario(
            linear(calls).compile(checkpointer=saver), linear(calls).compile(checkpointer=other)
        )
    assert got == expected


async def test_message_state_round_trips(saver: SkialithCheckpointer) -> None:
    await compare(chat_messages, compile_with(chat), saver)


async def test_history_update_state_and_time_travel(
    saver: SkialithCheckpointer, projector: Projector, settings: Settings
) -> None:
    await compare(history_and_time_travel, compile_with(linear), saver)
    # once the projector has caught up, the same reads are served from SQL and agree
    app = compile_with(linear)(saver, Counter())
    cfg = thread("t-history")
    before = await states(app, cfg)
    await caught_up(projector, settings)
    assert history(await states(app, cfg)) == history(before)
    assert await count_rows(settings.database_url, checkpoints) == len(before)


async def test_interrupt_and_command_resume(saver: SkialithCheckpointer) -> None:
    await compare(interrupt_and_resume, compile_with(with_interrupt), saver)


async def test_subgraph_state_and_interrupt_resumed_from_parent(saver: SkialithCheckpointer) -> None:
    await compare(subgraph_interrupt, compile_with(with_subgraph), saver)


async def test_subgraph_node_get_and_update_state_by_namespace(saver: SkialithCheckpointer) -> None:
    await compare(subgraph_node_update_state, compile_with(with_subgraph_node), saver)


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_failed_superstep_keeps_sibling_writes(
    saver: SkialithCheckpointer, projector: Projector, settings: Settings, durability: str
) -> None:
    async def scenario(make: Callable[[Counter[str]], App], calls: Counter[str]) -> Transcript:
        app, cfg = make(calls), thread("t-failure")
        with pytest.raises(RuntimeError, match="failed on purpose"):
            await sync(app.invoke, {"log": ["x"]}, cfg, durability=durability)
        checkpointer = app.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        tup = await sync(checkpointer.get_tuple, cfg)
        assert tup is not None
        written = sorted((ch, v) for _, ch, v in tup.pending_writes or [] if ch == "log")
        assert written == [("log", ["ok11"]), ("log", ["ok21"])]
        errors = [v for _, ch, v in tup.pending_writes or [] if ch == "__error__"]
        assert len(errors) == 1 and "failed on purpose" in str(errors[0])
        state = await app.aget_state(cfg)
        assert state.next == ("flaky",)
        by_name = {t.name: t for t in state.tasks}
        assert by_name["ok1"].result == {"log": ["ok11"]} and by_name["ok2"].result == {"log": ["ok21"]}
        assert by_name["flaky"].error is not None and "failed on purpose" in str(by_name["flaky"].error)
        fail.on = False
        final = await sync(app.invoke, None, cfg, durability=durability)
        assert final == {"log": ["x", "flaky2", "ok11", "ok21", "join1"]}
        assert dict(calls) == {"ok1": 1, "ok2": 1, "flaky": 2, "join": 1}  # siblings not run again
        return [sorted(written), snapshot(state), final, history(await states(app, cfg))]

    fail = Flag(True)

    def build(checkpointer: BaseCheckpointSaver[Any], calls: Counter[str]) -> App:
        fail.on = True
        app: App = parallel_with_failure(calls, fail).compile(checkpointer=checkpointer)
        return app

    await compare(scenario, build, saver)
    await caught_up(projector, settings)
    assert await count_rows(settings.database_url, checkpoint_writes) > 0


@SQLITE_ONLY
@pytest.mark.timeout(60)
async def test_sync_api_on_a_running_loop_like_jupyter(saver: SkialithCheckpointer) -> None:
    """A notebook cell calls the sync API on the thread whose loop is running (here: the test's
    loop, which also runs the projector, so the projector cannot help while the call blocks)."""
    asyncio.get_running_loop()  # we are on a running loop, as in Jupyter
    calls: Counter[str] = Counter()
    app = linear(calls).compile(checkpointer=saver)
    cfg = thread("t-jupyter")
    assert app.invoke({"log": ["x"]}, cfg) == {"log": ["x", "a1", "b1", "c1"]}
    state = app.get_state(cfg)
    assert state.values == {"log": ["x", "a1", "b1", "c1"]} and state.next == ()
    hist = list(app.get_state_history(cfg))
    assert [(s.metadata or {}).get("step") for s in hist] == [3, 2, 1, 0, -1]
    assert list(app.stream({"log": ["y"]}, cfg, stream_mode="updates")) == [
        {"a": {"log": ["a2"]}},
        {"b": {"log": ["b2"]}},
        {"c": {"log": ["c2"]}},
    ]
    # and the async face of the same instance still works on this loop afterwards
    assert (await app.ainvoke({"log": ["z"]}, cfg))["log"][-4:] == ["z", "a3", "b3", "c3"]
    assert app.get_state(cfg).values == (await app.aget_state(cfg)).values

    icalls: Counter[str] = Counter()
    iapp = with_interrupt(icalls).compile(checkpointer=saver)
    icfg = thread("t-jupyter-interrupt")
    assert "__interrupt__" in iapp.invoke({"log": ["x"]}, icfg)
    assert iapp.get_state(icfg).next == ("ask",)
    assert iapp.invoke(Command(resume="Ada"), icfg)["answer"] == "Ada"
    assert dict(icalls) == {"before": 1, "ask": 2, "after": 1}


async def delta_lifecycle(saver: SkialithCheckpointer, settle: Callable[[], Awaitable[None]]) -> None:
    """DeltaChannel over several invokes, then prune, copy_thread and delete_thread. ``settle``
    runs after each maintenance operation (waits for the projector, when there is one)."""
    cfg, copy_cfg = thread("t-delta"), thread("t-delta-copy")

    async def build_up(make: Callable[[Counter[str]], App], calls: Counter[str]) -> Transcript:
        app = make(calls)
        results = [await sync(app.invoke, {"items": [f"in{i}"]}, cfg) for i in range(3)]
        results.append(await app.ainvoke({"items": ["in3"]}, cfg))
        assert results[-1] == {"items": ["in0", "n1", "in1", "n2", "in2", "n3", "in3", "n4"]}
        # one more update leaves the head between snapshots: its value needs the ancestors
        await sync(app.update_state, cfg, {"items": ["u"]})
        state = await sync(app.get_state, cfg)
        assert state.values == {"items": [*results[-1]["items"], "u"]}
        hist = await states(app, cfg)
        return [results, snapshot(state), history(hist)]

    reference, ref_calls, calls = InMemorySaver(), Counter[str](), Counter[str]()
    expected = await build_up(lambda c: delta(c).compile(checkpointer=reference), ref_calls)
    got = await build_up(lambda c: delta(c).compile(checkpointer=saver), calls)
    assert got == expected
    app, ref_app = delta(calls).compile(checkpointer=saver), delta(ref_calls).compile(checkpointer=reference)
    want = (await app.aget_state(cfg)).values
    head = await sync(saver.get_tuple, cfg)
    assert head is not None and "items" not in head.checkpoint["channel_values"]  # not a snapshot
    assert (head.metadata or {}).get("counters_since_delta_snapshot")
    before = await states(app, cfg)

    await sync(saver.prune, ["t-delta"], strategy="keep_latest")
    kept = await states(app, cfg)
    assert 1 < len(kept) < len(before)  # history pruned, delta ancestors kept
    assert history(kept) == history(before)[: len(kept)]  # each kept checkpoint still reads whole
    assert (await sync(app.get_state, cfg)).values == want
    await settle()
    assert (await app.aget_state(cfg)).values == want
    assert history(await states(app, cfg)) == history(kept)
    # the pruned thread keeps working, and agrees with the unpruned reference
    more = await sync(app.invoke, {"items": ["in4"]}, cfg)
    assert more == await sync(ref_app.invoke, {"items": ["in4"]}, cfg)

    await saver.acopy_thread("t-delta", "t-delta-copy")
    assert (await sync(app.get_state, copy_cfg)).values == more
    assert history(await states(app, copy_cfg)) == history(await states(app, cfg))
    copy_more = await sync(app.invoke, {"items": ["c"]}, copy_cfg)
    assert copy_more["items"][-2:] == ["c", "n6"]
    assert (await app.aget_state(cfg)).values == more  # the source is untouched by the copy

    await sync(saver.delete_thread, "t-delta")
    gone = await sync(app.get_state, cfg)
    assert gone.values == {} and gone.next == ()
    assert await states(app, cfg) == []
    assert (await app.aget_state(copy_cfg)).values == copy_more  # the copy is independent
    await settle()
    assert await states(app, cfg) == []
    assert (await sync(app.get_state, copy_cfg)).values == copy_more


async def test_delta_channel_prune_copy_delete(
    saver: SkialithCheckpointer, projector: Projector, settings: Settings
) -> None:
    await delta_lifecycle(saver, lambda: caught_up(projector, settings))


@pytest.fixture
async def log_only_saver(settings: Settings) -> AsyncIterator[SkialithCheckpointer]:
    """A checkpointer with no projector at all: every read must be answered from the log."""
    s = SkialithCheckpointer(settings=dataclasses.replace(settings, read_wait=0.0))
    try:
        yield s
    finally:
        await s.aclose()


@pytest.mark.parametrize(
    ("scenario", "builder"),
    [
        pytest.param(invoke_and_stream, linear, id="invoke-stream"),
        pytest.param(history_and_time_travel, linear, id="history"),
        pytest.param(interrupt_and_resume, with_interrupt, id="interrupt"),
        pytest.param(subgraph_interrupt, with_subgraph, id="subgraph"),
        pytest.param(subgraph_node_update_state, with_subgraph_node, id="subgraph-node"),
    ],
)
async def test_read_your_writes_with_projector_stopped(
    log_only_saver: SkialithCheckpointer,
    settings: Settings,
    scenario: Callable[[Callable[[Counter[str]], App], Counter[str]], Awaitable[Transcript]],
    builder: Callable[[Counter[str]], Any],
) -> None:
    await compare(scenario, compile_with(builder), log_only_saver)
    assert await count_rows(settings.database_url, checkpoints) == 0  # nothing came from SQL


@SQLITE_ONLY
async def test_projector_stops_promptly_after_a_graph_ran(settings: Settings) -> None:
    """Regression: Projector.stop() used to sit out nats' 30 s drain timeout on the pull
    subscription's leftover 408 status messages (fixed by closing instead of draining)."""
    p = Projector(settings, fetch_timeout=0.2)
    await p.start()
    async with SkialithCheckpointer(settings=settings) as s:
        app = linear(Counter()).compile(checkpointer=s)
        await app.ainvoke({"log": ["x"]}, thread("t-stop"))
        await caught_up(p, settings)
    await asyncio.sleep(0.5)  # a few idle fetches expire
    stopping = asyncio.create_task(p.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    if not done:  # cancelling the drain makes nats close the connection at once
        stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    assert done, "Projector.stop() did not return within 5 s"  # SIGTERM must be prompt


@SQLITE_ONLY  # the log is replayed into in-memory SQLite whatever the read model is
async def test_delta_channel_prune_copy_delete_with_projector_stopped(
    log_only_saver: SkialithCheckpointer, settings: Settings
) -> None:
    async def nothing() -> None:
        return None

    await delta_lifecycle(log_only_saver, nothing)
    assert await count_rows(settings.database_url, checkpoints) == 0  # nothing came from SQL


@SQLITE_ONLY
def test_async_face_on_short_lived_loops_leaves_nothing_open(settings: Settings) -> None:
    """A script calling ``asyncio.run(app.ainvoke(...))`` per request on one checkpointer."""
    threads_before = threading.active_count()
    saver = SkialithCheckpointer(settings=settings)
    app = linear(Counter()).compile(checkpointer=saver)
    cfg = thread("t-short-loops")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the leak's own warnings, at gc time
        for i in range(2):
            result = asyncio.run(app.ainvoke({"log": [f"in{i}"]}, cfg))
            assert result["log"][-4:] == [f"in{i}", f"a{i + 1}", f"b{i + 1}", f"c{i + 1}"]
        assert app.get_state(cfg).values == result
        saver.close()
        gc.collect()
    leaked = [t.name for t in threading.enumerate()][threads_before:]
    assert threading.active_count() == threads_before, f"threads left running: {leaked}"
