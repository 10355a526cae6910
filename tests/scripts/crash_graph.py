"""An 11-superstep LangGraph graph that the fault tests kill with SIGKILL at chosen points.

Run as a fork server: ``python crash_graph.py`` imports LangGraph and Skialith once (~2-3 s),
then reads commands on stdin, one per line, and answers one line each on stdout:

* ``run <json job>``  fork a child that runs the graph; answers ``pid <pid>``.
* ``kill <pid>``      SIGKILL that child and reap it; answers ``status <pid> <exit code>`` (-9: killed).
* ``wait <pid>``      reap a child that ends by itself; answers ``status <pid> <exit code>``.

Each child is a new process: it shares nothing with the server but the imported modules (no
thread, loop or connection exists before the fork), opens its own NATS and database connections,
and runs ``ainvoke(job["input"], config, durability=job["durability"])`` on a
``SkialithCheckpointer`` that records, after each acknowledgement, what was acknowledged.

Every child appends lines ``<pid> <event>`` to the job's events file:

* ``exec <step> <node> <task_id>``                when a node starts: the "LLM call" that is paid;
* ``acked-writes <step> <node> <checkpoint_id> <task_id>``  after ``aput_writes`` returned;
* ``acked-put <step> <checkpoint_id>``             after ``aput`` returned;
* ``siblings-acked <step> <node>``                 in a slow parallel node, once the writes of its
  siblings that run in this process are acknowledged (before its own writes and the checkpoint);
* ``done <json of the final state>``, or ``error <exception>`` (the traceback is in
  ``child-<pid>.log`` beside the events file).

When a line starts with ``job["stop_at"]`` the child freezes there (``freeze``: the whole
process stops, the event loop included) so that the test kills it at exactly that point, or goes
on running (``freeze`` false) so that the kill lands wherever the child has got to.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import operator
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from skialith_langgraph import Settings, SkialithCheckpointer
from skialith_langgraph.log import Log

FAN_OUT = ("search_a", "search_b", "search_c")
REVIEWS = ("review_x", "review_y")
TAIL = ("check", "format", "polish", "publish", "archive")
SLOW = {"search_c": ("search_a", "search_b"), "review_y": ("review_x",)}  # node -> siblings it outwaits
LLM_CALLS = {"draft": 0.1, "polish": 0.1, "archive": 0.5}  # seconds: a kill that runs on lands in time


class State(TypedDict):
    topic: str
    log: Annotated[list[str], operator.add]
    score: int


INPUT: State = {"topic": "write-ahead logs", "log": [], "score": 0}


class Recorder:
    """Appends ``<pid> <event>`` lines to a file shared by every process of a test; freezes at a marker."""

    def __init__(self, path: Path, stop_at: str | None = None, freeze: bool = True, track_acks: bool = True):
        self.path = path
        self.stop_at = stop_at
        self.freeze = freeze
        self.track_acks = track_acks
        self.tasks: dict[str, tuple[int, str]] = {}  # task_id -> (step, node), tasks started here
        self.acked: dict[str, asyncio.Event] = {}  # task_id -> set once its writes are acknowledged

    def mark(self, event: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {event}\n".encode())  # one write: lines never interleave
        finally:
            os.close(fd)
        if self.stop_at is not None and event.startswith(self.stop_at):
            self.stop_at = None
            if self.freeze:
                time.sleep(3600)  # the event loop stops with us; the test kills the process now

    def started(self, task_id: str, step: int, node: str) -> None:
        self.tasks[task_id] = (step, node)
        self.acked.setdefault(task_id, asyncio.Event())
        self.mark(f"exec {step} {node} {task_id}")

    def writes_acked(self, checkpoint_id: str, task_id: str) -> None:
        step, node = self.tasks.get(task_id, (-99, "?"))
        self.mark(f"acked-writes {step} {node} {checkpoint_id} {task_id}")
        self.acked.setdefault(task_id, asyncio.Event()).set()

    async def outwait(self, step: int, node: str, siblings: Sequence[str]) -> None:
        """Wait until the writes of the ``siblings`` started in this process are acknowledged."""
        if not self.track_acks:
            return
        await asyncio.sleep(0.01)  # the siblings of this superstep have started by now
        ids = [t for t, (s, n) in self.tasks.items() if s == step and n in siblings]
        await asyncio.gather(*(self.acked[t].wait() for t in ids))
        self.mark(f"siblings-acked {step} {node}")


def _node(name: str, rec: Recorder) -> Callable[[State, RunnableConfig], Awaitable[dict[str, Any]]]:
    async def node(state: State, config: RunnableConfig) -> dict[str, Any]:
        meta = config.get("metadata") or {}
        step = int(meta["langgraph_step"])
        task_id = str(meta["langgraph_checkpoint_ns"]).rpartition(":")[2]
        rec.started(task_id, step, name)
        if name == "search_b":
            await asyncio.sleep(0.05)  # search_a finishes first
        if name in SLOW:
            await rec.outwait(step, name, SLOW[name])
            await asyncio.sleep(0.05)
        await asyncio.sleep(LLM_CALLS.get(name, 0) if rec.track_acks else 0)
        # the output depends on the state the node saw, so a wrong resume shows in the final state
        update: dict[str, Any] = {"log": [f"{name}@{len(state['log'])}"]}
        if name in ("merge", "revise", "publish"):
            update["score"] = state["score"] + len(state["log"])
        return update

    node.__name__ = name
    return node


def build(rec: Recorder) -> StateGraph[State]:
    """plan -> (search_a | search_b | search_c) -> merge -> draft -> (review_x | review_y) -> revise
    -> check -> format -> polish -> publish -> archive: 11 supersteps, two of them parallel."""
    g: StateGraph[State] = StateGraph(State)
    for name in ("plan", *FAN_OUT, "merge", "draft", *REVIEWS, "revise", *TAIL):
        g.add_node(name, _node(name, rec))  # type: ignore[call-overload]
    g.add_edge(START, "plan")
    for name in FAN_OUT:
        g.add_edge("plan", name)
    g.add_edge(list(FAN_OUT), "merge")
    g.add_edge("merge", "draft")
    for name in REVIEWS:
        g.add_edge("draft", name)
    g.add_edge(list(REVIEWS), "revise")
    chain = ["revise", *TAIL]
    for a, b in zip(chain, chain[1:], strict=False):
        g.add_edge(a, b)
    g.add_edge(TAIL[-1], END)
    return g


_SLOW_PUBLISH: contextvars.ContextVar[bool] = contextvars.ContextVar("slow_publish", default=False)
_publish = Log.publish


async def _slow_publish(self: Log, subject: str, body: bytes, msg_id: str, **kwargs: Any) -> int:
    """The network between this process and NATS is slow for the publishes of some puts."""
    if _SLOW_PUBLISH.get():
        await asyncio.sleep(0.5)
    return await _publish(self, subject, body, msg_id, **kwargs)


class RecordingCheckpointer(SkialithCheckpointer):
    """Records each acknowledgement; optionally slows the publish of some steps' checkpoints by 0.5 s
    (as a slow network or a big state would), so that later writes may be acknowledged before them."""

    def __init__(self, rec: Recorder, slow_put_steps: Sequence[int] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rec = rec
        self.slow_put_steps = set(slow_put_steps)

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> RunnableConfig:
        token = _SLOW_PUBLISH.set(metadata.get("step") in self.slow_put_steps)
        try:
            out = await super().aput(config, checkpoint, metadata, new_versions)
        finally:
            _SLOW_PUBLISH.reset(token)
        self.rec.mark(f"acked-put {metadata.get('step')} {checkpoint['id']}")
        return out

    async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        await super().aput_writes(config, writes, task_id, task_path)
        self.rec.writes_acked(config["configurable"]["checkpoint_id"], task_id)


async def _run(job: dict[str, Any]) -> None:
    rec = Recorder(Path(job["events"]), job.get("stop_at"), job.get("freeze", True))
    settings = Settings(**job["settings"])
    async with RecordingCheckpointer(rec, job.get("slow_put_steps", ()), settings=settings) as saver:
        app = build(rec).compile(checkpointer=saver)
        config: RunnableConfig = {"configurable": {"thread_id": job["thread_id"]}}
        result = await app.ainvoke(job["input"], config, durability=job["durability"])
    rec.mark(f"done {json.dumps(result, sort_keys=True)}")


def _child(job: dict[str, Any]) -> None:
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # never read the server's commands
        out = os.open(Path(job["events"]).with_name(f"child-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT)
        os.dup2(out, 1)
        os.dup2(out, 2)
        asyncio.run(_run(job))
        code = 0
    except BaseException as exc:
        traceback.print_exc()
        sys.stderr.flush()
        Recorder(Path(job["events"])).mark(f"error {type(exc).__name__}: {exc}".replace("\n", " "))
    finally:
        os._exit(code)


def serve() -> None:
    # only in the fork server and its children, never in a test process that imports build()
    Log.publish = _slow_publish  # type: ignore[method-assign]

    def reply(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    reply("ready")
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "run":
            job = json.loads(arg)
            pid = os.fork()
            if pid == 0:
                _child(job)
            reply(f"pid {pid}")
        elif command in ("kill", "wait"):
            pid = int(arg)
            if command == "kill":
                os.kill(pid, signal.SIGKILL)  # our own child, not reaped yet: the pid cannot be reused
            _, status = os.waitpid(pid, 0)
            reply(f"status {pid} {os.waitstatus_to_exitcode(status)}")
        else:
            reply(f"error unknown command {command!r}")


if __name__ == "__main__":
    serve()
