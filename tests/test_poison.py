"""Poison messages (issue 9, items 8 and 9): no one message stops the projector.

A value the read model cannot hold is refused before it is published. A message on the stream
that can never be applied (forged, junk, a malformed header, or refused by the database) gets a
row in ``skialith_dead_letters``, one log line without its data and a count, and the projector
applies what comes after it. A database that is only unavailable is still waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy import select
from sqlalchemy.engine import make_url
from support import wait_for_watermark
from tcp_proxy import TcpProxy

from skialith_langgraph import Projector, Settings, SkialithAgent, SkialithCheckpointer
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import checkpoints, dead_letters
from skialith_langgraph.subjects import TEXT_MAX, token
from skialith_langgraph.traces import TraceIngest

SECRET = "s3cr3t-user-data"  # in every poison body: it must never reach the log
GOOD_THREAD = "good-after-poison"


def _cp() -> Any:
    cp = empty_checkpoint()
    cp["channel_values"] = {"v": SECRET}
    cp["channel_versions"] = {"v": "1"}
    return cp


async def _put_good(settings: Settings, thread_id: str = GOOD_THREAD) -> str:
    async with SkialithCheckpointer(settings=settings) as saver:
        cp = _cp()
        await saver.aput({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}, cp, {}, {"v": "1"})
    return str(cp["id"])


def _forged_checkpoint(**fields: Any) -> bytes:
    body: dict[str, Any] = {
        "k": "c",
        "t": "forged",
        "n": "",
        "i": "1ef-forged",
        "p": None,
        "r": None,
        "c": ["msgpack", ormsgpack.packb({"note": SECRET})],
        "m": ["msgpack", ormsgpack.packb({"step": 1})],
        "b": [],
        "f": 1,
    }
    body.update(fields)
    return ormsgpack.packb(body)


async def _publish_raw(settings: Settings, body: bytes, headers: dict[str, str] | None = None) -> int:
    """Publish ``body`` on a thread's checkpoint subject, as anyone with access to NATS could."""
    log = await Log.open(settings, ensure_stream=True)
    try:
        subject = log.subjects.checkpoint(token("forged", field="thread_id"))
        ack = await log.js.publish(subject, body, stream=settings.stream, headers=headers)
        return int(ack.seq)
    finally:
        await log.close()


async def _last_seq(settings: Settings) -> int:
    log = await Log.open(settings, ensure_stream=True)
    try:
        return await log.stream_last_seq()
    finally:
        await log.close()


@pytest.fixture
async def model(settings: Settings) -> AsyncIterator[ReadModel]:
    rm = ReadModel.from_url(settings.database_url)
    await rm.setup()
    try:
        yield rm
    finally:
        await rm.close()


async def _dead(model: ReadModel) -> list[tuple[Any, ...]]:
    async with model.connect() as conn:
        rows = await conn.execute(
            select(dead_letters.c.projection, dead_letters.c.seq, dead_letters.c.reason, dead_letters.c.size)
        )
        return [tuple(r) for r in rows]


async def _has_checkpoint(model: ReadModel, checkpoint_id: str) -> bool:
    async with model.connect() as conn:
        found = await conn.execute(
            select(checkpoints.c.thread_id).where(checkpoints.c.checkpoint_id == checkpoint_id)
        )
        return found.scalar() == GOOD_THREAD


async def _check_set_aside(
    settings: Settings,
    model: ReadModel,
    projector: Projector,
    caplog: pytest.LogCaptureFixture,
    bad_seq: int,
    *,
    reason: str,
    name: str = "main",
) -> None:
    """A good message published behind the bad one is applied; the bad one is a dead letter."""
    good = await _put_good(settings)
    await wait_for_watermark(model, await _last_seq(settings), timeout=60)
    assert await _has_checkpoint(model, good)
    rows = await _dead(model)
    assert [(r[0], r[1]) for r in rows] == [(name, bad_seq)], rows
    assert reason in rows[0][2] and SECRET not in rows[0][2]
    assert projector.running
    assert projector.stats.dead_letters == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if f"set aside message seq={bad_seq} " in line]) == 1, lines
    assert not [line for line in lines if SECRET in line or "INSERT" in line]


@pytest.fixture
async def projector(settings: Settings, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Projector]:
    caplog.set_level(logging.INFO, logger="skialith_langgraph")
    p = Projector(settings, fetch_timeout=0.1)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


# -- refused before publishing ------------------------------------------------------------------


