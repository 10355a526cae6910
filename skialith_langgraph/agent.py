"""SkialithAgent: durable, resumable state for plain async agents.

Every :meth:`SkialithAgent.checkpoint` and :meth:`SkialithAgent.save_event` is serialized, published
to NATS JetStream and returns once JetStream acknowledged it (PubAck); it never waits on the
database. The projector materialises them into ``skialith_agent_events``; :meth:`SkialithAgent.resume`
reads there, through the same read-your-writes view as the checkpointer, so it sees every
acknowledged checkpoint even while the projector lags, is stopped, or the database is down.

Addressing (LSS-02): a checkpoint is keyed by ``(agent_id, step)``, an event by
``(agent_id, step, name)``. Publishing the same key again (a retried step) leaves one row, holding
the last value acknowledged.

Subjects, under the deployment's prefix ``p``::

    p.e.<agent>.c.<step>           a checkpoint
    p.e.<agent>.v.<step>.<name>    an event

Example:
    >>> async with SkialithAgent(agent_id="my-agent") as agent:  # doctest: +SKIP
    ...     state = await agent.resume()
    ...     await agent.checkpoint(step=state.step_index, data={"messages": messages})
    ...     await agent.save_event("step-1", {"kind": "thought", "text": "..."})
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import select

from . import codec
from .config import Settings
from .errors import ConfigError
from .log import Log
from .readmodel import ReadModel
from .readmodel.apply import agent_owner, unspill
from .readmodel.tables import agent_events
from .subjects import check_length, token
from .views import consistent_view

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "EVENT", "AgentRecord", "AgentState", "SkialithAgent"]

CHECKPOINT = "checkpoint"  # EventMsg.kind of a checkpoint
EVENT = "event"  # EventMsg.kind of an event

_E = agent_events.c


@dataclass(frozen=True, slots=True)
class AgentState:
    """What :meth:`SkialithAgent.resume` found.

    Attributes:
        agent_id: the agent.
        step_index: the next step to run: the highest checkpointed step + 1, or 0 for a fresh agent.
        data: the data of that checkpoint, or ``{}`` for a fresh agent.
        last_step: the highest checkpointed step, or ``None`` for a fresh agent.
        checkpointed_at: when that checkpoint was taken (epoch seconds, the agent's clock).
    """

    agent_id: str
    step_index: int
    data: Any
    last_step: int | None = None
    checkpointed_at: float | None = None

    @property
    def resumed(self) -> bool:
        """Whether a checkpoint was found (``False`` for a fresh agent)."""
        return self.last_step is not None


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """One checkpoint or event of an agent, as stored.

    Attributes:
        agent_id: the agent.
        kind: ``"checkpoint"`` or ``"event"``.
        step: the step it belongs to.
        name: the event name (``""`` for a checkpoint).
        payload: the checkpoint data or event payload.
        ts: when it was saved (epoch seconds, the agent's clock).
        seq: its JetStream stream sequence.
    """

    agent_id: str
    kind: str
    step: int
    name: str
    payload: Any
    ts: float
    seq: int


MAX_STEP = 2**63 - 2  # the read model's steps are BIGINT, and the step after a checkpoint must fit too


def _step(value: Any, field: str = "step") -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{field} must be an int >= 0, got {value!r}")
    try:
        step = operator.index(value)
    except TypeError:
        raise ConfigError(f"{field} must be an int >= 0, got {type(value).__name__}: {value!r}") from None
    if not 0 <= step <= MAX_STEP:
        raise ConfigError(
            f"{field} must be an int from 0 to 2**63 - 2 (the read model's range), got {step!r}"
        )
    return step


class SkialithAgent:
    """Durable checkpoints and events for one agent, on NATS JetStream.

    Use it as an async context manager (it connects on entry and closes on exit), or call
    :meth:`open`/:meth:`close` yourself; the first call connects too.

    Args:
        agent_id: the agent's id: any non-empty string (it is encoded into subject tokens).
        nats_url: NATS URL; default ``SKIALITH_NATS_URL`` or what ``skialith up`` starts.
        database_url: SQLAlchemy async URL of the read model; default ``SKIALITH_DATABASE_URL``
            or SQLite under ``./.skialith/``.
        settings: a complete :class:`Settings` (then the other arguments must be omitted).
        serde: the serializer of checkpoint data and event payloads; by default LangGraph's
            ``JsonPlusSerializer`` in strict msgpack mode, which constructs only LangGraph's safe
            types when reading (pass ``JsonPlusSerializer(allowed_msgpack_modules=[...])`` for yours).
        **options: any other :class:`Settings` field, e.g. ``read_wait=0.2``.

    Raises:
        ConfigError: ``agent_id`` is not a non-empty string, or an option is invalid.
    """

    def __init__(
        self,
        agent_id: str,
        nats_url: str | None = None,
        database_url: str | None = None,
        *,
        settings: Settings | None = None,
        serde: SerializerProtocol | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(agent_id, str) or not agent_id:
            raise ConfigError(f"agent_id must be a non-empty str, got {agent_id!r}")
        if settings is not None and (nats_url or database_url or options):
            raise ConfigError("pass either settings=... or individual options, not both")
        self.agent_id = agent_id
        self.settings = settings or Settings.from_env(nats_url=nats_url, database_url=database_url, **options)
        self.serde: SerializerProtocol = serde or codec.strict_serde()
        self._key = token(agent_id, field="agent_id")
        self._step = 0
        self._log: Log | None = None
        self._model: ReadModel | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SkialithAgent(agent_id={self.agent_id!r}, step={self._step})"

    @property
    def step(self) -> int:
        """The step events are saved under by default: the ``step_index`` of the last
        :meth:`resume`, then one past the last :meth:`checkpoint` (0 before either)."""
        return self._step

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to NATS and ensure the stream. Idempotent.

        Raises:
            ConnectError: NATS is unreachable (the message names the URL and 'skialith up').
        """
        await self._connect()

    async def _connect(self) -> tuple[Log, ReadModel]:
        if self._log is None or self._model is None:
            async with self._lock:
                if self._log is None:
                    self._log = await Log.open(self.settings, ensure_stream=True)
                if self._model is None:
                    self._model = ReadModel.from_url(
                        self.settings.database_url, connect_timeout=self.settings.connect_timeout
                    )
        assert self._log is not None and self._model is not None
        return self._log, self._model

    async def close(self) -> None:
        """Close the NATS connection and the database engine. Idempotent."""
        log, model = self._log, self._model
        self._log = self._model = None
        if log is not None:
            await log.close()
        if model is not None:
            await model.close()

    async def __aenter__(self) -> SkialithAgent:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- writes -------------------------------------------------------------------------------

    async def checkpoint(self, step: int, data: Any) -> int:
        """Save the agent's state after ``step``; returns once JetStream acknowledged it.

        Idempotent by ``(agent_id, step)``: checkpointing a step again replaces its data.

        Args:
            step: the step just completed (>= 0), usually ``state.step_index``.
            data: anything the serializer handles.

        Returns:
            The stream sequence of the checkpoint.

        Raises:
            ConfigError: ``step`` is not an int >= 0.
            TypeError: the serializer cannot handle ``data`` (nothing was published).
            PublishError: JetStream did not acknowledge within ``publish_timeout`` seconds.
        """
        step = _step(step)
        msg = codec.EventMsg(
            agent_id=self.agent_id,
            kind=CHECKPOINT,
            name="",
            step=step,
            payload=self.serde.dumps_typed(data),
            ts=time.time(),
        )
        log, _ = await self._connect()
        key = log.subjects.agent_checkpoint_key(self._key, step)
        seq = await self._publish(log, log.subjects.agent_checkpoint(self._key), key, msg)
        self._step = step + 1
        return seq

    async def save_event(self, name: str, payload: Any, *, step: int | None = None) -> int:
        """Record an event of the current step; returns once JetStream acknowledged it.

        Idempotent by ``(agent_id, step, name)``: saving the same name again in the same step
        replaces the event, so a retried step does not duplicate its events.

        Args:
            name: the event's name within its step (at most 255 characters).
            payload: anything the serializer handles.
            step: the step it belongs to; default :attr:`step`.

        Returns:
            The stream sequence of the event.

        Raises:
            SubjectError: ``name`` is not a string or is too long (a ``ValueError`` naming it).
            ConfigError: ``step`` is not an int >= 0.
            TypeError: the serializer cannot handle ``payload`` (nothing was published).
            PublishError: JetStream did not acknowledge within ``publish_timeout`` seconds.
        """
        check_length(name, field="name")
        at = self._step if step is None else _step(step)
        msg = codec.EventMsg(
            agent_id=self.agent_id,
            kind=EVENT,
            name=name,
            step=at,
            payload=self.serde.dumps_typed(payload),
            ts=time.time(),
        )
        log, _ = await self._connect()
        key = log.subjects.agent_event_key(self._key, at, token(name, field="name"))
        return await self._publish(log, log.subjects.agent_event(self._key), key, msg)

    async def _publish(self, log: Log, subject: str, key: str, msg: codec.EventMsg) -> int:
        codec.check_type(msg.payload[0], field=f"the {msg.kind}")
        body = codec.dumps(msg)
        # an id of its own: an id repeated from an earlier write of the key (X, Y, X) would be
        # dropped as a duplicate; the projector's upsert keeps one row per key, the last one
        seq = await log.publish(subject, body, codec.msg_id(key))
        logger.debug("agent %s saved %s step=%d seq=%d", self._key, msg.kind, msg.step, seq)
        return seq

    # -- reads --------------------------------------------------------------------------------

    async def resume(self) -> AgentState:
        """The agent's latest checkpoint: where to carry on.

        Sees every checkpoint acknowledged before the call, in any process, even while the
        projector lags (then it reads the agent's messages from the log). Also sets
        :attr:`step` to the returned ``step_index``.

        Returns:
            The highest checkpointed step's data and ``step_index`` = that step + 1; for an
            agent without checkpoints ``step_index=0`` and ``data={}``.
        """
        log, model = await self._connect()
        query = (
            select(_E.step, _E.type, _E.payload, _E.ts)
            .where(_E.agent_key == self._key, _E.kind == CHECKPOINT)
            .order_by(_E.step.desc())
            .limit(1)
        )
        async with consistent_view(
            log, model, [log.subjects.agent(self._key)], read_wait=self.settings.read_wait
        ) as conn:
            row = (await conn.execute(query)).first()
            payload = (
                None if row is None else await unspill(conn, agent_owner(self._key), row.type, row.payload)
            )
        if row is None or payload is None:
            state = AgentState(agent_id=self.agent_id, step_index=0, data={})
        else:
            state = AgentState(
                agent_id=self.agent_id,
                step_index=int(row.step) + 1,
                data=self.serde.loads_typed(payload),
                last_step=int(row.step),
                checkpointed_at=float(row.ts),
            )
        self._step = state.step_index
        return state

    async def history(self, *, kind: str | None = None, step: int | None = None) -> list[AgentRecord]:
        """The agent's checkpoints and events, by step, then in the order they were saved.

        Read-your-writes like :meth:`resume`.

        Args:
            kind: only ``"checkpoint"`` or only ``"event"`` records.
            step: only the records of this step.
        """
        if kind not in (None, CHECKPOINT, EVENT):
            raise ConfigError(f"kind must be {CHECKPOINT!r}, {EVENT!r} or None, got {kind!r}")
        log, model = await self._connect()
        query = select(_E.kind, _E.step, _E.name, _E.type, _E.payload, _E.ts, _E.seq).where(
            _E.agent_key == self._key
        )
        if kind is not None:
            query = query.where(_E.kind == kind)
        if step is not None:
            query = query.where(_E.step == _step(step))
        query = query.order_by(_E.step, _E.seq)
        async with consistent_view(
            log, model, [log.subjects.agent(self._key)], read_wait=self.settings.read_wait
        ) as conn:
            rows = (await conn.execute(query)).all()
            payloads = [await unspill(conn, agent_owner(self._key), r.type, r.payload) for r in rows]
        return [
            AgentRecord(
                agent_id=self.agent_id,
                kind=r.kind,
                step=int(r.step),
                name=r.name,
                payload=self.serde.loads_typed(payload),
                ts=float(r.ts),
                seq=int(r.seq),
            )
            for r, payload in zip(rows, payloads, strict=True)
        ]
