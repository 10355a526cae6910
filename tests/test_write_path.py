"""The write path: publish, PubAck, done. The database is never on it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import nats
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from skialith_langgraph import Projector, Settings, SkialithCheckpointer, codec
from skialith_langgraph import log as log_module
from skialith_langgraph.errors import StreamNotFoundError
from skialith_langgraph.log import Log
from skialith_langgraph.subjects import Subjects, token

DOWN_DB = "mysql+aiomysql://root@127.0.0.1:1/nothing_listens_here"


def _config(thread_id: str, checkpoint_id: str | None = None, ns: str = "") -> dict:
    conf = {"thread_id": thread_id, "checkpoint_ns": ns}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def _checkpoint(**values: object) -> dict:
    cp = empty_checkpoint()
    cp["channel_values"] = dict(values)
    cp["channel_versions"] = {k: "1" for k in values}
    return cp


async def _stream_messages(settings: Settings) -> list[nats.aio.msg.Msg]:
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"{settings.subject_prefix}.>", ordered_consumer=True)
        info = await js.stream_info(settings.stream)
        out = [await sub.next_msg(timeout=5) for _ in range(info.state.messages)]
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def test_writes_succeed_and_read_back_while_the_database_is_unreachable(settings: Settings) -> None:
    settings = dataclasses.replace(settings, database_url=DOWN_DB, connect_timeout=2.0)
    async with SkialithCheckpointer(settings=settings) as saver:
        cp = _checkpoint(answer=42)
        stored = await saver.aput(_config("t-down"), cp, {"source": "input", "step": -1}, {"answer": "1"})
        await saver.aput_writes(stored, [("answer", 43)], "task-1")
        tup = await saver.aget_tuple(_config("t-down"))
        assert tup is not None
        assert tup.checkpoint["channel_values"] == {"answer": 42}
        assert tup.pending_writes == [("task-1", "answer", 43)]
        assert saver.read_stats.log >= 1 and saver.read_stats.database == 0


async def test_each_message_id_starts_with_its_natural_key(settings: Settings) -> None:
    async with SkialithCheckpointer(settings=settings) as saver:
        stored = await saver.aput(_config("t-id"), _checkpoint(a=1), {}, {"a": "1"})
        await saver.aput_writes(stored, [("a", 2)], "task-1")
    msgs = await _stream_messages(settings)
    subjects = Subjects(settings.subject_prefix)
    tk, nk = token("t-id", field="thread_id"), token("", field="checkpoint_ns")
    ck = token(stored["configurable"]["checkpoint_id"], field="checkpoint_id")
    # one subject per thread and kind (a wildcard lookup walks the subjects under it); the
    # checkpoint, namespace and task ids make the message id
    assert [m.subject for m in msgs] == [subjects.checkpoint(tk), subjects.writes(tk)]
    # the natural key comes first (it helps debugging); a digest and a nonce make the id the call's own
    assert [codec.natural_key(m.headers["Nats-Msg-Id"]) for m in msgs] == [
        subjects.checkpoint_key(tk, nk, ck),
        subjects.writes_key(tk, nk, ck, token("task-1", field="task_id")),
    ]


async def test_a_threads_subjects_do_not_multiply_with_its_history(settings: Settings) -> None:
    # JetStream finds a thread's last message (asked on every read) by walking the subjects under
    # the thread's wildcard, so their number must not grow with checkpoints, namespaces or tasks
    async with SkialithCheckpointer(settings=settings) as saver:
        for ns in ("", "child:1", "child:2"):
            config = _config("t-long", ns=ns)
            for step in range(10):
                config = await saver.aput(config, _checkpoint(a=step), {"step": step}, {"a": "1"})
                await saver.aput_writes(config, [("a", step)], f"task-{step}")
        tk = token("t-long", field="thread_id")
        nc = await nats.connect(settings.nats_url)
        try:
            info = await nc.jetstream().stream_info(
                settings.stream, subjects_filter=Subjects(settings.subject_prefix).thread(tk)
            )
        finally:
            await nc.close()
        assert info.state.messages == 60
        assert info.state.subjects is not None and len(info.state.subjects) == 2, info.state.subjects
        latest = await saver.aget_tuple(_config("t-long", ns="child:1"))
        assert latest is not None and latest.checkpoint["channel_values"] == {"a": 9}
        assert latest.pending_writes == [("task-9", "a", 9)]


async def test_a_retried_put_leaves_one_checkpoint_and_one_write(settings: Settings) -> None:
    # each call publishes under an id of its own; the read model keeps one row per natural key
    async with SkialithCheckpointer(settings=settings) as saver:
        cp = _checkpoint(a=1)
        for _ in range(3):  # a client retrying after a timeout sends the same call again
            stored = await saver.aput(_config("t-retry"), cp, {"step": 0}, {"a": "1"})
            await saver.aput_writes(stored, [("a", 2)], "task-1")
    for projector_running in (False, True):
        projector = Projector(settings, fetch_timeout=0.2)
        if projector_running:
            await projector.start()
        try:
            reader_settings = settings.replace(read_wait=30.0 if projector_running else 0.0)
            async with SkialithCheckpointer(settings=reader_settings) as reader:
                found = [t async for t in reader.alist(_config("t-retry"))]
                assert [t.checkpoint["id"] for t in found] == [cp["id"]]
                assert found[0].pending_writes == [("task-1", "a", 2)]
                assert reader.read_stats.log == (0 if projector_running else 1)
        finally:
            if projector_running:
                await projector.stop()


async def test_only_changed_channels_are_published(settings: Settings) -> None:
    async with SkialithCheckpointer(settings=settings) as saver:
        big = "x" * 50_000
        cp = _checkpoint(big=big, small=1)
        first = await saver.aput(_config("t-delta"), cp, {}, {"big": "1", "small": "1"})
        cp2 = _checkpoint(big=big, small=2)
        cp2["channel_versions"] = {"big": "1", "small": "2"}
        await saver.aput(first, cp2, {}, {"small": "2"})
        msgs = await _stream_messages(settings)
        second = codec.loads(msgs[-1].data)
        assert isinstance(second, codec.CheckpointMsg)
        assert [b[0] for b in second.blobs] == ["small"]
        assert len(msgs[-1].data) < 1_000 < len(msgs[0].data)
        tup = await saver.aget_tuple(_config("t-delta"))
        assert tup is not None and tup.checkpoint["channel_values"] == {"big": big, "small": 2}


@pytest.mark.parametrize("size_mib", [5, 50], ids=["5MiB", "50MiB"])
@pytest.mark.parametrize("projector_running", [False, True], ids=["log", "database"])
async def test_a_checkpoint_above_max_payload_is_stored_and_read_back_whole(
    settings: Settings, projector_running: bool, size_mib: int
) -> None:
    """Above NATS's 1 MiB max_payload and MySQL's 16 MiB max_allowed_packet: stored and read back whole."""
    blob = os.urandom(size_mib * 1024 * 1024)
    write = os.urandom(3 * 1024 * 1024)  # a large pending write too
    projector = Projector(settings, fetch_timeout=0.2)
    if projector_running:
        await projector.start()
    settings = settings.replace(read_wait=60.0 if projector_running else 0.0)
    expected_paths = (1, 0) if projector_running else (0, 1)
    try:
        async with SkialithCheckpointer(settings=settings) as writer:
            stored = await writer.aput(_config("t-big"), _checkpoint(blob=blob), {}, {"blob": "1"})
            await writer.aput_writes(stored, [("blob", write)], "task")
        async with SkialithCheckpointer(settings=settings) as reader:
            tup = await reader.aget_tuple(_config("t-big"))
            assert tup is not None and tup.checkpoint["channel_values"]["blob"] == blob
            assert tup.pending_writes == [("task", "blob", write)]
            assert (reader.read_stats.database, reader.read_stats.log) == expected_paths
    finally:
        if projector_running:
            await projector.stop()


async def test_concurrent_publishes_each_return_the_sequence_of_their_own_message(settings: Settings) -> None:
    # PubAcks of one connection arrive on one inbox; each must reach the publish it answers
    log = await Log.open(settings, ensure_stream=True)
    try:
        bodies = [os.urandom(64 + i) for i in range(300)]
        subjects = [log.subjects.checkpoint(token(f"t{i % 7}", field="thread_id")) for i in range(300)]
        seqs = await asyncio.gather(
            *(
                log.publish(subject, body, codec.msg_id(subject))
                for subject, body in zip(subjects, bodies, strict=True)
            )
        )
        assert sorted(seqs) == list(range(min(seqs), min(seqs) + 300))
        stored = {m.seq: m.body async for m in log.read(f"{settings.subject_prefix}.>")}
        assert [stored[seq] for seq in seqs] == bodies
    finally:
        await log.close()


async def test_a_write_to_a_deleted_stream_fails_at_once_and_says_to_call_setup(settings: Settings) -> None:
    async with SkialithCheckpointer(settings=settings.replace(publish_timeout=10.0)) as saver:
        stored = await saver.aput(_config("t-gone"), _checkpoint(a=1), {}, {"a": "1"})
        nc = await nats.connect(settings.nats_url)
        try:
            await nc.jetstream().delete_stream(settings.stream)
        finally:
            await nc.close()
        started = time.monotonic()
        with pytest.raises(StreamNotFoundError, match=r"call setup\(\)"):
            await saver.aput_writes(stored, [("a", 2)], "task-1")
        assert time.monotonic() - started < 5  # the server says so: no wait for the PubAck timeout


async def test_publishes_take_the_own_puback_inbox_and_fall_back_to_nats_py_without_its_internals(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the pinned nats-py has the private parts the PubAck inbox uses, so the fast way is taken
    log = await Log.open(settings, ensure_stream=True)
    try:
        subject = log.subjects.checkpoint(token("t-own", field="thread_id"))
        first = await log.publish(subject, b"one", codec.msg_id(subject))
        assert getattr(log.nc, "acks", None) is not None
    finally:
        await log.close()
    # a nats-py that renamed one of them: publishes go through js.publish and still get their PubAck
    monkeypatch.setattr(log_module._Client, "own_publish", property(lambda self: False))
    log = await Log.open(settings, ensure_stream=True)
    try:
        second = await log.publish(subject, b"two", codec.msg_id(subject))
        assert second == first + 1
        assert getattr(log.nc, "acks", None) is None
    finally:
        await log.close()
