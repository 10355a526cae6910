"""``skialith up --cluster 3``: three clustered nats-servers and an R3 stream on one machine.

It prints every node's URL; a checkpoint written there is stored on three replicas; SIGTERM stops
the nodes cleanly (exit 0) and keeps their stores (a second start finds the checkpoint); a second
``up`` on the same home is refused while one runs; and ``kill -9`` of ``up`` leaves no nats-server
behind (each node dies with it).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from skialith_langgraph import SkialithCheckpointer
from tests.test_cli import STOP_TIMEOUT, Run, _gone, cli_runner

pytestmark = [pytest.mark.slow, pytest.mark.nats]


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    yield from cli_runner(tmp_path)


def node_pids(home: Path) -> list[int]:
    """The nats-server pid each node's store lock names ("pid X and its nats-server pid Y")."""
    pids = []
    for lock in sorted((home / "cluster").glob("n*/skialith.lock")):
        found = re.search(r"nats-server pid (\d+)", lock.read_text())
        assert found, lock.read_text()
        pids.append(int(found.group(1)))
    return pids


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < deadline, f"nats-servers still running: {[p for p in pids if not _gone(p)]}"
        time.sleep(0.05)


def test_up_cluster_3_serves_an_r3_stream_stops_cleanly_and_leaves_no_orphan(
    run_cli: Callable[..., Run], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    up = run_cli("up", "--cluster", "3", "--nats-port", "0", "--home", str(home))
    up.wait_for("Press Ctrl-C to stop.")
    urls = up.wait_for(r"export SKIALITH_NATS_URL=(\S+)").group(1).split(",")
    assert len(urls) == 3 and all(re.fullmatch(r"nats://127\.0\.0\.1:\d+", u) for u in urls), urls
    token = (home / "nats.token").read_text().strip()
    pids = node_pids(home)
    assert len(set(pids)) == 3 and not any(_gone(p) for p in pids)

    config: Any = {"configurable": {"thread_id": "up-cluster", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    database_url = f"sqlite+aiosqlite:///{home / 'skialith.db'}"
    with SkialithCheckpointer(nats_url=",".join(urls), database_url=database_url, nats_token=token) as saver:
        saver.put(config, checkpoint, {"source": "input", "step": -1, "parents": {}}, {})

    async def replicas() -> int:
        nc = await nats.connect(servers=urls, token=token)
        try:
            info = await nc.jetstream().stream_info("SKIALITH")
            return int(info.config.num_replicas)
        finally:
            await nc.close()

    assert asyncio.run(replicas()) == 3

    up.proc.send_signal(signal.SIGTERM)
    assert up.wait(STOP_TIMEOUT + 10) == 0, up.describe()
    wait_gone(pids)

    again = run_cli("up", "--cluster", "3", "--nats-port", "0", "--home", str(home))
    again.wait_for("Press Ctrl-C to stop.")
    urls = again.wait_for(r"export SKIALITH_NATS_URL=(\S+)").group(1).split(",")
    with SkialithCheckpointer(nats_url=",".join(urls), database_url=database_url, nats_token=token) as saver:
        found = saver.get_tuple(config)
        assert found is not None and found.checkpoint["id"] == checkpoint["id"]
    refused = run_cli("up", "--cluster", "3", "--nats-port", "0", "--home", str(home))
    assert refused.wait(60) != 0 and "in use" in refused.err, refused.describe()

    pids = node_pids(home)
    again.proc.kill()  # kill -9: no cleanup runs in 'up'
    again.proc.wait()
    wait_gone(pids)
