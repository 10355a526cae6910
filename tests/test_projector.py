"""The projector: batches, idempotent upserts, replicas, ordered deletes."""

from __future__ import annotations

import asyncio
import dataclasses
import random

from langgraph.checkpoint.base import empty_checkpoint
from support import dump, dump_of_log, wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithCheckpointer, codec
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.subjects import token


def _cp(i: int) -> dict:
    cp = empty_checkpoint()
    cp["channel_values"] = {"n": i, "text": f"value {i}"}
    cp["channel_versions"] = {"n": str(i), "text": str(i)}
    return cp


async def _writer(saver: SkialithCheckpointer, thread: str, n: int, rng: random.Random) -> None:
    config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    for i in range(n):
        config = await saver.aput(
            config, _cp(i), {"step": i, "run_id": f"{thread}-r{i % 3}"}, {"n": str(i), "text": str(i)}
        )
        await saver.aput_writes(config, [("n", i), ("text", "w")], f"task-{i}")
        roll = rng.random()
        if roll < 0.08:
            await saver.adelete_thread(thread)
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        elif roll < 0.14:
            await saver.aprune([thread], strategy="keep_latest")
        elif roll < 0.17:
            await saver.adelete_for_runs([f"{thread}-r1"])


async def test_three_replicas_at_once_equal_the_log_row_by_row(settings: Settings) -> None:
    replicas = [
        Projector(settings, replica=str(i), batch_size=random.choice([7, 50, 300]), fetch_timeout=0.1)
        for i in range(3)
    ]
    for p in replicas:
        await p.start()
    rng = random.Random(7)
    try:
        async with SkialithCheckpointer(settings=dataclasses.replace(settings, read_wait=0.0)) as saver:
            await asyncio.gather(*(_writer(saver, f"thread-{t}", 40, rng) for t in range(4)))
            log = await Log.open(settings)
            try:
                last = await log.stream_last_seq()
                model = ReadModel.from_url(settings.database_url)
                await wait_for_watermark(model, last)
                async with model.connect() as conn:
                    projected = await dump(conn)
                expected = await dump_of_log(log)
                await model.close()
            finally:
                await log.close()
        assert projected["skialith_checkpoints"], "nothing was projected"
        assert projected == expected
        assert sum(p.stats.applied for p in replicas) >= len(projected["skialith_checkpoints"])
    finally:
        for p in replicas:
            await p.stop()


async def test_the_same_checkpoint_published_twice_beyond_the_dedupe_window_leaves_one_row(
    settings: Settings,
) -> None:
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    try:
        async with SkialithCheckpointer(settings=settings) as saver:
            config = await saver.aput(
                {"configurable": {"thread_id": "dup", "checkpoint_ns": ""}}, _cp(1), {}, {"n": "1"}
            )
            await saver.aput_writes(config, [("n", 5)], "task")
        log = await Log.open(settings)
        try:
            # a retry after JetStream's duplicate window: the same bodies under fresh Nats-Msg-Ids
            msgs = []
            async for m in log.read(log.subjects.thread(token("dup", field="thread_id"))):
                msgs.append(m)
            for m in msgs:
                await log.publish(m.subject, m.body, codec.msg_id(m.subject, m.body) + ":after-window")
            assert await log.stream_last_seq() == 2 * len(msgs)
            model = ReadModel.from_url(settings.database_url)
            await wait_for_watermark(model, await log.stream_last_seq())
            async with model.connect() as conn:
                rows = await dump(conn)
            await model.close()
        finally:
            await log.close()
        assert len(rows["skialith_checkpoints"]) == 1
        assert len(rows["skialith_checkpoint_writes"]) == 1
        assert len(rows["skialith_checkpoint_blobs"]) == 1
    finally:
        await projector.stop()
