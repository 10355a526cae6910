"""The log lookups a read makes (``Log.lookup`` / ``Log.settle``): where a thread ends, on a real
nats-server, through both of their paths (requests written and replies taken directly on
skialith's own client; nats-py's publish and a subscription callback on any other client), and
what a read gets when the server stops answering."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from skialith_langgraph.config import Settings
from skialith_langgraph.errors import LogError
from skialith_langgraph.log import Log, _Client, connect
from skialith_langgraph.server import NatsServer

pytestmark = pytest.mark.nats


@pytest.fixture(params=["own client", "plain nats-py client"])
async def log(request: pytest.FixtureRequest, nats_url: str, unique: str) -> AsyncIterator[Log]:
    settings = Settings(nats_url=nats_url, stream=f"SK{unique}".upper(), subject_prefix=f"sk{unique}")
    nc = await connect(settings) if request.param == "own client" else await nats.connect(nats_url)
    log = Log(settings, nc, owned=False)
    try:
        await log.ensure_stream()
        yield log
    finally:
        await log.close()
        await nc.close()


async def test_lookups_find_the_last_and_the_next_message_on_a_filter(log: Log) -> None:
    s = log.subjects
    one, other = s.thread("dGhyZWFkLTE"), s.thread("dGhyZWFkLTI")
    js = log.nc.jetstream()
    # small and large bodies: a direct get's reply carries the message, its sequence in a header
    seqs = [
        (await js.publish(subject, b"v" * size)).seq
        for subject, size in [
            (s.checkpoint("dGhyZWFkLTE"), 10),
            (s.writes("dGhyZWFkLTI"), 20_000),
            (s.writes("dGhyZWFkLTE"), 16_384),
        ]
    ]
    answers = await log.settle(
        await log.lookup(
            [(one, None), (other, None), (s.thread("bm9uZQ"), None), (one, seqs[0]), (one, seqs[2])]
        )
    )
    assert answers == [seqs[2], seqs[1], 0, seqs[2], 0]
    # the path taken: replies handed over by skialith's own client's reading task, or not
    assert log._lookups._direct == isinstance(log.nc, _Client)
    # many at once, answered each to its own read
    many = [await log.lookup([(one, None), (other, None)]) for _ in range(50)]
    assert [await log.settle(f) for f in many] == [[seqs[2], seqs[1]]] * 50


async def test_a_lookup_the_server_does_not_answer_fails_the_read_after_the_timeout(
    tmp_path: Path, unique: str
) -> None:
    server = NatsServer(store_dir=tmp_path / "nats", port=-1)
    server.start()
    try:
        settings = Settings(
            nats_url=server.url,
            stream=f"SK{unique}".upper(),
            subject_prefix=f"sk{unique}",
            publish_timeout=0.5,
        )
        log = await Log.open(settings, ensure_stream=True)
        try:
            thread = log.subjects.thread("dGhyZWFk")
            assert await log.last_seq(thread) == 0
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)  # the server hangs: no reply comes
            _wait_stopped(server.pid)
            try:
                t0 = time.monotonic()
                with pytest.raises(LogError, match="did not answer a read within 0.5 s"):
                    await log.last_seq(thread)
                assert 0.4 < time.monotonic() - t0 < 3.0
                # a second read, started while the first waited, times out on its own deadline
                first = await log.lookup([(thread, None)])
                await asyncio.sleep(0.3)
                second = await log.lookup([(thread, None)])
                with pytest.raises(LogError):
                    await log.settle(first)
                t1 = time.monotonic()
                with pytest.raises(LogError):
                    await log.settle(second)
                assert 0.1 < time.monotonic() - t1 < 2.0
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert await log.last_seq(thread) == 0  # answered again once the server runs
        finally:
            await log.close()
    finally:
        server.stop()


def _wait_stopped(pid: int) -> None:
    """Wait until the kernel shows ``pid`` stopped: SIGSTOP takes effect asynchronously, and a
    server still running on the other core could answer one more request."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop after SIGSTOP")
