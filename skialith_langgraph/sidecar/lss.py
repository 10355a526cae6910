"""``skialith lss-check``: a running server against every MUST of docs/lss.md (LSS-01..06).

Each check drives the HTTP API of docs/sidecar.md as a client would and looks only at what the API
answers, so it checks any implementation of the specification, not this one's internals. It
writes to fresh agents named ``lss-check-<random>...``; it deletes nothing.
"""

from __future__ import annotations

import math
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["CHECKS", "DEFAULT_HOT_PATH_MS", "Failed", "run_checks"]

DEFAULT_HOT_PATH_MS = 1.0  # LSS-06: p50 of the server-side time to the durability ack
HOT_PATH_WRITES = 50


class Failed(Exception):
    """A MUST does not hold; the message says which observation failed."""


@dataclass
class Client:
    http: httpx.AsyncClient
    run: str
    hot_path_ms: float

    def agent(self, name: str) -> str:
        return f"lss-check-{self.run}-{name}"

    @staticmethod
    def path(agent_id: str, tail: str) -> str:
        return f"/v1/agents/{quote(agent_id, safe='')}/{tail}"

    async def call(self, method: str, url: str, want: int, **kwargs: Any) -> httpx.Response:
        r = await self.http.request(method, url, **kwargs)
        if r.status_code != want:
            raise Failed(f"{method} {url} answered {r.status_code}, expected {want}: {r.text[:200]}")
        return r

    async def checkpoint(self, agent: str, step: int, data: Any, **kw: Any) -> dict[str, Any]:
        r = await self.call(
            "POST", self.path(agent, "checkpoints"), 201, json={"step": step, "data": data}, **kw
        )
        out: dict[str, Any] = r.json()
        return out

    async def event(self, agent: str, step: int, name: str, payload: Any) -> dict[str, Any]:
        body = {"name": name, "payload": payload, "step": step}
        out: dict[str, Any] = (await self.call("POST", self.path(agent, "events"), 201, json=body)).json()
        return out

    async def history(self, agent: str, **params: Any) -> list[dict[str, Any]]:
        r = await self.call("GET", self.path(agent, "history"), 200, params=params)
        records: list[dict[str, Any]] = r.json()["records"]
        return records

    async def state(self, agent: str) -> dict[str, Any]:
        out: dict[str, Any] = (await self.call("GET", self.path(agent, "state"), 200)).json()
        return out


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


# -- the checks, one per requirement ----------------------------------------------------------


async def lss01(c: Client) -> str:
    """Durable event log: every acknowledged write has a log position; the log is read back whole,
    in order, right after the acknowledgement."""
    agent = c.agent("log")
    acks = [await c.event(agent, 0, f"e{i}", {"i": i}) for i in range(3)]
    acks.append(await c.checkpoint(agent, 0, {"after": "e2"}))
    seqs = [a["seq"] for a in acks]
    _expect(
        all(isinstance(s, int) and s > 0 for s in seqs), f"acknowledgements carry no positive seq: {seqs}"
    )
    _expect(seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"seqs not strictly increasing: {seqs}")
    records = await c.history(agent)
    got = [r["seq"] for r in records]
    _expect(
        sorted(got) == sorted(seqs), f"history right after the acks holds seqs {got}, acknowledged {seqs}"
    )
    events = [r for r in records if r["kind"] == "event"]
    _expect(
        [r["name"] for r in events] == ["e0", "e1", "e2"], "history does not keep the events in log order"
    )
    return f"{len(seqs)} writes acknowledged with increasing seqs and read back at once"


