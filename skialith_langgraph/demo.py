"""``skialith demo``: kill -9 an agent between two nodes, then resume it without re-running them.

A four-node LangGraph pipeline (research -> draft -> review -> publish, no LLM) runs in a child
process with :class:`~skialith_langgraph.SkialithCheckpointer` and ``durability="sync"``. Inside
``review`` the child checks that the checkpoint written after ``draft`` is acknowledged and
readable, says so on stdout and blocks, as a slow LLM call would; the parent kills it with
SIGKILL. The parent then resumes the same thread with ``ainvoke(None, config)``: ``research``
and ``draft`` do not run again, which an execution log shared by both processes proves.

``skialith demo`` starts NATS and the projector when needed, then calls :func:`run`. The child's
entry point is ``python -m skialith_langgraph.demo --child ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from .checkpointer import SkialithCheckpointer

__all__ = ["NODES", "build_graph", "main", "run"]

NODES = ("research", "draft", "review", "publish")
CRASH_IN = "review"  # the child blocks in this node and is killed there
READY = "SKIALITH-DEMO-READY"
CHILD_TIMEOUT = 30.0  # seconds the child may take to reach the crash point


class PipelineState(TypedDict):
    topic: str
    steps: Annotated[list[str], operator.add]


class _Step(Protocol):
    def __call__(self, state: PipelineState) -> dict[str, Any]: ...


def build_graph(
    executions: Path, *, crash_in: str | None = None, at_crash: Callable[[], None] | None = None
) -> StateGraph[PipelineState]:
    """The demo pipeline. Each node appends its name to ``executions`` when it starts.

    Args:
        executions: a file shared by every process that runs the graph.
        crash_in: the node that calls ``at_crash`` after recording its start.
        at_crash: called inside ``crash_in``; in the child it blocks until the process is killed.
    """

    def make(name: str) -> _Step:
        def node(state: PipelineState) -> dict[str, Any]:
            with open(executions, "a", encoding="utf-8") as f:
                f.write(f"{name} {os.getpid()}\n")
            if name == crash_in and at_crash is not None:
                at_crash()
            return {"steps": [name]}

        node.__name__ = name
        return node

    graph = StateGraph(PipelineState)
    for name in NODES:
        graph.add_node(name, make(name))
    graph.add_edge(START, NODES[0])
    for a, b in zip(NODES, NODES[1:], strict=False):
        graph.add_edge(a, b)
    graph.add_edge(NODES[-1], END)
    return graph


def _config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def _child(nats_url: str, database_url: str, thread_id: str, executions: Path) -> int:
    """Run the pipeline until ``review``, report the acknowledged checkpoint, block until killed."""
    config = _config(thread_id)
    with SkialithCheckpointer(nats_url, database_url) as saver:

        def at_crash() -> None:
            # durability="sync": LangGraph waited for the PubAck of the checkpoint after 'draft'
            # before starting this step. Read it back to show that it is stored.
            saved = saver.get_tuple(config)
            steps = saved.checkpoint["channel_values"].get("steps") if saved is not None else None
            if saved is None or list(steps or []) != list(NODES[:2]):
                print(f"unexpected checkpoint before {CRASH_IN!r}: steps={steps!r}", file=sys.stderr)
                os._exit(3)
            print(f"{READY} {saved.checkpoint['id']}", flush=True)
            threading.Event().wait()  # a long LLM call, ended by SIGKILL

        app = build_graph(executions, crash_in=CRASH_IN, at_crash=at_crash).compile(checkpointer=saver)
        app.invoke({"topic": "write-ahead logs", "steps": []}, config, durability="sync")
    print(f"the child was expected to block in {CRASH_IN!r} and be killed", file=sys.stderr)
    return 3


async def run(nats_url: str, database_url: str, *, out: Callable[[str], None] = print) -> int:
    """Run the demo against a running NATS (and, ideally, a projector). Returns the exit code.

    Args:
        nats_url: where NATS with JetStream answers.
        database_url: the read model the projector fills.
        out: where the report goes, line by line.
    """
    thread_id = f"demo-{uuid.uuid4().hex[:8]}"
    config = _config(thread_id)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="skialith-demo-") as work:
        executions = Path(work) / "executions.log"
        executions.touch()
        out(f"  thread    {thread_id}")
        out("")
        out(f"1. A child process runs {' -> '.join(NODES)} with SkialithCheckpointer.")
        crashed_at = await _run_and_kill_child(nats_url, database_url, thread_id, executions, out)
        if crashed_at is None:
            return 1
        before = _counts(executions)
        async with SkialithCheckpointer(nats_url, database_url) as saver:
            app = build_graph(executions).compile(checkpointer=saver)
            state = await app.aget_state(config)
            out(f"   steps that ran before the crash: {state.values.get('steps')}")
            out(f"   last acknowledged checkpoint:    {state.config['configurable'].get('checkpoint_id')}")
            out(f"   next node to run:                {list(state.next)}")
            out("")
            out("3. Resume the same thread in this process: await app.ainvoke(None, config)")
            result = await app.ainvoke(None, config)
            history = [s async for s in app.aget_state_history(config)]
        counts = _counts(executions)
        here = counts[CRASH_IN] - before[CRASH_IN]
        out(f"   resumed state: steps={result['steps']}")
        out(f"   history: {len(history)} checkpoints")
        out(
            "   node executions: "
            + ", ".join(f"{name} {counts[name]}x" for name in NODES)
            + f" ({CRASH_IN}: {before[CRASH_IN]}x in the killed child, {here}x here)"
        )
    out("")
    ok = (
        list(result["steps"]) == list(NODES)
        and all(counts[name] == 1 for name in NODES[:2])
        and counts[NODES[-1]] == 1
        and crashed_at == CRASH_IN
    )
    elapsed = time.monotonic() - started
    if ok:
        out(
            f"OK: {' and '.join(NODES[:2])} were not run again after kill -9; "
            f"the thread finished from the last acknowledged checkpoint ({elapsed:.1f} s)."
        )
        return 0
    out(f"FAILED: unexpected result {result!r} or executions {dict(counts)!r}")
    return 1


async def _run_and_kill_child(
    nats_url: str, database_url: str, thread_id: str, executions: Path, out: Callable[[str], None]
) -> str | None:
    """Start the child, wait until it blocks in ``review``, kill it; returns the crash node or None."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "skialith_langgraph.demo",
        "--child",
        "--nats-url",
        nats_url,
        "--database-url",
        database_url,
        "--thread-id",
        thread_id,
        "--executions",
        str(executions),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        try:
            async with asyncio.timeout(CHILD_TIMEOUT):
                while True:
                    line = (await child.stdout.readline()).decode("utf-8", "replace")
                    if not line:
                        code = await child.wait()
                        out(f"FAILED: the child exited with code {code} before reaching {CRASH_IN!r}")
                        return None
                    if line.startswith(READY):
                        break
        except TimeoutError:
            out(f"FAILED: the child did not reach {CRASH_IN!r} within {CHILD_TIMEOUT} s")
            return None
        ran = [line.split()[0] for line in executions.read_text(encoding="utf-8").splitlines()]
        out(f"   pid {child.pid} started: {', '.join(ran)}")
        out(f"   the checkpoint after {NODES[1]!r} is acknowledged, and the child is inside {CRASH_IN!r},")
        out("   waiting on a (pretend) LLM call.")
        out("")
        out(f"2. kill -9 {child.pid}")
        child.send_signal(signal.SIGKILL)
        code = await child.wait()
        out(f"   the child is gone (exit code {code}: killed by SIGKILL)")
        return ran[-1] if ran else None
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


def _counts(executions: Path) -> Counter[str]:
    return Counter(line.split()[0] for line in executions.read_text(encoding="utf-8").splitlines() if line)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child process (``python -m skialith_langgraph.demo --child ...``)."""
    parser = argparse.ArgumentParser(
        prog="python -m skialith_langgraph.demo",
        description="The child process of 'skialith demo'. Run 'skialith demo' instead.",
    )
    parser.add_argument("--child", action="store_true", required=True, help="run as the demo's child")
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--thread-id", required=True)
    parser.add_argument("--executions", required=True, type=Path)
    args = parser.parse_args(argv)
    return _child(args.nats_url, args.database_url, args.thread_id, args.executions)


if __name__ == "__main__":
    raise SystemExit(main())
