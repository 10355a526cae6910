"""A two-node graph for the Agent Server test: ``count`` is added to, ``log`` is appended to."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    count: int
    log: Annotated[list[str], operator.add]


def add(state: State) -> dict[str, object]:
    return {"count": state.get("count", 0) + 1, "log": ["add"]}


def double(state: State) -> dict[str, object]:
    return {"count": state["count"] * 2, "log": ["double"]}


builder = StateGraph(State)
builder.add_node("add", add)
builder.add_node("double", double)
builder.add_edge(START, "add")
builder.add_edge("add", "double")
builder.add_edge("double", END)
graph = builder.compile()
