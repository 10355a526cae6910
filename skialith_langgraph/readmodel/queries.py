"""Read queries over the read model, returning LangGraph's own types.

Every function takes an open connection, so a caller can first check the projection
watermark and then read on the same connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, DeltaChannelHistory, PendingWrite
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import (
    func,
    select,
    tuple_,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ..codec import CheckpointMsg, PruneMsg, WritesMsg, version_key
from ..subjects import token
from .apply import unspill
from .statements import AllRow, OneRow, PageRest, PageRow, RestRow, driver_rows
from .tables import (
    checkpoint_blobs,
    checkpoint_writes,
    checkpoints,
)

_C = checkpoints.c
_W = checkpoint_writes.c
_B = checkpoint_blobs.c
PAGE = 100


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}


@dataclass(slots=True)
class _Head:
    row: Row[Any]
    checkpoint: dict[str, Any]


async def _writes_for(
    conn: AsyncConnection, serde: SerializerProtocol, keys: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str, str], list[PendingWrite]]:
    """Pending writes per (thread_key, ns_key, checkpoint_id), in ``writes_sort_key`` order."""
    out: dict[tuple[str, str, str], list[PendingWrite]] = {k: [] for k in keys}
    if not keys:
        return out
    raw: dict[tuple[str, str, str], list[tuple[tuple[str, str, int], PendingWrite]]] = {k: [] for k in keys}
    for i in range(0, len(keys), PAGE):
        part = list(keys[i : i + PAGE])
        rows = await conn.execute(
            select(
                _W.thread_key,
                _W.ns_key,
                _W.checkpoint_id,
                _W.task_id,
                _W.idx,
                _W.channel,
                _W.type,
                _W.blob,
                _W.task_path,
            ).where(tuple_(_W.thread_key, _W.ns_key, _W.checkpoint_id).in_(part))
        )
        for r in rows:
            value = await unspill(conn, r.thread_key, r.type, r.blob)
            raw[(r.thread_key, r.ns_key, r.checkpoint_id)].append(
                ((r.task_path, r.task_id, r.idx), (r.task_id, r.channel, serde.loads_typed(value)))
            )
    for k, items in raw.items():
        items.sort(key=lambda item: item[0])
        out[k] = [w for _, w in items]
    return out


async def _blobs_for(
    conn: AsyncConnection, thread_key: str, ns_key: str, wanted: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, bytes]]:
    found: dict[tuple[str, str], tuple[str, bytes]] = {}
    items = sorted(wanted)
    for i in range(0, len(items), PAGE):
        rows = await conn.execute(
            select(_B.channel, _B.version, _B.type, _B.blob).where(
                _B.thread_key == thread_key,
                _B.ns_key == ns_key,
                tuple_(_B.channel, _B.version).in_(items[i : i + PAGE]),
            )
        )
        for r in rows:
            found[(r.channel, r.version)] = await unspill(conn, thread_key, r.type, r.blob)
    return found


def _values(
    serde: SerializerProtocol, versions: dict[str, Any], blobs: dict[tuple[str, str], tuple[str, bytes]]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for channel, version in versions.items():
        blob = blobs.get((channel, version_key(version)))
        if blob is None or blob[0] == "empty":
            continue
        values[channel] = serde.loads_typed(blob)
    return values


def _padded(items: list[Any]) -> list[Any]:
    """``items`` (not empty) and its last item repeated, to a power of two in all."""
    return items + items[-1:] * ((1 << (len(items) - 1).bit_length()) - len(items))


async def _writes_and_blobs(
    conn: AsyncConnection,
    serde: SerializerProtocol,
    keys: Sequence[tuple[str, str, str]],
    tk: str,
    nk: str,
    want: set[tuple[str, str]],
) -> tuple[dict[tuple[str, str, str], list[PendingWrite]], dict[tuple[str, str], tuple[str, bytes]]]:
    """:func:`_writes_for` and :func:`_blobs_for` of checkpoints of one thread and namespace, in
    one statement on the driver's cursor (at most :data:`PAGE` of each)."""
    # IN lists padded to a power of two (repeating their last item): a few statement shapes to compile
    ids = _padded(sorted({cid for _, _, cid in keys}))
    items = _padded(sorted(want) or [("", "")])  # an empty IN does not compile
    params: dict[str, Any] = {"tk": tk, "nk": nk}
    for i, cid in enumerate(ids):
        params[f"i{i}"] = cid
    for i, (channel, version) in enumerate(items):
        params[f"c{i}"], params[f"v{i}"] = channel, version
    rows = await driver_rows(conn, "page_rest", params, shape=(len(ids), len(items)))
    raw: dict[tuple[str, str, str], list[tuple[tuple[str, str, int], PendingWrite]]] = {k: [] for k in keys}
    blobs: dict[tuple[str, str], tuple[str, bytes]] = {}
    for r in map(PageRest._make, rows):
        if r.kind == "w":
            value = await unspill(conn, tk, r.type, r.blob)
            raw[(tk, nk, r.checkpoint_id)].append(
                ((r.task_path, r.task_id, r.idx), (r.task_id, r.channel, serde.loads_typed(value)))
            )
        elif (r.channel, r.version) in want:
            blobs[(r.channel, r.version)] = await unspill(conn, tk, r.type, r.blob)
    out: dict[tuple[str, str, str], list[PendingWrite]] = {}
    for k, found in raw.items():
        found.sort(key=lambda item: item[0])
        out[k] = [w for _, w in found]
    return out, blobs


