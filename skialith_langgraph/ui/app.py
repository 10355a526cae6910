"""The web viewer's ASGI app: JSON endpoints over :class:`~skialith_langgraph.inspect.Inspector`
and the single-page viewer in ``static/``.

Every endpoint takes ids as query parameters (``/api/history?thread=...``), which carry any id
(``.``, ``..``, ``/``, NUL, 10,000 characters) unchanged; the path forms
(``/api/threads/{id}/history``) are aliases for ids a browser does not rewrite (it resolves ``.``
and ``..`` path segments, even percent-encoded).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import Settings
from ..errors import SkialithError
from ..inspect import InspectError, Inspector
from . import data
from .security import Guard

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_PAGE = 1000


class Backend:
    """The inspector the endpoints read through: the one given, or one opened on first use from
    settings (in the server's event loop) and closed by :meth:`aclose`."""

    def __init__(self, source: Inspector | Settings) -> None:
        self._inspector = source if isinstance(source, Inspector) else None
        self._settings = source if isinstance(source, Settings) else None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def inspector(self) -> Inspector:
        if self._inspector is not None:
            return self._inspector
        async with self._lock:
            if self._inspector is None:
                assert self._settings is not None
                stack = AsyncExitStack()
                self._inspector = await stack.enter_async_context(Inspector.open(self._settings))
                self._stack = stack
        return self._inspector

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self._inspector = None
            await stack.aclose()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class JSON(Response):
    """JSON as a browser's ``JSON.parse`` reads it: ASCII-escaped (lone surrogates and NUL pass),
    non-finite floats as strings."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        except ValueError:
            text = json.dumps(_finite(content), ensure_ascii=True, separators=(",", ":"))
        return text.encode("ascii")


class BadRequest(ValueError):
    pass


def _int(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def _param(request: Request, name: str, *, required: bool = True) -> str | None:
    if name in request.path_params:
        return str(request.path_params[name])
    value = request.query_params.get(name)
    if value is None and required:
        raise BadRequest(f"missing query parameter {name!r}")
    return value


def _thread(request: Request) -> str:
    value = _param(request, "thread")
    assert value is not None
    return value


Handler = Callable[[Request, Inspector], Awaitable[Any]]


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        backend: Backend = request.app.state.backend
        try:
            return JSON(await handler(request, await backend.inspector()))
        except InspectError as exc:
            return JSON({"error": str(exc)}, status_code=404)
        except ValueError as exc:  # bad parameters, an id that cannot be a subject token
            return JSON({"error": str(exc)}, status_code=400)
        except SkialithError as exc:  # NATS or the database unreachable: the message names which
            return JSON({"error": str(exc)}, status_code=503)
        except Exception:
            log.exception("viewer endpoint %s failed", request.url.path)
            return JSON({"error": "internal error (see the viewer's log)"}, status_code=500)

    return run


async def threads(request: Request, insp: Inspector) -> Any:
    limit = _int(request, "limit", 25, 1, MAX_PAGE)
    assert limit is not None
    after = request.query_params.get("after") or None
    q = request.query_params.get("q") or ""
    if q:
        return (await data.search_threads(insp, q, limit=limit, after=after)).as_dict()
    status = request.query_params.get("status") or None
    if status not in (None, "finished", "interrupted", "errored", "next"):
        raise BadRequest(f"status must be finished, interrupted, errored or next, got {status!r}")
    kind = request.query_params.get("kind") or None
    return (await insp.threads(limit=limit, after=after, status=status, kind=kind)).as_dict()


async def history(request: Request, insp: Inspector) -> Any:
    thread = _thread(request)
    limit = _int(request, "limit", 100, 1, MAX_PAGE)
    before = request.query_params.get("before") or None
    ns = request.query_params.get("ns", "")
    entries = await insp.history(thread, ns=ns, limit=limit, before=before)
    more = entries[0].checkpoint_id if limit is not None and len(entries) >= limit and entries else None
    return {
        "thread_id": thread,
        "checkpoint_ns": ns,
        "entries": [e.as_dict() for e in entries],
        "before": more,
    }


async def checkpoint(request: Request, insp: Inspector) -> Any:
    thread = _thread(request)
    cid = _param(request, "checkpoint", required=False) or None
    ns = request.query_params.get("ns", "")
    state = await insp.show(thread, cid, ns)
    parent = state["parent_checkpoint_id"]
    diff = await insp.diff(thread, parent, state["checkpoint_id"], ns=ns) if parent else None
    return {"state": state, "diff_to_parent": diff}


async def diff(request: Request, insp: Inspector) -> Any:
    thread = _thread(request)
    a, b = _param(request, "a"), _param(request, "b")
    assert a is not None and b is not None
    other = request.query_params.get("other") or None
    return await insp.diff(thread, a, b, other_thread=other, ns=request.query_params.get("ns", ""))


async def drift(request: Request, insp: Inspector) -> Any:
    a, b = _param(request, "a"), _param(request, "b")
    assert a is not None and b is not None
    threshold = _int(request, "threshold", None, 0, 1_000_000)
    return await insp.drift(a, b, threshold=threshold)


async def lineage(request: Request, insp: Inspector) -> Any:
    return await insp.lineage(_thread(request))


async def timings(request: Request, insp: Inspector) -> Any:
    agent = request.query_params.get("kind") == "agent"
    ns = request.query_params.get("ns")
    return await data.timings(insp, _thread(request), agent=agent, ns=ns)


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


def create_app(
    source: Inspector | Settings, token: str | None = None, *, loopback_only: bool = False
) -> Starlette:
    """The viewer as an ASGI app (Starlette), to serve with uvicorn or mount in another app
    (``app.mount("/ui", create_app(settings))``; every URL it uses is relative to its root).

    Args:
        source: an :class:`Inspector` to read through (the caller keeps it open), or
            :class:`Settings` from which one is opened on first request, in the server's loop.
        token: when given, every request must carry it (see :mod:`.security`). Whether one is
            needed for an address is :func:`~skialith_langgraph.ui.security.check_bind`'s call.
        loopback_only: answer only requests whose ``Host`` is loopback (against DNS rebinding;
            ``skialith ui`` sets it when it serves loopback without a token).

    The app's lifespan closes an inspector it opened; a host app that mounts it (sub-app
    lifespans do not run) calls ``await app.state.backend.aclose()`` at its own shutdown.
    """
    backend = Backend(source)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await backend.aclose()

    routes = [
        Route("/", index),
        Route("/api/threads", endpoint(threads)),
        Route("/api/history", endpoint(history)),
        Route("/api/checkpoint", endpoint(checkpoint)),
        Route("/api/diff", endpoint(diff)),
        Route("/api/drift", endpoint(drift)),
        Route("/api/lineage", endpoint(lineage)),
        Route("/api/timings", endpoint(timings)),
        # path forms (ids a browser does not rewrite)
        Route("/api/threads/{thread:path}/history", endpoint(history)),
        Route("/api/threads/{thread:path}/checkpoints/{checkpoint}", endpoint(checkpoint)),
        Route("/api/threads/{thread:path}/timings", endpoint(timings)),
        Route("/api/lineage/{thread:path}", endpoint(lineage)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.backend = backend
    app.add_middleware(Guard, token=token, loopback_only=loopback_only)
    return app
