"""How fast the inspection views answer on a large store (issue 12, item 6).

``python -m benchmarks.inspect_bench`` builds, per database (SQLite, MariaDB), a store with
``--threads`` threads of one checkpoint each and one thread (``long``) of ``--long``
checkpoints, then times what ``skialith threads``, ``history``, ``show`` and ``diff`` call
(:class:`skialith_langgraph.inspect.Inspector`), and writes ``benchmarks/results/inspect.md`` and
``inspect.json``. The target is under 300 ms p50 for each.

How the store is built (:func:`build_store`): through the real checkpointer and projector, not
by writing rows. Every checkpoint is an ``aput`` of :class:`SkialithCheckpointer` (published to
JetStream; ``concurrency`` puts in flight for the many threads; the long thread is one chain,
each checkpoint the child of the previous, its ``messages`` channel changing at each step so
that neighbours differ); then a :class:`Projector` applies the stream to the read model and the
build returns once its watermark reached the stream's last sequence. The timed calls then run
on a fresh Inspector (another process's view: no own-writes shortcut), projector caught up.

Each measurement runs ``--iterations`` times after a warm-up; the figures are p50/p95/p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.cli.inspect import HISTORY_PAGE
from skialith_langgraph.inspect import Inspector

from .databases import DEFAULT_MYSQL_URL, Databases, MySQLTarget
from .nats_server import NatsServer
from .payloads import CheckpointChain
from .stats import Sample, Summary

THREADS = 10_000
LONG = 10_000
CONCURRENCY = 64  # puts in flight while building the many threads
ITERATIONS = 30
WARMUP = 3
PAGE = 20  # threads per page, as the CLI's default (history: HISTORY_PAGE, the CLI's too)
TARGET_MS = 300.0
CATCH_UP_TIMEOUT = 900.0  # seconds the projector may take to apply the built store
LONG_THREAD = "long"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(slots=True)
class BuiltStore:
    """What :func:`build_store` made: settings to open it, the thread ids, build times."""

    settings: Settings
    threads: int
    long_thread: str
    long_checkpoint_ids: list[str]  # oldest first
    publish_seconds: float = 0.0
    project_seconds: float = 0.0
    stream_last_seq: int = 0


def _messages(step: int) -> list[BaseMessage]:
    """A short conversation that changes at every step: the last answer is new."""
    return [
        HumanMessage("what is the weather in Paris?", id="h-0"),
        AIMessage(f"step {step}: it is {10 + step % 20} degrees", id=f"a-{step % 7}"),
    ]


async def build_store(
    database_url: str,
    nats_url: str,
    *,
    threads: int = THREADS,
    long_checkpoints: int = LONG,
    concurrency: int = CONCURRENCY,
    stream: str | None = None,
    nats_token: str | None = None,
    out: Callable[[str], None] = print,
) -> BuiltStore:
    """Build a store of ``threads`` one-checkpoint threads plus one thread of ``long_checkpoints``
    checkpoints on the NATS server at ``nats_url`` and the read model at ``database_url``
    (created if missing), through the real checkpointer and projector, and return once the read
    model has it all. The UI's benchmark reuses it to time its HTTP endpoints on the same store.
    """
    stream = stream or f"INSPECT_{uuid.uuid4().hex[:8].upper()}"
    settings = Settings.from_env(
        nats_url=nats_url,
        database_url=database_url,
        stream=stream,
        subject_prefix=stream.lower(),
        nats_token=nats_token,
    )
    built = BuiltStore(settings, threads, LONG_THREAD, [])
    started = time.monotonic()
    async with SkialithCheckpointer(settings=settings) as saver:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            chain = CheckpointChain(saver, f"t-{i:05d}", _messages(i))
            config, checkpoint, metadata, versions = chain.next()
            metadata["source"] = "input"
            async with gate:
                await saver.aput(config, checkpoint, metadata, versions)

        await asyncio.gather(*(one(i) for i in range(threads)))
        out(f"  {threads} threads published in {time.monotonic() - started:.1f} s")
        chain = CheckpointChain(saver, LONG_THREAD, _messages(0))
        for step in range(long_checkpoints):
            chain.messages = _messages(step)
            config, checkpoint, metadata, versions = chain.next()
            returned = await saver.aput(config, checkpoint, metadata, versions)
            chain.advance(returned, checkpoint)
            built.long_checkpoint_ids.append(checkpoint["id"])
        built.publish_seconds = time.monotonic() - started
        out(f"  + 1 thread of {long_checkpoints} checkpoints: {built.publish_seconds:.1f} s in all")
    started = time.monotonic()
    projector = Projector(settings)
    await projector.start()
    try:
        log_last = await _stream_last_seq(settings)
        built.stream_last_seq = log_last
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while projector.stats.last_seq < log_last:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the projector applied up to {projector.stats.last_seq} of {log_last} "
                    f"within {CATCH_UP_TIMEOUT:.0f} s"
                )
            await asyncio.sleep(0.2)
    finally:
        await projector.stop()
    built.project_seconds = time.monotonic() - started
    out(f"  projected {log_last} messages in {built.project_seconds:.1f} s")
    return built


async def _stream_last_seq(settings: Settings) -> int:
    from skialith_langgraph.log import Log

    log = await Log.open(settings)
    try:
        return await log.stream_last_seq()
    finally:
        await log.close()


async def _time(
    sample: Sample, call: Callable[[], Awaitable[Any]], iterations: int, warmup: int = WARMUP
) -> None:
    for _ in range(warmup):
        await call()
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        await call()
        sample.add(time.perf_counter_ns() - t0)


async def measure(built: BuiltStore, *, iterations: int = ITERATIONS, seed: int = 7) -> dict[str, Summary]:
    """p50/p95/p99 of the views the CLI pages through, on a fresh Inspector."""
    rng = random.Random(seed)
    ids = built.long_checkpoint_ids
    results: dict[str, Summary] = {}
    async with Inspector.open(built.settings) as insp:
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            f"threads (first page of {PAGE})": lambda: insp.threads(limit=PAGE),
            f"history {LONG_THREAD} (first page of {HISTORY_PAGE})": lambda: insp.history(
                LONG_THREAD, limit=HISTORY_PAGE
            ),
            "show (a checkpoint in the long thread)": lambda: insp.show(
                LONG_THREAD, ids[rng.randrange(len(ids))]
            ),
            "show (latest of a one-checkpoint thread)": lambda: insp.show(
                f"t-{rng.randrange(built.threads):05d}"
            ),
            "diff (adjacent checkpoints of the long thread)": lambda: _adjacent_diff(insp, ids, rng),
        }
        for name, call in calls.items():
            sample = Sample()
            await _time(sample, call, iterations)
            results[name] = sample.summary()
    return results


async def _adjacent_diff(insp: Inspector, ids: list[str], rng: random.Random) -> Any:
    i = rng.randrange(1, len(ids))
    return await insp.diff(LONG_THREAD, ids[i - 1], ids[i])


def _report(runs: dict[str, tuple[BuiltStore, dict[str, Summary]]], args: argparse.Namespace) -> str:
    lines = [
        "# Inspection views on a large store",
        "",
        f"`python -m benchmarks.inspect_bench {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Store: {args.threads} threads of one checkpoint and one thread of {args.long} checkpoints, "
        "built through SkialithCheckpointer.aput and projected by the Projector (see the module "
        f"docstring). {args.iterations} timed calls per row after {WARMUP} warm-up calls, on a fresh "
        f"Inspector, projector caught up. Target: p50 < {TARGET_MS:.0f} ms.",
        "",
    ]
    for db, (built, results) in runs.items():
        lines += [
            f"## {db}",
            "",
            f"Built in {built.publish_seconds:.1f} s (publish) + {built.project_seconds:.1f} s "
            f"(projection of {built.stream_last_seq} messages).",
            "",
            "| view | p50 ms | p95 ms | p99 ms | max ms | p50 < 300 ms |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, s in results.items():
            ok = "yes" if s.p50 < TARGET_MS else "**no**"
            lines.append(f"| {name} | {s.p50:.1f} | {s.p95:.1f} | {s.p99:.1f} | {s.max:.1f} | {ok} |")
        lines.append("")
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> int:
    runs: dict[str, tuple[BuiltStore, dict[str, Summary]]] = {}
    with tempfile.TemporaryDirectory(prefix="skbench-inspect-") as tmp, NatsServer(label="inspect") as server:
        dbs = Databases(MySQLTarget.from_url(args.mysql_url), "", Path(tmp))
        try:
            for db in args.databases.split(","):
                if db == "sqlite":
                    url = f"sqlite+aiosqlite:///{dbs.sqlite_path('inspect')}"
                elif db == "mariadb":
                    url = dbs.mysql.url(await dbs.create_mysql("inspect"))
                else:
                    raise SystemExit(f"unknown database {db!r}: sqlite or mariadb")
                print(f"{db}: building the store", flush=True)
                built = await build_store(url, server.url, threads=args.threads, long_checkpoints=args.long)
                results = await measure(built, iterations=args.iterations)
                for name, s in results.items():
                    print(f"  {name}: p50 {s.p50:.1f} ms, p95 {s.p95:.1f} ms, p99 {s.p99:.1f} ms", flush=True)
                runs[db] = (built, results)
        finally:
            await dbs.drop_all()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inspect.md").write_text(_report(runs, args) + "\n", encoding="utf-8")
    data = {
        "threads": args.threads,
        "long": args.long,
        "iterations": args.iterations,
        "target_p50_ms": TARGET_MS,
        "databases": {
            db: {
                "publish_seconds": built.publish_seconds,
                "project_seconds": built.project_seconds,
                "views": {name: vars_of(s) for name, s in results.items()},
            }
            for db, (built, results) in runs.items()
        },
    }
    (args.out / "inspect.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'inspect.md'}")
    slow = [n for _, (_, r) in runs.items() for n, s in r.items() if s.p50 >= TARGET_MS]
    return 1 if slow else 0


def vars_of(s: Summary) -> dict[str, float]:
    return {"n": s.n, "p50": s.p50, "p95": s.p95, "p99": s.p99, "mean": s.mean, "max": s.max}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.inspect_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--threads", type=int, default=THREADS, help="one-checkpoint threads")
    parser.add_argument("--long", type=int, default=LONG, help="checkpoints of the long thread")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="timed calls per view")
    parser.add_argument(
        "--databases", default="sqlite,mariadb", help="sqlite and/or mariadb, comma separated"
    )
    parser.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL, help="the MariaDB server")
    parser.add_argument("--quick", action="store_true", help="1,000 threads, 1,000 checkpoints, 10 calls")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.threads, args.long, args.iterations = 1_000, 1_000, 10
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
