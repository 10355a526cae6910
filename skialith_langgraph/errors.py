"""Exceptions raised by skialith_langgraph.

Exception tree::

    SkialithError
    +-- ConfigError (also ValueError)      bad settings or arguments
    +-- SubjectError (also ValueError)     an id that cannot be used (names the field)
    +-- CodecError                         a message that cannot be decoded
    +-- LogError                           NATS JetStream trouble
    |   +-- ConnectError                   NATS unreachable (names the URL)
    |   +-- StreamNotFoundError
    |   +-- PublishError                   no PubAck within the timeout
    +-- ReadModelError                     SQL read model trouble (names the URL)
    |   +-- MigrationError
    +-- ProjectionError                    the projector cannot apply a message

Messages say what happened and what to do; context travels as keyword attributes
so that ``args`` and pickling keep working.
"""

from __future__ import annotations

from typing import Any


class SkialithError(Exception):
    """Base class of every error raised by skialith_langgraph."""


class ConfigError(SkialithError, ValueError):
    """Invalid settings or arguments."""


class SubjectError(SkialithError, ValueError):
    """An id that cannot be turned into a subject token."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"field": self.field}))


class CodecError(SkialithError):
    """A message on the stream that cannot be decoded."""


class LogError(SkialithError):
    """Trouble with NATS JetStream."""

    def __init__(self, message: str, *, url: str | None = None, subject: str | None = None) -> None:
        super().__init__(message)
        self.url, self.subject = url, subject

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"url": self.url, "subject": self.subject}))


class ConnectError(LogError):
    """NATS cannot be reached."""


class StreamNotFoundError(LogError):
    """The stream does not exist and may not be created."""


class PublishError(LogError):
    """A publish was not acknowledged by JetStream."""


class ReadModelError(SkialithError):
    """Trouble with the SQL read model."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"url": self.url}))


class MigrationError(ReadModelError):
    """The read model schema cannot be brought up to date."""


class ProjectionError(SkialithError):
    """The projector cannot apply a message."""


def _rebuild(cls: type[SkialithError], args: tuple[Any, ...], attrs: dict[str, Any]) -> SkialithError:
    exc = cls(*args)
    for key, value in attrs.items():
        setattr(exc, key, value)
    return exc
