"""What every benchmark compares: a named saver with the durability settings it runs under."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

MEMORY = "InMemorySaver"
SQLITE = "AsyncSqliteSaver"
POSTGRES = "AsyncPostgresSaver"
MYSQL = "AIOMySQLSaver"
SKIALITH = "Skialith"
SKIALITH_ALWAYS = "Skialith [sync always]"
SKIALITH_PG = "Skialith [PostgreSQL read model]"
SAVE_EVENT = "SkialithAgent.save_event"
SQLA_INSERT = "MySQL INSERT via SQLAlchemy"
FLOOR = "PubAck floor"
FLOOR_ALWAYS = "PubAck floor [sync always]"
RAW_INSERT = "raw MySQL INSERT"
# what every saver pays to serialize before it can store: the saver serde's dumps_typed calls
SERDE_PUT = "serde of aput (dumps_typed)"
SERDE_WRITES = "serde of aput_writes (dumps_typed)"


@dataclass(slots=True)
class Contender:
    """A checkpoint saver under test.

    Attributes:
        name: the label used in tables and charts.
        saver: the saver instance (async methods are used).
        settings: durability settings as read from the server, for the tables.
        note: a caveat printed next to its figures, if any.
        skialith: True for the Skialith savers (ratios are taken against them).
    """

    name: str
    saver: BaseCheckpointSaver[Any]
    settings: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    skialith: bool = False
