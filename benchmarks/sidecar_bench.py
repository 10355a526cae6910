"""The sidecar's latency: ``save_event`` and ``checkpoint`` through HTTP next to the direct Python
SDK and the bare PubAck floor, and the LangGraph checkpointer's ``put`` / ``get_tuple`` through
the sidecar next to the Python SkialithCheckpointer, in one run, interleaved.

    python -m benchmarks.sidecar_bench [--iterations 2000] [--warmup 200] [--block 50] [--no-ts]

One nats-server (JetStream, R1, file store, default sync interval, free port, temporary directory),
one SQLite read model and ``skialith projector``; ``skialith serve`` runs as its own process (as in
production: a sidecar, uvloop + httptools), and this process times:

* ``floor``: a bare nats-py ``js.publish`` of a body of the same size, with a ``Nats-Msg-Id``;
* ``sdk``: ``SkialithAgent.save_event`` / ``.checkpoint`` (serde + publish + PubAck);
* ``http (minimal client)``: ``POST /v1/agents/{id}/events`` / ``.../checkpoints`` written and read
  by hand on one keep-alive asyncio connection, so the sidecar's share shows apart from a client
  library's; ``+ key``: the same with an ``Idempotency-Key`` (what the TypeScript SDK sends);
* ``http (httpx)``: the same through one keep-alive ``httpx.AsyncClient``;
* ``ts``: ``@skialith/agent-core``'s ``SkialithAgent`` and ``@skialith/langgraph-checkpoint``'s
  ``SkialithSaver`` in node (its global ``fetch``, keep-alive), driven block by block from here
  (sdk/typescript/bench/sidecar-driver.mjs; timed inside node), and for reference the same
  checkpoint request on ``node:http`` with a keep-alive agent (no SDK); left out with ``--no-ts``
  or when node or the built packages are missing;
* ``put`` / ``get_tuple``: ``SkialithCheckpointer.aput`` / ``.aget_tuple`` (the latest checkpoint
  of the thread) in this process, and the raw checkpoint routes (``POST /v1/checkpoints``,
  ``GET /v1/checkpoints/tuple``) with the minimal client and from SkialithSaver.

Every row runs in blocks of ``--block`` calls, rows taking turns, so background noise hits all
alike: first the agent writes with no projector running (writes never wait on it, LSS-06), then
the checkpointer rows with the projector caught up and running, so that ``get_tuple`` reads the
read model. The payload is about 1 KiB of JSON (``{"kind", "text"}``). Target: the HTTP hop adds at most
0.3 ms at p50 over the direct SDK. Results go to stdout and ``benchmarks/results/sidecar-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
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
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint

from benchmarks.stats import Sample, collected_outside, gc_section
from skialith_langgraph import SkialithCheckpointer, codec
from skialith_langgraph.agent import SkialithAgent
from skialith_langgraph.config import Settings
from skialith_langgraph.readmodel import PROJECTION
from skialith_langgraph.server import NatsServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TS_ROOT = ROOT / "sdk" / "typescript"
TS_DRIVER = TS_ROOT / "bench" / "sidecar-driver.mjs"
TARGET_HOP_MS = 0.3
TEXT = "x" * 990  # the event's JSON is about 1 KiB
SDK = "sdk (SkialithAgent)"
CHECKPOINTER = "python SkialithCheckpointer"


@dataclass
class Row:
    op: str
    path: str
    block: Callable[[int], Awaitable[list[int]]]  # n calls -> nanoseconds per call
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

    async def post(self, path: str, body: Any, headers: str = "") -> int:
        raw = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{headers}"
            f"content-length: {len(raw)}\r\n\r\n"
        )
        self.writer.write(head.encode() + raw)
        return await self._answer()

    async def get(self, path: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        return await self._answer()

    async def _answer(self) -> int:
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


class Node:
    """The TypeScript rows: sdk/typescript/bench/sidecar-driver.mjs, one block per command."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str) -> Node | None:
        node = shutil.which("node")
        built = (TS_ROOT / "packages" / "langgraph-checkpoint" / "dist" / "index.js").exists()
        if node is None or not built:
            print(
                "no TypeScript rows: node or the built packages (npm run build --prefix sdk/typescript) "
                "are missing"
            )
            return None
        proc = await asyncio.create_subprocess_exec(
            node,
            str(TS_DRIVER),
            url,
            cwd=TS_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    def row(self, op: str) -> Callable[[int], Awaitable[list[int]]]:
        async def block(n: int) -> list[int]:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps({"op": op, "n": n}).encode() + b"\n")
            line = await self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"the TypeScript driver ended during {op!r}")
            ns: list[int] = json.loads(line)["ns"]
            return ns

        return block

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write(b"quit\n")
        await asyncio.wait_for(self.proc.wait(), 30)