async def _tuples(
    conn: AsyncConnection, serde: SerializerProtocol, rows: Sequence[Row[Any]]
) -> list[CheckpointTuple]:
    heads = [_Head(r, serde.loads_typed((r.type, r.checkpoint))) for r in rows]
    keys = [(r.thread_key, r.ns_key, r.checkpoint_id) for r in rows]
    wanted: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for h in heads:
        bucket = wanted.setdefault((h.row.thread_key, h.row.ns_key), set())
        bucket.update((ch, version_key(v)) for ch, v in h.checkpoint["channel_versions"].items())
    blobs: dict[tuple[str, str], dict[tuple[str, str], tuple[str, bytes]]] = {}
    if len(wanted) == 1 and len(keys) <= PAGE and all(len(w) <= PAGE for w in wanted.values()):
        # the usual list: one thread and namespace, one statement for its writes and blobs
        (tk, nk), want = next(iter(wanted.items()))
        writes, blobs[(tk, nk)] = await _writes_and_blobs(conn, serde, keys, tk, nk, want)
    else:
        writes = await _writes_for(conn, serde, keys)
        for (tk, nk), want in wanted.items():
            blobs[(tk, nk)] = await _blobs_for(conn, tk, nk, want)
    out = []
    for h in heads:
        r = h.row
        checkpoint = {
            **h.checkpoint,
            "channel_values": _values(
                serde, h.checkpoint["channel_versions"], blobs[(r.thread_key, r.ns_key)]
            ),
        }
        out.append(
            CheckpointTuple(
                config=_config(r.thread_id, r.checkpoint_ns, r.checkpoint_id),
                checkpoint=checkpoint,  # type: ignore[arg-type]
                metadata=serde.loads_typed((r.metadata_type, r.metadata)),
                parent_config=_config(r.thread_id, r.checkpoint_ns, r.parent_checkpoint_id)
                if r.parent_checkpoint_id
                else None,
                pending_writes=writes[(r.thread_key, r.ns_key, r.checkpoint_id)],
            )
        )
    return out


async def watermark(conn: AsyncConnection, name: str, stream: tuple[str, str]) -> int | None:
    """The watermark of projection ``name`` if the read model records ``stream`` (name, creation
    time) as its stream, else None: ``identity.watermark`` on the driver's cursor."""
    params = {"projection": name, "stream": stream[0], "created": stream[1]}
    rows = await driver_rows(conn, "watermark", params)
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


