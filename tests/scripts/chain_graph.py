"""A small chain graph run in a separate process by the tests: ``python chain_graph.py THREAD_ID``.

Settings come from SKIALITH_* environment variables, as a user's process would get them.
"""

from __future__ import annotations

import operator
import sys
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from skialith_langgraph import SkialithCheckpointer


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


def build() -> StateGraph:
    g = StateGraph(State)
    names = ["plan", "act", "check"]
    for name in names:
        g.add_node(name, lambda s, name=name: {"steps": [name]})
    g.add_edge(START, names[0])
    for a, b in zip(names, names[1:], strict=False):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


if __name__ == "__main__":
    thread_id = sys.argv[1]
    with SkialithCheckpointer() as saver:
        app = build().compile(checkpointer=saver)
        result = app.invoke({"steps": ["start"]}, {"configurable": {"thread_id": thread_id}})
        print(result["steps"])
