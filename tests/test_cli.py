"""The ``skialith`` command, run for real in subprocesses against real nats-server, SQLite and MySQL.

Every run gets the test's temporary directory as its working directory, its own ports and home,
and an environment without ``SKIALITH_*`` variables, so nothing leaks in or is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy import Table, create_engine, delete, insert, select, update
from sqlalchemy.engine import make_url

from skialith_langgraph import Projector, Settings, SkialithCheckpointer, __version__
from skialith_langgraph.cli import _home_database_url, build_parser
from skialith_langgraph.config import DEFAULT_DATABASE_URL, DEFAULT_HOME, DEFAULT_NATS_PORT, DEFAULT_NATS_URL
from skialith_langgraph.demo import NODES, build_graph
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import checkpoint_writes, checkpoints, metadata
from skialith_langgraph.server import NatsServer

pytestmark = pytest.mark.nats

CLI = [sys.executable, "-m", "skialith_langgraph.cli"]
START_TIMEOUT = 30.0  # seconds; generous for a loaded 2-core CI machine
STOP_TIMEOUT = 10.0  # seconds a clean shutdown may take


class Run:
    """One CLI process; stdout and stderr go to files (a pipe could fill up and stall it)."""

    def __init__(self, args: list[str], cwd: Path, name: str, env: dict[str, str]) -> None:
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                CLI + args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: a Ctrl-C can be simulated, and
            )  # the teardown can kill the nats-server it started along with it

    @property
    def out(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        return f"exit code {self.proc.returncode}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait until stdout matches ``pattern``; fail with the output if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.out)
            if match is not None:
                return match
            if self.proc.poll() is not None:
                pytest.fail(f"the CLI ended before printing {pattern!r}: {self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the CLI did not print {pattern!r} within {timeout} s: {self.describe()}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the CLI did not exit within {timeout} s: {self.describe()}")


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start ``skialith ...`` in ``tmp_path``; every process still running at the end is killed."""
    yield from cli_runner(tmp_path)


def cli_runner(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """The body of the ``run_cli`` fixture, for other test modules."""
    runs: list[Run] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")}
    env["PYTHONUNBUFFERED"] = "1"

    def start(*args: str, extra_env: dict[str, str] | None = None) -> Run:
        run = Run(list(args), tmp_path, f"cli{len(runs)}", {**env, **(extra_env or {})})
        runs.append(run)
        return run

    yield start
    for run in runs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGKILL)  # the CLI and anything it started
        run.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s (last value {value!r})")
        time.sleep(0.05)


def _sync_url(url: str) -> str:
    u = make_url(url)
    backend = u.get_backend_name()
    driver = {"mysql": "mysql+pymysql", "mariadb": "mysql+pymysql", "postgresql": "postgresql+psycopg"}.get(
        backend, "sqlite"
    )
    return u.set(drivername=driver).render_as_string(hide_password=False)


