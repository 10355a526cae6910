"""Small deterministic LangGraph graphs for tests, and helpers that turn what LangGraph returns
into plain data that can be compared across checkpointers (ids and timestamps left out).

Every builder takes a ``Counter`` that counts node executions, so a test can prove which nodes
ran again after a resume, a retry or a fork. Builders return the uncompiled ``StateGraph``; the
test compiles it with the checkpointer under test and with ``InMemorySaver`` as the reference.
"""

from __future__ import annotations

import operator
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Interrupt, StateSnapshot, interrupt


class LogState(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    answer: str


class SubState(TypedDict, total=False):
    trail: Annotated[list[str], operator.add]
    answer: str


def concat(state: list[str], writes: Sequence[list[str]]) -> list[str]:
    """A batching-invariant ``DeltaChannel`` reducer: append every written list."""
    out = list(state)
    for w in writes:
        out.extend(w)
    return out


class DeltaState(TypedDict, total=False):
    items: Annotated[list[str], DeltaChannel(concat, snapshot_frequency=2)]


def _logger(name: str, calls: Counter[str]) -> Callable[[Any], dict[str, Any]]:
    def node(state: Any) -> dict[str, Any]:
        calls[name] += 1
        return {"log": [f"{name}{calls[name]}"]}

    return node


def linear(calls: Counter[str]) -> StateGraph[Any]:
    """START -> a -> b -> c -> END; each node appends ``<name><n>`` (n = its n-th execution)."""
    g = StateGraph(LogState)
    for name in ("a", "b", "c"):
        g.add_node(name, _logger(name, calls))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g


class Flag:
    """A switch a node reads, so a test can make it fail and then fix it."""

    def __init__(self, on: bool) -> None:
        self.on = on


def parallel_with_failure(calls: Counter[str], fail: Flag) -> StateGraph[Any]:
    """START -> (ok1, ok2, flaky) in one superstep -> join -> END; ``flaky`` raises while ``fail.on``.

    ``flaky`` raises only once its siblings have finished: LangGraph keeps the writes of siblings
    that completed before the failure; one still running when the superstep aborts may lose its
    writes (with ``durability="async"`` its ``put_writes`` is refused by the closed executor).
    """
    g = StateGraph(LogState)
    finished = {name: threading.Event() for name in ("ok1", "ok2")}

    def ok(name: str) -> Callable[[Any], dict[str, Any]]:
        inner = _logger(name, calls)

        def node(state: Any) -> dict[str, Any]:
            try:
                return inner(state)
            finally:
                finished[name].set()

        return node

    def flaky(state: Any) -> dict[str, Any]:
        calls["flaky"] += 1
        if fail.on:
            for event in finished.values():
                event.wait(timeout=10)
            time.sleep(0.2)  # let the siblings' writes be committed (put_writes) first
            raise RuntimeError("flaky node failed on purpose")
        return {"log": [f"flaky{calls['flaky']}"]}

    g.add_node("ok1", ok("ok1"))
    g.add_node("ok2", ok("ok2"))
    g.add_node("flaky", flaky)
    g.add_node("join", _logger("join", calls))
    for name in ("ok1", "ok2", "flaky"):
        g.add_edge(START, name)
        g.add_edge(name, "join")
    g.add_edge("join", END)
    return g


def with_interrupt(calls: Counter[str]) -> StateGraph[Any]:
    """START -> before -> ask (interrupt()) -> after -> END."""
    g = StateGraph(LogState)

    def ask(state: Any) -> dict[str, Any]:
        calls["ask"] += 1
        answer = interrupt({"question": "name?", "seen": list(state.get("log", []))})
        return {"answer": answer, "log": [f"ask:{answer}"]}

    g.add_node("before", _logger("before", calls))
    g.add_node("ask", ask)
    g.add_node("after", _logger("after", calls))
    g.add_edge(START, "before")
    g.add_edge("before", "ask")
    g.add_edge("ask", "after")
    g.add_edge("after", END)
    return g


def with_subgraph(calls: Counter[str]) -> StateGraph[Any]:
    """START -> pre -> call_sub -> post -> END, where ``call_sub`` invokes a compiled subgraph
    s1 -> ask (interrupt()) -> s2, which checkpoints under the namespace ``call_sub:<task_id>``."""
    sub = StateGraph(SubState)

    def step(name: str) -> Callable[[Any], dict[str, Any]]:
        def node(state: Any) -> dict[str, Any]:
            calls[name] += 1
            return {"trail": [name]}

        return node

    def ask(state: Any) -> dict[str, Any]:
        calls["ask"] += 1
        answer = interrupt({"question": "name?", "trail": list(state.get("trail", []))})
        return {"answer": answer, "trail": [f"ask:{answer}"]}

    sub.add_node("s1", step("s1"))
    sub.add_node("ask", ask)
    sub.add_node("s2", step("s2"))
    sub.add_edge(START, "s1")
    sub.add_edge("s1", "ask")
    sub.add_edge("ask", "s2")
    sub.add_edge("s2", END)
    inner = sub.compile()

    def call_sub(state: Any) -> dict[str, Any]:
        calls["call_sub"] += 1
        out = inner.invoke({"trail": []})
        return {"answer": out["answer"], "log": out["trail"]}

    g = StateGraph(LogState)
    g.add_node("pre", _logger("pre", calls))
    g.add_node("call_sub", call_sub)
    g.add_node("post", _logger("post", calls))
    g.add_edge(START, "pre")
    g.add_edge("pre", "call_sub")
    g.add_edge("call_sub", "post")
    g.add_edge("post", END)
    return g


def with_subgraph_node(calls: Counter[str]) -> StateGraph[Any]:
    """START -> pre -> sub -> post -> END, where ``sub`` is a compiled subgraph added as a node:
    s1 -> ask (interrupt()) -> END; ``ask`` answers with the trail it saw, ``post`` logs the answer."""
    sub = StateGraph(SubState)

    def s1(state: Any) -> dict[str, Any]:
        calls["s1"] += 1
        return {"trail": ["s1"]}

    def ask(state: Any) -> dict[str, Any]:
        calls["ask"] += 1
        trail = list(state.get("trail", []))
        answer = interrupt({"question": "name?", "trail": trail})
        return {"answer": f"{answer}:{'+'.join(trail)}", "trail": ["ask"]}

    sub.add_node("s1", s1)
    sub.add_node("ask", ask)
    sub.add_edge(START, "s1")
    sub.add_edge("s1", "ask")
    sub.add_edge("ask", END)

    def post(state: Any) -> dict[str, Any]:
        calls["post"] += 1
        return {"log": [f"post:{state['answer']}"]}

    g = StateGraph(LogState)
    g.add_node("pre", _logger("pre", calls))
    g.add_node("sub", sub.compile())
    g.add_node("post", post)
    g.add_edge(START, "pre")
    g.add_edge("pre", "sub")
    g.add_edge("sub", "post")
    g.add_edge("post", END)
    return g


class ChatState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]


