"""The projector: a durable JetStream pull consumer that materialises the log into the read model.

Each fetched batch is applied in one database transaction that also advances the projection
watermark; the batch is acknowledged only after the commit. A redelivered message (after a crash
between commit and ack) is at or below the watermark and is skipped, and every write is an
idempotent upsert, so nothing is applied twice and nothing is lost. A delivery that never arrived
(the consumer numbers them) is not acked past: the consumer is recreated at the watermark.

The loop is :class:`consumer.Consumer`, shared with the trace ingest; this module says what a
batch is (``(seq, message)`` pairs) and how it is applied (``readmodel.apply.apply_messages``).

Throughput: the next batch is fetched and decoded while one commits; see :class:`Puller` and
``readmodel.apply.Batch`` for where the time per message went and what was done about it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from .codec import Msg
from .config import Settings
from .consumer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_LINGER,
    Consumer,
    ConsumerStats,
    Puller,
)
from .readmodel import PROJECTION
from .readmodel.apply import apply_messages

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_FETCH_TIMEOUT", "Projector", "ProjectorStats", "Puller"]


@dataclass(slots=True)
class ProjectorStats(ConsumerStats):
    """Progress, for logs and metrics."""


class Projector(Consumer[tuple[int, Msg]]):
    """Log -> read model. Several replicas (distinct ``replica`` ids) may run at once.

    ``linger`` (seconds, default 0.005) is how long a batch smaller than ``batch_size`` waits for
    more messages before it commits: it adds up to that much projection lag under a light load, and
    spares a transaction per message under a trickle. 0 commits at once.

    Example:
        >>> projector = Projector(Settings())  # doctest: +SKIP
        >>> await projector.start()            # doctest: +SKIP
        >>> await projector.stop()             # doctest: +SKIP
    """

    role = "projector"
    stats: ProjectorStats

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        name: str = PROJECTION,
        replica: str = "0",
        batch_size: int = DEFAULT_BATCH_SIZE,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        super().__init__(
            settings,
            name=name,
            replica=replica,
            batch_size=batch_size,
            fetch_timeout=fetch_timeout,
            linger=linger,
        )
        self.stats = ProjectorStats()

    @property
    def durable(self) -> str:
        """Each replica has its own durable consumer over the whole stream; the watermark row lock
        makes them take turns, so any number may run (for availability, not throughput)."""
        return f"skialith-projector-{self.name}-{self.replica}"

    @property
    def watermark_name(self) -> str:
        """The row of ``skialith_projection`` that holds the projection's watermark: ``name``."""
        return self.name

    def _item(self, seq: int, reply: str, msg: Msg) -> tuple[int, Msg]:
        return seq, msg

    async def _apply(self, conn: AsyncConnection, items: list[tuple[int, Msg]], upto: int) -> int:
        return await apply_messages(conn, items, name=self.name, upto=upto)
