"""Raw LangGraph checkpoints over HTTP, for the LangGraph.js checkpointer (@skialith/langgraph-checkpoint).

Mounted by the sidecar app under ``/v1``:

* ``POST /v1/checkpoints``: ``put``; ``POST /v1/writes``: ``put_writes``;
* ``GET /v1/checkpoints/tuple``: ``get_tuple``; ``POST /v1/checkpoints/search``: ``list``;
* ``DELETE /v1/checkpoints?thread_id=``: ``delete_thread``.

Channel values and writes travel serialized by the JavaScript serde, as ``{"type", "data"}`` with
``data`` in base64; the server stores them as they are and never decodes them (:class:`PassThroughSerde`).
The checkpoint's other fields and the metadata are plain JSON; they are stored as msgpack, as the
Python checkpointer stores them, so ``skialith`` tools read these threads (and decode the values of
type ``json``). Writes go through a :class:`SkialithCheckpointer` of their own (NATS first, answered
after the PubAck; reads from the read model, read-your-writes), so LangGraph.js gets exactly the
Python checkpointer's semantics: puts and writes are upserts by their natural keys, hence safe to retry.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, FastAPI, Query, Request, Response
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.serde.base import SerializerProtocol
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from ..checkpointer import SkialithCheckpointer
from ..codec import MAX_TYPE, RESERVED_TYPE_PREFIX, strict_serde
from ..inspect import jsonable
from .errors import ApiError

__all__ = ["PassThroughSerde", "Raw", "router"]

_PLAIN = strict_serde()  # what stores the checkpoint's fields and the metadata
STORED_TYPE = "msgpack"  # the type of what this module serializes itself (checkpoint body, metadata)
_RESERVED = (STORED_TYPE, "empty")  # type names a client value may not use
DEFAULT_PAGE = 100  # checkpoints in one page of /checkpoints/search unless `limit` says otherwise
MAX_PAGE = 1000  # the largest `limit` of one page


class Raw(NamedTuple):
    """A value as the client serialized it: its serde's type name and bytes."""

    type: str
    data: bytes


class PassThroughSerde(SerializerProtocol):
    """A serializer that stores :class:`Raw` values as they are and gives them back unchanged.

    Anything else (the checkpoint's fields, the metadata: plain JSON data) is serialized as the
    Python checkpointer does (msgpack, type ``"msgpack"``) and decoded back; that is why a client
    value may not use the type names ``msgpack`` and ``empty`` (refused with 400).
    """

    def __init__(self) -> None:
        self._plain = _PLAIN

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if isinstance(obj, Raw):
            return obj.type, obj.data
        return self._plain.dumps_typed(obj)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        typ, blob = data
        if typ == STORED_TYPE:
            return self._plain.loads_typed(data)
        return Raw(typ, bytes(blob))


# -- wire models ----------------------------------------------------------------------------------

Version = StrictInt | StrictFloat | StrictStr


class Typed(BaseModel):
    """A value serialized by the client's serde."""

    model_config = ConfigDict(extra="forbid")
    type: StrictStr = Field(min_length=1, max_length=MAX_TYPE, description="The serde's type name.")
    data: StrictStr = Field(description="The serialized bytes, base64.")


class Configurable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thread_id: StrictStr
    checkpoint_ns: StrictStr = ""
    checkpoint_id: StrictStr | None = None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    configurable: Configurable


class CheckpointIn(BaseModel):
    """A LangGraph checkpoint; fields beyond these (older formats) are stored as they are."""

    model_config = ConfigDict(extra="allow")
    v: StrictInt
    id: StrictStr = Field(min_length=1)
    ts: StrictStr
    channel_values: dict[str, Typed] = Field(default_factory=dict)
    channel_versions: dict[str, Version] = Field(default_factory=dict)
    versions_seen: dict[str, dict[str, Version]] = Field(default_factory=dict)


class PutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: Config
    checkpoint: CheckpointIn
    metadata: dict[str, Any] = Field(default_factory=dict)
    newVersions: dict[str, Version] = Field(default_factory=dict)


class ConfigOut(BaseModel):
    config: dict[str, Any]


class WriteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: StrictStr
    type: StrictStr = Field(min_length=1, max_length=MAX_TYPE)
    data: StrictStr


class WritesConfigurable(Configurable):
    checkpoint_id: StrictStr  # required here


class WritesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    configurable: WritesConfigurable


class WritesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: WritesConfig
    writes: list[WriteIn]
    taskId: StrictStr
    taskPath: StrictStr = ""


class WritesOut(BaseModel):
    stored: int


class SearchConfigurable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thread_id: StrictStr | None = None
    checkpoint_ns: StrictStr | None = None
    checkpoint_id: StrictStr | None = None


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    configurable: SearchConfigurable = Field(default_factory=SearchConfigurable)


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: SearchConfig | None = None
    filter: dict[str, Any] | None = None
    before: SearchConfig | None = None
    limit: Annotated[StrictInt, Field(ge=0, le=MAX_PAGE)] = Field(
        default=DEFAULT_PAGE,
        description=f"Checkpoints in this page (default {DEFAULT_PAGE}, at most {MAX_PAGE}); "
        "the next ones come with `cursor`.",
    )
    cursor: StrictStr | None = Field(
        default=None,
        max_length=2048,
        description="The `nextCursor` of the previous page, with the same config, filter and before.",
    )


class TupleOut(BaseModel):
    config: dict[str, Any]
    checkpoint: dict[str, Any] = Field(description="channel_values hold {type, data} values.")
    metadata: dict[str, Any]
    parentConfig: dict[str, Any] | None = None
    pendingWrites: list[tuple[str, str, Typed]] = Field(description="[task_id, channel, {type, data}].")


class SearchOut(BaseModel):
    items: list[TupleOut]
    nextCursor: str | None = Field(
        description="Send it as `cursor` for the next page; null when no checkpoint follows this page."
    )


# -- plumbing -------------------------------------------------------------------------------------


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        saver: SkialithCheckpointer | None = getattr(app.state, "raw_checkpointer", None)
        if saver is not None:
            app.state.raw_checkpointer = None
            await saver.aclose()


router = APIRouter(tags=["checkpoints"], lifespan=_lifespan)


def _saver(request: Request) -> SkialithCheckpointer:
    """The app's checkpointer with the pass-through serde (its own NATS connection and engine, on
    the sidecar's settings), created on first use and closed with the app."""
    state = request.app.state
    saver: SkialithCheckpointer | None = getattr(state, "raw_checkpointer", None)
    if saver is None:
        saver = state.raw_checkpointer = SkialithCheckpointer(
            settings=state.sidecar.settings, serde=PassThroughSerde()
        )
    return saver


