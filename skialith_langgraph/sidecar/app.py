"""The sidecar's ASGI app: :func:`create_app` (FastAPI) over one checkpointer's NATS connection
and read model.

Routes (docs/sidecar.md): ``/v1/agents/...`` (SkialithAgent), ``/v1/threads...`` (read access),
the raw checkpoint routes of :mod:`.checkpoints` (LangGraph.js), ``/healthz``, ``/readyz``,
``/metrics`` and ``/openapi.json``. One pure-ASGI middleware checks the bearer token, caps the
body size (413 naming the limit) and counts requests for ``/metrics``; behind it, the two write
routes take a fast path of plain ASGI when the request is certainly valid (:mod:`.fastpath`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..config import Settings
from ..metrics import CONTENT_TYPE, _labels
from ..readmodel import PROJECTION
from . import agents, threads
from .checkpoints import router as checkpoints_router  # the raw routes of the LangGraph.js checkpointer
from .errors import error_body, install_handlers
from .fastpath import FastWrites, replay
from .state import Limits, SidecarState

__all__ = ["OPEN_PATHS", "create_app"]

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})  # answered without the token
READY_TIMEOUT = 2.0  # seconds the database may take to answer /readyz
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def create_app(settings: Settings, *, token: str | None = None, limits: Limits | None = None) -> FastAPI:
    """The sidecar app. It connects (and ensures the stream and tables) when it starts up.

    Args:
        settings: where the log and the read model are.
        token: when set, every route but :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>``.
        limits: request limits (body size).
    """
    state = SidecarState(settings, token=token, limits=limits or Limits())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.open()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="Skialith sidecar",
        version=__version__,
        summary="Durable agent state and LangGraph checkpoints over HTTP, on NATS JetStream.",
        description="Writes answer after the JetStream PubAck. See docs/sidecar.md and docs/lss.md.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.sidecar = state
    install_handlers(app)
    app.include_router(agents.router)
    app.include_router(threads.router)
    app.include_router(checkpoints_router, prefix="/v1")
    _health_routes(app, state)
    # innermost first: the gate runs before the fast path of the two writes (fastpath.py)
    app.add_middleware(FastWrites, state=state, routes=agents.router.routes)
    app.add_middleware(_Gate, state=state)
    return app


def _health_routes(app: FastAPI, state: SidecarState) -> None:
    @app.get("/healthz", tags=["operations"], summary="200 while the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="200 when NATS is connected and the database answers, else 503",
        responses={503: {"description": "not ready; `checks` says why"}},
    )
    async def readyz() -> JSONResponse:
        checks = await _ready_checks(state)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus text format (docs/metrics.md)",
        response_class=PlainTextResponse,
    )
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(await render(state), media_type=CONTENT_TYPE)


async def _ready_checks(state: SidecarState) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            log, model = await state.log_and_model()
            checks["nats"] = "ok" if log.nc.is_connected else "not connected to NATS"
            async with model.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
    except TimeoutError:
        checks.setdefault("nats", "ok")
        checks["database"] = f"no answer within {READY_TIMEOUT} s"
    except Exception as exc:
        checks.setdefault("nats", f"unavailable ({type(exc).__name__}: {exc})")
        checks.setdefault("database", f"unavailable ({type(exc).__name__}: {exc})")
    return checks


# name, type, help: docs/metrics.md describes each
METRICS: tuple[tuple[str, str, str], ...] = (
    ("skialith_sidecar_requests_total", "counter", "HTTP requests answered, by method, route and status."),
    ("skialith_sidecar_request_seconds", "summary", "Time to answer HTTP requests, by method and route."),
    ("skialith_sidecar_stream_last_seq", "gauge", "Last sequence of the stream, as the sidecar sees it."),
    (
        "skialith_sidecar_projection_lag_messages",
        "gauge",
        "Messages in the stream not yet in the read model.",
    ),
)


async def render(state: SidecarState) -> str:
    """The sidecar's metrics in the Prometheus text format 0.0.4 (the format of metrics.py)."""
    req = state.requests
    out: list[str] = []
    name, kind, help_text = METRICS[0]
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for (method, route, status), n in sorted(req.total.items()):
        out.append(f"{name}{{{_labels(method=method, route=route, status=str(status))}}} {n}")
    name, kind, help_text = METRICS[1]
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    counts: dict[tuple[str, str], int] = {}
    for (method, route, _), n in req.total.items():
        counts[(method, route)] = counts.get((method, route), 0) + n
    for (method, route), seconds in sorted(req.seconds.items()):
        labels = _labels(method=method, route=route)
        out += [
            f"{name}_sum{{{labels}}} {seconds:.6f}",
            f"{name}_count{{{labels}}} {counts[(method, route)]}",
        ]
    try:
        log, model = await state.log_and_model()
        last = await log.stream_last_seq()
        async with model.connect() as conn:
            mark = await model.watermark(conn, PROJECTION)
    except Exception as exc:  # the gauges are left out while NATS or the database is away
        logger.debug("cannot sample the stream and the watermark: %s", exc)
    else:
        stream = _labels(stream=state.settings.stream)
        for (name, kind, help_text), value in zip(METRICS[2:], (last, max(last - mark, 0)), strict=True):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{stream}}} {value}"]
    return "\n".join(out) + "\n"


class _Gate:
    """Pure ASGI (no per-request task): the token, the body limit, and the request counters."""

    def __init__(self, app: ASGIApp, state: SidecarState) -> None:
        self.app = app
        self.state = state
        token = state.token
        self.expected = None if not token else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._gate(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path_format", None) or "unmatched"
            key = (scope["method"], path)
            self.state.requests.total[(*key, status[0])] += 1
            seconds = self.state.requests.seconds
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - started

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is not None and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                what = "missing" if not given else "wrong"
                await _send_error(
                    send,
                    401,
                    f"the bearer token is {what}: send 'Authorization: Bearer <token>' with the "
                    "sidecar's SKIALITH_API_TOKEN",
                    {"www-authenticate": "Bearer"},
                )
                return
        if scope["method"] in _BODY_METHODS:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return
            await self.app(scope, replay(body, receive), send)
            return
        await self.app(scope, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or ``None`` after answering 413 (nothing reaches the routes)."""
        limit = self.state.limits.max_body
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(send, limit)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _too_large(send: Send, limit: int) -> None:
    await _send_error(
        send, 413, f"the request body is larger than the limit of {limit} bytes (--max-body-bytes)", {}
    )


async def _send_error(send: Send, status: int, message: str, headers: dict[str, str]) -> None:
    body = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
