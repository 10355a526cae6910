"""Resources stay bounded (issue 9, items 10 and 11): cores of ended event loops, file descriptors
of loops closed by hand, the bytes own-writes heads hold, and the log lines of a database outage."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, empty_checkpoint
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph import checkpointer as checkpointer_module
from skialith_langgraph import heads as heads_module
from skialith_langgraph.readmodel import DOWN_PAUSE


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _live_cores() -> int:
    gc.collect()
    return sum(isinstance(o, checkpointer_module._Core) for o in gc.get_objects())


def _checkpoint(step: int) -> Checkpoint:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"step": step}
    checkpoint["channel_versions"] = {"step": f"{step:032}.0"}
    return checkpoint


async def _put_and_get(saver: SkialithCheckpointer, step: int) -> None:
    config: RunnableConfig = {"configurable": {"thread_id": f"t-{step % 5}", "checkpoint_ns": ""}}
    written = await saver.aput(config, _checkpoint(step), {"step": step}, {"step": f"{step:032}.0"})
    read = await saver.aget_tuple(written)
    assert read is not None and read.checkpoint["channel_values"] == {"step": step}


# -- item 10: a core per loop, dropped when its loop ends ----------------------------------------

RUNS = 200
RSS_SLACK_MIB = 20.0  # generous: 180 more runs kept +8 MiB on 4b9c872 (SQLite), +42 MiB in the issue


@pytest.mark.slow
def test_asyncio_run_after_asyncio_run_keeps_cores_fds_and_memory_bounded(settings: Settings) -> None:
    # read_wait=0: no projector runs here, so reads go to the log at once
    saver = SkialithCheckpointer(settings=settings.replace(read_wait=0.0))
    try:
        samples: dict[int, tuple[int, int, float]] = {}
        for i in range(RUNS):
            asyncio.run(_put_and_get(saver, i))
            if i + 1 in (20, RUNS):
                samples[i + 1] = (_live_cores(), _open_fds(), _rss_mib())
        (cores_20, fds_20, rss_20), (cores_n, fds_n, rss_n) = samples[20], samples[RUNS]
        # every loop has ended: no core is left (4b9c872 kept all 200, one per run)
        assert cores_n <= 1, (cores_20, cores_n)
        assert fds_n <= fds_20 + 2, (fds_20, fds_n)
        assert rss_n - rss_20 < RSS_SLACK_MIB, (rss_20, rss_n)
    finally:
        saver.close()


LOOPS = 40


def test_event_loops_closed_by_hand_leak_no_file_descriptors(settings: Settings) -> None:
    """``loop.close()`` without ``shutdown_asyncgens``: the NATS socket, the database connections
    (and aiosqlite's threads) of the loop's core are closed when the next loop makes its core."""
    saver = SkialithCheckpointer(settings=settings.replace(read_wait=0.0))
    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(_put_and_get(saver, 0))
        loop.close()
        fds, threads = _open_fds(), threading.active_count()
        for i in range(1, LOOPS + 1):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(_put_and_get(saver, i))
            loop.close()
        # 4b9c872: +2 (MySQL) or +3 (SQLite) descriptors and +1 or +2 threads per loop
        assert _open_fds() <= fds + 3, (fds, _open_fds())
        assert threading.active_count() <= threads + 2, (threads, threading.active_count())
        assert _live_cores() <= 2
    finally:
        saver.close()
    # close() also closes what the last hand-closed loop left open
    assert _live_cores() == 0
    assert _open_fds() <= fds, (fds, _open_fds())


def test_a_core_closed_by_aclose_is_not_closed_again_at_loop_end(settings: Settings) -> None:
    saver = SkialithCheckpointer(settings=settings)

    async def main() -> None:
        await _put_and_get(saver, 1)
        await saver.aclose()
        await _put_and_get(saver, 2)  # a new core on the same loop, closed at the loop's end

    try:
        asyncio.run(main())
        assert _live_cores() == 0
    finally:
        saver.close()


# -- item 10: own-writes heads are capped by bytes ---------------------------------------------

CAP = 8 * 2**20  # a small cap for the test; the default (heads.MAX_HEAD_BYTES) is 64 MiB
STATE = 2**20  # ~1 MiB per thread's state


def _held(saver: SkialithCheckpointer) -> int:
    """The bytes the heads of the running loop's core hold, counted from their contents."""
    total = 0
    for core in list(saver._cores.values()):
        for head in list(core.heads._heads.values()):
            for ns in head.ns.values():
                total += len(ns.checkpoint[1]) + len(ns.metadata[1])
                total += sum(len(data) for _, data in ns.blobs.values())
            for stored in head.writes.values():
                total += sum(len(value[1]) for _, _, value, _ in stored.values())
    return total


def _big_checkpoint(thread: int, size: int) -> tuple[Checkpoint, dict[str, str]]:
    checkpoint = empty_checkpoint()
    versions = {"blob": f"{1:032}.0", "n": f"{1:032}.0"}
    checkpoint["channel_values"] = {"blob": bytes([thread % 256]) * size, "n": thread}
    checkpoint["channel_versions"] = dict(versions)
    return checkpoint, versions


async def test_heads_hold_at_most_their_byte_cap_and_evicted_threads_read_right(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heads_module, "MAX_HEAD_BYTES", CAP, raising=False)
    saver = SkialithCheckpointer(settings=settings.replace(read_wait=0.0))
    threads = 20
    try:
        held = []
        for t in range(threads):
            config: RunnableConfig = {"configurable": {"thread_id": f"big-{t}", "checkpoint_ns": ""}}
            assert await saver.aget_tuple(config) is None  # a fresh thread: this process starts its head
            checkpoint, versions = _big_checkpoint(t, STATE)
            await saver.aput(config, checkpoint, {"step": t}, versions)
            await saver.aput_writes(
                {"configurable": {**config["configurable"], "checkpoint_id": checkpoint["id"]}},
                [("n", t)],
                f"task-{t}",
            )
            held.append(_held(saver))
        # 4b9c872 kept every head: ~20 MiB here (401 MiB for 400 threads in the issue)
        assert max(held) <= CAP, [h // 2**20 for h in held]
        core = next(iter(saver._cores.values()))
        assert core.heads.nbytes >= _held(saver)  # the count includes the contents (and some overhead)
        assert core.heads.nbytes <= CAP
        assert len(core.heads) < threads  # some heads were dropped
        # every thread reads right, whether from its head or (dropped) from the log
        for t in reversed(range(threads)):
            config = {"configurable": {"thread_id": f"big-{t}", "checkpoint_ns": ""}}
            tup = await saver.aget_tuple(config)
            assert tup is not None
            assert tup.checkpoint["channel_values"] == {"blob": bytes([t % 256]) * STATE, "n": t}
            assert tup.pending_writes == [(f"task-{t}", "n", t)]
        assert saver.read_stats.head > 0 and saver.read_stats.log > 0, saver.read_stats

        # one head bigger than the cap on its own is not kept, and its thread still reads right
        config = {"configurable": {"thread_id": "huge", "checkpoint_ns": ""}}
        assert await saver.aget_tuple(config) is None
        checkpoint, versions = _big_checkpoint(7, CAP + STATE)
        await saver.aput(config, checkpoint, {"step": 0}, versions)
        assert core.heads.get("huge") is None
        assert core.heads.nbytes <= CAP
        tup = await saver.aget_tuple(config)
        assert tup is not None and tup.checkpoint["channel_values"]["blob"] == bytes([7]) * (CAP + STATE)
    finally:
        await saver.aclose()


# -- item 11: a database outage logs one warning, not one per read --------------------------------

OUTAGE_READS = 30  # reads during the cut, over more than DOWN_PAUSE, so the database is retried


@pytest.mark.mysql
async def test_a_database_outage_logs_one_warning_and_reads_return_to_the_database_after_it(
    nats_url: str, mysql_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = make_url(mysql_url)
    base = Settings(
        nats_url=nats_url,
        database_url=mysql_url,
        stream=f"SK{unique}".upper(),
        subject_prefix=f"sk{unique}",
        connect_timeout=2.0,
        read_wait=0.5,
    )
    projector = Projector(base, batch_size=20, fetch_timeout=0.1)  # straight to the database
    await projector.start()
    async with TcpProxy(target.host or "127.0.0.1", target.port or 3306) as proxy:
        through = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        writer = SkialithCheckpointer(settings=base)
        reader = SkialithCheckpointer(settings=base.replace(database_url=through))  # no heads to lean on
        config: RunnableConfig = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        try:
            written = await writer.aput(config, _checkpoint(1), {"step": 1}, {"step": f"{1:032}.0"})
            await reader.asetup()
            caplog.set_level(logging.DEBUG, logger="skialith_langgraph")

            proxy.cut("reset")
            started = time.monotonic()
            for _ in range(OUTAGE_READS):
                tup = await reader.aget_tuple(config)  # answered from the log
                assert tup is not None and tup.config == written
                await asyncio.sleep(0.1)
            assert time.monotonic() - started > DOWN_PAUSE  # the database was tried again meanwhile
            assert reader.read_stats.log >= OUTAGE_READS, reader.read_stats
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            # 4b9c872: one warning per read
            assert len(warnings) == 1, [r.getMessage() for r in warnings]
            assert "unavailable" in warnings[0].getMessage()
            assert any(r.levelno == logging.DEBUG and "unavailable" in r.getMessage() for r in caplog.records)

            proxy.restore()
            served = reader.read_stats.database
            deadline = time.monotonic() + 15
            # reads keep coming, more often than DOWN_PAUSE: the database is still tried again
            # (4b9c872: each read refused by the down mark extended it, so it never was)
            while reader.read_stats.database == served and time.monotonic() < deadline:
                tup = await reader.aget_tuple(config)
                assert tup is not None and tup.config == written
                await asyncio.sleep(0.1)
            assert reader.read_stats.database > served, reader.read_stats
            back = [
                r for r in caplog.records if r.levelno == logging.INFO and "answers again" in r.getMessage()
            ]
            assert len(back) == 1, [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
            assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1

            proxy.cut("reset")  # a second outage warns again, once
            for _ in range(5):
                assert await reader.aget_tuple(config) is not None
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 2, [r.getMessage() for r in warnings]
        finally:
            proxy.restore()
            await writer.aclose()
            await reader.aclose()
            await projector.stop()


# -- sibling: a checkpointer dropped without close() ----------------------------------------------


def test_a_checkpointer_dropped_without_close_stops_its_loop_thread(settings: Settings) -> None:
    def use_and_drop(step: int) -> None:
        saver = SkialithCheckpointer(settings=settings.replace(read_wait=0.0))
        config: RunnableConfig = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        written = saver.put(config, _checkpoint(step), {"step": step}, {"step": f"{step:032}.0"})
        assert saver.get_tuple(written) is not None

    use_and_drop(0)
    gc.collect()
    fds, threads = _open_fds(), threading.active_count()
    for step in range(1, 11):
        use_and_drop(step)
    gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    # 4b9c872: each dropped checkpointer kept its loop thread, NATS connection and engine
    assert threading.active_count() <= threads, (threads, threading.active_count())
    assert _open_fds() <= fds + 2, (fds, _open_fds())
