"""Read queries over the read model, returning LangGraph's own types.

Every function takes an open connection, so a caller can first check the projection
watermark and then read on the same connection.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, DeltaChannelHistory, PendingWrite
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import (
    Select,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy.engine import Dialect, Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ..codec import CheckpointMsg, PruneMsg, WritesMsg, version_key
from ..errors import ReadModelError
from ..subjects import token
from .apply import unspill
from .tables import (
    checkpoint_blobs,
    checkpoint_writes,
    checkpoints,
    pg_escape,
    pg_unescape,
    projection,
    stream_identity,
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


async def _writes_and_blobs(
    conn: AsyncConnection,
    serde: SerializerProtocol,
    keys: Sequence[tuple[str, str, str]],
    tk: str,
    nk: str,
    want: set[tuple[str, str]],
) -> tuple[dict[tuple[str, str, str], list[PendingWrite]], dict[tuple[str, str], tuple[str, bytes]]]:
    """:func:`_writes_for` and :func:`_blobs_for` (one thread and namespace) in one statement."""
    items = sorted(want) or [("", "")]  # an empty IN does not compile
    statement = union_all(
        select(
            literal_column("'w'").label("kind"),
            _W.thread_key,
            _W.ns_key,
            _W.checkpoint_id,
            _W.task_id,
            _W.idx,
            _W.channel,
            type_coerce(null(), _B.version.type).label("version"),
            _W.type,
            _W.blob,
            _W.task_path,
        ).where(tuple_(_W.thread_key, _W.ns_key, _W.checkpoint_id).in_(list(keys))),
        select(
            literal_column("'b'"),
            _B.thread_key,
            _B.ns_key,
            null(),
            null(),
            null(),
            _B.channel,
            _B.version,
            _B.type,
            _B.blob,
            null(),
        ).where(_B.thread_key == tk, _B.ns_key == nk, tuple_(_B.channel, _B.version).in_(items)),
    )
    raw: dict[tuple[str, str, str], list[tuple[tuple[str, str, int], PendingWrite]]] = {k: [] for k in keys}
    blobs: dict[tuple[str, str], tuple[str, bytes]] = {}
    for r in await conn.execute(statement):
        if r.kind == "w":
            value = await unspill(conn, r.thread_key, r.type, r.blob)
            raw[(r.thread_key, r.ns_key, r.checkpoint_id)].append(
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


def _head_query() -> Select[Any]:
    return select(
        _C.thread_key,
        _C.ns_key,
        _C.checkpoint_id,
        _C.thread_id,
        _C.checkpoint_ns,
        _C.parent_checkpoint_id,
        _C.type,
        _C.checkpoint,
        _C.metadata_type,
        _C.metadata,
    )


# The single-checkpoint read (get_tuple) is the hot read: two statements, the first also returning
# the projection watermark, the second the checkpoint's pending writes and blobs together. They are
# compiled once per dialect (and number of blobs) and run on the driver's own cursor: SQLAlchemy's
# execution and result layers cost ~0.4 ms a statement on aiomysql, more than the server does.
# The watermark counts only if the read model was filled from the reader's stream (identity.py):
# else it is NULL, and the read is answered from the log.
_WATERMARK = select(projection.c.last_seq).where(
    projection.c.name == bindparam("projection"),
    exists().where(
        stream_identity.c.id == 1,
        stream_identity.c.stream == bindparam("stream"),
        stream_identity.c.created == bindparam("created"),
    ),
)
_ONE = select(
    _C.checkpoint_id,
    _C.parent_checkpoint_id,
    _C.type,
    _C.checkpoint,
    _C.metadata_type,
    _C.metadata,
    _WATERMARK.scalar_subquery().label("watermark"),
).where(_C.thread_key == bindparam("tk"), _C.ns_key == bindparam("nk"))
_LATEST = _ONE.order_by(_C.checkpoint_id.desc()).limit(1)
_BY_ID = _ONE.where(_C.checkpoint_id == bindparam("cid"))
# ``rest``: the pending writes and newest blobs read with the row (``_RestRow``s), or None
_OneRow = namedtuple(
    "_OneRow",
    "checkpoint_id parent_checkpoint_id type checkpoint metadata_type metadata watermark rest",
    defaults=(None,),
)
_RestRow = namedtuple("_RestRow", "kind task_id idx channel version type blob task_path")


def _rest(n_pairs: int) -> Any:
    """Pending writes of one checkpoint and ``n_pairs`` of its (channel, version) blobs."""
    pairs = [tuple_(bindparam(f"c{i}"), bindparam(f"v{i}")) for i in range(n_pairs)]
    return union_all(
        select(
            literal_column("'w'").label("kind"),
            _W.task_id,
            _W.idx,
            _W.channel,
            null().label("version"),
            _W.type,
            _W.blob,
            _W.task_path,
        ).where(
            _W.thread_key == bindparam("tk"),
            _W.ns_key == bindparam("nk"),
            _W.checkpoint_id == bindparam("cid"),
        ),
        select(literal_column("'b'"), null(), null(), _B.channel, _B.version, _B.type, _B.blob, null()).where(
            _B.thread_key == bindparam("tk"),
            _B.ns_key == bindparam("nk"),
            tuple_(_B.channel, _B.version).in_(pairs),
        ),
    )


def _latest_all(dialect: str) -> Any:
    """The latest checkpoint of a thread and namespace with the watermark (as ``_LATEST``), its
    pending writes, and the newest blob of each channel of the namespace, in one statement (one
    snapshot, one round trip): ``kind`` 'c', 'w' and 'b' rows in ``_AllRow``'s shape.

    The newest blob version of each channel is what the latest checkpoint of a thread refers to
    unless the thread forked (``update_state`` on an older checkpoint); :func:`tuple_of` checks
    every (channel, version) the checkpoint names against them and reads the missing ones with
    the second statement. The channels are found by a skip scan of the blobs' key (a loose index
    scan on MySQL, a recursive CTE elsewhere: one index probe per channel), so the cost follows
    the number of channels, not the thread's history."""
    tk: Any = bindparam("tk")
    nk: Any = bindparam("nk")
    c2 = checkpoints.alias("c2")
    b2, b3, b4 = (checkpoint_blobs.alias(n) for n in ("b2", "b3", "b4"))
    # every lookup below is an ORDER BY ... LIMIT 1 or a primary key probe, so that the plan is an
    # index probe whatever the planner's statistics (a fresh table's lead it to scan the thread)
    latest_id = (
        select(c2.c.checkpoint_id)
        .where(c2.c.thread_key == tk, c2.c.ns_key == nk)
        .order_by(c2.c.checkpoint_id.desc())
        .limit(1)
        .scalar_subquery()
    )

    def next_channel(after: Any = None) -> Any:
        q = select(b2.c.channel).where(b2.c.thread_key == tk, b2.c.ns_key == nk)
        if after is not None:
            q = q.where(b2.c.channel > after)
        return q.order_by(b2.c.channel).limit(1).scalar_subquery()

    chv: Any
    if dialect == "mysql":
        # MariaDB and MySQL read MAX per group of a key prefix by a loose index scan, one probe per
        # channel ("Using index for group-by"); their recursive CTE below would scan the thread
        chv = (
            select(b3.c.channel, func.max(b3.c.version).label("version"))
            .where(b3.c.thread_key == tk, b3.c.ns_key == nk)
            .group_by(b3.c.thread_key, b3.c.ns_key, b3.c.channel)  # the whole key prefix: else no loose scan
            .subquery("skialith_chv")
        )
    else:
        # PostgreSQL has no loose index scan: a skip scan by recursive CTE, one probe per channel
        ch = select(next_channel().label("channel")).cte("skialith_ch", recursive=True)
        ch = ch.union_all(select(next_channel(ch.c.channel)).where(ch.c.channel.is_not(None)))
        newest = (
            select(b3.c.version)
            .where(b3.c.thread_key == tk, b3.c.ns_key == nk, b3.c.channel == ch.c.channel)
            .order_by(b3.c.version.desc())
            .limit(1)
            .scalar_subquery()
        )
        found = ch.c.channel.is_not(None)
        chv = select(ch.c.channel, newest.label("version")).where(found).cte("skialith_chv")

    def blob_column(column: str) -> Any:
        return (
            select(b4.c[column])
            .where(
                b4.c.thread_key == tk,
                b4.c.ns_key == nk,
                b4.c.channel == chv.c.channel,
                b4.c.version == chv.c.version,
            )
            .scalar_subquery()
        )

    head = select(
        literal_column("'c'").label("kind"),
        _C.checkpoint_id,
        _C.parent_checkpoint_id,
        _C.type,
        _C.checkpoint.label("data"),
        _C.metadata_type,
        _C.metadata,
        _WATERMARK.scalar_subquery().label("watermark"),
        null().label("task_id"),
        null().label("idx"),
        null().label("channel"),
        null().label("version"),
        null().label("task_path"),
    ).where(_C.thread_key == tk, _C.ns_key == nk, _C.checkpoint_id == latest_id)
    writes = select(
        literal_column("'w'"),
        _W.checkpoint_id,
        null(),
        _W.type,
        _W.blob,
        null(),
        null(),
        null(),
        _W.task_id,
        _W.idx,
        _W.channel,
        null(),
        _W.task_path,
    ).where(_W.thread_key == tk, _W.ns_key == nk, _W.checkpoint_id == latest_id)
    blobs = select(
        literal_column("'b'"),
        null(),
        null(),
        blob_column("type"),
        blob_column("blob"),
        null(),
        null(),
        null(),
        null(),
        null(),
        chv.c.channel,
        chv.c.version,
        null(),
    )
    return union_all(head, writes, blobs)


