"""Projector throughput into MariaDB, and projection lag at a fixed offered load.

Throughput: a backlog of checkpoints (1 KiB ``messages`` channel, many threads) is published
first; then a projector process that has already connected is told to start, and the time until
the watermark in the database reaches the end of the stream is measured.

Lag: a projector runs in its own process while this one offers checkpoints at a fixed rate
(open loop: a write is started on schedule whether or not earlier ones were acknowledged). The
projection watermark is polled in the database; a checkpoint's lag is the time from its PubAck
to the first poll that saw the watermark at or past its stream sequence.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from bisect import bisect_left
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import nats

from .env import BenchEnv
from .jetstream_side import SkialithApi, nats_settings, skialith_settings, stream_last_seq
from .payloads import SIZES, CheckpointChain, make_messages
from .projector_proc import ProjectorProcess, Watermark
from .stats import Sample

PUBLISH_CONCURRENCY = 64
DRAIN_TIMEOUT = 120.0  # seconds
POLL_INTERVAL = 0.001  # seconds between watermark polls


@dataclass(slots=True)
class ProjectorResult:
    """What the projector section measured."""

    checkpoints: int = 0
    rows: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    lag_rate: float = 0.0
    lag_seconds: float = 0.0
    lag_writes: int = 0
    lag: Sample = field(default_factory=Sample)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoints_per_s(self) -> float:
        """Checkpoints materialised per second."""
        return self.checkpoints / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        """Rows (checkpoints + channel blobs) written per second."""
        return self.rows / self.seconds if self.seconds else 0.0


async def _publish_backlog(saver: Any, count: int, threads: int) -> None:
    messages = make_messages(SIZES["1KiB"])
    chains = [CheckpointChain(saver, f"p-{i}-{uuid.uuid4().hex[:8]}", messages) for i in range(threads)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(w: int) -> None:
        # each worker owns a slice of the threads, so every thread's chain stays in order
        mine = chains[w::PUBLISH_CONCURRENCY]
        k = 0
        while not queue.empty():
            queue.get_nowait()
            chain = mine[k % len(mine)]
            k += 1
            config, ckpt, metadata, versions = chain.next()
            chain.advance(await saver.aput(config, ckpt, metadata, versions), ckpt)

    await asyncio.gather(*(worker(w) for w in range(min(PUBLISH_CONCURRENCY, threads))))


async def _count_rows(env: BenchEnv, db: str) -> int:
    from skialith_langgraph.readmodel.tables import checkpoint_blobs, checkpoints

    conn = await env.mysql.connect(db)
    try:
        async with conn.cursor() as cur:
            total = 0
            for table in (checkpoints.name, checkpoint_blobs.name):
                await cur.execute(f"SELECT COUNT(*) FROM {table}")
                row = await cur.fetchone()
                total += int(row[0])
            return total
    finally:
        conn.close()


@dataclass(slots=True)
class Target:
    """One stream and read-model database of the projector section."""

    stream: str
    db: str
    settings: Any
    process: ProjectorProcess


async def _target(env: BenchEnv, api: SkialithApi, stream: str, *, hold: bool) -> Target:
    db = await env.dbs.create_mysql(stream.lower())
    url = env.mysql.url(db)
    settings = skialith_settings(api, env.nats, url, stream)
    proc = ProjectorProcess(
        nats_url=env.nats.url, database_url=url, stream=stream, workdir=env.workdir, hold=hold
    )
    return Target(stream, db, settings, proc)


async def measure_throughput(
    env: BenchEnv, api: SkialithApi, target: Target, result: ProjectorResult, *, count: int
) -> None:
    """Publish ``count`` checkpoints, then time the held projector process draining them into MariaDB."""
    saver = api.checkpointer(settings=target.settings)
    await saver.asetup()
    try:
        await _publish_backlog(saver, count, threads=max(PUBLISH_CONCURRENCY, count // 20))
    finally:
        await saver.aclose()
    last = await stream_last_seq(env.nats, target.stream)
    watermark = Watermark(env.mysql, target.db)
    try:
        await target.process.wait_ready()
        t0 = target.process.go()
        await watermark.wait_for(last, timeout=DRAIN_TIMEOUT, poll=0.002)
        result.seconds = time.monotonic() - t0
    finally:
        watermark.close()
    result.checkpoints = count
    result.batch_size = _default_batch_size()
    result.rows = await _count_rows(env, target.db)


def _default_batch_size() -> int:
    """The batch size a projector uses unless told otherwise."""
    import skialith_langgraph.projector as projector_module

    return int(getattr(projector_module, "DEFAULT_BATCH_SIZE", 0))


async def _seq_of_threads(env: BenchEnv, stream: str, prefix: str, thread_ids: list[str]) -> list[int]:
    """The stream sequence of the (single) message on each thread, by direct get."""
    from skialith_langgraph.subjects import Subjects, token

    subjects = Subjects(prefix)
    nc = await nats.connect(env.nats.url, name="skbench-seq")
    try:
        seqs = []
        for tid in thread_ids:
            req = json.dumps({"last_by_subj": subjects.thread(token(tid, field="thread_id"))}).encode()
            msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}", req, timeout=5)
            seqs.append(int(msg.headers["Nats-Sequence"]) if msg.headers else 0)
        return seqs
    finally:
        await nc.close()


async def measure_lag(
    env: BenchEnv, api: SkialithApi, target: Target, result: ProjectorResult, *, rate: float, seconds: float
) -> None:
    """Offer ``rate`` checkpoints/s for ``seconds`` s while the target's projector runs; record lags."""
    stream = target.stream
    saver = api.checkpointer(settings=target.settings)
    await saver.asetup()
    await target.process.wait_ready()
    watermark = Watermark(env.mysql, target.db)
    messages = make_messages(SIZES["1KiB"])
    n = int(rate * seconds)
    acks: list[tuple[str, float]] = []
    timeline: list[tuple[float, int]] = []  # (time, watermark) at every change
    done = asyncio.Event()

    async def poll() -> None:
        current = -1
        while not done.is_set():
            wm = await watermark.get()
            if wm > current:  # a failed poll reads 0; the timeline must only grow (bisect below)
                timeline.append((time.perf_counter(), wm))
                current = wm
            await asyncio.sleep(POLL_INTERVAL)

    async def write(i: int) -> None:
        tid = f"lag-{i}-{uuid.uuid4().hex[:8]}"
        chain = CheckpointChain(saver, tid, messages)
        config, ckpt, metadata, versions = chain.next()
        await saver.aput(config, ckpt, metadata, versions)
        acks.append((tid, time.perf_counter()))

    try:
        poller = asyncio.create_task(poll())
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(write(i)))
        await asyncio.gather(*tasks)
        result.lag_seconds = time.perf_counter() - start
        await watermark.wait_for(await stream_last_seq(env.nats, stream))
        done.set()
        await poller
        timeline.append((time.perf_counter(), max(await watermark.get(), timeline[-1][1] if timeline else 0)))
    finally:
        done.set()
        watermark.close()
        await saver.aclose()
    seqs = await _seq_of_threads(env, stream, target.settings.subject_prefix, [tid for tid, _ in acks])
    times = [t for t, _ in timeline]
    marks = [wm for _, wm in timeline]
    for (_, t_ack), seq in zip(acks, seqs, strict=True):
        i = bisect_left(marks, seq)  # watermarks only grow
        seen = times[min(i, len(times) - 1)]
        result.lag.add(max(0, int((seen - t_ack) * 1e9)))
    result.lag_rate, result.lag_writes = rate, n


async def run_projector(env: BenchEnv, *, count: int, rate: float, seconds: float) -> ProjectorResult:
    """Run both projector measurements against the default (non-fsync) nats-server."""
    assert env.skialith_api is not None
    result = ProjectorResult(settings={**nats_settings(env.nats, 1)})
    result.settings["innodb_flush_log_at_trx_commit"] = env.mysql_info["innodb_flush_log_at_trx_commit"]
    api = env.skialith_api
    drain = await _target(env, api, "SKPROJ", hold=True)
    lag = await _target(env, api, "SKLAG", hold=False)
    async with AsyncExitStack() as stack:
        for t in (drain, lag):
            t.process.spawn()  # both start up while the backlog is published
            stack.push_async_callback(t.process.stop)
        await measure_throughput(env, api, drain, result, count=count)
        await drain.process.stop()
        await measure_lag(env, api, lag, result, rate=rate, seconds=seconds)
    return result
