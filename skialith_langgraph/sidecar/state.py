"""What one sidecar process shares across requests: settings, one checkpointer (its NATS
connection and engine serve the agent routes too), the inspector, the idempotency cache, metrics."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from .. import codec
from ..checkpointer import SkialithCheckpointer
from ..config import DEFAULT_DUPLICATE_WINDOW, Settings
from ..inspect import Inspector
from ..log import Log
from ..readmodel import ReadModel
from .defaults import DEFAULT_MAX_BODY
from .idempotency import Idempotency

__all__ = ["DEFAULT_MAX_BODY", "Limits", "SidecarState"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits.

    Attributes:
        max_body: bytes of a request body; larger ones get 413 naming this number.
    """

    max_body: int = DEFAULT_MAX_BODY


@dataclass
class Requests:
    """Counters of the ``/metrics`` endpoint."""

    total: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)


class SidecarState:
    """Created by :func:`create_app`; opened by the app's lifespan, closed at shutdown."""

    def __init__(self, settings: Settings, *, token: str | None, limits: Limits) -> None:
        self.settings = settings
        self.token = token
        self.limits = limits
        self.checkpointer = SkialithCheckpointer(settings=settings)
        self.inspector = Inspector(self.checkpointer)
        self.idempotency = Idempotency(window=DEFAULT_DUPLICATE_WINDOW)
        self.requests = Requests()
        self.serde = codec.strict_serde()  # what SkialithAgent uses by default, made once

    async def open(self) -> None:
        """Connect to NATS, ensure the stream and the tables (idempotent)."""
        await self.checkpointer.asetup()

    async def log_and_model(self) -> tuple[Log, ReadModel]:
        """The NATS log and read model of the running loop (one connection for all requests)."""
        core = await self.checkpointer._acore()
        return await core._log(), core.model

    async def close(self) -> None:
        await self.checkpointer.aclose()
