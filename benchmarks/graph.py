"""Whole-graph runs: a 5-node chain ``StateGraph`` compiled with each saver.

Each node appends one short ``AIMessage``; each run starts with one ``HumanMessage``. Runs go
on fresh threads and on one long thread per contender, with ``durability="sync"`` and
``"async"``, interleaved in blocks across contenders; the long thread's runs alternate between
the two durabilities in blocks, so both see the same thread growth. Afterwards ``aget_tuple`` is timed on the
long thread and on a fresh one-run thread, to show whether reads slow down as a thread grows.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, MessagesState, StateGraph

from .contender import Contender
from .stats import Sample

NODES = 5
LONG_READS = 15  # reads on the long thread are slow for some savers (about 1 s each for MySQL)
Durability = Literal["sync", "async"]
DURABILITIES: tuple[Durability, ...] = ("sync", "async")


def build_graph() -> StateGraph[Any]:
    """The 5-node chain: ``START -> n1 -> ... -> n5 -> END``; each node appends a message."""

    def make_node(i: int) -> Any:
        def node(state: MessagesState) -> dict[str, list[AIMessage]]:
            n = len(state["messages"])
            return {"messages": [AIMessage(content=f"node {i} saw {n} messages and adds this short reply.")]}

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
class GraphResult:
    """Everything the whole-graph section measured."""

    series: list[GraphSeries]
    reads: dict[str, dict[str, Sample]]  # contender -> {"fresh": ..., "long": ...}
    long_runs: int
    fresh_runs: int


def _config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


async def _run_once(app: Any, thread_id: str, durability: Durability) -> int:
    t0 = time.perf_counter_ns()
    inputs = {"messages": [HumanMessage(content="hello, where is my parcel?")]}
    await app.ainvoke(inputs, _config(thread_id), durability=durability)
    return time.perf_counter_ns() - t0


async def run_graphs(
    contenders: list[Contender],
    *,
    fresh_runs: int,
    long_runs: int,
    block: int,
    reads: int,
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
    gc.collect()
    for start in range(0, max(per_durability.values()), block):
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
    return GraphResult(sorted_series(series, names), read_samples, total_long, fresh_runs)


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
    for kind in ("fresh", "long"):
        for c, base in targets:
            cfg: RunnableConfig = {"configurable": {"thread_id": threads[kind][base], "checkpoint_ns": ""}}
            first = await c.saver.aget_tuple(cfg)
            if kind == "long":
                got = len(first.checkpoint["channel_values"].get("messages", [])) if first else 0
                if got != want_messages:
                    raise AssertionError(f"{c.name}: long thread has {got} messages, not {want_messages}")
            for _ in range(n[kind]):
                t0 = time.perf_counter_ns()
                await c.saver.aget_tuple(cfg)
                out[c.name][kind].add(time.perf_counter_ns() - t0)
    return out
