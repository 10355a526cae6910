"""The results of one run, and their JSON form (raw samples included)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .concurrency import ConcurrencyPoint
from .graph import GraphResult
from .latency import Row
from .projector_bench import ProjectorResult
from .stats import Sample


@dataclass(slots=True)
class Results:
    """Everything one run measured, plus what it ran on."""

    meta: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # contender -> durability settings
    notes: list[str] = field(default_factory=list)
    latency: list[Row] = field(default_factory=list)
    paused: list[Row] = field(default_factory=list)  # floor and aput with the projector frozen
    graph: GraphResult | None = None
    concurrency: list[ConcurrencyPoint] = field(default_factory=list)
    projector: ProjectorResult | None = None


def _raw(sample: Sample) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sample.durations_ns:
        out.update(sample.summary().as_dict())
    out["raw_ms"] = [round(ns / 1e6, 4) for ns in sample.durations_ns]
    return out


def to_json(results: Results) -> dict[str, Any]:
    """A JSON-ready dict of every number, with raw per-call durations in milliseconds."""
    doc: dict[str, Any] = {"meta": results.meta, "settings": results.settings, "notes": results.notes}
    doc["latency"] = [
        {"op": r.op, "size": r.size, "contender": r.contender, **_raw(r.sample)} for r in results.latency
    ]
    doc["latency_projector_paused"] = [
        {"op": r.op, "size": r.size, "contender": r.contender, **_raw(r.sample)} for r in results.paused
    ]
    if results.graph is not None:
        g = results.graph
        doc["graph"] = {
            "fresh_runs": g.fresh_runs,
            "long_runs": g.long_runs,
            "runs": [
                {"contender": s.contender, "durability": s.durability, "thread": s.thread, **_raw(s.sample)}
                for s in g.series
            ],
            "aget_tuple": {name: {k: _raw(v) for k, v in kinds.items()} for name, kinds in g.reads.items()},
        }
        if g.bounded is not None:
            b = g.bounded
            doc["graph"]["bounded"] = {
                "runs": b.runs,
                "keep_messages": b.keep,
                "durability": "sync",
                "run_ms": {name: _raw(sample) for name, sample in b.run_samples.items()},
                "aget_tuple": {
                    name: {k: _raw(v) for k, v in kinds.items()} for name, kinds in b.reads.items()
                },
            }
    doc["concurrency"] = [
        {
            "contender": p.contender,
            "mode": p.mode,
            "agents": p.agents,
            "writes": p.writes,
            "seconds": p.seconds,
            "writes_per_s": p.writes_per_s,
            **_raw(p.sample),
        }
        for p in results.concurrency
    ]
    if results.projector is not None:
        pr = results.projector
        doc["projector"] = {
            "checkpoints": pr.checkpoints,
            "rows": pr.rows,
            "seconds": pr.seconds,
            "checkpoints_per_s": pr.checkpoints_per_s,
            "rows_per_s": pr.rows_per_s,
            "batch_size": pr.batch_size,
            "lag_offered_rate_per_s": pr.lag_rate,
            "lag_window_s": pr.lag_seconds,
            "lag_writes": pr.lag_writes,
            "lag": _raw(pr.lag),
            "settings": pr.settings,
        }
    return doc
