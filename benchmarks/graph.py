"""Whole-graph runs: a 5-node chain ``StateGraph`` compiled with each saver.

Each node appends one short ``AIMessage``; each run starts with one ``HumanMessage``. Runs go
on fresh threads and on one long thread per contender, with ``durability="sync"`` and
``"async"``, interleaved in blocks across contenders; the long thread's runs alternate between
the two durabilities in blocks, so both see the same thread growth. Afterwards ``aget_tuple`` is timed on the
long thread and on a fresh one-run thread, to show whether reads slow down as a thread grows.

On that long thread the state grows too (six messages per run), so the read measures state size
as much as history. A second long thread per contender therefore runs the same chain with a
bounded state: each node also removes (``RemoveMessage``) all but the last ``KEEP`` messages, so
after every run the state holds exactly ``KEEP`` messages while the history of checkpoints,
writes and channel versions grows with each run. ``aget_tuple`` (latest) on it is timed against a
fresh one-run thread of the same graph, whose state is the same size, the two reads alternating.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, MessagesState, StateGraph

from .contender import Contender
from .stats import Sample, collected_outside, gc_section

NODES = 5
KEEP = NODES + 1  # messages kept by the bounded graph: one run's worth
LONG_READS = 15  # reads on the long thread are slow for some savers (about 1 s each for MySQL)
Durability = Literal["sync", "async"]
DURABILITIES: tuple[Durability, ...] = ("sync", "async")


def build_graph(*, keep: int | None = None) -> StateGraph[Any]:
    """The 5-node chain: ``START -> n1 -> ... -> n5 -> END``; each node appends a message.

    Args:
        keep: if given, each node also removes all but the last ``keep`` messages (its own
            included), so the state stays bounded however many runs the thread takes.
    """

    def make_node(i: int) -> Any:
        def node(state: MessagesState) -> dict[str, list[BaseMessage]]:
            messages = state["messages"]
            n = len(messages)
            update: list[BaseMessage] = []
            if keep is not None:
                update += [RemoveMessage(id=m.id) for m in messages[: max(0, n - keep + 1)] if m.id]
            update.append(AIMessage(content=f"node {i} saw {n} messages and adds this short reply."))
            return {"messages": update}

        return node

    graph: StateGraph[Any] = StateGraph(MessagesState)
    prev = START
    for i in range(1, NODES + 1):
        graph.add_node(f"n{i}", make_node(i))
        graph.add_edge(prev, f"n{i}")
        prev = f"n{i}"
    graph.add_edge(prev, END)
    return graph


@dataclass(slots=True)
class GraphSeries:
    """Run times of one contender under one durability on one kind of thread."""

    contender: str
    durability: Durability
    thread: Literal["fresh", "long"]
    sample: Sample = field(default_factory=Sample)


@dataclass(slots=True)
class BoundedResult:
    """The bounded-state long thread: run times, and latest reads on it vs on a fresh thread."""

    runs: int
    keep: int
    run_samples: dict[str, Sample]  # contender -> its long thread's run times (durability "sync")
    reads: dict[str, dict[str, Sample]]  # reader -> {"fresh": ..., "long": ...}


@dataclass(slots=True)
class GraphResult:
    """Everything the whole-graph section measured."""

    series: list[GraphSeries]
    reads: dict[str, dict[str, Sample]]  # contender -> {"fresh": ..., "long": ...}
    long_runs: int
    fresh_runs: int
    bounded: BoundedResult | None = None


def _config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


async def _run_once(app: Any, thread_id: str, durability: Durability, *, run: int | None = None) -> int:
    t0 = time.perf_counter_ns()
    text = "hello, where is my parcel?" if run is None else f"run {run}: hello, where is my parcel?"
    inputs = {"messages": [HumanMessage(content=text)]}
    await app.ainvoke(inputs, _config(thread_id), durability=durability)
    return time.perf_counter_ns() - t0


async def run_graphs(
    contenders: list[Contender],
    *,
    fresh_runs: int,
    long_runs: int,
    block: int,
    reads: int,
    bounded_runs: int = 0,
    bounded_reads: int | None = None,
    readers: dict[str, Contender] | None = None,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> GraphResult:
    """Run the graph section (see module docstring) and return its samples.

    Args:
        contenders: the savers to compile the graph with.
        fresh_runs: runs per durability on fresh threads.
        long_runs: runs on each contender's long thread, all durabilities together.
        block: runs per series before moving on to the next (interleaving).
        reads: ``aget_tuple`` calls timed per thread afterwards (fewer on the long thread).
        bounded_runs: runs on each contender's bounded-state long thread (0: skip it).
        bounded_reads: ``aget_tuple`` calls timed per thread there (default: ``reads``).
        readers: extra read-only savers, keyed by the contender whose threads they read.
        settle: awaited before the reads (e.g. wait for projections to catch up).
    """
    graph = build_graph()
    apps = {c.name: graph.compile(checkpointer=c.saver) for c in contenders}
    tag = uuid.uuid4().hex[:6]
    series: list[GraphSeries] = []
    long_threads = {c.name: f"g-{tag}-long-{uuid.uuid4().hex[:6]}" for c in contenders}
    for d in DURABILITIES:
        for c in contenders:
            series.append(GraphSeries(c.name, d, "fresh"))
            series.append(GraphSeries(c.name, d, "long"))
    # the long thread of a contender takes ``long_runs`` runs in all, both durabilities in turn
    per_durability = {"fresh": fresh_runs, "long": max(1, long_runs // len(DURABILITIES))}
    # warm-up: compile paths, connections, first-time imports
    for c in contenders:
        await _run_once(apps[c.name], f"g-{tag}-warm-{uuid.uuid4().hex[:6]}", "sync")
    with gc_section():
        for start in range(0, max(per_durability.values()), block):
            with collected_outside():
                for s in series:
                    for i in range(start, min(start + block, per_durability[s.thread])):
                        if s.thread == "fresh":
                            thread_id = f"g-{tag}-fresh-{s.durability}-{i}-{uuid.uuid4().hex[:6]}"
                        else:
                            thread_id = long_threads[s.contender]
                        s.sample.add(await _run_once(apps[s.contender], thread_id, s.durability))
            # rotate so that no contender always runs first
            series = series[1:] + series[:1]
    total_long = per_durability["long"] * len(DURABILITIES)
    fresh_threads = {}
    for c in contenders:
        fresh_threads[c.name] = f"g-{tag}-readfresh-{uuid.uuid4().hex[:6]}"
        await _run_once(apps[c.name], fresh_threads[c.name], "sync")
    if settle is not None:
        await settle()
    targets = [(c, c.name) for c in contenders]
    targets += [(reader, base) for base, reader in (readers or {}).items()]
    read_samples = await _time_reads(
        targets,
        {"fresh": fresh_threads, "long": long_threads},
        n={"fresh": reads, "long": min(reads, LONG_READS)},
        expect=total_long,
    )
    names = [c.name for c in contenders]
    bounded = None
    if bounded_runs > 0:
        bounded = await run_bounded(
            contenders,
            runs=bounded_runs,
            block=block,
            reads=reads if bounded_reads is None else bounded_reads,
            readers=readers,
            settle=settle,
        )
    return GraphResult(sorted_series(series, names), read_samples, total_long, fresh_runs, bounded)


async def run_bounded(
    contenders: list[Contender],
    *,
    runs: int,
    block: int,
    reads: int,
    readers: dict[str, Contender] | None = None,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> BoundedResult:
    """Grow a bounded-state thread per contender, then time latest reads on it vs a fresh thread.

    Args:
        contenders: the savers to compile the bounded graph with.
        runs: runs on each contender's long thread (``durability="sync"``), interleaved in blocks.
        block: runs per contender before moving on to the next.
        reads: ``aget_tuple`` calls timed per thread, fresh and long alternating.
        readers: extra read-only savers, keyed by the contender whose threads they read.
        settle: awaited before the reads (e.g. wait for projections to catch up).
    """
    graph = build_graph(keep=KEEP)
    apps = {c.name: graph.compile(checkpointer=c.saver) for c in contenders}
    tag = uuid.uuid4().hex[:6]
    long_threads = {c.name: f"b-{tag}-long-{uuid.uuid4().hex[:6]}" for c in contenders}
    fresh_threads = {c.name: f"b-{tag}-fresh-{uuid.uuid4().hex[:6]}" for c in contenders}
    run_samples = {c.name: Sample() for c in contenders}
    order = list(contenders)
    for start in range(0, runs, block):
        for c in order:
            for i in range(start, min(start + block, runs)):
                run_samples[c.name].add(await _run_once(apps[c.name], long_threads[c.name], "sync", run=i))
        order = order[1:] + order[:1]
    for c in contenders:
        await _run_once(apps[c.name], fresh_threads[c.name], "sync", run=0)
    if settle is not None:
        await settle()
    targets = [(c, c.name) for c in contenders]
    targets += [(reader, base) for base, reader in (readers or {}).items()]
    out: dict[str, dict[str, Sample]] = {c.name: {"fresh": Sample(), "long": Sample()} for c, _ in targets}
    configs = {
        (c.name, kind): _latest(threads[base])
        for c, base in targets
        for kind, threads in (("fresh", fresh_threads), ("long", long_threads))
    }
    for c, _ in targets:
        await _check_bounded(c, configs[(c.name, "fresh")], run=0)
        await _check_bounded(c, configs[(c.name, "long")], run=runs - 1)
    with gc_section(), collected_outside():
        for r in range(reads):
            k = r % len(targets)
            kinds = ("fresh", "long") if r % 2 == 0 else ("long", "fresh")
            for c, _ in targets[k:] + targets[:k]:
                for kind in kinds:
                    t0 = time.perf_counter_ns()
                    await c.saver.aget_tuple(configs[(c.name, kind)])
                    out[c.name][kind].add(time.perf_counter_ns() - t0)
    return BoundedResult(runs, KEEP, run_samples, out)


def _latest(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


async def _check_bounded(c: Contender, cfg: RunnableConfig, *, run: int) -> None:
    """Check that the latest checkpoint holds the ``KEEP`` messages of run number ``run``."""
    tup = await c.saver.aget_tuple(cfg)
    messages = tup.checkpoint["channel_values"].get("messages", []) if tup else []
    first = str(messages[0].content) if messages else ""
    if len(messages) != KEEP or not first.startswith(f"run {run}:"):
        raise AssertionError(
            f"{c.name}: bounded thread {cfg['configurable']['thread_id']!r} holds {len(messages)} messages "
            f"starting {first[:20]!r}, not {KEEP} starting 'run {run}:'"
        )


def sorted_series(series: list[GraphSeries], names: list[str]) -> list[GraphSeries]:
    """Series in a stable order: durability, thread kind, then the contenders' order."""
    order = {name: i for i, name in enumerate(names)}

    def key(s: GraphSeries) -> tuple[int, bool, int]:
        return DURABILITIES.index(s.durability), s.thread != "fresh", order[s.contender]

    return sorted(series, key=key)