def _raw(value: Typed | WriteIn, where: str) -> Raw:
    if value.type in _RESERVED or value.type.startswith(RESERVED_TYPE_PREFIX):
        raise ApiError(
            400,
            f"{where}: the type name {value.type!r} is reserved by the server "
            f"({', '.join(_RESERVED)} and the prefix {RESERVED_TYPE_PREFIX!r}); use another serde type name",
        )
    try:
        return Raw(value.type, base64.b64decode(value.data, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ApiError(
            400, f"{where}: data is not valid base64 ({exc}); send the serialized bytes in base64"
        ) from None


def _storable(what: str, value: Any) -> None:
    """Refuse (400) what JSON carries but the log cannot store: integers beyond 64 bits, strings with
    lone surrogates. Checked before anything is published."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        _PLAIN.dumps_typed(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(
            400,
            f"{what} cannot be stored ({str(exc)[:200]}): integers must fit in 64 bits and strings must be "
            "valid Unicode",
        ) from None


def _typed(value: Any) -> dict[str, str]:
    """A stored value as ``{type, data}``; a value written by a Python serde (decoded on read)
    travels as its JSON form, type ``json``."""
    if not isinstance(value, Raw):
        value = Raw("json", json.dumps(jsonable(value), ensure_ascii=False).encode())
    return {"type": value.type, "data": base64.b64encode(value.data).decode("ascii")}


def _config(conf: Configurable | WritesConfigurable) -> RunnableConfig:
    """The Python config: only the three keys (LangGraph.js keeps the rest out of the metadata)."""
    out: dict[str, Any] = {"thread_id": conf.thread_id, "checkpoint_ns": conf.checkpoint_ns}
    if conf.checkpoint_id is not None:
        out["checkpoint_id"] = conf.checkpoint_id
    return {"configurable": out}


def _tuple(t: CheckpointTuple) -> dict[str, Any]:
    checkpoint = {k: jsonable(v) for k, v in t.checkpoint.items() if k != "channel_values"}
    checkpoint["channel_values"] = {ch: _typed(v) for ch, v in t.checkpoint["channel_values"].items()}
    return {
        "config": t.config,
        "checkpoint": checkpoint,
        "metadata": jsonable(t.metadata),
        "parentConfig": t.parent_config,
        "pendingWrites": [[task, channel, _typed(v)] for task, channel, v in (t.pending_writes or [])],
    }


# -- routes ---------------------------------------------------------------------------------------


@router.post("/checkpoints", status_code=201, response_model=ConfigOut, summary="put: store a checkpoint")
async def put_checkpoint(request: Request, body: PutIn) -> dict[str, Any]:
    """Answers after the PubAck. Only the channels named in ``newVersions`` are stored with it
    (their values must be in ``channel_values``; others are stored as absent); an unchanged
    channel is read back from the checkpoint that stored its version."""
    cp = body.checkpoint
    fields = cp.model_dump(exclude={"channel_values"})
    _storable("the checkpoint", {**fields, "channels": list(cp.channel_values)})
    _storable("the metadata", body.metadata)
    _storable("newVersions", body.newVersions)
    _storable("the config", body.config.model_dump())
    values = {ch: _raw(v, f"channel_values[{ch!r}]") for ch, v in cp.channel_values.items()}
    checkpoint: dict[str, Any] = {**fields, "channel_values": values}
    saved = await _saver(request).aput(
        _config(body.config.configurable),
        checkpoint,  # type: ignore[arg-type]
        body.metadata,  # type: ignore[arg-type]
        dict(body.newVersions),
    )
    return {"config": saved}


@router.post(
    "/writes", status_code=201, response_model=WritesOut, summary="put_writes: store a task's writes"
)
async def put_writes(request: Request, body: WritesIn) -> dict[str, Any]:
    """Answers after the PubAck (and after the put of their checkpoint, if in flight)."""
    _storable(
        "the request", body.model_dump(exclude={"writes"}) | {"channels": [w.channel for w in body.writes]}
    )
    writes = [(w.channel, _raw(w, f"writes[{i}]")) for i, w in enumerate(body.writes)]
    await _saver(request).aput_writes(_config(body.config.configurable), writes, body.taskId, body.taskPath)
    return {"stored": len(writes)}


@router.get(
    "/checkpoints/tuple",
    response_model=TupleOut,
    responses={404: {"description": "No such checkpoint."}},
    summary="get_tuple: one checkpoint (the latest without checkpoint_id)",
)
async def get_tuple(
    request: Request,
    thread_id: Annotated[str, Query()],
    checkpoint_ns: Annotated[str, Query()] = "",
    checkpoint_id: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    found = await _saver(request).aget_tuple({"configurable": conf})
    if found is None:
        where = f"checkpoint {checkpoint_id!r}" if checkpoint_id else "no checkpoint"
        raise ApiError(404, f"{where} in thread {thread_id!r}, namespace {checkpoint_ns!r}: not found")
    return _tuple(found)


@router.post(
    "/checkpoints/search",
    response_model=SearchOut,
    summary="list: checkpoints newest first, a page at a time",
    description=f"At most `limit` checkpoints (default {DEFAULT_PAGE}, at most {MAX_PAGE}) in "
    "LangGraph's list order (checkpoint id descending); `nextCursor` fetches the next page.",
)
async def search(request: Request, body: SearchIn) -> dict[str, Any]:
    conf = body.config.configurable if body.config is not None else SearchConfigurable()
    config: RunnableConfig = {"configurable": conf.model_dump(exclude_none=True)}
    before: RunnableConfig | None = None
    if body.before is not None and body.before.configurable.checkpoint_id is not None:
        before = {"configurable": body.before.configurable.model_dump(exclude_none=True)}
    cursor = None if body.cursor is None else _read_cursor(body.cursor)
    page, next_cursor = await _page(_saver(request), config, body.filter or None, before, cursor, body.limit)
    return {"items": [_tuple(t) for t in page], "nextCursor": next_cursor}


async def _page(
    saver: SkialithCheckpointer,
    config: RunnableConfig,
    filter: dict[str, Any] | None,
    before: RunnableConfig | None,
    cursor: tuple[str, int] | None,
    n: int,
) -> tuple[list[CheckpointTuple], str | None]:
    """``n`` tuples of the list after ``cursor``, and the cursor of the next page.

    The list's order is checkpoint id descending (then thread and namespace), so a page ends at an
    id: the next one goes on ``before`` it. Ids may repeat across threads and namespaces, so the
    cursor also says how many checkpoints with its id were returned already (``skip``); those left
    are read first. One tuple more than the page is read, to know whether another page follows
    and whether any checkpoint with the last id remains (``skip`` 0 then: no extra read).
    """
    if n == 0:
        return [], None
    want = n + 1
    out: list[CheckpointTuple] = []
    run_id, run = None, 0  # the cursor's id and how many of it the earlier pages returned
    if cursor is not None:
        run_id, run = cursor
        if run:
            ties: RunnableConfig = {"configurable": {**config["configurable"], "checkpoint_id": run_id}}
            items = saver.alist(ties, filter=filter, limit=run + want)
            try:
                out = [t async for t in items][run:]
            finally:
                await items.aclose()  # type: ignore[attr-defined]
        before = {"configurable": {"checkpoint_id": run_id}}
    if len(out) < want:
        items = saver.alist(config, filter=filter, before=before, limit=want - len(out))
        try:
            out += [t async for t in items]
        finally:
            await items.aclose()  # type: ignore[attr-defined]
    if len(out) <= n:
        return out, None
    page = out[:n]
    last = _checkpoint_id(page[-1])
    tail = 0  # the page's trailing checkpoints with the last id
    while tail < len(page) and _checkpoint_id(page[-1 - tail]) == last:
        tail += 1
    if tail == len(page) and last == run_id:
        tail += run  # the run of that id began on an earlier page
    skip = tail if _checkpoint_id(out[n]) == last else 0
    return page, _write_cursor(last, skip)


def _checkpoint_id(t: CheckpointTuple) -> str:
    return str(t.config["configurable"]["checkpoint_id"])


def _write_cursor(checkpoint_id: str, skip: int) -> str:
    raw = json.dumps([checkpoint_id, skip], ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _read_cursor(cursor: str) -> tuple[str, int]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        checkpoint_id, skip = value
        if isinstance(checkpoint_id, str) and checkpoint_id and type(skip) is int and skip >= 0:
            return checkpoint_id, skip
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        pass
    raise ApiError(
        400, "cursor is not one this server gave: send the nextCursor of the previous page as it came"
    )


@router.delete(
    "/checkpoints", status_code=204, summary="delete_thread: every checkpoint and write of a thread"
)
async def delete_thread(request: Request, thread_id: Annotated[str, Query()]) -> Response:
    await _saver(request).adelete_thread(thread_id)
    return Response(status_code=204)
