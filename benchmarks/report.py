"""Markdown tables of one run's results (printed and written to ``results.md``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .contender import (
    FLOOR,
    FLOOR_ALWAYS,
    MEMORY,
    MYSQL,
    POSTGRES,
    RAW_INSERT,
    SAVE_EVENT,
    SERDE_PUT,
    SKIALITH,
    SQLA_INSERT,
    SQLITE,
)
from .latency import OPS, SERDE_OF, Row, floor_for, serde_for
from .results import Results
from .stats import Summary, ratio

MYSQL_MARK = f"{MYSQL} ¹"
READ_OPS = ("aget_tuple", "alist")
TARGET_OVER_FLOOR = 1.25  # the aput p50 target, as a multiple of the PubAck floor's p50


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def _name(name: str) -> str:
    return MYSQL_MARK if name == MYSQL else name


def settings_line(results: Results) -> str:
    """One line stating the durability settings in force, read from the servers."""
    s = results.settings
    parts: list[str] = []
    for name in (FLOOR, FLOOR_ALWAYS):
        if name in s:
            js = s[name]
            label = "JetStream" if name == FLOOR else "JetStream [sync always]"
            parts.append(
                f"{label}: sync_interval={js['jetstream_sync_interval']}, replicas={js['stream_replicas']}"
                f" (nats-server {js['nats_server']}, file storage)"
            )
    if MYSQL in s:
        m = s[MYSQL]
        binlog = f"sync_binlog={m['sync_binlog']}" if m["log_bin"] else "binlog off"
        parts.append(
            f"InnoDB: innodb_flush_log_at_trx_commit={m['innodb_flush_log_at_trx_commit']}, {binlog}"
        )
    if POSTGRES in s:
        p = s[POSTGRES]
        parts.append(f"PostgreSQL: synchronous_commit={p['synchronous_commit']}, fsync={p['fsync']}")
    if SQLITE in s:
        q = s[SQLITE]
        parts.append(f"SQLite: PRAGMA synchronous={q['synchronous']}, journal_mode={q['journal_mode']}")
    return "*Settings: " + "; ".join(parts) + ".*"


def _latency_tables(results: Results) -> list[str]:
    rows = results.latency
    out = ["## 1. Per-operation latency (ms)", ""]
    floors = [r for r in rows if r.op in ("publish", "insert", "serde")]
    out.append(
        "### Floors: bare JetStream publish + PubAck, raw MySQL INSERT (autocommit), "
        "and the serializer cost every saver pays"
    )
    out.append("")
    out.append(
        _table(
            ["contender", "payload", "n", "p50", "p95", "p99", "mean"],
            (
                [r.contender, r.size, str(s.n), _ms(s.p50), _ms(s.p95), _ms(s.p99), _ms(s.mean)]
                for r in floors
                for s in [r.sample.summary()]
            ),
        )
    )
    out.append("")
    out.append(
        "The serde rows time the saver serde's `dumps_typed` of what the `aput` and `aput_writes` rows "
        "below store (new channel values + checkpoint + metadata; each write), with Skialith's "
        "`codec.encode_checkpoint` / `codec.encode_writes` and no I/O: a saver has to pay it before it "
        "can store anything, so floor + serde is the lowest a serializing saver can reach."
    )
    out.append("")
    by_key = {(r.op, r.size, r.contender): r.sample.summary() for r in rows}
    out += _reach_table(rows, by_key)
    out += _ceiling_table(rows, by_key)
    out += _paused_table(results)
    out += _product_page_table(results)
    out += [settings_line(results), ""]
    for op in OPS:
        op_rows = [r for r in rows if r.op == op]
        if not op_rows:
            continue
        with_serde = op in SERDE_OF
        table: list[list[str]] = []
        for r in op_rows:
            s = by_key[(r.op, r.size, r.contender)]
            r_serde = None
            if op in READ_OPS:
                pg = by_key.get((r.op, r.size, POSTGRES))
                r50, r99 = (ratio(s.p50, pg.p50), ratio(s.p99, pg.p99)) if pg else (None, None)
            elif r.skialith:
                f = by_key.get(("publish", r.size, floor_for(r)))
                r50, r99 = (ratio(s.p50, f.p50), ratio(s.p99, f.p99)) if f else (None, None)
                serde_name = serde_for(r)
                sd = by_key.get(("serde", r.size, serde_name)) if serde_name else None
                if f and sd:
                    r_serde = ratio(s.p50, f.p50 + sd.p50)
            else:
                sk = by_key.get((r.op, r.size, SKIALITH))
                r50, r99 = (ratio(s.p50, sk.p50), ratio(s.p99, sk.p99)) if sk else (None, None)
            cells = [
                _name(r.contender),
                r.size,
                str(s.n),
                _ms(s.p50),
                _ms(s.p95),
                _ms(s.p99),
                _ms(s.mean),
                _x(r50),
                _x(r99),
            ]
            table.append([*cells, _x(r_serde)] if with_serde else cells)
        out.append(f"### `{op}`")
        out.append("")
        header = ["contender", "payload", "n", "p50", "p95", "p99", "mean", "ratio p50", "ratio p99"]
        if op in READ_OPS:
            header[-2:] = [f"p50 / {POSTGRES}", f"p99 / {POSTGRES}"]
        out.append(_table([*header, "p50 vs floor + serde"] if with_serde else header, table))
        out.append("")
        if op in READ_OPS:
            what = "the latest checkpoint" if op == "aget_tuple" else "a thread's last 20 of 25 checkpoints"
            out.append(
                f"`{op}` of {what}. Ratios: contender / {POSTGRES} at the same percentile (target for the "
                "Skialith '(other instance)' rows: at most 1.00x at p50 and p99). An '(other instance)' is "
                "a second checkpointer on the same stream and database that did not write the thread, as "
                "another process: it reads the read model its projector process fills, after a "
                "read-your-writes check against the log. The writing instance ('Skialith') answers from its "
                "own head when it holds one; the notes say where each instance's reads were served."
            )
        else:
            out.append(
                "Ratios: peer rows = peer / Skialith (above 1: Skialith is faster; targets: 6x for the "
                "MySQL saver, 5x for the Postgres saver, at p50 and p99). Skialith rows: 'ratio p50' and "
                "'ratio p99' = Skialith / bare PubAck floor of the same size on the same server, the "
                "target ratio (p50 within 1.25x); 'p50 vs floor + serde' = Skialith p50 / (floor p50 + "
                f"`{SERDE_OF[op]}` p50 of the same size), the floor of any saver that must serialize before "
                "it stores, so what stays above 1 there is Skialith's own overhead."
            )
        out += ["", settings_line(results), ""]
    return out


def _reach_table(rows: Sequence[Row], by_key: dict[tuple[str, str, str], Summary]) -> list[str]:
    """How much of the 1.25x budget over the PubAck floor the serializer leaves, per op and size."""
    table: list[list[str]] = []
    floors = sorted({r.contender for r in rows if r.op == "publish"}, key=lambda n: n != FLOOR)
    for floor in floors:
        for op, serde in SERDE_OF.items():
            for r in rows:
                if r.op != "serde" or r.contender != serde:
                    continue
                f, sd = by_key.get(("publish", r.size, floor)), by_key[("serde", r.size, serde)]
                if f is None:
                    continue
                reach = f.p50 + sd.p50
                left = TARGET_OVER_FLOOR * f.p50 - reach
                table.append(
                    [
                        f"`{op}`",
                        r.size,
                        floor,
                        _ms(f.p50),
                        _ms(sd.p50),
                        _ms(reach),
                        _x(ratio(reach, f.p50)),
                        f"{left:.3f}" if left >= 0 else f"none ({left:.3f})",
                    ]
                )
    if not table:
        return []
    header = ["op", "payload", "floor", "floor p50", "serde p50", "floor + serde p50", "/ floor"]
    return [
        _table([*header, f"left of the {TARGET_OVER_FLOOR}x budget (ms)"], table),
        "",
        "A saver that serializes with this serde cannot beat floor + serde: where '/ floor' exceeds "
        f"{TARGET_OVER_FLOOR}x, no such saver can meet the p50 target over the bare floor; elsewhere the "
        "last column is all the time the rest of the saver may take.",
        "",
    ]


def _paused_table(results: Results) -> list[str]:
    """Floor and aput (1 KiB) with the projector process frozen, next to the same pair with it running."""
    if not results.paused:
        return []
    by_key = {(r.op, r.contender): r.sample.summary() for r in results.latency if r.size == "1KiB"}
    paused = {r.op: r.sample.summary() for r in results.paused}
    table: list[list[str]] = []
    for label, floor, serde, aput in (
        (
            "running (the tables above)",
            by_key.get(("publish", FLOOR)),
            by_key.get(("serde", SERDE_PUT)),
            by_key.get(("aput", SKIALITH)),
        ),
        ("frozen (SIGSTOP)", paused.get("publish"), paused.get("serde"), paused.get("aput")),
    ):
        if floor is None or aput is None:
            continue
        p50 = _x(ratio(aput.p50, floor.p50))
        with_serde = _x(ratio(aput.p50, floor.p50 + serde.p50)) if serde is not None else "—"
        serde_p50 = _ms(serde.p50) if serde is not None else "—"
        table.append(
            [label, _ms(floor.p50), serde_p50, _ms(aput.p50), p50, with_serde, _ms(floor.p99), _ms(aput.p99)]
        )
    header = [
        "projector process",
        "floor p50",
        "serde p50",
        "Skialith aput p50",
        "ratio p50",
        "p50 vs floor + serde",
        "floor p99",
        "aput p99",
    ]
    return [
        _table(header, table),
        "",
        "1 KiB. The projector applies every write as it arrives, on the same 2 cores as the writer and "
        "the servers; frozen, it shows what the write path costs by itself (the calls interleave in "
        "blocks as above, the serde row among them; the projector catches up afterwards).",
        "",
    ]


def _product_page_table(results: Results) -> list[str]:
    """The product page's table, reproduced: ``save_event`` next to a MySQL INSERT."""
    by = {(r.op, r.contender): r.sample.summary() for r in results.latency if r.size == "1KiB"}
    page = {SAVE_EVENT: ("133 us", "265 us", "386 us"), SQLA_INSERT: ("986 us", "1.5 ms", "2.6 ms")}
    lines = [
        ("save_event", SAVE_EVENT, "`SkialithAgent.save_event` (NATS PubAck), ~1 KiB event"),
        ("insert", SQLA_INSERT, "MySQL INSERT through SQLAlchemy (`engine.begin()`, one row, 1 KiB)"),
        ("insert", RAW_INSERT, "MySQL INSERT, raw aiomysql, autocommit (1 KiB)"),
        ("publish", FLOOR, "bare JetStream publish + PubAck (1 KiB), the floor"),
    ]
    table: list[list[str]] = []
    for op, name, label in lines:
        sm = by.get((op, name))
        if sm is None:
            continue
        quoted = page.get(name, ("", "", ""))
        table.append(
            [
                label,
                *(f"{v * 1000:.0f} us" for v in (sm.p50, sm.p95, sm.p99)),
                " / ".join(q for q in quoted if q) or "—",
            ]
        )
    if not table:
        return []
    return [
        "## The product page's table, reproduced",
        "",
        _table(["scenario (this run)", "p50", "p95", "p99", "the page says (p50 / p95 / p99)"], table),
        "",
        'The page: "save_event (NATS PubAck) | 133 us | 265 us | 386 us" and "Baseline MySQL INSERT | '
        '986 us | 1.5 ms | 2.6 ms", "measured locally against NATS + MySQL". Here all four rows run '
        "interleaved in one run on this machine.",
        "",
    ]


