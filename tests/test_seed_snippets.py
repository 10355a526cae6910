"""The product pages' Python and LangGraph snippets, executed as users type them.

The no-argument constructors find the test's own services through ``SKIALITH_*`` variables.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages

from skialith import SkialithAgent
from skialith_langgraph import Settings, SkialithCheckpointer

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"

PYTHON_SNIPPET = """\
from skialith import SkialithAgent

async with SkialithAgent(agent_id="my-agent") as agent:
    state = await agent.resume()
    await agent.checkpoint(
        step=state.step_index,
        data={"messages": messages}
    )
    await agent.save_event("step-1", {
        "kind": "thought", "text": "..."
    })
"""

LANGGRAPH_SNIPPET = """\
from skialith.langchain import SkialithCheckpointer

checkpointer = SkialithCheckpointer()
app = graph.compile(checkpointer=checkpointer)

# No other changes needed
result = await app.ainvoke(
    {"messages": [...]},
    config={"configurable": {"thread_id": "agent-1"}}
)
"""


async def run_snippet(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute ``source`` like a notebook cell: top-level ``await`` and ``async with`` allowed."""
    code = compile(source, "<seed snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await result
    return namespace


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SKIALITH_NATS_URL", settings.nats_url)
    monkeypatch.setenv("SKIALITH_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SKIALITH_STREAM", settings.stream)
    monkeypatch.setenv("SKIALITH_SUBJECT_PREFIX", settings.subject_prefix)
    return settings


class MessagesState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def chat_graph() -> StateGraph[Any]:
    def reply(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"seen {len(state['messages'])}")]}

    graph: StateGraph[Any] = StateGraph(MessagesState)
    graph.add_node("reply", reply)
    graph.add_edge(START, "reply")
    return graph


class PlainState(TypedDict):
    messages: list[Any]


def plain_graph() -> StateGraph[Any]:
    graph: StateGraph[Any] = StateGraph(PlainState)
    graph.add_node("echo", lambda state: {"messages": state["messages"]})
    graph.add_edge(START, "echo")
    return graph


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_snippets_are_the_seed_pages_text() -> None:
    if not SEEDS.is_dir():
        pytest.skip(f"no seed pages at {SEEDS}")
    pages = [_squash(p.read_text(encoding="utf-8")) for p in sorted(SEEDS.glob("*.txt"))]
    for snippet in (PYTHON_SNIPPET, LANGGRAPH_SNIPPET):
        assert any(_squash(snippet) in page for page in pages), snippet


async def test_python_snippet_runs_verbatim(env: Settings) -> None:
    messages = [{"role": "user", "content": "hi"}]
    ns = await run_snippet(PYTHON_SNIPPET, {"messages": messages})
    assert ns["state"].step_index == 0  # a fresh agent
    await run_snippet(PYTHON_SNIPPET, {"messages": messages + [{"role": "assistant", "content": "hello"}]})
    async with SkialithAgent(agent_id="my-agent", settings=env) as agent:
        state = await agent.resume()
        events = await agent.history(kind="event")
    assert state.step_index == 2
    assert state.data == {"messages": messages + [{"role": "assistant", "content": "hello"}]}
    assert [(e.step, e.name, e.payload) for e in events] == [
        (1, "step-1", {"kind": "thought", "text": "..."}),
        (2, "step-1", {"kind": "thought", "text": "..."}),
    ]


async def test_langgraph_snippet_runs_with_real_messages(env: Settings) -> None:
    """Verbatim, but for the ``[...]`` placeholder, which no checkpointer can store (next test)."""
    source = LANGGRAPH_SNIPPET.replace("[...]", '[("user", "hi")]')
    assert source.count('("user", "hi")') == 1
    ns = await run_snippet(source, {"graph": chat_graph()})
    assert [type(m) for m in ns["result"]["messages"]] == [HumanMessage, AIMessage]
    assert ns["result"]["messages"][1].content == "seen 1"
    assert isinstance(ns["checkpointer"], SkialithCheckpointer)
    await ns["checkpointer"].aclose()
    async with SkialithCheckpointer(settings=env) as other:  # another instance, as another process
        app = chat_graph().compile(checkpointer=other)
        snapshot = await app.aget_state({"configurable": {"thread_id": "agent-1"}})
        assert [m.content for m in snapshot.values["messages"]] == ["hi", "seen 1"]
        result = await app.ainvoke(
            {"messages": [("user", "again")]}, {"configurable": {"thread_id": "agent-1"}}
        )
    assert [m.content for m in result["messages"]] == ["hi", "seen 1", "again", "seen 3"]


async def test_the_placeholder_fails_like_with_every_checkpointer(env: Settings) -> None:
    """``[...]`` is a list holding ``Ellipsis``, which LangGraph's serializer refuses: with our
    checkpointer (before anything is published) as with LangGraph's own InMemorySaver."""
    ns: dict[str, Any] = {"graph": plain_graph()}
    with pytest.raises(TypeError, match="not msgpack serializable: ellipsis"):
        await run_snippet(LANGGRAPH_SNIPPET, ns)
    await ns["checkpointer"].aclose()
    with pytest.raises(TypeError, match="not msgpack serializable: ellipsis"):
        await (
            plain_graph()
            .compile(checkpointer=InMemorySaver())
            .ainvoke({"messages": [...]}, config={"configurable": {"thread_id": "agent-1"}})
        )