async def test_a_run_id_over_255_characters_is_refused_before_publishing(settings: Settings) -> None:
    async with SkialithCheckpointer(settings=settings) as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "run_id": "r" * 256}}
        with pytest.raises(ValueError, match="run_id"):
            await saver.aput(config, _cp(), {"run_id": "r" * 256}, {"v": "1"})
        assert await _last_seq(settings) == 0
        # 255 characters fit the read model's column
        await saver.aput(
            {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, _cp(), {"run_id": "r" * 255}, {}
        )


async def test_an_agent_step_of_2_63_is_refused_before_publishing(settings: Settings) -> None:
    async with SkialithAgent("a", settings=settings) as agent:
        with pytest.raises(ValueError, match="step"):
            await agent.checkpoint(step=2**63, data={"x": 1})
        with pytest.raises(ValueError, match="step"):
            await agent.save_event("e", {"x": 1}, step=2**63)
        assert await _last_seq(settings) == 0


async def test_a_serializer_type_name_the_read_model_cannot_hold_is_refused(settings: Settings) -> None:
    class LongNames:
        def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
            return "x" * 65, b"data"

        def loads_typed(self, data: tuple[str, bytes]) -> Any:
            return data[1]

    async with SkialithCheckpointer(settings=settings, serde=LongNames()) as saver:  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="type name"):
            await saver.aput({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, _cp(), {}, {"v": "1"})
    assert await _last_seq(settings) == 0


# -- set aside on the stream ----------------------------------------------------------------------


async def test_a_forged_message_with_an_int_thread_id_is_set_aside(
    settings: Settings, model: ReadModel, projector: Projector, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await _publish_raw(settings, _forged_checkpoint(t=12345))
    await _check_set_aside(settings, model, projector, caplog, bad, reason="CodecError")


async def test_a_forged_step_out_of_range_is_set_aside(
    settings: Settings, model: ReadModel, projector: Projector, caplog: pytest.LogCaptureFixture
) -> None:
    event = {
        "k": "e",
        "a": "agent",
        "kind": "checkpoint",
        "name": "",
        "s": 2**63,
        "v": ["bytes", SECRET.encode()],
    }
    bad = await _publish_raw(settings, ormsgpack.packb({**event, "ts": 1.0, "f": 1}))
    await _check_set_aside(settings, model, projector, caplog, bad, reason="CodecError")


async def test_a_forged_run_id_over_255_characters_is_set_aside(
    settings: Settings, model: ReadModel, projector: Projector, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await _publish_raw(settings, _forged_checkpoint(r="r" * 256 + SECRET))
    await _check_set_aside(settings, model, projector, caplog, bad, reason="CodecError")


async def test_junk_bytes_are_set_aside(
    settings: Settings, model: ReadModel, projector: Projector, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await _publish_raw(settings, b"\xc1junk " + SECRET.encode())
    await _check_set_aside(settings, model, projector, caplog, bad, reason="CodecError")
    assert (await _dead(model))[0][3] == len(b"\xc1junk " + SECRET.encode())


async def test_a_malformed_parts_header_is_set_aside(
    settings: Settings, model: ReadModel, projector: Projector, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await _publish_raw(settings, SECRET.encode(), headers={"Skialith-Parts": "not-a-count"})
    await _check_set_aside(settings, model, projector, caplog, bad, reason="Error")


async def test_a_message_the_database_refuses_is_set_aside_and_its_batch_applied(
    settings: Settings, model: ReadModel, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid message that the database refuses for good (here an operator's trigger refuses one
    thread) is set aside alone: the messages of its batch, before and after it, are applied."""
    caplog.set_level(logging.INFO, logger="skialith_langgraph")
    async with model.connect() as conn:
        if conn.dialect.name == "mysql":
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON skialith_checkpoints FOR EACH ROW "
                "IF NEW.thread_id = 'poison' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'; "
                "END IF"
            )
        elif conn.dialect.name == "postgresql":
            await conn.exec_driver_sql(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.thread_id = 'poison' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON skialith_checkpoints "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON skialith_checkpoints "
                "WHEN NEW.thread_id = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        await conn.commit()
    before = await _put_good(settings, "before")
    bad_id = await _put_good(settings, "poison")
    bad = await _last_seq(settings)
    projector = Projector(settings, fetch_timeout=0.1, linger=0.5)  # the three in one batch
    await projector.start()
    try:
        await _check_set_aside(settings, model, projector, caplog, bad, reason="refused")
        async with model.connect() as conn:
            ids = set((await conn.execute(select(checkpoints.c.checkpoint_id))).scalars())
        assert before in ids and bad_id not in ids
    finally:
        await projector.stop()


async def test_the_trace_ingest_sets_aside_under_its_own_name(
    settings: Settings, model: ReadModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="skialith_langgraph")
    bad = await _publish_raw(settings, b"\x92junk")
    ingest = TraceIngest(settings, fetch_timeout=0.1)
    await ingest.start()
    try:
        await _put_good(settings)
        await ingest.catch_up(timeout=60)
        assert [(r[0], r[1]) for r in await _dead(model)] == [("traces-main", bad)]
        assert ingest.running and ingest.stats.dead_letters == 1
        assert [t.trace_id for t in await ingest.traces(thread_id=GOOD_THREAD)] == [GOOD_THREAD]
    finally:
        await ingest.stop()


# -- transient failures are waited for ------------------------------------------------------------


async def test_a_database_outage_is_retried_not_dead_lettered(
    nats_url: str, mysql_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="skialith_langgraph")
    target = make_url(mysql_url)
    direct = ReadModel.from_url(mysql_url)
    async with TcpProxy(target.host or "127.0.0.1", target.port or 3306) as proxy:
        settings = Settings(
            nats_url=nats_url,
            database_url=target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
            stream=f"SK{unique}".upper(),
            subject_prefix=f"sk{unique}",
            connect_timeout=1.0,
        )
        projector = Projector(settings, fetch_timeout=0.1)
        await projector.start()
        try:
            await _put_good(settings)  # the projector is consuming before the database goes
            await wait_for_watermark(direct, await _last_seq(settings), timeout=60)
            proxy.cut("reset")
            ids = [await _put_good(dataclasses.replace(settings, read_wait=0.0)) for _ in range(3)]
            deadline = time.monotonic() + 30
            while projector.stats.failures < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert projector.stats.failures >= 3  # it tried, and failed, several times
            proxy.restore()
            await wait_for_watermark(direct, await _last_seq(settings), timeout=60)
            for cid in ids:
                assert await _has_checkpoint(direct, cid)
            assert await _dead(direct) == []
            assert projector.stats.dead_letters == 0 and projector.running
        finally:
            await projector.stop()
            await direct.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    outage = [w for w in warnings if "cannot commit a batch" in w]
    assert len(outage) == 1, warnings  # one warning per outage, not one per attempt
    assert any("can commit a batch again" in w for w in warnings), warnings
    assert not [r for r in caplog.records if "INSERT" in r.getMessage() or SECRET in r.getMessage()]


# -- the real `skialith projector` ----------------------------------------------------------------


async def test_the_projector_cli_starts_and_runs_past_a_malformed_parts_header(
    settings: Settings, model: ReadModel, tmp_path: Path
) -> None:
    """It used to exit 1 at every start: the header's ValueError ended the process."""
    bad = await _publish_raw(settings, SECRET.encode(), headers={"Skialith-Parts": "not-a-count"})
    junk = await _publish_raw(settings, b"\xc1" + SECRET.encode())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")}
    args = [
        "projector",
        *("--nats-url", settings.nats_url, "--database-url", settings.database_url),
        *("--stream", settings.stream, "--subject-prefix", settings.subject_prefix),
    ]
    err_path = tmp_path / "projector.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skialith_langgraph.cli", *args],
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        good = await _put_good(settings)
        await wait_for_watermark(model, await _last_seq(settings), timeout=60)
        assert await _has_checkpoint(model, good)
        assert proc.poll() is None, err_path.read_text()
        assert sorted((r[0], r[1]) for r in await _dead(model)) == [("main", bad), ("main", junk)]
        # and again after a restart: nothing on the stream stops it at start
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        with open(err_path, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "skialith_langgraph.cli", *args],
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        good = await _put_good(settings)
        await wait_for_watermark(model, await _last_seq(settings), timeout=60)
        assert await _has_checkpoint(model, good)
        assert proc.poll() is None
        log = err_path.read_text()
        assert SECRET not in log and "Traceback" not in log
        assert log.count(f"set aside message seq={bad} ") == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_a_thread_id_over_the_text_limit_is_refused_before_publishing(settings: Settings) -> None:
    huge = "t" * (TEXT_MAX + 1)
    before = await _last_seq(settings)
    async with SkialithCheckpointer(settings=settings) as saver:
        with pytest.raises(ValueError, match="thread_id"):
            await saver.aput(
                {"configurable": {"thread_id": huge, "checkpoint_ns": ""}}, _cp(), {"step": 0}, {}
            )
    assert await _last_seq(settings) == before


async def test_a_forged_thread_id_over_the_text_limit_is_set_aside(
    settings: Settings, model: ReadModel, projector: Projector, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await _publish_raw(settings, _forged_checkpoint(t="t" * (TEXT_MAX + 1) + SECRET))
    await _check_set_aside(settings, model, projector, caplog, bad, reason="CodecError")