async def head_row(
    conn: AsyncConnection,
    thread_id: str,
    ns: str,
    checkpoint_id: str | None,
    projection_name: str | None,
    stream: tuple[str, str] | None = None,
    *,
    complete: bool = True,
) -> tuple[Any, int | None]:
    """The row of checkpoint ``checkpoint_id`` (the latest when ``None``) and the watermark of
    ``projection_name``, read by one statement so that both come from the same snapshot
    (``None``: the caller checked the watermark already; 0 is returned for it). The watermark is
    ``None`` unless the read model records ``stream`` (name, creation time) as its stream.

    With ``complete=False`` only that one statement runs: where it finds no row, ``(None, None)``
    comes back and the caller must call again (with ``complete=True``) to learn the watermark."""
    params = {
        "tk": token(thread_id, field="thread_id"),
        "nk": token(ns, field="checkpoint_ns"),
        "projection": projection_name,
        "cid": checkpoint_id,
        "stream": stream[0] if stream else None,
        "created": stream[1] if stream else None,
    }
    name = "by_id" if checkpoint_id else "latest"
    if name == "latest":
        row = _all_row(await driver_rows(conn, "latest_all", params))
        if row is not None:
            return row, None if row.watermark is None else int(row.watermark)
    else:
        rows = await driver_rows(conn, name, params)
        if rows:
            row = OneRow(*rows[0])
            return row, None if row.watermark is None else int(row.watermark)
    if projection_name is None:
        return None, 0
    if not complete:
        return None, None
    # No row, so no watermark from that statement. Read the watermark, then look again: without
    # one snapshot for both statements (SQLite outside a transaction), only that order is safe.
    found = await driver_rows(conn, "watermark", params)
    mark = int(found[0][0]) if found and found[0][0] is not None else None
    rows = await driver_rows(conn, name, params)
    return (OneRow(*rows[0]) if rows else None), mark


def _all_row(rows: Sequence[tuple[Any, ...]]) -> Any:
    """The ``OneRow`` (with ``rest``) of the rows of the ``latest_all`` statement, or None."""
    head: Any = None
    rest = []
    for raw in rows:
        r = AllRow(*raw)
        if r.kind == "c":
            head = r
        else:
            rest.append(RestRow(r.kind, r.task_id, r.idx, r.channel, r.version, r.type, r.data, r.task_path))
    if head is None:
        return None
    return OneRow(
        head.checkpoint_id,
        head.parent_checkpoint_id,
        head.type,
        head.data,
        head.metadata_type,
        head.metadata,
        head.watermark,
        rest,
    )


async def _from_rest(
    conn: AsyncConnection, serde: SerializerProtocol, tk: str, rows: Sequence[Any]
) -> tuple[list[PendingWrite], dict[tuple[str, str], tuple[str, bytes]]]:
    """The pending writes (in ``writes_sort_key`` order) and the blobs of ``RestRow``s."""
    writes: list[tuple[tuple[str, str, int], PendingWrite]] = []
    blobs: dict[tuple[str, str], tuple[str, bytes]] = {}
    for r in rows:
        value = await unspill(conn, tk, r.type, r.blob)
        if r.kind == "w":
            writes.append(((r.task_path, r.task_id, r.idx), (r.task_id, r.channel, serde.loads_typed(value))))
        else:
            blobs[(r.channel, r.version)] = value
    writes.sort(key=lambda item: item[0])
    return [w for _, w in writes], blobs