PEER_TARGETS = {MYSQL: 6.0, POSTGRES: 5.0}  # the targets: Skialith this many times faster


def _ceiling_table(rows: Sequence[Row], by_key: dict[tuple[str, str, str], Summary]) -> list[str]:
    """The most a JetStream-backed saver could be faster than each peer: peer / (floor + serde)."""
    table: list[list[str]] = []
    for op, serde in SERDE_OF.items():
        for size in sorted({r.size for r in rows if r.op == op}, key=lambda v: int(v.removesuffix("KiB"))):
            f, sd = by_key.get(("publish", size, FLOOR)), by_key.get(("serde", size, serde))
            sk = by_key.get((op, size, SKIALITH))
            if f is None or sd is None or sk is None:
                continue
            for peer, target in PEER_TARGETS.items():
                ps = by_key.get((op, size, peer))
                if ps is None:
                    continue
                table.append(
                    [
                        f"`{op}`",
                        size,
                        _name(peer),
                        f"{target:g}x",
                        _x(ratio(ps.p50, f.p50 + sd.p50)),
                        _x(ratio(ps.p99, f.p99 + sd.p99)),
                        _x(ratio(ps.p50, sk.p50)),
                        _x(ratio(ps.p99, sk.p99)),
                    ]
                )
    if not table:
        return []
    header = ["op", "payload", "peer", "target", "ceiling p50", "ceiling p99", "Skialith p50", "Skialith p99"]
    return [
        _table(header, table),
        "",
        "Ceiling = peer / (PubAck floor + serde) at the same percentile: how many times faster than the "
        "peer a saver would be if it cost nothing beyond a bare publish of its serialized checkpoint. "
        "Where the ceiling is below the target, the target cannot be met on this machine by any "
        "JetStream-backed saver; 'Skialith' columns are what it reached (peer / Skialith).",
        "",
    ]


