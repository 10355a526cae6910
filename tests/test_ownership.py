"""Ownership of replicas: one process per replica id (a lease in a JetStream KV bucket), ``--rebuild``
and ``--forget`` refused while a replica is live, and ``skialith status`` against a real stack.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.ownership import LeaseHeldError, LeaseLostError, lease_bucket
from skialith_langgraph.readmodel import ReadModel
from tests.support import wait_for_watermark
from tests.test_cli import STOP_TIMEOUT, Run, _eventually, _projector_args, _stream_last_seq, cli_runner

pytestmark = pytest.mark.nats

DURABLE = "skialith-projector-main-0"


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    yield from cli_runner(tmp_path)


@pytest.fixture
def lite(nats_url: str, sqlite_url: str, unique: str) -> Settings:
    return Settings(
        nats_url=nats_url, database_url=sqlite_url, stream=f"SK{unique}".upper(), subject_prefix=f"sk{unique}"
    )


def _write(settings: Settings, thread: str) -> str:
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    with SkialithCheckpointer(settings=settings) as saver:
        saver.put(config, checkpoint, {"source": "input", "step": -1, "parents": {}}, {})
    return str(checkpoint["id"])


async def _foreign_lease(settings: Settings, key: str, *, ttl: float, host: str = "elsewhere") -> None:
    """A lease as a process on another machine would hold it (it never renews it)."""
    nc = await nats.connect(settings.nats_url, token=settings.nats_token, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        value = {"host": host, "pid": 4242, "since": time.time(), "role": "projector", "replica": "0"}
        value["owner"] = "someone-else"
        await js.publish(
            f"$KV.{lease_bucket(settings.stream)}.{key}", json.dumps(value).encode(), msg_ttl=ttl
        )
    finally:
        await nc.close()


def _status(run_cli: Callable[..., Run], settings: Settings) -> dict[str, Any]:
    run = run_cli("status", "--json", *_projector_args(settings)[1:])
    assert run.wait(STOP_TIMEOUT) == 0, run.describe()
    result: dict[str, Any] = json.loads(run.out)
    return result


def test_a_second_projector_with_a_running_replica_id_refuses_naming_it(
    run_cli: Callable[..., Run], lite: Settings
) -> None:
    first = run_cli(*_projector_args(lite, "--progress-interval", "0.2"))
    first.wait_for(rf"projector {DURABLE}: stream")
    second = run_cli(*_projector_args(lite))
    assert second.wait(STOP_TIMEOUT + 10) == 1, second.describe()  # it used to run, both looping on 409
    assert f"replica '0' (durable consumer {DURABLE}) is already running on host {socket.gethostname()} " in (
        second.err
    )
    assert f"pid {first.proc.pid} (since " in second.err
    assert "Traceback" not in second.err
    # the first one goes on undisturbed
    _write(lite, "t-1")
    _eventually(lambda: "lag=0" in first.err and _stream_last_seq(lite) > 0, what="the first one projecting")
    assert "Consumer Deleted" not in first.err

    # after a kill -9 the same replica id starts again at once (a lease of a gone process of this host)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    started = time.monotonic()
    third = run_cli(*_projector_args(lite, "--progress-interval", "0.2"))
    third.wait_for(rf"projector {DURABLE}: stream")
    assert time.monotonic() - started < 10
    assert "taking over the lease of host" in third.err
    _write(lite, "t-2")
    last = _stream_last_seq(lite)
    _eventually(lambda: f"watermark={last} " in third.err, what="the restarted one projecting")


async def test_a_lease_held_elsewhere_refuses_until_it_expires(lite: Settings) -> None:
    projector = Projector(lite, fetch_timeout=0.1)
    await projector.open()  # creates the stream and the bucket
    await projector.close()
    await _foreign_lease(lite, DURABLE, ttl=2)
    with pytest.raises(LeaseHeldError, match=r"already running on host elsewhere pid 4242 \(since "):
        try:
            await projector.start()
        finally:
            await projector.close()
    await asyncio.sleep(3.0)  # the owner never renewed it: its lease expired
    await projector.start()
    await projector.stop()


async def test_a_replica_that_lost_its_lease_stops(lite: Settings) -> None:
    projector = Projector(lite, fetch_timeout=0.1)
    projector.lease_ttl = 1.5  # renewed every 0.5 s
    await projector.start()
    try:
        await _foreign_lease(lite, DURABLE, ttl=30)  # as if ours had expired and another took it
        with pytest.raises(LeaseLostError, match="lost its lease .* to host elsewhere pid 4242"):
            await asyncio.wait_for(projector.wait(), 10)
        assert not projector.running
    finally:
        with pytest.raises(LeaseLostError):
            await projector.stop()


def test_rebuild_and_forget_refuse_while_the_replica_is_live(
    run_cli: Callable[..., Run], lite: Settings
) -> None:
    live = run_cli(*_projector_args(lite, "--replica", "a", "--progress-interval", "0.2"))
    live.wait_for(r"projector skialith-projector-main-a: stream")
    _write(lite, "t-1")
    last = _stream_last_seq(lite)
    _eventually(lambda: f"watermark={last} " in live.err, what="projected")

    rebuild = run_cli(*_projector_args(lite, "--replica", "b", "--rebuild"))
    assert rebuild.wait(STOP_TIMEOUT + 10) == 1, rebuild.describe()
    assert "refusing to rebuild while replicas of stream" in rebuild.err
    holder = f"on host {socket.gethostname()} pid {live.proc.pid}"
    assert f"projector replica 'a' (skialith-projector-main-a) {holder}" in rebuild.err
    assert "dropping" not in rebuild.out  # the tables were left alone

    forget = run_cli(*_projector_args(lite, "--forget", "a"))
    assert forget.wait(STOP_TIMEOUT + 10) == 1, forget.describe()
    assert "refusing to forget replica 'a': it is live (projector replica 'a'" in forget.err

    live.proc.send_signal(signal.SIGKILL)  # gone for good: its durable consumer stays behind
    live.proc.wait()
    consumers = {c["durable"]: c for c in _status(run_cli, lite)["consumers"]}
    assert consumers["skialith-projector-main-a"]["live"] is False
    forget = run_cli(*_projector_args(lite, "--forget", "a"))
    assert forget.wait(STOP_TIMEOUT + 10) == 0, forget.describe()
    assert "deleted the durable consumer skialith-projector-main-a" in forget.out
    assert "skialith-projector-main-a" not in {c["durable"] for c in _status(run_cli, lite)["consumers"]}
    again = run_cli(*_projector_args(lite, "--forget", "a"))
    assert again.wait(STOP_TIMEOUT + 10) == 1
    assert "replica 'a' has no durable consumer on stream" in again.err


def test_status_shows_stream_consumers_watermarks_and_database(
    run_cli: Callable[..., Run], settings: Settings
) -> None:
    live = run_cli(*_projector_args(settings, "--progress-interval", "0.2"))
    live.wait_for(rf"projector {DURABLE}: stream")

    async def gone_replica() -> None:  # a replica that ran and stopped: its consumer stays
        projector = Projector(settings, replica="old", fetch_timeout=0.1)
        await projector.start()
        while not projector.subscribed:
            await asyncio.sleep(0.05)
        await projector.stop()

    asyncio.run(gone_replica())
    for i in range(3):
        _write(settings, f"t-{i}")
    last = _stream_last_seq(settings)

    async def projected() -> None:
        model = ReadModel.from_url(settings.database_url)
        try:
            await wait_for_watermark(model, last)
        finally:
            await model.close()

    asyncio.run(projected())

    def caught_up() -> dict[str, Any] | None:
        found = _status(run_cli, settings)
        consumers = {c["durable"]: c for c in found["consumers"]}
        return found if consumers[DURABLE]["lag"] == 0 else None

    status = _eventually(caught_up, what="the live consumer's ack floor at the end")
    stream = status["stream"]
    assert stream["name"] == settings.stream
    assert stream["last_seq"] == last and stream["messages"] == last and stream["first_seq"] == 1
    assert stream["bytes"] > 0 and stream["created"]
    consumers = {c["durable"]: c for c in status["consumers"]}
    mine = consumers[DURABLE]
    assert mine["live"] is True and mine["replica"] == "0" and mine["role"] == "projector"
    assert mine["holder"]["pid"] == live.proc.pid and mine["holder"]["host"] == socket.gethostname()
    assert mine["ack_floor"] == last and mine["pending"] == 0
    old = consumers["skialith-projector-main-old"]
    assert old["live"] is False and old["holder"] is None and old["replica"] == "old"
    database = status["database"]
    assert database["stream"]["name"] == settings.stream
    assert database["stream"]["created"] == stream["created"]
    assert database["watermarks"]["main"] == {"last_seq": last, "lag": 0}
    assert database["dead_letters_total"] == 0
    assert "***" in database["url"] or ":" not in database["url"].split("@")[0].split("//")[-1]

    text = run_cli("status", *_projector_args(settings)[1:])
    assert text.wait(STOP_TIMEOUT) == 0, text.describe()
    assert f"stream    {settings.stream}  created {stream['created']}" in text.out
    assert f"watermark main: {last} (lag 0)" in text.out
    assert f"live      {socket.gethostname()} pid {live.proc.pid}" in text.out


def test_status_masks_a_database_password_and_exits_1_when_it_cannot_read_it(
    run_cli: Callable[..., Run], lite: Settings
) -> None:
    broken = lite.replace(database_url="mysql+aiomysql://someone:s3cret@127.0.0.1:1/nothing")
    run = run_cli("status", "--json", *_projector_args(broken)[1:])
    assert run.wait(STOP_TIMEOUT + 10) == 1, run.describe()
    assert "s3cret" not in run.out + run.err
    status = json.loads(run.out)
    assert status["database"]["url"] == "mysql+aiomysql://someone:***@127.0.0.1:1/nothing"
    assert "error" in status["database"]
    assert status["stream"]["name"] == lite.stream


async def test_a_replica_that_ends_on_an_error_gives_its_lease_back_at_once(
    lite: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a configuration error at subscribe ends the projector (injected: a real one is a stream
    # config the server refuses); a replacement with the same replica id must not be refused
    # until the ended one's lease expires
    async def refused(self: Projector, log: Any, start: int) -> Any:
        raise nats.js.errors.BadRequestError(code=400, description="consumer config refused")

    monkeypatch.setattr(Projector, "_subscribe", refused)
    first = Projector(lite, fetch_timeout=0.1)
    first.lease_ttl = 30.0
    await first.start()
    with pytest.raises(nats.js.errors.BadRequestError):
        await asyncio.wait_for(first.wait(), 10)
    monkeypatch.undo()
    second = Projector(lite, fetch_timeout=0.1)
    try:
        await second.start()  # was: LeaseHeldError naming the ended replica, for up to 30 s
        assert second.running
    finally:
        await second.stop()
        with pytest.raises(nats.js.errors.BadRequestError):
            await first.stop()
