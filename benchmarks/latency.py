"""Per-operation latency, interleaved in blocks so that machine drift hits every contender alike.

Each *row* is one (operation, payload size, contender). A round runs ``block`` timed calls of
every row in turn, the order of contenders rotating from round to round; rounds repeat until
each row has ``iterations`` samples. Only the call itself is timed: building the next
checkpoint is not.

Next to the floors, ``serde`` rows time what every saver must do before it can store anything:
serialize with its ``serde`` (``dumps_typed`` of the new channel values, the checkpoint and the
metadata for ``aput``; of each write for ``aput_writes``). They call Skialith's own
``codec.encode_checkpoint`` / ``codec.encode_writes`` on the same payloads as the ``aput`` and
``aput_writes`` rows, so floor + serde is the lowest an ``aput`` that serializes can reach.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint

from .contender import (
    FLOOR,
    FLOOR_ALWAYS,
    RAW_INSERT,
    SAVE_EVENT,
    SERDE_PUT,
    SERDE_WRITES,
    SKIALITH_ALWAYS,
    SQLA_INSERT,
    Contender,
)
from .env import BenchEnv
from .payloads import SIZES, CheckpointChain, _text, make_messages, make_writes, new_task_id
from .stats import Sample, collected_outside, gc_section

Call = Callable[[], Awaitable[int]]  # one timed call; returns nanoseconds
OPS = ("aput", "aput_writes", "aget_tuple", "alist")
LIST_LIMIT = 20  # alist reads a thread's last 20 checkpoints
LIST_THREAD = 25  # checkpoints on the thread it lists
SERDE_OF = {"aput": SERDE_PUT, "aput_writes": SERDE_WRITES}  # op -> its serde row's contender


@dataclass(slots=True)
class Row:
    """One measured series."""

    op: str
    size: str
    contender: str
    call: Call
    sample: Sample = field(default_factory=Sample)
    skialith: bool = False


def _timed(fn: Callable[[], Awaitable[Any]]) -> Call:
    async def call() -> int:
        t0 = time.perf_counter_ns()
        await fn()
        return time.perf_counter_ns() - t0

    return call


def aput_call(c: Contender, size: str, *, tag: str) -> Call:
    """Successive ``aput`` calls on one thread, each checkpoint the child of the previous one."""
    chain = CheckpointChain(
        c.saver, f"lat-{tag}-aput-{size}-{uuid.uuid4().hex[:8]}", make_messages(SIZES[size])
    )

    async def call() -> int:
        config, ckpt, metadata, versions = chain.next()
        t0 = time.perf_counter_ns()
        returned = await c.saver.aput(config, ckpt, metadata, versions)
        elapsed = time.perf_counter_ns() - t0
        chain.advance(returned, ckpt)
        return elapsed

    return call


async def _prepared_thread(c: Contender, size: str, *, tag: str, checkpoints: int = 3) -> RunnableConfig:
    """A thread with a few checkpoints and pending writes on the last; returns its last config."""
    chain = CheckpointChain(c.saver, f"lat-{tag}-{size}-{uuid.uuid4().hex[:8]}", make_messages(SIZES[size]))
    for _ in range(checkpoints):
        config, ckpt, metadata, versions = chain.next()
        chain.advance(await c.saver.aput(config, ckpt, metadata, versions), ckpt)
    await c.saver.aput_writes(chain.config, make_writes(SIZES[size] // 4, seed=3), new_task_id())
    return chain.config


async def aput_writes_call(c: Contender, size: str, *, tag: str) -> Call:
    """``aput_writes`` of one task's messages against one checkpoint, a new task id each call."""
    config = await _prepared_thread(c, size, tag=f"{tag}-w", checkpoints=1)
    writes = make_writes(SIZES[size], seed=5)

    async def call() -> int:
        task_id = new_task_id()
        t0 = time.perf_counter_ns()
        await c.saver.aput_writes(config, writes, task_id)
        return time.perf_counter_ns() - t0

    return call


async def aget_tuple_call(c: Contender, size: str, *, tag: str, reader: Contender | None = None) -> Call:
    """``aget_tuple`` of the latest checkpoint of a thread ``c`` wrote, by ``reader`` (default
    ``c``; another instance of ``c`` stands for another process), checked, untimed."""
    config = await _prepared_thread(c, size, tag=f"{tag}-r")
    wanted = config["configurable"]["checkpoint_id"]
    latest: RunnableConfig = {
        "configurable": {"thread_id": config["configurable"]["thread_id"], "checkpoint_ns": ""}
    }
    saver = (reader or c).saver

    async def call() -> int:
        t0 = time.perf_counter_ns()
        tup = await saver.aget_tuple(latest)
        elapsed = time.perf_counter_ns() - t0
        if tup is None or tup.config["configurable"]["checkpoint_id"] != wanted:
            raise AssertionError(f"{c.name}: aget_tuple returned the wrong checkpoint")
        return elapsed

    return call


