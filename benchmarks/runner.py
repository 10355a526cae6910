"""Runs the sections of one benchmark run in order and collects their results."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass

from .concurrency import run_concurrency
from .contender import MYSQL, RAW_INSERT
from .env import BenchEnv, Options
from .graph import run_graphs
from .jetstream_side import describe_reads, read_stats
from .latency import build_rows, run_interleaved, run_paused
from .projector_bench import run_projector
from .results import Results
from .stats import GC_NOTE

VERSIONED = (
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-mysql",
    "langgraph-checkpoint-postgres",
    "langgraph-checkpoint-sqlite",
    "nats-py",
    "aiomysql",
    "PyMySQL",
    "psycopg",
    "aiosqlite",
    "SQLAlchemy",
)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each section to run."""

    iterations: int
    block: int
    warmup: int
    fresh_runs: int
    long_runs: int
    graph_block: int
    reads: int
    concurrency_s: float
    projector_count: int
    lag_rate: float
    lag_s: float
    bounded_reads: int  # per thread kind; cheap reads, and the 1.2x target needs a steady p50

    @classmethod
    def for_options(cls, options: Options) -> Plan:
        """The default full plan (about 3 min on a 2-core machine), or the ``--quick`` smoke plan."""
        if options.quick:
            plan = cls(20, 10, 2, 2, 6, 3, 5, 0.2, 1_000, 200.0, 1.0, 5)
        else:
            plan = cls(1000, 10, 20, 60, 150, 10, 30, 1.5, 20_000, 500.0, 4.0, 100)
        if options.iterations is not None:
            n = max(1, options.iterations)
            plan = dataclasses.replace(plan, iterations=n, block=min(plan.block, n))
        return plan


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import skialith_langgraph

        out["skialith-langgraph"] = str(getattr(skialith_langgraph, "__version__", "?"))
    except Exception:
        pass
    return out


class Laps:
    """Wall-clock time of each section, for the report header and the JSON."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.monotonic()

    def lap(self, section: str) -> None:
        """Record the time since the previous lap under ``section`` and report it."""
        now = time.monotonic()
        self.seconds[section] = now - self._mark
        self._mark = now
        progress(f"{section} took {self.seconds[section]:.1f} s")


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _reads(env: BenchEnv) -> dict[str, dict[str, int]]:
    sides = [c for side in env.skialith for c in (side.contender, side.reader)]
    return {c.name: read_stats(c.saver) for c in sides}


def _read_notes(env: BenchEnv, section: str, before: dict[str, dict[str, int]]) -> list[str]:
    after = _reads(env)
    notes = (describe_reads(name, section, before[name], after[name]) for name in after)
    return [n for n in notes if n]


def progress(message: str) -> None:
    """Print a progress line to stderr (stdout carries the report)."""
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


async def run(options: Options, command: str) -> Results:
    """Run the sections selected in ``options`` and return everything they measured."""
    plan = Plan.for_options(options)
    started = time.monotonic()
    results = Results()
    results.meta = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "command": command,
        "plan": dataclasses.asdict(plan),
        "versions": _versions(),
        "loadavg_start": _loadavg(),
    }
    laps = Laps()
    progress("starting nats-server(s), creating databases, opening savers")
    async with BenchEnv(options) as env:
        for note in env.notes:
            progress(f"NOTE: {note}")
        results.notes.extend(env.notes)
        for name, floor in env.floors.items():
            results.settings[name] = floor.settings
        results.settings[RAW_INSERT] = env.mysql_info
        for c in env.latency_contenders:
            results.settings[c.name] = c.settings
            if c.note:
                results.notes.insert(
                    0, f"¹ {c.name}: {c.note}." if c.name == MYSQL else f"{c.name}: {c.note}."
                )
        laps.lap("setup")
        if "latency" in options.sections:
            progress(f"latency: {plan.iterations} calls per row in blocks of {plan.block}")
            rows = await build_rows(env)
            before = _reads(env)
            await run_interleaved(rows, iterations=plan.iterations, block=plan.block, warmup=plan.warmup)
            results.notes.extend(_read_notes(env, "the latency section", before))
            results.latency = rows
            progress("latency: the 1 KiB floor and aput again, with the projector process frozen")
            results.paused = await run_paused(
                env, iterations=plan.iterations, block=plan.block, warmup=plan.warmup
            )
            laps.lap("latency")
        if "graph" in options.sections:
            progress(
                f"graph: {plan.fresh_runs} fresh-thread runs, {plan.long_runs} long-thread runs per saver, "
                f"then {plan.long_runs} runs per saver on a bounded-state long thread"
            )
            before = _reads(env)
            results.graph = await run_graphs(
                env.contenders,
                fresh_runs=plan.fresh_runs,
                long_runs=plan.long_runs,
                block=plan.graph_block,
                reads=plan.reads,
                bounded_runs=plan.long_runs,
                bounded_reads=plan.bounded_reads,
                readers={
                    side.contender.name: side.reader
                    for side in env.skialith
                    if side.contender in env.contenders
                },
                settle=env.caught_up,
            )
            results.notes.extend(_read_notes(env, "the whole-graph section", before))
            laps.lap("graph")
        if "concurrency" in options.sections:
            progress(f"concurrency: {plan.concurrency_s} s per point")
            results.concurrency = await run_concurrency(env, duration=plan.concurrency_s)
            laps.lap("concurrency")
        if "projector" in options.sections:
            if env.skialith_api is None:
                results.notes.append(
                    "Projector section skipped: the Skialith package is not usable (see above)."
                )
            else:
                progress(f"projector: {plan.projector_count} checkpoints backlog, lag at {plan.lag_rate:g}/s")
                results.projector = await run_projector(
                    env, count=plan.projector_count, rate=plan.lag_rate, seconds=plan.lag_s
                )
                laps.lap("projector")
        progress("stopping servers, dropping this run's databases")
    laps.lap("teardown")
    results.notes.extend(n for n in env.notes if n not in results.notes)
    if results.latency or results.graph:
        results.notes.append(GC_NOTE)
    results.meta["loadavg_end"] = _loadavg()
    results.meta["seconds"] = time.monotonic() - started
    results.meta["section_seconds"] = laps.seconds
    results.meta["sections"] = ", ".join(f"{k} {v:.0f} s" for k, v in laps.seconds.items())
    return results
