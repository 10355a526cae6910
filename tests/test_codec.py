"""Message bodies: what a checkpoint and its writes look like on the stream."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import WRITES_IDX_MAP, empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT

from skialith_langgraph import CodecError
from skialith_langgraph.codec import (
    CheckpointMsg,
    DeleteRunsMsg,
    PruneMsg,
    WritesMsg,
    dumps,
    encode_checkpoint,
    encode_writes,
    loads,
    msg_id,
    natural_key,
)

SERDE = JsonPlusSerializer()


def _checkpoint() -> tuple[dict, dict]:
    cp = empty_checkpoint()
    cp["channel_values"] = {"messages": [HumanMessage("hi"), AIMessage("hello")], "count": 3, "big": "x" * 10}
    cp["channel_versions"] = {"messages": "2", "count": "2", "big": "1"}
    return cp, {"messages": "2", "count": "2"}  # "big" did not change in this step


def test_only_channels_in_new_versions_travel_with_a_checkpoint() -> None:
    cp, new_versions = _checkpoint()
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "parent"}}
    msg = encode_checkpoint(SERDE, config, cp, {"source": "loop", "step": 1, "run_id": "r1"}, new_versions)
    assert sorted(b[0] for b in msg.blobs) == ["count", "messages"]
    back = loads(dumps(msg))
    assert isinstance(back, CheckpointMsg)
    assert back.parent_checkpoint_id == "parent" and back.run_id == "r1"
    values = {ch: SERDE.loads_typed((typ, data)) for ch, _, typ, data in back.blobs}
    assert values == {"messages": cp["channel_values"]["messages"], "count": 3}
    stored = SERDE.loads_typed(back.checkpoint)
    assert "channel_values" not in stored and stored["channel_versions"] == cp["channel_versions"]


def test_channel_in_new_versions_without_value_is_marked_empty() -> None:
    cp, _ = _checkpoint()
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    msg = encode_checkpoint(SERDE, config, cp, {}, {"gone": "3"})
    assert msg.blobs == [("gone", "3", "empty", b"")]


def test_metadata_nul_characters_are_stripped_as_langgraph_does() -> None:
    cp, nv = _checkpoint()
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    msg = encode_checkpoint(SERDE, config, cp, {"note": "a\x00b"}, nv)
    assert SERDE.loads_typed(msg.metadata)["note"] == "ab"


def test_writes_use_langgraph_special_indexes() -> None:
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c"}}
    msg = encode_writes(
        SERDE, config, [("a", 1), (ERROR, ValueError("x")), ("b", 2), (INTERRUPT, "i")], "task", "p"
    )
    assert [w[0] for w in msg.writes] == [0, WRITES_IDX_MAP[ERROR], 2, WRITES_IDX_MAP[INTERRUPT]]
    back = loads(dumps(msg))
    assert isinstance(back, WritesMsg) and back.task_path == "p" and len(back.writes) == 4


def test_unserializable_value_raises_the_serializers_error() -> None:
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c"}}
    with pytest.raises(TypeError):
        encode_writes(SERDE, config, [("a", object())], "task", "")


def test_operations_round_trip() -> None:
    for msg in (PruneMsg("t", [("", "c1")], [("", "ch", "1")]), DeleteRunsMsg(["r1", "r2"])):
        assert loads(dumps(msg)) == msg


def test_garbage_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        loads(b"\x00\x01not msgpack")
    with pytest.raises(CodecError):
        loads(dumps(DeleteRunsMsg([]))[:-3])


def test_msg_id_is_unique_to_each_call_and_starts_with_the_natural_key() -> None:
    # JetStream drops a repeated id inside its duplicate window even when the first message was
    # purged (a deleted thread) or superseded (A, B, A): so no two publishes share an id
    assert msg_id("s.a") != msg_id("s.a")
    assert natural_key(msg_id("s.a")) == "s.a"
    assert len(msg_id("s." + "a" * 5000)) < 100
