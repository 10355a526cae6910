"""SkialithCheckpointer: LangGraph writes go to NATS JetStream; reads come from the SQL read model.

One coroutine per operation lives on :class:`_Core`; the async face runs it on the caller's loop
(one NATS client and engine per loop), the sync face on a loop thread the checkpointer owns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import StaticPool

from . import codec, identity
from ._loop import Connections, LoopThread, close_nats
from .codec import strict_serde
from .config import Settings
from .errors import ConfigError
from .heads import MAX_GAPS, Heads, ThreadHead
from .identity import StreamIdentity
from .log import ExpectationFailed, Log
from .readmodel import PROJECTION, ReadModel, queries
from .readmodel.hot import HotConnections
from .subjects import check_length, token
from .views import MODEL_ERRORS, ReadStats, Scratch, consistent_view, model_answered, model_failed

logger = logging.getLogger(__name__)


_MISS = object()  # a read the read model could not answer
# loop turns LangGraph needs between a put returning and its next queued put calling aput
# (_checkpointer_put_after_previous awaits the previous put's task, then calls aput)
_PUT_START_TURNS = 5
PRUNE_ATTEMPTS = 20  # plans of one prune before it gives up on a thread written without pause


@dataclass(slots=True)
class _Pending:
    """A read begun on the read model: its connection (``stack`` closes a pool connection; a hot
    one, ``stack`` None, goes back to the core's :class:`HotConnections`) and first statement."""

    stack: AsyncExitStack | None
    conn: AsyncConnection
    stream: StreamIdentity
    row: Any
    mark: int | None


async def _quietly(aw: Awaitable[Any]) -> None:
    """Await ``aw``; a failure (a connection lost while returned to the pool) is only logged."""
    try:
        await aw
    except Exception as exc:
        logger.debug("returning a read-model connection failed: %r", exc)


def _thread_id(value: Any) -> str:
    if value is None:
        raise ConfigError("config['configurable']['thread_id'] is required by the checkpointer")
    return value if isinstance(value, str) else str(value)


class _Core:
    """The operations, bound to one event loop (its NATS client and its engine)."""

    def __init__(self, settings: Settings, serde: SerializerProtocol, stats: ReadStats) -> None:
        self.settings = settings
        self.stats = stats
        self.serde = serde
        self.log: Log | None = None
        self.model = ReadModel.from_url(settings.database_url, connect_timeout=settings.connect_timeout)
        self.heads = Heads()
        self.inflight: dict[tuple[str, str, str], asyncio.Future[None]] = {}
        # the connections of both engines, to close them if the loop is closed under them
        self.connections = [Connections(self.model.engine)]
        if self.model.hot_engine is not None:
            self.connections.append(Connections(self.model.hot_engine))
        self.hot = HotConnections(self.model)  # the connections held for reads (readmodel.hot)
        self.scratch = Scratch(on_create=lambda m: self.connections.append(Connections(m.engine)))
        self.keeper: AsyncIterator[None] | None = None
        self.stream: StreamIdentity | None = None  # the stream the heads were built on
        self.releasing: set[asyncio.Future[None]] = set()  # read connections being returned
        self.early_reads = True  # see get_tuple
        self._lock = asyncio.Lock()

    async def _log(self) -> Log:
        log = self.log
        if log is not None:
            return log
        async with self._lock:
            if self.log is None:
                self.log = await Log.open(self.settings, ensure_stream=True)
        return self.log

    async def setup(self) -> None:
        await self._log()
        await self.model.setup()

    async def close(self) -> None:
        if self.releasing:
            await asyncio.gather(*self.releasing)
        await self.hot.close()
        if self.log is not None:
            await self.log.close()
            self.log = None
        await self.model.close()
        await self.scratch.close()

    async def close_orphaned(self) -> None:
        """Close what this core holds after its loop was closed without closing it (a loop made by
        hand and closed without ``shutdown_asyncgens``): its NATS socket and tasks and its database
        connections, directly, since nothing can run on that loop any more (see _loop.py). Runs
        on another, running loop."""
        log, self.log = self.log, None
        if log is not None:
            close_nats(log.nc)
        for connections in self.connections:
            await connections.close_orphans()
        self.hot.forget()  # their sockets were closed above

    # -- writes -----------------------------------------------------------------------------

    async def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id = _thread_id(conf.get("thread_id"))
        ns = conf.get("checkpoint_ns", "")
        checkpoint_id = check_length(checkpoint["id"], field="checkpoint id")
        parent = conf.get("checkpoint_id")
        if parent is not None:
            check_length(parent, field="checkpoint_id")
        msg = codec.encode_checkpoint(self.serde, config, checkpoint, metadata, new_versions)
        msg.thread_id = thread_id
        # what the read model cannot hold is refused here: published, it could never be applied
        if msg.run_id is not None:
            check_length(msg.run_id, field="metadata run_id")
        codec.check_type(msg.checkpoint[0], field="the checkpoint")
        codec.check_type(msg.metadata[0], field="the metadata")
        for channel, version, typ, _ in msg.blobs:
            check_length(channel, field="channel")
            check_length(version, field=f"the version of channel {channel!r}")
            codec.check_type(typ, field=f"channel {channel!r}")
        log = await self._log()
        tk, nk = token(thread_id, field="thread_id"), token(ns, field="checkpoint_ns")
        natural = log.subjects.checkpoint_key(tk, nk, token(checkpoint_id, field="checkpoint_id"))
        subject = log.subjects.checkpoint(tk)
        body = codec.dumps(msg)
        versions = checkpoint["channel_versions"]
        # writes to this checkpoint wait for it (see put_writes); registered before the first await
        key = (thread_id, ns, checkpoint_id)
        done = self.inflight[key] = asyncio.get_running_loop().create_future()
        try:
            await self._publish_own(
                log, thread_id, tk, subject, natural, body, lambda h: h.apply_checkpoint(msg, versions)
            )
        finally:
            done.set_result(None)
            if self.inflight.get(key) is done:
                del self.inflight[key]
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}

    async def _publish_own(
        self,
        log: Log,
        thread_id: str,
        tk: str,
        subject: str,
        natural: str,
        body: bytes,
        fold: Callable[[ThreadHead], bool | None],
    ) -> None:
        """Publish a write on a thread under a message id of its own (``natural`` key first); keep
        the thread's head (if any) exact, or drop it (see heads.py)."""
        msg_id = codec.msg_id(natural)
        head = self.heads.get(thread_id)
        if head is None:
            await log.publish(subject, body, msg_id)
            return
        prev, mine = head.tail, asyncio.get_running_loop().create_future()
        head.tail = mine
        head.sending += 1
        seq = -1
        try:
            if prev is None or prev.done():
                # nothing of ours in flight: the head's sequence is the thread's last, if no one else wrote
                try:
                    seq = await log.publish(subject, body, msg_id, expect=(head.seq, log.subjects.thread(tk)))
                except ExpectationFailed:
                    self.heads.drop(thread_id)  # another writer on this thread: no longer exact
                    await log.publish(subject, body, codec.msg_id(natural))
                    return
                if prev is not None and prev.result() < 0:
                    return
            else:
                # ours in flight: send now, fold in after it (the connection keeps the order)
                seq = await log.publish(subject, body, msg_id)
                before = await asyncio.shield(prev)
                if before < 0:
                    return
                if seq != before + 1:
                    head.gaps.append((before, seq))
            head.seq = seq
            if self.heads.get(thread_id) is head and (fold(head) is False or len(head.gaps) > MAX_GAPS):
                self.heads.drop(thread_id)
        except BaseException:
            seq = -1
            self.heads.drop(thread_id)
            raise
        finally:
            head.sending -= 1
            if not mine.done():
                mine.set_result(seq)

    async def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str
    ) -> None:
        conf = config["configurable"]
        thread_id = _thread_id(conf.get("thread_id"))
        ns = conf.get("checkpoint_ns", "")
        checkpoint_id = check_length(conf["checkpoint_id"], field="checkpoint_id")
        check_length(task_id, field="task_id")
        for channel, _ in writes:
            check_length(channel, field="channel")
        msg = codec.encode_writes(self.serde, config, writes, task_id, task_path)
        for _, channel, typ, _ in msg.writes:
            codec.check_type(typ, field=f"the write to {channel!r}")
        await self._after_its_checkpoint(thread_id, ns, checkpoint_id)
        msg.thread_id = thread_id
        log = await self._log()
        tk, nk = token(thread_id, field="thread_id"), token(ns, field="checkpoint_ns")
        natural = log.subjects.writes_key(
            tk, nk, token(checkpoint_id, field="checkpoint_id"), token(task_id, field="task_id")
        )
        subject = log.subjects.writes(tk)
        body = codec.dumps(msg)
        await self._publish_own(log, thread_id, tk, subject, natural, body, lambda h: h.apply_writes(msg))

    async def _after_its_checkpoint(self, thread_id: str, ns: str, checkpoint_id: str) -> None:
        """Wait until the put of the checkpoint that writes hang on, if in flight, is acknowledged.

        With durability="async" LangGraph runs a step's tasks while the put of their checkpoint is
        still in flight, or not even called: it calls ``aput`` only once the previous put returned.
        Acknowledging their writes first would let a crash in between lose the checkpoint and re-run
        tasks whose writes were acknowledged. So writes also wait for earlier puts on the thread,
        then give LangGraph's queued put a few loop turns to start before looking again.
        """
        key = (thread_id, ns, checkpoint_id)
        while True:
            pending = self.inflight.get(key)
            if pending is not None:
                await asyncio.shield(pending)
                return
            earlier = self._earlier_puts(thread_id, ns, checkpoint_id)
            if not earlier:
                return
            await asyncio.shield(asyncio.gather(*earlier))
            for _ in range(_PUT_START_TURNS):
                await asyncio.sleep(0)
                if key in self.inflight or self._earlier_puts(thread_id, ns, checkpoint_id):
                    break

    def _earlier_puts(self, thread_id: str, ns: str, checkpoint_id: str) -> list[asyncio.Future[None]]:
        return [
            f for (t, n, c), f in self.inflight.items() if t == thread_id and n == ns and c < checkpoint_id
        ]

    async def _publish_thread_op(
        self, thread_id: str, op: str, msg: codec.Msg, expect_seq: int | None = None
    ) -> int:
        self.heads.drop(thread_id)
        log = await self._log()
        tk = token(thread_id, field="thread_id")
        subject = log.subjects.thread_op(tk, op)
        body = codec.dumps(msg)
        expect = None if expect_seq is None else (expect_seq, log.subjects.thread(tk))
        return await log.publish(subject, body, codec.msg_id(subject), expect=expect)

    async def delete_thread(self, thread_id: str, *, expect_seq: int | None = None) -> None:
        """Publish a tombstone and purge what it deletes. With ``expect_seq`` (the retention
        sweeper's), only if the thread's last message still has that sequence: otherwise
        :class:`ExpectationFailed` and nothing is deleted (a write landed after it was judged idle)."""
        thread_id = _thread_id(thread_id)
        seq = await self._publish_thread_op(thread_id, "delete", codec.DeleteThreadMsg(thread_id), expect_seq)
        log = await self._log()
        # the delete itself stays as a tombstone; what it deletes leaves the stream
        await log.purge(log.subjects.thread(token(thread_id, field="thread_id")), before_seq=seq)

    async def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        self.heads.clear()
        log = await self._log()
        subject = log.subjects.global_op("runs")
        body = codec.dumps(codec.DeleteRunsMsg([str(r) for r in run_ids]))
        await log.publish(subject, body, codec.msg_id(subject))

    async def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        source, target = _thread_id(source_thread_id), _thread_id(target_thread_id)
        async with self.view(source) as conn:
            msgs = await queries.export_thread(conn, source, target)
        await self.republish(target, msgs)

    async def republish(self, thread_id: str, msgs: Sequence[codec.CheckpointMsg | codec.WritesMsg]) -> None:
        """Publish checkpoints and writes (addressed to ``thread_id``) as its puts and put_writes
        would, in order: what copy_thread and an import store."""
        self.heads.drop(thread_id)
        log = await self._log()
        tk = token(thread_id, field="thread_id")
        for msg in msgs:
            nk = token(msg.checkpoint_ns, field="checkpoint_ns")
            ck = token(msg.checkpoint_id, field="checkpoint_id")
            if isinstance(msg, codec.CheckpointMsg):
                subject, natural = log.subjects.checkpoint(tk), log.subjects.checkpoint_key(tk, nk, ck)
            else:
                task = token(msg.task_id, field="task_id")
                subject, natural = log.subjects.writes(tk), log.subjects.writes_key(tk, nk, ck, task)
            await log.publish(subject, codec.dumps(msg), codec.msg_id(natural))

    async def prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ConfigError(f"prune strategy must be 'keep_latest' or 'delete', got {strategy!r}")
        for raw in thread_ids:
            thread_id = _thread_id(raw)
            if strategy == "delete":
                await self.delete_thread(thread_id)
                continue
            await self._prune_keep_latest(thread_id)

    async def _prune_keep_latest(
        self, thread_id: str, keep: int = 1, *, attempts: int = PRUNE_ATTEMPTS
    ) -> int:
        """Publish a prune whose keep-set is exactly what the thread held when it is stored, then
        trim the thread's older messages from the stream (see :meth:`_trim`). ``keep``: the latest
        checkpoints kept per namespace (the retention sweeper's keep-last-N; ``prune`` keeps 1).
        Returns how many checkpoints it removed; with ``keep > 1`` and none to remove, publishes
        nothing.

        The plan is read at the thread's last sequence and published with that sequence as an
        expectation, so JetStream stores it only if nothing was written on the thread in between:
        a put acknowledged after the plan was read fails the prune (which is planned again), and
        a prune never deletes a checkpoint it did not see.
        """
        log = await self._log()
        tk = token(thread_id, field="thread_id")
        thread_filter = log.subjects.thread(tk)
        subject = log.subjects.thread_op(tk, "prune")
        for attempt in range(attempts):
            thread_seq, global_seq = await log.last_seqs(thread_filter, log.subjects.global_ops)
            async with self.view(thread_id, target=max(thread_seq, global_seq)) as conn:
                plan = await queries.prune_plan(conn, self.serde, thread_id, "keep_latest", keep=keep)
                removed = await queries.checkpoint_count(conn, thread_id) - len(set(plan.keep))
                if keep > 1 and removed <= 0:
                    return 0
                kept = await queries.export_kept(conn, plan)
            self.heads.drop(thread_id)
            body = codec.dumps(plan)
            msg_id = codec.msg_id(subject)
            try:
                pruned_at = await log.publish(subject, body, msg_id, expect=(thread_seq, thread_filter))
            except ExpectationFailed:
                # written in between: plan again, after a short random pause
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            await self._trim(log, thread_id, tk, pruned_at, global_seq, kept)
            return removed
        raise ExpectationFailed(
            f"prune of thread {thread_id!r} gave up after {attempts} attempts: the thread was "
            "written between each plan and its publish; nothing was pruned, retry when it is quieter",
            url=log.url,
            subject=subject,
        )

    async def _trim(
        self,
        log: Log,
        thread_id: str,
        tk: str,
        pruned_at: int,
        global_seq: int,
        kept: list[codec.CheckpointMsg | codec.WritesMsg],
    ) -> None:
        """Store again what the prune at ``pruned_at`` kept, then purge the thread's messages before it.

        Without this every message ever written on a pruned thread stays on the stream, and every
        read of the thread served from the log replays its whole history. The kept checkpoints,
        blobs and pending writes are published again on the thread's replay subject, each with
        the previous one's sequence as an expectation, so nothing interleaves; then what the prune
        superseded leaves the stream. A reader replaying the thread, or a projector that had not
        reached the prune (or starts from scratch), applies the prune and then the kept content
        (idempotent upserts), and ends as one that saw the whole history. The delete tombstone,
        if any, stays (a lagging projector must still apply it). The parts of large messages go
        too: a large put in flight with its parts before the prune and its final message after
        it finds the prune between the two and publishes itself again whole
        (``Log._deleted_between``).

        When something else is written on the thread meanwhile, the chain stops and nothing is
        purged: the older messages still hold the kept content (correct, only less compact).
        """
        global_ops = log.subjects.global_ops
        if await log.last_seq(global_ops) > global_seq:
            # a cross-thread delete after the plan: storing the plan's checkpoints again could undo it
            return
        last = pruned_at
        replay = log.subjects.replay(tk)
        stored: list[codec.CheckpointMsg | codec.WritesMsg] = []
        try:
            for msg in kept:
                nk = token(msg.checkpoint_ns, field="checkpoint_ns")
                ck = token(msg.checkpoint_id, field="checkpoint_id")
                if isinstance(msg, codec.CheckpointMsg):
                    natural = log.subjects.checkpoint_key(tk, nk, ck)
                else:
                    natural = log.subjects.writes_key(tk, nk, ck, token(msg.task_id, field="task_id"))
                body = codec.dumps(msg)
                # the original put had this key and body: an id of this prune's own, not a duplicate
                msg_id = f"{codec.msg_id(natural)}:r{pruned_at}"
                last = await log.publish(replay, body, msg_id, expect=(last, log.subjects.thread(tk)))
                stored.append(msg)
        except ExpectationFailed:
            logger.debug("thread %r written while its prune stored the kept content; not trimmed", thread_id)
            return
        finally:
            now = await log.last_seq(global_ops)
            if now > global_seq and stored:
                await self._redo_run_deletes(log, global_seq, now, stored)
        for subject in (
            log.subjects.checkpoint(tk),
            log.subjects.writes(tk),
            replay,
            log.subjects.thread_op(tk, "prune"),
            # a large put whose parts came before the prune and its final message after it sees the
            # prune between the two (Log._deleted_between) and publishes itself again whole
            log.subjects.thread_parts(tk),
        ):
            await log.purge(subject, before_seq=pruned_at)

    async def _redo_run_deletes(
        self, log: Log, after: int, until: int, kept: list[codec.CheckpointMsg | codec.WritesMsg]
    ) -> None:
        """Publish again the run deletes stored while a prune stored its kept checkpoints again, for
        the runs of those checkpoints: applied after them, they delete them as they should."""
        runs = {m.run_id for m in kept if isinstance(m, codec.CheckpointMsg) and m.run_id is not None}
        hit: set[str] = set()
        async for m in log.read(log.subjects.global_ops, start_seq=after + 1, until_seq=until):
            msg = codec.loads(m.body)
            if isinstance(msg, codec.DeleteRunsMsg):
                hit.update(r for r in msg.run_ids if r in runs)
        if hit:
            await self.delete_for_runs(sorted(hit))

    # -- reads ------------------------------------------------------------------------------

    @asynccontextmanager
    async def view(
        self, thread_id: str | None, *, target: int | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """A connection reflecting every write acknowledged before this call on the thread
        (or on the whole stream for ``None``), including cross-thread operations; or, when the
        caller asked JetStream already, everything up to stream sequence ``target``."""
        log = await self._log()
        filters = None
        if thread_id is not None:
            filters = [log.subjects.thread(token(thread_id, field="thread_id")), log.subjects.global_ops]
        async with consistent_view(
            log,
            self.model,
            filters,
            read_wait=self.settings.read_wait,
            stats=self.stats,
            scratch=self.scratch,
            target=target,
        ) as conn:
            yield conn

    async def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        thread_id = _thread_id(conf.get("thread_id"))
        ns, checkpoint_id = conf.get("checkpoint_ns", ""), get_checkpoint_id(config)
        log = await self._log()
        thread_filter = log.subjects.thread(token(thread_id, field="thread_id"))
        head = self.heads.get(thread_id)
        gaps = list(head.gaps) if head is not None else []
        # The log lookups (where the thread and the cross-thread operations end, and the gaps
        # between our pipelined publishes) are asked first and answered while the read model's
        # first statement runs. Without an own-writes head the read model will most likely answer:
        # that statement (the row and the watermark, one snapshot) runs here, on a held connection,
        # and its watermark is compared with the lookups' answer once both are in. A watermark at
        # or past the log's end means the snapshot holds every write acknowledged before this
        # call, whichever of the two the database and JetStream answered first.
        # It runs only while the last such read was the read model's to answer: a process that
        # starts each run on a new thread (no row to find) does not pay a statement per run.
        ends = await log.lookup(
            [(thread_filter, None), (log.subjects.global_ops, None), *((thread_filter, a) for a, _ in gaps)]
        )
        pending: _Pending | None = None
        if head is None and self.early_reads and self.stream is not None and not self.model.down:
            try:
                pending = await self._open_read(thread_id, ns, checkpoint_id, self.stream)
            except BaseException:
                ends.cancel()  # not waited for: forget its replies
                raise
        try:
            thread_seq, global_seq, *firsts = await log.settle(ends)
            # after the lookups above: an advisory of the stream's re-creation arrived before their replies
            stream = await log.identity()
        except BaseException:
            self._release(pending)
            raise
        if pending is not None and pending.stream != stream:
            self._release(pending)  # read through another stream's watermark: read again below
            pending = None
        try:
            if stream != self.stream:
                if self.stream is not None:
                    # heads count another stream's sequences (one deleted and created again): drop them
                    self.heads.clear()
                    head = None
                self.stream = stream
            if head is not None:
                if (
                    head.seq != thread_seq
                    or global_seq > head.global_seq
                    or any(first != b for first, (_, b) in zip(firsts, gaps, strict=True))
                ):
                    self.heads.drop(thread_id)  # someone else wrote: the head is not exact any more
                    head = None
                else:
                    del head.gaps[: len(gaps)]  # checked: only ours in between
            if head is None and thread_seq == 0:
                # nothing was ever written on this thread: start a head that will know all of it
                head = self.heads.create(thread_id, global_seq)
                self.early_reads = False
            elif head is None:
                self.early_reads = True
            if head is not None and head.sending == 0:
                found = head.get_tuple(self.serde, thread_id, ns, checkpoint_id)
                if found is not False:
                    self.stats.head += 1
                    return found  # type: ignore[return-value]
            target = max(thread_seq, global_seq)
            served = await self._from_model(thread_id, ns, checkpoint_id, target, stream, pending)
            pending = None  # _from_model released it
        finally:
            if pending is not None:
                self._release(pending)
        if served is not _MISS:
            return served  # type: ignore[return-value]
        # the projector lags (or the database is down): wait for it a little, else replay the log
        async with self.view(thread_id, target=target) as conn:
            return await queries.get_tuple(conn, self.serde, thread_id, ns, checkpoint_id)

    async def _open_read(
        self, thread_id: str, ns: str, checkpoint_id: str | None, stream: StreamIdentity
    ) -> _Pending | None:
        """A read-model connection and the first statement of a read on it (the row and, in the
        same snapshot, the watermark if the model was filled from ``stream``); None if the
        database is down or failed (marked down, so the caller reads the log)."""
        key = (stream.stream, stream.created)
        return await self._open(
            stream,
            lambda conn: queries.head_row(
                conn, thread_id, ns, checkpoint_id, PROJECTION, key, complete=False
            ),
        )

    async def _open_page(self, args: dict[str, Any], stream: StreamIdentity) -> _Pending | None:
        """A read-model connection and the first page of a list on it, with the watermark (see
        :meth:`_open_read`); None if the database is down or failed."""
        key = (stream.stream, stream.created)
        return await self._open(
            stream, lambda conn: queries.first_page(conn, **args, projection_name=PROJECTION, stream=key)
        )

    async def _open(
        self, stream: StreamIdentity, first: Callable[[AsyncConnection], Awaitable[tuple[Any, Any]]]
    ) -> _Pending | None:
        """Take a read-model connection (a held hot one if any is idle, else one from the pool) and
        run ``first`` on it (a statement that returns its answer and the watermark); None, with the
        connection given back, if the database is down or fails."""
        model = self.model
        if model.down:
            return None
        hot = self.hot
        try:
            conn = await hot.take()
        except MODEL_ERRORS as exc:
            await model_failed(model, None, exc)
            return None
        if conn is not None:
            try:
                async with asyncio.timeout(model.connect_timeout):
                    found, mark = await first(conn)
            except MODEL_ERRORS as exc:
                await model_failed(model, conn, exc)
                hot.give(conn)  # invalidated: closed, not kept
                return None
            except BaseException:
                hot.drop(conn, invalidate=True)  # cancelled mid-statement: its protocol state is unknown
                raise
            return _Pending(None, conn, stream, found, mark)
        stack = AsyncExitStack()
        conn = None
        try:
            async with asyncio.timeout(model.connect_timeout):
                conn = await stack.enter_async_context(model.connect())
                if conn.dialect.name == "postgresql":
                    # PostgreSQL reads at READ COMMITTED, a snapshot per statement in or out of a
                    # transaction: autocommit spares the BEGIN and ROLLBACK round trips
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                found, mark = await first(conn)
        except MODEL_ERRORS as exc:
            await model_failed(model, conn, exc)
            await stack.aclose()
            return None
        except BaseException:
            await stack.aclose()
            raise
        return _Pending(stack, conn, stream, found, mark)

    def _release(self, pending: _Pending | None, *, broken: bool = False) -> None:
        """Give a read's connection back without waiting: a hot one at once, a pool one in the
        background (ending its transaction, a ROLLBACK round trip on MySQL, is not the reader's wait).
        ``broken``: a statement on it was interrupted (cancelled), so a hot one is closed."""
        if pending is None:
            return
        if pending.stack is None:
            if broken:
                self.hot.drop(pending.conn, invalidate=True)
            else:
                self.hot.give(pending.conn)
            return
        task = asyncio.ensure_future(_quietly(pending.stack.aclose()))
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def _close(self, pending: _Pending, *, broken: bool = False) -> None:
        """Give a read's connection back now (see :meth:`_release`)."""
        if pending.stack is None:
            self._release(pending, broken=broken)
        else:
            await pending.stack.aclose()

    async def _from_model(
        self,
        thread_id: str,
        ns: str,
        checkpoint_id: str | None,
        target: int,
        stream: StreamIdentity,
        pending: _Pending | None = None,
    ) -> CheckpointTuple | None | object:
        """The tuple from the read model in two statements if it was filled from ``stream`` and has
        caught up with ``target``, else ``_MISS`` (the database failing marks it down, so the
        fallback reads the log at once). ``pending``: the first statement, run already on
        ``stream`` (released here in any case)."""
        model = self.model
        if pending is None:
            pending = await self._open_read(thread_id, ns, checkpoint_id, stream)
            if pending is None:
                return _MISS
        conn = pending.conn
        broken = False
        try:
            row, mark = pending.row, pending.mark
            if row is None and mark is None:  # the first statement found no row: complete it
                row, mark = await queries.head_row(
                    conn, thread_id, ns, checkpoint_id, PROJECTION, (stream.stream, stream.created)
                )
            if mark is None:  # not filled from this stream, or not yet: see identity.judge
                if await identity.judge(conn, model, PROJECTION, stream) is None:
                    return _MISS
                # the projector claimed the read model since the row was read: its
                # watermark and the row must come from one statement again
                row, mark = await queries.head_row(
                    conn, thread_id, ns, checkpoint_id, PROJECTION, (stream.stream, stream.created)
                )
            if mark is None or mark < target:
                return _MISS
            found = None if row is None else await queries.tuple_of(conn, self.serde, thread_id, ns, row)
        except MODEL_ERRORS as exc:
            await model_failed(model, conn, exc)
            return _MISS
        except BaseException:
            broken = True  # cancelled mid-statement
            raise
        finally:
            self._release(pending, broken=broken)
        model_answered(model)
        self.stats.database += 1
        return found

    async def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """The tuples of ``list``, streamed: page by page from the read model (its connection open
        until the iteration ends or is closed). A read served from the log is materialized first:
        the replay model stays locked while its connection is open, so a caller that paused the
        iteration and read again would wait for itself (the replay is bounded by one thread)."""
        conf = (config or {}).get("configurable", {})
        thread_id = _thread_id(conf["thread_id"]) if conf.get("thread_id") is not None else None
        args: dict[str, Any] = {
            "thread_id": thread_id,
            "ns": conf.get("checkpoint_ns"),
            "checkpoint_id": conf.get("checkpoint_id"),
            "before_id": get_checkpoint_id(before) if before else None,
            "filter": filter,
            "limit": limit,
        }
        target: int | None = None
        streams = not isinstance(self.model.engine.pool, StaticPool)  # else one shared connection
        if thread_id is not None and streams and not self.model.down and (limit is None or limit > 0):
            # as get_tuple: the first page (with the watermark) runs alongside the log lookups
            log = await self._log()
            thread_filter = log.subjects.thread(token(thread_id, field="thread_id"))
            ends = await log.lookup([(thread_filter, None), (log.subjects.global_ops, None)])
            try:
                pending = await self._open_page(args, await log.identity())
            except BaseException:
                ends.cancel()  # not waited for: forget its replies
                raise
            try:
                thread_seq, global_seq = await log.settle(ends)
                # after the lookups: an advisory of the stream's re-creation arrived before their replies
                stream = await log.identity()
            except BaseException:
                self._release(pending)
                raise
            target = max(thread_seq, global_seq)
            mark = None if pending is None or pending.stream != stream else pending.mark
            if pending is not None and mark is not None and mark >= target:
                model_answered(self.model)
                self.stats.database += 1
                broken = True  # until the iteration ends or is closed between two items
                try:
                    items = queries.list_tuples(pending.conn, self.serde, **args, first=pending.row)
                    async for item in items:
                        broken = False
                        yield item
                        broken = True
                    broken = False
                except GeneratorExit:
                    broken = False  # closed at a yield: no statement was running
                    raise
                finally:
                    await self._close(pending, broken=broken)  # returned before the iteration ends
                return
            self._release(pending)  # empty, behind, or another stream's: the view decides
        materialized: list[CheckpointTuple] | None = None
        async with self.view(thread_id, target=target) as conn:
            if conn.engine is self.model.engine and not isinstance(conn.engine.pool, StaticPool):
                async for item in queries.list_tuples(conn, self.serde, **args):
                    yield item
                return
            # the log replay's model, or a private in-memory database with its one shared connection
            materialized = [t async for t in queries.list_tuples(conn, self.serde, **args)]
        for item in materialized:
            yield item

    async def delta_history(
        self, config: RunnableConfig, channels: Sequence[str]
    ) -> dict[str, DeltaChannelHistory]:
        thread_id = _thread_id(config["configurable"].get("thread_id"))
        async with self.view(thread_id) as conn:
            return await queries.delta_history(conn, self.serde, config, channels)


async def _aclose(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


async def _close_at_loop_end(
    cores: dict[asyncio.AbstractEventLoop, _Core], loop: asyncio.AbstractEventLoop, core: _Core
) -> AsyncIterator[None]:
    try:
        yield
    finally:
        _forget(cores, loop, core)
        await core.close()


def _forget(
    cores: dict[asyncio.AbstractEventLoop, _Core], loop: asyncio.AbstractEventLoop, core: _Core
) -> bool:
    """Remove ``core`` from ``cores`` if it is still the core of ``loop``; True if this call did."""
    if cores.get(loop) is not core:
        return False
    return cores.pop(loop, None) is core


def _close_loop_thread(loop_thread: LoopThread, cores: dict[asyncio.AbstractEventLoop, _Core]) -> None:
    """Close the sync face of a checkpointer that was collected without ``close()``."""
    if loop_thread.started:
        core = cores.pop(loop_thread.loop, None)
        loop_thread.close(core.close() if core is not None else None)


class SkialithCheckpointer(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer with a write-ahead log on NATS JetStream.

    ``put``/``put_writes`` return once JetStream acknowledged the write; ``get_tuple``/``list``
    are served by the SQL read model that ``skialith projector`` (or ``skialith up``) fills,
    and never return stale data: while the projector lags they read the log.

    Args:
        nats_url: NATS URL; default ``SKIALITH_NATS_URL`` or what ``skialith up`` starts.
        database_url: SQLAlchemy async URL of the read model; default ``SKIALITH_DATABASE_URL``
            or SQLite under ``./.skialith/``.
        settings: a complete :class:`Settings`; the other arguments, when given, override it.
        serde: the serializer; by default LangGraph's ``JsonPlusSerializer`` in strict msgpack
            mode, which constructs only LangGraph's safe types when reading (allow yours with
            :meth:`with_allowlist`; see ``codec.strict_serde``).
        **options: any other :class:`Settings` field, e.g. ``read_wait=0.2``.

    Example:
        >>> from skialith_langgraph import SkialithCheckpointer
        >>> app = graph.compile(checkpointer=SkialithCheckpointer())  # doctest: +SKIP
        >>> app.invoke({"x": 1}, {"configurable": {"thread_id": "t-1"}})  # doctest: +SKIP
    """

    def __init__(
        self,
        nats_url: str | None = None,
        database_url: str | None = None,
        *,
        settings: Settings | None = None,
        serde: SerializerProtocol | None = None,
        **options: Any,
    ) -> None:
        # strict by default: what is read constructs only LangGraph's safe types (see the README)
        super().__init__(serde=serde or strict_serde())
        overrides = {"nats_url": nats_url, "database_url": database_url, **options}
        if settings is None:
            self.settings = Settings.from_env(**overrides)
        else:
            self.settings = settings.replace(**overrides)
        self.read_stats = ReadStats()
        """Where reads were served from (read model or log), across sync and async calls."""
        self._own_plumbing()

    def _own_plumbing(self) -> None:
        """A loop thread and cores of this instance's own (``__init__``, and clones)."""
        self._loop_thread = LoopThread()
        # one core per loop that used the checkpointer; a core refers back to its loop (futures,
        # locks, the NATS client), so a weak key would never be dropped: cores are removed when
        # their loop shuts down (see _acore) or, for a loop closed without shutting down, by the
        # next new core (or close/aclose), which closes what the dead one left open
        self._cores: dict[asyncio.AbstractEventLoop, _Core] = {}
        # a checkpointer dropped without close(): its loop thread would run on, holding the sync
        # face's NATS connection and engine, one thread per dropped checkpointer
        finalizer = weakref.finalize(self, _close_loop_thread, self._loop_thread, self._cores)
        finalizer.atexit = False

    @classmethod
    @contextmanager
    def from_conn_string(
        cls, nats_url: str, database_url: str | None = None, **options: Any
    ) -> Iterator[SkialithCheckpointer]:
        """A checkpointer for ``with`` blocks, closed at the end (as LangGraph's own savers offer)."""
        saver = cls(nats_url, database_url, **options)
        try:
            yield saver
        finally:
            saver.close()

    # -- plumbing ---------------------------------------------------------------------------

    async def _acore(self) -> _Core:
        """The core of the running loop, created on first use.

        A core is closed and forgotten when its loop shuts down (``asyncio.run`` and pytest-asyncio
        call ``shutdown_asyncgens``, which finalizes the keeper generator), so a checkpointer used
        from many short-lived loops holds only the cores of live loops. A loop closed without
        shutting down (``loop.close()`` alone) cannot run that close; the next core made on
        another loop closes what it left open instead.
        """
        loop = asyncio.get_running_loop()
        core = self._cores.get(loop)
        if core is None:
            await self._close_orphans()
            core = self._cores.get(loop)
        if core is None:
            core = self._cores[loop] = _Core(self.settings, self.serde, self.read_stats)
            core.keeper = _close_at_loop_end(self._cores, loop, core)
            await anext(core.keeper)
        return core

    async def _close_orphans(self) -> None:
        """Forget the cores of closed loops and close what they left open (on the running loop)."""
        for loop, core in list(self._cores.items()):
            if loop.is_closed() and _forget(self._cores, loop, core):
                await core.close_orphaned()

    def _run(self, method: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            core = await self._acore()
            try:
                return await fn(core, *args, **kwargs)
            finally:
                # the sync face returns with its read connections back in the pool (the async
                # face returns them in the background, after answering)
                if core.releasing:
                    await asyncio.gather(*core.releasing)

        return self._loop_thread.run(call(), method=method)

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> SkialithCheckpointer:
        """A clone whose serializer also constructs ``extra_allowlist`` ((module, name) pairs) when
        reading (LangGraph's ``compile`` calls it with the graph's state types when
        ``LANGGRAPH_STRICT_MSGPACK=true``). The clone has its own connections (a core holds its
        serializer) and its own sync loop thread; close it like any checkpointer."""
        clone = super().with_allowlist(extra_allowlist)
        if clone is self:
            return self
        assert isinstance(clone, SkialithCheckpointer)
        clone._own_plumbing()
        return clone

    def setup(self) -> None:
        """Create the stream and the read-model tables. Idempotent and cheap; writes and reads
        also do it on first use, so calling it is optional (it makes start-up errors surface early)."""
        self._run("asetup", _Core.setup)

    async def asetup(self) -> None:
        """Async :meth:`setup`."""
        await (await self._acore()).setup()

    def close(self) -> None:
        """Close the NATS connection and engine of the sync face and stop its loop thread (and
        close what loops closed without shutting down left open)."""
        if self._loop_thread.started or any(loop.is_closed() for loop in list(self._cores)):
            loop = self._loop_thread.loop
            core = self._cores.get(loop)
            if core is not None and _forget(self._cores, loop, core):
                self._loop_thread.run(core.close(), method="aclose")
            self._loop_thread.run(self._close_orphans(), method="aclose")
            self._loop_thread.close()

    async def aclose(self) -> None:
        """Close the NATS connection and engine used on the current loop (and the sync face's)."""
        loop = asyncio.get_running_loop()
        core = self._cores.get(loop)
        if core is not None and _forget(self._cores, loop, core):
            await core.close()
        await self._close_orphans()
        if self._loop_thread.started:
            await asyncio.to_thread(self.close)

    def __enter__(self) -> SkialithCheckpointer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> SkialithCheckpointer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- sync face --------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run("aget_tuple", _Core.get_tuple, config)  # type: ignore[no-any-return]

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Streams: each item is fetched from the loop thread as the caller asks for it; an
        iteration that ends early (``break``, or the generator closed) closes its read there."""
        loop_thread = self._loop_thread

        async def start() -> AsyncIterator[CheckpointTuple]:
            return (await self._acore()).list(config, filter=filter, before=before, limit=limit)

        async def step(items: AsyncIterator[CheckpointTuple]) -> CheckpointTuple | None:
            try:
                return await anext(items)
            except StopAsyncIteration:
                return None

        items = loop_thread.run(start(), method="alist")
        try:
            while (item := loop_thread.run(step(items), method="alist")) is not None:
                yield item
        finally:
            if loop_thread.started:
                loop_thread.run(_aclose(items), method="alist")

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._run("aput", _Core.put, config, checkpoint, metadata, new_versions)  # type: ignore[no-any-return]

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._run("aput_writes", _Core.put_writes, config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self._run("adelete_thread", _Core.delete_thread, thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._run("adelete_for_runs", _Core.delete_for_runs, run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._run("acopy_thread", _Core.copy_thread, source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._run("aprune", _Core.prune, thread_ids, strategy)

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> dict[str, DeltaChannelHistory]:
        if not channels:
            return {}
        return self._run("aget_delta_channel_history", _Core.delta_history, config, channels)  # type: ignore[no-any-return]

    # -- async face -------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await (await self._acore()).get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = (await self._acore()).list(config, filter=filter, before=before, limit=limit)
        try:
            async for item in items:
                yield item
        finally:
            await _aclose(items)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await (await self._acore()).put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await (await self._acore()).put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await (await self._acore()).delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await (await self._acore()).delete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await (await self._acore()).copy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await (await self._acore()).prune(thread_ids, strategy)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> dict[str, DeltaChannelHistory]:
        if not channels:
            return {}
        return await (await self._acore()).delta_history(config, channels)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions like LangGraph's Postgres saver: a zero-padded counter plus a random tail."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"