async def alist_call(c: Contender, size: str, *, tag: str, reader: Contender | None = None) -> Call:
    """``alist(limit=20)`` of a thread ``c`` wrote with 25 checkpoints, by ``reader`` (default ``c``)."""
    config = await _prepared_thread(c, size, tag=f"{tag}-l", checkpoints=LIST_THREAD)
    wanted = config["configurable"]["checkpoint_id"]
    thread: RunnableConfig = {
        "configurable": {"thread_id": config["configurable"]["thread_id"], "checkpoint_ns": ""}
    }
    saver = (reader or c).saver

    async def call() -> int:
        t0 = time.perf_counter_ns()
        tuples = [t async for t in saver.alist(thread, limit=LIST_LIMIT)]
        elapsed = time.perf_counter_ns() - t0
        if len(tuples) != LIST_LIMIT or tuples[0].config["configurable"]["checkpoint_id"] != wanted:
            raise AssertionError(f"{(reader or c).name}: alist returned the wrong checkpoints")
        return elapsed

    return call


def load_codec() -> Any | str:
    """Import ``skialith_langgraph.codec``, or return why it cannot be used."""
    try:
        codec = importlib.import_module("skialith_langgraph.codec")
    except Exception as exc:
        return f"cannot import skialith_langgraph.codec ({type(exc).__name__}: {exc})"
    missing = [n for n in ("encode_checkpoint", "encode_writes") if not hasattr(codec, n)]
    if missing:
        return f"skialith_langgraph.codec has no {', '.join(missing)}"
    return codec


def serde_put_call(codec: Any, saver: BaseCheckpointSaver[Any], size: str) -> Call:
    """``codec.encode_checkpoint`` of the checkpoints the ``aput`` row stores (no I/O)."""
    chain = CheckpointChain(saver, f"lat-serde-{size}-{uuid.uuid4().hex[:8]}", make_messages(SIZES[size]))

    async def call() -> int:
        config, ckpt, metadata, versions = chain.next()
        t0 = time.perf_counter_ns()
        codec.encode_checkpoint(saver.serde, config, ckpt, metadata, versions)
        elapsed = time.perf_counter_ns() - t0
        conf = config["configurable"]
        returned: RunnableConfig = {
            "configurable": {"thread_id": conf["thread_id"], "checkpoint_ns": "", "checkpoint_id": ckpt["id"]}
        }
        chain.advance(returned, ckpt)
        return elapsed

    return call


def serde_writes_call(codec: Any, saver: BaseCheckpointSaver[Any], size: str) -> Call:
    """``codec.encode_writes`` of the writes the ``aput_writes`` row stores (no I/O)."""
    config: RunnableConfig = {
        "configurable": {
            "thread_id": f"lat-serde-w-{size}",
            "checkpoint_ns": "",
            "checkpoint_id": empty_checkpoint()["id"],
        }
    }
    writes = make_writes(SIZES[size], seed=5)

    async def call() -> int:
        task_id = new_task_id()
        t0 = time.perf_counter_ns()
        codec.encode_writes(saver.serde, config, writes, task_id, "")
        return time.perf_counter_ns() - t0

    return call


def serde_rows(env: BenchEnv) -> list[Row]:
    """The serde rows, one per (operation, size), with the serde of the first Skialith saver."""
    codec = load_codec()
    if isinstance(codec, str):
        env.notes.append(f"serde rows skipped: {codec}")
        return []
    skialith = [c for c in env.latency_contenders if c.skialith]
    saver = (skialith or env.latency_contenders)[0].saver
    rows: list[Row] = []
    for size in SIZES:
        rows.append(Row("serde", size, SERDE_PUT, serde_put_call(codec, saver, size)))
        rows.append(Row("serde", size, SERDE_WRITES, serde_writes_call(codec, saver, size)))
    return rows