def _graph_tables(results: Results) -> list[str]:
    g = results.graph
    if g is None:
        return []
    out = [
        "## 2. Whole graph: 5-node chain, one message appended per node (ms per run)",
        "",
        f"Fresh threads: {g.fresh_runs} runs per durability, each on a new thread; long thread: one thread "
        f"per saver taking {g.long_runs} runs, the two durabilities alternating in blocks (so the state "
        f"grows to {g.long_runs * 6} messages). Ratios are to `InMemorySaver` under the same durability "
        "and thread kind.",
        "",
    ]
    summaries = {(s.contender, s.durability, s.thread): s.sample.summary() for s in g.series}
    table = []
    for s in g.series:
        m = summaries[(s.contender, s.durability, s.thread)]
        base = summaries.get((MEMORY, s.durability, s.thread))
        table.append(
            [
                s.durability,
                s.thread,
                _name(s.contender),
                str(m.n),
                _ms(m.p50),
                _ms(m.mean),
                _ms(m.p99),
                _x(ratio(m.p50, base.p50) if base else None),
                _x(ratio(m.mean, base.mean) if base else None),
            ]
        )
    out.append(
        _table(
            [
                "durability",
                "thread",
                "contender",
                "runs",
                "p50",
                "mean",
                "p99",
                "p50 / InMemory",
                "mean / InMemory",
            ],
            table,
        )
    )
    out += ["", settings_line(results), ""]
    out.append(
        f"### `aget_tuple` (latest) on a one-run thread vs the {g.long_runs}-run thread, growing state (ms)"
    )
    out.append("")
    reads = []
    mem = g.reads.get(MEMORY)
    mem_long = mem["long"].summary() if mem else None
    for name, kinds in g.reads.items():
        fresh, long = kinds["fresh"].summary(), kinds["long"].summary()
        reads.append(
            [
                _name(name),
                f"{fresh.n} / {long.n}",
                _ms(fresh.p50),
                _ms(long.p50),
                _ms(fresh.p99),
                _ms(long.max),
                _x(ratio(long.p50, fresh.p50)),
                _x(ratio(long.p50, mem_long.p50) if mem_long else None),
            ]
        )
    header = ["contender", "n fresh / long", "p50 fresh", "p50 long", "p99 fresh", "max long"]
    out.append(_table([*header, "long / fresh p50", "long p50 / InMemory long p50"], reads))
    out += [
        "",
        "This table shows the cost of state size more than of history: the latest checkpoint of the long "
        f"thread holds all {g.long_runs * 6} messages, which every saver (even `InMemorySaver`) must "
        "deserialise, so 'long / fresh' is large for all; the last column shows what each saver adds.",
        "",
        settings_line(results),
        "",
    ]
    out += _bounded_table(results)
    return out


