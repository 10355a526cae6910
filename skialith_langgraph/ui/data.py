"""What the viewer reads beyond :class:`~skialith_langgraph.inspect.Inspector`'s views: thread
search by id, and node timings from ``skialith_agent_traces``."""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import and_, func, or_, select

from ..inspect import THREAD, Inspector, ThreadPage, ThreadSummary, _config, _parse_cursor, _ts, status_of
from ..readmodel.tables import agent_traces, checkpoints
from ..subjects import token
from ..traces import AGENT, LANGGRAPH

_C = checkpoints.c
_T = agent_traces.c

TIMINGS_LIMIT = 2000  # spans per answer: the newest, enough for the chart of a long thread's end


async def search_threads(insp: Inspector, q: str, *, limit: int, after: str | None) -> ThreadPage:
    """LangGraph threads whose id contains ``q`` (case as stored), most recently written first,
    keyset-paged like :meth:`Inspector.threads` (the same cursor format). Read through the
    whole-stream view, so a thread written a moment ago is found with the projector stopped."""
    cursor = _parse_cursor(after)
    core = await insp.checkpointer._acore()
    last = func.max(_C.seq)
    query = (
        select(func.min(_C.thread_id), func.count(), last, _C.thread_key)
        .where(_C.thread_id.contains(q, autoescape=True))
        .group_by(_C.thread_key)
    )
    if cursor is not None:
        query = query.having(or_(last < cursor[0], and_(last == cursor[0], _C.thread_key > cursor[1])))
    query = query.order_by(last.desc(), _C.thread_key).limit(limit + 1)
    async with core.view(None) as conn:
        rows = (await conn.execute(query)).all()
    out: list[ThreadSummary] = []
    for thread_id, count, seq, _key in rows[:limit]:
        tup = await insp.checkpointer.aget_tuple(_config(str(thread_id)))
        if tup is None:  # deleted since
            continue
        st = status_of(tup)
        step = (tup.metadata or {}).get("step")
        out.append(
            ThreadSummary(
                str(thread_id),
                int(count),
                int(seq),
                step if isinstance(step, int) else None,
                _ts(tup),
                st.state,
                st.next,
                THREAD,
            )
        )
    more = len(rows) > limit
    cursor_out = f"{int(rows[limit - 1][2])}:{rows[limit - 1][3]}" if more else None
    return ThreadPage(out, cursor_out)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


async def timings(
    insp: Inspector, trace_id: str, *, agent: bool = False, ns: str | None = None
) -> dict[str, Any]:
    """The spans of a thread (or agent) for a Gantt chart: the newest :data:`TIMINGS_LIMIT`
    rows of ``skialith_agent_traces``, oldest first. That table is filled by the trace ingest
    (``skialith up`` runs it, or :class:`~skialith_langgraph.traces.TraceIngest`); it is derived,
    so without a running ingest a thread has no timings yet."""
    core = await insp.checkpointer._acore()
    source = AGENT if agent else LANGGRAPH
    key = token(trace_id, field="agent_id" if agent else "thread_id")
    query = select(agent_traces).where(_T.source == source, _T.trace_key == key)
    if ns is not None:
        query = query.where(_T.checkpoint_ns == ns)
    query = query.order_by(_T.seq.desc()).limit(TIMINGS_LIMIT + 1)
    async with core.model.connect() as conn:
        rows = (await conn.execute(query)).all()
    spans = [
        {
            "kind": r.kind,
            "name": r.name,
            "checkpoint_ns": r.checkpoint_ns,
            "step": None if r.step is None else int(r.step),
            "checkpoint_id": r.checkpoint_id,
            "task_id": r.task_id,
            "status": r.status,
            "channels": json.loads(r.channels or "[]"),
            "started_at": _num(r.started_at),
            "finished_at": _num(r.finished_at),
            "duration": _num(r.duration),
            "seq": int(r.seq),
        }
        for r in rows[:TIMINGS_LIMIT]
    ]
    spans.sort(key=lambda s: (s["started_at"] or s["finished_at"] or 0.0, s["seq"]))
    return {"trace_id": trace_id, "source": source, "spans": spans, "truncated": len(rows) > TIMINGS_LIMIT}
