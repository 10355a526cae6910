"""The JetStream side: the bare PubAck floor and the Skialith savers with their projectors.

The floor is what no JetStream-backed saver can beat: a bare nats-py ``js.publish`` of a payload
of the same size on a file-storage stream, returning on the PubAck. The Skialith contenders are
imported lazily, so the rest of the benchmark runs (and says why) while the package is missing.
"""

from __future__ import annotations

import importlib
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from .contender import Contender
from .nats_server import NatsServer
from .projector_proc import ProjectorProcess, Watermark

FLOOR_STREAM = "SKFLOOR"
CATCH_UP_TIMEOUT = 60.0  # seconds to wait for a projection to reach the end of the stream


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
    agent: Any


def load_skialith() -> SkialithApi | str:
    """Import the Skialith API, or return why it cannot be used yet."""
    try:
        mod = importlib.import_module("skialith_langgraph")
    except Exception as exc:
        return f"cannot import skialith_langgraph ({type(exc).__name__}: {exc})"
    names = ("SkialithCheckpointer", "Settings", "Projector", "SkialithAgent")
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        return f"skialith_langgraph does not export {', '.join(missing)} yet"
    return SkialithApi(mod.SkialithCheckpointer, mod.Settings, mod.Projector, mod.SkialithAgent)


def skialith_settings(api: SkialithApi, server: NatsServer, database_url: str, stream: str) -> Any:
    """Build Skialith ``Settings`` for one benchmark stream and read-model database."""
    return api.settings(
        nats_url=server.url, database_url=database_url, stream=stream, subject_prefix=stream.lower()
    )


@dataclass(slots=True)
class SkialithSide:
    """A Skialith contender with what the harness needs to wait for its projection.

    ``reader`` is a second checkpointer on the same stream and database, standing for another
    process: it has no own-writes heads for the contender's threads, so its reads of them are
    served by the read model.
    """

    contender: Contender
    reader: Contender
    server: NatsServer
    stream: str
    watermark: Watermark
    projector: ProjectorProcess

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
    database_url: str,
    watermark: Watermark,
    stream: str,
    workdir: Path,
    db_settings: dict[str, Any],
) -> SkialithSide:
    """Open a Skialith checkpointer on ``server`` with its read model at ``database_url`` (MariaDB or
    PostgreSQL, ``watermark`` polling it), its projector in a subprocess."""
    settings = skialith_settings(api, server, database_url, stream)
    saver = api.checkpointer(settings=settings)
    await saver.asetup()
    stack.push_async_callback(saver.aclose)
    reader = api.checkpointer(settings=settings)
    await reader.asetup()
    stack.push_async_callback(reader.aclose)
    projector = await stack.enter_async_context(
        ProjectorProcess(nats_url=server.url, database_url=database_url, stream=stream, workdir=workdir)
    )
    replicas = getattr(settings, "replicas", 1)
    info = {**nats_settings(server, replicas), **{f"read_model_{k}": v for k, v in db_settings.items()}}
    info["projector"] = "separate process"
    contender = Contender(name, saver, info, skialith=True)
    other = Contender(f"{name} (other instance)", reader, info, skialith=True)
    return SkialithSide(contender, other, server, stream, watermark, projector)


async def stream_last_seq(server: NatsServer, stream: str) -> int:
    """Return the last sequence of ``stream`` on ``server`` (a short-lived connection)."""
    nc = await nats.connect(server.url, name="skbench-probe")
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()


def read_stats(saver: Any) -> dict[str, int]:
    """A snapshot of where a Skialith checkpointer served its reads from (empty if it does not say)."""
    stats = getattr(saver, "read_stats", None)
    if stats is None:
        return {}
    fields = getattr(stats, "__dataclass_fields__", None) or vars(stats)
    return {name: int(getattr(stats, name)) for name in fields}


def describe_reads(name: str, section: str, before: dict[str, int], after: dict[str, int]) -> str | None:
    """A sentence saying where ``name`` served its reads from during ``section``, or None if unknown."""
    delta = {k: after[k] - before.get(k, 0) for k in after}
    if not delta or not any(delta.values()):
        return None
    parts = ", ".join(f"{k}={v}" for k, v in delta.items())
    return f"{name} reads during {section} (from the checkpointer's read_stats): {parts}."
