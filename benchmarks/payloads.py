"""Realistic checkpoints and writes, shaped the way LangGraph itself produces them.

A checkpoint carries a ``messages`` channel of LangChain ``HumanMessage``/``AIMessage`` objects
(the whole list, as the ``add_messages`` channel stores it) whose serialized size is close to a
target (1 KiB or 16 KiB), plus the ``__start__`` and ``branch:to:<node>`` bookkeeping channels of a
one-node graph. ``new_versions`` holds only the channel that changed, as in the Pregel loop, and
versions come from the saver's own ``get_next_version``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    create_checkpoint,
    empty_checkpoint,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

KIB = 1024
SIZES: dict[str, int] = {"1KiB": 1 * KIB, "16KiB": 16 * KIB}
_WORDS = (
    "the agent looked up the order status and found that the parcel left the warehouse on "
    "monday it should arrive within three business days unless the carrier reports a delay "
).split()
_SERDE = JsonPlusSerializer()


def _text(n_chars: int, seed: int) -> str:
    words: list[str] = []
    length = 0
    i = seed
    while length < n_chars:
        w = _WORDS[i % len(_WORDS)]
        words.append(w)
        length += len(w) + 1
        i += 7
    return " ".join(words)[:n_chars]


def serialized_size(value: Any) -> int:
    """Return the size in bytes of ``value`` under LangGraph's default serializer."""
    return len(_SERDE.dumps_typed(value)[1])


def make_messages(target_bytes: int, *, seed: int = 0, chars_per_message: int = 240) -> list[BaseMessage]:
    """Return alternating Human/AI messages whose serialized list is about ``target_bytes``.

    Args:
        target_bytes: the wanted serialized size of the whole list.
        seed: varies the text so that payloads are not identical.
        chars_per_message: content length of each message before the last one is trimmed.
    """
    messages: list[BaseMessage] = []
    while True:
        cls = HumanMessage if len(messages) % 2 == 0 else AIMessage
        candidate = [
            *messages,
            cls(content=_text(chars_per_message, seed + len(messages)), id=str(uuid.uuid4())),
        ]
        if serialized_size(candidate) > target_bytes and messages:
            break
        messages = candidate
    # pad the last message so that the list lands just under the target
    last = messages[-1]
    room = target_bytes - serialized_size(messages)
    if room > 0:
        padded = type(last)(content=str(last.content) + " " + _text(room - 1, seed + 99), id=last.id)
        trial = [*messages[:-1], padded]
        while serialized_size(trial) > target_bytes:
            padded = type(last)(content=str(padded.content)[:-8], id=last.id)
            trial = [*messages[:-1], padded]
        messages = trial
    return messages


@dataclass(slots=True)
class CheckpointChain:
    """Successive checkpoints of one thread, each a child of the previous one.

    Args:
        saver: the saver whose ``get_next_version`` numbers the channel versions.
        thread_id: the thread.
        messages: the value of the ``messages`` channel in every checkpoint.
    """

    saver: BaseCheckpointSaver[Any]
    thread_id: str
    messages: list[BaseMessage]
    checkpoint: Checkpoint = field(default_factory=empty_checkpoint)
    step: int = -1
    config: RunnableConfig = field(default_factory=RunnableConfig)

    def __post_init__(self) -> None:
        self.config = {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": ""}}
        start_v = self.saver.get_next_version(None, None)
        self.checkpoint["channel_versions"] = {"__start__": start_v}
        self.checkpoint["versions_seen"] = {"__input__": {}, "__start__": {"__start__": start_v}}

    def next(self) -> tuple[RunnableConfig, Checkpoint, CheckpointMetadata, ChannelVersions]:
        """Return the arguments of the next ``aput`` on this thread (parent = last returned config)."""
        self.step += 1
        versions = dict(self.checkpoint["channel_versions"])
        new_version = self.saver.get_next_version(versions.get("messages"), None)
        versions["messages"] = new_version
        versions["branch:to:agent"] = new_version
        base = dict(self.checkpoint)
        base["channel_versions"] = versions
        base["versions_seen"] = {
            **self.checkpoint["versions_seen"],
            "agent": {"branch:to:agent": versions["branch:to:agent"]},
        }
        base["channel_values"] = {"messages": self.messages}
        ckpt = create_checkpoint(base, None, self.step)  # type: ignore[arg-type]  # a Checkpoint dict
        ckpt["updated_channels"] = ["messages"]
        metadata: CheckpointMetadata = {"source": "loop", "step": self.step, "parents": {}}
        # every channel whose version changed, as LangGraph passes them (the savers store a blob,
        # "empty" where the checkpoint holds no value, for each)
        new_versions = {"messages": new_version, "branch:to:agent": new_version}
        if self.step == 0:
            new_versions["__start__"] = versions["__start__"]
        return self.config, ckpt, metadata, new_versions

    def advance(self, returned: RunnableConfig, checkpoint: Checkpoint) -> None:
        """Record the config an ``aput`` returned, so the next checkpoint is its child."""
        self.config = returned
        self.checkpoint = checkpoint


def make_writes(target_bytes: int, *, seed: int = 1) -> list[tuple[str, Any]]:
    """Return the writes of one node that adds messages of about ``target_bytes`` in total."""
    return [("messages", make_messages(target_bytes, seed=seed))]


def new_task_id() -> str:
    """Return a fresh task id, as LangGraph derives one per task."""
    return str(uuid.uuid4())
