"""``python -m benchmarks.reads``: the read and write targets of DESIGN 1.6 alone, paired.

A short run of only the rows those targets compare, for work on the read and write paths on a
shared machine: ``aget_tuple`` (1 KiB, 16 KiB) and ``alist`` (last 20) of Skialith from another
instance (MariaDB and PostgreSQL read models) interleaved with ``AsyncPostgresSaver``'s, and
``aput`` 1 KiB with the projector frozen interleaved with the bare PubAck floor and the serde row.
It prints each row's p50/p99 and the ratios the targets name. The full run (``python -m
benchmarks``) stays the figure of record.

``--phases`` times where one ``aget_tuple`` from another instance spends its time instead (each
read model in turn, the projector idle): a timeline of the read's steps (median offsets from the
call's start), the round trips it makes (JetStream lookups and database statements per read) and
the process's CPU time per read. Fairness notes: the "other instance" is a second checkpointer in
this process, with its own NATS connection and engine and no own-writes heads, as another process
would have; ``AsyncPostgresSaver`` runs on one autocommit connection with every statement prepared
(``prepare_threshold=0``), as its ``from_conn_string`` sets it up; both read the same payloads,
checked untimed after each call, after the same warmup; the projector processes, nats-server and
both databases share the machine's cores with the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
import warnings
from typing import Any

from .contender import FLOOR, POSTGRES, SERDE_PUT, SKIALITH, SKIALITH_PG
from .env import BenchEnv, Options
from .latency import (
    PAUSED,
    Row,
    aget_tuple_call,
    alist_call,
    aput_call,
    load_codec,
    run_interleaved,
    serde_put_call,
)
from .payloads import SIZES
from .stats import collected_outside, gc_section


async def _read_rows(env: BenchEnv, ops: tuple[str, ...], sizes: tuple[str, ...]) -> list[Row]:
    peer = next(c for c in env.peers if c.name == POSTGRES)
    tag = uuid.uuid4().hex[:6]
    rows: list[Row] = []
    for op in ops:
        make = aget_tuple_call if op == "aget_tuple" else alist_call
        for size in sizes:
            rows.append(Row(op, size, POSTGRES, await make(peer, size, tag=tag)))
            for side in env.skialith:
                call = await make(side.contender, size, tag=tag, reader=side.reader)
                rows.append(Row(op, size, side.reader.name, call, skialith=True))
    await env.caught_up()
    return rows


async def _paused_rows(env: BenchEnv) -> list[Row]:
    side = next(s for s in env.skialith if s.contender.name == SKIALITH)
    floor = env.floors[FLOOR]
    payload = os.urandom(SIZES["1KiB"])

    async def publish() -> int:
        t0 = time.perf_counter_ns()
        await floor.publish(payload)
        return time.perf_counter_ns() - t0

    codec = load_codec()
    assert not isinstance(codec, str), codec
    return [
        Row("publish", "1KiB", FLOOR + PAUSED, publish),
        Row("serde", "1KiB", SERDE_PUT, serde_put_call(codec, side.contender.saver, "1KiB")),
        Row("aput", "1KiB", SKIALITH + PAUSED, aput_call(side.contender, "1KiB", tag="paused")),
    ]


class _Phases:
    """Timestamps of one read's steps, taken by wrapping the functions that do them."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, name: str, *, first: bool = True) -> None:
        original = getattr(owner, attr)
        marks, counts = self.marks, self.counts

        async def timed(*args: Any, **kwargs: Any) -> Any:
            now = time.perf_counter_ns()
            if not first or name + " start" not in marks:
                marks[name + " start"] = now
            counts[name] = counts.get(name, 0) + 1
            try:
                return await original(*args, **kwargs)
            finally:
                marks[name + " end"] = time.perf_counter_ns()

        self._undo.append((owner, attr, original))
        setattr(owner, attr, timed)

    def answered(self, lookups: Any) -> None:
        """Mark when the last answer of each lookup batch came, and count the lookups."""
        original = lookups.batch
        marks, counts = self.marks, self.counts

        def batch(self_: Any, n: int) -> Any:
            made = original(self_, n)
            counts["lookup"] = counts.get("lookup", 0) + n
            made.future.add_done_callback(
                lambda _: marks.setdefault("lookups answered", time.perf_counter_ns())
            )
            return made

        self._undo.append((lookups, "batch", original))
        lookups.batch = batch

    def undo(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)


