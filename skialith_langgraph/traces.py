"""Trace ingest: a durable consumer that fills ``skialith_agent_traces`` from the log.

What it records, one row per span:

* LangGraph **tasks** (``source="langgraph"``, ``kind="task"``): which node ran, at which step,
  which channels it wrote, whether it failed or was interrupted, when and for how long.
* LangGraph **checkpoints** (``kind="checkpoint"``): the superstep boundaries; ``name`` is the
  checkpoint's ``source`` (``input``, ``loop``, ``update``, ``fork``), ``channels`` the channels
  whose new values it carries, ``sends`` (JSON ``{"version", "nodes"}``) the nodes its pending
  ``Send`` packets target, with the version of the ``__pregel_tasks`` channel that holds them.
* SkialithAgent **checkpoints** and **events** (``source="agent"``).

Nothing new is published for traces: they are derived from the messages already on the stream.

* A checkpoint message gives ``step``, ``source`` and ``run_id`` (its metadata, decoded with the
  saver's serializer; pass the same ``serde`` as the checkpointer if you changed it).
* A writes message is one task's ``put_writes``: ``task_id``, ``task_path`` and the channel names.
  The node is the last element of a pull task's path (``~__pregel_pull, <node>``); a push task's
  path (``~__pregel_push, <i>``) points at the i-th pending ``Send`` of its checkpoint, whose node
  the checkpoint row keeps in ``sends`` (decoded from the checkpoint's ``__pregel_tasks`` value, or
  taken from its parent when a fork carries that channel unchanged). Writes of ``update_state``
  are named ``__update__``, writes without a task (input, ``Command(resume=...)``) ``__input__``.
* A task ran in the superstep after the checkpoint its writes are attached to:
  ``step = checkpoint step + 1`` (LangGraph's ``langgraph_step``).
* Times are epoch seconds from the writer's clock where the message carries one, else the
  JetStream server's: a LangGraph checkpoint's time is its own ``ts`` (when LangGraph created
  it), a SkialithAgent message's the time of the call; a task's writes carry none, so a task
  finishes at the server timestamp of its (last) writes message. A task starts when its checkpoint
  was created; a checkpoint row spans from its parent checkpoint to itself (the superstep's
  duration); an agent checkpoint of step ``k`` spans from the checkpoint of step ``k - 1`` (or,
  without one, its step's first event), including any time the agent was down in between. Events
  are instants (``started_at = finished_at``). Across machines, clock skew (NTP: milliseconds)
  shows in task durations only; they are clamped at 0.
* Messages may arrive out of order (LangGraph puts a step's writes and the next checkpoint
  concurrently): a task whose checkpoint is not known yet keeps ``step``/``started_at`` empty and
  is completed when that checkpoint arrives. Either order gives the same row.
* ``delete_thread`` and ``delete_for_runs`` delete the matching traces; ``prune`` keeps them
  (history is what traces are for). What a prune stores again (``p.t.<thread>.r``, so that the
  older messages can leave the stream) is skipped: it was traced when it was first written.

Durability is the projector's: a durable pull consumer of its own
(``skialith-traces-<name>-<replica>``), one transaction per fetched batch that takes and advances
the watermark row ``traces-<name>`` in ``skialith_projection`` (so replicas take turns, in stream
order), acknowledgement after the commit. A redelivered message is at or below
the watermark and skipped, and rows are keyed by the span's natural key (``span_key``, a digest of
namespace, kind, checkpoint/step and task/name) and merged, so nothing is counted twice.
``skialith up`` runs one beside the projector.

Example:
    >>> ingest = TraceIngest(Settings())  # doctest: +SKIP
    >>> await ingest.start()             # doctest: +SKIP
    >>> rows = await ingest.traces(thread_id="t-1")  # doctest: +SKIP
    >>> await ingest.stop()              # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from .codec import (
    CheckpointMsg,
    DeleteRunsMsg,
    DeleteThreadMsg,
    EventMsg,
    Msg,
    WritesMsg,
    strict_serde,
    version_key,
)
from .config import Settings
from .consumer import DEFAULT_BATCH_SIZE, DEFAULT_FETCH_TIMEOUT, Consumer, ConsumerStats, _timestamp_ns
from .errors import ProjectionError
from .readmodel.apply import lock_watermark, set_watermark, upsert, watermark
from .readmodel.tables import agent_traces
from .subjects import Subjects, token

logger = logging.getLogger(__name__)

__all__ = [
    "AGENT",
    "LANGGRAPH",
    "Stamped",
    "Trace",
    "TraceIngest",
    "TraceIngestStats",
    "apply_traces",
    "node_name",
    "read_traces",
]

LANGGRAPH = "langgraph"  # source of rows derived from checkpointer messages
AGENT = "agent"  # source of rows derived from SkialithAgent messages
TASK, CHECKPOINT, EVENT = "task", "checkpoint", "event"
DEFAULT_NAME = "main"
_CHUNK = 200
_PULL, _PUSH, _INTERRUPT = "__pregel_pull", "__pregel_push", "__interrupt__"
_TASKS = "__pregel_tasks"
_ERROR = "__error__"

_T = agent_traces.c
Row = dict[str, Any]
Key = tuple[str, str, str]  # (source, trace_key, span_key)
_COLUMNS = [c.name for c in agent_traces.columns]
_UPDATE = [c for c in _COLUMNS if c not in ("source", "trace_key", "span_key")]


@dataclass(frozen=True, slots=True)
class Trace:
    """One row of ``skialith_agent_traces``, as users read it (see the module docstring)."""

    source: str
    trace_id: str
    checkpoint_ns: str
    kind: str
    name: str
    step: int | None
    checkpoint_id: str | None
    parent_checkpoint_id: str | None
    task_id: str | None
    task_path: str | None
    run_id: str | None
    channels: list[str]
    sends: list[str] | None
    status: str
    started_at: float | None
    finished_at: float
    duration: float | None
    seq: int


def span_key(*parts: str) -> str:
    """The digest that keys a span within its trace."""
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=16).hexdigest()


def node_name(task_path: str, sends: Sequence[str] | None = None) -> str:
    """The node a LangGraph task ran, from its ``task_path`` (and its checkpoint's pending sends).

    Returns ``""`` for a push task whose sends are not known (yet).
    """
    if not task_path:
        return "__input__"
    parts = task_path[1:].split(", ") if task_path.startswith("~") else [task_path]
    head = parts[0]
    if head == _PULL and len(parts) >= 2:
        return ", ".join(parts[1:])
    if head == _PUSH:
        # a Send: (PUSH, idx) or (PUSH, idx, False), False printed as 0000000000
        if len(parts) in (2, 3) and parts[1].isdigit() and parts[-1].isdigit():
            idx = int(parts[1])
            return sends[idx] if sends is not None and idx < len(sends) else ""
        return _PUSH  # a functional-API call: the callee is not in the path
    if head == _INTERRUPT:
        return "__update__"
    return head


def _status(channels: Iterable[str]) -> str:
    chans = set(channels)
    if _ERROR in chans:
        return "error"
    if _INTERRUPT in chans:
        return "interrupted"
    return "ok"


def _epoch(iso: Any) -> float | None:
    """Epoch seconds of a LangGraph checkpoint's ``ts`` (ISO 8601), or ``None``."""
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _sends(text: str | None) -> tuple[str | None, list[str]] | None:
    """A checkpoint row's ``sends``: (version of the ``__pregel_tasks`` channel, target nodes)."""
    if not text:
        return None
    value = json.loads(text)
    return value.get("version"), list(value.get("nodes", []))


def _send_nodes(ckpt: Row) -> list[str] | None:
    found = _sends(ckpt["sends"])
    return None if found is None else found[1]


def _duration(row: Row) -> float | None:
    started = row["started_at"]
    return None if started is None else max(0.0, row["finished_at"] - started)


@dataclass(slots=True)
class Stamped:
    """A decoded message with its stream sequence and JetStream (server) timestamp in epoch seconds."""

    seq: int
    ts: float
    msg: Msg


class _Batch:
    """Rows of one transaction: prefetched, merged in memory in log order, upserted at the end."""

    def __init__(self, conn: AsyncConnection, serde: SerializerProtocol) -> None:
        self.conn = conn
        self.serde = serde
        self.rows: dict[Key, Row | None] = {}  # None: known to be absent
        self.dirty: set[Key] = set()
        # task rows by (trace_key, checkpoint_ns, checkpoint_id); agent events by (trace_key, step)
        self.tasks_of: dict[tuple[str, str, str], set[Key]] = {}
        self.events_of: dict[tuple[str, int], set[Key]] = {}
        self._warned = False

    # -- keys ---------------------------------------------------------------------------------

    @staticmethod
    def _lg(msg: CheckpointMsg | WritesMsg) -> tuple[str, str]:
        return token(msg.thread_id, field="thread_id"), token(msg.checkpoint_ns, field="checkpoint_ns")

    @staticmethod
    def _ckpt_key(tk: str, nk: str, checkpoint_id: str) -> Key:
        return (LANGGRAPH, tk, span_key(nk, CHECKPOINT, checkpoint_id))

    @staticmethod
    def _task_key(tk: str, nk: str, checkpoint_id: str, task_id: str) -> Key:
        return (LANGGRAPH, tk, span_key(nk, TASK, checkpoint_id, task_id))

    @staticmethod
    def _agent_key(msg: EventMsg, step: int | None = None, kind: str | None = None, name: str = "") -> Key:
        kind = kind or msg.kind
        return (
            AGENT,
            token(msg.agent_id, field="agent_id"),
            span_key(kind, str(msg.step if step is None else step), msg.name if step is None else name),
        )

    # -- prefetch -----------------------------------------------------------------------------

    async def prefetch(self, items: Sequence[Stamped]) -> None:
        """Load every row the batch may read, in a few queries."""
        keys: set[Key] = set()
        ckpt_ids: set[str] = set()
        agent_steps: set[tuple[str, int]] = set()
        for it in items:
            m = it.msg
            if isinstance(m, CheckpointMsg):
                tk, nk = self._lg(m)
                keys.add(self._ckpt_key(tk, nk, m.checkpoint_id))
                if m.parent_checkpoint_id:
                    keys.add(self._ckpt_key(tk, nk, m.parent_checkpoint_id))
                ckpt_ids.add(m.checkpoint_id)
            elif isinstance(m, WritesMsg):
                tk, nk = self._lg(m)
                keys.add(self._task_key(tk, nk, m.checkpoint_id, m.task_id))
                keys.add(self._ckpt_key(tk, nk, m.checkpoint_id))
            elif isinstance(m, EventMsg):
                keys.add(self._agent_key(m))
                if m.kind == CHECKPOINT:
                    if m.step > 0:
                        keys.add(self._agent_key(m, m.step - 1, CHECKPOINT))
                    agent_steps.add((token(m.agent_id, field="agent_id"), m.step))
        for k in keys:
            self.rows.setdefault(k, None)
        ordered = sorted(keys)
        for i in range(0, len(ordered), _CHUNK):
            cols = tuple_(_T.source, _T.trace_key, _T.span_key)
            await self._load(select(agent_traces).where(cols.in_(ordered[i : i + _CHUNK])))
        ids = sorted(ckpt_ids)
        for i in range(0, len(ids), _CHUNK):  # tasks waiting for these checkpoints
            await self._load(
                select(agent_traces).where(
                    _T.source == LANGGRAPH, _T.kind == TASK, _T.checkpoint_id.in_(ids[i : i + _CHUNK])
                )
            )
        steps = sorted(agent_steps)
        for i in range(0, len(steps), _CHUNK):  # events of the steps whose checkpoints arrive
            await self._load(
                select(agent_traces).where(
                    _T.source == AGENT,
                    _T.kind == EVENT,
                    tuple_(_T.trace_key, _T.step).in_(steps[i : i + _CHUNK]),
                )
            )

    async def _load(self, query: Any) -> None:
        for r in (await self.conn.execute(query)).mappings():
            row = dict(r)
            key = (row["source"], row["trace_key"], row["span_key"])
            self.rows[key] = row
            self._index(key, row)

    def _index(self, key: Key, row: Row) -> None:
        if key[0] == LANGGRAPH and row["kind"] == TASK:
            self.tasks_of.setdefault((key[1], row["checkpoint_ns"], row["checkpoint_id"]), set()).add(key)
        elif key[0] == AGENT and row["kind"] == EVENT:
            self.events_of.setdefault((key[1], row["step"]), set()).add(key)

    # -- apply --------------------------------------------------------------------------------

    def _put(self, key: Key, row: Row) -> None:
        row["source"], row["trace_key"], row["span_key"] = key
        row["duration"] = _duration(row)
        self.rows[key] = row
        self.dirty.add(key)
        self._index(key, row)

    async def add(self, it: Stamped) -> None:
        m = it.msg
        if isinstance(m, CheckpointMsg):
            self._checkpoint(it, m)
        elif isinstance(m, WritesMsg):
            self._writes(it, m)
        elif isinstance(m, EventMsg):
            self._event(it, m)
        elif isinstance(m, DeleteThreadMsg):
            await self.flush()
            tk = token(m.thread_id, field="thread_id")
            await self.conn.execute(delete(agent_traces).where(_T.source == LANGGRAPH, _T.trace_key == tk))
            self._forget(lambda k, _row: k[0] == LANGGRAPH and k[1] == tk)
        elif isinstance(m, DeleteRunsMsg):
            await self.flush()
            runs = [str(r) for r in m.run_ids]
            for i in range(0, len(runs), _CHUNK):
                await self.conn.execute(
                    delete(agent_traces).where(_T.source == LANGGRAPH, _T.run_id.in_(runs[i : i + _CHUNK]))
                )
            wanted = set(runs)
            self._forget(lambda k, row: k[0] == LANGGRAPH and row["run_id"] in wanted)
        # PruneMsg: traces keep the history that pruning drops from the read model

    def _forget(self, match: Any) -> None:
        for k, row in self.rows.items():
            if row is not None and match(k, row):
                self.rows[k] = None

    def _decode(self, typed: tuple[str, bytes]) -> Any:
        try:
            return self.serde.loads_typed(typed)
        except Exception as exc:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "trace ingest cannot decode checkpoint metadata (%s: %s); pass the checkpointer's "
                    "serde to TraceIngest. Steps stay empty for such checkpoints",
                    type(exc).__name__,
                    exc,
                )
            return None

    def _checkpoint(self, it: Stamped, m: CheckpointMsg) -> None:
        tk, nk = self._lg(m)
        meta = self._decode(m.metadata)
        meta = meta if isinstance(meta, dict) else {}
        body = self._decode(m.checkpoint)
        created = _epoch(body.get("ts")) if isinstance(body, dict) else None
        step = meta.get("step")
        # a step the table cannot hold (a forged message) is left empty; its tasks get step + 1
        step = step if type(step) is int and -(2**63) <= step < 2**63 - 1 else None
        parent = (
            self.rows.get(self._ckpt_key(tk, nk, m.parent_checkpoint_id)) if m.parent_checkpoint_id else None
        )
        tasks_version = body.get("channel_versions", {}).get(_TASKS) if isinstance(body, dict) else None
        nodes: list[str] | None = None
        for channel, _, typ, data in m.blobs:
            if channel == _TASKS and typ != "empty":
                packets = self._decode((typ, data))
                if isinstance(packets, list):
                    nodes = [str(getattr(p, "node", "")) for p in packets]
        if nodes is None and parent is not None and tasks_version is not None:
            # a fork or copy carries no value for an unchanged channel: same version, same sends
            inherited = _sends(parent["sends"])
            if inherited is not None and inherited[0] == version_key(tasks_version):
                nodes = inherited[1]
        sends = None
        if nodes is not None:
            version = None if tasks_version is None else version_key(tasks_version)
            sends = json.dumps({"version": version, "nodes": nodes})
        key = self._ckpt_key(tk, nk, m.checkpoint_id)
        self._put(
            key,
            {
                "trace_id": m.thread_id,
                "checkpoint_ns": m.checkpoint_ns,
                "kind": CHECKPOINT,
                "name": str(meta.get("source") or ""),
                "step": step,
                "checkpoint_id": m.checkpoint_id,
                "parent_checkpoint_id": m.parent_checkpoint_id,
                "task_id": None,
                "task_path": None,
                "run_id": m.run_id,
                "channels": json.dumps([b[0] for b in m.blobs]),
                "sends": sends,
                "status": "ok",
                "started_at": parent["finished_at"] if parent else None,
                "finished_at": it.ts if created is None else created,
                "seq": it.seq,
            },
        )
        # tasks of this checkpoint that arrived first
        for k in sorted(self.tasks_of.get((tk, m.checkpoint_ns, m.checkpoint_id), ())):
            row = self.rows.get(k)
            if row is not None:
                self._complete_task(k, row, self.rows[key])

    def _complete_task(self, key: Key, row: Row, ckpt: Row | None) -> None:
        if ckpt is None:
            return
        updated = dict(row)
        if updated["step"] is None and ckpt["step"] is not None:
            updated["step"] = ckpt["step"] + 1
        if updated["started_at"] is None:
            updated["started_at"] = ckpt["finished_at"]
        if updated["run_id"] is None:
            updated["run_id"] = ckpt["run_id"]
        if not updated["name"]:
            updated["name"] = node_name(updated["task_path"] or "", _send_nodes(ckpt))
        if updated != row:
            self._put(key, updated)

    def _writes(self, it: Stamped, m: WritesMsg) -> None:
        tk, nk = self._lg(m)
        key = self._task_key(tk, nk, m.checkpoint_id, m.task_id)
        ckpt = self.rows.get(self._ckpt_key(tk, nk, m.checkpoint_id))
        old = self.rows.get(key)
        new_channels = [w[1] for w in m.writes]
        channels: list[str] = json.loads(old["channels"]) if old else []
        channels += [c for c in dict.fromkeys(new_channels) if c not in channels]
        latest = old is None or it.seq >= old["seq"]
        sends = _send_nodes(ckpt) if ckpt else None
        row: Row = {
            "trace_id": m.thread_id,
            "checkpoint_ns": m.checkpoint_ns,
            "kind": TASK,
            "name": node_name(m.task_path, sends) or (old["name"] if old else ""),
            "step": old["step"] if old else None,
            "checkpoint_id": m.checkpoint_id,
            "parent_checkpoint_id": None,
            "task_id": m.task_id,
            "task_path": m.task_path,
            "run_id": old["run_id"] if old else None,
            "channels": json.dumps(channels),
            "sends": None,
            "status": _status(new_channels) if latest or old is None else old["status"],
            "started_at": old["started_at"] if old else None,
            "finished_at": max(it.ts, old["finished_at"]) if old else it.ts,
            "seq": max(it.seq, old["seq"]) if old else it.seq,
        }
        self._put(key, row)
        self._complete_task(key, row, ckpt)

    def _event(self, it: Stamped, m: EventMsg) -> None:
        started: float | None = m.ts
        if m.kind == CHECKPOINT:
            prev = self.rows.get(self._agent_key(m, m.step - 1, CHECKPOINT)) if m.step > 0 else None
            if prev is not None:
                started = prev["finished_at"]
            else:
                ak = token(m.agent_id, field="agent_id")
                firsts = [
                    row["finished_at"]
                    for k in self.events_of.get((ak, m.step), ())
                    if (row := self.rows.get(k)) is not None
                ]
                started = min(firsts) if firsts else None
        self._put(
            self._agent_key(m),
            {
                "trace_id": m.agent_id,
                "checkpoint_ns": "",
                "kind": m.kind,
                "name": m.name,
                "step": m.step,
                "checkpoint_id": None,
                "parent_checkpoint_id": None,
                "task_id": None,
                "task_path": None,
                "run_id": None,
                "channels": "[]",
                "sends": None,
                "status": "ok",
                "started_at": started,
                "finished_at": m.ts,
                "seq": it.seq,
            },
        )

    async def flush(self) -> None:
        rows = [r for k in sorted(self.dirty) if (r := self.rows[k]) is not None]
        self.dirty.clear()
        if rows:
            await self.conn.execute(
                upsert(self.conn.dialect.name, agent_traces, _UPDATE),
                [{c: r[c] for c in _COLUMNS} for r in rows],
            )