_AllRow = namedtuple(
    "_AllRow",
    "kind checkpoint_id parent_checkpoint_id type data metadata_type metadata watermark "
    "task_id idx channel version task_path",
)
_HOT = {"latest": _LATEST, "by_id": _BY_ID, "watermark": _WATERMARK}


@functools.lru_cache(maxsize=256)
def _compiled(dialect: Dialect, name: str, n_pairs: int = 0) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """(SQL in the driver's paramstyle, parameter names in order, default values) of a hot statement."""
    if name == "rest":
        statement = _rest(n_pairs)
    elif name == "latest_all":
        statement = _latest_all(dialect.name)
    else:
        statement = _HOT[name]
    compiled = statement.compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


async def _driver_rows(
    conn: AsyncConnection, name: str, params: dict[str, Any], n_pairs: int = 0
) -> list[tuple[Any, ...]]:
    """Run a hot statement on the driver's connection under ``conn`` (aiomysql, psycopg or aiosqlite)."""
    sql, names, defaults = _compiled(conn.dialect, name, n_pairs)
    args: tuple[Any, ...] | dict[str, Any]
    if names:  # positional paramstyle (aiomysql's format, aiosqlite's qmark)
        args = tuple(params[k] if k in params else defaults[k] for k in names)
    else:  # named (psycopg's pyformat)
        args = {k: params.get(k, v) for k, v in defaults.items()}
    if not conn.in_transaction():
        await conn.begin()  # so that closing ``conn`` ends what the driver's statements began
    driver: Any = (await conn.get_raw_connection()).driver_connection
    try:
        if conn.dialect.name == "mysql":
            async with driver.cursor() as cur:
                await cur.execute(sql, args)
                return list(await cur.fetchall())
        if conn.dialect.name == "postgresql":  # text is stored NUL-escaped there (tables.pg_escape)
            assert isinstance(args, dict)
            args = {k: pg_escape(v) if isinstance(v, str) else v for k, v in args.items()}
            async with driver.cursor() as cur:
                await cur.execute(sql, args)
                rows = await cur.fetchall()
            return [tuple(pg_unescape(v) if isinstance(v, str) else v for v in row) for row in rows]
        async with driver.execute(sql, args) as cur:
            return list(await cur.fetchall())
    except Exception as exc:
        # the driver's own errors (a lost connection surfaces as IncompleteReadError) are not
        # SQLAlchemy's: say that the read model failed, so the caller reads the log instead
        url = conn.engine.url.render_as_string(hide_password=True)
        raise ReadModelError(f"a read from {url!r} failed ({type(exc).__name__}: {exc})", url=url) from exc


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
        row = _all_row(await _driver_rows(conn, "latest_all", params))
        if row is not None:
            return row, None if row.watermark is None else int(row.watermark)
    else:
        rows = await _driver_rows(conn, name, params)
        if rows:
            row = _OneRow(*rows[0])
            return row, None if row.watermark is None else int(row.watermark)
    if projection_name is None:
        return None, 0
    if not complete:
        return None, None
    # No row, so no watermark from that statement. Read the watermark, then look again: without
    # one snapshot for both statements (SQLite outside a transaction), only that order is safe.
    found = await _driver_rows(conn, "watermark", params)
    mark = int(found[0][0]) if found and found[0][0] is not None else None
    rows = await _driver_rows(conn, name, params)
    return (_OneRow(*rows[0]) if rows else None), mark


