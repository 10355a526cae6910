"""Faults caused on purpose (DESIGN.md 1.2, 1.4, 1.5): kill -9 of the agent and of the projector,
a database outage behind a TCP proxy, and a kill -9 and restart of the NATS server.

Every test causes the fault for real (SIGKILL, cut connections) against the real services and
then checks what a user would: what was acknowledged is there, nothing ran twice, the read model
equals the log row by row.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, CheckpointTuple, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from scripts.crash_graph import INPUT, Recorder, build
from sqlalchemy.engine import make_url
from support import dump, dump_of_log, wait_for_watermark
from tcp_proxy import CutMode, TcpProxy

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.errors import LogError, PublishError
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import PROJECTION, ReadModel
from skialith_langgraph.readmodel.apply import lock_watermark, watermark
from skialith_langgraph.server import NatsServer

pytestmark = pytest.mark.faults

SCRIPTS = Path(__file__).parent / "scripts"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
REPLY_TIMEOUT = 30.0  # seconds the fork server may take to answer (its start-up imports LangGraph)
CHILD_TIMEOUT = 30.0  # seconds a child may take to reach its kill point or finish


# -- agent crash: a fork server that starts graph processes cheaply ------------------------------


class ForkServer:
    """``crash_graph.py`` in serve mode: each job runs in a fresh child process it forks."""

    def __init__(self, cwd: Path) -> None:
        self.stderr = cwd / "fork-server.err"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPTS / "crash_graph.py")],
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # its own process group: the teardown ends it and its children
            )
        assert self._read() == "ready"

    def _read(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            err = self.stderr.read_text(errors="replace")
            pytest.fail(f"the fork server did not answer within {REPLY_TIMEOUT} s; stderr:\n{err}")
        return line

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, job: dict[str, Any]) -> int:
        kind, pid = self._ask(f"run {json.dumps(job)}").split()
        assert kind == "pid"
        return int(pid)

    def kill(self, pid: int) -> int:
        """SIGKILL a child (the server reaps it, so its pid cannot be reused meanwhile); its exit code."""
        return int(self._ask(f"kill {pid}").split()[2])

    def reap(self, pid: int) -> int:
        """The exit code of a child that has ended (or is about to)."""
        return int(self._ask(f"wait {pid}").split()[2])

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path_factory.mktemp("fork-server"))
    try:
        yield server
    finally:
        server.close()


@dataclass(frozen=True, slots=True)
class Event:
    pid: int
    kind: str
    args: tuple[str, ...]
    text: str  # the event without the pid

    @property
    def task(self) -> tuple[int, str]:
        """(step, node) of an ``exec`` or ``acked-writes`` event."""
        return int(self.args[0]), self.args[1]


def _events(path: Path, pid: int | None = None) -> list[Event]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid_text, _, text = line.partition(" ")
        kind, _, rest = text.partition(" ")
        if pid is None or int(pid_text) == pid:
            out.append(
                Event(int(pid_text), kind, tuple(rest.split(" ")) if kind != "done" else (rest,), text)
            )
    return out


def _child_log(events: Path, pid: int) -> str:
    log = events.with_name(f"child-{pid}.log")
    return log.read_text(errors="replace") if log.exists() else "(no log)"


async def _wait_for_event(events: Path, pid: int, prefix: str) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while True:
        for e in _events(events, pid):
            if e.text.startswith(prefix):
                return
            if e.kind in ("done", "error"):
                pytest.fail(
                    f"child {pid} ended ({e.text[:200]}) before {prefix!r}:\n{_child_log(events, pid)}"
                )
        if time.monotonic() > deadline:
            pytest.fail(
                f"child {pid} did not reach {prefix!r} in {CHILD_TIMEOUT} s:\n{_child_log(events, pid)}"
            )
        await asyncio.sleep(0.01)


async def _stored(settings: Settings, thread_id: str) -> list[CheckpointTuple]:
    """Every checkpoint of the thread, newest first, as a new process sees them."""
    async with SkialithCheckpointer(settings=settings) as reader:
        return [t async for t in reader.alist({"configurable": {"thread_id": thread_id}})]


def _cid(t: CheckpointTuple) -> str:
    return str(t.config["configurable"]["checkpoint_id"])


@dataclass(frozen=True, slots=True)
class Stop:
    """Kill the child at the first event starting with ``marker``."""

    marker: str
    freeze: bool = True  # the child stops at the marker; else it runs on until the kill lands
    pending: int | None = None  # tasks with acknowledged writes on the latest checkpoint, then


# (durability, steps whose checkpoint put is held back 0.5 s, kill points): one process per kill
# point, each resuming the thread the previous one left, then one that runs to the end.
Durability = Literal["sync", "async"]
CHAINS: dict[str, tuple[Durability, tuple[int, ...], tuple[Stop, ...]]] = {
    "sync": (
        "sync",
        (),
        (
            Stop("exec 1 plan", pending=0),  # in the first node: only the input checkpoints exist
            Stop("acked-writes 2 search_a", pending=1),  # a parallel branch's writes, no checkpoint yet
            Stop("siblings-acked 2 search_c", pending=2),  # two branches acknowledged, the third runs
            Stop("acked-put 3", pending=0),  # right after a checkpoint, before the next node
            Stop("siblings-acked 5 review_y", pending=1),
            Stop("exec 6 revise", freeze=False),  # wherever the child has got to
            Stop("exec 9 polish", pending=0),
            Stop("acked-put 10", freeze=False),
        ),
    ),
    "async": (
        "async",
        (),
        (
            Stop("acked-put -1"),  # the input checkpoint
            Stop("acked-writes 1 plan"),  # the writes may be acknowledged before their checkpoint
            Stop("exec 3 merge", freeze=False),
            Stop("siblings-acked 5 review_y"),
            Stop("exec 8 format"),
            Stop("acked-writes 10 publish", freeze=False),
        ),
    ),
    # The publish of the step-4 checkpoint is slow; review_x (step 5) hangs its writes on it, and
    # review_y waits for them, so nothing else runs meanwhile. This runs in a resumed process: the
    # process that starts a thread orders its publishes anyway (its own-writes head serializes them).
    "async-slow-put": (
        "async",
        (4,),
        (Stop("acked-put 1"), Stop("acked-writes 5 review_x")),
    ),
    # The publish of the step-2 checkpoint is slow, so LangGraph has not even called aput for the
    # step-3 checkpoint (it waits for the previous put) when draft's writes on it are published.
    "async-slow-previous-put": (
        "async",
        (2,),
        (Stop("acked-put 1"), Stop("acked-writes 4 draft")),
    ),
}


async def _reference(tmp_path: Path, durability: Durability) -> tuple[dict[str, Any], int]:
    """The final state and number of checkpoints of an uncrashed run (InMemorySaver, this process)."""
    app = build(Recorder(tmp_path / "reference-events", track_acks=False)).compile(
        checkpointer=InMemorySaver()
    )
    config: RunnableConfig = {"configurable": {"thread_id": "reference"}}
    final = await app.ainvoke(copy.deepcopy(INPUT), config, durability=durability)
    return final, len([s async for s in app.aget_state_history(config)])


@SQLITE_ONLY
@pytest.mark.parametrize(
    "chain",
    [
        "sync",
        "async",
        "async-slow-put",
        "async-slow-previous-put",
    ],
)
async def test_agent_killed_at_any_point_resumes_without_rerunning_acknowledged_tasks(
    fork_server: ForkServer, settings: Settings, tmp_path: Path, chain: str
) -> None:
    durability, slow_put_steps, stops = CHAINS[chain]
    reference, reference_checkpoints = await _reference(tmp_path, durability)
    events = tmp_path / "events"
    thread_id = f"crash-{chain}"
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    projector = Projector(settings, batch_size=7, fetch_timeout=0.1)  # reads hit the database or the log
    await projector.start()
    try:
        acked_puts: set[str] = set()
        protected: dict[tuple[int, str], str] = {}  # (step, node) -> why it must never run again
        stored: list[CheckpointTuple] = []
        previous: Stop | None = None
        for stop in [*stops, None]:
            job = {
                "settings": dataclasses.asdict(settings),
                "thread_id": thread_id,
                "durability": durability,
                "slow_put_steps": slow_put_steps,
                "events": str(events),
                "input": None if stored else INPUT,  # resume with invoke(None) once anything is stored
                "stop_at": stop.marker if stop else None,
                "freeze": stop.freeze if stop else True,
            }
            pid = fork_server.run(job)
            await _wait_for_event(events, pid, stop.marker if stop else "done")
            if stop is None:
                assert fork_server.reap(pid) == 0, _child_log(events, pid)
            else:
                assert fork_server.kill(pid) == -signal.SIGKILL, f"{stop} was not a kill"
            mine = _events(events, pid)

            # no task whose writes were acknowledged (in a stored checkpoint, or pending on the
            # latest one, or acknowledged at all) ran again in this process
            reran = {e.task: protected[e.task] for e in mine if e.kind == "exec" and e.task in protected}
            assert not reran, f"the process resuming after the kill at {previous} re-ran tasks: {reran}"
            if stop is None:
                break
            previous = stop

            # the state at the kill, as a new process reads it
            stored = await _stored(settings, thread_id)
            by_id = {_cid(t): t for t in stored}
            acked_puts |= {e.args[1] for e in mine if e.kind == "acked-put"}
            assert acked_puts <= by_id.keys(), f"{stop}: acknowledged checkpoints are missing"
            assert stored, f"{stop}: nothing stored"
            latest = stored[0]
            step = int(latest.metadata["step"])
            for e in _events(events):
                if e.kind == "exec" and e.task[0] <= step:
                    protected.setdefault(e.task, f"the step-{step} checkpoint {_cid(latest)} is stored")
            pending = {task for task, _, _ in latest.pending_writes or []}
            for e in _events(events):
                if e.kind == "exec" and e.args[2] in pending:
                    protected.setdefault(e.task, "its writes are pending on the latest checkpoint")
            for e in mine:
                if e.kind != "acked-writes" or e.args[1] == "?":  # "?": LangGraph's own __start__ task
                    continue
                checkpoint_id, task_id = e.args[2], e.args[3]
                if checkpoint_id in by_id:
                    held = {task for task, _, _ in by_id[checkpoint_id].pending_writes or []}
                    assert task_id in held, f"{stop}: acknowledged writes of {e.task} are missing"
                protected.setdefault(e.task, f"its writes on {checkpoint_id} were acknowledged")
            if stop.pending is not None:
                names = sorted(
                    e.task[1] for e in _events(events) if e.kind == "exec" and e.args[2] in pending
                )
                assert len(set(names)) == stop.pending, f"{stop}: pending writes of {names}"

        final = json.loads(mine[-1].args[0])
        assert final == reference
        async with SkialithCheckpointer(settings=settings) as reader:
            app = build(Recorder(tmp_path / "unused")).compile(checkpointer=reader)
            state = await app.aget_state(config)
            history = [s async for s in app.aget_state_history(config)]
        assert state.values == reference and not state.next
        assert len(history) == reference_checkpoints  # no checkpoint duplicated or lost by a resume
        ids = {s.config["configurable"]["checkpoint_id"] for s in history}
        assert all(
            s.parent_config is None or s.parent_config["configurable"]["checkpoint_id"] in ids
            for s in history
        )
        executed = {e.task for e in _events(events) if e.kind == "exec"}
        assert len(executed) == 14  # every node of the graph ran, each in its own step
    finally:
        await projector.stop()


# -- projector crash: kill -9 the `skialith projector` process mid-batch, again and again ---------

CLI = [sys.executable, "-m", "skialith_langgraph.cli"]
START_TIMEOUT = 30.0  # seconds a projector process may take to start and make progress


def _checkpoint(n: int) -> Checkpoint:
    cp = empty_checkpoint()
    cp["channel_values"] = {"n": n, "text": f"value {n}"}
    cp["channel_versions"] = {"n": str(n), "text": str(n)}
    return cp


async def _write_until(stop: asyncio.Event, saver: SkialithCheckpointer, thread: str, ops: bool) -> int:
    """Checkpoints and writes on one thread until ``stop``, with deletes and prunes if ``ops``; the
    number of rounds. (On a thread without them, any message the projector loses shows in the end.)"""
    rng = random.Random(thread)
    config: RunnableConfig = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    n = 0
    while not stop.is_set():
        config = await saver.aput(
            config, _checkpoint(n), {"step": n, "run_id": f"{thread}-r{n % 3}"}, {"n": str(n), "text": str(n)}
        )
        await saver.aput_writes(config, [("n", n), ("text", "w")], f"task-{n}")
        roll = rng.random() if ops else 1.0
        if roll < 0.04:
            await saver.adelete_thread(thread)
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        elif roll < 0.07:
            await saver.aprune([thread], strategy="keep_latest")
        elif roll < 0.09:
            await saver.adelete_for_runs([f"{thread}-r1"])
        n += 1
        await asyncio.sleep(0.002)
    return n


class ProjectorProcess:
    """``skialith projector`` as a user starts it: flags, no SKIALITH_* variables."""

    def __init__(self, settings: Settings, cwd: Path, name: str, batch_size: int) -> None:
        self.err = cwd / f"{name}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")}
        args = [
            *CLI,
            "projector",
            "--nats-url",
            settings.nats_url,
            "--database-url",
            settings.database_url,
            "--stream",
            settings.stream,
            "--subject-prefix",
            settings.subject_prefix,
            "--batch-size",
            str(batch_size),
        ]
        with open(cwd / f"{name}.out", "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def describe(self) -> str:
        return f"exit code {self.proc.poll()}; stderr:\n{self.err.read_text(errors='replace')[-3000:]}"

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        assert self.proc.wait(10) == -signal.SIGKILL, self.describe()

    def terminate(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


async def _watermark(model: ReadModel) -> int:
    async with model.connect() as conn:
        return await watermark(conn, PROJECTION)


async def _until(check: Callable[[], Awaitable[bool]], what: str, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {START_TIMEOUT} s; {describe()}")
        await asyncio.sleep(0.02)


async def _started(proc: ProjectorProcess, model: ReadModel) -> None:
    """Wait until the projector process applies something."""
    before = await _watermark(model)

    async def progressed() -> bool:
        assert proc.proc.poll() is None, proc.describe()
        return await _watermark(model) > before

    await _until(progressed, "the projector did not make progress", proc.describe)


async def _kill_with_a_batch_in_hand(proc: ProjectorProcess, model: ReadModel, log: Log) -> None:
    """Hold the lock its batch transaction needs (SQLite's write lock, MySQL's watermark row lock),
    wait until it has fetched a batch beyond the committed watermark, and kill it there."""
    durable = Projector(log.settings).durable
    async with model.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            committed = await lock_watermark(conn, PROJECTION)

            async def in_hand() -> bool:
                info = await log.js.consumer_info(log.settings.stream, durable)
                return bool(info.num_ack_pending) and (info.delivered.stream_seq or 0) > committed

            await _until(in_hand, "the projector did not fetch a batch", proc.describe)
            proc.kill()
        finally:
            await transaction.rollback()


async def test_projector_killed_mid_batch_loses_and_duplicates_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    model = ReadModel.from_url(settings.database_url)
    log = await Log.open(settings)
    procs: list[ProjectorProcess] = []
    kills: list[str] = []
    try:
        await log.ensure_stream()
        await model.setup()
        stop = asyncio.Event()
        async with SkialithCheckpointer(settings=settings, read_wait=0.05) as saver:
            writers = [asyncio.create_task(_write_until(stop, saver, f"w{i}", ops=i == 2)) for i in range(3)]
            try:
                for round_ in range(4):
                    procs.append(
                        proc := ProjectorProcess(settings, tmp_path, f"projector-{round_}", batch_size=5)
                    )
                    await _started(proc, model)
                    if round_ % 2 == 0:
                        await _kill_with_a_batch_in_hand(proc, model, log)
                        kills.append("fetched, not committed")
                    else:
                        await asyncio.sleep(random.uniform(0.05, 0.3))
                        proc.kill()
                        kills.append("anywhere")
            finally:
                stop.set()
                rounds = await asyncio.gather(*writers)
        assert sum(rounds) > 50, rounds
        last = await log.stream_last_seq()
        procs.append(proc := ProjectorProcess(settings, tmp_path, "projector-final", batch_size=500))
        await wait_for_watermark(model, last, timeout=60)
        assert proc.terminate() == 0, proc.describe()
        async with model.connect() as conn:
            projected = await dump(conn)
        assert projected["skialith_checkpoints"], "nothing was projected"
        expected = await dump_of_log(log)
        diff = {
            table: (len(set(rows) - set(projected[table])), len(set(projected[table]) - set(rows)))
            for table, rows in expected.items()
        }
        assert projected == expected, f"(missing, extra) rows per table {diff} after kills {kills}"
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        await log.close()
        await model.close()


# -- database outage: the read model's connections cut by a TCP proxy -----------------------------

CONNECT_TIMEOUT = 2.0  # seconds: the database timeout that writes must never wait for
WRITE_BOUND = 1.0  # seconds: generous for one write (a PubAck takes ~1 ms); not a benchmark
OUTAGE = 4.0  # seconds the database is cut off
READ_BOUND = CONNECT_TIMEOUT + 1.0  # seconds a read may take while the database does not answer


@dataclass
class Writes:
    """What a steady writer did: (start, seconds) per write, and its last acknowledged step per thread."""

    latencies: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    last: dict[str, int] = dataclasses.field(default_factory=dict)


async def _write_steadily(
    stop: asyncio.Event, saver: SkialithCheckpointer, threads: list[str], out: Writes
) -> None:
    configs: dict[str, RunnableConfig] = {
        t: {"configurable": {"thread_id": t, "checkpoint_ns": ""}} for t in threads
    }
    n = 0
    while not stop.is_set():
        for t in threads:
            started = time.monotonic()
            configs[t] = await saver.aput(
                configs[t], _checkpoint(n), {"step": n}, {"n": str(n), "text": str(n)}
            )
            out.latencies.append((started, time.monotonic() - started))
            started = time.monotonic()
            await saver.aput_writes(configs[t], [("n", n)], f"task-{n}")
            out.latencies.append((started, time.monotonic() - started))
            out.last[t] = n
        n += 1
        await asyncio.sleep(0.01)


async def _read_your_writes(reader: SkialithCheckpointer, writes: Writes, proxy: TcpProxy) -> None:
    """Each thread's latest checkpoint, read by another saver, is at least the last acknowledged one,
    and each read takes less than READ_BOUND seconds."""
    for thread, n in list(writes.last.items()):
        config: RunnableConfig = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        read = asyncio.ensure_future(reader.aget_tuple(config))
        if not (await asyncio.wait({read}, timeout=READ_BOUND))[0]:
            # not cancelled: a cancelled query can hang in its clean-up (a rollback on the same
            # stuck socket); let the database answer again, then fail
            mode = proxy.mode
            proxy.restore()
            await asyncio.wait({read}, timeout=30)
            pytest.fail(f"a read of {thread!r} during a {mode!r} cut hung for more than {READ_BOUND} s")
        tup = read.result()
        assert tup is not None, thread
        seen = tup.checkpoint["channel_values"]["n"]
        assert seen >= n, f"stale read of {thread}: step {seen}, but step {n} was acknowledged"
        assert tup.pending_writes in ([], [(f"task-{seen}", "n", seen)]), tup.pending_writes


@pytest.mark.mysql
@pytest.mark.parametrize(
    "mode",
    [
        "reset",
        "blackhole",
    ],
)
async def test_database_outage_leaves_writes_alone_and_the_projector_catches_up(
    nats_url: str, mysql_url: str, unique: str, mode: CutMode
) -> None:
    target = make_url(mysql_url)
    direct = ReadModel.from_url(mysql_url)  # the test's own view of the database, not through the proxy
    async with TcpProxy(target.host or "127.0.0.1", target.port or 3306) as proxy:
        settings = Settings(
            nats_url=nats_url,
            database_url=target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
            stream=f"SK{unique}".upper(),
            subject_prefix=f"sk{unique}",
            connect_timeout=CONNECT_TIMEOUT,
        )
        projector = Projector(settings, batch_size=20, fetch_timeout=0.1)
        await projector.start()
        log = await Log.open(settings)
        writer = SkialithCheckpointer(settings=settings)
        reader = SkialithCheckpointer(settings=settings)  # another saver: no own writes to lean on
        stop, writes = asyncio.Event(), Writes()
        task = asyncio.create_task(_write_steadily(stop, writer, ["a", "b", "c"], writes))
        try:
            await asyncio.sleep(1.0)
            await wait_for_watermark(direct, await log.stream_last_seq())
            await _read_your_writes(reader, writes, proxy)
            assert reader.read_stats.database > 0, reader.read_stats  # healthy: reads hit the database
            from_log, failures = reader.read_stats.log, projector.stats.failures

            proxy.cut(mode)
            cut_at = time.monotonic()
            await asyncio.sleep(0.3)
            frozen = await _watermark(direct)
            while time.monotonic() - cut_at < OUTAGE:
                await _read_your_writes(reader, writes, proxy)  # each read bounded by READ_BOUND
                await asyncio.sleep(0.1)
            assert await _watermark(direct) == frozen, "the projector was not cut off"
            proxy.restore()
            restored_at = time.monotonic()
            await asyncio.sleep(0.5)
            stop.set()
            await task

            during = [seconds for start, seconds in writes.latencies if cut_at <= start < restored_at]
            assert len(during) > 50, len(during)  # writes went on through the outage...
            assert max(during) < WRITE_BOUND, max(during)  # ...at PubAck speed, never a database timeout
            assert reader.read_stats.log > from_log, reader.read_stats  # reads were served from the log
            if mode == "reset":
                assert projector.stats.failures > failures, "the projector never noticed the outage"
            await wait_for_watermark(direct, await log.stream_last_seq(), timeout=30)  # by itself
            assert time.monotonic() - restored_at < 15
            async with direct.connect() as conn:
                projected = await dump(conn)
            assert projected == await dump_of_log(log)
            await _read_your_writes(reader, writes, proxy)
        finally:
            proxy.restore()
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await writer.aclose()
            await reader.aclose()
            await log.close()
            await projector.stop()
            await direct.close()


# -- NATS: kill -9 and restart this test's own server (never the session's shared one) ------------

PUBLISH_TIMEOUT = 1.0  # seconds
NATS_BOUND = PUBLISH_TIMEOUT + 1.5  # seconds a failing call may take: the timeout, plus slack for CI


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)  # default sync: a PubAck means page cache
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _own_settings(server: NatsServer, sqlite_url: str, unique: str) -> Settings:
    return Settings(
        nats_url=server.url,
        database_url=sqlite_url,
        stream=f"SK{unique}".upper(),
        subject_prefix=f"sk{unique}",
        publish_timeout=PUBLISH_TIMEOUT,
        connect_timeout=2.0,
    )


async def _fails_fast(call: Callable[[], Awaitable[Any]], error: type[Exception], url: str) -> Exception:
    """Run ``call``; it must raise ``error`` naming ``url`` within NATS_BOUND seconds."""
    started = time.monotonic()
    with pytest.raises(error) as info:
        await asyncio.wait_for(call(), NATS_BOUND + 5)  # the outer bound only turns a hang into a failure
    elapsed = time.monotonic() - started
    assert elapsed < NATS_BOUND, f"{error.__name__} after {elapsed:.1f} s"
    assert url in str(info.value), str(info.value)
    return info.value


async def _once_reconnected(call: Callable[[], Awaitable[Any]], error: type[Exception]) -> Any:
    """Retry ``call`` while it raises ``error``: the client reconnects by itself, within 15 s."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return await call()
        except error:
            assert time.monotonic() < deadline, "the client did not reconnect within 15 s of the restart"