def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read-model table, in primary-key order."""
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as conn:
            return {
                table.name: [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key))]
                for table in metadata.sorted_tables
            }
    finally:
        engine.dispose()


def _col(table: Table, name: str) -> int:
    """The position of a column in the rows of :func:`_snapshot`."""
    return list(table.columns.keys()).index(name)


def _watermark(url: str) -> int:
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT max(last_seq) FROM skialith_projection").scalar() or 0)
    except Exception:  # the tables do not exist yet
        return 0
    finally:
        engine.dispose()


def _stream_last_seq(settings: Settings) -> int:
    async def last() -> int:
        nc = await nats.connect(settings.nats_url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            info = await nc.jetstream().stream_info(settings.stream)
            return int(info.state.last_seq)
        finally:
            await nc.close()

    return asyncio.run(last())


def _projector_args(settings: Settings, *more: str) -> list[str]:
    return [
        "projector",
        "--nats-url",
        settings.nats_url,
        "--database-url",
        settings.database_url,
        "--stream",
        settings.stream,
        "--subject-prefix",
        settings.subject_prefix,
        *more,
    ]


def _metric(text: str, name: str) -> int:
    match = re.search(rf"^{name}\{{[^}}]*\}} (\d+)$", text, re.MULTILINE)
    assert match is not None, f"{name} missing from:\n{text}"
    return int(match.group(1))


# -- skialith up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigint-to-cli", "ctrl-c-to-group"])
def test_up_serves_a_checkpointer_and_stops_on_sigint(
    run_cli: Callable[..., Run], tmp_path: Path, how: str
) -> None:
    home = tmp_path / "home"
    up = run_cli("up", "--nats-port", "0", "--home", str(home), "--progress-interval", "0.2")
    match = up.wait_for(r"NATS\s+(nats://127\.0\.0\.1:\d+)\s+\(nats-server pid (\d+)\)")
    nats_url, server_pid = match.group(1), int(match.group(2))
    up.wait_for("Press Ctrl-C to stop.")
    database_url = f"sqlite+aiosqlite:///{home / 'skialith.db'}"
    assert f"export SKIALITH_NATS_URL={nats_url}\n" in up.out
    assert f"export SKIALITH_DATABASE_URL={database_url}\n" in up.out
    assert f'export SKIALITH_NATS_TOKEN="$(cat {home / "nats.token"})"\n' in up.out
    assert "SkialithCheckpointer(" in up.out and "graph.compile(checkpointer=checkpointer)" in up.out

    config: Any = {"configurable": {"thread_id": "cli-up", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    token = (home / "nats.token").read_text().strip()  # what the export line above reads
    with SkialithCheckpointer(nats_url=nats_url, database_url=database_url, nats_token=token) as saver:
        saved = saver.put(config, checkpoint, {"source": "input", "step": -1, "parents": {}}, {})
        found = saver.get_tuple(saved)
        assert found is not None and found.checkpoint["id"] == checkpoint["id"]

    def projected() -> list[str]:
        with contextlib.closing(sqlite3.connect(home / "skialith.db")) as db:
            rows = db.execute("SELECT checkpoint_id FROM skialith_checkpoints WHERE thread_id = 'cli-up'")
            return [r[0] for r in rows]

    assert _eventually(projected, what="the projector of 'skialith up' writing the row") == [checkpoint["id"]]

    def traced() -> list[str]:
        with contextlib.closing(sqlite3.connect(home / "skialith.db")) as db:
            rows = db.execute("SELECT checkpoint_id FROM skialith_agent_traces WHERE trace_id = 'cli-up'")
            return [r[0] for r in rows]

    assert _eventually(traced, what="the trace ingest of 'skialith up' writing a trace") == [checkpoint["id"]]
    _eventually(lambda: "lag=0" in up.err, what="a progress line")

    if how == "sigint-to-cli":
        up.proc.send_signal(signal.SIGINT)
    else:  # what a terminal does on Ctrl-C: the whole foreground process group gets SIGINT
        os.killpg(up.proc.pid, signal.SIGINT)
    assert up.wait(STOP_TIMEOUT) == 0, up.describe()
    assert "Skialith stopped." in up.out
    assert _gone(server_pid), f"nats-server pid {server_pid} is still running"
    assert (home / "nats" / "jetstream").is_dir() and (home / "nats-server.log").is_file()


def test_up_refuses_a_taken_port(
    run_cli: Callable[..., Run], nats_server: NatsServer, tmp_path: Path
) -> None:
    up = run_cli("up", "--nats-port", str(nats_server.port), "--home", str(tmp_path / "home"))
    assert up.wait(STOP_TIMEOUT) == 1, up.describe()
    assert f"port {nats_server.port} is already in use" in up.err
    # another port only with another data directory: two servers on one store lose writes
    assert "--home OTHER_DIR --nats-port N" in up.err
    assert "Traceback" not in up.err
    assert not (tmp_path / "home").exists()
    assert nats_server.running  # the other server is left alone


def test_defaults_match_what_the_checkpointer_connects_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["up"])
    assert args.nats_port == DEFAULT_NATS_PORT
    assert f"nats://127.0.0.1:{args.nats_port}" == DEFAULT_NATS_URL == Settings().nats_url
    # DEFAULT_DATABASE_URL is relative to the working directory: 'up' run here writes that very file
    up_database = make_url(_home_database_url(Path(args.home).resolve())).database
    default_database = make_url(DEFAULT_DATABASE_URL).database
    assert up_database is not None and default_database is not None
    assert (
        Path(up_database).resolve()
        == Path(default_database).resolve()
        == tmp_path / DEFAULT_HOME / "skialith.db"
    )


# -- skialith projector ----------------------------------------------------------------------------


def test_projector_materialises_writes_and_stops_on_sigterm(
    run_cli: Callable[..., Run], settings: Settings
) -> None:
    projector = run_cli(
        *_projector_args(settings, "--metrics-port", "0", "--progress-interval", "0.2", "--batch-size", "3")
    )
    metrics_url = projector.wait_for(r"metrics: (http://127\.0\.0\.1:\d+/metrics)").group(1)

    ids = []
    with SkialithCheckpointer(settings=settings) as saver:
        config: Any = {"configurable": {"thread_id": "cli-projector", "checkpoint_ns": ""}}
        for step in range(5):
            checkpoint = empty_checkpoint()
            config = saver.put(config, checkpoint, {"source": "loop", "step": step, "parents": {}}, {})
            ids.append(checkpoint["id"])
        saver.put_writes(config, [("answer", 42)], task_id="task-1")
    last_seq = _stream_last_seq(settings)
    _eventually(lambda: _watermark(settings.database_url) >= last_seq, what="the watermark")
    rows = _snapshot(settings.database_url)
    assert sorted(r[_col(checkpoints, "checkpoint_id")] for r in rows[checkpoints.name]) == sorted(ids)
    writes = [
        tuple(r[_col(checkpoint_writes, c)] for c in ("checkpoint_id", "task_id", "channel"))
        for r in rows[checkpoint_writes.name]
    ]
    assert writes == [(ids[-1], "task-1", "answer")]

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    assert _metric(text, "skialith_projector_applied_total") == 6
    assert _metric(text, "skialith_projector_batches_total") >= 2  # batches of at most 3
    assert _metric(text, "skialith_projector_watermark") == last_seq
    assert _metric(text, "skialith_projector_lag_messages") == 0
    assert _metric(text, "skialith_projector_failures_total") == 0
    assert f'{{stream="{settings.stream}",projection="main",replica="0"}}' in text
    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(metrics_url.replace("/metrics", "/other"), timeout=5)
    assert not_found.value.code == 404
    not_found.value.close()
    _eventually(lambda: re.search(rf"watermark={last_seq} .*lag=0", projector.err), what="a progress line")

    projector.proc.send_signal(signal.SIGTERM)
    assert projector.wait(STOP_TIMEOUT) == 0, projector.describe()
    assert "projector stopped: applied=6 batches=" in projector.out
    assert "Traceback" not in projector.err


async def test_projector_stop_returns_promptly(nats_url: str, sqlite_url: str, unique: str) -> None:
    """SIGTERM must not wait for a timeout: orchestrators kill after a grace period (30 s on Kubernetes)."""
    settings = Settings(
        nats_url=nats_url, database_url=sqlite_url, stream=f"SK{unique}".upper(), subject_prefix=f"sk{unique}"
    )
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    # Empty fetches, as on any idle stream: some 408 "request expired" replies arrive after the
    # client gave up; nats-py discards them without task_done(), so a drain() of the connection
    # would wait its whole drain_timeout (30 s). Regression test for that.
    await asyncio.sleep(1.5)
    started = time.monotonic()
    try:
        # timed, not trusted to raise: nats-py's drain swallowed wait_for's cancellation
        await asyncio.wait_for(projector.stop(), timeout=2.5)
    finally:
        await projector.close()
    assert time.monotonic() - started < 2.0, "Projector.stop() did not return within 2 s"


async def test_replicas_can_set_up_a_fresh_database_at_once(database_url: str) -> None:
    models = [ReadModel.from_url(database_url) for _ in range(4)]  # four replicas starting together
    try:
        results = await asyncio.gather(*(m.setup() for m in models), return_exceptions=True)
    finally:
        for model in models:
            await model.close()
    assert [r for r in results if r is not None] == []


def test_projector_names_an_unreachable_nats(run_cli: Callable[..., Run], tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    projector = run_cli(
        "projector",
        "--nats-url",
        url,
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}",
        extra_env={"SKIALITH_CONNECT_TIMEOUT": "1"},
    )
    assert projector.wait(STOP_TIMEOUT + 5) == 1, projector.describe()
    assert time.monotonic() - started < STOP_TIMEOUT + 5
    assert f"cannot reach NATS at {url!r}" in projector.err and "skialith up" in projector.err
    assert "Traceback" not in projector.err


@pytest.mark.slow
def test_projector_rebuild_equals_the_original_projection(
    run_cli: Callable[..., Run], settings: Settings, tmp_path: Path
) -> None:
    # two replicas, as in production: each has its own durable consumer, they take turns
    replicas = []
    for name in ("0", "b"):
        replicas.append(run_cli(*_projector_args(settings, "--batch-size", "7", "--replica", name)))
        replicas[-1].wait_for(rf"projector skialith-projector-main-{name}: stream")
    with SkialithCheckpointer(settings=settings) as saver:
        app = build_graph(tmp_path / "executions.log").compile(checkpointer=saver)
        for thread_id in ("kept", "deleted", "pruned"):
            for run in range(2):
                config: Any = {"configurable": {"thread_id": thread_id}}
                result = app.invoke({"topic": f"run {run}", "steps": []}, config)
                assert result["steps"][-len(NODES) :] == list(NODES)
        saver.copy_thread("kept", "copied")
        saver.delete_thread("deleted")
        saver.prune(["pruned"], strategy="keep_latest")
    last_seq = _stream_last_seq(settings)
    _eventually(lambda: _watermark(settings.database_url) >= last_seq, what="the first projection")
    for replica in replicas:
        replica.proc.send_signal(signal.SIGTERM)
    for replica in replicas:
        assert replica.wait(STOP_TIMEOUT) == 0, replica.describe()
    original = _snapshot(settings.database_url)
    threads = {r[_col(checkpoints, "thread_id")] for r in original[checkpoints.name]}
    assert threads == {"kept", "copied", "pruned"}
    assert original["skialith_checkpoint_blobs"] and original[checkpoint_writes.name]

    # damage the read model: the rebuild must bring back exactly the original rows
    engine = create_engine(_sync_url(settings.database_url))
    try:
        with engine.begin() as conn:
            conn.execute(delete(checkpoints).where(checkpoints.c.thread_id == "kept"))
            conn.execute(update(checkpoint_writes).values(channel="garbage"))
            conn.execute(insert(metadata.tables["skialith_projection"]).values(name="stale", last_seq=1))
    finally:
        engine.dispose()
    assert _snapshot(settings.database_url) != original

    rebuild = run_cli(*_projector_args(settings, "--rebuild", "--batch-size", "5"))
    rebuild.wait_for(r"rebuild: done; the read model reflects the stream up to sequence \d+")
    rebuild.proc.send_signal(signal.SIGTERM)
    assert rebuild.wait(STOP_TIMEOUT) == 0, rebuild.describe()
    out = rebuild.out
    assert "rebuild: dropping the read-model tables" in out
    assert "rebuild: deleted the durable consumer skialith-projector-main-0 " in out
    assert "rebuild: deleted the durable consumer skialith-projector-main-b " in out
    assert f"projecting stream {settings.stream} from sequence 1 (last sequence now {last_seq})" in out

    rebuilt = _snapshot(settings.database_url)
    for name in original:
        assert rebuilt[name] == original[name], f"table {name} differs after the rebuild"


# -- skialith demo and the basics ------------------------------------------------------------------


@pytest.mark.slow
def test_demo_resumes_after_kill_9(run_cli: Callable[..., Run], tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    started = time.monotonic()
    demo = run_cli(
        "demo", "--nats-url", f"nats://127.0.0.1:{_free_port()}", extra_env={"TMPDIR": str(scratch)}
    )
    assert demo.wait(60) == 0, demo.describe()
    elapsed = time.monotonic() - started
    out = demo.out
    pid = int(re.search(r"nats-server pid (\d+)", out).group(1))  # type: ignore[union-attr]
    assert "steps that ran before the crash: ['research', 'draft']" in out
    assert "resumed state: steps=['research', 'draft', 'review', 'publish']" in out
    assert "node executions: research 1x, draft 1x, review 2x, publish 1x" in out
    assert "OK: research and draft were not run again" in out
    assert _gone(pid), "the demo left its nats-server running"
    assert list(scratch.iterdir()) == [], "the demo left temporary files behind"
    assert not (tmp_path / ".skialith").exists()
    assert elapsed < 45, f"the demo took {elapsed:.1f} s"


def test_version_and_help(run_cli: Callable[..., Run], capsys: pytest.CaptureFixture[str]) -> None:
    version = run_cli("--version")
    assert version.wait(STOP_TIMEOUT) == 0, version.describe()
    assert version.out.strip() == f"skialith-langgraph {__version__}"
    # the parser itself, in-process: each run of the CLI pays ~2 s of imports
    parser = build_parser()
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["up", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--nats-port" in text and f"(default: {DEFAULT_NATS_PORT})" in text
    assert "--sync-always" in text and "--database-url" in text and "(default: None)" not in text
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["projector", "--batch-size", "0"])
    assert done.value.code == 2
    assert "--batch-size: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        parser.parse_args([])
    assert done.value.code == 2
    listed = capsys.readouterr().err.replace(" ", "")
    assert re.search(r"\{up,projector,(\w+,)*demo", listed) and ",status," in listed


async def test_projector_waits_for_a_database_that_is_not_up_yet(
    run_cli: Callable[..., Run], nats_url: str, mysql_url: str, unique: str
) -> None:
    """A projector started before its database (as a service manager may) waits for it with backoff
    instead of exiting, then projects; a stop signal during the wait ends it cleanly."""
    from tcp_proxy import TcpProxy

    port = _free_port()
    target = make_url(mysql_url)
    proxied = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    settings = Settings(
        nats_url=nats_url, database_url=proxied, stream=f"SK{unique}".upper(), subject_prefix=f"sk{unique}"
    )
    waiting = run_cli(*_projector_args(settings))
    deadline = time.monotonic() + START_TIMEOUT
    while "cannot reach its database" not in waiting.err:
        assert waiting.proc.poll() is None, waiting.describe()
        assert time.monotonic() < deadline, waiting.describe()
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert waiting.proc.poll() is None, "the projector must wait for its database, not exit"
    async with TcpProxy(target.host or "127.0.0.1", target.port or 3306, port=port):
        async with SkialithCheckpointer(settings=settings.replace(read_wait=30.0)) as saver:
            stored = await saver.aput(
                {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, empty_checkpoint(), {"step": 0}, {}
            )
            # the proxy runs on this loop: wait without blocking it
            while "projector skialith-projector-main-0: stream" not in waiting.out:
                assert waiting.proc.poll() is None and time.monotonic() < deadline + 60, waiting.describe()
                await asyncio.sleep(0.1)
            assert await saver.aget_tuple(stored) is not None
            assert saver.read_stats.database >= 1 and saver.read_stats.log == 0, saver.read_stats
        waiting.proc.send_signal(signal.SIGTERM)
        while waiting.proc.poll() is None and time.monotonic() < deadline + 90:
            await asyncio.sleep(0.1)
        assert waiting.wait(STOP_TIMEOUT) == 0, waiting.describe()
    assert "Traceback" not in waiting.err

    stopped = run_cli(*_projector_args(settings.replace(database_url=proxied)))  # nothing listens again
    deadline = time.monotonic() + START_TIMEOUT
    while "cannot reach its database" not in stopped.err:
        assert stopped.proc.poll() is None and time.monotonic() < deadline, stopped.describe()
        await asyncio.sleep(0.1)
    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.wait(STOP_TIMEOUT) == 0, stopped.describe()
    assert "stopped before it started" in stopped.out


async def test_a_stop_signal_ends_a_projector_start_that_lost_a_cancellation(
    nats_url: str, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's ``asyncio.wait_for``, around aiomysql's connect, returns what its call produced
    when that call ends as the cancellation arrives (a refused connection): the cancellation is
    lost, and the projector's wait for its database went on. The CLI's stop must end it anyway (a
    clean-clone CI run saw ``skialith projector`` ignore SIGTERM there until it was killed).

    The lost cancellation is injected (a real connect loses it only at one instant): the first
    cancellation of the read model's setup is swallowed and the setup fails as a refused connect."""
    from skialith_langgraph import Projector
    from skialith_langgraph.cli._common import _unless_stopped
    from skialith_langgraph.readmodel import DatabaseUnreachableError, ReadModel

    lost: list[bool] = []

    async def setup(self: ReadModel) -> None:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(True)  # swallowed, as wait_for does
        raise DatabaseUnreachableError("no database server answers (injected)", url=self.url)

    monkeypatch.setattr(ReadModel, "setup", setup)
    settings = Settings(
        nats_url=nats_url,
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        stream=f"SK{unique}".upper(),
        subject_prefix=f"sk{unique}",
    )
    projector = Projector(settings)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    started = time.monotonic()
    try:
        waiting = asyncio.ensure_future(_unless_stopped(projector.start(), stop))
        done, _ = await asyncio.wait({waiting}, timeout=10)
        assert done, "the start went on waiting for its database after the stop"
        assert waiting.result() is False
    finally:
        await projector.close()
    assert lost == [True]
    assert time.monotonic() - started < 5
