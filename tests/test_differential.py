"""Randomized differential test: SkialithCheckpointer against LangGraph's InMemorySaver.

Random sequences of put, put_writes (ordinary and special channels), forks, retries, delete_thread,
copy_thread, prune and delete_for_runs are fed to both savers; reads (get_tuple latest and by id,
list with and without namespace/limit/before/filter, across threads and namespaces) are compared as
normalized tuples. Writes go through two checkpointers (``A`` and ``B``, two "processes": A keeps
own-writes heads for what it writes, B sees A's writes only through the log and the read model),
and every read is asked of both. The projector is switched between running, lagging (small
batches committed after a long linger) and stopped (reads replay the log); a ``Check(model=True)``
waits until it has caught up and reads through a third checkpointer that must be served by the
read model alone. ``Together`` runs two calls at once (prune, delete, a read or a second writer
racing a put): the outcome must be that of one of the two orders, and every read after it agree.

Each sequence is replayable: ``--seed S`` (default in conftest.py) seeds the sequences, ``--runs N``
says how many run per database (``--timeout 0`` for long runs). A failure prints the seed and the
shortest operation sequence still failing in the same way (shrunk for at most ``SHRINK_BUDGET``
seconds), as Python that ``replay`` below accepts.

Where the reference has no behaviour, the test makes none up:

- ``InMemorySaver`` (langgraph-checkpoint 4.3) implements put, put_writes, get_tuple, list and
  delete_thread, not copy_thread, prune or delete_for_runs. ``Reference`` adds them as
  LangGraph's conformance suite (langgraph-checkpoint-conformance) specifies them: ``copy_thread``
  copies every checkpoint with its writes, ``prune("keep_latest")`` keeps the latest checkpoint of
  each namespace with its writes, ``prune("delete")`` deletes the thread, ``delete_for_runs``
  deletes the checkpoints whose metadata ``run_id`` is listed, with their writes.
- What ``copy_thread`` does to a target that already has checkpoints is not specified: copies only
  go to threads that are empty in the reference (never written, deleted, or pruned away).
- The order of ``list`` across several threads or namespaces is not specified (InMemorySaver groups
  by thread, then namespace, in insertion order). Skialith documents newest first, then by thread
  and namespace key; lists spanning groups are compared in that order (the limit applied after it).
- No ``DeltaChannel`` (``counters_since_delta_snapshot``) metadata: with it Skialith's prune keeps
  more ancestors than "the latest", on purpose (see README).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pprint
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT, RESUME, SCHEDULED, TASKS
from support import wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.subjects import token

OPS_PER_RUN = 40
THREADS = 3
NAMESPACES = ("", "inner:7f|ü")
# "a" and "a ", "task-1" and "task-1 " are different keys (a PAD SPACE collation makes them one)
CHANNELS = ("a", "b", "a ")
WRITE_CHANNELS = ("a", "b", "a ", TASKS, ERROR, INTERRUPT, RESUME, SCHEDULED)
TASK_IDS = ("task-1", "task-2", "task-1 ")
TASK_PATHS = ("", "~__pregel_pull, n1")
CHUNK_SIZE = 4096  # small, so that the large value below travels in parts
# channel and write values, referred to by index so that a printed sequence stays short
VALUES: tuple[Any, ...] = (
    0,
    1,
    "x",
    None,
    [1, 2],
    {"k": "v", "n": [1, None]},
    b"\x00\xff bytes",
    "large " * 1200,
)
SMALL = 3  # write values come from VALUES[:SMALL]: repeats (A, B, A) are likely
SHRINK_BUDGET = 60.0  # seconds spent shrinking a failing sequence


# -- operations (plain data: a failing sequence prints as Python) -------------------------------


@dataclass(frozen=True)
class Put:
    by: str  # "A" or "B": the checkpointer that writes
    thread: int
    ns: int
    parent: str | None
    id: str
    values: tuple[tuple[str, int], ...]  # channel_values, as indexes into VALUES
    versions: tuple[tuple[str, str], ...]  # channel_versions
    new: tuple[str, ...]  # the channels of new_versions (one missing from values is stored empty)
    step: int
    source: str
    run: int


@dataclass(frozen=True)
class Writes:
    by: str
    thread: int
    ns: int
    id: str
    task: str
    path: str
    writes: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Delete:
    by: str
    thread: int


@dataclass(frozen=True)
class Copy:
    by: str
    source: int
    target: int


@dataclass(frozen=True)
class Prune:
    by: str
    threads: tuple[int, ...]
    strategy: str


@dataclass(frozen=True)
class DeleteRuns:
    by: str
    runs: tuple[int, ...]


@dataclass(frozen=True)
class Mode:
    projector: str  # "run", "lag" or "stop"


@dataclass(frozen=True)
class Get:
    thread: int
    ns: int
    id: str | None


@dataclass(frozen=True)
class List:
    thread: int | None
    ns: int | None
    limit: int | None = None
    before: str | None = None
    filter: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Check:
    model: bool  # also read through the read model once the projector caught up


@dataclass(frozen=True)
class Together:
    first: Write | Read
    second: Write | Read


Write = Put | Writes | Delete | Copy | Prune | DeleteRuns
Read = Get | List
Op = Write | Read | Mode | Check | Together
Outcome = tuple[list[Op], "Failure | None"]


# -- the reference -----------------------------------------------------------------------------


class Reference(InMemorySaver):
    """InMemorySaver plus copy_thread, prune and delete_for_runs as the conformance suite has them."""

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        source = self.storage.get(source_thread_id, {})
        for ns, ckpts in source.items():
            for cid, entry in ckpts.items():
                self.storage[target_thread_id][ns][cid] = entry
                stored = self.writes.get((source_thread_id, ns, cid))
                if stored:
                    self.writes[(target_thread_id, ns, cid)] = dict(stored)
        for (t, ns, ch, v), blob in list(self.blobs.items()):
            if t == source_thread_id:
                self.blobs[(target_thread_id, ns, ch, v)] = blob

    def prune(self, thread_ids: Any, *, strategy: str = "keep_latest") -> None:
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            for ns, ckpts in self.storage.get(thread_id, {}).items():
                if not ckpts:
                    continue
                latest = max(ckpts)
                for cid in [c for c in ckpts if c != latest]:
                    del ckpts[cid]
                    self.writes.pop((thread_id, ns, cid), None)

    def delete_for_runs(self, run_ids: Any) -> None:
        runs = set(run_ids)
        for thread_id, by_ns in self.storage.items():
            for ns, ckpts in by_ns.items():
                for cid, (_, metadata, _) in list(ckpts.items()):
                    if self.serde.loads_typed(metadata).get("run_id") in runs:
                        del ckpts[cid]
                        self.writes.pop((thread_id, ns, cid), None)

    def clone(self) -> Reference:
        other = Reference()
        other.storage = copy.deepcopy(self.storage)
        other.writes = copy.deepcopy(self.writes)
        other.blobs = copy.deepcopy(self.blobs)
        return other

    def adopt(self, other: Reference) -> None:
        self.storage, self.writes, self.blobs = other.storage, other.writes, other.blobs

    def ids(self, thread_id: str, ns: str) -> list[str]:
        return sorted(self.storage.get(thread_id, {}).get(ns, {}))

    def empty(self, thread_id: str) -> bool:
        return not any(self.storage.get(thread_id, {}).values())


# -- generation ---------------------------------------------------------------------------------


class Generator:
    """Draws the next operation from the reference's current state (so forks name real parents)."""

    def __init__(self, rng: random.Random, names: Names) -> None:
        self.rng = rng
        self.names = names
        self.counter = 0
        self.puts: dict[str, Put] = {}  # every generated checkpoint by id, to build its children
        self.history: list[Put | Writes] = []
        self.mode = "run"

    def next_id(self) -> str:
        self.counter += 1
        return f"1ef00000-0000-6000-8000-{self.counter:012x}"  # fixed width: ids increase

    def version(self, current: str | None) -> str:
        # LangGraph's own get_next_version (its tail is random: seeded here, so a seed replays)
        state = random.getstate()
        random.seed(self.rng.random())
        try:
            return InMemorySaver().get_next_version(current, None)
        finally:
            random.setstate(state)

    def by(self) -> str:
        return "A" if self.rng.random() < 0.8 else "B"

    def op(self, ref: Reference, index: int) -> Op:
        rng = self.rng
        if index and index % 15 == 0:
            return Check(model=self.mode != "stop" and rng.random() < 0.5)
        roll = rng.random()
        if roll < 0.06:
            self.mode = rng.choice([m for m in ("run", "lag", "stop") if m != self.mode])
            return Mode(self.mode)
        if roll < 0.10:
            return self.together(ref)
        if roll < 0.28:
            return self.read(ref)
        if roll < 0.34 and self.history:
            return rng.choice(self.history[-10:])  # a retried call, possibly after a delete or prune
        if roll < 0.39:
            return Delete(self.by(), rng.randrange(THREADS))
        if roll < 0.44:
            empty = [t for t in range(THREADS) if ref.empty(self.names.thread(t))]
            if empty:
                return Copy(self.by(), rng.randrange(THREADS), rng.choice(empty))
        if roll < 0.49:
            threads = tuple(sorted(rng.sample(range(THREADS), rng.choice([1, 1, 2]))))
            return Prune(self.by(), threads, "keep_latest" if rng.random() < 0.8 else "delete")
        if roll < 0.51:
            return DeleteRuns(self.by(), (rng.randrange(3),))
        thread, ns = rng.randrange(THREADS), rng.choice([0, 0, 1])
        return self.write(ref, thread, ns, writes=roll < 0.72)

    def write(
        self, ref: Reference, thread: int, ns: int, *, writes: bool, large: bool = False
    ) -> Put | Writes:
        rng = self.rng
        existing = ref.ids(self.names.thread(thread), NAMESPACES[ns])
        if writes and existing:
            cid = existing[-1] if rng.random() < 0.7 else rng.choice(existing)
            n = rng.choice([1, 1, 2, 3])
            pairs = tuple((rng.choice(WRITE_CHANNELS), rng.randrange(SMALL)) for _ in range(n))
            op: Put | Writes = Writes(
                self.by(), thread, ns, cid, rng.choice(TASK_IDS), rng.choice(TASK_PATHS), pairs
            )
        else:
            op = self.put(thread, ns, existing, large=large)
        self.history.append(op)
        return op

    def together(self, ref: Reference) -> Together:
        """Two calls on one thread at once: the races of prune, delete, reads and writers."""
        rng = self.rng
        thread, ns = rng.randrange(THREADS), rng.choice([0, 0, 1])
        kind = rng.randrange(5)
        second: Write | Read
        if kind == 0:
            first: Write | Read = Prune(self.by(), (thread,), "keep_latest")
            second = self.write(ref, thread, ns, writes=False)
        elif kind == 1:
            first, second = Delete(self.by(), thread), self.write(ref, thread, ns, writes=False, large=True)
        elif kind == 2:
            first = rng.choice([List(thread, ns), List(thread, None), Get(thread, ns, None)])
            second = self.write(ref, thread, ns, writes=rng.random() < 0.5)
        elif kind == 3:  # two processes write the thread at once
            first = self.write(ref, thread, ns, writes=False)
            second = dataclasses.replace(self.write(ref, thread, ns, writes=True), by="B")
        else:
            first = self.write(ref, thread, ns, writes=rng.random() < 0.5)
            second = self.write(ref, thread, ns, writes=True)
        return Together(first, second)

    def put(self, thread: int, ns: int, existing: list[str], *, large: bool = False) -> Put:
        rng = self.rng
        parent: str | None = None
        if existing and rng.random() < 0.95:
            parent = existing[-1] if rng.random() < 0.75 else rng.choice(existing)  # else a fork
        base = self.puts.get(parent) if parent else None
        values = dict(base.values) if base else {}
        versions = dict(base.versions) if base else {}
        new = tuple(sorted(rng.sample(CHANNELS, rng.choice([1, 1, 2]))))
        for ch in new:
            versions[ch] = self.version(versions.get(ch))
            if rng.random() < 0.1:
                values.pop(ch, None)  # a channel emptied: its new version is stored as "empty"
            else:
                values[ch] = (
                    rng.randrange(len(VALUES)) if rng.random() < 0.15 else rng.randrange(len(VALUES) - 1)
                )
        step = (base.step + 1) if base else -1
        source = "fork" if parent and parent != existing[-1] else ("loop" if parent else "input")
        op = Put(
            self.by(),
            thread,
            ns,
            parent,
            self.next_id(),
            tuple(sorted(values.items())),
            tuple(sorted(versions.items())),
            new,
            step,
            source,
            rng.randrange(3),
        )
        self.puts[op.id] = op
        return op

    def read(self, ref: Reference) -> Read:
        rng = self.rng
        thread, ns = rng.randrange(THREADS), rng.choice([0, 0, 1])
        known = list(self.puts)
        if rng.random() < 0.4:
            ids = ref.ids(self.names.thread(thread), NAMESPACES[ns])
            pick = rng.choice(ids) if ids and rng.random() < 0.8 else (rng.choice(known) if known else None)
            return Get(thread, ns, pick)
        scope = rng.random()
        limit = rng.choice([None, None, 1, 2, 3])
        before = rng.choice(known) if known and rng.random() < 0.3 else None
        flt: tuple[tuple[str, Any], ...] = ()
        if rng.random() < 0.3:
            flt = rng.choice([(("source", "loop"),), (("step", rng.randrange(4)),), (("run_id", "run0"),)])
        if scope < 0.5:
            return List(thread, ns, limit, before, flt)
        if scope < 0.85:
            return List(thread, None, limit, before, flt)
        return List(None, None, limit, before, flt)