async def test_nats_kill_9_and_restart_keep_every_acknowledged_write(
    own_nats: NatsServer, sqlite_url: str, unique: str
) -> None:
    settings = _own_settings(own_nats, sqlite_url, unique)
    projector = Projector(settings, batch_size=10, fetch_timeout=0.1)
    await projector.start()
    saver = SkialithCheckpointer(settings=settings)
    acked: list[tuple[RunnableConfig, int]] = []
    try:
        for n in range(30):
            thread = f"t{n % 3}"
            last = acked[-3][0] if n >= 3 else {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            config = await saver.aput(last, _checkpoint(n), {"step": n}, {"n": str(n), "text": str(n)})
            await saver.aput_writes(config, [("n", n)], f"task-{n}")
            acked.append((config, n))
        await asyncio.to_thread(saver.get_tuple, acked[-1][0])  # the sync face has its own connection

        own_nats.kill()  # SIGKILL: no flush, no goodbye
        down: RunnableConfig = {"configurable": {"thread_id": "down", "checkpoint_ns": ""}}
        for call in (
            lambda: saver.aput(down, _checkpoint(-1), {"step": -1}, {"n": "-1"}),
            lambda: saver.aput_writes(acked[-1][0], [("n", -1)], "task-down"),
            lambda: asyncio.to_thread(saver.put, down, _checkpoint(-2), {"step": -2}, {"n": "-2"}),
        ):
            error = await _fails_fast(call, PublishError, own_nats.url)  # not a hang, not a success
            assert "may or may not be stored" in str(error)

        own_nats.restart()  # same port, same store
        # the saver created before the kill reconnects by itself and writes again, on both faces
        last = acked[-1][0]
        config = await _once_reconnected(
            lambda: saver.aput(last, _checkpoint(30), {"step": 30}, {"n": "30"}), PublishError
        )
        acked.append((config, 30))
        config = await _once_reconnected(
            lambda: asyncio.to_thread(saver.put, config, _checkpoint(31), {"step": 31}, {"n": "31"}),
            PublishError,
        )
        acked.append((config, 31))

        # every acknowledged write is there, for a saver that never saw them
        async with SkialithCheckpointer(settings=settings) as reader:
            for config, n in acked:
                tup = await reader.aget_tuple(config)
                assert tup is not None, f"acknowledged checkpoint {n} is gone"
                assert tup.checkpoint["channel_values"]["n"] == n
                if n < 30:  # 30 and 31 have no writes
                    assert (f"task-{n}", "n", n) in (tup.pending_writes or []), tup.pending_writes
        # and the projector, which lived through the restart, still equals the log
        log = await Log.open(settings)
        model = ReadModel.from_url(settings.database_url)
        try:
            await wait_for_watermark(model, await log.stream_last_seq(), timeout=30)
            async with model.connect() as conn:
                assert await dump(conn) == await dump_of_log(log)
        finally:
            await log.close()
            await model.close()
    finally:
        await saver.aclose()
        await projector.stop()


async def test_a_read_while_nats_is_down_fails_fast_naming_the_url(
    own_nats: NatsServer, sqlite_url: str, unique: str
) -> None:
    settings = _own_settings(own_nats, sqlite_url, unique)
    config: RunnableConfig = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    async with SkialithCheckpointer(settings=settings) as saver:
        stored = await saver.aput(config, _checkpoint(1), {"step": 1}, {"n": "1"})
        assert await saver.aget_tuple(config) is not None
        assert await asyncio.to_thread(saver.get_tuple, config) is not None
        own_nats.kill()
        # a read cannot know what was acknowledged without the log: it fails, bounded, naming the URL
        await _fails_fast(lambda: saver.aget_tuple(config), LogError, own_nats.url)
        await _fails_fast(lambda: saver.aget_tuple(stored), LogError, own_nats.url)
        await _fails_fast(lambda: _alist(saver, config), LogError, own_nats.url)
        await _fails_fast(lambda: asyncio.to_thread(saver.get_tuple, config), LogError, own_nats.url)
        own_nats.restart()
        tup = await _once_reconnected(lambda: saver.aget_tuple(config), LogError)
        assert tup is not None and tup.config == stored
        tup = await _once_reconnected(lambda: asyncio.to_thread(saver.get_tuple, config), LogError)
        assert tup is not None and tup.config == stored


async def _alist(saver: SkialithCheckpointer, config: RunnableConfig) -> list[CheckpointTuple]:
    return [t async for t in saver.alist(config)]
