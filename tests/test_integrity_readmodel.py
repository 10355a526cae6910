"""Issue 9, items 1, 4, 5, 11 (parts), 14 and 16: prune is atomic with the log, deletes reclaim
stored parts, keys compare byte for byte, agent parts are not a thread's, list pages by key."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlalchemy import func, select
from support import wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel, queries
from skialith_langgraph.readmodel.tables import blob_parts
from skialith_langgraph.subjects import token
from skialith_langgraph.views import replay

SERDE = JsonPlusSerializer()


def _cp(i: int, **values: Any) -> dict[str, Any]:
    cp = empty_checkpoint()
    cp["id"] = f"{i:08d}-{random.random():.6f}"
    cp["channel_values"] = {"n": i, **values}
    cp["channel_versions"] = {"n": f"{i:08d}", **{k: f"{i:08d}" for k in values}}
    return cp


def _thread(thread: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


async def _latest_everywhere(settings: Settings, thread: str) -> tuple[str | None, str | None]:
    """The latest checkpoint id of ``thread`` in the caught-up read model and in the log."""
    log = await Log.open(settings)
    model = ReadModel.from_url(settings.database_url)
    try:
        last = await log.stream_last_seq()
        await wait_for_watermark(model, last)
        async with model.connect() as conn:
            found = await queries.get_tuple(conn, SERDE, thread, "", None)
        tk = token(thread, field="thread_id")
        async with replay(log, [log.subjects.thread(tk), log.subjects.global_ops], last) as conn:
            logged = await queries.get_tuple(conn, SERDE, thread, "", None)
    finally:
        await model.close()
        await log.close()
    return (
        None if found is None else found.config["configurable"]["checkpoint_id"],
        None if logged is None else logged.config["configurable"]["checkpoint_id"],
    )


# -- item 1: prune racing puts -------------------------------------------------------------------


async def test_prune_racing_puts_never_deletes_the_newest_acknowledged_checkpoint(settings: Settings) -> None:
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    rng = random.Random(1)
    lost: list[str] = []
    try:
        async with (
            SkialithCheckpointer(settings=settings) as writer,
            SkialithCheckpointer(settings=settings) as pruner,
        ):
            for trial in range(20):
                thread = f"race-{trial}"
                config = await writer.aput(_thread(thread), _cp(0), {}, {"n": "00000000"})

                async def put_loop(config: Any = config) -> str:
                    for i in range(1, 25):
                        config = await writer.aput(config, _cp(i), {"step": i}, {"n": f"{i:08d}"})
                    return str(config["configurable"]["checkpoint_id"])

                async def prune(thread: str = thread) -> None:
                    await asyncio.sleep(rng.uniform(0, 0.03))
                    await pruner.aprune([thread], strategy="keep_latest")

                newest, _ = await asyncio.gather(put_loop(), prune())
                seen = await writer.aget_tuple(_thread(thread))
                model_id, log_id = await _latest_everywhere(settings, thread)
                got = None if seen is None else seen.config["configurable"]["checkpoint_id"]
                if (got, model_id, log_id) != (newest, newest, newest):
                    lost.append(f"{thread}: newest {newest}, get_tuple {got}, model {model_id}, log {log_id}")
    finally:
        await projector.stop()
    assert not lost, "\n".join(lost)


# -- item 11 (part): deletes reclaim the stored parts of large values ------------------------------


async def _parts_of(settings: Settings, owner: str) -> int:
    log = await Log.open(settings)
    model = ReadModel.from_url(settings.database_url)
    try:
        await wait_for_watermark(model, await log.stream_last_seq())
        async with model.connect() as conn:
            count = (
                await conn.execute(
                    select(func.count()).select_from(blob_parts).where(blob_parts.c.owner_key == owner)
                )
            ).scalar()
    finally:
        await model.close()
        await log.close()
    return int(count or 0)


async def test_prune_and_delete_for_runs_leave_no_parts_behind(settings: Settings) -> None:
    """Five checkpoints with a 1.5 MiB value each (two parts), and a 1.5 MiB pending write of a run."""
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    tk = token("big", field="thread_id")
    try:
        async with SkialithCheckpointer(settings=settings) as saver:
            config = _thread("big")
            for i in range(5):
                cp = _cp(i, big=random.randbytes(1_500_000))
                config = await saver.aput(config, cp, {"run_id": f"run-{i}"}, cp["channel_versions"])
            await saver.aput_writes(config, [("big", random.randbytes(1_500_000))], "task-1")
            assert await _parts_of(settings, tk) == 12  # 5 blobs and 1 write of two parts each
            await saver.aprune(["big"], strategy="keep_latest")
            assert await _parts_of(settings, tk) == 4  # the kept head's blob and its pending write
            await saver.adelete_for_runs(["run-4"])  # the head and its write go
            assert await _parts_of(settings, tk) == 2  # the head's blob remains (prune's keep-set)
            kept = await saver.aget_tuple(_thread("big"))
            assert kept is None  # its only checkpoint was in run-4
    finally:
        await projector.stop()


# -- item 14: an agent's large values are not a thread's --------------------------------------------


async def test_delete_thread_of_the_same_id_keeps_an_agents_large_checkpoint(settings: Settings) -> None:
    from skialith_langgraph import SkialithAgent

    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    big = random.randbytes(1_500_000)
    try:
        async with SkialithAgent(agent_id="X", settings=settings) as agent:
            await agent.checkpoint(step=0, data={"blob": big})
            async with SkialithCheckpointer(settings=settings) as saver:
                await saver.aput(_thread("X"), _cp(1, big=random.randbytes(1_500_000)), {}, {"big": "1"})
                await saver.adelete_thread("X")
            await _parts_of(settings, "")  # waits for the projector
            state = await agent.resume()
            assert state.data == {"blob": big}
            assert [r.payload for r in await agent.history()] == [{"blob": big}]
    finally:
        await projector.stop()