async def lss02(c: Client) -> str:
    """Idempotent checkpoints: one checkpoint per (agent_id, step), the last acknowledged; a retry
    with the same Idempotency-Key returns the first answer and writes nothing new."""
    agent = c.agent("idem")
    await c.checkpoint(agent, 4, {"v": 1})
    await c.checkpoint(agent, 4, {"v": 2})
    cps = await c.history(agent, kind="checkpoint", step=4)
    _expect(len(cps) == 1, f"two checkpoints of step 4 leave {len(cps)} records, expected 1")
    _expect(cps[0]["payload"] == {"v": 2}, f"step 4 holds {cps[0]['payload']!r}, expected the last write")
    key = {"Idempotency-Key": f"lss-{c.run}"}
    first = await c.checkpoint(agent, 5, {"v": 3}, headers=key)
    again = await c.checkpoint(agent, 5, {"v": 3}, headers=key)
    _expect(first == again, f"a retry with the same Idempotency-Key answered {again}, the first {first}")
    seqs = [r["seq"] for r in await c.history(agent)]
    _expect(seqs.count(first["seq"]) == 1 and len(seqs) == 2, f"the retry wrote again: seqs {seqs}")
    conflict = await c.http.post(
        c.path(agent, "checkpoints"), json={"step": 5, "data": {"v": 4}}, headers=key
    )
    _expect(
        conflict.status_code == 409, f"another body under a used key answered {conflict.status_code}, not 409"
    )
    return "one record per step, same key -> same answer, other body -> 409"


_DATA = {
    "messages": [{"role": "user", "content": "héllo ✓ 🧭"}, {"role": "ai", "content": ""}],
    "n": -7,
    "big": 2**53,
    "x": 0.1,
    "flags": [True, False, None],
    "nested": {"a": {"b": {"c": []}}, "": "empty key"},
}


async def lss03(c: Client) -> str:
    """Resumable execution: any client reconstructs the exact last checkpoint, and where to go on."""
    agent = c.agent("resume")
    fresh = await c.state(agent)
    _expect(
        fresh.get("stepIndex") == 0 and fresh.get("data") == {} and fresh.get("resumed") is False,
        f"a fresh agent resumes as {fresh}, expected stepIndex 0, data {{}}, resumed false",
    )
    for step in range(3):
        await c.checkpoint(agent, step, {**_DATA, "step": step})
    async with httpx.AsyncClient(base_url=str(c.http.base_url), headers=c.http.headers) as other:
        r = await other.get(c.path(agent, "state"))
    _expect(r.status_code == 200, f"resume from another client answered {r.status_code}")
    state = r.json()
    _expect(state.get("stepIndex") == 3 and state.get("lastStep") == 2, f"resume gave {state}")
    _expect(state.get("data") == {**_DATA, "step": 2}, f"resume data differs: {state.get('data')!r}")
    return "fresh -> step 0; after steps 0..2 -> stepIndex 3 with the step-2 data, byte for byte as JSON"


_IDS = ["a.b", "a*b", "a>b", "a/b", "a b", "日本語", "a\\b", "%2F", "x" * 200]


async def lss04(c: Client) -> str:
    """Transport agnostic: ids are opaque strings (no transport syntax leaks into them), and the
    semantics are described by the API document, not by a wire protocol."""
    for i, raw in enumerate(_IDS):
        agent = c.agent(f"id{i}-{raw}")
        await c.checkpoint(agent, 0, {"id": raw})
        state = await c.state(agent)
        _expect(
            state.get("agentId") == agent, f"agent id {agent[:60]!r} came back as {state.get('agentId')!r}"
        )
        _expect(state.get("data") == {"id": raw}, f"agent {agent[:60]!r} resumed someone else's data")
    doc = (await c.call("GET", "/openapi.json", 200)).json()
    paths = set(doc.get("paths", {}))
    needed = {
        "/v1/agents/{agent_id}/state",
        "/v1/agents/{agent_id}/checkpoints",
        "/v1/agents/{agent_id}/events",
        "/v1/agents/{agent_id}/history",
    }
    _expect(needed <= paths, f"the API document lacks {sorted(needed - paths)}")
    return f"{len(_IDS)} ids with transport-reserved characters are opaque; API described at /openapi.json"


