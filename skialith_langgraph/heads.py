"""Own-writes heads: the latest checkpoint of threads this process writes, kept exact in memory.

LangGraph reads the latest checkpoint of a thread at the start of every run, right after the
previous run wrote it, usually before the projector has applied it. A head lets such a read skip
both the wait and the log replay, without ever being stale:

* A head is created only for a thread with no message at all on the stream (a fresh thread), so it
  starts out knowing the whole thread.
* A publish on a thread with a head, when none of ours is in flight on it, carries
  ``Nats-Expected-Last-Subject-Sequence`` for the thread's subjects: JetStream stores it only if
  nothing else was written on the thread since the head's sequence. If another process wrote in
  between, the publish is retried without the expectation and the head is dropped.
* A publish made while one of ours is in flight (LangGraph saves a task's writes and the next
  checkpoint at once) is not held back: it goes out at once, without the expectation, and is folded
  in after the one before it. One connection keeps our publishes in order, so only a foreign
  message stored between the two could be missed; if the two sequences are not adjacent, the gap
  is remembered and checked by the next read (one direct get, alongside the read's own).
* A read uses the head only if the thread's last sequence on the stream (asked of JetStream on every
  read) is still the head's, every remembered gap holds nothing but ours, no publish of ours is in
  flight, and no cross-thread operation arrived since the head was made.

Anything the head cannot answer exactly (an older checkpoint, a fork whose blobs it no longer
holds, deletes, prunes, copies) drops it, and reads take the ordinary path.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.base import CheckpointTuple, PendingWrite
from langgraph.checkpoint.serde.base import SerializerProtocol

from .codec import CheckpointMsg, WritesMsg, version_key

MAX_HEADS = 1024
# bytes of checkpoints, values and writes all heads of one core may hold; least recently used
# heads are dropped beyond it, and a head bigger than this on its own is not kept
MAX_HEAD_BYTES = 64 * 2**20
_ENTRY_BYTES = 64  # a rough cost of one stored entry beyond its bytes (keys, tuples)
MAX_GAPS = 8  # gaps a head may wait to have checked; beyond that it is dropped

Typed = tuple[str, bytes]


@dataclass(slots=True)
class NsHead:
    checkpoint_id: str
    parent_checkpoint_id: str | None
    checkpoint: Typed
    metadata: Typed
    versions: dict[str, str]  # channel -> version key, of this checkpoint
    blobs: dict[tuple[str, str], Typed]  # (channel, version key) -> value, only those in ``versions``


@dataclass(slots=True)
class ThreadHead:
    seq: int  # the last stream sequence on the thread's subjects; everything up to it is known
    global_seq: int  # the last cross-thread operation when the head was made
    ns: dict[str, NsHead] = field(default_factory=dict)
    # (ns, checkpoint_id) -> (task_id, idx) -> (task_id, channel, value, task_path)
    writes: dict[tuple[str, str], dict[tuple[str, int], tuple[str, str, Typed, str]]] = field(
        default_factory=dict
    )
    # the last publish of ours on the thread, in send order: its sequence once folded in, -1 if it
    # failed (the head is dropped then); None before the first
    tail: asyncio.Future[int] | None = None
    sending: int = 0  # publishes of ours sent and not yet folded in
    # (a, b): sequences of two consecutive publishes of ours, sent back to back, that are not
    # adjacent on the stream; exact only if nothing on the thread lies between (checked by reads)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    nbytes: int = 0  # what the head holds, as counted by its owner (see Heads)
    owner: Heads | None = field(default=None, repr=False)
    thread_id: str = ""

    def _resized(self) -> None:
        size = 0
        for ns_head in self.ns.values():
            size += len(ns_head.checkpoint[1]) + len(ns_head.metadata[1]) + _ENTRY_BYTES
            size += sum(len(data) + _ENTRY_BYTES for _, data in ns_head.blobs.values())
        for stored in self.writes.values():
            size += sum(len(value[1]) + _ENTRY_BYTES for _, _, value, _ in stored.values())
        if self.owner is not None:
            self.owner.resized(self, size)
        else:
            self.nbytes = size

    def apply_checkpoint(self, msg: CheckpointMsg, channel_versions: dict[str, Any]) -> bool:
        """Fold a checkpoint we published into the head; False if the head cannot stay exact."""
        current = self.ns.get(msg.checkpoint_ns)
        if current is not None and msg.checkpoint_id < current.checkpoint_id:
            return False  # not the latest of its namespace any more
        blobs = dict(current.blobs) if current is not None else {}
        for channel, version, typ, data in msg.blobs:
            blobs[(channel, version)] = (typ, data)
        versions = {ch: version_key(v) for ch, v in channel_versions.items()}
        wanted = {(ch, v) for ch, v in versions.items()}
        if not wanted <= blobs.keys():
            return False  # e.g. a fork back to versions this head no longer holds
        self.ns[msg.checkpoint_ns] = NsHead(
            checkpoint_id=msg.checkpoint_id,
            parent_checkpoint_id=msg.parent_checkpoint_id,
            checkpoint=msg.checkpoint,
            metadata=msg.metadata,
            versions=versions,
            blobs={k: blobs[k] for k in wanted},
        )
        for key in [k for k in self.writes if k[0] == msg.checkpoint_ns and k[1] < msg.checkpoint_id]:
            del self.writes[key]
        self._resized()
        return True

    def apply_writes(self, msg: WritesMsg) -> None:
        current = self.ns.get(msg.checkpoint_ns)
        if current is not None and msg.checkpoint_id < current.checkpoint_id:
            return  # writes to an older checkpoint: not part of the latest
        stored = self.writes.setdefault((msg.checkpoint_ns, msg.checkpoint_id), {})
        for idx, channel, typ, data in msg.writes:
            key = (msg.task_id, idx)
            if idx >= 0 and key in stored:
                continue  # LangGraph: ordinary writes keep the first value
            stored[key] = (msg.task_id, channel, (typ, data), msg.task_path)
        self._resized()

    def get_tuple(
        self, serde: SerializerProtocol, thread_id: str, ns: str, checkpoint_id: str | None
    ) -> CheckpointTuple | None | bool:
        """The tuple, ``None`` if the thread has no such checkpoint, or ``False`` if unknown here."""
        head = self.ns.get(ns)
        if head is None:
            return None if checkpoint_id is None else False
        if checkpoint_id is not None and checkpoint_id != head.checkpoint_id:
            return False
        checkpoint = serde.loads_typed(head.checkpoint)
        values = {}
        for channel, version in head.versions.items():
            blob = head.blobs.get((channel, version))
            if blob is not None and blob[0] != "empty":
                values[channel] = serde.loads_typed(blob)
        stored = self.writes.get((ns, head.checkpoint_id), {})
        ordered = sorted(stored.items(), key=lambda kv: (kv[1][3], kv[0][0], kv[0][1]))
        pending: list[PendingWrite] = [
            (task_id, ch, serde.loads_typed(v)) for _, (task_id, ch, v, _) in ordered
        ]
        conf = {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": head.checkpoint_id}
        parent = (
            {"configurable": {**conf, "checkpoint_id": head.parent_checkpoint_id}}
            if head.parent_checkpoint_id
            else None
        )
        return CheckpointTuple(
            config={"configurable": conf},
            checkpoint={**checkpoint, "channel_values": values},  # type: ignore[typeddict-item]
            metadata=serde.loads_typed(head.metadata),
            parent_config=parent,  # type: ignore[arg-type]
            pending_writes=pending,
        )


class Heads:
    """Heads of the threads one core writes, least recently used dropped first: at most
    ``max_heads`` of them, holding at most ``max_bytes`` together (``MAX_HEAD_BYTES``)."""

    def __init__(self, max_heads: int = MAX_HEADS, max_bytes: int | None = None) -> None:
        self._heads: OrderedDict[str, ThreadHead] = OrderedDict()
        self._max = max_heads
        self._max_bytes = MAX_HEAD_BYTES if max_bytes is None else max_bytes
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """The bytes all heads hold (checkpoints, values and writes, roughly counted)."""
        return self._bytes

    def get(self, thread_id: str) -> ThreadHead | None:
        head = self._heads.get(thread_id)
        if head is not None:
            self._heads.move_to_end(thread_id)
        return head

    def create(self, thread_id: str, global_seq: int) -> ThreadHead:
        self.drop(thread_id)
        head = self._heads[thread_id] = ThreadHead(
            seq=0, global_seq=global_seq, owner=self, thread_id=thread_id
        )
        while len(self._heads) > self._max:
            self._evict()
        return head

    def resized(self, head: ThreadHead, nbytes: int) -> None:
        """Count a head's new size; drop heads, least recently used first, beyond the byte cap."""
        if self._heads.get(head.thread_id) is not head:
            head.nbytes = nbytes  # dropped already: counted nowhere
            return
        self._bytes += nbytes - head.nbytes
        head.nbytes = nbytes
        if nbytes > self._max_bytes:
            self.drop(head.thread_id)  # too big to keep on its own: its reads take the ordinary path
        while self._bytes > self._max_bytes and self._heads:
            self._evict()

    def _evict(self) -> None:
        _, head = self._heads.popitem(last=False)
        self._bytes -= head.nbytes

    def drop(self, thread_id: str) -> None:
        head = self._heads.pop(thread_id, None)
        if head is not None:
            self._bytes -= head.nbytes

    def clear(self) -> None:
        self._heads.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._heads)