def chat(calls: Counter[str]) -> StateGraph[Any]:
    """START -> bot -> END over ``add_messages``: the bot echoes the last human message (no LLM)."""
    g = StateGraph(ChatState)

    def bot(state: Any) -> dict[str, Any]:
        calls["bot"] += 1
        last = state["messages"][-1]
        return {"messages": [AIMessage(content=f"echo: {last.content}", id=f"ai-{calls['bot']}")]}

    g.add_node("bot", bot)
    g.add_edge(START, "bot")
    g.add_edge("bot", END)
    return g


def delta(calls: Counter[str]) -> StateGraph[Any]:
    """START -> add -> END over a ``DeltaChannel`` (snapshot every 2 updates)."""
    g = StateGraph(DeltaState)

    def add(state: DeltaState) -> DeltaState:
        calls["add"] += 1
        return {"items": [f"n{calls['add']}"]}

    g.add_node("add", add)
    g.add_edge(START, "add")
    g.add_edge("add", END)
    return g


# -- comparable forms -----------------------------------------------------------------------------


def interrupts(items: Sequence[Interrupt]) -> list[Any]:
    return [i.value for i in items]


def namespace(ns: str) -> str:
    """A ``checkpoint_ns`` without its task ids (they derive from checkpoint ids, which differ per run)."""
    return "|".join(part.split(":")[0] for part in ns.split("|")) if ns else ""


def snapshot(s: StateSnapshot) -> dict[str, Any]:
    """What a user reads off a ``StateSnapshot``, without ids and timestamps; subgraph states inline."""
    return {
        "values": s.values,
        "next": s.next,
        "source": s.metadata.get("source") if s.metadata else None,
        "step": s.metadata.get("step") if s.metadata else None,
        "ns": namespace(s.config["configurable"].get("checkpoint_ns", "")),
        "has_parent": s.parent_config is not None,
        "interrupts": interrupts(s.interrupts),
        "tasks": [
            {
                "name": t.name,
                "error": t.error,
                "interrupts": interrupts(t.interrupts),
                "result": t.result,
                "state": snapshot(t.state) if isinstance(t.state, StateSnapshot) else None,
            }
            for t in s.tasks
        ],
    }


def history(snapshots: Sequence[StateSnapshot]) -> list[dict[str, Any]]:
    return [snapshot(s) for s in snapshots]


def chunk(item: Any) -> Any:
    """A stream chunk or an invoke result with ``Interrupt`` objects replaced by their values."""
    if isinstance(item, Interrupt):
        return {"interrupt": item.value}
    if isinstance(item, dict):
        return {k: chunk(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return [chunk(v) for v in item]
    return item


def checkpoint_id(s: StateSnapshot | Mapping[str, Any]) -> str:
    config = s.config if isinstance(s, StateSnapshot) else s
    cid: str = config["configurable"]["checkpoint_id"]
    return cid