async def lss05(c: Client) -> str:
    """Observable state: every transition is listed with its kind, step, name, payload, time and
    position, the agent is found by listing, and operators get metrics, without app changes."""
    agent = c.agent("observe")
    await c.event(agent, 0, "thought", {"text": "t"})
    await c.checkpoint(agent, 0, {"s": 0})
    records = await c.history(agent)
    fields = {"agentId", "kind", "step", "name", "payload", "ts", "seq"}
    _expect(len(records) == 2, f"history lists {len(records)} transitions, expected 2")
    _expect(all(fields <= set(r) for r in records), f"a record lacks one of {sorted(fields)}: {records}")
    _expect(all(isinstance(r["ts"], int | float) and r["ts"] > 0 for r in records), "a record has no time")
    listed = (await c.call("GET", "/v1/threads", 200, params={"kind": "agent", "limit": 50})).json()
    ids = [t.get("thread_id") for t in listed.get("threads", [])]
    _expect(agent in ids, f"GET /v1/threads?kind=agent does not list {agent!r}")
    metrics = await c.call("GET", "/metrics", 200)
    _expect("# TYPE " in metrics.text, "/metrics is not in the Prometheus text format")
    return "history has kind/step/name/payload/ts/seq per record; listed; /metrics answers"


async def lss06(c: Client) -> str:
    """Bounded hot path: a write is acknowledged once durable, with a server-side time to that
    acknowledgement that does not depend on the read model, sub-millisecond at p50."""
    agent = c.agent("hot")
    times: list[float] = []
    for i in range(HOT_PATH_WRITES):
        r = await c.call("POST", c.path(agent, "checkpoints"), 201, json={"step": i, "data": {"i": i}})
        timing = r.headers.get("server-timing", "")
        dur = _ack_ms(timing)
        _expect(dur is not None, f"a write answered without 'Server-Timing: ack;dur=<ms>' ({timing!r})")
        assert dur is not None
        times.append(dur)
    p50 = statistics.median(times)
    p99 = sorted(times)[max(0, math.ceil(0.99 * len(times)) - 1)]
    _expect(
        p50 <= c.hot_path_ms,
        f"p50 time to the durability ack is {p50:.3f} ms over {len(times)} writes, above {c.hot_path_ms} ms",
    )
    return f"ack p50 {p50:.3f} ms, p99 {p99:.3f} ms over {len(times)} writes (bound {c.hot_path_ms} ms)"


def _ack_ms(header: str) -> float | None:
    for metric in header.split(","):
        name, _, params = metric.strip().partition(";")
        if name != "ack":
            continue
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                try:
                    return float(value)
                except ValueError:
                    return None
    return None


CHECKS: tuple[tuple[str, str, Callable[[Client], Awaitable[str]]], ...] = (
    ("LSS-01", "Durable Event Log", lss01),
    ("LSS-02", "Idempotent Checkpoints", lss02),
    ("LSS-03", "Resumable Execution", lss03),
    ("LSS-04", "Transport Agnostic", lss04),
    ("LSS-05", "Observable State", lss05),
    ("LSS-06", "Bounded Hot Path", lss06),
)


async def run_checks(
    url: str,
    *,
    token: str | None = None,
    timeout: float = 10.0,
    hot_path_ms: float = DEFAULT_HOT_PATH_MS,
    out: Callable[[str], None] = print,
) -> int:
    """Run every check; print ``PASS|FAIL LSS-0n <title>: <detail>``; 0 if all pass, else 1."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    failed = 0
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as http:
        client = Client(http, secrets.token_hex(4), hot_path_ms)
        for ident, title, check in CHECKS:
            try:
                detail = await check(client)
            except Failed as exc:
                failed += 1
                out(f"FAIL {ident} {title}: {exc}")
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                failed += 1
                out(f"FAIL {ident} {title}: {type(exc).__name__}: {exc}")
            else:
                out(f"PASS {ident} {title}: {detail}")
    verdict = "all MUSTs hold" if not failed else f"{failed} of {len(CHECKS)} requirements fail"
    out(f"lss-check {url}: {verdict} ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0
