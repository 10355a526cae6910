"""Helpers shared by tests: compare a read model with what the log says, row by row."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from skialith_langgraph.log import Log
from skialith_langgraph.readmodel import PROJECTION, ReadModel
from skialith_langgraph.readmodel.apply import watermark
from skialith_langgraph.readmodel.tables import agent_events, checkpoint_blobs, checkpoint_writes, checkpoints
from skialith_langgraph.views import replay

TABLES = (checkpoints, checkpoint_blobs, checkpoint_writes, agent_events)


async def dump(conn: AsyncConnection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the data tables, sorted, so two read models compare with ``==``."""
    out = {}
    for table in TABLES:
        rows = (await conn.execute(select(table))).all()
        out[table.name] = sorted(tuple(r) for r in rows)
    return out


async def dump_of_log(log: Log) -> dict[str, list[tuple[Any, ...]]]:
    """What the read model must hold: the whole stream replayed into a fresh in-memory model."""
    last = await log.stream_last_seq()
    async with replay(log, None, last) as conn:
        return await dump(conn)


async def wait_for_watermark(model: ReadModel, seq: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with model.connect() as conn:
            if await watermark(conn, PROJECTION) >= seq:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"projection did not reach seq {seq} within {timeout} s")
        await asyncio.sleep(0.05)
