"""The fast path of the two write routes: ``POST /v1/agents/{agent_id}/checkpoints`` and
``.../events`` served as plain ASGI, without FastAPI's request handling.

The routes stay declared in FastAPI (:mod:`.agents`): they make the OpenAPI document and they
answer every request the fast path does not take. The fast path takes a request only when it is
certainly valid: the route's own path regex matches (FastAPI's ``APIRoute.matches``), the
``Content-Type`` is ``application/json``, the body parses with the same reader FastAPI uses
(:func:`json.loads`), and it holds exactly the fields, types and ranges of ``CheckpointIn`` /
``EventIn`` (strict ints, no bools, the step's range, the name's length, finite numbers). Anything
else goes on to FastAPI with the body as read, so every 4xx keeps FastAPI's message word for word.

What runs in front of it is the same for both paths: the app's ``_Gate`` (token, 413 body limit,
request counters) answers before this sees the request. A taken request runs
:func:`.agents.run_write` (Idempotency-Key, 409 on another body, the SDK call, the PubAck) and
errors are answered as :func:`.errors.classify` says, as FastAPI's handlers do.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.datastructures import URL
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..agent import MAX_STEP
from . import agents
from .errors import classify, error_body
from .state import SidecarState

__all__ = ["FastWrites"]

NAME_MAX = 255  # EventIn.name's max_length
_CONTENT_TYPE = b"application/json"
# the write, and the body as the route's model would dump it (for the Idempotency-Key's digest)
_Parsed = tuple[agents.Write, dict[str, Any]]
_Parser = Callable[[str, dict[str, Any]], _Parsed | None]


class FastWrites:
    """Pure ASGI between the app's gate and FastAPI; see the module's docstring."""

    def __init__(self, app: ASGIApp, state: SidecarState, routes: list[Any]) -> None:
        self.app = app
        self.state = state
        self.routes: list[tuple[APIRoute, _Parser]] = []
        for route in routes:
            if isinstance(route, APIRoute) and route.endpoint is agents.post_checkpoint:
                self.routes.append((route, _checkpoint))
            elif isinstance(route, APIRoute) and route.endpoint is agents.post_event:
                self.routes.append((route, _event))
        if len(self.routes) != 2:
            raise RuntimeError("the fast path did not find both write routes among the app's routes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        found = self._route(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        parse, child = found
        started = time.perf_counter()
        body = await _read(receive)
        if body is None:  # the client went away
            return
        agent_id: str = child["path_params"]["agent_id"]
        parsed = _parse(scope, body, agent_id, parse)
        if parsed is None:  # not certainly valid: FastAPI answers, with its own messages
            await self.app(scope, replay(body, receive), send)
            return
        write, dumped = parsed
        scope.update(child)  # the gate's request counters name the route
        key = _header(scope, b"idempotency-key")
        try:
            out = await agents.run_write(
                self.state,
                # the key's digest names the path as FastAPI's request.url.path does
                "" if key is None else URL(scope=scope).path,
                agent_id,
                None if key is None else key.decode("latin-1"),
                lambda: dumped,
                write,
            )
        except Exception as exc:
            status, message, code, headers = classify(exc)
            await _send(send, status, error_body(status, message, code), headers)
            return
        await _send(send, 201, out, {"server-timing": agents.server_timing(started)})

    def _route(self, scope: Scope) -> tuple[_Parser, Scope] | None:
        for route, parse in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return parse, child
        return None


def _parse(scope: Scope, body: bytes, agent_id: str, parse: _Parser) -> _Parsed | None:
    if not body or not agent_id:
        return None
    content_type = _header(scope, b"content-type")
    if content_type is None or content_type.split(b";", 1)[0].strip().lower() != _CONTENT_TYPE:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if type(value) is not dict:
        return None
    return parse(agent_id, value)


def _checkpoint(agent_id: str, body: dict[str, Any]) -> _Parsed | None:
    if not body.keys() <= {"step", "data"} or not _is_step(body.get("step")):
        return None
    data = body.get("data")
    if not _finite(data):
        return None
    step = body["step"]
    return agents.checkpoint_write(agent_id, step, data), {"step": step, "data": data}


def _event(agent_id: str, body: dict[str, Any]) -> _Parsed | None:
    if not body.keys() <= {"name", "payload", "step"}:
        return None
    name, step, payload = body.get("name"), body.get("step"), body.get("payload")
    if type(name) is not str or len(name) > NAME_MAX or not (step is None or _is_step(step)):
        return None
    if not _finite(payload):
        return None
    dumped = {"name": name, "payload": payload, "step": step}
    return agents.event_write(agent_id, name, payload, step), dumped


def _is_step(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_STEP


def _finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            if not math.isfinite(item):
                return False
        elif type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return True


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _read(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that gives ``body`` (already read) first, then what ``receive`` gives."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _send(send: Send, status: int, content: Any, headers: dict[str, str]) -> None:
    # as Starlette's JSONResponse renders it
    raw = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
    body = raw.encode("utf-8")
    out = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    out += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