# -- running -----------------------------------------------------------------------------------


@dataclass
class Names:
    """Thread and run ids of one sequence: a prefix of its own, so sequences share a stream."""

    prefix: str

    def thread(self, i: int) -> str:
        return f"{self.prefix}t{i}"

    def run(self, i: int) -> str:
        return f"{self.prefix}run{i}"


@dataclass
class Failure:
    index: int
    kind: str  # what failed (the operation's type and the reader), to shrink towards the same failure
    detail: str


def _checkpoint(op: Put) -> dict[str, Any]:
    cp: dict[str, Any] = dict(empty_checkpoint())
    cp["id"] = op.id
    cp["ts"] = f"2026-11-29T00:00:{int(op.id[-6:], 16) % 60:02d}.{int(op.id[-6:], 16):06d}+00:00"
    cp["channel_values"] = {ch: copy.deepcopy(VALUES[i]) for ch, i in op.values}
    cp["channel_versions"] = dict(op.versions)
    cp["versions_seen"] = {"n1": {ch: v for ch, v in op.versions if ch in op.new}}
    cp["updated_channels"] = list(op.new)
    return cp


def _config(thread: str, ns: str, cid: str | None = None) -> RunnableConfig:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if cid is not None:
        conf["checkpoint_id"] = cid
    return {"configurable": conf}


