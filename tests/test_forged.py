"""Forged messages never run code (issue 9, item 7).

Anyone who can publish on a thread's subject can put msgpack ext code 0 (LangGraph's
``EXT_CONSTRUCTOR_SINGLE_ARG``: module, name, arg -> ``module.name(arg)``) in a checkpoint's
metadata, body or channel values. LangGraph's permissive serializer calls that; the trace ingest
and every reader decode with the strict one by default, so nothing is constructed.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from support import wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithAgent, SkialithCheckpointer, codec
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.subjects import token
from skialith_langgraph.traces import TraceIngest

THREAD = "victim"


def _evil(marker: Path) -> ormsgpack.Ext:
    """``builtins.exec("...touch marker...")`` as LangGraph's ext code 0 encodes a constructor call."""
    code = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"
    return ormsgpack.Ext(0, ormsgpack.packb(["builtins", "exec", code]))


def _forged(marker: Path) -> codec.CheckpointMsg:
    """A checkpoint of THREAD whose metadata, body and one channel value each carry the call."""
    cp: dict[str, Any] = dict(empty_checkpoint())
    cp.pop("channel_values")
    cp["channel_versions"] = {"v": "1"}
    cp["evil"] = _evil(marker)
    return codec.CheckpointMsg(
        thread_id=THREAD,
        checkpoint_ns="",
        checkpoint_id=cp["id"],
        parent_checkpoint_id=None,
        run_id=None,
        checkpoint=("msgpack", ormsgpack.packb(cp)),
        metadata=("msgpack", ormsgpack.packb({"source": "input", "step": -1, "evil": _evil(marker)})),
        blobs=[("v", "1", "msgpack", ormsgpack.packb({"evil": _evil(marker)}))],
    )


async def _publish(settings: Settings, msg: codec.CheckpointMsg) -> int:
    log = await Log.open(settings, ensure_stream=True)
    try:
        subject = log.subjects.checkpoint(token(msg.thread_id, field="thread_id"))
        ack = await log.js.publish(subject, codec.dumps(msg), stream=settings.stream)
        return int(ack.seq)
    finally:
        await log.close()


def test_the_forged_payload_runs_code_under_langgraphs_permissive_serializer(tmp_path: Path) -> None:
    """The control: the payload of these tests does run code when decoded permissively."""
    marker = tmp_path / "control"
    metadata = _forged(marker).metadata
    JsonPlusSerializer(allowed_msgpack_modules=True).loads_typed(metadata)
    assert marker.exists()


async def test_the_trace_ingest_runs_no_forged_code(settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-by-traces"
    await _publish(settings, _forged(marker))
    ingest = TraceIngest(settings, fetch_timeout=0.1)
    await ingest.start()
    try:
        await ingest.catch_up(timeout=60)
        rows = await ingest.traces(thread_id=THREAD)
    finally:
        await ingest.stop()
    assert not marker.exists()
    assert [(r.kind, r.name) for r in rows] == [("checkpoint", "input")]  # plain metadata still read


@pytest.mark.parametrize("served_by", ["log", "database"])
async def test_a_reader_runs_no_forged_code(settings: Settings, tmp_path: Path, served_by: str) -> None:
    marker = tmp_path / f"pwned-by-reader-{served_by}"
    seq = await _publish(settings, _forged(marker))
    if served_by == "database":
        projector = Projector(settings, fetch_timeout=0.1)
        await projector.start()
        model = ReadModel.from_url(settings.database_url)
        try:
            await wait_for_watermark(model, seq, timeout=60)
        finally:
            await projector.stop()
            await model.close()
    config: Any = {"configurable": {"thread_id": THREAD, "checkpoint_ns": ""}}
    async with SkialithCheckpointer(settings=dataclasses.replace(settings, read_wait=0.0)) as reader:
        found = await reader.aget_tuple(config)
        history = [t async for t in reader.alist(config)]
    assert found is not None and len(history) == 1
    assert not marker.exists()
    assert found.metadata["source"] == "input"
    assert found.checkpoint["channel_values"]["v"]["evil"] is not None  # the data, not a call


async def test_an_agent_runs_no_forged_code(settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-by-agent"
    event = codec.EventMsg(
        agent_id="victim",
        kind="checkpoint",
        name="",
        step=0,
        payload=("msgpack", ormsgpack.packb({"evil": _evil(marker)})),
        ts=1.0,
    )
    log = await Log.open(settings, ensure_stream=True)
    try:
        key = token("victim", field="agent_id")
        seq = (await log.js.publish(log.subjects.agent_checkpoint(key), codec.dumps(event))).seq
    finally:
        await log.close()
    projector = Projector(settings, fetch_timeout=0.1)
    await projector.start()
    model = ReadModel.from_url(settings.database_url)
    try:
        await wait_for_watermark(model, seq, timeout=60)
    finally:
        await projector.stop()
        await model.close()
    async with SkialithAgent("victim", settings=settings) as agent:
        state = await agent.resume()
    assert state.last_step == 0
    assert not marker.exists()


@dataclasses.dataclass
class Note:
    text: str


async def test_user_types_are_data_by_default_and_themselves_when_allowed(settings: Settings) -> None:
    """The strict default constructs only LangGraph's safe types; ``with_allowlist`` adds the
    user's, even on a checkpointer that was already used (the clone has its own connections)."""
    config: Any = {"configurable": {"thread_id": "notes", "checkpoint_ns": ""}}
    cp = empty_checkpoint()
    cp["channel_values"] = {"note": Note("hi"), "when": datetime(2024, 1, 2, tzinfo=UTC)}
    cp["channel_versions"] = {"note": "1", "when": "1"}
    async with SkialithCheckpointer(settings=settings) as saver:
        await saver.aput(config, cp, {}, {"note": "1", "when": "1"})
        plain = await saver.aget_tuple(config)
        assert plain is not None
        assert plain.checkpoint["channel_values"]["note"] == {"text": "hi"}  # data, not a Note
        assert plain.checkpoint["channel_values"]["when"] == datetime(2024, 1, 2, tzinfo=UTC)  # safe type
        allowed = saver.with_allowlist([(Note.__module__, "Note")])
        assert isinstance(allowed, SkialithCheckpointer)
        try:
            found = await allowed.aget_tuple(config)
        finally:
            await allowed.aclose()
        assert found is not None and found.checkpoint["channel_values"]["note"] == Note("hi")
