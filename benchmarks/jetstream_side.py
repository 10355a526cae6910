"""The JetStream side: the bare PubAck floor and the Skialith savers with their projectors.

The floor is what no JetStream-backed saver can beat: a bare nats-py ``js.publish`` of a payload
of the same size on a file-storage stream, returning on the PubAck. The Skialith contenders are
imported lazily, so the rest of the benchmark runs (and says why) while the package is missing.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from .contender import Contender
from .databases import MySQLTarget
from .nats_server import NatsServer
from .projector_proc import ProjectorProcess, Watermark

FLOOR_STREAM = "SKFLOOR"
CATCH_UP_TIMEOUT = 60.0  # seconds to wait for a projector to reach the end of the stream


@dataclass(slots=True)
class Floor:
    """A bare JetStream publisher on a file-storage stream of one replica."""

    nc: Client
    js: JetStreamContext
    subject: str
    settings: dict[str, Any]

    async def publish(self, payload: bytes) -> None:
        """Publish and wait for the PubAck."""
        await self.js.publish(self.subject, payload)


def nats_settings(server: NatsServer, replicas: int) -> dict[str, Any]:
    """The JetStream durability settings in force, as reported by the server, plus replicas."""
    js = server.jetstream_settings()
    interval = "always (fsync before every PubAck)" if js["sync_always"] else f"{js['sync_interval_s']:g} s"
    return {"nats_server": js["version"], "jetstream_sync_interval": interval, "stream_replicas": replicas}


async def open_floor(stack: AsyncExitStack, server: NatsServer) -> Floor:
    """Connect to ``server`` and create the floor stream (file storage, R1)."""
    nc = await nats.connect(server.url, name="skbench-floor")
    stack.push_async_callback(nc.close)
    js = nc.jetstream()
    info = await js.add_stream(
        StreamConfig(name=FLOOR_STREAM, subjects=["skfloor.>"], storage=StorageType.FILE, num_replicas=1)
    )
    replicas = info.config.num_replicas or 1
    return Floor(nc, js, "skfloor.bench", nats_settings(server, replicas))


@dataclass(frozen=True, slots=True)
class SkialithApi:
    """The public names the benchmark needs from ``skialith_langgraph``."""

    checkpointer: Any
    settings: Any
    projector: Any


def load_skialith() -> SkialithApi | str:
    """Import the Skialith API, or return why it cannot be used yet."""
    try:
        mod = importlib.import_module("skialith_langgraph")
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip the contender
        return f"cannot import skialith_langgraph ({type(exc).__name__}: {exc})"
    missing = [n for n in ("SkialithCheckpointer", "Settings", "Projector") if not hasattr(mod, n)]
    if missing:
        return f"skialith_langgraph does not export {', '.join(missing)} yet"
    return SkialithApi(mod.SkialithCheckpointer, mod.Settings, mod.Projector)


def skialith_settings(api: SkialithApi, server: NatsServer, database_url: str, stream: str) -> Any:
    """Build Skialith ``Settings`` for one benchmark stream and read-model database."""
    return api.settings(
        nats_url=server.url, database_url=database_url, stream=stream, subject_prefix=stream.lower()
    )


async def start_projector(stack: AsyncExitStack, api: SkialithApi, settings: Any, **kwargs: Any) -> Any:
    """Start a projector as a task on this loop; it is stopped when ``stack`` closes."""
    projector = api.projector(settings, **kwargs)
    await projector.start()
    stack.push_async_callback(projector.stop)
    return projector


@dataclass(slots=True)
class SkialithSide:
    """A Skialith contender with what the harness needs to wait for its projection."""

    contender: Contender
    server: NatsServer
    stream: str
    watermark: Watermark

    async def caught_up(self, timeout: float = CATCH_UP_TIMEOUT) -> float:
        """Wait until the projection has applied everything on the stream; return the seconds waited."""
        last = await stream_last_seq(self.server, self.stream)
        return await self.watermark.wait_for(last, timeout=timeout)


async def open_skialith(
    stack: AsyncExitStack,
    api: SkialithApi,
    *,
    name: str,
    server: NatsServer,
    mysql: MySQLTarget,
    db: str,
    stream: str,
    workdir: Path,
    db_settings: dict[str, Any],
) -> SkialithSide:
    """Open a Skialith checkpointer on ``server`` with a MariaDB read model, projector in a subprocess."""
    database_url = mysql.url(db)
    settings = skialith_settings(api, server, database_url, stream)
    saver = api.checkpointer(settings=settings)
    await saver.asetup()
    stack.push_async_callback(saver.aclose)
    await stack.enter_async_context(
        ProjectorProcess(nats_url=server.url, database_url=database_url, stream=stream, workdir=workdir)
    )
    watermark = Watermark(mysql, db)
    stack.callback(watermark.close)
    replicas = getattr(settings, "replicas", 1)
    info = {**nats_settings(server, replicas), **{f"read_model_{k}": v for k, v in db_settings.items()}}
    info["projector"] = "separate process"
    return SkialithSide(Contender(name, saver, info, skialith=True), server, stream, watermark)


async def wait_caught_up(projector: Any, stream_last_seq: int, timeout: float = CATCH_UP_TIMEOUT) -> float:
    """Wait until ``projector`` has applied the stream up to ``stream_last_seq``; return the seconds waited.

    Raises:
        TimeoutError: the projector did not get there within ``timeout`` seconds.
    """
    start = time.monotonic()
    while projector.stats.last_seq < stream_last_seq:
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"projector at seq {projector.stats.last_seq} did not reach {stream_last_seq} in {timeout} s"
            )
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def stream_last_seq(server: NatsServer, stream: str) -> int:
    """Return the last sequence of ``stream`` on ``server`` (a short-lived connection)."""
    nc = await nats.connect(server.url, name="skbench-probe")
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()
