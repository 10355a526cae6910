"""``skialith demo``: kill -9 an agent between two nodes, then resume it without re-running them.

A four-node LangGraph pipeline (research -> draft -> review -> publish, no LLM) runs in a child
process with :class:`~skialith_langgraph.SkialithCheckpointer` and ``durability="sync"``. Inside
``review`` the child checks that the checkpoint written after ``draft`` is acknowledged and
readable, says so on stdout and blocks, as a slow LLM call would; the parent kills it with
SIGKILL. The parent then resumes the same thread with ``ainvoke(None, config)``: ``research``
and ``draft`` do not run again, which an execution log shared by both processes proves.

``skialith demo`` starts NATS and the projector when needed, then calls :func:`run`. The child's
entry point is ``python -m skialith_langgraph.demo --child ...``; it dies with the demo (Linux).

Temporary files live in :func:`workspace`: ``<tmp>/skialith-demo-<uid>/run-*/``, private to the
user and locked by the run that owns it. A demo killed with SIGKILL cannot clean up; the next
demo removes every run directory whose lock is free.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import operator
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from .checkpointer import SkialithCheckpointer
from .errors import ConfigError
from .server import die_with_parent

__all__ = ["NODES", "build_graph", "main", "run", "workspace"]

NODES = ("research", "draft", "review", "publish")
CRASH_IN = "review"  # the child blocks in this node and is killed there
READY = "SKIALITH-DEMO-READY"
CHILD_TIMEOUT = 30.0  # seconds the child may take to reach the crash point
_RUN_PREFIX = "run-"
_LOCK_NAME = "lock"
_UNLOCKED_GRACE = 60.0  # seconds a run directory may exist before its lock file does


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A private directory for one demo run, removed at the end.

    It is ``<tmp>/skialith-demo-<uid>/run-*`` (0700), locked with ``flock`` while the run lives.
    Run directories whose lock is free (their demo was killed) are removed first.

    Raises:
        ConfigError: ``<tmp>/skialith-demo-<uid>`` exists but is not this user's directory.
    """
    base = Path(tempfile.gettempdir()) / f"skialith-demo-{os.getuid()}"
    for attempt in range(3):
        base.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(base)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigError(f"{str(base)!r} is not a directory of this user; remove it and run again")
        base.chmod(0o700)
        _sweep(base)
        try:
            work = Path(tempfile.mkdtemp(prefix=_RUN_PREFIX, dir=base))
            break
        except FileNotFoundError:  # another demo removed the empty base meanwhile
            if attempt == 2:
                raise
    fd = os.open(work / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)
        with contextlib.suppress(OSError):
            base.rmdir()  # only when no other demo is running


def _sweep(base: Path) -> None:
    """Remove the run directories of demos that died without cleaning up."""
    for path in base.glob(f"{_RUN_PREFIX}*"):
        try:
            fd = os.open(path / _LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # being created, or its demo died before locking
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > _UNLOCKED_GRACE:
                    shutil.rmtree(path, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live demo holds it
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


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


async def run(
    nats_url: str,
    database_url: str,
    *,
    out: Callable[[str], None] = print,
    token: str | None = None,
    work: Path | None = None,
) -> int:
    """Run the demo against a running NATS (and, ideally, a projector). Returns the exit code.

    Args:
        nats_url: where NATS with JetStream answers.
        database_url: the read model the projector fills.
        out: where the report goes, line by line.
        token: the NATS token; ``None``: ``SKIALITH_NATS_TOKEN`` or ``./.skialith/nats.token``.
        work: a directory for the execution log; ``None``: a fresh :func:`workspace`.
    """
    if work is None:
        with workspace() as fresh:
            return await run(nats_url, database_url, out=out, token=token, work=fresh)
    async with SkialithCheckpointer(nats_url, database_url, nats_token=token) as probe:
        await probe.asetup()  # a wrong URL or token fails here, with its message, not in the child
    thread_id = f"demo-{uuid.uuid4().hex[:8]}"
    config = _config(thread_id)
    started = time.monotonic()
    executions = work / "executions.log"
    executions.touch()
    out(f"  thread    {thread_id}")
    out("")
    out(f"1. A child process runs {' -> '.join(NODES)} with SkialithCheckpointer.")
    crashed_at = await _run_and_kill_child(nats_url, database_url, thread_id, executions, out, token)
    if crashed_at is None:
        return 1
    before = _counts(executions)
    async with SkialithCheckpointer(nats_url, database_url, nats_token=token) as saver:
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
    nats_url: str,
    database_url: str,
    thread_id: str,
    executions: Path,
    out: Callable[[str], None],
    token: str | None,
) -> str | None:
    """Start the child, wait until it blocks in ``review``, kill it; returns the crash node or None.

    The child gets the token in its environment (not on its command line, which ``ps`` shows to
    every user) and dies with this process, also when this one is killed with SIGKILL.
    """
    env = dict(os.environ)
    if token is not None:
        env["SKIALITH_NATS_TOKEN"] = token
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
        env=env,
        preexec_fn=die_with_parent(),
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