def _bounded_table(results: Results) -> list[str]:
    g = results.graph
    b = g.bounded if g is not None else None
    if b is None:
        return []
    out = [
        f"### `aget_tuple` (latest) on a {b.runs}-run thread with bounded state vs a fresh thread (ms)",
        "",
    ]
    rows = []
    for name, kinds in b.reads.items():
        fresh, long = kinds["fresh"].summary(), kinds["long"].summary()
        run = b.run_samples.get(name)
        rows.append(
            [
                _name(name),
                f"{fresh.n} / {long.n}",
                _ms(fresh.p50),
                _ms(long.p50),
                _ms(fresh.p99),
                _ms(long.p99),
                _x(ratio(long.p50, fresh.p50)),
                _ms(run.summary().p50) if run and run.durations_ns else "—",
            ]
        )
    header = ["contender", "n fresh / long", "p50 fresh", "p50 long", "p99 fresh", "p99 long"]
    out.append(_table([*header, "long / fresh p50", "run p50 (long thread)"], rows))
    out += [
        "",
        "This table shows the cost of history alone: the same 5-node chain, but each node removes "
        f"(`RemoveMessage`) all but the last {b.keep} messages, so after {b.runs} runs "
        f'(`durability="sync"`) the latest checkpoint holds {b.keep} messages, as on the fresh one-run '
        "thread, while checkpoints, writes and channel versions keep piling up; fresh and long reads "
        "alternate, and 'long / fresh p50' is the column the 1.2x target applies to.",
        "",
        settings_line(results),
        "",
    ]
    return out


