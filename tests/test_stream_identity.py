"""A read model answers only for the stream it was filled from (issue 9, item 6; DESIGN.md 1.8).

A stream deleted and created again, or a second stream projecting into the same database, numbers
its writes from 1 again, below the stored watermark. Readers must then answer from the log (never
None for an acknowledged thread), and the projector must refuse to resume at the other stream's
watermark until ``skialith projector --rebuild`` refills the read model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy import delete, select
from support import wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithAgent, SkialithCheckpointer
from skialith_langgraph.identity import StreamMismatchError
from skialith_langgraph.readmodel import PROJECTION, ReadModel
from skialith_langgraph.readmodel.apply import watermark
from skialith_langgraph.readmodel.tables import checkpoints, stream_identity

pytestmark = pytest.mark.nats

CLI = [sys.executable, "-m", "skialith_langgraph.cli"]


def _config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


async def _write(saver: SkialithCheckpointer, thread_id: str, steps: int) -> str:
    """``steps`` checkpoints (each with a pending write) on ``thread_id``; returns the last id."""
    config = _config(thread_id)
    last = ""
    for step in range(steps):
        checkpoint = empty_checkpoint()
        config = await saver.aput(config, checkpoint, {"source": "loop", "step": step, "parents": {}}, {})
        await saver.aput_writes(config, [("out", step)], task_id=f"task-{step}")
        last = checkpoint["id"]
    return last


async def _stream_last_seq(settings: Settings) -> int:
    nc = await nats.connect(settings.nats_url)
    try:
        return int((await nc.jetstream().stream_info(settings.stream)).state.last_seq)
    finally:
        await nc.close()


async def _delete_stream(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        await nc.jetstream().delete_stream(settings.stream)
    finally:
        await nc.close()


async def _watermark(settings: Settings) -> int:
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.connect() as conn:
            return await watermark(conn, PROJECTION)
    finally:
        await model.close()


async def _projected_threads(settings: Settings) -> set[str]:
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.connect() as conn:
            return {r[0] for r in await conn.execute(select(checkpoints.c.thread_id))}
    finally:
        await model.close()


async def _fill(settings: Settings) -> int:
    """Write three threads, project them, stop the projector; returns the watermark."""
    async with SkialithCheckpointer(settings=settings) as saver:
        for i in range(3):
            await _write(saver, f"old-{i}", 4)
    last = await _stream_last_seq(settings)
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        await wait_for_watermark(projector._model, last)  # type: ignore[arg-type]
    finally:
        await projector.stop()
    return last


async def test_readers_answer_for_a_recreated_stream(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    mark = await _fill(settings)
    running = SkialithCheckpointer(settings=settings, read_wait=0.2)
    try:
        assert (await running.aget_tuple(_config("old-0"))) is not None
        assert running.read_stats.database >= 1  # served by the read model while it is the stream's

        await _delete_stream(settings)
        async with SkialithCheckpointer(settings=settings) as writer:
            await writer.asetup()  # creates the stream again
            new_id = await _write(writer, "new", 2)
        assert await _stream_last_seq(settings) < mark  # the new writes sit below the old watermark

        caplog.set_level(logging.WARNING, logger="skialith_langgraph.identity")
        async with SkialithCheckpointer(settings=settings, read_wait=0.2) as fresh:
            for reader in (running, fresh):
                for _ in range(3):
                    got = await reader.aget_tuple(_config("new"))
                    assert got is not None and got.checkpoint["id"] == new_id
                    assert got.pending_writes == [("task-1", "out", 1)]
                    listed = [t.checkpoint["id"] async for t in reader.alist(_config("new"))]
                    assert len(listed) == 2 and listed[0] == new_id
        warnings = [r.getMessage() for r in caplog.records if r.name == "skialith_langgraph.identity"]
        assert len(warnings) == 2, warnings  # one per reader, not one per read
        assert all("--rebuild" in w and settings.stream in w for w in warnings)
    finally:
        await running.aclose()


async def test_projector_refuses_a_recreated_stream(settings: Settings) -> None:
    mark = await _fill(settings)
    await _delete_stream(settings)
    async with SkialithCheckpointer(settings=settings) as writer:
        await writer.asetup()
        await _write(writer, "new", 2)

    projector = Projector(settings, fetch_timeout=0.2)
    try:
        with pytest.raises(StreamMismatchError) as refused:
            await projector.start()
    finally:
        await projector.close()
    message = str(refused.value)
    assert message.count(repr(settings.stream)) >= 2  # the recorded stream and the current one
    assert "skialith projector --rebuild" in message
    assert refused.value.recorded != refused.value.current
    assert await _watermark(settings) == mark  # never resumed past the new stream's writes
    assert "new" not in await _projected_threads(settings)


async def test_running_projector_stops_when_its_stream_is_recreated(settings: Settings) -> None:
    mark = await _fill(settings)
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        async with SkialithCheckpointer(settings=settings) as saver:
            await _write(saver, "old-3", 1)
        mark = await _stream_last_seq(settings)
        await wait_for_watermark(projector._model, mark)  # type: ignore[arg-type]  # it is consuming
        await _delete_stream(settings)
        async with SkialithCheckpointer(settings=settings) as writer:
            await writer.asetup()
            await _write(writer, "new", 2)
        with pytest.raises(StreamMismatchError):
            await asyncio.wait_for(projector.wait(), timeout=30)
    finally:
        await projector.close()
    assert await _watermark(settings) == mark
    assert "new" not in await _projected_threads(settings)


async def test_a_second_stream_is_refused_and_read_from_its_log(settings: Settings) -> None:
    await _fill(settings)
    other = settings.replace(stream=f"{settings.stream}B", subject_prefix=f"{settings.subject_prefix}b")
    async with SkialithCheckpointer(settings=other, read_wait=0.2) as saver:
        new_id = await _write(saver, "old-0", 1)  # a thread id the first stream has too
        got = await saver.aget_tuple(_config("old-0"))
        assert got is not None and got.checkpoint["id"] == new_id
        async with SkialithCheckpointer(settings=other, read_wait=0.2) as reader:
            got = await reader.aget_tuple(_config("old-0"))
            assert got is not None and got.checkpoint["id"] == new_id
            assert [t.checkpoint["id"] async for t in reader.alist(_config("old-0"))] == [new_id]
    projector = Projector(other, fetch_timeout=0.2)
    try:
        with pytest.raises(StreamMismatchError, match=f"'{settings.stream}'.*'{other.stream}'"):
            await projector.start()
    finally:
        await projector.close()


# -- the command -----------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _projector_cmd(settings: Settings, *more: str) -> list[str]:
    return [
        *CLI,
        "projector",
        "--nats-url",
        settings.nats_url,
        "--database-url",
        settings.database_url,
        "--stream",
        settings.stream,
        "--subject-prefix",
        settings.subject_prefix,
        *more,
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def test_cli_projector_refuses_then_rebuilds(
    settings: Settings, tmp_path: Path, cli: list[subprocess.Popen[bytes]]
) -> None:
    mark = await _fill(settings)
    await _delete_stream(settings)
    async with SkialithCheckpointer(settings=settings) as writer:
        await writer.asetup()
        new_id = await _write(writer, "new", 2)
    last = await _stream_last_seq(settings)

    refused = await asyncio.to_thread(
        subprocess.run, _projector_cmd(settings), env=_env(), cwd=tmp_path, capture_output=True, timeout=60
    )
    err = refused.stderr.decode()
    assert refused.returncode == 1, err
    assert "skialith projector: error:" in err and "--rebuild" in err and "Traceback" not in err
    assert await _watermark(settings) == mark
    assert "new" not in await _projected_threads(settings)

    out = tmp_path / "rebuild.out"
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            _projector_cmd(settings, "--rebuild"),
            env=_env(),
            cwd=tmp_path,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    cli.append(proc)
    for _ in range(600):
        if "rebuild: done" in out.read_text() or proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    assert "rebuild: done" in out.read_text(), out.read_text()
    proc.terminate()
    assert await asyncio.to_thread(proc.wait, 15) == 0, out.read_text()
    assert await _watermark(settings) == last
    assert await _projected_threads(settings) == {"new"}
    async with SkialithCheckpointer(settings=settings, read_wait=0.2) as reader:
        got = await reader.aget_tuple(_config("new"))
        assert got is not None and got.checkpoint["id"] == new_id
        assert reader.read_stats.database == 1 and reader.read_stats.log == 0  # the read model again


async def test_agent_resumes_from_a_recreated_stream(settings: Settings) -> None:
    async with SkialithAgent("agent-1", settings=settings) as agent:
        for step in range(5):
            await agent.checkpoint(step, {"step": step, "stream": "old"})
    await _fill(settings)  # projects the agent's checkpoints too
    await _delete_stream(settings)
    async with SkialithCheckpointer(settings=settings) as writer:
        await writer.asetup()
    async with SkialithAgent("agent-1", settings=settings) as agent:
        await agent.checkpoint(0, {"step": 0, "stream": "new"})
    async with SkialithAgent("agent-1", settings=settings.replace(read_wait=0.2)) as agent:
        state = await agent.resume()
        assert (state.step_index, state.data) == (1, {"step": 0, "stream": "new"})
        assert [r.payload["stream"] for r in await agent.history()] == ["new"]


async def test_heads_of_a_recreated_stream_are_not_trusted(settings: Settings) -> None:
    """A process's own head of a thread counts sequences; the same number on a new stream is
    another write (no projector needed: the head answers before the read model)."""
    async with SkialithCheckpointer(settings=settings) as mine:
        assert await mine.aget_tuple(_config("t")) is None  # nothing written: a head starts
        await _write(mine, "t", 1)  # sequences 1 and 2, folded into the head
        await _delete_stream(settings)
        async with SkialithCheckpointer(settings=settings) as other:
            await other.asetup()
            theirs = await _write(other, "t", 1)  # sequences 1 and 2 again, on the new stream
        got = await mine.aget_tuple(_config("t"))
        assert got is not None and got.checkpoint["id"] == theirs


async def test_a_read_model_of_an_older_version_is_adopted_or_refused(settings: Settings) -> None:
    """Made before the stream was recorded: adopted when its watermark fits the stream, else refused."""
    mark = await _fill(settings)
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.begin() as conn:
            await conn.execute(delete(stream_identity))  # as an older version left it
        projector = Projector(settings, fetch_timeout=0.2)
        try:
            await projector.start()  # the same stream: adopted
        finally:
            await projector.stop()
        async with model.connect() as conn:
            assert [r.stream for r in await conn.execute(select(stream_identity))] == [settings.stream]
            await conn.execute(delete(stream_identity))
            await conn.commit()
        await _delete_stream(settings)
        async with SkialithCheckpointer(settings=settings) as writer:
            await _write(writer, "new", 1)  # the stream is created again, below the watermark
        projector = Projector(settings, fetch_timeout=0.2)
        try:
            with pytest.raises(StreamMismatchError, match="records no stream"):
                await projector.start()
        finally:
            await projector.close()
        assert await _watermark(settings) == mark
    finally:
        await model.close()


async def test_a_read_racing_the_projectors_first_claim_sees_the_write(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read of a fresh read model looks for the row before the projector has claimed the
    read model; if the projector claims it and applies the write before the read judges the
    watermark, the read must not pair the watermark it judged with the row it looked for before."""
    from skialith_langgraph import identity

    async with SkialithCheckpointer(settings=settings) as writer:
        stored = await writer.aput(_config("t"), empty_checkpoint(), {"source": "input", "step": -1}, {})
    last = await _stream_last_seq(settings)
    judge = identity.judge
    projector = Projector(settings, fetch_timeout=0.2)

    async def late_judge(*args: Any, **kwargs: Any) -> Any:
        if not projector.running:  # the projector claims and applies between the row and the judge
            await projector.start()
            await wait_for_watermark(projector._model, last)  # type: ignore[arg-type]
        return await judge(*args, **kwargs)

    monkeypatch.setattr(identity, "judge", late_judge)
    try:
        async with SkialithCheckpointer(settings=settings.replace(read_wait=5.0)) as reader:
            found = await reader.aget_tuple(stored)
            assert found is not None and found.config == stored
    finally:
        await projector.stop()
