"""``python -m benchmarks.reads``: the read and write targets of DESIGN 1.6 alone, paired.

A short run of only the rows those targets compare, for work on the read and write paths on a
shared machine: ``aget_tuple`` (1 KiB, 16 KiB) and ``alist`` (last 20) of Skialith from another
instance (MariaDB and PostgreSQL read models) interleaved with ``AsyncPostgresSaver``'s, and
``aput`` 1 KiB with the projector frozen interleaved with the bare PubAck floor and the serde row.
It prints each row's p50/p99 and the ratios the targets name. The full run (``python -m
benchmarks``) stays the figure of record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
import warnings

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
        import time

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
    warnings.filterwarnings("ignore", message=r".*already exists", module=r"aiomysql\.")
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
