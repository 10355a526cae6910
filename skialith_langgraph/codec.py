"""Pure: LangGraph checkpoints and writes <-> message bodies, using the saver's serializer.

A body is a msgpack map with short keys. Values are serialized by the saver's ``serde``
(``dumps_typed``) before they enter the body, so the projector stores them as opaque
``(type, bytes)`` pairs and never needs the user's classes. Only the channels named in
``new_versions`` travel with a checkpoint; their blobs are keyed by (channel, version),
as LangGraph's Postgres saver stores them.
"""

from __future__ import annotations

import hashlib
import math
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
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from .errors import CodecError, ConfigError
from .subjects import TEXT_MAX

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


# Limits of what the read model can hold (readmodel/tables.py): ids keyed verbatim are VARCHAR(255),
# steps and sequences BIGINT, write indexes INTEGER, type names VARCHAR(64) -- and a value stored in
# parts keeps its type as "parts:<n>:<32 hex digest>:<type>" there, which leaves 18 characters.
MAX_ID = 255
MAX_TYPE = 18
MAX_BIGINT = 2**63 - 1
MAX_INT = 2**31 - 1
RESERVED_TYPE_PREFIX = "parts:"  # the read model's marker of a value stored in parts


def strict_serde() -> JsonPlusSerializer:
    """The default serializer of the checkpointer, the agent and the trace ingest: LangGraph's
    ``JsonPlusSerializer`` in its strict msgpack mode (what ``LANGGRAPH_STRICT_MSGPACK=true``
    gives), which constructs only LangGraph's safe types (``SAFE_MSGPACK_TYPES``: datetimes,
    UUIDs, LangChain messages, ``Send``, ...) and no other callable named in the data, so that
    a message forged on the stream or a row forged in the database cannot run code when read.
    Other types come back as their plain data; allow them with ``with_allowlist([...])`` or
    ``serde=JsonPlusSerializer(allowed_msgpack_modules=[...])``.
    """
    return JsonPlusSerializer(allowed_msgpack_modules=None)


def check_type(typ: str, *, field: str) -> str:
    """Refuse, before anything is published, a serializer type name the read model cannot hold.

    Raises:
        ConfigError: ``typ`` is longer than :data:`MAX_TYPE` or uses the reserved prefix.
    """
    if not isinstance(typ, str) or len(typ) > MAX_TYPE or typ.startswith(RESERVED_TYPE_PREFIX):
        raise ConfigError(
            f"the serializer gave {field} the type name {str(typ)[:40]!r}; the read model stores type "
            f"names of at most {MAX_TYPE} characters that do not start with {RESERVED_TYPE_PREFIX!r}"
        )
    return typ


def _str(v: Any, what: str, limit: int = TEXT_MAX) -> str:
    if type(v) is not str:
        raise CodecError(f"field {what!r} must be a str, got {type(v).__name__}")
    if len(v) > limit:
        raise CodecError(f"field {what!r} is {len(v)} characters long; at most {limit} are stored")
    return v


