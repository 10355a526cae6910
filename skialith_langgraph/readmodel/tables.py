"""The SQL read model: SQLAlchemy Core tables, one MetaData.

Ids that can be arbitrarily long (thread ids, namespaces, agent ids) are keyed by their subject
token (``*_key``, at most 121 ASCII characters) and kept verbatim in a TEXT column beside it.
Ids LangGraph generates (checkpoint ids, task ids) and channel names are keyed verbatim, in a
binary collation so that ordering matches Python's string ordering.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

metadata = MetaData()

KEY = String(128).with_variant(mysql.VARCHAR(128, charset="ascii", collation="ascii_bin"), "mysql")
ID = String(255).with_variant(mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), "mysql")
SHORT = String(64)
BLOB = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql")
TIME = Float(53)  # DOUBLE on MySQL (a bare Float is single precision there), REAL on SQLite
TEXT = Text().with_variant(mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin"), "mysql")

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