def _concurrency_table(results: Results) -> list[str]:
    if not results.concurrency:
        return []
    out = ["## 3. Concurrent agents doing `aput` (1 KiB checkpoints, one process)", ""]
    table = []
    for p in results.concurrency:
        s = p.sample.summary()
        table.append(
            [
                _name(p.contender),
                p.mode,
                str(p.agents),
                str(p.writes),
                f"{p.writes_per_s:,.0f}",
                _ms(s.p50),
                _ms(s.p99),
            ]
        )
    out.append(_table(["contender", "mode", "agents", "writes", "writes/s", "p50 ms", "p99 ms"], table))
    out += [
        "",
        "The MySQL and Postgres savers hold an `asyncio.Lock` per instance around every call, so one shared "
        "saver serialises all agents; 'saver per agent' gives each agent its own saver over a pool of N "
        "connections (their best case in one process). Skialith: one shared checkpointer.",
        "",
        settings_line(results),
        "",
    ]
    return out


def _projector_table(results: Results) -> list[str]:
    pr = results.projector
    if pr is None:
        return []
    lag = pr.lag.summary() if pr.lag.durations_ns else None
    rows = [
        ["backlog projected", f"{pr.checkpoints:,} checkpoints ({pr.rows:,} rows incl. channel blobs)"],
        ["time to drain", f"{pr.seconds:.2f} s (batch size {pr.batch_size})"],
        ["throughput", f"{pr.checkpoints_per_s:,.0f} checkpoints/s = {pr.rows_per_s:,.0f} rows/s"],
        [
            "offered load for lag",
            f"{pr.lag_rate:,.0f} checkpoints/s for {pr.lag_seconds:.1f} s ({pr.lag_writes:,} writes)",
        ],
    ]
    if lag is not None:
        rows.append(
            ["projection lag p50 / p99 / max", f"{_ms(lag.p50)} / {_ms(lag.p99)} / {_ms(lag.max)} ms"]
        )
    s = pr.settings
    return [
        "## 4. Projector: log -> MariaDB read model",
        "",
        _table(["metric", "value"], rows),
        "",
        "Throughput: a backlog is published first, then one projector process (already connected) drains "
        "it; time from its start signal to the database watermark reaching the end of the stream. "
        "Lag: projector process running while checkpoints are offered at a fixed rate (open loop); "
        "lag = PubAck to the first watermark poll (every 1 ms) at or past the checkpoint's stream sequence.",
        "",
        f"*Settings: JetStream sync_interval={s.get('jetstream_sync_interval')}, "
        f"replicas={s.get('stream_replicas')}; "
        f"InnoDB innodb_flush_log_at_trx_commit={s.get('innodb_flush_log_at_trx_commit')}.*",
        "",
    ]


def render(results: Results) -> str:
    """The whole Markdown report."""
    m = results.meta
    out = [
        "# skialith-langgraph benchmarks",
        "",
        f"Run {m.get('started')} on {m.get('cpus')} CPU(s), Python {m.get('python')}; "
        f"command: `{m.get('command')}`; total {m.get('seconds', 0):.0f} s"
        + (f" ({m['sections']})" if m.get("sections") else "")
        + ".",
        "",
    ]
    if m.get("loadavg_start"):
        out.append(
            f"Load average (1, 5, 15 min) at start: {m['loadavg_start']}; at end: {m.get('loadavg_end')} "
            "(other work on the machine shows up here, and in the numbers)."
        )
        out.append("")
    if m.get("versions"):
        out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".")
        out.append("")
    out += _latency_tables(results) if results.latency else []
    out += _graph_tables(results)
    out += _concurrency_table(results)
    out += _projector_table(results)
    if results.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in results.notes] + [""]
    return "\n".join(out)
