"""The SQL read model: SQLAlchemy Core tables, one MetaData.

Ids that can be arbitrarily long (thread ids, namespaces, agent ids) are keyed by their subject
token (``*_key``, at most 121 ASCII characters) and kept verbatim in a TEXT column beside it.
Ids LangGraph generates (checkpoint ids, task ids) and channel names are keyed verbatim, in a
binary NO PAD collation, so that keys compare byte for byte ("x" and "x " are two keys) and
ordering matches Python's string ordering (see :func:`nopad_collation`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    VARCHAR,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles

metadata = MetaData()

# PostgreSQL compares text by the database's locale unless told otherwise: "C" compares bytes, so
# keys order as Python orders them (and as on SQLite and MySQL's binary collations)
KEY = (
    String(128)
    .with_variant(mysql.VARCHAR(128, charset="ascii", collation="ascii_bin"), "mysql")
    .with_variant(postgresql.VARCHAR(128, collation="C"), "postgresql")
)


def nopad_collation(dialect: Dialect) -> str:
    """The utf8mb4 collation that compares bytes and does not pad, on this MySQL-family server.

    ``utf8mb4_bin`` is PAD SPACE on MariaDB, MySQL and TiDB: "x" and "x " are one key there.
    MariaDB (10.2+) has ``utf8mb4_nopad_bin``, MySQL 8.0.17+ ``utf8mb4_0900_bin``. TiDB reports
    itself as MySQL 8.0.11 and needs ``utf8mb4_0900_bin`` (v7.4+, new collation framework on):
    tables are first created with ``utf8mb4_bin`` there and the ``nopad_keys`` migration, which asks
    the server which collations it has, converts them. MySQL 5.7 has none: keys that differ only
    by trailing spaces collide there (unsupported).
    """
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    version = tuple(v for v in (dialect.server_version_info or ())[:3] if isinstance(v, int))
    return "utf8mb4_0900_bin" if version >= (8, 0, 17) else "utf8mb4_bin"


class VerbatimId(String):
    """A verbatim id column: VARCHAR in a binary NO PAD collation on MySQL-family servers."""


@compiles(VerbatimId, "mysql")
@compiles(VerbatimId, "mariadb")
def _verbatim_id_mysql(type_: VerbatimId, compiler: Any, **kw: Any) -> str:
    return f"VARCHAR({type_.length}) CHARACTER SET utf8mb4 COLLATE {nopad_collation(compiler.dialect)}"


def pg_escape(value: str) -> str:
    """``value`` as PostgreSQL can store it in a text column, which refuses NUL: NUL and \\x01
    become \\x01\\x01 and \\x01\\x02, a prefix-free code that keeps the order of the values."""
    if "\x00" in value or "\x01" in value:
        return value.replace("\x01", "\x01\x02").replace("\x00", "\x01\x01")
    return value


def pg_unescape(value: str) -> str:
    """The value :func:`pg_escape` stored as ``value``."""
    if "\x01" in value:
        return value.replace("\x01\x01", "\x00").replace("\x01\x02", "\x01")
    return value


class _PgSafe(TypeDecorator[str]):
    """Text on PostgreSQL: NUL characters stored escaped (see :func:`pg_escape`)."""

    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return pg_escape(value) if isinstance(value, str) else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return pg_unescape(value) if isinstance(value, str) else value


class PgVarchar(_PgSafe):
    impl = VARCHAR


class PgText(_PgSafe):
    impl = Text


ID = VerbatimId(255).with_variant(PgVarchar(255, collation="C"), "postgresql")
SHORT = String(64).with_variant(PgVarchar(64, collation="C"), "postgresql")
BLOB = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql")
TIME = Float(53)  # DOUBLE on MySQL (a bare Float is single precision there), REAL on SQLite
TEXT = (
    Text()
    .with_variant(mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin"), "mysql")
    .with_variant(PgText(), "postgresql")
)

checkpoints = Table(
    "skialith_checkpoints",
    metadata,
    Column("thread_key", KEY, primary_key=True),
    Column("ns_key", KEY, primary_key=True),
    Column("checkpoint_id", ID, primary_key=True),
    Column("thread_id", TEXT, nullable=False),
    Column("checkpoint_ns", TEXT, nullable=False),
    Column("parent_checkpoint_id", ID, nullable=True),
    Column("run_id", ID, nullable=True, index=True),
    Column("type", SHORT, nullable=False),
    Column("checkpoint", BLOB, nullable=False),
    Column("metadata_type", SHORT, nullable=False),
    Column("metadata", BLOB, nullable=False),
    Column("seq", BigInteger, nullable=False),
)
# a thread's last stream sequence and checkpoint count from the index alone: the thread list of
# 'skialith threads' (most recently written first) reads it instead of every checkpoint row
checkpoints_thread_seq = Index(
    "ix_skialith_checkpoints_thread_seq", checkpoints.c.thread_key, checkpoints.c.seq
)

checkpoint_blobs = Table(
    "skialith_checkpoint_blobs",
    metadata,
    Column("thread_key", KEY, primary_key=True),
    Column("ns_key", KEY, primary_key=True),
    Column("channel", ID, primary_key=True),
    Column("version", ID, primary_key=True),
    Column("type", SHORT, nullable=False),
    Column("blob", BLOB, nullable=False),
)

# The newest blob version of each channel, per thread and namespace. On MySQL-family servers the
# read of a thread's latest checkpoint joins its blobs through it, a primary-key probe per channel
# (statements._latest_all): their optimizers, going by the table's average versions per channel,
# scan every blob version of the thread for the newest instead of skipping between channels.
# Filled on MySQL-family servers only, in the transaction that stores the blobs; the read checks
# every version the checkpoint names against what it returns, so a row missing or behind costs
# that read a second statement, never a wrong answer.
thread_channels = Table(
    "skialith_thread_channels",
    metadata,
    Column("thread_key", KEY, primary_key=True),
    Column("ns_key", KEY, primary_key=True),
    Column("channel", ID, primary_key=True),
    Column("version", ID, nullable=False),
)

checkpoint_writes = Table(
    "skialith_checkpoint_writes",
    metadata,
    Column("thread_key", KEY, primary_key=True),
    Column("ns_key", KEY, primary_key=True),
    Column("checkpoint_id", ID, primary_key=True),
    Column("task_id", ID, primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("channel", ID, nullable=False),
    Column("type", SHORT, nullable=False),
    Column("blob", BLOB, nullable=False),
    Column("task_path", TEXT, nullable=False),
)

agent_events = Table(
    "skialith_agent_events",
    metadata,
    Column("agent_key", KEY, primary_key=True),
    Column("kind", SHORT, primary_key=True),  # "event" or "checkpoint"
    Column("step", BigInteger, primary_key=True, autoincrement=False),
    Column("name", ID, primary_key=True),
    Column("agent_id", TEXT, nullable=False),
    Column("type", SHORT, nullable=False),
    Column("payload", BLOB, nullable=False),
    Column("ts", TIME, nullable=False),
    Column("seq", BigInteger, nullable=False),
)

projection = Table(
    "skialith_projection",
    metadata,
    Column("name", SHORT, primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    # epoch seconds (the projector's clock) at which a running consumer last said it is alive: every
    # few seconds, idle or not; NULL once it stopped. Readers do not wait for a projector that is
    # not alive (see views.projector_alive).
    Column("alive_at", TIME, nullable=True),
)

schema_version = Table(
    "skialith_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)


agent_traces = Table(
    "skialith_agent_traces",
    metadata,
    Column("source", SHORT, primary_key=True),  # "langgraph" or "agent"
    Column("trace_key", KEY, primary_key=True),  # subject token of the thread_id or agent_id
    Column("span_key", KEY, primary_key=True),  # digest of the span's natural key (see traces.py)
    Column("trace_id", TEXT, nullable=False),  # the thread_id or agent_id
    Column("checkpoint_ns", TEXT, nullable=False),
    Column("kind", SHORT, nullable=False),  # "task", "checkpoint" or "event"
    Column("name", ID, nullable=False),  # node, checkpoint source ("input", "loop", ...) or event name
    Column("step", BigInteger, nullable=True),
    Column("checkpoint_id", ID, nullable=True, index=True),  # a task's: the checkpoint it ran from
    Column("parent_checkpoint_id", ID, nullable=True),
    Column("task_id", ID, nullable=True),
    Column("task_path", TEXT, nullable=True),
    Column("run_id", ID, nullable=True, index=True),
    Column("channels", TEXT, nullable=False),  # JSON list of channel names written
    Column("sends", TEXT, nullable=True),  # a checkpoint's pending Sends: JSON {"version", "nodes"}
    Column("status", SHORT, nullable=False),  # "ok", "error" or "interrupted"
    Column("started_at", TIME, nullable=True),  # epoch seconds (see traces.py for which clock)
    Column("finished_at", TIME, nullable=False),
    Column("duration", TIME, nullable=True),  # seconds
    Column("seq", BigInteger, nullable=False),  # stream sequence of the last message applied
)

# Values larger than one part (see apply.PART_SIZE) are stored here in parts, and the owning row's
# ``type`` becomes "parts:<n>:<digest>:<type>" with an empty blob: MySQL refuses a packet over
# max_allowed_packet (16 MiB by default), InnoDB a BLOB over 10% of the redo log, TiDB a row over 6 MiB.
blob_parts = Table(
    "skialith_blob_parts",
    metadata,
    Column("owner_key", KEY, primary_key=True),  # the thread_key or agent_key the value belongs to
    Column("digest", String(64), primary_key=True),
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("data", BLOB, nullable=False),
)

# The stream the read model was filled from: its name and creation time, in one row (id 1).
# Readers use the read model only for that stream; the projector refuses another (see identity.py).
stream_identity = Table(
    "skialith_stream",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("stream", ID, nullable=False),
    Column("created", SHORT, nullable=False),  # RFC 3339, UTC, as JetStream reports it
)

# Messages a consumer could never apply (undecodable, or refused by the database for good): one row
# each, written in the transaction that moves the consumer's watermark past it. No payload is kept;
# the message itself stays on the stream at ``seq`` for whoever wants to look at it.
dead_letters = Table(
    "skialith_dead_letters",
    metadata,
    Column("projection", SHORT, primary_key=True),  # the watermark name: "main", "traces-main", ...
    Column("seq", BigInteger, primary_key=True, autoincrement=False),  # its stream sequence
    Column("subject", TEXT, nullable=False),
    Column("reason", TEXT, nullable=False),  # error class and a short message, without data or SQL
    Column("size", BigInteger, nullable=False),  # bytes of the body
    Column("at", TIME, nullable=False),  # epoch seconds when it was set aside
)