async def tuple_of(
    conn: AsyncConnection, serde: SerializerProtocol, thread_id: str, ns: str, row: Any
) -> CheckpointTuple:
    """The whole tuple of a row that :func:`head_row` returned for ``thread_id`` and ``ns``."""
    checkpoint = serde.loads_typed((row.type, row.checkpoint))
    versions = checkpoint["channel_versions"]
    pairs = sorted({(ch, version_key(v)) for ch, v in versions.items()})
    tk, nk, cid = token(thread_id, field="thread_id"), token(ns, field="checkpoint_ns"), row.checkpoint_id
    pending: list[PendingWrite]
    rest_rows = getattr(row, "rest", None)  # only head_row's statement reads them with the row
    if rest_rows is not None:
        # read with the row: the newest blob of each channel that has any. Used if it holds every
        # blob the checkpoint names, except of channels without a blob at all (none to read then:
        # a checkpoint's blobs are applied with it or before it); else the thread forked. On
        # MySQL the newest versions come from skialith_thread_channels (statements._latest_all),
        # which rows from an older projector may lack: there every version must be found
        wanted = set(pairs)
        have = {(r.channel, r.version) for r in rest_rows if r.kind == "b"}
        stored = {channel for channel, _ in have}
        exact = conn.dialect.name == "mysql"
        if all(p in have or not (exact or p[0] in stored) for p in wanted):
            rest = [r for r in rest_rows if r.kind == "w" or (r.channel, r.version) in wanted]
            pending, blobs = await _from_rest(conn, serde, tk, rest)
            return _tuple(serde, thread_id, ns, row, checkpoint, blobs, pending)
    if len(pairs) > PAGE:  # a very wide state: page the blobs
        blobs = await _blobs_for(conn, tk, nk, set(pairs))
        pending = (await _writes_for(conn, serde, [(tk, nk, cid)]))[(tk, nk, cid)]
    else:
        params: dict[str, Any] = {"tk": tk, "nk": nk, "cid": cid}
        for i, (channel, version) in enumerate(pairs or [("", "")]):  # an empty IN does not compile
            params[f"c{i}"], params[f"v{i}"] = channel, version
        rows = [RestRow(*raw) for raw in await driver_rows(conn, "rest", params, max(1, len(pairs)))]
        pending, blobs = await _from_rest(conn, serde, tk, rows)
    return _tuple(serde, thread_id, ns, row, checkpoint, blobs, pending)


def _tuple(
    serde: SerializerProtocol,
    thread_id: str,
    ns: str,
    row: Any,
    checkpoint: dict[str, Any],
    blobs: dict[tuple[str, str], tuple[str, bytes]],
    pending: list[PendingWrite],
) -> CheckpointTuple:
    versions = checkpoint["channel_versions"]
    cid = row.checkpoint_id
    return CheckpointTuple(
        config=_config(thread_id, ns, cid),
        checkpoint={**checkpoint, "channel_values": _values(serde, versions, blobs)},  # type: ignore[typeddict-item]
        metadata=serde.loads_typed((row.metadata_type, row.metadata)),
        parent_config=_config(thread_id, ns, row.parent_checkpoint_id) if row.parent_checkpoint_id else None,
        pending_writes=pending,
    )


async def get_tuple(
    conn: AsyncConnection, serde: SerializerProtocol, thread_id: str, ns: str, checkpoint_id: str | None
) -> CheckpointTuple | None:
    """The checkpoint ``checkpoint_id`` of a thread/namespace, or its latest when ``None``."""
    row, _ = await head_row(conn, thread_id, ns, checkpoint_id, None)
    return None if row is None else await tuple_of(conn, serde, thread_id, ns, row)


def _page_params(
    thread_id: str | None, ns: str | None, checkpoint_id: str | None, before_id: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"cid": checkpoint_id, "before": before_id}
    if thread_id is not None:
        params["tk"] = token(thread_id, field="thread_id")
    if ns is not None:
        params["nk"] = token(ns, field="checkpoint_ns")
    return params


def _page_size(filter: dict[str, Any] | None, limit: int | None, emitted: int) -> int:
    return PAGE if (filter or limit is None) else min(PAGE, limit - emitted)


