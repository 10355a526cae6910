"""The hot read statements (a thread's latest checkpoint, list pages) and how they run: compiled
once per dialect and shape, executed on the driver's own cursor.

SQLAlchemy's execution and result layers cost ~0.4 ms a statement on aiomysql, more than the server
does; these statements skip them. :mod:`queries` turns their rows into LangGraph's types.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from typing import Any

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
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import ReadModelError
from .hot import DRIVER, PREPARED
from .tables import (
    checkpoint_blobs,
    checkpoint_writes,
    checkpoints,
    pg_escape,
    pg_unescape,
    projection,
    stream_identity,
    thread_channels,
)

_C = checkpoints.c
_W = checkpoint_writes.c
_B = checkpoint_blobs.c


def head_query() -> Select[Any]:
    """The columns of a checkpoint row that reads return (``PageRow``)."""
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
# ``rest``: the pending writes and newest blobs read with the row (``RestRow``s), or None
OneRow = namedtuple(
    "OneRow",
    "checkpoint_id parent_checkpoint_id type checkpoint metadata_type metadata watermark rest",
    defaults=(None,),
)
RestRow = namedtuple("RestRow", "kind task_id idx channel version type blob task_path")


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
    snapshot, one round trip): ``kind`` 'c', 'w' and 'b' rows in ``AllRow``'s shape.

    The newest blob version of each channel is what the latest checkpoint of a thread refers to
    unless the thread forked (``update_state`` on an older checkpoint); :func:`tuple_of` checks
    every (channel, version) the checkpoint names against them and reads the missing ones with
    the second statement. The channels are found by a skip scan of the blobs' key (a recursive
    CTE; on MySQL-family servers ``skialith_thread_channels``): one index probe per channel, so
    the cost follows the number of channels, not the thread's history."""
    tk: Any = bindparam("tk")
    nk: Any = bindparam("nk")
    c2 = checkpoints.alias("c2")
    b2, b3, b4 = (checkpoint_blobs.alias(n) for n in ("b2", "b3", "b4"))
    # every lookup below is an ORDER BY ... LIMIT 1 or a primary key probe, so that the plan is an
    # index probe whatever the planner's statistics (a fresh table's lead it to scan the thread)
    latest_id: Any
    if dialect == "mysql":
        # MAX of the key's last column under an equal prefix is read off the index before the
        # statement runs ("Select tables optimized away"): cheaper than ORDER BY ... LIMIT 1 there
        latest_id = (
            select(func.max(c2.c.checkpoint_id))
            .where(c2.c.thread_key == tk, c2.c.ns_key == nk)
            .scalar_subquery()
        )
    else:
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

    # the newest (channel, version) of each channel that has blobs, and the blob row of each: one
    # index probe per channel, so the cost follows the number of channels, not the thread's history
    pairs: Any
    where: Any
    cols: tuple[Any, ...]  # type, blob, channel, version
    if dialect == "mysql":
        # MariaDB and MySQL skip between channels neither by a loose index scan (they choose by the
        # table's average versions per channel, which many short threads keep near one) nor by the
        # recursive CTE below (a correlated range is read from the start of the thread), and a
        # dependent subquery per channel costs ~100 us each: skialith_thread_channels holds each
        # channel's newest version, joined to its blob by primary key
        tc = thread_channels.alias("tc")
        pairs = tc.join(
            b4,
            and_(
                b4.c.thread_key == tc.c.thread_key,
                b4.c.ns_key == tc.c.ns_key,
                b4.c.channel == tc.c.channel,
                b4.c.version == tc.c.version,
            ),
        )
        where = and_(tc.c.thread_key == tk, tc.c.ns_key == nk)
        cols = (b4.c.type, b4.c.blob, tc.c.channel, tc.c.version)
    else:
        # a skip scan of the blobs' key by recursive CTE, one probe per channel
        ch = select(next_channel().label("channel")).cte("skialith_ch", recursive=True)
        ch = ch.union_all(select(next_channel(ch.c.channel)).where(ch.c.channel.is_not(None)))
        newest_of = (
            select(b3.c.version, b3.c.type, b3.c.blob)
            .where(b3.c.thread_key == tk, b3.c.ns_key == nk, b3.c.channel == ch.c.channel)
            .order_by(b3.c.version.desc())
            .limit(1)
        )
        if dialect == "postgresql":
            # the newest blob row of each channel by LATERAL ... LIMIT 1: a join to the blobs would
            # be planned by their statistics (a hash join over every version of the thread when
            # the table is young)
            nb = newest_of.lateral("skialith_nb")
            pairs = ch.join(nb, true())
            where = ch.c.channel.is_not(None)
            cols = (nb.c.type, nb.c.blob, ch.c.channel, nb.c.version)
        else:
            # SQLite (no LATERAL): the newest version of each channel, then its row's columns by
            # primary key probes. Not a join to the blobs: with statistics (ANALYZE, PRAGMA
            # optimize) SQLite builds a Bloom filter for it by reading the whole blobs table
            newest = newest_of.with_only_columns(b3.c.version).scalar_subquery()
            chv = (
                select(ch.c.channel, newest.label("version"))
                .where(ch.c.channel.is_not(None))
                .cte("skialith_chv")
            )
            at = and_(
                b4.c.thread_key == tk,
                b4.c.ns_key == nk,
                b4.c.channel == chv.c.channel,
                b4.c.version == chv.c.version,
            )
            pairs = chv
            where = true()  # the CTE keeps found channels only
            cols = (
                select(b4.c.type).where(at).scalar_subquery(),
                select(b4.c.blob).where(at).scalar_subquery(),
                chv.c.channel,
                chv.c.version,
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
    blobs = (
        select(
            literal_column("'b'"),
            null(),
            null(),
            cols[0],
            cols[1],
            null(),
            null(),
            null(),
            null(),
            null(),
            cols[2],
            cols[3],
            null(),
        )
        .select_from(pairs)
        .where(where)
    )
    return union_all(head, writes, blobs)


def _page(thread: bool, ns: bool, cid: bool, before: bool, after: bool, mark: bool = False) -> Any:
    """One page of ``list_tuples`` (``head_query`` rows, newest first), every value a parameter;
    with ``mark``, each row also carries the watermark (as ``_ONE``), from the same snapshot."""
    q = head_query()
    if mark:
        q = q.add_columns(_WATERMARK.scalar_subquery().label("watermark"))
    if thread:
        q = q.where(_C.thread_key == bindparam("tk"))
    if ns:
        q = q.where(_C.ns_key == bindparam("nk"))
    if cid:
        q = q.where(_C.checkpoint_id == bindparam("cid"))
    if before:
        q = q.where(_C.checkpoint_id < bindparam("before"))
    if after:
        q = q.where(
            or_(
                _C.checkpoint_id < bindparam("a_cid"),
                and_(
                    _C.checkpoint_id == bindparam("a_cid"),
                    or_(
                        _C.thread_key > bindparam("a_tk"),
                        and_(_C.thread_key == bindparam("a_tk"), _C.ns_key > bindparam("a_nk")),
                    ),
                ),
            )
        )
    return q.order_by(_C.checkpoint_id.desc(), _C.thread_key, _C.ns_key).limit(bindparam("lim"))


def _page_rest(n_ids: int, n_pairs: int) -> Any:
    """The pending writes of ``n_ids`` checkpoints of one thread and namespace and ``n_pairs`` of
    its (channel, version) blobs, in ``PageRest``'s shape."""
    tk: Any = bindparam("tk")
    nk: Any = bindparam("nk")
    ids: list[Any] = [bindparam(f"i{i}") for i in range(n_ids)]
    pairs = [tuple_(bindparam(f"c{i}"), bindparam(f"v{i}")) for i in range(n_pairs)]
    return union_all(
        select(
            literal_column("'w'").label("kind"),
            _W.checkpoint_id,
            _W.task_id,
            _W.idx,
            _W.channel,
            null().label("version"),
            _W.type,
            _W.blob,
            _W.task_path,
        ).where(_W.thread_key == tk, _W.ns_key == nk, _W.checkpoint_id.in_(ids)),
        select(
            literal_column("'b'"), null(), null(), null(), _B.channel, _B.version, _B.type, _B.blob, null()
        ).where(_B.thread_key == tk, _B.ns_key == nk, tuple_(_B.channel, _B.version).in_(pairs)),
    )


PageRow = namedtuple(
    "PageRow",
    "thread_key ns_key checkpoint_id thread_id checkpoint_ns parent_checkpoint_id type checkpoint "
    "metadata_type metadata",
)
PageRest = namedtuple("PageRest", "kind checkpoint_id task_id idx channel version type blob task_path")
AllRow = namedtuple(
    "AllRow",
    "kind checkpoint_id parent_checkpoint_id type data metadata_type metadata watermark "
    "task_id idx channel version task_path",
)
_HOT = {"latest": _LATEST, "by_id": _BY_ID, "watermark": _WATERMARK}


@functools.lru_cache(maxsize=256)
def _compiled(
    dialect: Dialect, name: str, n_pairs: int = 0, shape: tuple[Any, ...] = ()
) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """(SQL in the driver's paramstyle, parameter names in order, default values) of a hot statement."""
    statement: Any
    if name == "rest":
        statement = _rest(n_pairs)
    elif name == "page":
        statement = _page(*shape)
    elif name == "page_rest":
        statement = _page_rest(*shape)
    elif name == "latest_all":
        statement = _latest_all(dialect.name)
    else:
        statement = _HOT[name]
    compiled = statement.compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


async def driver_rows(
    conn: AsyncConnection, name: str, params: dict[str, Any], n_pairs: int = 0, shape: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """Run a hot statement on the driver's connection under ``conn`` (aiomysql, asyncmy, psycopg or
    aiosqlite). On a hot connection (:mod:`.hot`: autocommit, driver known) it runs without a
    BEGIN, prepared on the server once per connection (asyncmy's binary protocol, psycopg's
    ``prepare``)."""
    hot = conn.info.get(DRIVER)
    try:
        if hot is not None:
            return await _hot_rows(conn, hot, name, params, n_pairs, shape)
        sql, names, defaults = _compiled(conn.dialect, name, n_pairs, shape)
        args: tuple[Any, ...] | dict[str, Any]
        if names:  # positional paramstyle (aiomysql's format, aiosqlite's qmark)
            args = tuple(params[k] if k in params else defaults[k] for k in names)
        else:  # named (psycopg's pyformat)
            args = {k: params.get(k, v) for k, v in defaults.items()}
        if not conn.in_transaction():
            await conn.begin()  # so that closing ``conn`` ends what the driver's statements began
        driver: Any = (await conn.get_raw_connection()).driver_connection
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


@functools.lru_cache(maxsize=256)
def _qmark(name: str, n_pairs: int, shape: tuple[Any, ...]) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """A MySQL hot statement with ``?`` placeholders, for server-side prepared statements."""
    return _compiled(_QMARK_MYSQL, name, n_pairs, shape)


_QMARK_MYSQL = mysql_dialect.dialect(paramstyle="qmark")


async def _hot_rows(
    conn: AsyncConnection,
    driver: Any,
    name: str,
    params: dict[str, Any],
    n_pairs: int,
    shape: tuple[Any, ...],
) -> list[tuple[Any, ...]]:
    key = (name, n_pairs, shape)
    dialect = conn.dialect
    if dialect.name == "mysql":
        prepare = getattr(driver, "prepare", None)  # asyncmy; aiomysql has no prepared statements
        if prepare is None:
            sql, names, defaults = _compiled(dialect, name, n_pairs, shape)
            async with driver.cursor() as cur:
                await cur.execute(sql, tuple(params[k] if k in params else defaults[k] for k in names))
                return list(await cur.fetchall())
        sql, names, defaults = _qmark(name, n_pairs, shape)
        prepared: dict[Any, Any] = conn.info[PREPARED]
        statement = prepared.get(key)
        if statement is None:
            statement = prepared[key] = await prepare(sql)
        result = await statement.execute(tuple(params[k] if k in params else defaults[k] for k in names))
        return list(result.rows or ())
    # PostgreSQL (psycopg): prepared by the server on first use on this connection
    sql, _, defaults = _compiled(dialect, name, n_pairs, shape)
    args = {k: params.get(k, v) for k, v in defaults.items()}
    args = {k: pg_escape(v) if isinstance(v, str) else v for k, v in args.items()}
    async with driver.cursor() as cur:
        await cur.execute(sql, args, prepare=True)
        rows = await cur.fetchall()
    return [tuple(pg_unescape(v) if isinstance(v, str) else v for v in row) for row in rows]