def _timed(fn: Callable[[int], Awaitable[Any]]) -> Callable[[int], Awaitable[list[int]]]:
    """A row of calls made in this process, each timed on its own."""
    counter = iter(range(1 << 62))

    async def block(n: int) -> list[int]:
        out = []
        for _ in range(n):
            i = next(counter)
            t0 = time.perf_counter_ns()
            await fn(i)
            out.append(time.perf_counter_ns() - t0)
        return out

    return block


async def _interleave(rows: list[Row], iterations: int, warmup: int, block: int) -> None:
    """Every row in blocks of ``block`` calls, rows taking turns (the first row rotating)."""
    for row in rows:
        await row.block(warmup)
    rounds = max(1, -(-iterations // block))
    with gc_section():
        for r in range(rounds):
            n = min(block, iterations - r * block)
            k = r % len(rows)
            with collected_outside():
                for row in rows[k:] + rows[:k]:
                    for ns in await row.block(n):
                        row.sample.add(ns)


async def _caught_up(saver: SkialithCheckpointer, timeout: float = 120.0) -> None:
    """Wait until the projector has applied the whole stream."""
    core = await saver._acore()
    log = await core._log()
    async with asyncio.timeout(timeout):
        while True:
            last = await log.stream_last_seq()
            async with core.model.connect() as conn:
                if await core.model.watermark(conn, PROJECTION) >= last:
                    return
            await asyncio.sleep(0.2)


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")}
    env.update(
        SKIALITH_NATS_URL=settings.nats_url,
        SKIALITH_DATABASE_URL=settings.database_url,
        PYTHONPATH=str(ROOT),
    )
    return env


async def _start_sidecar(settings: Settings) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "skialith_langgraph.cli", "serve", "--port", "0", "--log-level", "WARNING"],
        env=_env(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if not line.startswith("sidecar: "):
        proc.kill()
        raise SystemExit(f"the sidecar did not start: {line!r}")
    return proc, line.split()[1]


def _start_projector(settings: Settings) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "skialith_langgraph.cli", "--log-level", "WARNING", "projector"],
        env=_env(settings),
        stdout=subprocess.DEVNULL,
        text=True,
    )


async def run(iterations: int, warmup: int, block: int, ts: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="skialith-bench-") as tmp:
        server = NatsServer(store_dir=Path(tmp) / "nats", port=-1, log_file=Path(tmp) / "nats.log")
        server.start()
        try:
            settings = Settings(nats_url=server.url, database_url=f"sqlite+aiosqlite:///{tmp}/rm.db")
            return await _measure(settings, iterations, warmup, block, ts)
        finally:
            server.stop()