async def build_rows(env: BenchEnv) -> list[Row]:
    """Every row of the latency table, prepared (threads written, projections caught up)."""
    rows: list[Row] = []
    for name, floor in env.floors.items():
        for size, n in SIZES.items():
            payload = os.urandom(n)
            rows.append(Row("publish", size, name, _timed(functools.partial(floor.publish, payload))))
    raw = os.urandom(SIZES["1KiB"])
    rows.append(Row("insert", "1KiB", RAW_INSERT, _timed(functools.partial(env.raw_insert, raw))))
    rows.append(Row("insert", "1KiB", SQLA_INSERT, _timed(functools.partial(env.sqla_insert, raw))))
    if env.agent is not None:
        rows.append(Row("save_event", "1KiB", SAVE_EVENT, save_event_call(env.agent), skialith=True))
    contenders = env.latency_contenders
    if contenders:
        rows += serde_rows(env)
    readers = {side.contender.name: side.reader for side in env.skialith}
    tag = uuid.uuid4().hex[:6]
    for op in OPS:
        for size in SIZES:
            for c in contenders:
                if op == "aput":
                    call = aput_call(c, size, tag=tag)
                elif op == "aput_writes":
                    call = await aput_writes_call(c, size, tag=tag)
                elif op == "aget_tuple":
                    call = await aget_tuple_call(c, size, tag=tag)
                else:
                    call = await alist_call(c, size, tag=tag)
                rows.append(Row(op, size, c.name, call, skialith=c.skialith))
                reader = readers.get(c.name)
                if reader is not None and op in ("aget_tuple", "alist"):
                    make = aget_tuple_call if op == "aget_tuple" else alist_call
                    call = await make(c, size, tag=tag, reader=reader)
                    rows.append(Row(op, size, reader.name, call, skialith=True))
    await env.caught_up()
    return rows


def save_event_call(agent: Any) -> Call:
    """``SkialithAgent.save_event`` of an event of about 1 KiB, a new name each call."""
    text = _text(SIZES["1KiB"] - 40, 0)  # the event serializes to about 1 KiB
    counter = iter(range(1 << 62))

    async def call() -> int:
        name = f"e{next(counter)}"
        t0 = time.perf_counter_ns()
        await agent.save_event(name, {"kind": "thought", "text": text})
        return time.perf_counter_ns() - t0

    return call


async def run_interleaved(rows: list[Row], *, iterations: int, block: int, warmup: int) -> None:
    """Fill every row's sample: ``warmup`` untimed calls each, then rounds of ``block`` calls per row."""
    for row in rows:
        for _ in range(warmup):
            await row.call()
    # every row of a payload size takes its turn in the same rotation, floors included: a block
    # right after a database's (its background flushing still running) befalls any row alike
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.size, []).append(row)
    rounds = max(1, -(-iterations // block))
    with gc_section():
        for r in range(rounds):
            n = min(block, iterations - r * block)
            for group in groups.values():
                k = r % len(group)
                with collected_outside():
                    for row in group[k:] + group[:k]:
                        for _ in range(n):
                            row.sample.add(await row.call())


PAUSED = " (projector paused)"


async def run_paused(env: BenchEnv, *, iterations: int, block: int, warmup: int) -> list[Row]:
    """The 1 KiB floor, the serde of ``aput`` and Skialith ``aput``, interleaved, with the projector
    process frozen.

    The main latency table runs with the projector consuming every write on the same cores; this
    splits what the write path costs from what co-located projection costs it, and gives the
    write target (``aput`` within 1.25x of floor + serde) all three figures from the same blocks.
    """
    if not env.skialith or FLOOR not in env.floors:
        return []
    side, floor = env.skialith[0], env.floors[FLOOR]
    payload = os.urandom(SIZES["1KiB"])
    rows = [
        Row("publish", "1KiB", FLOOR + PAUSED, _timed(functools.partial(floor.publish, payload))),
        Row("aput", "1KiB", side.contender.name + PAUSED, aput_call(side.contender, "1KiB", tag="paused")),
    ]
    codec = load_codec()
    if not isinstance(codec, str):
        serde = serde_put_call(codec, side.contender.saver, "1KiB")
        rows.insert(1, Row("serde", "1KiB", SERDE_PUT + PAUSED, serde))
    side.projector.pause()
    try:
        await run_interleaved(rows, iterations=iterations, block=block, warmup=warmup)
    finally:
        side.projector.resume()
    await side.caught_up()
    return rows


def floor_for(row: Row) -> str:
    """The floor a Skialith row is compared with (the same server's PubAck floor)."""
    return FLOOR_ALWAYS if row.contender.startswith(SKIALITH_ALWAYS) else FLOOR


def serde_for(row: Row) -> str | None:
    """The serde row (contender name, op ``"serde"``) that a row's operation must pay, if any."""
    return SERDE_OF.get(row.op)