async def apply_traces(
    conn: AsyncConnection,
    items: Sequence[Stamped],
    *,
    serde: SerializerProtocol,
    name: str | None,
    upto: int = 0,
) -> int:
    """Apply stamped messages to ``skialith_agent_traces`` inside the caller's transaction.

    Like :func:`readmodel.apply.apply_messages`: with ``name``, messages at or below that
    watermark are skipped and the watermark advances in the same transaction (to ``upto`` at least).

    Returns:
        The highest sequence applied (0 when nothing was).
    """
    floor = await lock_watermark(conn, name) if name else 0  # replicas take turns, in stream order
    todo = [it for it in items if it.seq > floor]
    batch = _Batch(conn, serde)
    await batch.prefetch(todo)
    top = 0
    for it in todo:
        await batch.add(it)
        top = max(top, it.seq)
    await batch.flush()
    top = max(top, upto)
    if name and top > floor:
        await set_watermark(conn, name, top)
    return top


def _trace(r: Any) -> Trace:
    return Trace(
        source=r.source,
        trace_id=r.trace_id,
        checkpoint_ns=r.checkpoint_ns,
        kind=r.kind,
        name=r.name,
        step=None if r.step is None else int(r.step),
        checkpoint_id=r.checkpoint_id,
        parent_checkpoint_id=r.parent_checkpoint_id,
        task_id=r.task_id,
        task_path=r.task_path,
        run_id=r.run_id,
        channels=json.loads(r.channels),
        sends=None if (found := _sends(r.sends)) is None else found[1],
        status=r.status,
        started_at=r.started_at,
        finished_at=r.finished_at,
        duration=r.duration,
        seq=int(r.seq),
    )


