"""``/v1/threads...``: read access to LangGraph threads (and agents) through :class:`Inspector`.

The shapes are ``skialith threads/history/show --json``'s, so the CLI and the API agree.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ..inspect import InspectError, Inspector, parse_since
from .errors import ApiError

__all__ = ["router"]

router = APIRouter(prefix="/v1/threads", tags=["threads"])

_CURSOR = re.compile(r"[0-9]{1,19}:[A-Za-z0-9_-]{1,200}")
MAX_PAGE = 1000


class ThreadOut(BaseModel):
    thread_id: str
    kind: Literal["thread", "agent"]
    checkpoints: int
    last_seq: int
    last_step: int | None
    last_activity: str | None = Field(description="ISO 8601 time of the last checkpoint (or agent save).")
    status: str = Field(description="finished / interrupted / errored / next; an agent's: resumable.")
    next: list[str]


class ThreadsOut(BaseModel):
    threads: list[ThreadOut]
    next: str | None = Field(description="Pass as ?after= for the next page; null: no more.")


class HistoryEntryOut(BaseModel):
    checkpoint_id: str
    parent_checkpoint_id: str | None
    step: int | None
    source: str | None
    nodes: list[str]
    ts: str | None
    duration: float | None
    pending_writes: int
    interrupts: list[Any]
    errors: list[Any]
    fork: bool


class HistoryOut(BaseModel):
    checkpoints: list[HistoryEntryOut] = Field(description="Oldest first.")
    next: str | None = Field(description="Pass as ?after= for the page of older checkpoints; null: no more.")


def _inspector(request: Request) -> Inspector:
    inspector: Inspector = request.app.state.sidecar.inspector
    return inspector


@router.get("", response_model=ThreadsOut, summary="threads and agents, most recently written first")
async def list_threads(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    after: Annotated[
        str | None, Query(max_length=230, description="The `next` of the previous page.")
    ] = None,
    status: Literal["finished", "interrupted", "errored", "next"] | None = None,
    since: Annotated[
        str | None, Query(max_length=64, description="Active since: 30m, 2h, 7d or an ISO time.")
    ] = None,
    kind: Literal["thread", "agent"] | None = None,
) -> dict[str, Any]:
    if after is not None and not _CURSOR.fullmatch(after):
        raise ApiError(400, f"after={after[:40]!r} is not a cursor this API returned in `next`")
    since_at: dt.datetime | None = None
    if since is not None:
        try:
            since_at = parse_since(since)
        except (InspectError, ValueError, OverflowError) as exc:
            raise ApiError(400, f"since={since!r}: {exc}") from exc
    metadata = {
        k.removeprefix("metadata."): v for k, v in request.query_params.items() if k.startswith("metadata.")
    }
    page = await _inspector(request).threads(
        limit=limit, after=after, since=since_at, status=status, metadata=metadata or None, kind=kind
    )
    return {"threads": [t.as_dict() for t in page.threads], "next": page.cursor}


@router.get(
    "/{thread_id:path}/history", response_model=HistoryOut, summary="a thread's checkpoints, oldest first"
)
async def thread_history(
    request: Request,
    thread_id: str,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    after: Annotated[
        str | None, Query(max_length=255, description="Only checkpoints older than this checkpoint id.")
    ] = None,
    ns: Annotated[
        str, Query(max_length=255, description="The checkpoint namespace ('' : the root graph).")
    ] = "",
) -> dict[str, Any]:
    entries = await _inspector(request).history(thread_id, ns=ns, limit=limit, before=after)
    more = len(entries) == limit and entries[0].parent_checkpoint_id is not None
    return {"checkpoints": [e.as_dict() for e in entries], "next": entries[0].checkpoint_id if more else None}


@router.get("/{thread_id:path}/state", summary="the decoded state at a checkpoint (the latest by default)")
async def thread_state(
    request: Request,
    thread_id: str,
    checkpoint_id: Annotated[str | None, Query(max_length=255)] = None,
    ns: Annotated[str, Query(max_length=255)] = "",
) -> dict[str, Any]:
    return await _inspector(request).show(thread_id, checkpoint_id, ns)
