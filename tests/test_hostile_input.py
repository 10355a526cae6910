"""Hostile ids and payloads: they work, or they are refused with a ValueError naming the field."""

from __future__ import annotations

import dataclasses
import time

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from support import wait_for_watermark

from skialith_langgraph import ConnectError, Projector, ReadModelError, Settings, SkialithCheckpointer
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel

IDS = [
    "",
    ".",
    "*",
    ">",
    "a.b.*.>",
    " spaced out ",
    "tab\tnewline\n",
    "slash/back\\slash",
    "nul\x00inside",
    "日本語 🧵",
    "x" * 10_000,
]


def _cp(value: object) -> dict:
    cp = empty_checkpoint()
    cp["channel_values"] = {"v": value}
    cp["channel_versions"] = {"v": "1"}
    return cp


@pytest.mark.parametrize("projector_running", [False, True], ids=["log", "database"])
async def test_awkward_thread_ids_and_namespaces_round_trip(
    settings: Settings, projector_running: bool
) -> None:
    projector = Projector(settings, fetch_timeout=0.1)
    if projector_running:
        await projector.start()
    try:
        async with SkialithCheckpointer(settings=dataclasses.replace(settings, read_wait=0.0)) as saver:
            stored = {}
            for i, thread_id in enumerate(IDS):
                ns = IDS[-1 - i]
                config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
                out = await saver.aput(config, _cp(i), {"note": "meta\x00data", "i": i}, {"v": "1"})
                await saver.aput_writes(out, [("v", f"w{i}")], "task")
                stored[(thread_id, ns)] = out
            if projector_running:
                log = await Log.open(settings)
                model = ReadModel.from_url(settings.database_url)
                await wait_for_watermark(model, await log.stream_last_seq())
                await model.close()
                await log.close()
            reader = SkialithCheckpointer(settings=settings, read_wait=0.0)  # no heads: like another process
            async with reader:
                for i, thread_id in enumerate(IDS):
                    ns = IDS[-1 - i]
                    tup = await reader.aget_tuple(
                        {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
                    )
                    assert tup is not None, (thread_id[:20], ns[:20])
                    assert tup.config == stored[(thread_id, ns)]
                    assert tup.checkpoint["channel_values"] == {"v": i}
                    assert tup.metadata["note"] == "metadata" and tup.metadata["i"] == i
                    assert tup.pending_writes == [("task", "v", f"w{i}")]
                    listed = [t async for t in reader.alist({"configurable": {"thread_id": thread_id}})]
                    assert [t.config for t in listed] == [stored[(thread_id, ns)]]
                if projector_running:
                    assert reader.read_stats.database > 0 and reader.read_stats.log == 0
                await reader.adelete_thread(IDS[3])
                assert (
                    await reader.aget_tuple({"configurable": {"thread_id": IDS[3], "checkpoint_ns": IDS[-4]}})
                    is None
                )
                assert await reader.aget_tuple(
                    {"configurable": {"thread_id": IDS[4], "checkpoint_ns": IDS[-5]}}
                )
    finally:
        if projector_running:
            await projector.stop()


async def test_ids_the_read_model_stores_verbatim_are_bounded(settings: Settings) -> None:
    async with SkialithCheckpointer(settings=settings) as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        with pytest.raises(ValueError, match="task_id"):
            await saver.aput_writes(
                {"configurable": {**config["configurable"], "checkpoint_id": "c"}}, [], "t" * 300
            )
        cp = _cp(1)
        cp["id"] = "c" * 300
        with pytest.raises(ValueError, match="checkpoint id"):
            await saver.aput(config, cp, {}, {"v": "1"})


async def test_unserializable_value_raises_and_publishes_nothing(settings: Settings) -> None:
    async with SkialithCheckpointer(settings=settings) as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        await saver.asetup()
        with pytest.raises(TypeError):
            await saver.aput(config, _cp(object()), {}, {"v": "1"})
        with pytest.raises(TypeError):
            await saver.aput_writes(
                {"configurable": {**config["configurable"], "checkpoint_id": "c"}}, [("v", object())], "x"
            )
        log = await Log.open(settings)
        try:
            assert await log.stream_last_seq() == 0
        finally:
            await log.close()


async def test_unreachable_nats_fails_fast_naming_the_url_and_what_to_run(settings: Settings) -> None:
    bad = dataclasses.replace(settings, nats_url="nats://127.0.0.1:1", connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(ConnectError) as info:
        async with SkialithCheckpointer(settings=bad) as saver:
            await saver.aget_tuple({"configurable": {"thread_id": "t"}})
    assert time.monotonic() - started < 10
    assert "nats://127.0.0.1:1" in str(info.value) and "skialith up" in str(info.value)


async def test_unreachable_database_at_setup_fails_fast_naming_the_url(settings: Settings) -> None:
    bad = dataclasses.replace(
        settings, database_url="mysql+aiomysql://root:secret@127.0.0.1:1/x", connect_timeout=2.0
    )
    started = time.monotonic()
    with pytest.raises(ReadModelError) as info:
        async with SkialithCheckpointer(settings=bad) as saver:
            await saver.asetup()
    assert time.monotonic() - started < 15
    assert "127.0.0.1:1" in str(info.value) and "secret" not in str(info.value)


def test_sync_face_with_unreachable_nats_raises_too(settings: Settings) -> None:
    bad = dataclasses.replace(settings, nats_url="nats://127.0.0.1:1", connect_timeout=1.0)
    with SkialithCheckpointer(settings=bad) as saver, pytest.raises(ConnectError, match="skialith up"):
        saver.get_tuple({"configurable": {"thread_id": "t"}})