def _page_shape(params: dict[str, Any], after: bool, mark: bool = False) -> tuple[bool, ...]:
    shape = ("tk" in params, "nk" in params, bool(params["cid"]), bool(params["before"]), after)
    return (*shape, True) if mark else shape


async def first_page(
    conn: AsyncConnection,
    *,
    thread_id: str | None,
    ns: str | None,
    checkpoint_id: str | None,
    before_id: str | None,
    filter: dict[str, Any] | None,
    limit: int | None,
    projection_name: str,
    stream: tuple[str, str],
) -> tuple[list[Any], int | None]:
    """The first page :func:`list_tuples` would read with these arguments, and the watermark of
    ``projection_name`` from the same statement (None if the page is empty, or the read model
    does not record ``stream``)."""
    params = _page_params(thread_id, ns, checkpoint_id, before_id)
    params.update(lim=_page_size(filter, limit, 0), projection=projection_name)
    params.update(stream=stream[0], created=stream[1])
    found = await driver_rows(conn, "page", params, shape=_page_shape(params, False, True))
    mark = found[0][-1] if found else None
    return [PageRow._make(r[:-1]) for r in found], None if mark is None else int(mark)


async def list_tuples(
    conn: AsyncConnection,
    serde: SerializerProtocol,
    *,
    thread_id: str | None,
    ns: str | None,
    checkpoint_id: str | None,
    before_id: str | None,
    filter: dict[str, Any] | None,
    limit: int | None,
    first: list[Any] | None = None,
) -> AsyncIterator[CheckpointTuple]:
    """Checkpoints newest first (per thread and namespace), as LangGraph's ``list``.

    Pages by key, never by offset: each page starts strictly after the last row of the one before
    in ``(checkpoint_id DESC, thread_key, ns_key)`` order, so rows written or deleted meanwhile
    cannot repeat or skip a row, whatever snapshot each statement sees (SQLite starts a fresh one
    per statement). Tuples are yielded page by page, the first after the first page.
    ``first``: the first page, read already by :func:`first_page` with the same arguments.
    """
    if limit is not None and limit <= 0:
        return
    params = _page_params(thread_id, ns, checkpoint_id, before_id)
    emitted = 0
    after: Any = None
    while True:
        page_size = _page_size(filter, limit, emitted)
        rows: list[Any]
        if after is None and first is not None:
            rows = first
        else:
            if after is not None:
                params.update(a_cid=after.checkpoint_id, a_tk=after.thread_key, a_nk=after.ns_key)
            params["lim"] = page_size
            shape = _page_shape(params, after is not None)
            rows = [PageRow._make(r) for r in await driver_rows(conn, "page", params, shape=shape)]
        if not rows:
            return
        after = rows[-1]
        if filter:
            rows = [
                r
                for r in rows
                if all(
                    v == serde.loads_typed((r.metadata_type, r.metadata)).get(k) for k, v in filter.items()
                )
            ]
        for tup in await _tuples(conn, serde, rows):
            yield tup
            emitted += 1
            if limit is not None and emitted >= limit:
                return
        if len(rows) < page_size and not filter:
            return


