"""Skialith for LangGraph: a checkpointer with a write-ahead log on NATS JetStream."""

from .checkpointer import SkialithCheckpointer
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
from .projector import Projector

__all__ = [
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
    "SkialithCheckpointer",
    "SkialithError",
    "StreamNotFoundError",
    "SubjectError",
]

__version__ = "0.1.0"