async def read_traces(
    conn: AsyncConnection,
    *,
    thread_id: str | None = None,
    agent_id: str | None = None,
    checkpoint_ns: str | None = None,
    kind: str | None = None,
) -> list[Trace]:
    """Traces by step, then time: every row, or those of one thread and/or one agent.

    Args:
        conn: a connection to the read model.
        thread_id: the LangGraph rows of this thread.
        agent_id: the SkialithAgent rows of this agent.
        checkpoint_ns: only this namespace (``""`` for the root graph).
        kind: only ``"task"``, ``"checkpoint"`` or ``"event"`` rows.
    """
    query = select(agent_traces)
    owners = []
    if thread_id is not None:
        owners.append((LANGGRAPH, token(thread_id, field="thread_id")))
    if agent_id is not None:
        owners.append((AGENT, token(agent_id, field="agent_id")))
    if owners:
        query = query.where(tuple_(_T.source, _T.trace_key).in_(owners))
    if checkpoint_ns is not None:
        query = query.where(_T.checkpoint_ns == checkpoint_ns)
    if kind is not None:
        query = query.where(_T.kind == kind)
    rows = (await conn.execute(query)).all()
    traces = [_trace(r) for r in rows]
    traces.sort(key=lambda t: (t.source, t.trace_id, -1 if t.step is None else t.step, t.finished_at, t.seq))
    return traces


