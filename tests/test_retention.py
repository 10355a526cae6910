"""Retention (issue 10, item 4): idle threads are deleted and old checkpoints pruned by a sweeper
that goes through the log, so the stream, the read model and every read agree; live threads and
threads written during a pass are kept; ``--dry-run`` changes nothing; the stream's own limits
are settable. Times are shortened to ~1 s."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from graphs import delta
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy import func, select
from support import wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithCheckpointer, retention
from skialith_langgraph.config import MIN_STREAM_MAX_BYTES
from skialith_langgraph.errors import ConfigError
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import checkpoint_blobs, checkpoint_writes, checkpoints
from skialith_langgraph.retention import Sweeper
from skialith_langgraph.subjects import token

TTL = 1.0  # seconds


@pytest.fixture
async def log(settings: Settings) -> AsyncIterator[Log]:
    log = await Log.open(settings, ensure_stream=True)
    try:
        yield log
    finally:
        await log.close()


@pytest.fixture
async def projector(settings: Settings) -> AsyncIterator[Projector]:
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        yield projector
    finally:
        await projector.stop()


@pytest.fixture
async def saver(settings: Settings) -> AsyncIterator[SkialithCheckpointer]:
    saver = SkialithCheckpointer(settings=settings)
    try:
        yield saver
    finally:
        await saver.aclose()


def config(thread_id: str, checkpoint_id: str | None = None, ns: str = "") -> RunnableConfig:
    conf: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ns}
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


async def write(saver: SkialithCheckpointer, thread_id: str, n: int, ns: str = "") -> list[str]:
    """``n`` checkpoints in a chain, each with a new value and a task's writes; their ids."""
    parent: str | None = None
    ids = []
    for i in range(n):
        ckpt = empty_checkpoint()
        ckpt["channel_values"] = {"counter": i, "constant": "once"}
        ckpt["channel_versions"] = {"counter": f"{i + 2:032}.0", "constant": f"{1:032}.0"}
        new = {"counter": f"{i + 2:032}.0"} | ({"constant": f"{1:032}.0"} if i == 0 else {})
        got = await saver.aput(config(thread_id, parent, ns), ckpt, {"source": "loop", "step": i}, new)
        await saver.aput_writes(got, [("counter", i)], f"task-{i}")
        parent = got["configurable"]["checkpoint_id"]
        ids.append(parent)
    return ids


async def thread_messages(log: Log, thread_id: str) -> dict[str, int]:
    """Messages the stream holds on the thread's subjects, by subject."""
    subjects = log.subjects.thread(token(thread_id, field="thread_id"))
    info = await log.js.stream_info(log.settings.stream, subjects_filter=subjects)
    return dict(info.state.subjects or {})


async def rows(settings: Settings, thread_id: str) -> dict[str, int]:
    tk = token(thread_id, field="thread_id")
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.connect() as conn:
            return {
                t.name: int(
                    (
                        await conn.execute(select(func.count()).select_from(t).where(t.c.thread_key == tk))
                    ).scalar_one()
                )
                for t in (checkpoints, checkpoint_blobs, checkpoint_writes)
            }
    finally:
        await model.close()


async def caught_up(settings: Settings, log: Log) -> None:
    model = ReadModel.from_url(settings.database_url)
    try:
        await wait_for_watermark(model, await log.stream_last_seq())
    finally:
        await model.close()


async def test_idle_threads_leave_reads_the_read_model_and_the_stream_live_ones_stay(
    settings: Settings, log: Log, projector: Projector, saver: SkialithCheckpointer
) -> None:
    # the live thread must stay younger than the TTL through both sweeps: 1 s was not always
    # enough on a loaded machine (the suite's workers beside it)
    ttl = 5.0
    await write(saver, "old", 4)
    await write(saver, "old-too", 2)
    await asyncio.sleep(ttl + 1.0)
    await write(saver, "live", 3)
    live_at = time.monotonic()
    await caught_up(settings, log)
    live_before = [t async for t in saver.alist(config("live"))]

    sweeper = Sweeper(settings, idle_ttl=ttl)
    try:
        dry = await sweeper.sweep(dry_run=True)
        assert sorted(dry.deleted) == ["old", "old-too"] and dry.dry_run
        # a dry run changes nothing
        assert len([t async for t in saver.alist(config("old"))]) == 4
        assert sum((await thread_messages(log, "old")).values()) == 8
        assert (await rows(settings, "old"))["skialith_checkpoints"] == 4

        report = await sweeper.sweep()
        assert sorted(report.deleted) == ["old", "old-too"]
        assert report.pruned == []
    finally:
        await sweeper.close()

    for thread_id in ("old", "old-too"):
        # reads: gone at once (the reader sees the tombstone on the stream)
        assert await saver.aget_tuple(config(thread_id)) is None
        assert [t async for t in saver.alist(config(thread_id))] == []
        # the stream: only the tombstone is left on the thread's subjects
        tk = token(thread_id, field="thread_id")
        assert await thread_messages(log, thread_id) == {log.subjects.thread_op(tk, "delete"): 1}
    # the read model, once the projector applied the tombstones
    await caught_up(settings, log)
    for thread_id in ("old", "old-too"):
        assert await rows(settings, thread_id) == dict.fromkeys(
            ("skialith_checkpoints", "skialith_checkpoint_blobs", "skialith_checkpoint_writes"), 0
        )
    # the live thread is untouched
    assert [t async for t in saver.alist(config("live"))] == live_before
    assert (await rows(settings, "live"))["skialith_checkpoints"] == 3
    assert sum((await thread_messages(log, "live")).values()) == 6

    # a second pass finds nothing more to do (the live thread only once it has been idle that long)
    again = Sweeper(settings, idle_ttl=ttl)
    try:
        deleted = (await again.sweep()).deleted
        assert deleted == [] or (deleted == ["live"] and time.monotonic() - live_at > ttl)
    finally:
        await again.close()


