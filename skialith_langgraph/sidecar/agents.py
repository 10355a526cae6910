"""``/v1/agents/{agent_id}/...``: SkialithAgent over HTTP (resume, checkpoint, save_event, history).

Each request uses a :class:`SkialithAgent` bound to the sidecar's one NATS connection and
database engine (:class:`_SharedAgent`), so the HTTP API has the Python SDK's semantics exactly:
same subjects, serde, read-your-writes and upserts. Data travels as JSON.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from .. import codec
from ..agent import MAX_STEP, AgentRecord, SkialithAgent
from ..inspect import jsonable
from ..log import Log
from ..readmodel import ReadModel
from .errors import ApiError
from .idempotency import Idempotency, check_key, digest, msg_id, publish_once
from .state import SidecarState

__all__ = ["router"]

router = APIRouter(prefix="/v1/agents", tags=["agents"])

Step = Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]
IdemKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A key per logical write (<= 200 characters): a retry with the same key and body "
        "returns the first response and writes nothing new; another body -> 409.",
    ),
]


def _finite(value: Any) -> Any:
    """Refuse NaN and infinities (Python's JSON reader takes them; JSON has no such numbers)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("NaN and Infinity are not JSON numbers")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


JsonValue = Annotated[Any, AfterValidator(_finite)]


class CheckpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: Step = Field(description="The step just completed (usually the stepIndex resume returned).")
    data: JsonValue = Field(default=None, description="Any JSON value: the agent's state after the step.")


class CheckpointOut(BaseModel):
    agentId: str
    step: int
    seq: int = Field(description="The JetStream stream sequence of the checkpoint.")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[StrictStr, Field(max_length=255)] = Field(description="The event's name within its step.")
    payload: JsonValue = Field(default=None, description="Any JSON value.")
    step: Step | None = Field(default=None, description="Default: the step after the last checkpoint.")


class EventOut(BaseModel):
    agentId: str
    name: str
    step: int
    seq: int


class AgentStateOut(BaseModel):
    agentId: str
    stepIndex: int = Field(description="The next step to run: last checkpointed step + 1, or 0.")
    data: Any = Field(description="The last checkpoint's data, or {} for a fresh agent.")
    lastStep: int | None
    checkpointedAt: float | None = Field(description="Epoch seconds, the writer's clock.")
    resumed: bool


class RecordOut(BaseModel):
    agentId: str
    kind: Literal["checkpoint", "event"]
    step: int
    name: str
    payload: Any
    ts: float
    seq: int


class HistoryOut(BaseModel):
    records: list[RecordOut]


class _SharedAgent(SkialithAgent):
    """A SkialithAgent on the sidecar's connection and engine (it closes neither), publishing
    under an Idempotency-Key when the request carries one."""

    def __init__(self, agent_id: str, state: SidecarState, key: str | None = None, request: str = "") -> None:
        super().__init__(agent_id, settings=state.settings, serde=state.serde)
        self._shared = state
        self._idem = (key, request)

    async def _connect(self) -> tuple[Log, ReadModel]:
        return await self._shared.log_and_model()

    async def close(self) -> None:  # the connection is the sidecar's
        return None

    async def _publish(self, log: Log, subject: str, key: str, msg: codec.EventMsg) -> int:
        idem_key, request = self._idem
        if idem_key is None:
            return await super()._publish(log, subject, key, msg)
        codec.check_type(msg.payload[0], field=f"the {msg.kind}")
        return await publish_once(
            log, subject, codec.dumps(msg), msg_id(self._key, idem_key), request, idem_key
        )


def _agent(request: Request, agent_id: str) -> _SharedAgent:
    return shared_agent(request.app.state.sidecar, agent_id)


def shared_agent(
    state: SidecarState, agent_id: str, key: str | None = None, request: str = ""
) -> _SharedAgent:
    if not agent_id:
        raise ApiError(400, "agent_id must be a non-empty string")
    return _SharedAgent(agent_id, state, key, request)


async def _serialized(write: Coroutine[Any, Any, int]) -> int:
    """The write's sequence; a value the serializer refuses (e.g. an int beyond 64 bits) is a 400."""
    try:
        return await write
    except TypeError as exc:
        raise ApiError(400, f"the value cannot be stored: {exc}") from exc


def server_timing(started: float) -> str:
    """``Server-Timing: ack;dur=<ms>``: from the request's arrival at the route to its PubAck."""
    return f"ack;dur={(time.perf_counter() - started) * 1000:.3f}"


def _created(out: dict[str, Any], started: float) -> JSONResponse:
    """201 with ``Server-Timing``; the body is built here, so FastAPI does not validate it a
    second time."""
    return JSONResponse(out, status_code=201, headers={"Server-Timing": server_timing(started)})


Write = Callable[[_SharedAgent], Awaitable[dict[str, Any]]]


async def run_write(
    state: SidecarState,
    path: str,
    agent_id: str,
    idempotency_key: str | None,
    request_body: Callable[[], dict[str, Any]],
    write: Write,
) -> dict[str, Any]:
    """Run ``write`` once per Idempotency-Key and return its response body (after the PubAck).

    Shared by the FastAPI routes and the fast path (:mod:`.fastpath`), so both have the same
    semantics. ``request_body()`` (the validated body as a dict) is called, for the key's
    request digest, only when there is a key.
    """
    key = check_key(idempotency_key)
    agent = shared_agent(state, agent_id, key, digest(path, request_body()) if key else "")
    idem: Idempotency = state.idempotency
    out: dict[str, Any] = await idem.run(agent._key, key, agent._idem[1], lambda: write(agent))
    return out


def checkpoint_write(agent_id: str, step: int, data: Any) -> Write:
    async def write(agent: _SharedAgent) -> dict[str, Any]:
        seq = await _serialized(agent.checkpoint(step, data))
        return {"agentId": agent_id, "step": step, "seq": seq}

    return write


def event_write(agent_id: str, name: str, payload: Any, step: int | None) -> Write:
    async def write(agent: _SharedAgent) -> dict[str, Any]:
        at = step
        if at is None:  # the SDK's default: one past the last checkpoint (what resume returns)
            at = (await agent.resume()).step_index
        seq = await _serialized(agent.save_event(name, payload, step=at))
        return {"agentId": agent_id, "name": name, "step": at, "seq": seq}

    return write


@router.get("/{agent_id:path}/state", response_model=AgentStateOut, summary="resume(): the latest checkpoint")
async def get_state(request: Request, agent_id: str) -> dict[str, Any]:
    state = await _agent(request, agent_id).resume()
    return {
        "agentId": state.agent_id,
        "stepIndex": state.step_index,
        "data": jsonable(state.data),
        "lastStep": state.last_step,
        "checkpointedAt": state.checkpointed_at,
        "resumed": state.resumed,
    }


@router.post(
    "/{agent_id:path}/checkpoints",
    status_code=201,
    response_model=CheckpointOut,
    summary="checkpoint(step, data); answers after the PubAck",
)
async def post_checkpoint(
    request: Request, agent_id: str, body: CheckpointIn, idempotency_key: IdemKey = None
) -> JSONResponse:
    started = time.perf_counter()
    write = checkpoint_write(agent_id, body.step, body.data)
    state = request.app.state.sidecar
    return _created(
        await run_write(state, request.url.path, agent_id, idempotency_key, body.model_dump, write), started
    )


@router.post(
    "/{agent_id:path}/events",
    status_code=201,
    response_model=EventOut,
    summary="save_event(name, payload); answers after the PubAck",
)
async def post_event(
    request: Request, agent_id: str, body: EventIn, idempotency_key: IdemKey = None
) -> JSONResponse:
    started = time.perf_counter()
    write = event_write(agent_id, body.name, body.payload, body.step)
    state = request.app.state.sidecar
    return _created(
        await run_write(state, request.url.path, agent_id, idempotency_key, body.model_dump, write), started
    )


@router.get(
    "/{agent_id:path}/history", response_model=HistoryOut, summary="history(): checkpoints and events"
)
async def get_history(
    request: Request,
    agent_id: str,
    kind: Literal["checkpoint", "event"] | None = None,
    step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
) -> dict[str, Any]:
    records = await _agent(request, agent_id).history(kind=kind, step=step)
    return {"records": [_record(r) for r in records]}


def _record(r: AgentRecord) -> dict[str, Any]:
    return {
        "agentId": r.agent_id,
        "kind": r.kind,
        "step": r.step,
        "name": r.name,
        "payload": jsonable(r.payload),
        "ts": r.ts,
        "seq": r.seq,
    }
