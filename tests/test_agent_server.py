"""LangGraph's Agent Server with Skialith as its checkpointer (``skialith_langgraph.server_checkpointer``).

The live test starts ``langgraph dev`` on tests/agent_server_app/ against a real nats-server and a
projector, drives it over HTTP as a client would, and checks every effect in Skialith itself: the
stream, the read model and a second checkpointer reading the same stream. It needs the
``agent-server`` extra (which the ``test`` extra includes) and is skipped without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from support import wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.errors import ConfigError
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel, create_engine
from skialith_langgraph.readmodel.tables import checkpoints
from skialith_langgraph.server_checkpointer import (
    checkpointer,
    retention_from_ttl,
    server_settings,
    server_ttl,
)

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "agent_server_app"
LANGGRAPH = Path(sys.executable).parent / "langgraph"
HAS_SERVER = importlib.util.find_spec("langgraph_api") is not None and LANGGRAPH.exists()
needs_server = pytest.mark.skipif(
    not HAS_SERVER,
    reason="langgraph-api is not installed: pip install -e '.[test]' (or '.[agent-server]')",
)

START_TIMEOUT = 120.0  # seconds for `langgraph dev` to answer /ok (slow on a loaded 2-core machine)
STOP_TIMEOUT = 30.0
RETENTION = {"retention_idle_ttl", "retention_keep_last"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- the server's thread TTL, mapped onto Skialith's retention --------------------------------------


def _checkpointer_env(ttl: Any) -> dict[str, str]:
    return {"LANGGRAPH_CHECKPOINTER": json.dumps({"path": "x.checkpointer", "ttl": ttl})}


def test_server_ttl_is_read_as_the_server_reads_it() -> None:
    assert server_ttl({}) is None
    assert server_ttl({"LANGGRAPH_CHECKPOINTER": '{"path": "x.checkpointer"}'}) is None
    ttl = {"strategy": "keep_latest", "default_ttl": 5}
    assert server_ttl(_checkpointer_env(ttl)) == ttl
    # LANGGRAPH_THREAD_TTL wins; a bare number is minutes with the delete strategy
    both = {**_checkpointer_env(ttl), "LANGGRAPH_THREAD_TTL": "2.5"}
    assert server_ttl(both) == {"strategy": "delete", "default_ttl": 2.5}
    as_json = {"LANGGRAPH_THREAD_TTL": '{"strategy": "keep_latest", "default_ttl": 7}'}
    assert server_ttl(as_json) == {"strategy": "keep_latest", "default_ttl": 7}
    for bad in ({"LANGGRAPH_THREAD_TTL": "soon"}, {"LANGGRAPH_CHECKPOINTER": "{"}, _checkpointer_env(60)):
        with pytest.raises(ConfigError):
            server_ttl(bad)


@pytest.mark.parametrize(
    ("ttl", "retention"),
    [
        (None, {}),
        (
            {"strategy": "delete", "default_ttl": 60, "sweep_interval_minutes": 10},
            {"retention_idle_ttl": 3600.0},
        ),
        ({"default_ttl": 0.5}, {"retention_idle_ttl": 30.0}),  # delete is the server's default
        ({"strategy": "keep_latest", "default_ttl": 60}, {"retention_keep_last": 1}),
        ({"strategy": "delete"}, {}),  # per-thread TTLs only: the server keeps them
        ({"strategy": "delete", "default_ttl": 0}, {}),
    ],
)
def test_retention_from_ttl(ttl: dict[str, Any] | None, retention: dict[str, Any]) -> None:
    assert retention_from_ttl(ttl) == retention


@pytest.mark.parametrize(
    "ttl", [{"strategy": "archive", "default_ttl": 1}, {"default_ttl": -1}, {"default_ttl": "an hour"}]
)
def test_retention_from_ttl_refuses_what_it_cannot_map(ttl: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        retention_from_ttl(ttl)


def test_server_settings_map_the_ttl_onto_retention(caplog: pytest.LogCaptureFixture) -> None:
    env = {**_checkpointer_env({"strategy": "delete", "default_ttl": 1.5}), "SKIALITH_STREAM": "AGENTS"}
    fields = {f.name for f in dataclasses.fields(Settings)}
    if RETENTION <= fields:
        settings = server_settings(env)
        assert settings.stream == "AGENTS"
        assert settings.retention_idle_ttl == 90.0
        # a SKIALITH_RETENTION_* variable wins over the server's TTL
        explicit = server_settings({**env, "SKIALITH_RETENTION_IDLE_TTL": "30"})
        assert explicit.retention_idle_ttl == 30.0
        keep = server_settings(_checkpointer_env({"strategy": "keep_latest", "default_ttl": 60}))
        assert keep.retention_keep_last == 1
    else:
        # a Skialith without retention runs on and says that the TTL is not applied
        with caplog.at_level(logging.WARNING, logger="skialith_langgraph.server_checkpointer"):
            settings = server_settings(env)
        assert settings == Settings.from_env(env)
        assert "retention_idle_ttl=90.0, which this Skialith does not support" in caplog.text


# -- the factory, without the server ----------------------------------------------------------------


async def test_factory_sets_up_yields_and_closes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("nats_url", "database_url", "stream", "subject_prefix"):
        monkeypatch.setenv(f"SKIALITH_{name.upper()}", getattr(settings, name))
    monkeypatch.delenv("LANGGRAPH_THREAD_TTL", raising=False)
    monkeypatch.setenv("LANGGRAPH_CHECKPOINTER", json.dumps({"path": "x.checkpointer"}))
    with caplog.at_level(logging.INFO, logger="skialith_langgraph.server_checkpointer"):
        async with checkpointer() as saver:
            assert isinstance(saver, SkialithCheckpointer)
            assert saver.settings == settings
            log = await Log.open(settings)  # asetup created the stream before anything was written
            try:
                assert await log.stream_last_seq() == 0
            finally:
                await log.close()
            assert saver._cores, "the saver was not set up on this loop"
    assert not saver._cores, "the saver was left open"
    assert f"stream {settings.stream}" in caplog.text and "retention off" in caplog.text


# -- `langgraph dev` against a real stack ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DevServer:
    """``langgraph dev`` in a copy of tests/agent_server_app/, stopped by pid."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        shutil.copytree(APP, workdir)
        self.settings = settings
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "SKIALITH_NATS_URL": settings.nats_url,
            "SKIALITH_DATABASE_URL": settings.database_url,
            "SKIALITH_STREAM": settings.stream,
            "SKIALITH_SUBJECT_PREFIX": settings.subject_prefix,
            # nothing leaves this machine: no analytics, version check or tracing
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
            "LANGGRAPH_NO_VERSION_CHECK": "true",
            "LANGSMITH_TRACING": "false",
            "LANGCHAIN_TRACING_V2": "false",
            "NO_COLOR": "1",
        }
        env.pop("LANGGRAPH_THREAD_TTL", None)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
                + ["--port", str(self.port), "--config", "langgraph.json"],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def output(self) -> str:
        return ANSI.sub("", self.log_path.read_text(errors="replace"))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"langgraph dev exited with {self.proc.returncode}:\n{self.output[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ok", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        pytest.fail(f"langgraph dev did not answer within {START_TIMEOUT} s:\n{self.output[-4000:]}")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await asyncio.to_thread(self.call, method, path, body)
        assert 200 <= status < 300, f"{method} {path} -> {status}: {answer}\n{self.output[-3000:]}"
        return answer

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
                return None
        return self.proc.returncode


