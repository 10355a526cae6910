"""The sidecar's write latency: ``save_event`` and ``checkpoint`` through HTTP next to the direct
Python SDK and the bare PubAck floor, in one run, interleaved.

    python -m benchmarks.sidecar_bench [--iterations 2000] [--warmup 200] [--block 50]

One nats-server (JetStream, file store, free port, temporary directory) and one SQLite read model;
``skialith serve`` runs as its own process (as in production: a sidecar), and this process times:

* ``floor``: a bare nats-py ``js.publish`` of a body of the same size, with a ``Nats-Msg-Id``;
* ``sdk``: ``SkialithAgent.save_event`` / ``.checkpoint`` (serde + publish + PubAck);
* ``http``: the same calls as ``POST /v1/agents/{id}/events`` / ``.../checkpoints`` through one
  keep-alive ``httpx.AsyncClient`` (JSON, FastAPI validation, the SDK call in the sidecar, JSON back);
* ``http (minimal client)``: the same requests written and read by hand on one keep-alive asyncio
  connection, so the sidecar's share shows apart from the client library's.

Every row runs in blocks of ``--block`` calls, rows taking turns, so background noise hits all
alike. The payload is about 1 KiB of JSON (``{"kind", "text"}``). No projector runs: writes never
wait on it (LSS-06). Target: the HTTP hop adds at most 0.3 ms at p50 over the direct SDK.
Results go to stdout and ``benchmarks/results/sidecar-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats

from benchmarks.stats import Sample
from skialith_langgraph import codec
from skialith_langgraph.agent import SkialithAgent
from skialith_langgraph.config import Settings
from skialith_langgraph.server import NatsServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET_HOP_MS = 0.3
TEXT = "x" * 990  # the event's JSON is about 1 KiB


@dataclass
class Row:
    op: str
    path: str
    call: Callable[[], Awaitable[None]]
    sample: Sample = field(default_factory=Sample)


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client on one asyncio connection: separates what the sidecar
    costs from what a client library (httpx) costs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str) -> RawHttp:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, path: str, body: Any) -> int:
        raw = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(raw)}\r\n\r\n"
        )
        self.writer.write(head.encode() + raw)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _timed(fn: Callable[[int], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    counter = iter(range(1 << 62))
    return lambda: fn(next(counter))


async def _start_sidecar(settings: Settings) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")}
    env.update(
        SKIALITH_NATS_URL=settings.nats_url,
        SKIALITH_DATABASE_URL=settings.database_url,
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "skialith_langgraph.cli", "serve", "--port", "0", "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if not line.startswith("sidecar: "):
        proc.kill()
        raise SystemExit(f"the sidecar did not start: {line!r}")
    return proc, line.split()[1]


async def run(iterations: int, warmup: int, block: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="skialith-bench-") as tmp:
        server = NatsServer(store_dir=Path(tmp) / "nats", port=-1, log_file=Path(tmp) / "nats.log")
        server.start()
        try:
            settings = Settings(nats_url=server.url, database_url=f"sqlite+aiosqlite:///{tmp}/rm.db")
            return await _measure(settings, iterations, warmup, block)
        finally:
            server.stop()


async def _measure(settings: Settings, iterations: int, warmup: int, block: int) -> dict[str, Any]:
    agent = SkialithAgent("bench-sdk", settings=settings)
    await agent.open()
    proc, url = await _start_sidecar(settings)
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    http = httpx.AsyncClient(base_url=url, timeout=10.0)
    raw = await RawHttp.connect(url)
    event = {"kind": "thought", "text": TEXT}
    body = codec.dumps(
        codec.EventMsg(
            agent_id="bench-floor",
            kind="event",
            name="e0",
            step=0,
            payload=agent.serde.dumps_typed(event),
            ts=time.time(),
        )
    )
    floor_subject = f"{settings.subject_prefix}.e.floor.v"

    async def floor(i: int) -> None:
        await js.publish(floor_subject, body, headers={"Nats-Msg-Id": f"f{i}-{os.urandom(4).hex()}"})

    async def sdk_event(i: int) -> None:
        await agent.save_event(f"e{i}", event, step=0)

    async def http_event(i: int) -> None:
        r = await http.post(
            "/v1/agents/bench-http/events", json={"name": f"e{i}", "payload": event, "step": 0}
        )
        assert r.status_code == 201, r.text

    async def raw_event(i: int) -> None:
        status = await raw.post("/v1/agents/bench-raw/events", {"name": f"e{i}", "payload": event, "step": 0})
        assert status == 201

    async def raw_checkpoint(i: int) -> None:
        assert await raw.post("/v1/agents/bench-raw/checkpoints", {"step": i, "data": event}) == 201

    async def sdk_checkpoint(i: int) -> None:
        await agent.checkpoint(i, event)

    async def http_checkpoint(i: int) -> None:
        r = await http.post("/v1/agents/bench-http/checkpoints", json={"step": i, "data": event})
        assert r.status_code == 201, r.text

    rows = [
        Row("publish", "floor (bare nats-py PubAck)", _timed(floor)),
        Row("save_event", "sdk (SkialithAgent)", _timed(sdk_event)),
        Row("save_event", "http (sidecar, keep-alive)", _timed(http_event)),
        Row("save_event", "http (minimal client)", _timed(raw_event)),
        Row("checkpoint", "sdk (SkialithAgent)", _timed(sdk_checkpoint)),
        Row("checkpoint", "http (sidecar, keep-alive)", _timed(http_checkpoint)),
        Row("checkpoint", "http (minimal client)", _timed(raw_checkpoint)),
    ]
    try:
        for row in rows:
            for _ in range(warmup):
                await row.call()
        gc.collect()
        rounds = max(1, -(-iterations // block))
        for r in range(rounds):
            n = min(block, iterations - r * block)
            k = r % len(rows)
            for row in rows[k:] + rows[:k]:
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    await row.call()
                    row.sample.add(time.perf_counter_ns() - t0)
    finally:
        await http.aclose()
        await raw.close()
        await nc.close()
        await agent.close()
        proc.terminate()
        proc.wait(timeout=30)
    summaries = {(row.op, row.path): row.sample.summary() for row in rows}
    hops = {}
    for op in ("save_event", "checkpoint"):
        sdk = summaries[(op, "sdk (SkialithAgent)")]
        for client, path in (("httpx", "http (sidecar, keep-alive)"), ("minimal", "http (minimal client)")):
            over = summaries[(op, path)]
            hops[f"{op} ({client})"] = {q: getattr(over, q) - getattr(sdk, q) for q in ("p50", "p95", "p99")}
    return {
        "iterations": iterations,
        "warmup": warmup,
        "block": block,
        "loop": type(asyncio.get_running_loop()).__module__,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "rows": [{"op": op, "path": path, **s.as_dict()} for (op, path), s in summaries.items()],
        "http_hop_ms": hops,
        "target_hop_p50_ms": TARGET_HOP_MS,
    }


def _report(result: dict[str, Any]) -> str:
    lines = [f"{'op':<11} {'path':<28} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for row in result["rows"]:
        q = f"{row['p50_ms']:8.3f} {row['p95_ms']:8.3f} {row['p99_ms']:8.3f}"
        lines.append(f"{row['op']:<11} {row['path']:<28} {q}")
    for op, hop in result["http_hop_ms"].items():
        verdict = "meets" if hop["p50"] <= TARGET_HOP_MS else "MISSES"
        lines.append(
            f"HTTP hop over the SDK, {op}: p50 +{hop['p50']:.3f} ms, p95 +{hop['p95']:.3f} ms, "
            f"p99 +{hop['p99']:.3f} ms ({verdict} the +{TARGET_HOP_MS} ms p50 target)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sidecar_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--iterations", type=int, default=2000, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls per row first")
    parser.add_argument("--block", type=int, default=50, help="calls per row per turn")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="this process's event loop"
    )
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(run(args.iterations, args.warmup, args.block))
    print(_report(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sidecar-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
