"""``skialith up`` and ``skialith demo`` as an operator meets them (issue 9, items 13 and 15, item 7's NATS).

A killed ``up`` (SIGKILL, or SIGHUP from a closed terminal) takes its nats-server along; a second
``up`` on the same data directory is refused, naming the pid that holds it; what ``up`` creates
is readable by its user only; its NATS listens on 127.0.0.1 and requires the token kept in the
home, which clients find on their own. Every test runs the real CLI in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from nats.aio.client import Client
from test_cli import STOP_TIMEOUT, Run, _free_port, cli_runner

from skialith_langgraph import ConnectError, Settings, SkialithCheckpointer
from skialith_langgraph.server import NatsServer, StoreInUseError

pytestmark = pytest.mark.nats

BANNER = r"NATS\s+(nats://127\.0\.0\.1:\d+)\s+\(nats-server pid (\d+)\)"
READY = "Press Ctrl-C to stop."


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start ``skialith ...`` in ``tmp_path`` (as in test_cli); what still runs at the end is killed."""
    yield from cli_runner(tmp_path)


def _dead(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (exited, not yet reaped by whoever adopted it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_dead(pid: int, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _dead(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} (pid {pid}) still runs {timeout} s after its parent died")
        time.sleep(0.05)


def _kill_leftover(pid: int) -> None:
    """Kill a nats-server or demo child that a failing run left behind (only if it is still ours)."""
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"nats-server" in cmdline or b"skialith_langgraph.demo" in cmdline:
            os.kill(pid, signal.SIGKILL)


def _start_up(run_cli: Callable[..., Run], home: Path, *more: str) -> tuple[Run, str, int]:
    up = run_cli("up", "--nats-port", "0", "--home", str(home), *more)
    match = up.wait_for(BANNER)
    up.wait_for(READY)
    return up, match.group(1), int(match.group(2))


def _stop(up: Run) -> None:
    up.proc.send_signal(signal.SIGTERM)
    assert up.wait(STOP_TIMEOUT) == 0, up.describe()


# -- item 13: children die with their parent -------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_killed_up_takes_its_nats_server_along(
    run_cli: Callable[..., Run], tmp_path: Path, sig: signal.Signals
) -> None:
    home = tmp_path / "home"
    up, _, server_pid = _start_up(run_cli, home)
    try:
        os.kill(up.proc.pid, sig)  # the 'up' process only, as a kill -9 or a closed terminal does
        code = up.wait(STOP_TIMEOUT)
        if sig == signal.SIGHUP:  # a clean stop, as on Ctrl-C
            assert code == 0, up.describe()
            assert "Skialith stopped." in up.out
        _wait_dead(server_pid, "the nats-server of the killed 'skialith up'")
    finally:
        _kill_leftover(server_pid)
    if sig == signal.SIGKILL:  # the data directory is free again: the next 'up' on it starts
        again, _, _ = _start_up(run_cli, home)
        _stop(again)


@pytest.mark.slow
@pytest.mark.faults
def test_killed_demo_leaves_nothing_behind_after_the_next_run(
    run_cli: Callable[..., Run], tmp_path: Path
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    url = f"nats://127.0.0.1:{_free_port()}"
    demo = run_cli("demo", "--nats-url", url, extra_env=env)
    server_pid = int(demo.wait_for(r"nats-server pid (\d+)").group(1))
    child_pid = int(demo.wait_for(r"pid (\d+) started:").group(1))  # the agent, blocked in 'review'
    try:
        os.kill(demo.proc.pid, signal.SIGKILL)
        demo.wait(STOP_TIMEOUT)
        _wait_dead(server_pid, "the demo's nats-server")
        _wait_dead(child_pid, "the demo's agent child")
    finally:
        _kill_leftover(server_pid)
        _kill_leftover(child_pid)
    left = list(scratch.rglob("run-*"))
    assert left, "expected the SIGKILLed demo's directory (it cannot clean up after itself)"

    # the next demo removes the leftovers first; stopped by SIGHUP, it cleans up after itself
    again = run_cli("demo", "--nats-url", url, extra_env=env)
    again_server = int(again.wait_for(r"nats-server pid (\d+)").group(1))
    assert not any(path.exists() for path in left), "the next demo kept the killed demo's files"
    again.wait_for(r"pid (\d+) started:")
    os.kill(again.proc.pid, signal.SIGHUP)
    assert again.wait(STOP_TIMEOUT + 5) == 130, again.describe()
    assert "interrupted" in again.out
    _wait_dead(again_server, "the nats-server of the demo stopped by SIGHUP")
    assert list(scratch.iterdir()) == [], "the demo stopped by SIGHUP left files behind"


# -- item 13: a store in use is refused --------------------------------------------------------------


def test_second_up_on_the_same_home_is_refused(run_cli: Callable[..., Run], tmp_path: Path) -> None:
    home = tmp_path / "home"
    first, _, server_pid = _start_up(run_cli, home)
    # what the old port-taken message advised: another port, same data directory
    second = run_cli("up", "--nats-port", str(_free_port()), "--home", str(home))
    assert second.wait(STOP_TIMEOUT) == 1, second.describe()
    assert f"is in use by pid {first.proc.pid} and its nats-server pid {server_pid}" in second.err
    assert "--home" in second.err and "Traceback" not in second.err
    assert "Skialith is up" not in second.out
    assert first.proc.poll() is None, "the first 'skialith up' must be left alone"
    # the same holds for any NatsServer on that store, in any process
    with pytest.raises(StoreInUseError, match=f"pid {first.proc.pid}"):
        NatsServer(store_dir=home / "nats", port=-1).start()
    _stop(first)


# -- item 15: private files ----------------------------------------------------------------------------


def test_up_keeps_its_files_private(run_cli: Callable[..., Run], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)  # as an older version left it
    home.chmod(0o755)
    up, url, _ = _start_up(run_cli, home)
    for name in ("", "nats", "nats/jetstream"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o700, name or "home"
    for name in ("skialith.db", "nats-server.log"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    token = (home / "nats.token").read_text().strip()
    config: Any = {"configurable": {"thread_id": "private", "checkpoint_ns": ""}}
    with SkialithCheckpointer(url, f"sqlite+aiosqlite:///{home / 'skialith.db'}", nats_token=token) as saver:
        saver.put(config, empty_checkpoint(), {"source": "input", "step": -1, "parents": {}}, {})
    for name in (
        "nats.token",
        "skialith.db",
        "nats-server.log",
        "nats/nats-server.conf",
        "nats/skialith.lock",
    ):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    readable = [
        f"{path} {stat.S_IMODE(path.stat().st_mode):o}"
        for path in [home, *home.rglob("*")]
        if stat.S_IMODE(path.stat().st_mode) & 0o077
    ]
    assert readable == [], "readable by other users"
    _stop(up)


# -- item 7 / 15: the embedded NATS is local and requires its token -----------------------------------


def test_embedded_nats_requires_the_token_of_its_home(
    run_cli: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    up, url, server_pid = _start_up(run_cli, home)

    async def bare_client() -> None:
        nc = Client()
        try:
            await nc.connect(url, allow_reconnect=False, connect_timeout=2)
        finally:
            await nc.close()

    with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
        asyncio.run(bare_client())

    token = (home / "nats.token").read_text().strip()
    assert len(token) >= 32
    assert f'export SKIALITH_NATS_TOKEN="$(cat {home / "nats.token"})"' in up.out
    log = (home / "nats-server.log").read_text()
    assert re.search(r"Listening for client connections on 127\.0\.0\.1:\d+", log), log
    assert token.encode() not in Path(f"/proc/{server_pid}/cmdline").read_bytes()  # ps shows argv

    elsewhere = tmp_path / "elsewhere"  # no ./.skialith/nats.token here
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    database_url = f"sqlite+aiosqlite:///{home / 'skialith.db'}"
    started = time.monotonic()
    with pytest.raises(ConnectError, match="authorization violation") as refused:
        with SkialithCheckpointer(url, database_url) as saver:
            saver.setup()
    assert time.monotonic() - started < 3.0, "a refused client must fail at once, not time out"
    assert "SKIALITH_NATS_TOKEN" in str(refused.value)

    monkeypatch.setenv("SKIALITH_NATS_TOKEN", token)
    config: Any = {"configurable": {"thread_id": "with-token", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    with SkialithCheckpointer(url, database_url) as saver:
        assert token not in repr(saver.settings)
        saved = saver.put(config, checkpoint, {"source": "input", "step": -1, "parents": {}}, {})
        found = saver.get_tuple(saved)
        assert found is not None and found.checkpoint["id"] == checkpoint["id"]
    _stop(up)
    for text in (up.out, up.err, log):
        assert token not in text


def test_up_and_a_checkpointer_without_arguments_in_the_same_directory(
    run_cli: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = run_cli("up", "--nats-port", "0")  # the default home, ./.skialith, in tmp_path
    url = up.wait_for(BANNER).group(1)
    up.wait_for(READY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIALITH_NATS_URL", url)  # not 4322: tests run side by side
    assert Settings.from_env().nats_token is None
    config: Any = {"configurable": {"thread_id": "defaults", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    with SkialithCheckpointer() as saver:  # finds the token in ./.skialith/nats.token
        saved = saver.put(config, checkpoint, {"source": "input", "step": -1, "parents": {}}, {})
        found = saver.get_tuple(saved)
        assert found is not None and found.checkpoint["id"] == checkpoint["id"]
    _stop(up)
