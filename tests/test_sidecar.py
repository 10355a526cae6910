"""The sidecar (``skialith serve``) over a real nats-server and read model (SQLite; MySQL and
PostgreSQL when configured): SkialithAgent over HTTP, idempotency, auth, health and metrics."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest
from sidecar_support import agent_path, error, sidecar, stream_last_seq

from skialith import SkialithAgent
from skialith_langgraph.config import Settings
from skialith_langgraph.errors import ConfigError
from skialith_langgraph.server import NatsServer
from skialith_langgraph.sidecar import create_app
from skialith_langgraph.sidecar.server import check_bind, running

ROOT = Path(__file__).resolve().parent.parent

DATA = {
    "messages": [{"role": "user", "content": "héllo ✓ 🧭"}],
    "n": -7,
    "big": 2**62,
    "x": 0.1,
    "flags": [True, False, None],
    "nested": {"a": {"": []}},
}


# what is refused or checked before a database is involved: one read model is enough
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_agent_over_http_matches_the_python_sdk(settings: Settings) -> None:
    async with sidecar(settings) as client:
        fresh = (await client.get(agent_path("http-1", "state"))).json()
        assert fresh == {
            "agentId": "http-1",
            "stepIndex": 0,
            "data": {},
            "lastStep": None,
            "checkpointedAt": None,
            "resumed": False,
        }
        r = await client.post(agent_path("http-1", "checkpoints"), json={"step": 0, "data": DATA})
        assert r.status_code == 201, r.text
        assert r.json()["agentId"] == "http-1" and r.json()["step"] == 0 and r.json()["seq"] > 0
        assert r.headers["server-timing"].startswith("ack;dur=")
        ev = await client.post(agent_path("http-1", "events"), json={"name": "thought", "payload": {"t": 1}})
        assert ev.status_code == 201, ev.text
        assert ev.json()["step"] == 1  # default: the step after the last checkpoint, as resume() says
        state = (await client.get(agent_path("http-1", "state"))).json()
        assert state["stepIndex"] == 1 and state["lastStep"] == 0 and state["resumed"] is True
        assert state["data"] == DATA

        # what HTTP wrote, Python reads; what Python writes, HTTP reads
        async with SkialithAgent("http-1", settings=settings) as agent:
            py = await agent.resume()
            assert py.step_index == 1 and py.data == DATA
            await agent.checkpoint(1, {"from": "python", "list": [1, 2]})
        state = (await client.get(agent_path("http-1", "state"))).json()
        assert state["stepIndex"] == 2 and state["data"] == {"from": "python", "list": [1, 2]}

        history = (await client.get(agent_path("http-1", "history"))).json()["records"]
        assert [(h["kind"], h["step"], h["name"]) for h in history] == [
            ("checkpoint", 0, ""),
            ("event", 1, "thought"),  # by step, then in log order
            ("checkpoint", 1, ""),
        ]
        only = (await client.get(agent_path("http-1", "history"), params={"kind": "event"})).json()
        assert [h["payload"] for h in only["records"]] == [{"t": 1}]


async def test_hostile_agent_ids_round_trip(settings: Settings) -> None:
    ids = ["a.b", "a*b>c", "with/slash", "../../etc", "sp ace", "日本語", "%2F", "nul\x00byte", "x" * 1000]
    async with sidecar(settings) as client:
        for i, agent_id in enumerate(ids):
            r = await client.post(
                agent_path(agent_id, "checkpoints"), json={"step": i, "data": {"id": agent_id}}
            )
            assert r.status_code == 201, (agent_id, r.text)
        for i, agent_id in enumerate(ids):
            state = (await client.get(agent_path(agent_id, "state"))).json()
            assert state["agentId"] == agent_id and state["data"] == {"id": agent_id}
            assert state["lastStep"] == i
            async with SkialithAgent(agent_id, settings=settings) as agent:
                assert (await agent.resume()).data == {"id": agent_id}


async def test_idempotency_key_retry_writes_nothing_new(settings: Settings) -> None:
    key = {"Idempotency-Key": "retry-1"}
    body = {"step": 3, "data": {"v": 1}}
    async with sidecar(settings) as client:
        first = await client.post(agent_path("idem", "checkpoints"), json=body, headers=key)
        assert first.status_code == 201
        last = await stream_last_seq(settings)
        again = await client.post(agent_path("idem", "checkpoints"), json=body, headers=key)
        assert again.status_code == 201 and again.json() == first.json()
        assert await stream_last_seq(settings) == last
        other = await client.post(agent_path("idem", "checkpoints"), json={"step": 3, "data": 2}, headers=key)
        assert other.status_code == 409 and error(other)["code"] == "conflict"
        assert await stream_last_seq(settings) == last
        # concurrent retries of one key: one write
        ev_key = {"Idempotency-Key": "retry-2"}
        ev = {"name": "n", "payload": [1], "step": 3}
        answers = await asyncio.gather(
            *[client.post(agent_path("idem", "events"), json=ev, headers=ev_key) for _ in range(5)]
        )
        assert {a.status_code for a in answers} == {201}
        assert len({a.json()["seq"] for a in answers}) == 1
        assert await stream_last_seq(settings) == last + 1
    # a restarted sidecar (a lost response, retried against another process): JetStream's duplicate
    # window answers the first write's seq
    async with sidecar(settings) as client:
        again = await client.post(agent_path("idem", "checkpoints"), json=body, headers=key)
        assert again.status_code == 201 and again.json() == first.json()
        conflict = await client.post(
            agent_path("idem", "checkpoints"), json={"step": 3, "data": 9}, headers=key
        )
        assert conflict.status_code == 409
        assert await stream_last_seq(settings) == last + 1


async def test_idempotent_large_body_in_parts(settings: Settings) -> None:
    small = settings.replace(chunk_size=1024)
    data = {"blob": "x" * 5000}
    key = {"Idempotency-Key": "large"}
    async with sidecar(small) as client:
        first = await client.post(
            agent_path("big", "checkpoints"), json={"step": 0, "data": data}, headers=key
        )
        assert first.status_code == 201, first.text
        last = await stream_last_seq(small)
    async with sidecar(small) as client:
        again = await client.post(
            agent_path("big", "checkpoints"), json={"step": 0, "data": data}, headers=key
        )
        assert again.json() == first.json()
        assert await stream_last_seq(small) == last
        assert (await client.get(agent_path("big", "state"))).json()["data"] == data


BAD_BODIES: list[tuple[str, bytes, int]] = [
    ("malformed JSON", b'{"step": 0, "data": ', 400),
    ("not an object", b"[1, 2]", 400),
    ("step as a string", b'{"step": "1", "data": {}}', 400),
    ("step as a bool", b'{"step": true, "data": {}}', 400),
    ("step as a float", b'{"step": 1.5, "data": {}}', 400),
    ("negative step", b'{"step": -1, "data": {}}', 422),
    ("step beyond BIGINT", b'{"step": 9223372036854775807, "data": {}}', 422),
    ("missing step", b'{"data": {}}', 422),
    ("unknown field", b'{"step": 0, "data": {}, "extra": 1}', 422),
    ("NaN", b'{"step": 0, "data": NaN}', 400),
    ("int beyond 64 bits", b'{"step": 0, "data": 123456789012345678901234567890}', 400),
    ("invalid UTF-8", b'{"step": 0, "data": "\xff\xfe"}', 400),
]


@SQLITE_ONLY
async def test_bad_input_is_a_clear_4xx_and_writes_nothing(settings: Settings) -> None:
    async with sidecar(settings, max_body=4096) as client:
        before = await stream_last_seq(settings)
        for what, raw, status in BAD_BODIES:
            r = await client.post(
                agent_path("bad", "checkpoints"), content=raw, headers={"content-type": "application/json"}
            )
            assert r.status_code == status, (what, r.status_code, r.text)
            assert error(r)["code"] == {400: "bad_request", 422: "invalid"}[status], what
        bad_events = [b'{"name": 5, "payload": 1}', b'{"name": "' + b"n" * 300 + b'", "payload": 1}']
        for raw in bad_events:
            r = await client.post(
                agent_path("bad", "events"), content=raw, headers={"content-type": "application/json"}
            )
            assert 400 <= r.status_code < 500, r.text
        too_big = await client.post(agent_path("bad", "checkpoints"), json={"step": 0, "data": "x" * 5000})
        assert too_big.status_code == 413
        assert "4096 bytes" in error(too_big)["message"] and error(too_big)["code"] == "too_large"

        async def chunks() -> object:
            for _ in range(10):
                yield b" " * 1000  # no Content-Length: counted as it streams

        streamed = await client.post(agent_path("bad", "checkpoints"), content=chunks())
        assert streamed.status_code == 413
        long_key = await client.post(
            agent_path("bad", "checkpoints"),
            json={"step": 0, "data": 1},
            headers={"Idempotency-Key": "k" * 201},
        )
        assert long_key.status_code == 400 and "Idempotency-Key" in error(long_key)["message"]
        bad_query = await client.get(agent_path("bad", "history"), params={"step": "-1"})
        assert bad_query.status_code in (400, 422)
        bad_kind = await client.get(agent_path("bad", "history"), params={"kind": "nope"})
        assert bad_kind.status_code in (400, 422)
        missing = await client.get("/v1/nothing")
        assert missing.status_code == 404 and error(missing)["code"] == "not_found"
        assert await stream_last_seq(settings) == before  # nothing was written


@SQLITE_ONLY
async def test_token_required_when_set(settings: Settings) -> None:
    async with running(settings, port=0, token="s3cret") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            before = await stream_last_seq(settings)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = await client.post(
                    agent_path("a", "checkpoints"), json={"step": 0, "data": 1}, headers=headers
                )
                assert r.status_code == 401 and error(r)["code"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
            assert (await client.get(agent_path("a", "state"))).status_code == 401
            assert (await client.get("/metrics")).status_code == 401
            assert await stream_last_seq(settings) == before
            assert (await client.get("/healthz")).status_code == 200  # probes stay open
            ok = await client.post(
                agent_path("a", "checkpoints"),
                json={"step": 0, "data": 1},
                headers={"Authorization": "Bearer s3cret"},
            )
            assert ok.status_code == 201


def test_refuses_a_public_address_without_a_token() -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "tok")
    for host in ("0.0.0.0", "192.0.2.1", "::", "example.com"):
        with pytest.raises(ConfigError, match="SKIALITH_API_TOKEN"):
            check_bind(host, None)


async def test_health_ready_and_metrics(settings: Settings) -> None:
    async with sidecar(settings) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"nats": "ok", "database": "ok"}
        await client.post(agent_path("m", "checkpoints"), json={"step": 0, "data": 1})
        text = (await client.get("/metrics")).text
        assert "# TYPE skialith_sidecar_requests_total counter" in text
        assert (
            'skialith_sidecar_requests_total{method="POST",route="/v1/agents/{agent_id}/checkpoints",'
            'status="201"} 1' in text
        )
        assert f'skialith_sidecar_stream_last_seq{{stream="{settings.stream}"}}' in text


@SQLITE_ONLY
def test_committed_openapi_is_the_served_one(settings: Settings) -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    served = create_app(settings).openapi()
    assert committed == served, (
        "docs/openapi.json is stale: run 'python -m skialith_langgraph.sidecar.openapi'"
    )


async def test_nats_down_is_a_503_that_says_so(tmp_path: Path, sqlite_url: str, unique: str) -> None:
    """Stop the sidecar's nats-server for real: writes answer 503 naming NATS (no hang), /readyz
    says not ready; once it is back, writes succeed again."""
    with socket.socket() as probe:  # a fixed port, so that the client reconnects to the restarted server
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    server = NatsServer(store_dir=tmp_path / "nats", port=free)
    server.start()
    try:
        settings = Settings(
            nats_url=server.url, database_url=sqlite_url, stream=f"SK{unique}".upper(), publish_timeout=1.0
        )
        async with sidecar(settings) as client:
            ok = await client.post(agent_path("down", "checkpoints"), json={"step": 0, "data": 1})
            assert ok.status_code == 201
            server.stop()
            r = await client.post(agent_path("down", "checkpoints"), json={"step": 1, "data": 2})
            assert r.status_code == 503, r.text
            assert error(r)["code"] == "unavailable" and "NATS" in error(r)["message"]
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["nats"] != "ok"
            server.start()
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                r = await client.post(agent_path("down", "checkpoints"), json={"step": 1, "data": 2})
                if r.status_code == 201 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert r.status_code == 201, r.text
            assert (await client.get(agent_path("down", "state"))).json()["data"] == 2
    finally:
        server.stop()


@SQLITE_ONLY
async def test_fast_path_and_fastapi_answer_alike(settings: Settings) -> None:
    """A valid write with ``Content-Type: application/json`` takes the plain-ASGI fast path
    (fastpath.py); with another JSON media type FastAPI answers it. The two agree: a retry under
    one Idempotency-Key crosses paths without a 409 (same request digest, defaults included), a
    different body is a 409 on either, and an invalid body gets FastAPI's message on both."""
    fast = {"content-type": "application/json"}
    slow = {"content-type": "application/vnd.skialith+json"}
    async with sidecar(settings) as client:
        path = agent_path("paths", "checkpoints")
        first = await client.post(path, content=b'{"step": 2}', headers={**fast, "Idempotency-Key": "k1"})
        assert first.status_code == 201, first.text
        last = await stream_last_seq(settings)
        again = await client.post(
            path, content=b'{"data": null, "step": 2}', headers={**slow, "Idempotency-Key": "k1"}
        )
        assert again.status_code == 201 and again.json() == first.json()
        assert await stream_last_seq(settings) == last
        for headers in (fast, slow):
            other = await client.post(
                path, content=b'{"step": 2, "data": 1}', headers={**headers, "Idempotency-Key": "k1"}
            )
            assert other.status_code == 409 and error(other)["code"] == "conflict"
        events = agent_path("paths", "events")
        ev = await client.post(events, content=b'{"name": "n"}', headers={**slow, "Idempotency-Key": "k2"})
        assert ev.status_code == 201 and ev.json()["step"] == 3
        retried = await client.post(
            events, content=b'{"name": "n", "payload": null}', headers={**fast, "Idempotency-Key": "k2"}
        )
        assert retried.status_code == 201 and retried.json() == ev.json()
        odd = agent_path("a?b#c", "checkpoints")  # the path FastAPI's digest names is cut at '?'
        once = await client.post(odd, content=b'{"step": 0}', headers={**slow, "Idempotency-Key": "k3"})
        twice = await client.post(odd, content=b'{"step": 0}', headers={**fast, "Idempotency-Key": "k3"})
        assert once.status_code == twice.status_code == 201 and once.json() == twice.json()
        for raw in (b'{"step": true}', b'{"step": 1, "x": 0}', b'{"step": 1, "data": NaN}', b"[1]"):
            answers = [await client.post(path, content=raw, headers=h) for h in (fast, slow)]
            assert answers[0].status_code == answers[1].status_code and 400 <= answers[0].status_code < 500
            assert error(answers[0]) == error(answers[1]), raw
        huge = await client.post(path, content=b'{"step": 1, "data": 1' + b"0" * 30 + b"}", headers=fast)
        assert huge.status_code == 400 and "cannot be stored" in error(huge)["message"]
        assert await stream_last_seq(settings) == last + 2  # the event and the odd id's checkpoint
        text = (await client.get("/metrics")).text
        assert 'route="/v1/agents/{agent_id}/checkpoints",status="201"} 4' in text
        assert 'route="/v1/agents/{agent_id}/checkpoints",status="409"} 2' in text
