"""Helpers of the sidecar tests: a real uvicorn sidecar on a free port, and the stream's last seq."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats

from skialith_langgraph.config import Settings
from skialith_langgraph.sidecar.server import running
from skialith_langgraph.sidecar.state import Limits


@contextlib.asynccontextmanager
async def sidecar(
    settings: Settings, *, token: str | None = None, max_body: int | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """``skialith serve`` in this test's loop (uvicorn on 127.0.0.1:0), and a keep-alive client to it."""
    limits = Limits(max_body=max_body) if max_body else None
    async with running(settings, port=0, token=token, limits=limits) as srv:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=15.0) as client:
            yield client


async def stream_last_seq(settings: Settings) -> int:
    nc = await nats.connect(settings.nats_url)
    try:
        info = await nc.jetstream().stream_info(settings.stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()


def agent_path(agent_id: str, tail: str) -> str:
    from urllib.parse import quote

    return f"/v1/agents/{quote(agent_id, safe='')}/{tail}"


def error(response: httpx.Response) -> dict[str, Any]:
    """The error envelope of a 4xx/5xx answer (asserting its shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    err: dict[str, Any] = body["error"]
    return err