async def _time_reads(
    targets: list[tuple[Contender, str]],
    threads: dict[str, dict[str, str]],
    *,
    n: dict[str, int],
    expect: int,
) -> dict[str, dict[str, Sample]]:
    """Time ``aget_tuple`` (latest) on each long thread and on a one-run thread.

    Args:
        targets: (saver, name of the contender whose threads it reads).
        threads: thread kind -> contender name -> thread id.
        n: calls per thread kind.
        expect: runs on the long thread (its message count is checked).
    """
    out: dict[str, dict[str, Sample]] = {c.name: {"fresh": Sample(), "long": Sample()} for c, _ in targets}
    want_messages = expect * (NODES + 1)
    with gc_section():
        for kind in ("fresh", "long"):
            for c, base in targets:
                cfg: RunnableConfig = {
                    "configurable": {"thread_id": threads[kind][base], "checkpoint_ns": ""}
                }
                first = await c.saver.aget_tuple(cfg)
                if kind == "long":
                    got = len(first.checkpoint["channel_values"].get("messages", [])) if first else 0
                    if got != want_messages:
                        raise AssertionError(f"{c.name}: long thread has {got} messages, not {want_messages}")
                with collected_outside():
                    for _ in range(n[kind]):
                        t0 = time.perf_counter_ns()
                        await c.saver.aget_tuple(cfg)
                        out[c.name][kind].add(time.perf_counter_ns() - t0)
    return out
