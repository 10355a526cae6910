"""Reads never wait for a projector that is not running (issue 11, item 3).

A running projector says so in its watermark row (``alive_at``, every few seconds, idle or not).
A read whose read model lags waits ``read_wait`` for the projector only if one runs; otherwise it
reads the stream at once, and the process logs one warning naming the database and how to start
the projector. Waits are counted by ``read_stats.waited``, not by the clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.config import DEFAULT_DATABASE_URL
from skialith_langgraph.readmodel import ReadModel, safe_url

READ_WAIT = 5.0  # seconds: a read that waited it even once would show in the counters (and the clock)


def _write(settings: Settings, thread_id: str, n: int = 3) -> list[str]:
    ids = []
    with SkialithCheckpointer(settings=settings) as saver:
        config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        for step in range(n):
            checkpoint = empty_checkpoint()
            config = saver.put(config, checkpoint, {"source": "loop", "step": step, "parents": {}}, {})
            ids.append(checkpoint["id"])
    return ids


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "no projector fills" in r.getMessage()
    ]


def _read_three_times(settings: Settings, thread_id: str) -> tuple[SkialithCheckpointer, list[str], float]:
    with SkialithCheckpointer(settings=settings) as saver:
        started = time.monotonic()
        config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        seen = []
        for _ in range(3):
            found = saver.get_tuple(config)
            assert found is not None
            seen.append(found.checkpoint["id"])
        seen += [t.checkpoint["id"] for t in saver.list(config)]
        return saver, seen, time.monotonic() - started


async def test_reads_do_not_wait_for_a_projector_that_never_ran(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="skialith_langgraph")
    ids = await asyncio.to_thread(_write, settings, "no-projector")
    slow = dataclasses.replace(settings, read_wait=READ_WAIT)
    saver, seen, took = await asyncio.to_thread(_read_three_times, slow, "no-projector")
    assert seen == [ids[-1]] * 3 + ids[::-1]  # every read answered, from the stream
    assert saver.read_stats.waited == 0
    assert saver.read_stats.log == 4 and saver.read_stats.database == 0
    assert took < READ_WAIT  # not even one wait
    (warning,) = _warnings(caplog)
    shown = safe_url(settings.database_url)
    assert shown in warning and "skialith projector --database-url" in warning and "skialith up" in warning
    if ":" in (settings.database_url.split("@")[0].split("//")[-1]):  # a password: never shown
        assert settings.database_url not in warning


async def test_reads_do_not_wait_for_a_projector_silent_for_long(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A projector killed (no chance to take its heartbeat back) counts as stopped once silent."""
    from skialith_langgraph.readmodel.apply import record_alive

    caplog.set_level(logging.WARNING, logger="skialith_langgraph")
    ids = await asyncio.to_thread(_write, settings, "killed-projector")
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.begin() as conn:
            await record_alive(conn, "main", time.time() - 60)
    finally:
        await model.close()
    slow = dataclasses.replace(settings, read_wait=READ_WAIT)
    saver, seen, _ = await asyncio.to_thread(_read_three_times, slow, "killed-projector")
    assert seen[:3] == [ids[-1]] * 3
    assert saver.read_stats.waited == 0 and saver.read_stats.database == 0
    (warning,) = _warnings(caplog)
    assert "has not said it runs for 6" in warning


async def test_reads_wait_for_and_read_from_a_running_projector(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="skialith_langgraph")
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        ids = await asyncio.to_thread(_write, settings, "with-projector")
        slow = dataclasses.replace(settings, read_wait=30.0)
        saver, seen, _ = await asyncio.to_thread(_read_three_times, slow, "with-projector")
        assert seen == [ids[-1]] * 3 + ids[::-1]
        # served by the database: each read waited for the projector if it lagged, never the log
        assert saver.read_stats.log == 0 and saver.read_stats.database == 4
        assert _warnings(caplog) == []
    finally:
        await projector.stop()
    # stopped cleanly: it took its heartbeat back, so the next reads do not wait for it
    more = await asyncio.to_thread(_write, settings, "after-stop", 1)
    saver, seen, _ = await asyncio.to_thread(_read_three_times, slow, "after-stop")
    assert seen[0] == more[0] and saver.read_stats.waited == 0
    assert len(_warnings(caplog)) == 1


async def test_the_default_sqlite_path_warning_names_the_working_directory(
    nats_url: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The default database is relative to the working directory: a process started elsewhere than
    'skialith up' opens another file, which no projector fills; the warning says so."""
    caplog.set_level(logging.WARNING, logger="skialith_langgraph")
    monkeypatch.chdir(tmp_path)
    settings = Settings(
        nats_url=nats_url,
        database_url=DEFAULT_DATABASE_URL,
        stream=f"SK{unique}".upper(),
        subject_prefix=f"sk{unique}",
        read_wait=READ_WAIT,
    )
    await asyncio.to_thread(_write, settings, "default-path", 1)
    saver, _, _ = await asyncio.to_thread(_read_three_times, settings, "default-path")
    assert saver.read_stats.waited == 0
    (warning,) = _warnings(caplog)
    assert "relative to the working directory" in warning
    assert os.path.join(str(tmp_path), ".skialith", "skialith.db") in warning
    assert "'skialith up' fills the file in the directory where it was started" in warning