def _put_body(i: int, event: dict[str, Any]) -> dict[str, Any]:
    """A raw put, as SkialithSaver sends it (the value serialized as JSON, base64)."""
    value = {"type": "json", "data": base64.b64encode(json.dumps(event).encode()).decode()}
    return {
        "config": {"configurable": {"thread_id": "bench-raw", "checkpoint_ns": ""}},
        "checkpoint": {
            "v": 4,
            "id": f"raw-{i:012d}",
            "ts": "2026-11-30T00:00:00.000Z",
            "channel_values": {"messages": value},
            "channel_versions": {"messages": i + 1},
            "versions_seen": {},
        },
        "metadata": {"source": "loop", "step": i, "parents": {}},
        "newVersions": {"messages": i + 1},
    }


async def _measure(settings: Settings, iterations: int, warmup: int, block: int, ts: bool) -> dict[str, Any]:
    agent = SkialithAgent("bench-sdk", settings=settings)
    await agent.open()
    saver = SkialithCheckpointer(settings=settings)
    await saver.asetup()
    proc, url = await _start_sidecar(settings)
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    http = httpx.AsyncClient(base_url=url, timeout=10.0)
    raw = await RawHttp.connect(url)
    node = await Node.start(url) if ts else None
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
    py_thread: RunnableConfig = {"configurable": {"thread_id": "bench-py", "checkpoint_ns": ""}}

    async def floor(i: int) -> None:
        await js.publish(floor_subject, body, headers={"Nats-Msg-Id": f"f{i}-{os.urandom(4).hex()}"})

    async def sdk_event(i: int) -> None:
        await agent.save_event(f"e{i}", event, step=0)

    async def sdk_checkpoint(i: int) -> None:
        await agent.checkpoint(i, event)

    async def http_event(i: int) -> None:
        r = await http.post(
            "/v1/agents/bench-http/events", json={"name": f"e{i}", "payload": event, "step": 0}
        )
        assert r.status_code == 201, r.text

    async def http_checkpoint(i: int) -> None:
        r = await http.post("/v1/agents/bench-http/checkpoints", json={"step": i, "data": event})
        assert r.status_code == 201, r.text

    async def raw_event(i: int) -> None:
        status = await raw.post("/v1/agents/bench-raw/events", {"name": f"e{i}", "payload": event, "step": 0})
        assert status == 201

    async def raw_checkpoint(i: int) -> None:
        assert await raw.post("/v1/agents/bench-raw/checkpoints", {"step": i, "data": event}) == 201

    async def keyed_event(i: int) -> None:
        body = {"name": f"e{i}", "payload": event, "step": 0}
        assert await raw.post("/v1/agents/bench-key/events", body, f"idempotency-key: e{i}\r\n") == 201

    async def keyed_checkpoint(i: int) -> None:
        body = {"step": i, "data": event}
        assert await raw.post("/v1/agents/bench-key/checkpoints", body, f"idempotency-key: c{i}\r\n") == 201

    async def py_put(i: int) -> None:
        cp = empty_checkpoint()
        cp["id"] = f"py-{i:012d}"
        cp["channel_values"] = {"messages": event}
        cp["channel_versions"] = {"messages": i + 1}
        await saver.aput(py_thread, cp, {"source": "loop", "step": i, "parents": {}}, {"messages": i + 1})

    async def py_get(i: int) -> None:
        assert await saver.aget_tuple(py_thread) is not None

    async def raw_put(i: int) -> None:
        assert await raw.post("/v1/checkpoints", _put_body(i, event)) == 201

    async def raw_get(i: int) -> None:
        assert await raw.get("/v1/checkpoints/tuple?thread_id=bench-raw") == 200

    rows = [
        Row("publish", "floor (bare nats-py PubAck)", _timed(floor)),
        Row("save_event", SDK, _timed(sdk_event)),
        Row("save_event", "http (minimal client)", _timed(raw_event)),
        Row("save_event", "http + key (minimal client)", _timed(keyed_event)),
        Row("save_event", "http (httpx)", _timed(http_event)),
        Row("checkpoint", SDK, _timed(sdk_checkpoint)),
        Row("checkpoint", "http (minimal client)", _timed(raw_checkpoint)),
        Row("checkpoint", "http + key (minimal client)", _timed(keyed_checkpoint)),
        Row("checkpoint", "http (httpx)", _timed(http_checkpoint)),
        Row("put", CHECKPOINTER, _timed(py_put)),
        Row("put", "http raw route (minimal client)", _timed(raw_put)),
        Row("get_tuple", CHECKPOINTER, _timed(py_get)),
        Row("get_tuple", "http raw route (minimal client)", _timed(raw_get)),
    ]
    if node is not None:  # each after its op's Python rows
        for op, path in (
            ("save_event", "ts SkialithAgent (node fetch)"),
            ("checkpoint", "ts SkialithAgent (node fetch)"),
            ("checkpoint", "ts node:http, no SDK (reference)"),
            ("put", "ts SkialithSaver (node fetch)"),
            ("get_tuple", "ts SkialithSaver (node fetch)"),
        ):
            at = max(i for i, row in enumerate(rows) if row.op == op) + 1
            rows.insert(at, Row(op, path, node.row("checkpoint_node_http" if "node:http" in path else op)))
    projector: subprocess.Popen[str] | None = None
    try:
        # the agent writes first, with no projector running (writes never wait on it; a busy
        # projector process would add scheduling noise on a small machine), then the checkpointer
        # rows with the projector caught up and running, so that get_tuple reads the read model
        writes = [row for row in rows if row.op in ("publish", "save_event", "checkpoint")]
        await _interleave(writes, iterations, warmup, block)
        projector = _start_projector(settings)
        await _caught_up(saver)
        await _interleave([row for row in rows if row not in writes], iterations, warmup, block)
    finally:
        if node is not None:
            await node.close()
        await http.aclose()
        await raw.close()
        await nc.close()
        await agent.close()
        await saver.aclose()
        for p in (proc, projector):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)
    summaries = {(row.op, row.path): row.sample.summary() for row in rows}
    hops = {}
    for (op, path), over in summaries.items():
        base = {"save_event": SDK, "checkpoint": SDK, "put": CHECKPOINTER, "get_tuple": CHECKPOINTER}.get(op)
        if base is None or path == base:
            continue
        under = summaries[(op, base)]
        hops[f"{op}: {path}"] = {q: getattr(over, q) - getattr(under, q) for q in ("p50", "p95", "p99")}
    return {
        "iterations": iterations,
        "warmup": warmup,
        "block": block,
        "loop": type(asyncio.get_running_loop()).__module__,
        "durability": "JetStream R1, file storage, default sync interval; SQLite read model",
        "load": os.getloadavg(),
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
    lines = [f"{'op':<11} {'path':<34} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for row in result["rows"]:
        q = f"{row['p50_ms']:8.3f} {row['p95_ms']:8.3f} {row['p99_ms']:8.3f}"
        lines.append(f"{row['op']:<11} {row['path']:<34} {q}")
    lines.append("over the direct Python call (sdk / SkialithCheckpointer), ms:")
    for what, hop in result["http_hop_ms"].items():
        verdict = ""
        if what.startswith(("save_event", "checkpoint")):
            verdict = (
                " (meets the +0.3 ms p50 target)" if hop["p50"] <= TARGET_HOP_MS else " (MISSES +0.3 ms p50)"
            )
        lines.append(
            f"  {what:<46} p50 {hop['p50']:+.3f}  p95 {hop['p95']:+.3f}  p99 {hop['p99']:+.3f}{verdict}"
        )
    lines.append(f"{result['durability']}; load average at the end {result['load'][0]:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sidecar_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--iterations", type=int, default=2000, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls per row first")
    parser.add_argument("--block", type=int, default=50, help="calls per row per turn")
    parser.add_argument("--no-ts", action="store_true", help="leave out the TypeScript (node) rows")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="this process's event loop"
    )
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(run(args.iterations, args.warmup, args.block, not args.no_ts))
    print(_report(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sidecar-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