async def test_a_thread_written_during_the_sweep_is_not_deleted(
    settings: Settings, log: Log, projector: Projector, saver: SkialithCheckpointer, monkeypatch: Any
) -> None:
    ids = await write(saver, "racy", 2)
    await asyncio.sleep(TTL + 1.0)
    await caught_up(settings, log)
    real = retention.last_message
    late: dict[str, Any] = {}

    async def judged_then_written(log_: Log, subject_filter: str) -> Any:
        last = await real(log_, subject_filter)  # the sweeper judges the thread idle here...
        # ...and a write is acknowledged before its delete is published
        await saver.aput_writes(config("racy", ids[-1]), [("counter", "late")], "late-task")
        late["written"] = True
        return last

    monkeypatch.setattr(retention, "last_message", judged_then_written)
    sweeper = Sweeper(settings, idle_ttl=TTL)
    try:
        report = await sweeper.sweep()
    finally:
        await sweeper.close()
    assert late["written"]
    assert report.deleted == []
    assert [t for t, _ in report.skipped] == ["racy"]
    got = await saver.aget_tuple(config("racy"))
    assert got is not None and ("late-task", "counter", "late") in got.pending_writes
    assert len([t async for t in saver.alist(config("racy"))]) == 2
    await caught_up(settings, log)
    assert (await rows(settings, "racy"))["skialith_checkpoints"] == 2


async def test_keep_last_leaves_exactly_n_checkpoints_everywhere(
    settings: Settings, log: Log, projector: Projector, saver: SkialithCheckpointer
) -> None:
    ids = await write(saver, "long", 10)
    await write(saver, "long", 5, ns="child:1")
    await write(saver, "short", 2)
    await caught_up(settings, log)
    latest = await saver.aget_tuple(config("long"))

    sweeper = Sweeper(settings, keep_last=3)
    try:
        dry = await sweeper.sweep(dry_run=True)
        assert dry.pruned == [("long", 9)]  # 7 of the root namespace, 2 of child:1
        assert len([t async for t in saver.alist(config("long"))]) == 10
        assert len([t async for t in saver.alist(config("long", ns="child:1"))]) == 5
        report = await sweeper.sweep()
        assert report.pruned == [("long", 9)] and report.deleted == []
        assert (await sweeper.sweep()).pruned == []  # nothing left to prune
    finally:
        await sweeper.close()

    root = [t.config["configurable"]["checkpoint_id"] async for t in saver.alist(config("long"))]
    assert root == list(reversed(ids[-3:]))
    assert len([t async for t in saver.alist(config("long", ns="child:1"))]) == 3
    assert await saver.aget_tuple(config("long")) == latest
    oldest_kept = await saver.aget_tuple(config("long", ids[-3]))
    assert oldest_kept is not None and oldest_kept.checkpoint["channel_values"] == {
        "counter": 7,
        "constant": "once",  # its blob was written with the first checkpoint, and is kept
    }
    assert len([t async for t in saver.alist(config("short"))]) == 2
    await caught_up(settings, log)
    assert (await rows(settings, "long"))["skialith_checkpoints"] == 6
    # the stream was trimmed: the kept content and the prune, not the 15 puts and their writes
    assert sum((await thread_messages(log, "long")).values()) < 30


async def test_keep_last_keeps_delta_channel_ancestors(
    settings: Settings, log: Log, projector: Projector, saver: SkialithCheckpointer
) -> None:
    app = delta(Counter()).compile(checkpointer=saver)
    cfg: RunnableConfig = {"configurable": {"thread_id": "d"}}
    for i in range(12):
        await app.ainvoke({"items": [f"in{i}"]}, cfg)
    want = [s.values async for s in app.aget_state_history(cfg)][:2]
    sweeper = Sweeper(settings, keep_last=2)
    try:
        report = await sweeper.sweep()
    finally:
        await sweeper.close()
    assert [t for t, _ in report.pruned] == ["d"]
    history = [s.values async for s in app.aget_state_history(cfg)]
    assert 2 <= len(history) < 12 * 3
    assert history[:2] == want  # the two kept states still rebuild


