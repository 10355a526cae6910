"""Encrypted state (issue 10, item 3): LangGraph's ``EncryptedSerializer`` over the strict serde
works end to end. Values are unreadable in the stream and in the read model (the stored bytes are
searched for a marker written in state), the projector and the trace ingest run without the key,
readers with the key decrypt (get_tuple, list, a graph resumed by another saver), and a reader
without the key fails saying which type it cannot read."""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.graph import END, START, StateGraph
from sqlalchemy import select
from support import wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.codec import strict_serde
from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import metadata
from skialith_langgraph.traces import TraceIngest

pytest.importorskip("Crypto", reason="pycryptodome (the 'encryption' extra) is not installed")

MARKER = "s3cret-marker-7f1c"
KEY = "0123456789abcdef0123456789abcdef"  # 32 bytes: AES-256


@dataclass
class Note:
    text: str


class State(TypedDict):
    log: Annotated[list[str], operator.add]
    note: Any


def graph() -> Any:
    def first(state: State) -> dict[str, Any]:
        return {"log": [f"first saw {MARKER}"], "note": Note(MARKER)}

    def second(state: State) -> dict[str, Any]:
        return {"log": ["second"]}

    builder = StateGraph(State)
    builder.add_node("first", first)
    builder.add_node("second", second)
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", END)
    return builder.compile(interrupt_before=["second"])


def encrypted(monkeypatch: pytest.MonkeyPatch) -> EncryptedSerializer:
    """What a user writes: the key from LANGGRAPH_AES_KEY, the strict serde inside."""
    monkeypatch.setenv("LANGGRAPH_AES_KEY", KEY)
    serde = EncryptedSerializer.from_pycryptodome_aes(serde=strict_serde())
    monkeypatch.delenv("LANGGRAPH_AES_KEY")  # the projector and the ingest below run without it
    return serde


async def stored_bytes(settings: Settings) -> bytes:
    """Every message of the test's stream (headers and body) and every row of every table."""
    log = await Log.open(settings)
    out = []
    try:
        async for m in log.read(f"{settings.subject_prefix}.>"):
            out += [m.subject.encode(), m.body]
    finally:
        await log.close()
    model = ReadModel.from_url(settings.database_url)
    try:
        async with model.connect() as conn:
            for table in metadata.sorted_tables:
                for row in (await conn.execute(select(table))).all():
                    out += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    finally:
        await model.close()
    if settings.database_url.startswith("sqlite"):
        path = Path(settings.database_url.split("///", 1)[1])
        for f in (path, path.with_name(path.name + "-wal")):
            if f.exists():
                out.append(f.read_bytes())
    return b"\n".join(out)


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[tuple[Projector, TraceIngest]]:
    projector = Projector(settings, fetch_timeout=0.2)
    ingest = TraceIngest(settings, fetch_timeout=0.2)  # its default serde: strict, no key
    await projector.start()
    await ingest.start()
    try:
        yield projector, ingest
    finally:
        await ingest.stop()
        await projector.stop()


async def run_to_interrupt(saver: SkialithCheckpointer, thread_id: str) -> RunnableConfig:
    cfg: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    app = graph()
    app.checkpointer = saver
    await app.ainvoke({"log": [f"input {MARKER}"], "note": None}, cfg)
    return cfg


async def test_encrypted_state_is_unreadable_stored_and_readable_with_the_key(
    settings: Settings, stack: tuple[Projector, TraceIngest], monkeypatch: pytest.MonkeyPatch
) -> None:
    projector, ingest = stack
    serde = encrypted(monkeypatch)
    writer = SkialithCheckpointer(settings=settings, serde=serde)
    try:
        cfg = await run_to_interrupt(writer, "enc")
        log = await Log.open(settings)
        try:
            last = await log.stream_last_seq()
        finally:
            await log.close()
        model = ReadModel.from_url(settings.database_url)
        try:
            await wait_for_watermark(model, last)  # the projector applied everything, keyless
        finally:
            await model.close()
        await ingest.catch_up(timeout=30)
        traces = await ingest.traces(thread_id="enc")
        assert {t.name for t in traces if t.kind == "task"} >= {"first"}  # ingested, keyless

        stored = await stored_bytes(settings)
        assert MARKER.encode() not in stored
        assert b"msgpack+aes" in stored  # the values' type names say what they are

        # a reader with the key decrypts: get_tuple, list, and the graph goes on from the log/model
        reader = SkialithCheckpointer(settings=settings, serde=serde)
        try:
            tup = await reader.aget_tuple(cfg)
            assert tup is not None
            assert f"first saw {MARKER}" in tup.checkpoint["channel_values"]["log"]
            # strict inside: an unlisted class comes back as its data, not constructed
            assert tup.checkpoint["channel_values"]["note"] == {"text": MARKER}
            assert len([t async for t in reader.alist(cfg)]) >= 3
            allowed = reader.with_allowlist([(__name__, "Note")])
            try:
                got = await allowed.aget_tuple(cfg)
                assert got is not None and got.checkpoint["channel_values"]["note"] == Note(MARKER)
            finally:
                await allowed.aclose()
            app = graph()
            app.checkpointer = reader
            final = await app.ainvoke(None, cfg)  # resumes after the interrupt
            assert final["log"] == [f"input {MARKER}", f"first saw {MARKER}", "second"]
        finally:
            await reader.aclose()
    finally:
        await writer.aclose()

    # a reader without the key fails, naming the encrypted type it cannot read
    keyless = SkialithCheckpointer(settings=settings)
    try:
        with pytest.raises(NotImplementedError, match=r"msgpack\+aes"):
            await keyless.aget_tuple(cfg)
    finally:
        await keyless.aclose()
    # and one with another key fails its integrity check
    other = SkialithCheckpointer(
        settings=settings,
        serde=EncryptedSerializer.from_pycryptodome_aes(serde=strict_serde(), key=b"another key 16 b"),
    )
    try:
        with pytest.raises(ValueError, match="MAC check failed"):
            await other.aget_tuple(cfg)
    finally:
        await other.aclose()


async def test_without_encryption_the_same_search_finds_the_marker(
    settings: Settings, stack: tuple[Projector, TraceIngest]
) -> None:
    """The control: the search of the stored bytes does find plain values."""
    saver = SkialithCheckpointer(settings=settings)
    try:
        await run_to_interrupt(saver, "plain")
        log = await Log.open(settings)
        try:
            last = await log.stream_last_seq()
        finally:
            await log.close()
        model = ReadModel.from_url(settings.database_url)
        try:
            await wait_for_watermark(model, last)
        finally:
            await model.close()
        assert MARKER.encode() in await stored_bytes(settings)
    finally:
        await saver.aclose()