def _opt_str(v: Any, what: str, limit: int = TEXT_MAX) -> str | None:
    return None if v is None else _str(v, what, limit)


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise CodecError(f"field {what!r} must be bytes, got {type(v).__name__}")
    return v


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if type(v) is not int:
        raise CodecError(f"field {what!r} must be an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise CodecError(f"field {what!r} is {v}, outside [{lo}, {hi}]")
    return v


def _list(v: Any, what: str, width: int | None = None) -> list[Any]:
    if type(v) is not list:
        raise CodecError(f"field {what!r} must be a list, got {type(v).__name__}")
    if width is not None and len(v) != width:
        raise CodecError(f"field {what!r} must have {width} elements, has {len(v)}")
    return v


def _type(v: Any, what: str) -> str:
    typ = _str(v, what, MAX_TYPE)
    if typ.startswith(RESERVED_TYPE_PREFIX):
        raise CodecError(f"field {what!r} uses the reserved type prefix {RESERVED_TYPE_PREFIX!r}")
    return typ


def _typed(v: Any, what: str) -> tuple[str, bytes]:
    pair = _list(v, what, 2)
    return _type(pair[0], f"{what}.type"), _bytes(pair[1], f"{what}.data")


def _items(v: Any, what: str, width: int) -> list[list[Any]]:
    return [_list(x, what, width) for x in _list(v, what)]


def loads(body: bytes) -> Msg:
    """Decode a message body, checking the type and range of every field.

    A body that does not have the exact shape :func:`dumps` gives (an id that is not a str, a
    payload that is not bytes, a step the read model cannot hold, ...) is refused here, so that a
    forged or corrupt message never reaches the database.

    Raises:
        CodecError: the body is not a valid Skialith message.
    """
    try:
        d = ormsgpack.unpackb(body)
    except (ormsgpack.MsgpackDecodeError, ValueError, TypeError) as exc:
        raise CodecError(f"cannot decode a Skialith message body ({len(body)} bytes): {exc}") from exc
    if type(d) is not dict:
        raise CodecError(f"a Skialith message body is a map, got {type(d).__name__} ({len(body)} bytes)")
    try:
        kind = d["k"]
        if kind == "c":
            return CheckpointMsg(
                thread_id=_str(d["t"], "t"),
                checkpoint_ns=_str(d["n"], "n"),
                checkpoint_id=_str(d["i"], "i", MAX_ID),
                parent_checkpoint_id=_opt_str(d["p"], "p", MAX_ID),
                run_id=_opt_str(d["r"], "r", MAX_ID),
                checkpoint=_typed(d["c"], "c"),
                metadata=_typed(d["m"], "m"),
                blobs=[
                    (
                        _str(b[0], "b.channel", MAX_ID),
                        _str(b[1], "b.version", MAX_ID),
                        _type(b[2], "b.type"),
                        _bytes(b[3], "b.data"),
                    )
                    for b in _items(d["b"], "b", 4)
                ],
            )
        if kind == "w":
            return WritesMsg(
                thread_id=_str(d["t"], "t"),
                checkpoint_ns=_str(d["n"], "n"),
                checkpoint_id=_str(d["i"], "i", MAX_ID),
                task_id=_str(d["task"], "task", MAX_ID),
                task_path=_str(d["path"], "path"),
                writes=[
                    (
                        _int(w[0], "w.idx", -MAX_INT - 1, MAX_INT),
                        _str(w[1], "w.channel", MAX_ID),
                        _type(w[2], "w.type"),
                        _bytes(w[3], "w.data"),
                    )
                    for w in _items(d["w"], "w", 4)
                ],
            )
        if kind == "d":
            return DeleteThreadMsg(thread_id=_str(d["t"], "t"))
        if kind == "p":
            return PruneMsg(
                thread_id=_str(d["t"], "t"),
                keep=[
                    (_str(k[0], "keep.ns"), _str(k[1], "keep.id", MAX_ID))
                    for k in _items(d["keep"], "keep", 2)
                ],
                keep_blobs=[
                    (_str(k[0], "kb.ns"), _str(k[1], "kb.channel", MAX_ID), _str(k[2], "kb.version", MAX_ID))
                    for k in _items(d["kb"], "kb", 3)
                ],
            )
        if kind == "r":
            return DeleteRunsMsg(run_ids=[_str(r, "runs", MAX_ID) for r in _list(d["runs"], "runs")])
        if kind == "e":
            event_kind = _str(d["kind"], "kind")
            if event_kind not in ("event", "checkpoint"):
                raise CodecError(f"field 'kind' must be 'event' or 'checkpoint', got {event_kind[:20]!r}")
            ts = d["ts"]
            if type(ts) not in (float, int) or not math.isfinite(ts):
                raise CodecError(f"field 'ts' must be a finite number, got {type(ts).__name__}")
            return EventMsg(
                agent_id=_str(d["a"], "a"),
                kind=event_kind,
                name=_str(d["name"], "name", MAX_ID),
                step=_int(d["s"], "s", 0, MAX_BIGINT),
                payload=_typed(d["v"], "v"),
                ts=float(ts),
            )
    except KeyError as exc:
        raise CodecError(f"a Skialith message body ({len(body)} bytes) lacks the field {exc}") from None
    except TypeError as exc:  # unhashable kind
        raise CodecError(f"cannot decode a Skialith message body ({len(body)} bytes): {exc}") from exc
    raise CodecError(f"unknown Skialith message kind {str(kind)[:20]!r}")


def msg_id(key: str) -> str:
    """``Nats-Msg-Id`` for one publish: the natural key and a random nonce.

    The id is unique to the call. JetStream drops a message whose id it saw inside its duplicate
    window, even when that message was purged since (a deleted thread) or superseded (A, B, A to
    one key): an id derived from the key and body alone made such a write vanish while the call
    reported success. Idempotency is the projector's: it upserts one row per natural key, so a
    retried call leaves one row (two messages). The key comes first to help debugging. (A digest
    of the body used to follow it: ~20 us per 16 KiB on every write, for nothing the nonce does
    not give.)
    """
    if len(key) > 200:
        key = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{key}:{os.urandom(12).hex()}"


def natural_key(message_id: str) -> str:
    """The natural key a :func:`msg_id` starts with (for logs and tests)."""
    return message_id.rsplit(":", 2)[0]
