"""The viewer's ASGI app without a browser: mounted under another app (as ``skialith serve`` mounts
it), its path-form endpoints, its headers, and the package data that ships its assets."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from collections import Counter
from pathlib import Path

import httpx
from graphs import linear
from starlette.applications import Starlette

from skialith_langgraph import Settings, SkialithCheckpointer
from skialith_langgraph.ui import create_app
from skialith_langgraph.ui.app import STATIC
from skialith_langgraph.ui.security import CSP

ROOT = Path(__file__).resolve().parents[1]


def test_the_assets_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["skialith_langgraph"]
    assert "ui/static/*" in globs
    files = sorted(p.name for p in STATIC.iterdir())
    assert files == ["app.css", "app.js", "index.html"]  # no subfolder the glob would miss
    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html and "http" not in html.replace("http-equiv", "")  # no inline script, no CDN


async def test_mounted_under_another_app(settings: Settings) -> None:
    async with SkialithCheckpointer(settings=settings) as saver:
        await (
            linear(Counter())
            .compile(checkpointer=saver)
            .ainvoke({"log": []}, {"configurable": {"thread_id": "a/b c"}})
        )
    viewer = create_app(settings)  # opens its own inspector on the first request
    host = Starlette()
    host.mount("/ui", viewer)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://t") as client:
            page = await client.get("/ui/")
            assert page.status_code == 200 and 'src="static/app.js"' in page.text
            assert page.headers["content-security-policy"] == CSP
            js = await client.get("/ui/static/app.js")
            assert js.status_code == 200 and "javascript" in js.headers["content-type"]
            assert js.headers["x-content-type-options"] == "nosniff"
            listed = (await client.get("/ui/api/threads")).json()
            assert [t["thread_id"] for t in listed["threads"]] == ["a/b c"]
            hist = (await client.get("/ui/api/threads/a%2Fb%20c/history")).json()
            assert [e["step"] for e in hist["entries"]] == [-1, 0, 1, 2, 3]
            last = hist["entries"][-1]["checkpoint_id"]
            shown = (await client.get(f"/ui/api/threads/a%2Fb%20c/checkpoints/{last}")).json()
            assert shown["state"]["values"]["log"] == ["a1", "b1", "c1"]
            assert shown["diff_to_parent"]["channels"]["log"]["changes"] == [
                {"path": "[2]", "op": "added", "new": "c1"}
            ]
            assert (await client.get("/ui/api/lineage/a%2Fb%20c")).json()["thread_id"] == "a/b c"
            # the timeline pages backwards: the newest 2, then the 2 before them
            newest = (await client.get("/ui/api/history", params={"thread": "a/b c", "limit": "2"})).json()
            assert [e["step"] for e in newest["entries"]] == [2, 3]
            older = (
                await client.get(
                    "/ui/api/history", params={"thread": "a/b c", "limit": "2", "before": newest["before"]}
                )
            ).json()
            assert [e["step"] for e in older["entries"]] == [0, 1] and older["before"]
            found = (await client.get("/ui/api/threads", params={"q": "b c"})).json()
            assert [t["thread_id"] for t in found["threads"]] == ["a/b c"]
            assert (await client.get("/ui/api/threads", params={"q": "%"})).json()["threads"] == []
    finally:
        await viewer.state.backend.aclose()


async def test_nats_down_is_a_clear_error_not_a_hang(sqlite_url: str) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    viewer = create_app(
        Settings(nats_url=f"nats://127.0.0.1:{port}", database_url=sqlite_url, connect_timeout=1.0)
    )
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=viewer), base_url="http://t"
        ) as client:
            r = await asyncio.wait_for(client.get("/api/threads"), 30)
            assert r.status_code == 503
            assert f"127.0.0.1:{port}" in r.json()["error"] and "skialith up" in r.json()["error"]
    finally:
        await viewer.state.backend.aclose()
