"""Pure: LangGraph checkpoints and writes <-> message bodies, using the saver's serializer.

A body is a msgpack map with short keys. Values are serialized by the saver's ``serde``
(``dumps_typed``) before they enter the body, so the projector stores them as opaque
``(type, bytes)`` pairs and never needs the user's classes. Only the channels named in
``new_versions`` travel with a checkpoint; their blobs are keyed by (channel, version),
as LangGraph's Postgres saver stores them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from .errors import CodecError

FORMAT = 1


@dataclass(slots=True)
class CheckpointMsg:
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    run_id: str | None
    checkpoint: tuple[str, bytes]
    metadata: tuple[str, bytes]
    blobs: list[tuple[str, str, str, bytes]]  # channel, version, type, bytes


@dataclass(slots=True)
class WritesMsg:
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    task_path: str
    writes: list[tuple[int, str, str, bytes]]  # idx, channel, type, bytes


@dataclass(slots=True)
class DeleteThreadMsg:
    thread_id: str


@dataclass(slots=True)
class PruneMsg:
    """Delete every checkpoint of a thread except ``keep``; blobs except ``keep_blobs``."""

    thread_id: str
    keep: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint_ns, checkpoint_id)
    keep_blobs: list[tuple[str, str, str]] = field(default_factory=list)  # (ns, channel, version)


@dataclass(slots=True)
class DeleteRunsMsg:
    run_ids: list[str]


@dataclass(slots=True)
class EventMsg:
    """A SkialithAgent event or checkpoint."""

    agent_id: str
    kind: str  # "event" or "checkpoint"
    name: str
    step: int
    payload: tuple[str, bytes]
    ts: float


Msg = CheckpointMsg | WritesMsg | DeleteThreadMsg | PruneMsg | DeleteRunsMsg | EventMsg


def version_key(version: str | int | float) -> str:
    """The text form under which a channel version keys its blob."""
    return version if isinstance(version, str) else repr(version)


def encode_checkpoint(
    serde: SerializerProtocol,
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    new_versions: ChannelVersions,
) -> CheckpointMsg:
    """Serialize one ``put``. Raises whatever the serializer raises, before anything is sent."""
    conf = config["configurable"]
    c: dict[str, Any] = dict(checkpoint)
    values: dict[str, Any] = c.pop("channel_values")
    blobs = [
        (
            channel,
            version_key(version),
            *(serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")),
        )
        for channel, version in new_versions.items()
    ]
    meta = get_checkpoint_metadata(config, metadata)
    run_id = meta.get("run_id")
    return CheckpointMsg(
        thread_id=conf["thread_id"],
        checkpoint_ns=conf.get("checkpoint_ns", ""),
        checkpoint_id=checkpoint["id"],
        parent_checkpoint_id=conf.get("checkpoint_id"),
        run_id=str(run_id) if run_id is not None else None,
        checkpoint=serde.dumps_typed(c),
        metadata=serde.dumps_typed(meta),
        blobs=blobs,
    )


def encode_writes(
    serde: SerializerProtocol,
    config: RunnableConfig,
    writes: Sequence[tuple[str, Any]],
    task_id: str,
    task_path: str,
) -> WritesMsg:
    """Serialize one ``put_writes``; special channels get LangGraph's negative indexes."""
    conf = config["configurable"]
    return WritesMsg(
        thread_id=conf["thread_id"],
        checkpoint_ns=conf.get("checkpoint_ns", ""),
        checkpoint_id=conf["checkpoint_id"],
        task_id=task_id,
        task_path=task_path,
        writes=[
            (WRITES_IDX_MAP.get(ch, idx), ch, *serde.dumps_typed(value))
            for idx, (ch, value) in enumerate(writes)
        ],
    )


