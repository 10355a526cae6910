"""See what an agent did: list threads, a thread's history, the state at a checkpoint, diffs, the
audit trail of its stream messages, and a lossless export/import.

Every read goes through the checkpointer's own read path (``aget_tuple``, ``alist`` and the
consistent view behind them), so it sees every acknowledged write and answers from the log when
the projector lags or is stopped. Values are decoded with the checkpointer's serializer (strict by
default: only LangGraph's safe types are constructed).

Example:
    >>> from skialith_langgraph.inspect import Inspector
    >>> async with Inspector.open(settings) as insp:  # doctest: +SKIP
    ...     page = await insp.threads(limit=20)
    ...     for entry in await insp.history("t-1"):
    ...         print(entry.step, entry.source, entry.nodes)
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple
from sqlalchemy import and_, case, func, or_, select

from . import codec
from .agent import CHECKPOINT as AGENT_CHECKPOINT
from .checkpointer import SkialithCheckpointer
from .codec import strict_serde
from .config import Settings
from .errors import CodecError, SkialithError
from .readmodel import queries
from .readmodel.tables import agent_events, checkpoints
from .subjects import token
from .views import consistent_view

ERROR = "__error__"
INTERRUPT = "__interrupt__"
TASKS = "__pregel_tasks"
START = "__start__"
BRANCH = "branch:to:"
EXPORT_FORMAT = "skialith-export"
EXPORT_VERSION = 1

THREAD = "thread"  # a ThreadSummary's kind: a LangGraph thread
AGENT = "agent"  # a SkialithAgent agent

PARENT_KEY = "parent_thread_id"  # checkpoint metadata naming the thread a thread was started from

_C = checkpoints.c
_E = agent_events.c


class InspectError(SkialithError):
    """An unknown thread or checkpoint, or a file that cannot be imported."""


# -- values as JSON ---------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: messages and pydantic models as dicts, bytes as base64,
    anything else unknown as its ``repr``. Never raises."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    if isinstance(value, bytes | bytearray):
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump())
        except Exception:  # a model that cannot dump itself is shown by repr
            return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "node") and hasattr(value, "arg"):  # a Send
        return {"node": jsonable(value.node), "arg": jsonable(value.arg)}
    return repr(value)


def _is_message(value: Any) -> bool:
    return (
        hasattr(value, "content") and hasattr(value, "type") and callable(getattr(value, "model_dump", None))
    )


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_message(v) for v in value)


def message_line(message: Any) -> dict[str, Any]:
    """A message as ``{"id", "role", "content"}`` (plus tool calls when it has some)."""
    out: dict[str, Any] = {
        "id": getattr(message, "id", None),
        "role": getattr(message, "type", "?"),
        "content": jsonable(getattr(message, "content", None)),
    }
    calls = getattr(message, "tool_calls", None)
    if calls:
        out["tool_calls"] = jsonable(calls)
    return out


# -- status and next nodes ---------------------------------------------------------------------


def next_nodes(checkpoint: dict[str, Any]) -> list[str]:
    """The nodes LangGraph would run next from ``checkpoint``, computed without the graph.

    LangGraph triggers node ``X`` through the channel ``branch:to:X`` (and the graph's start
    through ``__start__``): a node is due when that channel holds a value and its version is newer
    than the version the node saw last (``versions_seen``), as ``prepare_next_tasks`` decides.
    Pending ``Send``s (``__pregel_tasks``) name their nodes. Tasks that already wrote are still
    listed (which task ran is not recorded with the node's name).
    """
    versions: dict[str, Any] = checkpoint.get("channel_versions", {}) or {}
    seen: dict[str, dict[str, Any]] = checkpoint.get("versions_seen", {}) or {}
    values: dict[str, Any] = checkpoint.get("channel_values", {}) or {}
    due: list[str] = []
    for channel in values:  # a trigger channel holds a value until the task it triggers consumed it
        if channel.startswith(BRANCH):
            node = channel[len(BRANCH) :]
        elif channel == START:
            node = START
        else:
            continue
        if _newer(versions.get(channel), seen.get(node, {}).get(channel)):
            due.append(node)
    sends = values.get(TASKS)
    if isinstance(sends, list):
        due.extend(str(getattr(s, "node", "?")) for s in sends)
    return sorted(set(due))


def _newer(version: Any, seen: Any) -> bool:
    if seen is None:
        return True
    if type(version) is type(seen):
        return bool(version > seen)
    return str(version) > str(seen)


@dataclasses.dataclass(slots=True)
class Status:
    """Where a thread stands at a checkpoint."""

    state: str  # "finished", "interrupted", "errored" or "next"
    next: list[str]
    interrupts: list[Any]
    errors: list[Any]

    def label(self) -> str:
        return f"next: {', '.join(self.next)}" if self.state == "next" else self.state


def status_of(tup: CheckpointTuple) -> Status:
    writes = tup.pending_writes or []
    errors = [jsonable(v) for _, ch, v in writes if ch == ERROR]
    interrupts = [  # one write of a task holds the list of its interrupts
        jsonable(i)
        for _, ch, v in writes
        if ch == INTERRUPT
        for i in (v if isinstance(v, list | tuple) else [v])
    ]
    nxt = next_nodes(dict(tup.checkpoint))
    if errors:
        state = "errored"
    elif interrupts:
        state = "interrupted"
    else:
        state = "next" if nxt else "finished"
    return Status(state, nxt, interrupts, errors)


# -- entries -------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class ThreadSummary:
    thread_id: str
    checkpoints: int
    last_seq: int
    last_step: int | None
    last_activity: str | None
    status: str  # an agent's: "resumable" (it has a checkpoint) or "no checkpoint" (events only)
    next: list[str]  # an agent's: the step its resume() returns
    kind: str = "thread"  # "thread" (LangGraph) or "agent" (SkialithAgent)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _AgentRow(NamedTuple):
    agent_id: str
    checkpoints: int
    last_seq: int
    key: str
    last_step: int | None
    ts: float | None  # epoch seconds of its last save, the agent's clock

    def summary(self) -> ThreadSummary:
        when = None if self.ts is None else dt.datetime.fromtimestamp(self.ts, dt.UTC).isoformat()
        state = "no checkpoint" if self.last_step is None else "resumable"
        nxt = [] if self.last_step is None else [f"step {self.last_step + 1}"]
        return ThreadSummary(
            self.agent_id, self.checkpoints, self.last_seq, self.last_step, when, state, nxt, AGENT
        )


@dataclasses.dataclass(slots=True)
class ThreadPage:
    threads: list[ThreadSummary]
    cursor: str | None  # pass as ``after`` for the next page; None: no more

    def as_dict(self) -> dict[str, Any]:
        return {"threads": [t.as_dict() for t in self.threads], "next_cursor": self.cursor}


@dataclasses.dataclass(slots=True)
class HistoryEntry:
    checkpoint_id: str
    parent_checkpoint_id: str | None
    step: int | None
    source: str | None
    nodes: list[str]
    ts: str | None
    duration: float | None  # seconds since the parent checkpoint
    pending_writes: int
    interrupts: list[Any]
    errors: list[Any]
    fork: bool  # its parent is not the checkpoint listed before it: a branch starts here

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ts(tup: CheckpointTuple) -> str | None:
    ts = tup.checkpoint.get("ts")
    return ts if isinstance(ts, str) else None


def _seconds(a: str | None, b: str | None) -> float | None:
    try:
        return (dt.datetime.fromisoformat(b or "") - dt.datetime.fromisoformat(a or "")).total_seconds()
    except ValueError:
        return None


def parse_since(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``30s``, ``15m``, ``2h``, ``7d`` ago, or an ISO 8601 time (UTC when it names no zone)."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=float(m.group(1)) * unit)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise InspectError(f"--since {text!r}: give a duration such as 2h or 7d, or an ISO time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def writers(tup: CheckpointTuple, parent: CheckpointTuple | None) -> list[str]:
    """The nodes whose run produced ``tup``: those whose ``versions_seen`` changed since its
    parent (the input for an input checkpoint)."""
    source = tup.metadata.get("source") if tup.metadata else None
    if source == "input":
        return ["input"]
    if source == "update":
        return ["update_state"]
    seen = tup.checkpoint.get("versions_seen", {}) or {}
    before = (parent.checkpoint.get("versions_seen", {}) or {}) if parent else {}
    return sorted(n for n, v in seen.items() if v != before.get(n) and n != INTERRUPT)


# -- diffs -------------------------------------------------------------------------------------


def structural_diff(a: Any, b: Any, path: str = "") -> list[dict[str, Any]]:
    """The changes from ``a`` to ``b`` (JSON data): ``{"path", "op", "old", "new"}`` each."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[dict[str, Any]] = []
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append({"path": p, "op": "added", "new": b[k]})
            elif k not in b:
                out.append({"path": p, "op": "removed", "old": a[k]})
            else:
                out.extend(structural_diff(a[k], b[k], p))
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i in range(max(len(a), len(b))):
            p = f"{path}[{i}]"
            if i >= len(a):
                out.append({"path": p, "op": "added", "new": b[i]})
            elif i >= len(b):
                out.append({"path": p, "op": "removed", "old": a[i]})
            else:
                out.extend(structural_diff(a[i], b[i], p))
        return out
    if a != b:
        return [{"path": path, "op": "changed", "old": a, "new": b}]
    return []


def messages_diff(a: Sequence[Any], b: Sequence[Any]) -> dict[str, list[Any]]:
    """Messages added, removed and edited (same id, other content), by message id."""
    left = {m.get("id") or f"#{i}": m for i, m in enumerate(message_line(x) for x in a)}
    right = {m.get("id") or f"#{i}": m for i, m in enumerate(message_line(x) for x in b)}
    return {
        "added": [m for k, m in right.items() if k not in left],
        "removed": [m for k, m in left.items() if k not in right],
        "edited": [
            {"id": k, "old": left[k], "new": m} for k, m in right.items() if k in left and left[k] != m
        ],
    }


def channel_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per channel of two states' values: ``added``, ``removed`` or ``changed`` (with a
    messages diff for lists of messages, else a structural diff)."""
    out: dict[str, Any] = {}
    for ch in sorted(set(a) | set(b)):
        if ch not in a:
            out[ch] = {"op": "added", "new": jsonable(b[ch])}
        elif ch not in b:
            out[ch] = {"op": "removed", "old": jsonable(a[ch])}
        elif _is_messages(a[ch]) or _is_messages(b[ch]):
            md = messages_diff(a[ch] or [], b[ch] or [])
            if any(md.values()):
                out[ch] = {"op": "changed", "messages": md}
        else:
            changes = structural_diff(jsonable(a[ch]), jsonable(b[ch]))
            if changes:
                out[ch] = {"op": "changed", "changes": changes}
    return out


def namespace_tree(counts: dict[str, int]) -> dict[str, Any]:
    """Namespaces (``checkpoint_ns`` -> checkpoint count) as a tree under the root ``""``: a
    namespace ``a:t1|b:t2`` is a child of ``a:t1``; a parent with no checkpoint of its own is
    shown with 0."""
    nodes: dict[str, dict[str, Any]] = {}

    def node(ns: str) -> dict[str, Any]:
        if ns not in nodes:
            last = ns.rsplit("|", 1)[-1]
            nodes[ns] = {"ns": ns, "node": last.split(":", 1)[0], "checkpoints": 0, "children": []}
            if ns:
                node(ns.rsplit("|", 1)[0] if "|" in ns else "")["children"].append(nodes[ns])
        return nodes[ns]

    root = node("")
    for ns in sorted(counts):
        node(ns)["checkpoints"] = counts[ns]
    return root


# -- the inspector -------------------------------------------------------------------------------


def _config(thread_id: str, checkpoint_id: str | None = None, ns: str = "") -> RunnableConfig:
    conf: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ns}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Inspector:
    """Read-only views of a deployment's threads (and export/import), over a checkpointer."""

    def __init__(self, checkpointer: SkialithCheckpointer) -> None:
        self.checkpointer = checkpointer
        self.meta_serde = strict_serde()  # metadata never needs more than LangGraph's safe types

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Inspector]:
        """An inspector with a checkpointer of its own, closed at the end."""
        async with SkialithCheckpointer(settings=settings) as saver:
            yield cls(saver)

    async def checkpoint_tuple(
        self, thread_id: str, checkpoint_id: str | None = None, ns: str = ""
    ) -> CheckpointTuple:
        """The checkpoint (the latest when ``checkpoint_id`` is None); InspectError if unknown."""
        tup = await self.checkpointer.aget_tuple(_config(thread_id, checkpoint_id, ns))
        if tup is None:
            if checkpoint_id is None:
                raise InspectError(f"no thread {thread_id!r} (no checkpoint is stored for it)")
            raise InspectError(f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}")
        return tup

    # -- threads

    async def threads(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        since: dt.datetime | None = None,
        status: str | None = None,
        metadata: dict[str, Any] | None = None,
        kind: str | None = None,
    ) -> ThreadPage:
        """LangGraph threads and SkialithAgent agents, most recently written first, ``limit`` per
        page (keyset paging in SQL on the stream sequence of each one's last checkpoint, or an
        agent's last checkpoint or event; ``after`` is the cursor of the previous page).
        ``kind`` keeps only ``"thread"`` or ``"agent"`` entries. ``status`` is one of finished /
        interrupted / errored / next; ``metadata`` matches the latest checkpoint's metadata; both
        are LangGraph's, so either leaves agents out. ``since`` keeps entries active since then
        (a checkpoint's ts; an agent's last save, by its clock).
        """
        if kind not in (None, THREAD, AGENT):
            raise InspectError(f"kind must be {THREAD!r}, {AGENT!r} or None, got {kind!r}")
        cursor = _parse_cursor(after)
        out: list[ThreadSummary] = []
        page = max(limit, 1)
        agents = kind != THREAD and status is None and not metadata
        while len(out) < limit:
            rows: list[tuple[str, int, int, str, CheckpointTuple | None] | _AgentRow] = []
            # the two pages are read side by side (each waits on NATS and the database)
            threads_page, agents_page = await asyncio.gather(
                self._thread_rows(cursor, page) if kind != AGENT else _nothing(),
                self._agent_rows(cursor, page) if agents else _nothing(),
            )
            rows.extend(threads_page)
            if agents:  # merged by sequence: the top ``page`` of both lists' top ``page``s
                rows = sorted([*rows, *agents_page], key=lambda r: (-r[2], r[3]))
                rows = rows[:page]
            for row in rows:
                thread_id, count, last_seq, key = row[:4]
                cursor = (last_seq, key)
                if isinstance(row, _AgentRow):
                    if since is not None and row.ts is not None and row.ts < since.timestamp():
                        return ThreadPage(out, None)
                    out.append(row.summary())
                    if len(out) >= limit:
                        return ThreadPage(out, f"{last_seq}:{key}")
                    continue
                tup = row[4]
                if tup is None:  # deleted since the page was read
                    continue
                ts = _ts(tup)
                if since is not None and ts is not None and dt.datetime.fromisoformat(ts) < since:
                    return ThreadPage(out, None)  # newest first: every later one is older
                st = status_of(tup)
                if status is not None and st.state != status:
                    continue
                meta = tup.metadata or {}
                if metadata and any(str(meta.get(k)) != v for k, v in metadata.items()):
                    continue
                step = meta.get("step")
                out.append(
                    ThreadSummary(
                        thread_id,
                        count,
                        last_seq,
                        step if isinstance(step, int) else None,
                        ts,
                        st.state,
                        st.next,
                    )
                )
                if len(out) >= limit:
                    return ThreadPage(out, f"{last_seq}:{key}")
            if len(rows) < page:
                return ThreadPage(out, None)
        return ThreadPage(out, None)  # pragma: no cover - the loop returns

    async def _thread_rows(
        self, cursor: tuple[int, str] | None, limit: int
    ) -> list[tuple[str, int, int, str, CheckpointTuple | None]]:
        """A page of ``(thread_id, checkpoints, last_seq, thread_key, latest checkpoint)``, the
        last written first, all read in one whole-stream view (one consistency check, not one per
        thread). The page is chosen from the index (thread_key, seq) alone; then one statement
        reads the page's latest root checkpoints (as get_tuple's, the greatest checkpoint id) and
        one per thread its blobs and pending writes."""
        core = await self.checkpointer._acore()
        last = func.max(_C.seq)
        q = select(_C.thread_key, func.count(), last).group_by(_C.thread_key)
        if cursor is not None:
            q = q.having(or_(last < cursor[0], and_(last == cursor[0], _C.thread_key > cursor[1])))
        q = q.order_by(last.desc(), _C.thread_key).limit(limit)
        root = token("", field="checkpoint_ns")
        other = checkpoints.alias("newer")
        out: list[tuple[str, int, int, str, CheckpointTuple | None]] = []
        async with core.view(None) as conn:
            page = (await conn.execute(q)).all()
            if not page:
                return out
            heads = select(
                _C.thread_key,
                _C.thread_id,
                _C.checkpoint_id,
                _C.parent_checkpoint_id,
                _C.type,
                _C.checkpoint,
                _C.metadata_type,
                _C.metadata,
            ).where(
                _C.thread_key.in_([str(k) for k, _, _ in page]),
                _C.ns_key == root,
                _C.checkpoint_id
                == select(func.max(other.c.checkpoint_id))
                .where(other.c.thread_key == _C.thread_key, other.c.ns_key == root)
                .scalar_subquery(),
            )
            rows = {str(r.thread_key): r for r in (await conn.execute(heads)).all()}
            serde = self.checkpointer.serde
            for k, n, seq in page:
                row = rows.get(str(k))
                if row is None:  # no root checkpoint (deleted since, or subgraphs only): not listed
                    out.append((str(k), int(n), int(seq), str(k), None))
                    continue
                tid = str(row.thread_id)
                latest = await queries.tuple_of(conn, serde, tid, "", row)
                out.append((tid, int(n), int(seq), str(k), latest))
        return out

    async def _agent_rows(self, cursor: tuple[int, str] | None, limit: int) -> list[_AgentRow]:
        """A page of agents from ``skialith_agent_events``, read-your-writes over every agent's
        subjects (``<prefix>.e.>``, as SkialithAgent.resume reads one agent's): the read model
        once its watermark passed the last agent message, else a replay of all agents' messages
        from the log (a cost that grows with the agent messages in the stream, not the threads)."""
        core = await self.checkpointer._acore()
        log = await core._log()
        last = func.max(_E.seq)
        is_checkpoint = _E.kind == AGENT_CHECKPOINT
        q = select(
            func.min(_E.agent_id),
            func.sum(case((is_checkpoint, 1), else_=0)),
            last,
            _E.agent_key,
            func.max(case((is_checkpoint, _E.step), else_=None)),
            func.max(_E.ts),
        ).group_by(_E.agent_key)
        if cursor is not None:
            q = q.having(or_(last < cursor[0], and_(last == cursor[0], _E.agent_key > cursor[1])))
        q = q.order_by(last.desc(), _E.agent_key).limit(limit)
        async with consistent_view(
            log,
            core.model,
            [f"{log.subjects.prefix}.e.>"],
            read_wait=core.settings.read_wait,
            stats=core.stats,
            scratch=core.scratch,
        ) as conn:
            rows = (await conn.execute(q)).all()
        return [
            _AgentRow(
                str(r[0]),
                int(r[1] or 0),
                int(r[2]),
                str(r[3]),
                None if r[4] is None else int(r[4]),
                None if r[5] is None else float(r[5]),
            )
            for r in rows
        ]

    # -- history

    async def history(
        self, thread_id: str, *, ns: str = "", limit: int | None = None, before: str | None = None
    ) -> list[HistoryEntry]:
        """A thread's checkpoints oldest first (the newest ``limit`` before checkpoint ``before``)."""
        newest_first = [
            t
            async for t in self.checkpointer.alist(
                _config(thread_id, None, ns),
                before=_config(thread_id, before, ns) if before else None,
                limit=limit,
            )
        ]
        if not newest_first and before is None:
            raise InspectError(f"no thread {thread_id!r} (no checkpoint is stored for it)")
        tuples = list(reversed(newest_first))
        by_id = {t.checkpoint["id"]: t for t in tuples}
        out: list[HistoryEntry] = []
        previous: str | None = None
        for t in tuples:
            parent_id = t.parent_config["configurable"]["checkpoint_id"] if t.parent_config else None
            parent = by_id.get(parent_id) if parent_id else None
            if parent is None and parent_id:
                parent = await self.checkpointer.aget_tuple(_config(thread_id, parent_id, ns))
            st = status_of(t)
            meta = t.metadata or {}
            step = meta.get("step")
            out.append(
                HistoryEntry(
                    checkpoint_id=t.checkpoint["id"],
                    parent_checkpoint_id=parent_id,
                    step=step if isinstance(step, int) else None,
                    source=str(meta.get("source")) if meta.get("source") is not None else None,
                    nodes=writers(t, parent),
                    ts=_ts(t),
                    duration=_seconds(_ts(parent), _ts(t)) if parent else None,
                    pending_writes=len(t.pending_writes or []),
                    interrupts=st.interrupts,
                    errors=st.errors,
                    fork=previous is not None and parent_id != previous,
                )
            )
            previous = t.checkpoint["id"]
        return out

    # -- show

    async def show(self, thread_id: str, checkpoint_id: str | None = None, ns: str = "") -> dict[str, Any]:
        """The state at a checkpoint (the latest by default), as JSON data: values per channel
        (lists of messages as ``{"id", "role", "content"}``), next nodes, pending writes,
        interrupts and errors."""
        t = await self.checkpoint_tuple(thread_id, checkpoint_id, ns)
        st = status_of(t)
        values: dict[str, Any] = {}
        messages: dict[str, list[dict[str, Any]]] = {}
        for ch, v in (t.checkpoint.get("channel_values") or {}).items():
            if _is_messages(v):
                messages[ch] = [message_line(m) for m in v]
            else:
                values[ch] = jsonable(v)
        return {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": t.checkpoint["id"],
            "parent_checkpoint_id": t.parent_config["configurable"]["checkpoint_id"]
            if t.parent_config
            else None,
            "ts": _ts(t),
            "metadata": jsonable(t.metadata),
            "status": st.state,
            "next": st.next,
            "messages": messages,
            "values": values,
            "pending_writes": [
                {"task_id": task, "channel": ch, "value": jsonable(v)}
                for task, ch, v in t.pending_writes or []
            ],
            "interrupts": st.interrupts,
            "errors": st.errors,
        }

    # -- diff

    async def diff(
        self, thread_id: str, a: str, b: str, *, other_thread: str | None = None, ns: str = ""
    ) -> dict[str, Any]:
        """What changed per channel from checkpoint ``a`` of ``thread_id`` to checkpoint ``b``
        (of ``other_thread`` when given)."""
        left = await self.checkpoint_tuple(thread_id, a, ns)
        right = await self.checkpoint_tuple(other_thread or thread_id, b, ns)
        return {
            "from": {"thread_id": thread_id, "checkpoint_id": left.checkpoint["id"]},
            "to": {"thread_id": other_thread or thread_id, "checkpoint_id": right.checkpoint["id"]},
            "channels": channel_diff(
                dict(left.checkpoint.get("channel_values") or {}),
                dict(right.checkpoint.get("channel_values") or {}),
            ),
        }

    # -- drift

    async def branch_by_step(self, thread_id: str, ns: str = "") -> dict[int, CheckpointTuple]:
        """The thread's current branch (the latest checkpoint and its parents), by metadata step:
        the last checkpoint of the branch at each step (an update at a step replaces the one
        before it)."""
        tuples = {t.checkpoint["id"]: t async for t in self.checkpointer.alist(_config(thread_id, None, ns))}
        if not tuples:
            raise InspectError(f"no thread {thread_id!r} (no checkpoint is stored for it)")
        latest = await self.checkpoint_tuple(thread_id, None, ns)
        chain: list[CheckpointTuple] = []
        cur: CheckpointTuple | None = tuples.get(latest.checkpoint["id"], latest)
        while cur is not None and len(chain) <= len(tuples):
            chain.append(cur)
            parent = cur.parent_config["configurable"]["checkpoint_id"] if cur.parent_config else None
            cur = tuples.get(parent) if parent else None
        out: dict[int, CheckpointTuple] = {}
        for t in reversed(chain):  # oldest first: a later checkpoint at the same step wins
            step = (t.metadata or {}).get("step")
            if isinstance(step, int):
                out[step] = t
        return out

    async def drift(self, a: str, b: str, *, threshold: int | None = None, ns: str = "") -> dict[str, Any]:
        """Compare two runs (threads ``a`` and ``b``) step by step, by metadata ``step`` along each
        thread's current branch: per step the channels that differ (the diff of :meth:`diff`),
        the first step where the states diverge, and ``exceeded``: whether some step has more
        than ``threshold`` differing channels (a step only one run reached counts every channel
        of the run that has it). ``threshold=None`` never exceeds; ``0`` fails on any drift."""
        left, right = await self.branch_by_step(a, ns), await self.branch_by_step(b, ns)
        steps: list[dict[str, Any]] = []
        first: int | None = None
        worst = 0
        for step in sorted(set(left) | set(right)):
            lt, rt = left.get(step), right.get(step)
            lv = dict(lt.checkpoint.get("channel_values") or {}) if lt else {}
            rv = dict(rt.checkpoint.get("channel_values") or {}) if rt else {}
            channels = channel_diff(lv, rv)  # one run missing the step: all its channels differ
            if (lt is None or rt is None) and not channels:
                channels = {"(step)": {"op": "added" if lt is None else "removed"}}
            entry = {
                "step": step,
                "a": lt.checkpoint["id"] if lt else None,
                "b": rt.checkpoint["id"] if rt else None,
                "missing_in": a if lt is None else b if rt is None else None,
                "differing": len(channels),
                "channels": channels,
            }
            if channels and first is None:
                first = step
            worst = max(worst, len(channels))
            steps.append(entry)
        return {
            "a": a,
            "b": b,
            "first_divergence": first,
            "max_differing": worst,
            "threshold": threshold,
            "exceeded": threshold is not None and worst > threshold,
            "steps": steps,
        }

    # -- lineage

    async def lineage(self, thread_id: str) -> dict[str, Any]:
        """How state flowed across boundaries, as trees: the thread's subgraph namespaces
        (``checkpoint_ns`` values: ``node:task`` segments joined by ``|``, each under the namespace
        it was called from, with its checkpoint count), its ancestors and its descendants through
        the metadata key :data:`PARENT_KEY` (``parent_thread_id``) of each thread's latest
        checkpoint; and the thread it was copied from and its copies (:meth:`copy_links`).
        Finding descendants decodes the metadata of every thread's latest checkpoint (one row per
        thread, read through the whole-stream view)."""
        core = await self.checkpointer._acore()
        tk = token(thread_id, field="thread_id")
        q = (
            select(_C.checkpoint_ns, func.count())
            .where(_C.thread_key == tk)
            .group_by(_C.checkpoint_ns)
            .order_by(_C.checkpoint_ns)
        )
        async with core.view(thread_id) as conn:
            counts = {str(ns): int(n) for ns, n in (await conn.execute(q)).all()}
        if not counts:
            raise InspectError(f"no thread {thread_id!r} (no checkpoint is stored for it)")
        parents = await self._parent_links()
        copied_from, copies = await self.copy_links(thread_id)
        ancestors: list[str] = []
        cur = parents.get(thread_id)
        while cur is not None and cur not in ancestors and cur != thread_id:
            ancestors.append(cur)
            cur = parents.get(cur)
        children: dict[str, list[str]] = {}
        for child, parent in parents.items():
            children.setdefault(parent, []).append(child)

        def descend(tid: str, seen: frozenset[str]) -> list[dict[str, Any]]:
            return [
                {"thread_id": c, "children": descend(c, seen | {c})}
                for c in sorted(children.get(tid, []))
                if c not in seen  # a cycle of links is shown once
            ]

        return {
            "thread_id": thread_id,
            "namespaces": namespace_tree(counts),
            "parent_key": PARENT_KEY,
            "ancestors": list(reversed(ancestors)),  # the root first
            "children": descend(thread_id, frozenset({thread_id, *ancestors})),
            "copied_from": copied_from,
            "copies": copies,
        }

    async def copy_links(self, thread_id: str) -> tuple[str | None, list[str]]:
        """``(source, copies)``: the thread ``thread_id`` was copied from with ``copy_thread`` (or
        ``skialith import --thread``), and the threads copied from it, oldest copy first.

        Nothing is written to mark a copy: a copy holds the same checkpoint ids as its source
        (LangGraph's ids are unique per write, so two threads share one only by a copy), written
        later. So the threads holding this thread's first root checkpoint id are its family; the
        one that wrote it first (lowest stream sequence) is the original, every other one a copy
        of it (a copy of a copy is shown as a copy of the original).
        """
        core = await self.checkpointer._acore()
        tk = token(thread_id, field="thread_id")
        root = token("", field="checkpoint_ns")
        first = (
            select(_C.checkpoint_id)
            .where(_C.thread_key == tk, _C.ns_key == root)
            .order_by(_C.checkpoint_id)
            .limit(1)
            .scalar_subquery()
        )
        q = (
            select(_C.thread_id, _C.seq)
            .where(_C.ns_key == root, _C.checkpoint_id == first)
            .order_by(_C.seq, _C.thread_key)
        )
        async with core.view(None) as conn:
            family = [str(tid) for tid, _ in (await conn.execute(q)).all()]
        if thread_id not in family or len(family) < 2:
            return None, []
        original = family[0]
        if thread_id == original:
            return None, family[1:]
        return original, []

    async def _parent_links(self) -> dict[str, str]:
        """``{thread: parent_thread_id}`` from each thread's latest checkpoint's metadata."""
        core = await self.checkpointer._acore()
        latest = select(_C.thread_key, func.max(_C.seq).label("last")).group_by(_C.thread_key).subquery()
        q = select(_C.thread_id, _C.metadata_type, _C.metadata).join(
            latest, and_(_C.thread_key == latest.c.thread_key, _C.seq == latest.c.last)
        )
        async with core.view(None) as conn:
            rows = (await conn.execute(q)).all()
        out: dict[str, str] = {}
        for tid, typ, data in rows:
            try:
                meta = self.meta_serde.loads_typed((typ, data))
            except Exception:  # metadata the strict serializer refuses links nothing
                continue
            parent = meta.get(PARENT_KEY) if isinstance(meta, dict) else None
            if isinstance(parent, str) and parent != tid:
                out[str(tid)] = parent
        return out

    # -- audit

    async def audit(self, thread_id: str) -> list[dict[str, Any]]:
        """Every message on the thread's subjects still in the stream, in log order: sequence,
        server time, kind, node or task, run id, size. Decodes the message envelope and the
        checkpoint metadata only (with the strict serializer), never channel values."""
        core = await self.checkpointer._acore()
        log = await core._log()
        tk = token(thread_id, field="thread_id")
        out: list[dict[str, Any]] = []
        async for m in log.read(log.subjects.thread(tk)):
            entry: dict[str, Any] = {
                "seq": m.seq,
                "time": m.time,
                "subject": m.subject,
                "size": len(m.body),
                "kind": "?",
                "node": None,
                "task": None,
                "run_id": None,
                "checkpoint_id": None,
            }
            try:
                msg = codec.loads(m.body)
            except CodecError as exc:
                entry["kind"] = "undecodable"
                entry["node"] = str(exc)[:200]
                out.append(entry)
                continue
            replay = log.subjects.is_replay(m.subject)
            if isinstance(msg, codec.CheckpointMsg):
                entry["kind"] = "checkpoint"
                entry["checkpoint_id"] = msg.checkpoint_id
                entry["run_id"] = msg.run_id
                try:
                    meta = self.meta_serde.loads_typed(msg.metadata)
                    entry["node"] = f"{meta.get('source')} step {meta.get('step')}"
                except Exception:  # metadata the strict serializer refuses
                    entry["node"] = "(metadata not decodable)"
            elif isinstance(msg, codec.WritesMsg):
                entry["kind"] = "writes"
                entry["checkpoint_id"] = msg.checkpoint_id
                entry["task"] = msg.task_id
                entry["node"] = msg.task_path or None
                entry["channels"] = [ch for _, ch, _, _ in msg.writes]
            elif isinstance(msg, codec.DeleteThreadMsg):
                entry["kind"] = "delete"
            elif isinstance(msg, codec.PruneMsg):
                entry["kind"] = "prune"
                entry["node"] = f"keeps {len(msg.keep)} checkpoint(s)"
            else:
                entry["kind"] = type(msg).__name__
            if replay:
                entry["kind"] = f"replay of a prune ({entry['kind']})"
            out.append(entry)
        if not out:
            raise InspectError(f"no thread {thread_id!r} (no message on its subjects)")
        return out

    # -- export / import

    async def export(self, thread_id: str) -> list[dict[str, Any]]:
        """The thread as JSON-Lines records: a header, its checkpoints oldest first, then its
        pending writes. Every value keeps its exact bytes (base64 with its type), and its decoded
        form under ``value`` where the serializer can decode it."""
        core = await self.checkpointer._acore()
        async with core.view(thread_id) as conn:
            msgs = await queries.export_thread(conn, thread_id, thread_id)
        if not msgs:
            raise InspectError(f"no thread {thread_id!r} (no checkpoint is stored for it)")
        serde = self.checkpointer.serde
        out: list[dict[str, Any]] = [
            {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "thread_id": thread_id}
        ]
        for msg in msgs:
            if isinstance(msg, codec.CheckpointMsg):
                out.append(
                    {
                        "kind": "checkpoint",
                        "checkpoint_ns": msg.checkpoint_ns,
                        "checkpoint_id": msg.checkpoint_id,
                        "parent_checkpoint_id": msg.parent_checkpoint_id,
                        "run_id": msg.run_id,
                        "checkpoint": _typed(serde, *msg.checkpoint),
                        "metadata": _typed(self.meta_serde, *msg.metadata),
                        "blobs": [
                            {"channel": ch, "version": ver, **_typed(serde, typ, data)}
                            for ch, ver, typ, data in msg.blobs
                        ],
                    }
                )
            else:
                out.append(
                    {
                        "kind": "writes",
                        "checkpoint_ns": msg.checkpoint_ns,
                        "checkpoint_id": msg.checkpoint_id,
                        "task_id": msg.task_id,
                        "task_path": msg.task_path,
                        "writes": [
                            {"idx": idx, "channel": ch, **_typed(serde, typ, data)}
                            for idx, ch, typ, data in msg.writes
                        ],
                    }
                )
        return out

    async def import_records(self, records: Iterable[dict[str, Any]], *, thread_id: str | None = None) -> str:
        """Store an export's records as thread ``thread_id`` (default: the exported id), byte for
        byte. Refuses a thread that already has checkpoints. Returns the thread id."""
        items = iter(records)
        header = next(items, None)
        if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
            raise InspectError(f"not a skialith export (the first line must be a {EXPORT_FORMAT!r} header)")
        if header.get("version") != EXPORT_VERSION:
            raise InspectError(f"export version {header.get('version')!r} is not supported")
        target = thread_id if thread_id is not None else str(header.get("thread_id"))
        msgs: list[codec.CheckpointMsg | codec.WritesMsg] = []
        try:
            for r in items:
                if r["kind"] == "checkpoint":
                    msgs.append(
                        codec.CheckpointMsg(
                            thread_id=target,
                            checkpoint_ns=str(r["checkpoint_ns"]),
                            checkpoint_id=str(r["checkpoint_id"]),
                            parent_checkpoint_id=r["parent_checkpoint_id"],
                            run_id=r["run_id"],
                            checkpoint=_untyped(r["checkpoint"]),
                            metadata=_untyped(r["metadata"]),
                            blobs=[(b["channel"], b["version"], *_untyped(b)) for b in r["blobs"]],
                        )
                    )
                elif r["kind"] == "writes":
                    msgs.append(
                        codec.WritesMsg(
                            thread_id=target,
                            checkpoint_ns=str(r["checkpoint_ns"]),
                            checkpoint_id=str(r["checkpoint_id"]),
                            task_id=str(r["task_id"]),
                            task_path=str(r["task_path"]),
                            writes=[(int(w["idx"]), w["channel"], *_untyped(w)) for w in r["writes"]],
                        )
                    )
                else:
                    raise InspectError(f"unknown record kind {r['kind']!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise InspectError(f"a record of the export is malformed: {exc!r}") from exc
        if await self.checkpointer.aget_tuple(_config(target)) is not None:
            raise InspectError(f"thread {target!r} already has checkpoints; import into a new thread id")
        core = await self.checkpointer._acore()
        await core.republish(target, msgs)  # as copy_thread stores them
        return target


def _typed(serde: Any, typ: str, data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"type": typ, "data": _b64(data)}
    try:
        out["value"] = jsonable(serde.loads_typed((typ, data)))
    except Exception as exc:  # kept as bytes; say why it is not decoded
        out["undecoded"] = f"{type(exc).__name__}"
    return out


def _untyped(item: dict[str, Any]) -> tuple[str, bytes]:
    return str(item["type"]), base64.b64decode(item["data"], validate=True)


async def _nothing() -> list[Any]:
    return []


def _parse_cursor(after: str | None) -> tuple[int, str] | None:
    if after is None:
        return None
    seq, sep, key = after.partition(":")
    if not sep or not seq.isdigit() or not key:
        raise InspectError(f"--after {after!r} is not a cursor printed by 'skialith threads'")
    return int(seq), key


def dumps_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