@dataclass(slots=True)
class TraceIngestStats(ConsumerStats):
    """Progress, for logs and metrics."""


class TraceIngest(Consumer[Stamped]):
    """Log -> ``skialith_agent_traces``, beside the :class:`Projector` (same life cycle and loop).

    Args:
        settings: where to connect; default :meth:`Settings.from_env`.
        name: names the watermark (``traces-<name>``) and the durable consumer.
        replica: this replica's id: each has its own durable consumer over the whole stream
            (``skialith-traces-<name>-<replica>``) and batches take turns on the watermark row
            lock, so any number may run, as with the projector.
        serde: the serializer used to read checkpoint metadata and pending sends; by default
            LangGraph's in strict msgpack mode (``codec.strict_serde``), which constructs nothing
            but LangGraph's safe types from what it reads.
        batch_size: messages per fetch and per transaction.
        fetch_timeout: seconds a fetch waits when the stream is idle.
    """

    role = "trace ingest"
    stats: TraceIngestStats

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        name: str = DEFAULT_NAME,
        replica: str = "0",
        serde: SerializerProtocol | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        super().__init__(
            settings, name=name, replica=replica, batch_size=batch_size, fetch_timeout=fetch_timeout
        )
        # strict: the ingest reads every message on the stream, forged ones included; it needs
        # only plain metadata and LangGraph's Send packets, which strict mode still constructs
        self.serde: SerializerProtocol = serde or strict_serde()
        self.stats = TraceIngestStats()
        self._subjects = Subjects(self.settings.subject_prefix)

    @property
    def durable(self) -> str:
        return f"skialith-traces-{self.name}-{self.replica}"

    @property
    def watermark_name(self) -> str:
        """The row of ``skialith_projection`` that holds this ingest's watermark."""
        return f"traces-{self.name}"

    def _wants(self, subject: str) -> bool:
        # what a prune stored again (p.t.<thread>.r) was traced when it was first written
        return not self._subjects.is_replay(subject)

    def _item(self, seq: int, reply: str, msg: Msg) -> Stamped:
        # the server's time, rounded to microseconds as nats-py's Msg.metadata.timestamp rounds it
        ts = datetime.fromtimestamp(_timestamp_ns(reply) / 1e9, UTC).timestamp()
        return Stamped(seq, ts, msg)

    async def _apply(self, conn: AsyncConnection, items: list[Stamped], upto: int) -> int:
        return await apply_traces(conn, items, serde=self.serde, name=self.watermark_name, upto=upto)

    async def catch_up(self, timeout: float = 10.0) -> int:
        """Wait until every message stored before this call is ingested; returns the watermark.

        Raises:
            ProjectionError: the ingest did not get there within ``timeout`` seconds.
        """
        await self.open()
        assert self._log is not None and self._model is not None
        target = await self._log.stream_last_seq()
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            async with self._model.connect() as conn:
                mark = await watermark(conn, self.watermark_name)
            if mark >= target:
                return mark
            if time.monotonic() >= deadline:
                raise ProjectionError(
                    f"trace ingest {self.durable!r} is at seq {mark}, not {target}, after {timeout} s; "
                    "is it running (TraceIngest.start() or 'skialith up')?"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def traces(
        self,
        *,
        thread_id: str | None = None,
        agent_id: str | None = None,
        checkpoint_ns: str | None = None,
        kind: str | None = None,
    ) -> list[Trace]:
        """:func:`read_traces` on this ingest's database (what it has ingested so far)."""
        await self.open()
        assert self._model is not None
        async with self._model.connect() as conn:
            return await read_traces(
                conn, thread_id=thread_id, agent_id=agent_id, checkpoint_ns=checkpoint_ns, kind=kind
            )