async def delta_history(
    conn: AsyncConnection,
    serde: SerializerProtocol,
    config: RunnableConfig,
    channels: Sequence[str],
) -> dict[str, DeltaChannelHistory]:
    """``get_delta_channel_history`` read straight from the tables on one connection."""
    conf = config["configurable"]
    thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
    tk, nk = token(thread_id, field="thread_id"), token(ns, field="checkpoint_ns")
    target = await get_tuple(conn, serde, thread_id, ns, conf.get("checkpoint_id"))
    collected: dict[str, list[PendingWrite]] = {c: [] for c in channels}
    seeds: dict[str, Any] = {}
    remaining = set(channels)
    cursor = (
        target.parent_config["configurable"]["checkpoint_id"] if target and target.parent_config else None
    )
    while cursor is not None and remaining:
        row = (
            await conn.execute(
                select(_C.type, _C.checkpoint, _C.parent_checkpoint_id).where(
                    _C.thread_key == tk, _C.ns_key == nk, _C.checkpoint_id == cursor
                )
            )
        ).first()
        if row is None:
            break
        ckpt = serde.loads_typed((row.type, row.checkpoint))
        versions = ckpt.get("channel_versions", {})
        want = {(ch, version_key(versions[ch])) for ch in remaining if ch in versions}
        blobs = await _blobs_for(conn, tk, nk, want)
        writes = (await _writes_for(conn, serde, [(tk, nk, cursor)]))[(tk, nk, cursor)]
        for w in reversed(writes):
            if w[1] in remaining:
                collected[w[1]].append(w)
        for ch in list(remaining):
            if ch in versions:
                blob = blobs.get((ch, version_key(versions[ch])))
                if blob is not None and blob[0] != "empty":
                    seeds[ch] = serde.loads_typed(blob)
                    remaining.discard(ch)
        cursor = row.parent_checkpoint_id
    result: dict[str, DeltaChannelHistory] = {}
    for ch in channels:
        entry: DeltaChannelHistory = {"writes": list(reversed(collected[ch]))}
        if ch in seeds:
            entry["seed"] = seeds[ch]
        result[ch] = entry
    return result


async def prune_plan(
    conn: AsyncConnection, serde: SerializerProtocol, thread_id: str, strategy: str, *, keep: int = 1
) -> PruneMsg:
    """What a prune keeps: per namespace the ``keep`` latest checkpoints and, for
    ``DeltaChannel``s, the ancestors of each back to the nearest stored value (snapshot), so
    every kept checkpoint still rebuilds."""
    plan = PruneMsg(thread_id=thread_id)
    if strategy == "delete":
        return plan
    tk = token(thread_id, field="thread_id")
    rows = (
        await conn.execute(
            select(
                _C.ns_key,
                _C.checkpoint_ns,
                _C.checkpoint_id,
                _C.parent_checkpoint_id,
                _C.type,
                _C.checkpoint,
                _C.metadata_type,
                _C.metadata,
            ).where(_C.thread_key == tk)
        )
    ).all()
    by_ns: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_ns.setdefault(r.checkpoint_ns, {})[r.checkpoint_id] = r
    for ns, ckpts in by_ns.items():
        nk = token(ns, field="checkpoint_ns")
        kept: set[str] = set()
        for head_id in sorted(ckpts)[-max(1, keep) :]:
            await _keep_with_ancestors(conn, serde, plan, tk, nk, ns, ckpts, ckpts[head_id], kept)
    return plan


async def _keep_with_ancestors(
    conn: AsyncConnection,
    serde: SerializerProtocol,
    plan: PruneMsg,
    tk: str,
    nk: str,
    ns: str,
    ckpts: dict[str, Any],
    head: Any,
    kept: set[str],
) -> None:
    """Keep ``head`` and, for its ``DeltaChannel``s, its ancestors back to a stored snapshot."""
    meta = serde.loads_typed((head.metadata_type, head.metadata)) or {}
    pending = set((meta.get("counters_since_delta_snapshot") or {}).keys())
    cursor: Any = head
    while cursor is not None:
        versions = serde.loads_typed((cursor.type, cursor.checkpoint)).get("channel_versions", {})
        if cursor.checkpoint_id not in kept:  # a chain may reach a checkpoint kept already
            kept.add(cursor.checkpoint_id)
            plan.keep.append((ns, cursor.checkpoint_id))
            plan.keep_blobs.extend((ns, ch, version_key(v)) for ch, v in versions.items())
        if pending:
            stored = await _blobs_for(
                conn, tk, nk, {(ch, version_key(versions[ch])) for ch in pending if ch in versions}
            )
            pending -= {ch for (ch, _), blob in stored.items() if blob[0] != "empty"}
        if not pending:
            break
        cursor = ckpts.get(cursor.parent_checkpoint_id) if cursor.parent_checkpoint_id else None