def dumps(msg: Msg) -> bytes:
    """Encode a message body."""
    d: dict[str, Any]
    if isinstance(msg, CheckpointMsg):
        d = {
            "k": "c",
            "t": msg.thread_id,
            "n": msg.checkpoint_ns,
            "i": msg.checkpoint_id,
            "p": msg.parent_checkpoint_id,
            "r": msg.run_id,
            "c": list(msg.checkpoint),
            "m": list(msg.metadata),
            "b": [list(b) for b in msg.blobs],
        }
    elif isinstance(msg, WritesMsg):
        d = {
            "k": "w",
            "t": msg.thread_id,
            "n": msg.checkpoint_ns,
            "i": msg.checkpoint_id,
            "task": msg.task_id,
            "path": msg.task_path,
            "w": [list(w) for w in msg.writes],
        }
    elif isinstance(msg, DeleteThreadMsg):
        d = {"k": "d", "t": msg.thread_id}
    elif isinstance(msg, PruneMsg):
        d = {
            "k": "p",
            "t": msg.thread_id,
            "keep": [list(k) for k in msg.keep],
            "kb": [list(k) for k in msg.keep_blobs],
        }
    elif isinstance(msg, DeleteRunsMsg):
        d = {"k": "r", "runs": list(msg.run_ids)}
    elif isinstance(msg, EventMsg):
        d = {
            "k": "e",
            "a": msg.agent_id,
            "kind": msg.kind,
            "name": msg.name,
            "s": msg.step,
            "v": list(msg.payload),
            "ts": msg.ts,
        }
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"not a message: {msg!r}")
    d["f"] = FORMAT
    return ormsgpack.packb(d)


def loads(body: bytes) -> Msg:
    """Decode a message body.

    Raises:
        CodecError: the body is not a Skialith message.
    """
    try:
        d = ormsgpack.unpackb(body)
        kind = d["k"]
        if kind == "c":
            return CheckpointMsg(
                thread_id=d["t"],
                checkpoint_ns=d["n"],
                checkpoint_id=d["i"],
                parent_checkpoint_id=d["p"],
                run_id=d["r"],
                checkpoint=(d["c"][0], d["c"][1]),
                metadata=(d["m"][0], d["m"][1]),
                blobs=[(b[0], b[1], b[2], b[3]) for b in d["b"]],
            )
        if kind == "w":
            return WritesMsg(
                thread_id=d["t"],
                checkpoint_ns=d["n"],
                checkpoint_id=d["i"],
                task_id=d["task"],
                task_path=d["path"],
                writes=[(w[0], w[1], w[2], w[3]) for w in d["w"]],
            )
        if kind == "d":
            return DeleteThreadMsg(thread_id=d["t"])
        if kind == "p":
            return PruneMsg(
                thread_id=d["t"],
                keep=[(k[0], k[1]) for k in d["keep"]],
                keep_blobs=[(k[0], k[1], k[2]) for k in d["kb"]],
            )
        if kind == "r":
            return DeleteRunsMsg(run_ids=list(d["runs"]))
        if kind == "e":
            return EventMsg(
                agent_id=d["a"],
                kind=d["kind"],
                name=d["name"],
                step=d["s"],
                payload=(d["v"][0], d["v"][1]),
                ts=d["ts"],
            )
    except (KeyError, IndexError, TypeError, ValueError, ormsgpack.MsgpackDecodeError) as exc:
        raise CodecError(f"cannot decode a Skialith message body ({len(body)} bytes): {exc}") from exc
    raise CodecError(f"unknown Skialith message kind {kind!r}")


def msg_id(key: str, body: bytes) -> str:
    """``Nats-Msg-Id`` for one publish: the natural key, a digest of the body, a random nonce.

    The id is unique to the call. JetStream drops a message whose id it saw inside its duplicate
    window, even when that message was purged since (a deleted thread) or superseded (A, B, A to
    one key): an id derived from the key and body alone made such a write vanish while the call
    reported success. Idempotency is the projector's: it upserts one row per natural key, so a
    retried call leaves one row (two messages). The key comes first to help debugging.
    """
    digest = hashlib.blake2b(body, digest_size=12).hexdigest()
    if len(key) > 200:
        key = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{key}:{digest}:{os.urandom(8).hex()}"


def natural_key(message_id: str) -> str:
    """The natural key a :func:`msg_id` starts with (for logs and tests)."""
    return message_id.rsplit(":", 2)[0]
