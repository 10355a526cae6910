"""Faults on a real three-node JetStream cluster (R3 stream), caused for real with kill -9.

* The stream leader is killed while LangGraph graphs (SkialithCheckpointer) and SkialithAgent
  agents write concurrently: every acknowledged write stays readable (checkpointer and agent
  reads, and the read model after projection equals the log), writes resume once a new leader is
  elected, and the error window (first failed write -> every writer succeeding again) stays under
  :data:`ERROR_WINDOW_BOUND`. Two projector replicas run on two different nodes' connections.
* A second node is killed (no quorum): writes fail within the publish timeout plus one second with
  a PublishError that names the lost quorum; nothing acknowledged is lost; when a node returns,
  writes go on.

Writes that fail are retried the way an application would (the same agent step; the graph run
again): a write whose PubAck was lost may be stored twice on the stream, and the read model must
still hold one row per key, equal to a replay of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from sqlalchemy import func, select

from skialith_langgraph import Settings, SkialithAgent, SkialithCheckpointer
from skialith_langgraph.cluster import LocalCluster
from skialith_langgraph.errors import PublishError, SkialithError
from skialith_langgraph.log import Log
from skialith_langgraph.projector import Projector
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import agent_events
from tests.cluster import cluster_settings, running_cluster, stream_leader
from tests.support import dump, dump_of_log, wait_for_watermark

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PUBLISH_TIMEOUT = 2.0  # seconds; a write without a PubAck fails after this (plus <= 1 s of diagnosis)
# first failed write -> every writer has succeeded again, after kill -9 of the stream leader. NATS
# elects a new stream leader after its election timeout (4-9 s without the leader's heartbeats);
# a write in flight then waits up to PUBLISH_TIMEOUT + 1 s: 9 + 3 + retry slack
ERROR_WINDOW_BOUND = 15.0
RECOVERY_BOUND = 20.0  # seconds from a node's return (quorum back) to the first write acknowledged
GRAPHS, AGENTS = 3, 2


class Steps(TypedDict):
    steps: Annotated[list[int], operator.add]


def graph() -> Any:
    """One node that answers the input step ``i`` with ``-i``: a run stores 3 checkpoints."""

    def work(state: Steps) -> dict[str, list[int]]:
        return {"steps": [-state["steps"][-1]]}

    g = StateGraph(Steps)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_edge("work", END)
    return g


@dataclass
class Writers:
    """Concurrent writers and what each had acknowledged, with the time of each outcome."""

    settings: Settings
    graph_acks: dict[str, list[list[int]]] = field(default_factory=dict)
    agent_acks: dict[str, dict[int, Any]] = field(default_factory=dict)
    successes: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def acked_since(self, t: float, who: str) -> int:
        return sum(1 for at, w in self.successes if at > t and w == who)

    async def graph_writer(self, thread: str) -> None:
        acks = self.graph_acks.setdefault(thread, [])
        async with SkialithCheckpointer(settings=self.settings) as saver:
            app = graph().compile(checkpointer=saver)
            config: Any = {"configurable": {"thread_id": thread}}
            i = 1
            while not self.stop.is_set():
                try:
                    out = await app.ainvoke({"steps": [i]}, config)
                except SkialithError as exc:
                    self.failures.append((time.monotonic(), thread, str(exc)))
                    await asyncio.sleep(0.1)
                    continue  # run it again, as an application would
                acks.append(list(out["steps"]))
                self.successes.append((time.monotonic(), thread))
                i += 1

    async def agent_writer(self, agent_id: str) -> None:
        acks = self.agent_acks.setdefault(agent_id, {})
        async with SkialithAgent(agent_id, settings=self.settings) as agent:
            step = 0
            while not self.stop.is_set():
                data = {"step": step, "attempt": secrets.token_hex(4)}
                try:
                    await agent.checkpoint(step, data)
                except SkialithError as exc:
                    self.failures.append((time.monotonic(), agent_id, str(exc)))
                    await asyncio.sleep(0.1)
                    continue  # the same step again: one row per step in the read model
                acks[step] = data
                self.successes.append((time.monotonic(), agent_id))
                step += 1

    @property
    def names(self) -> list[str]:
        return [f"g{i}" for i in range(GRAPHS)] + [f"a{i}" for i in range(AGENTS)]

    def tasks(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.graph_writer(f"g{i}")) for i in range(GRAPHS)] + [
            asyncio.create_task(self.agent_writer(f"a{i}")) for i in range(AGENTS)
        ]

    async def until_each_acked(self, since: float, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.acked_since(since, w) >= n for w in self.names):
            assert time.monotonic() < deadline, (
                f"writers did not each get {n} acks within {timeout} s: "
                f"{ {w: self.acked_since(since, w) for w in self.names} }; last failures {self.failures[-3:]}"
            )
            await asyncio.sleep(0.05)

    def error_window(self) -> tuple[float, float]:
        """(first failure, the moment every writer that failed had succeeded again)."""
        assert self.failures, "no write failed: the kill did not hit the writers"
        first = min(t for t, _, _ in self.failures)
        recovered = first
        for who in {w for _, w, _ in self.failures}:
            last_fail = max(t for t, w, _ in self.failures if w == who)
            after = [t for t, w in self.successes if w == who and t > last_fail]
            assert after, f"{who} never succeeded after its last failure"
            recovered = max(recovered, min(after))
        return first, recovered


async def check_nothing_lost(writers: Writers, settings: Settings) -> None:
    """Every acknowledged write is readable: the graph threads through the checkpointer, the
    agents through SkialithAgent (one row per step, holding the last value acknowledged)."""
    async with SkialithCheckpointer(settings=settings) as saver:
        for thread, acks in writers.graph_acks.items():
            assert acks, f"{thread} has no acknowledged run"
            config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            latest = await saver.aget_tuple(config)
            assert latest is not None
            stored = latest.checkpoint["channel_values"]["steps"]
            history = {
                tuple(t.checkpoint["channel_values"].get("steps", [])) async for t in saver.alist(config)
            }
            for acked in acks:
                assert stored[: len(acked)] == acked, f"{thread}: acknowledged {acked} is not in {stored}"
                assert tuple(acked) in history, f"{thread}: the checkpoint of {acked} is gone"
    for agent_id, acks in writers.agent_acks.items():
        async with SkialithAgent(agent_id, settings=settings) as agent:
            state = await agent.resume()
            assert state.last_step is not None and state.last_step >= max(acks)
            records = await agent.history(kind="checkpoint")
            by_step = {r.step: r.payload for r in records}
            assert len(by_step) == len(records), f"{agent_id}: a step appears twice"
            for step, data in acks.items():
                assert by_step[step] == data, f"{agent_id} step {step}: {by_step.get(step)} != {data}"


def projector_states(running: list[Projector]) -> list[str]:
    """What each projector is doing, for a failure message."""
    out = []
    for p in running:
        task: asyncio.Task[None] | None = getattr(p, "_task", None)
        ended = task is not None and task.done() and not task.cancelled()
        failure = task.exception() if ended and task is not None else None
        out.append(f"{p.durable}: running={p.running} ended={ended} failure={failure!r} stats={p.stats}")
    return out


async def check_read_model(
    settings: Settings, writers: Writers, running: list[Projector] | None = None
) -> None:
    """After projection, the read model equals a replay of the whole log, one row per agent step."""
    log = await Log.open(settings)
    model = ReadModel.from_url(settings.database_url)
    try:
        try:
            await wait_for_watermark(model, await log.stream_last_seq(), timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; projectors: {projector_states(running or [])}") from exc
        async with model.connect() as conn:
            assert await dump(conn) == await dump_of_log(log)
            rows = (
                await conn.execute(
                    select(agent_events.c.agent_id, agent_events.c.step, func.count())
                    .where(agent_events.c.kind == "checkpoint")
                    .group_by(agent_events.c.agent_id, agent_events.c.step)
                )
            ).all()
        assert all(n == 1 for _, _, n in rows)
        for agent_id, acks in writers.agent_acks.items():
            assert {s for a, s, _ in rows if a == agent_id} >= set(acks)
    finally:
        await log.close()
        await model.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path / "cluster", nodes=3, token=secrets.token_urlsafe(24)) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def projectors(settings: Settings, urls: list[str]) -> Any:
    """One projector replica per URL, each connected to that node only."""
    running = []
    for i, url in enumerate(urls):
        p = Projector(settings.replace(nats_url=url), replica=f"p{i}", fetch_timeout=0.1)
        await p.start()
        running.append(p)
    try:
        yield running
    finally:
        for p in running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.stop(), 15)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.close(), 15)


async def test_kill_9_of_the_stream_leader_loses_no_acknowledged_write(
    cluster: LocalCluster, tmp_path: Path, unique: str
) -> None:
    settings = cluster_settings(cluster, unique, tmp_path / "rm.db", publish_timeout=PUBLISH_TIMEOUT)
    async with SkialithCheckpointer(settings=settings) as saver:
        await saver.asetup()
    leader = await stream_leader(cluster.urls, settings.stream, token=cluster.token)
    follower = next(n for n in cluster.nodes if n.name != leader)
    # one projector on the leader's node (it loses its connection), one on a follower's
    async with projectors(settings, [cluster.node(leader).url, follower.url]) as running:
        writers = Writers(settings)
        tasks = writers.tasks()
        try:
            await writers.until_each_acked(0.0, 3, timeout=30)
            killed_at = time.monotonic()
            cluster.kill(leader)  # SIGKILL: no goodbye to the peers
            await writers.until_each_acked(killed_at, 5, timeout=40)
        finally:
            writers.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        new_leader = await stream_leader(
            [n.url for n in cluster.nodes if n.name != leader], settings.stream, token=cluster.token
        )
        assert new_leader != leader
        first, recovered = writers.error_window()
        window = recovered - first
        print(
            f"\nleader {leader} killed; new leader {new_leader}; error window {window:.2f} s "
            f"(kill -> first failure {first - killed_at:.2f} s), {len(writers.failures)} failed writes, "
            f"{len(writers.successes)} acknowledged"
        )
        assert window < ERROR_WINDOW_BOUND, f"error window {window:.2f} s"
        kinds = sorted({m[:150] for _, _, m in writers.failures})
        print("failures:\n  " + "\n  ".join(kinds))
        # each names where (the URL), or which stream and why
        assert all("nats://" in m or settings.stream in m for _, _, m in writers.failures), kinds
        await check_nothing_lost(writers, settings)
        # the projector on the follower's node kept projecting while the leader's node is down
        await check_read_model(settings.replace(nats_url=follower.url), writers, running)
        cluster.start_node(leader)  # the node returns and catches up; its projector reconnects
    await check_read_model(settings, writers)


async def test_without_quorum_writes_fail_fast_naming_it_and_resume_when_a_node_returns(
    cluster: LocalCluster, tmp_path: Path, unique: str
) -> None:
    settings = cluster_settings(cluster, unique, tmp_path / "rm.db", publish_timeout=PUBLISH_TIMEOUT)
    leader = None
    writers = Writers(settings)
    async with projectors(settings, [cluster.nodes[0].url, cluster.nodes[1].url]) as running:
        async with (
            SkialithAgent("q", settings=settings) as agent,
            SkialithCheckpointer(settings=settings) as saver,
        ):
            app = graph().compile(checkpointer=saver)
            config: Any = {"configurable": {"thread_id": "t"}}
            acked_runs = [list((await app.ainvoke({"steps": [i]}, config))["steps"]) for i in (1, 2)]
            for step in range(3):
                await agent.checkpoint(step, {"step": step})
            writers.graph_acks["t"] = acked_runs
            writers.agent_acks["q"] = {s: {"step": s} for s in range(3)}
            leader = await stream_leader(cluster.urls, settings.stream, token=cluster.token)
            survivor = next(n for n in cluster.nodes if n.name != leader)
            cluster.kill(leader)
            second = next(n for n in cluster.nodes if n.name not in (leader, survivor.name))
            cluster.kill(second.name)  # one node of three left: no quorum
            for attempt in range(2):
                started = time.monotonic()
                with pytest.raises(PublishError) as caught:
                    await agent.checkpoint(3, {"step": 3})
                took = time.monotonic() - started
                message = str(caught.value)
                print(f"\nno quorum, attempt {attempt}: PublishError after {took:.2f} s: {message}")
                assert took < PUBLISH_TIMEOUT + 1.5, f"took {took:.2f} s"
                assert "quorum" in message
            # reads need the stream's identity (a stream info, answered by its leader): they fail
            # the same way, bounded, naming the cause
            for read in (agent.resume(), saver.aget_tuple(config)):
                started = time.monotonic()
                with pytest.raises(SkialithError, match="quorum"):
                    await read
                assert time.monotonic() - started < PUBLISH_TIMEOUT + 1.5
            with pytest.raises(SkialithError, match="quorum"):  # a graph run: its first read fails
                await app.ainvoke({"steps": [3]}, config)
            returned_at = time.monotonic()
            cluster.start_node(second.name)  # two of three: a leader again
            deadline = returned_at + RECOVERY_BOUND
            while True:
                try:
                    await agent.checkpoint(3, {"step": 3})
                    break
                except PublishError:
                    assert time.monotonic() < deadline, "writes did not resume after a node returned"
            print(f"a node returned; first write acknowledged {time.monotonic() - returned_at:.2f} s later")
            writers.agent_acks["q"][3] = {"step": 3}
            while True:  # the graph too (its reads may find JetStream's API still settling)
                try:
                    out = await app.ainvoke({"steps": [4]}, config)
                    break
                except SkialithError:
                    assert time.monotonic() < deadline, "graph runs did not resume after a node returned"
                    await asyncio.sleep(0.2)
            writers.graph_acks["t"].append(list(out["steps"]))
        await check_nothing_lost(writers, settings)
        await check_read_model(settings.replace(nats_url=cluster.node(second.name).url), writers, running)


async def test_a_write_acknowledged_on_r3_is_read_at_once_by_another_process(
    cluster: LocalCluster, tmp_path: Path, unique: str
) -> None:
    """Read-your-writes across processes on an R3 stream: any replica answers a direct get, and
    the third one may not hold a write the PubAck (a majority) already confirmed. Reads ask the
    leader where a thread ends, and read again until a replica has it: none of 60 reads right
    after each PubAck finds an older checkpoint (13 of 300 did before)."""
    # agent checkpoints of ~3 KiB travel in parts: a replica must have the parts too
    settings = cluster_settings(cluster, unique, tmp_path / "rm.db", chunk_size=1024)
    async with (
        SkialithCheckpointer(settings=settings) as writer,
        SkialithCheckpointer(settings=settings) as reader,
        SkialithAgent("ryw", settings=settings) as agent,
        SkialithAgent("ryw", settings=settings) as other,
    ):
        await writer.asetup()
        config: Any = {"configurable": {"thread_id": "ryw", "checkpoint_ns": ""}}
        stale = 0
        for i in range(60):
            checkpoint = empty_checkpoint()
            await writer.aput(config, checkpoint, {"step": i}, {})
            found = await reader.aget_tuple(config)
            stale += found is None or found.checkpoint["id"] != checkpoint["id"]
            await agent.checkpoint(i, {"i": i, "pad": str(i) * 3000})
            state = await other.resume()
            stale += state.step_index != i + 1 or state.data != {"i": i, "pad": str(i) * 3000}
        assert stale == 0, f"{stale} reads found an older state than the one acknowledged"