async def checkpoint_count(conn: AsyncConnection, thread_id: str) -> int:
    """How many checkpoints the read model holds for a thread (every namespace)."""
    tk = token(thread_id, field="thread_id")
    return int((await conn.execute(select(func.count()).where(_C.thread_key == tk))).scalar_one())


async def _thread_ids(conn: AsyncConnection, keys: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(keys), PAGE):
        rows = await conn.execute(
            select(_C.thread_key, _C.thread_id).where(_C.thread_key.in_(keys[i : i + PAGE])).distinct()
        )
        out.update({r.thread_key: r.thread_id for r in rows})
    return out


async def idle_candidates(conn: AsyncConnection, *, before_seq: int, limit: int) -> list[tuple[str, int]]:
    """Threads whose newest checkpoint row was written before stream sequence ``before_seq``,
    oldest first, at most ``limit``: (thread_id, that sequence). For the retention sweeper, which
    checks each on the stream (writes and later messages count too) before deleting it."""
    newest = func.max(_C.seq).label("newest")
    rows = (
        await conn.execute(
            select(_C.thread_key, newest)
            .group_by(_C.thread_key)
            .having(newest < before_seq)
            .order_by(newest, _C.thread_key)
            .limit(limit)
        )
    ).all()
    ids = await _thread_ids(conn, [r.thread_key for r in rows])
    return [(ids[r.thread_key], int(r.newest)) for r in rows if r.thread_key in ids]


async def over_keep_last(conn: AsyncConnection, *, keep: int, limit: int) -> list[tuple[str, int]]:
    """Threads with more than ``keep`` checkpoints in some namespace, at most ``limit``:
    (thread_id, checkpoints beyond ``keep`` over all namespaces), most first. For the sweeper."""
    per_ns = (
        select(_C.thread_key, (func.count() - keep).label("extra"))
        .group_by(_C.thread_key, _C.ns_key)
        .having(func.count() > keep)
        .subquery()
    )
    extra = func.sum(per_ns.c.extra).label("extra")
    rows = (
        await conn.execute(
            select(per_ns.c.thread_key, extra)
            .group_by(per_ns.c.thread_key)
            .order_by(extra.desc(), per_ns.c.thread_key)
            .limit(limit)
        )
    ).all()
    ids = await _thread_ids(conn, [r.thread_key for r in rows])
    return [(ids[r.thread_key], int(r.extra)) for r in rows if r.thread_key in ids]


def _checkpoint_msg(row: Row[Any], thread_id: str, blobs: list[tuple[str, str, str, bytes]]) -> CheckpointMsg:
    """A stored checkpoint row as the message that stores it again, addressed to ``thread_id``."""
    return CheckpointMsg(
        thread_id=thread_id,
        checkpoint_ns=row.checkpoint_ns,
        checkpoint_id=row.checkpoint_id,
        parent_checkpoint_id=row.parent_checkpoint_id,
        run_id=row.run_id,
        checkpoint=(row.type, row.checkpoint),
        metadata=(row.metadata_type, row.metadata),
        blobs=blobs,
    )