@pytest.fixture
def dev_server(tmp_path: Path, nats_url: str, sqlite_url: str, unique: str) -> Iterator[DevServer]:
    settings = Settings(
        nats_url=nats_url, database_url=sqlite_url, stream=f"SK{unique}".upper(), subject_prefix=f"sk{unique}"
    )
    server = DevServer(tmp_path / "app", settings)
    try:
        yield server
    finally:
        server.stop()


async def _skialith_history(saver: SkialithCheckpointer, thread_id: str) -> list[tuple[int, Any]]:
    """(step, count) of each checkpoint of the thread, newest first, as Skialith itself reads them."""
    config: Any = {"configurable": {"thread_id": thread_id}}
    return [
        (t.metadata["step"], t.checkpoint["channel_values"].get("count")) async for t in saver.alist(config)
    ]


async def _read_model_rows(model: ReadModel, log: Log, thread_id: str) -> int:
    await wait_for_watermark(model, await log.stream_last_seq(), timeout=60.0)
    async with model.connect() as conn:
        query = select(func.count()).select_from(checkpoints).where(checkpoints.c.thread_id == thread_id)
        return int((await conn.execute(query)).scalar_one())


@needs_server
@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_langgraph_dev_keeps_its_checkpoints_in_skialith(dev_server: DevServer) -> None:
    settings = dev_server.settings
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    saver = SkialithCheckpointer(settings=settings)
    log = await Log.open(settings)
    model = ReadModel(create_engine(settings.database_url), url=settings.database_url)
    try:
        await asyncio.to_thread(dev_server.wait_ready)
        out = dev_server.output
        assert "Using custom checkpointer: SkialithCheckpointer" in out
        # the ttl of langgraph.json (60 minutes, delete) reached the factory
        assert "retention idle TTL 3600 s" in out or "retention_idle_ttl=3600.0, which this Skialith" in out

        thread = await dev_server.ok("POST", "/threads", {})
        tid = thread["thread_id"]
        result = await dev_server.ok(
            "POST", f"/threads/{tid}/runs/wait", {"assistant_id": "counter", "input": {"count": 3}}
        )
        assert result == {"count": 8, "log": ["add", "double"]}

        state = await dev_server.ok("GET", f"/threads/{tid}/state")
        assert state["values"] == {"count": 8, "log": ["add", "double"]}
        history = await dev_server.ok("POST", f"/threads/{tid}/history", {"limit": 10})
        assert [h["metadata"]["step"] for h in history] == [2, 1, 0, -1]

        # the checkpoints are in Skialith: the stream, a second checkpointer, the read model
        assert await log.stream_last_seq() > 0
        assert await _skialith_history(saver, tid) == [(2, 8), (1, 4), (0, 3), (-1, None)]
        assert await _read_model_rows(model, log, tid) == 4

        copy = await dev_server.ok("POST", f"/threads/{tid}/copy")
        cid = copy["thread_id"]
        assert cid != tid
        assert (await dev_server.ok("GET", f"/threads/{cid}/state"))["values"]["count"] == 8
        assert await _skialith_history(saver, cid) == [(2, 8), (1, 4), (0, 3), (-1, None)]

        # the copy goes on from the copied state, read back from Skialith: (8 + 1) * 2
        more = await dev_server.ok(
            "POST", f"/threads/{cid}/runs/wait", {"assistant_id": "counter", "input": {}}
        )
        assert more["count"] == 18
        copied = await _skialith_history(saver, cid)
        assert [step for step, _ in copied] == [6, 5, 4, 3, 2, 1, 0, -1] and copied[0] == (6, 18)

        await dev_server.ok("DELETE", f"/threads/{tid}")
        assert await _skialith_history(saver, tid) == []
        assert await _read_model_rows(model, log, tid) == 0
        assert await _read_model_rows(model, log, cid) == 8, "deleting the source touched the copy"
        status, _ = await asyncio.to_thread(dev_server.call, "GET", f"/threads/{tid}/state")
        assert status == 404
    finally:
        await model.close()
        await log.close()
        await saver.aclose()
        await projector.stop()
        await projector.close()
        code = await asyncio.to_thread(dev_server.stop)
    assert code is not None, "langgraph dev did not stop on SIGTERM"
    assert "Traceback" not in dev_server.output, dev_server.output[-4000:]