async def test_gc_cli_dry_run_then_real_run(
    settings: Settings, log: Log, projector: Projector, saver: SkialithCheckpointer
) -> None:
    ttl = 10.0  # a gc subprocess takes ~5 s just to import on a loaded 2-core machine
    await write(saver, "cli-old", 3)
    await asyncio.sleep(ttl + 0.5)
    live = await write(saver, "cli-live", 5)
    await caught_up(settings, log)
    env = {
        **os.environ,
        "SKIALITH_NATS_URL": settings.nats_url,
        "SKIALITH_DATABASE_URL": settings.database_url,
        "SKIALITH_STREAM": settings.stream,
        "SKIALITH_SUBJECT_PREFIX": settings.subject_prefix,
    }

    def gc(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "skialith_langgraph.cli", "gc", *flags],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    dry = await asyncio.to_thread(gc, "--dry-run", "--idle-ttl", str(ttl), "--keep-last", "2")
    assert dry.returncode == 0, dry.stderr
    assert "would delete idle thread 'cli-old'" in dry.stdout
    assert "would prune 3 checkpoint(s) of thread 'cli-live'" in dry.stdout
    assert len([t async for t in saver.alist(config("cli-old"))]) == 3
    assert len([t async for t in saver.alist(config("cli-live"))]) == 5

    await saver.aput_writes(config("cli-live", live[-1]), [("counter", "again")], "again")  # still live
    real = await asyncio.to_thread(gc, "--idle-ttl", str(ttl), "--keep-last", "2", "--json")
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    assert report["deleted"] == ["cli-old"] and report["pruned"] == [["cli-live", 3]]
    assert await saver.aget_tuple(config("cli-old")) is None
    assert len([t async for t in saver.alist(config("cli-live"))]) == 2

    nothing = await asyncio.to_thread(gc)
    assert nothing.returncode == 1 and "no retention policy is on" in nothing.stderr


async def test_stream_limits_are_set_at_creation_and_updated_with_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="skialith_langgraph.log")
    limited = dataclasses.replace(settings, stream_max_age=3600.0, stream_max_bytes=MIN_STREAM_MAX_BYTES)
    log = await Log.open(limited, ensure_stream=True)
    try:
        info = await log.js.stream_info(settings.stream)
        assert info.config.max_age == 3600.0 and info.config.max_bytes == MIN_STREAM_MAX_BYTES
        assert info.config.discard == "new"  # refuse new writes when full, never drop old ones
    finally:
        await log.close()
    assert "keeps messages for 3600.0 s only" in caplog.text

    # a client without limits leaves them as they are
    plain = await Log.open(settings, ensure_stream=True)
    try:
        assert (await plain.js.stream_info(settings.stream)).config.max_age == 3600.0
    finally:
        await plain.close()

    # changed settings update the existing stream, and say so
    caplog.clear()
    shorter = dataclasses.replace(limited, stream_max_age=60.0, stream_max_bytes=2 * MIN_STREAM_MAX_BYTES)
    log = await Log.open(shorter, ensure_stream=True)
    try:
        info = await log.js.stream_info(settings.stream)
        assert info.config.max_age == 60.0 and info.config.max_bytes == 2 * MIN_STREAM_MAX_BYTES
        assert info.config.duplicate_window == 60.0  # may not exceed the max age
    finally:
        await log.close()
    assert "limits changed from max_age=3600.0 s" in caplog.text


def test_settings_refuse_a_stream_cap_too_small_to_be_safe() -> None:
    with pytest.raises(ConfigError, match="stream_max_bytes"):
        Settings(stream_max_bytes=1024 * 1024)
    with pytest.raises(ConfigError, match="retention_idle_ttl"):
        Settings(retention_idle_ttl=-1)
    env = {"SKIALITH_RETENTION_IDLE_TTL": "86400", "SKIALITH_RETENTION_KEEP_LAST": "20"}
    got = Settings.from_env(env)
    assert (got.retention_idle_ttl, got.retention_keep_last) == (86400.0, 20)


async def test_projector_cli_runs_the_sweeper_periodically(
    settings: Settings, log: Log, saver: SkialithCheckpointer, tmp_path: Path
) -> None:
    await write(saver, "periodic", 2)
    await asyncio.sleep(TTL + 1.0)
    env = {
        **os.environ,
        "SKIALITH_NATS_URL": settings.nats_url,
        "SKIALITH_DATABASE_URL": settings.database_url,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "skialith_langgraph.cli",
        "projector",
        "--stream",
        settings.stream,
        "--subject-prefix",
        settings.subject_prefix,
        "--retention-idle-ttl",
        str(TTL),
        "--sweep-interval",
        "0.5",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(300):
            if await saver.aget_tuple(config("periodic")) is None:
                break
            await asyncio.sleep(0.1)
        assert await saver.aget_tuple(config("periodic")) is None
    finally:
        proc.terminate()
        out, _ = await proc.communicate()
    assert b"retention: idle TTL 1.0 s" in out, out.decode()[-2000:]
