"""Skialith for LangGraph: a checkpointer with a write-ahead log on NATS JetStream."""

from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import (
    CodecError,
    ConfigError,
    ConnectError,
    LogError,
    MigrationError,
    ProjectionError,
    PublishError,
    ReadModelError,
    SkialithError,
    StreamNotFoundError,
    SubjectError,
)

if TYPE_CHECKING:
    from .agent import AgentRecord, AgentState, SkialithAgent
    from .checkpointer import SkialithCheckpointer
    from .projector import Projector
    from .traces import Trace, TraceIngest

# imported on first use: LangGraph, nats and SQLAlchemy take seconds to import, which every
# `skialith --version` would pay
_LAZY = {
    "AgentRecord": ".agent",
    "AgentState": ".agent",
    "Projector": ".projector",
    "SkialithAgent": ".agent",
    "SkialithCheckpointer": ".checkpointer",
    "Trace": ".traces",
    "TraceIngest": ".traces",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AgentRecord",
    "AgentState",
    "CodecError",
    "ConfigError",
    "ConnectError",
    "LogError",
    "MigrationError",
    "ProjectionError",
    "Projector",
    "PublishError",
    "ReadModelError",
    "Settings",
    "SkialithAgent",
    "SkialithCheckpointer",
    "SkialithError",
    "StreamNotFoundError",
    "SubjectError",
    "Trace",
    "TraceIngest",
]

__version__ = "0.1.0"