def _all_row(rows: Sequence[tuple[Any, ...]]) -> Any:
    """The ``_OneRow`` (with ``rest``) of the rows of the ``latest_all`` statement, or None."""
    head: Any = None
    rest = []
    for raw in rows:
        r = _AllRow(*raw)
        if r.kind == "c":
            head = r
        else:
            rest.append(_RestRow(r.kind, r.task_id, r.idx, r.channel, r.version, r.type, r.data, r.task_path))
    if head is None:
        return None
    return _OneRow(
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
    """The pending writes (in ``writes_sort_key`` order) and the blobs of ``_RestRow``s."""
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
    if row.rest is not None:
        # read with the row: the newest blob of each channel that has any. Used if it holds every
        # blob the checkpoint names, except of channels without a blob at all (none to read then:
        # a checkpoint's blobs are applied with it or before it); else the thread forked
        wanted = set(pairs)
        have = {(r.channel, r.version) for r in row.rest if r.kind == "b"}
        stored = {channel for channel, _ in have}
        if all(p in have or p[0] not in stored for p in wanted):
            rest = [r for r in row.rest if r.kind == "w" or (r.channel, r.version) in wanted]
            pending, blobs = await _from_rest(conn, serde, tk, rest)
            return _tuple(serde, thread_id, ns, row, checkpoint, blobs, pending)
    if len(pairs) > PAGE:  # a very wide state: page the blobs
        blobs = await _blobs_for(conn, tk, nk, set(pairs))
        pending = (await _writes_for(conn, serde, [(tk, nk, cid)]))[(tk, nk, cid)]
    else:
        params: dict[str, Any] = {"tk": tk, "nk": nk, "cid": cid}
        for i, (channel, version) in enumerate(pairs or [("", "")]):  # an empty IN does not compile
            params[f"c{i}"], params[f"v{i}"] = channel, version
        rows = [_RestRow(*raw) for raw in await _driver_rows(conn, "rest", params, max(1, len(pairs)))]
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
) -> AsyncIterator[CheckpointTuple]:
    """Checkpoints newest first (per thread and namespace), as LangGraph's ``list``.

    Pages by key, never by offset: each page starts strictly after the last row of the one before
    in ``(checkpoint_id DESC, thread_key, ns_key)`` order, so rows written or deleted meanwhile
    cannot repeat or skip a row, whatever snapshot each statement sees (SQLite starts a fresh one
    per statement). Tuples are yielded page by page, the first after the first page.
    """
    if limit is not None and limit <= 0:
        return
    q = _head_query()
    if thread_id is not None:
        q = q.where(_C.thread_key == token(thread_id, field="thread_id"))
    if ns is not None:
        q = q.where(_C.ns_key == token(ns, field="checkpoint_ns"))
    if checkpoint_id:
        q = q.where(_C.checkpoint_id == checkpoint_id)
    if before_id:
        q = q.where(_C.checkpoint_id < before_id)
    q = q.order_by(_C.checkpoint_id.desc(), _C.thread_key, _C.ns_key)
    emitted = 0
    after: Row[Any] | None = None
    while True:
        page_size = PAGE if (filter or limit is None) else min(PAGE, limit - emitted)
        page = q if after is None else q.where(_after(after))
        rows = (await conn.execute(page.limit(page_size))).all()
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


def _after(row: Row[Any]) -> Any:
    """Rows after ``row`` in ``(checkpoint_id DESC, thread_key, ns_key)`` order."""
    return or_(
        _C.checkpoint_id < row.checkpoint_id,
        and_(
            _C.checkpoint_id == row.checkpoint_id,
            or_(
                _C.thread_key > row.thread_key, and_(_C.thread_key == row.thread_key, _C.ns_key > row.ns_key)
            ),
        ),
    )


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