async def export_thread(
    conn: AsyncConnection, thread_id: str, target_thread_id: str
) -> list[CheckpointMsg | WritesMsg]:
    """Every checkpoint, blob and write of a thread, re-addressed to ``target_thread_id``, oldest first."""
    tk = token(thread_id, field="thread_id")
    rows = (
        await conn.execute(select(checkpoints).where(_C.thread_key == tk).order_by(_C.checkpoint_id))
    ).all()
    blob_rows = (await conn.execute(select(checkpoint_blobs).where(_B.thread_key == tk))).all()
    write_rows = (await conn.execute(select(checkpoint_writes).where(_W.thread_key == tk))).all()
    blobs_by_ns: dict[str, list[tuple[str, str, str, bytes]]] = {}
    for b in blob_rows:
        blobs_by_ns.setdefault(b.ns_key, []).append(
            (b.channel, b.version, *await unspill(conn, tk, b.type, b.blob))
        )
    out: list[CheckpointMsg | WritesMsg] = []
    ns_of: dict[str, str] = {}
    for r in rows:
        ns_of[r.ns_key] = r.checkpoint_ns
        out.append(_checkpoint_msg(r, target_thread_id, blobs_by_ns.pop(r.ns_key, [])))
    grouped: dict[tuple[str, str, str, str], WritesMsg] = {}
    for w in write_rows:
        if w.ns_key not in ns_of:
            continue
        key = (w.ns_key, w.checkpoint_id, w.task_id, w.task_path)
        msg = grouped.get(key)
        if msg is None:
            msg = grouped[key] = WritesMsg(
                thread_id=target_thread_id,
                checkpoint_ns=ns_of[w.ns_key],
                checkpoint_id=w.checkpoint_id,
                task_id=w.task_id,
                task_path=w.task_path,
                writes=[],
            )
        msg.writes.append((w.idx, w.channel, *await unspill(conn, tk, w.type, w.blob)))
    out.extend(grouped.values())
    return out


async def export_kept(conn: AsyncConnection, plan: PruneMsg) -> list[CheckpointMsg | WritesMsg]:
    """What a prune keeps, as the messages that would store it again: the kept checkpoints (oldest
    first per namespace, the first of each carrying every kept blob of its namespace), then the
    pending writes of each kept checkpoint, one message per task."""
    thread_id = plan.thread_id
    tk = token(thread_id, field="thread_id")
    keep_by_ns: dict[str, list[str]] = {}
    for ns, cid in plan.keep:
        keep_by_ns.setdefault(ns, []).append(cid)
    blobs_by_ns: dict[str, set[tuple[str, str]]] = {}
    for ns, channel, version in plan.keep_blobs:
        blobs_by_ns.setdefault(ns, set()).add((channel, version))
    out: list[CheckpointMsg | WritesMsg] = []
    writes: list[WritesMsg] = []
    for ns in sorted(keep_by_ns):
        nk = token(ns, field="checkpoint_ns")
        ids = sorted(set(keep_by_ns[ns]))
        rows: list[Row[Any]] = []
        for i in range(0, len(ids), PAGE):
            rows += (
                await conn.execute(
                    select(checkpoints).where(
                        _C.thread_key == tk, _C.ns_key == nk, _C.checkpoint_id.in_(ids[i : i + PAGE])
                    )
                )
            ).all()
        rows.sort(key=lambda r: r.checkpoint_id)
        stored = await _blobs_for(conn, tk, nk, blobs_by_ns.get(ns, set()))
        blobs = sorted((channel, version, *value) for (channel, version), value in stored.items())
        for n, r in enumerate(rows):
            out.append(_checkpoint_msg(r, thread_id, blobs if n == 0 else []))
        grouped: dict[tuple[str, str, str], WritesMsg] = {}
        for i in range(0, len(ids), PAGE):
            found = await conn.execute(
                select(checkpoint_writes)
                .where(_W.thread_key == tk, _W.ns_key == nk, _W.checkpoint_id.in_(ids[i : i + PAGE]))
                .order_by(_W.checkpoint_id, _W.task_id, _W.task_path, _W.idx)
            )
            for w in found:
                key = (w.checkpoint_id, w.task_id, w.task_path)
                msg = grouped.get(key)
                if msg is None:
                    msg = grouped[key] = WritesMsg(
                        thread_id=thread_id,
                        checkpoint_ns=ns,
                        checkpoint_id=w.checkpoint_id,
                        task_id=w.task_id,
                        task_path=w.task_path,
                        writes=[],
                    )
                msg.writes.append((w.idx, w.channel, *await unspill(conn, tk, w.type, w.blob)))
        writes.extend(grouped.values())
    return out + writes