def _norm(t: CheckpointTuple | None) -> Any:
    """A tuple as plain data (nothing in it is nondeterministic: ids and ts come from the sequence)."""
    if t is None:
        return None
    return {
        "config": t.config,
        "checkpoint": dict(t.checkpoint),
        "metadata": t.metadata,
        "parent_config": t.parent_config,
        "pending_writes": [tuple(w) for w in t.pending_writes or []],
    }


def _group_key(t: CheckpointTuple) -> tuple[str, str]:
    conf = t.config["configurable"]
    return token(conf["thread_id"], field="thread_id"), token(conf["checkpoint_ns"], field="checkpoint_ns")


def _put_args(names: Names, op: Put) -> tuple[RunnableConfig, Any, Any, dict[str, str]]:
    config = _config(names.thread(op.thread), NAMESPACES[op.ns], op.parent)
    metadata = {"source": op.source, "step": op.step, "parents": {}, "run_id": names.run(op.run)}
    return config, _checkpoint(op), metadata, {ch: v for ch, v in op.versions if ch in op.new}


def _on_reference(names: Names, ref: Reference, op: Write) -> Any:
    """Apply a write to the reference; what the call returns."""
    if isinstance(op, Put):
        return ref.put(*copy.deepcopy(_put_args(names, op)))
    if isinstance(op, Writes):
        config = _config(names.thread(op.thread), NAMESPACES[op.ns], op.id)
        ref.put_writes(config, copy.deepcopy([(ch, VALUES[i]) for ch, i in op.writes]), op.task, op.path)
    elif isinstance(op, Delete):
        ref.delete_thread(names.thread(op.thread))
    elif isinstance(op, Copy):
        ref.copy_thread(names.thread(op.source), names.thread(op.target))
    elif isinstance(op, Prune):
        ref.prune([names.thread(t) for t in op.threads], strategy=op.strategy)
    else:
        ref.delete_for_runs([names.run(r) for r in op.runs])
    return None