async def _phases(env: BenchEnv, size: str, reads: int) -> None:
    from skialith_langgraph import log as log_module
    from skialith_langgraph.readmodel import queries

    for side in env.skialith:
        call = await aget_tuple_call(side.contender, size, tag=uuid.uuid4().hex[:6], reader=side.reader)
        await env.caught_up()
        for _ in range(50):
            await call()
        phases = _Phases()
        phases.wrap(log_module.Log, "lookup", "lookups asked")
        phases.wrap(log_module.Log, "settle", "lookups awaited")
        phases.answered(log_module._Lookups)
        phases.wrap(queries, "driver_rows", "statement")
        phases.wrap(queries, "tuple_of", "rows -> CheckpointTuple")
        timelines: list[dict[str, float]] = []
        counts: dict[str, int] = {}
        cpu = time.process_time()
        try:
            with gc_section(), collected_outside():
                for _ in range(reads):
                    phases.marks.clear()
                    phases.counts.clear()
                    t0 = time.perf_counter_ns()
                    await call()
                    total = time.perf_counter_ns() - t0
                    line = {k: (v - t0) / 1e3 for k, v in phases.marks.items()}
                    line["returned"] = total / 1e3
                    timelines.append(line)
                    for k, n in phases.counts.items():
                        counts[k] = counts.get(k, 0) + n
        finally:
            phases.undo()
        cpu_us = (time.process_time() - cpu) / reads * 1e6
        print(f"\n{side.reader.name}, aget_tuple {size}: median offsets from the call's start (us)")
        names = {k for line in timelines for k in line}
        for k in sorted(names, key=lambda k: statistics.median(x[k] for x in timelines if k in x)):
            xs = [x[k] for x in timelines if k in x]
            print(f"  {k:32} {statistics.median(xs):8.1f}   (in {len(xs)} of {reads} reads)")
        print(
            f"  per read: {counts.get('lookup', 0) / reads:.2f} JetStream lookups, "
            f"{counts.get('statement', 0) / reads:.2f} database statements; CPU {cpu_us:.0f} us"
        )
        print(f"  read stats: {side.reader.saver.read_stats}")


def _print(rows: list[Row]) -> None:
    by: dict[tuple[str, str, str], tuple[float, float]] = {}
    for row in rows:
        s = row.sample.summary()
        by[(row.op, row.size, row.contender)] = (s.p50, s.p99)
        print(f"{row.op:10} {row.size:6} {row.contender:48} p50 {s.p50:7.3f}  p99 {s.p99:7.3f}  n={s.n}")
    for (op, size, name), (p50, p99) in by.items():
        peer = by.get((op, size, POSTGRES))
        if peer and name != POSTGRES:
            ratios = f"p50 {p50 / peer[0]:.2f}x  p99 {p99 / peer[1]:.2f}x"
            print(f"ratio {op} {size} {name} / {POSTGRES}: {ratios}")
    aput = by.get(("aput", "1KiB", SKIALITH + PAUSED))
    floor = by.get(("publish", "1KiB", FLOOR + PAUSED))
    serde = by.get(("serde", "1KiB", SERDE_PUT))
    if aput and floor and serde:
        print(f"ratio aput (projector frozen) / (floor + serde) p50: {aput[0] / (floor[0] + serde[0]):.2f}x")


async def _main(args: argparse.Namespace) -> None:
    env_options = Options(sections=("latency",))
    async with BenchEnv(env_options) as env:
        if not args.pg_model:
            env.skialith = [s for s in env.skialith if s.contender.name != SKIALITH_PG]
        if args.phases:
            for size in args.sizes.split(","):
                await _phases(env, size, args.iterations)
            print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
            return
        if "reads" in args.what:
            rows = await _read_rows(env, tuple(args.ops.split(",")), tuple(args.sizes.split(",")))
            await run_interleaved(rows, iterations=args.iterations, block=args.block, warmup=20)
            _print(rows)
        if "aput" in args.what:
            side = next(s for s in env.skialith if s.contender.name == SKIALITH)
            rows = await _paused_rows(env)
            side.projector.pause()
            try:
                await run_interleaved(rows, iterations=args.iterations, block=args.block, warmup=20)
            finally:
                side.projector.resume()
            _print(rows)
        print(f"load average at end: {os.getloadavg()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reads", description=__doc__)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--what", default="reads,aput", help="reads and/or aput")
    parser.add_argument("--ops", default="aget_tuple,alist")
    parser.add_argument("--sizes", default="1KiB,16KiB")
    parser.add_argument("--no-pg-model", dest="pg_model", action="store_false")
    parser.add_argument("--phases", action="store_true", help="time the steps of aget_tuple instead")
    warnings.filterwarnings("ignore", message=r".*already exists", module=r"aiomysql\.")
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
