"""Concurrent writers: N async agents (tasks) in one process, each doing ``aput`` on its own thread.

Skialith runs with one shared checkpointer, as one compiled graph serving many threads would.
LangGraph's MySQL and Postgres savers serialise every call of an instance behind an
``asyncio.Lock`` (even over a pool), so they are measured twice: one shared saver (what one
compiled graph gets) and one saver per agent over a shared pool of N connections (their best
case in one process).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.mysql.aio import AIOMySQLSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from .contender import MYSQL, POSTGRES
from .env import BenchEnv
from .payloads import SIZES, CheckpointChain, make_messages
from .stats import Sample

LEVELS = (1, 8, 64)
Savers = Callable[[int], list[BaseCheckpointSaver[Any]]]  # agents -> the savers they use, in turn
SHARED = "shared saver"
PER_AGENT = "saver per agent, pool of N"


@dataclass(slots=True)
class ConcurrencyPoint:
    """One contender at one concurrency level."""

    contender: str
    mode: str
    agents: int
    writes: int = 0
    seconds: float = 0.0
    sample: Sample = field(default_factory=Sample)

    @property
    def writes_per_s(self) -> float:
        """Acknowledged writes per second over the whole window."""
        return self.writes / self.seconds if self.seconds > 0 else 0.0


async def _agent(
    saver: BaseCheckpointSaver[Any], point: ConcurrencyPoint, deadline: float, messages: Any
) -> None:
    chain = CheckpointChain(saver, f"c-{point.agents}-{uuid.uuid4().hex[:10]}", messages)
    while time.monotonic() < deadline:
        config, ckpt, metadata, versions = chain.next()
        t0 = time.perf_counter_ns()
        returned = await saver.aput(config, ckpt, metadata, versions)
        point.sample.add(time.perf_counter_ns() - t0)
        chain.advance(returned, ckpt)
        point.writes += 1


async def measure(savers: Savers, point: ConcurrencyPoint, duration: float) -> ConcurrencyPoint:
    """Run ``point.agents`` agents for ``duration`` seconds; agent i uses ``savers(n)[i % len]``."""
    messages = make_messages(SIZES["1KiB"])
    pool = savers(point.agents)
    # warm-up: one write per saver, untimed
    for s in pool:
        chain = CheckpointChain(s, f"c-warm-{uuid.uuid4().hex[:8]}", messages)
        config, ckpt, metadata, versions = chain.next()
        await s.aput(config, ckpt, metadata, versions)
    start = time.monotonic()
    deadline = start + duration
    await asyncio.gather(
        *(_agent(pool[i % len(pool)], point, deadline, messages) for i in range(point.agents))
    )
    point.seconds = time.monotonic() - start
    return point


async def run_concurrency(
    env: BenchEnv, *, duration: float, levels: tuple[int, ...] = LEVELS
) -> list[ConcurrencyPoint]:
    """Measure every contender at every level (see module docstring)."""
    points: list[ConcurrencyPoint] = []
    peers = {c.name: c for c in env.peers}
    for n in levels:
        async with AsyncExitStack() as stack:
            shared = [c for c in env.contenders if c.skialith] + [peers[MYSQL], peers[POSTGRES]]
            for c in shared:
                points.append(await measure(_shared(c.saver), ConcurrencyPoint(c.name, SHARED, n), duration))
            if n == 1:
                continue  # one agent: a saver per agent is the shared case
            mysql_pool = await env.pool(n)
            stack.push_async_callback(_close_mysql_pool, mysql_pool)
            pg = AsyncConnectionPool(
                env.dbs.postgres_db_url(f"{env.dbs.prefix}_peer"),
                connection_class=AsyncConnection[DictRow],
                min_size=n,
                max_size=n,
                open=False,
                kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
            )
            await pg.open(wait=True)
            stack.push_async_callback(pg.close)
            my_savers = _per_agent(functools.partial(AIOMySQLSaver, mysql_pool))
            points.append(await measure(my_savers, ConcurrencyPoint(MYSQL, PER_AGENT, n), duration))
            pg_savers = _per_agent(functools.partial(AsyncPostgresSaver, pg))
            points.append(await measure(pg_savers, ConcurrencyPoint(POSTGRES, PER_AGENT, n), duration))
    return points


def _shared(saver: BaseCheckpointSaver[Any]) -> Savers:
    """Every agent uses the same saver."""

    def savers(_agents: int) -> list[BaseCheckpointSaver[Any]]:
        return [saver]

    return savers


def _per_agent(make: Callable[[], BaseCheckpointSaver[Any]]) -> Savers:
    """Each agent gets a saver of its own."""

    def savers(agents: int) -> list[BaseCheckpointSaver[Any]]:
        return [make() for _ in range(agents)]

    return savers


async def _close_mysql_pool(pool: Any) -> None:
    pool.close()
    await pool.wait_closed()