class Harness:
    """Two writing checkpointers, one read-model reader, a projector that comes and goes."""

    def __init__(self, settings: Settings) -> None:
        base = dataclasses.replace(settings, chunk_size=CHUNK_SIZE)
        self.settings = base
        self.savers = {
            "A": SkialithCheckpointer(settings=dataclasses.replace(base, read_wait=0.0)),
            "B": SkialithCheckpointer(settings=dataclasses.replace(base, read_wait=0.05)),
        }
        # waits for the projector, which has caught up whenever it is asked: the read model answers
        self.model_reader = SkialithCheckpointer(settings=dataclasses.replace(base, read_wait=10.0))
        self.projector: Projector | None = None
        self.mode = "stop"
        self.log: Log | None = None
        self.model = ReadModel.from_url(base.database_url)

    async def open(self) -> None:
        await self.savers["A"].asetup()
        self.log = await Log.open(self.settings)

    async def close(self) -> None:
        await self.set_mode("stop")
        for saver in (*self.savers.values(), self.model_reader):
            await saver.aclose()
        if self.log is not None:
            await self.log.close()
        await self.model.close()

    async def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        if self.projector is not None:
            await self.projector.stop()
            self.projector = None
        if mode == "run":
            self.projector = Projector(self.settings, fetch_timeout=0.1)
        elif mode == "lag":
            self.projector = Projector(self.settings, fetch_timeout=0.1, batch_size=2, linger=0.25)
        if self.projector is not None:
            await self.projector.start()
        self.mode = mode

    async def run(self, names: Names, ops: list[Op] | Callable[[Reference], Iterator[Op]]) -> Outcome:
        """Apply ``ops`` to both savers, stopping at the first mismatch. ``ops`` is a list, or a
        function of the reference returning the operations (drawn from the reference's state)."""
        ref = Reference()
        done: list[Op] = []
        await self.set_mode("run")
        for op in ops if isinstance(ops, list) else ops(ref):
            done.append(op)
            failure = await self.apply(names, ref, op)
            if failure is not None:
                failure.index = len(done) - 1
                return done, failure
        return done, None

    async def apply(self, names: Names, ref: Reference, op: Op) -> Failure | None:
        kind = f"{type(op).__name__}:{getattr(op, 'by', '')}"
        try:
            if isinstance(op, Mode):
                await self.set_mode(op.projector)
                return None
            if isinstance(op, Get | List):
                return await self.compare(names, ref, op, model=False)
            if isinstance(op, Check):
                return await self.check(names, ref, op.model)
            if isinstance(op, Together):
                return await self.together(names, ref, op)
            expected = _on_reference(names, ref, op)
            got = await self.on_skialith(names, op)
        except Exception as exc:  # a call the reference answers must not raise
            return Failure(0, kind, f"{op} raised {exc!r}")
        if got != expected:
            return Failure(0, kind, f"{op} returned {got!r}, reference {expected!r}")
        return None

    async def on_skialith(self, names: Names, op: Write | Read) -> Any:
        """Run a write through its checkpointer (a read through A); what it returns, normalized."""
        if isinstance(op, Get | List):
            return await self.ask(names, self.savers["A"], op)
        saver = self.savers[op.by]
        if isinstance(op, Put):
            return await saver.aput(*_put_args(names, op))
        if isinstance(op, Writes):
            config = _config(names.thread(op.thread), NAMESPACES[op.ns], op.id)
            await saver.aput_writes(config, [(ch, VALUES[i]) for ch, i in op.writes], op.task, op.path)
        elif isinstance(op, Delete):
            await saver.adelete_thread(names.thread(op.thread))
        elif isinstance(op, Copy):
            await saver.acopy_thread(names.thread(op.source), names.thread(op.target))
        elif isinstance(op, Prune):
            await saver.aprune([names.thread(t) for t in op.threads], strategy=op.strategy)
        else:
            await saver.adelete_for_runs([names.run(r) for r in op.runs])
        return None

    async def together(self, names: Names, ref: Reference, op: Together) -> Failure | None:
        """Two calls at once: the outcome must be that of one of the two orders (linearizable)."""
        results = await asyncio.gather(
            self.on_skialith(names, op.first), self.on_skialith(names, op.second), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                return Failure(0, "Together", f"{op} raised {r!r}")
        failures = []
        for order in ((0, 1), (1, 0)):
            branch = ref.clone()
            mismatch = None
            for k in order:
                one = (op.first, op.second)[k]
                expected = self.expected(names, branch, one) if isinstance(one, Get | List) else None
                if not isinstance(one, Get | List):
                    expected = _on_reference(names, branch, one)
                if results[k] != expected:
                    mismatch = f"{one} gave {results[k]!r}, expected {expected!r}"
                    break
            failure = (
                Failure(0, "Together", mismatch) if mismatch else await self.check(names, branch, model=False)
            )
            if failure is None:
                ref.adopt(branch)
                return None
            failures.append(f"in the order {order}: {failure.detail}")
        return Failure(0, "Together", f"{op}: neither order explains what was read\n" + "\n".join(failures))

    def reads(self, names: Names, ref: Reference) -> list[Read]:
        """Every read a check asks: each thread and namespace, each checkpoint, lists of all kinds."""
        out: list[Read] = []
        for t in range(THREADS):
            for n in range(len(NAMESPACES)):
                ids = ref.ids(names.thread(t), NAMESPACES[n])
                out.append(Get(t, n, None))
                out.extend(Get(t, n, cid) for cid in ids)
                out.append(List(t, n))
                if len(ids) > 1:
                    out.append(List(t, n, limit=1, before=ids[-1]))
            out.append(List(t, None))
            out.append(List(t, None, limit=2))
        out.append(List(None, None))
        out.append(List(None, None, limit=3, filter=(("source", "loop"),)))
        return out

    async def check(self, names: Names, ref: Reference, model: bool) -> Failure | None:
        for read in self.reads(names, ref):
            failure = await self.compare(names, ref, read, model=False)
            if failure is not None:
                return failure
        if not model or self.mode == "stop":
            return None
        assert self.log is not None
        await wait_for_watermark(self.model, await self.log.stream_last_seq(), timeout=60.0)
        served_by_log, served_by_model = (
            self.model_reader.read_stats.log,
            self.model_reader.read_stats.database,
        )
        for read in self.reads(names, ref):
            failure = await self.compare(names, ref, read, model=True)
            if failure is not None:
                return failure
        stats = self.model_reader.read_stats
        if stats.log != served_by_log or stats.database == served_by_model:
            return Failure(
                0, "Check:model", f"the projector had caught up, yet the read model served none: {stats}"
            )
        return None

    async def compare(self, names: Names, ref: Reference, read: Read, *, model: bool) -> Failure | None:
        expected = self.expected(names, ref, read)
        readers = {"model": self.model_reader} if model else self.savers
        for label, saver in readers.items():
            try:
                got = await self.ask(names, saver, read)
            except Exception as exc:
                return Failure(0, f"{type(read).__name__}:{label}", f"{label}: {read} raised {exc!r}")
            if got != expected:
                return Failure(
                    0,
                    f"{type(read).__name__}:{label}",
                    f"{label}: {read} (projector {self.mode})\n"
                    f"expected {pprint.pformat(expected, width=110)[:6000]}\n"
                    f"got      {pprint.pformat(got, width=110)[:6000]}",
                )
        return None

    @staticmethod
    def _list_args(names: Names, read: List) -> tuple[RunnableConfig | None, dict[str, Any], Any]:
        flt = {k: names.run(int(v[-1])) if k == "run_id" else v for k, v in read.filter}
        config: RunnableConfig | None = None
        if read.thread is not None:
            conf: dict[str, Any] = {"thread_id": names.thread(read.thread)}
            if read.ns is not None:
                conf["checkpoint_ns"] = NAMESPACES[read.ns]
            config = {"configurable": conf}
        before = {"configurable": {"checkpoint_id": read.before}} if read.before else None
        return config, flt, before

    def expected(self, names: Names, ref: Reference, read: Read) -> Any:
        if isinstance(read, Get):
            return _norm(ref.get_tuple(_config(names.thread(read.thread), NAMESPACES[read.ns], read.id)))
        config, flt, before = self._list_args(names, read)
        if read.thread is not None and read.ns is not None:
            return [_norm(t) for t in ref.list(config, filter=flt or None, before=before, limit=read.limit)]
        items = [t for t in ref.list(config, filter=flt or None, before=before) if self.mine(names, t)]
        items.sort(key=_group_key)
        items.sort(key=lambda t: t.config["configurable"]["checkpoint_id"], reverse=True)
        return [_norm(t) for t in items[: read.limit]]

    @staticmethod
    def mine(names: Names, t: CheckpointTuple) -> bool:
        return str(t.config["configurable"]["thread_id"]).startswith(names.prefix)

    async def ask(self, names: Names, saver: SkialithCheckpointer, read: Read) -> Any:
        if isinstance(read, Get):
            config = _config(names.thread(read.thread), NAMESPACES[read.ns], read.id)
            return _norm(await saver.aget_tuple(config))
        config, flt, before = self._list_args(names, read)
        if read.thread is None:
            # the stream and database hold other sequences too: list them all, keep this one's
            found = [t async for t in saver.alist(None, filter=flt or None, before=before)]
            return [_norm(t) for t in found if self.mine(names, t)][: read.limit]
        return [
            _norm(t) async for t in saver.alist(config, filter=flt or None, before=before, limit=read.limit)
        ]


async def shrink(harness: Harness, ops: list[Op], failure: Failure, prefix: str) -> list[Op]:
    """The shortest sub-sequence found within SHRINK_BUDGET that still fails the same way."""
    deadline = time.monotonic() + SHRINK_BUDGET
    attempt = 0

    async def fails(candidate: list[Op]) -> list[Op] | None:
        nonlocal attempt
        attempt += 1
        done, again = await harness.run(Names(f"{prefix}s{attempt}-"), candidate)
        return done if again is not None and again.kind == failure.kind else None

    best = ops
    # first without the reads and projector switches before the failing call, then halving chunks
    quiet = [op for op in ops[:-1] if isinstance(op, Put | Writes | Delete | Copy | Prune | DeleteRuns)]
    if len(quiet) + 1 < len(ops) and (shorter := await fails([*quiet, ops[-1]])) is not None:
        best = shorter
    chunk = max(1, len(best) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i, removed = 0, False
        while i < len(best) - 1 and time.monotonic() < deadline:  # the failing op itself stays
            candidate = best[:i] + best[i + chunk :]
            if len(candidate) < len(best) and (shorter := await fails(candidate)) is not None:
                best, removed = shorter, True
            else:
                i += chunk
        if not removed:
            chunk //= 2
    return best


def _sequence(ops: list[Op]) -> str:
    return "ops = [\n" + "".join(f"    {op!r},\n" for op in ops) + "]"


async def test_random_operations_read_as_in_memory_saver(
    settings: Settings, unique: str, request: pytest.FixtureRequest
) -> None:
    runs: int = request.config.getoption("--runs")
    seed: int = request.config.getoption("--seed")
    harness = Harness(settings)
    await harness.open()
    try:
        for run in range(runs):
            names = Names(f"{unique}r{run}-")
            gen = Generator(random.Random(f"{seed}:{run}"), names)

            def generated(ref: Reference, gen: Generator = gen) -> Iterator[Op]:
                for i in range(OPS_PER_RUN):
                    yield gen.op(ref, i)
                yield Mode("run")
                yield Check(model=True)

            ops, failure = await harness.run(names, generated)
            if failure is None:
                # purge the sequence from the stream: later whole-stream reads replay only their own
                for t in range(THREADS):
                    await harness.savers["A"].adelete_thread(names.thread(t))
                continue
            shortest = await shrink(harness, ops, failure, f"{unique}r{run}")
            pytest.fail(
                f"differential mismatch: seed {seed}, run {run} (replay: pytest {request.node.nodeid} "
                f"--seed {seed} --runs {run + 1}), operation {failure.index} of {len(ops)}:\n"
                f"{failure.detail}\n\nshortest failing sequence ({len(shortest)} operations; "
                f"replay with replay(settings, ops)):\n{_sequence(shortest)}",
                pytrace=False,
            )
    finally:
        await harness.close()


async def replay(settings: Settings, ops: list[Op], prefix: str = "replay-") -> Failure | None:
    """Run one printed sequence again (e.g. from a test or a REPL with the fixtures' settings)."""
    harness = Harness(settings)
    await harness.open()
    try:
        _, failure = await harness.run(Names(prefix), ops)
        return failure
    finally:
        await harness.close()
