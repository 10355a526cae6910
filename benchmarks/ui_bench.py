"""HTTP latency of the web viewer's endpoints on a big store (issue 12, item 6).

Builds its own store: ``--threads`` threads of two checkpoints each, and one thread of ``--long``
checkpoints (a parent chain), written with concurrent ``aput`` calls; runs the projector until the
read model has caught up; starts ``skialith ui`` in a child process; then times, one request at a
time over HTTP/1.1 keep-alive from this process, each endpoint the viewer's pages call:

* ``threads``: the first page of the thread list (``/api/threads?limit=25``, the page the viewer loads),
* ``history``: the first page of the long thread's timeline (``/api/history?limit=100``, what the
  thread view loads; ``history-50`` with ``limit=50`` beside it),
* ``checkpoint``: a checkpoint of the long thread, its state and its diff to its parent,
* ``diff``: two adjacent checkpoints of the long thread.

Each endpoint is asked ``--requests`` times (checkpoints picked at random along the long thread),
after ``--warmup`` requests; p50/p95/p99 in milliseconds are printed (and written as JSON with
``--json``). Target: p50 under 300 ms for each at 10,000 threads and a 10,000-checkpoint thread.

Run (the full scale; a nats-server and a SQLite file of its own unless given):
    python -m benchmarks.ui_bench --threads 10000 --long 10000
    python -m benchmarks.ui_bench --threads 200 --long 300 --requests 30   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.base.id import uuid6

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import PROJECTION, ReadModel
from skialith_langgraph.readmodel.apply import watermark
from skialith_langgraph.server import NatsServer

ROOT = Path(__file__).resolve().parents[1]
LONG = "long-run"
CONCURRENCY = 256


def _checkpoint(cid: str, step: int, ts: str) -> dict[str, Any]:
    cp = empty_checkpoint()
    cp["id"] = cid
    cp["ts"] = ts
    cp["channel_values"] = {"count": step, "note": f"step {step} " + "x" * 200}
    cp["channel_versions"] = {"count": str(step + 1), "note": str(step + 1)}
    return cp


async def _gather_bounded(jobs: list[Any]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Any) -> None:
        async with sem:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def build_store(settings: Settings, threads: int, long: int) -> dict[str, Any]:
    """Write the store; returns the long thread's checkpoint ids, oldest first."""
    t0 = time.perf_counter()
    async with SkialithCheckpointer(settings=settings) as saver:
        jobs: list[Any] = []
        for t in range(threads):
            tid = f"thread-{t:06d}"

            async def put_thread(tid: str = tid) -> None:
                cfg = {"configurable": {"thread_id": tid, "checkpoint_ns": ""}}
                first = await saver.aput(cfg, _checkpoint(str(uuid6()), 0, _now()), _meta(0), {"count": "1"})
                await saver.aput(first, _checkpoint(str(uuid6()), 1, _now()), _meta(1), {"count": "2"})

            jobs.append(put_thread)
        await _gather_bounded(jobs)
        ids = [str(uuid6(clock_seq=i)) for i in range(long)]  # ordered like LangGraph's ids
        ids.sort()

        async def put_long(i: int) -> None:
            parent = {"configurable": {"thread_id": LONG, "checkpoint_ns": ""}}
            if i:
                parent["configurable"]["checkpoint_id"] = ids[i - 1]
            versions = {"count": str(i + 1), "note": str(i + 1)}
            await saver.aput(parent, _checkpoint(ids[i], i, _now()), _meta(i), versions)

        await _gather_bounded([lambda i=i: put_long(i) for i in range(long)])
    return {"ids": ids, "seconds": time.perf_counter() - t0}


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def _meta(step: int) -> dict[str, Any]:
    return {"source": "loop", "step": step, "parents": {}}


async def _project(settings: Settings) -> float:
    t0 = time.perf_counter()
    log = await Log.open(settings)
    target = await log.stream_last_seq()
    await log.close()
    model = ReadModel.from_url(settings.database_url)
    projector = Projector(settings, batch_size=2000)
    await projector.start()
    try:
        deadline = time.monotonic() + 3600
        while True:
            async with model.connect() as conn:
                if await watermark(conn, PROJECTION) >= target:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the projector did not catch up within an hour")
            await asyncio.sleep(0.2)
    finally:
        await projector.stop()
        await model.close()
    return time.perf_counter() - t0


def _pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def _time(client: httpx.AsyncClient, url: str, paths: list[str], warmup: int) -> dict[str, float]:
    for path in paths[:warmup]:
        (await client.get(url + path)).raise_for_status()
    out: list[float] = []
    for path in paths[warmup:]:
        t0 = time.perf_counter()
        r = await client.get(url + path)
        out.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return {"p50": _pct(out, 50), "p95": _pct(out, 95), "p99": _pct(out, 99), "n": len(out)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    server = None
    nats_url = args.nats_url
    if nats_url is None:
        server = NatsServer(store_dir=work / "nats", port=-1)
        server.start()
        nats_url = server.url
    unique = os.urandom(4).hex()
    settings = Settings(
        nats_url=nats_url,
        database_url=args.database_url or f"sqlite+aiosqlite:///{work / 'readmodel.db'}",
        stream=f"UIBENCH{unique}".upper(),
        subject_prefix=f"uibench{unique}",
    )
    proc = None
    try:
        built = await build_store(settings, args.threads, args.long)
        print(
            f"wrote {args.threads} threads x 2 + {args.long} checkpoints in {built['seconds']:.1f} s",
            flush=True,
        )
        projected = await _project(settings)
        print(f"projected in {projected:.1f} s", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "skialith_langgraph.cli", "ui", "--port", "0",
                "--nats-url", settings.nats_url, "--database-url", settings.database_url,
                "--stream", settings.stream, "--subject-prefix", settings.subject_prefix,
            ],
            stdout=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        found = re.search(r"http://\S+/", proc.stdout.readline().decode())
        assert found, "skialith ui did not start"
        url = found.group(0)
        ids: list[str] = built["ids"]
        rng = random.Random(12)
        n = args.requests + args.warmup
        picks = [rng.randrange(1, len(ids)) for _ in range(n)]
        results: dict[str, Any] = {}
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(100):
                try:
                    await client.get(url + "static/app.css")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            cases = {
                "threads": ["api/threads?limit=25"] * n,
                "history": [f"api/history?thread={LONG}&limit=100"] * n,
                "history-50": [f"api/history?thread={LONG}&limit=50"] * n,
                "checkpoint": [f"api/checkpoint?thread={LONG}&checkpoint={ids[i]}" for i in picks],
                "diff": [f"api/diff?thread={LONG}&a={ids[i - 1]}&b={ids[i]}" for i in picks],
            }
            for name, paths in cases.items():
                results[name] = await _time(client, url, paths, args.warmup)
                r = results[name]
                print(
                    f"{name:<11} p50 {r['p50']:8.1f} ms   p95 {r['p95']:8.1f} ms   p99 {r['p99']:8.1f} ms",
                    flush=True,
                )
        report = {
            "threads": args.threads,
            "long_thread_checkpoints": args.long,
            "database": settings.database_url.split(":", 1)[0],
            "requests": args.requests,
            "endpoints_ms": results,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return report
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=10_000)
    p.add_argument("--long", type=int, default=10_000, help="checkpoints of the long thread")
    p.add_argument("--requests", type=int, default=100, help="timed requests per endpoint")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--database-url", default=None, help="read model (default: a SQLite file of its own)")
    p.add_argument("--nats-url", default=None, help="NATS (default: a nats-server of its own)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
