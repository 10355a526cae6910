"""The inspection commands of ``skialith``: threads, history, show, diff, drift, lineage, audit,
export, import.

Each prints a readable table, or JSON with ``--json``; an unknown thread or checkpoint exits 1
with a message. They read through :class:`skialith_langgraph.inspect.Inspector`, so they answer
from the log when the projector lags or is stopped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ..config import Settings
from ..inspect import InspectError, Inspector, dumps_jsonl, parse_since
from ._common import add_command
from ._nats import _connection_flags, nats_overrides
from ._render import line, shown, table

HISTORY_PAGE = 50  # checkpoints 'skialith history' prints unless --limit says otherwise


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        database_url=args.database_url,
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        **nats_overrides(args),
    )


def _out(text: str = "", style: str | None = None) -> None:
    line(text, style)


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _metadata_filter(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InspectError(f"--metadata {item!r}: give KEY=VALUE")
        out[key] = value
    return out


async def _threads(args: argparse.Namespace) -> int:
    async with Inspector.open(_settings(args)) as insp:
        page = await insp.threads(
            limit=args.limit,
            after=args.after,
            since=parse_since(args.since) if args.since else None,
            status=args.status,
            metadata=_metadata_filter(args.metadata),
            kind=args.kind,
        )
    if args.json:
        _json(page.as_dict())
        return 0
    table(
        ["kind", "id", "checkpoints", "last step", "last activity", "status"],
        [
            [t.kind, t.thread_id, t.checkpoints, t.last_step, t.last_activity, _status(t.status, t.next)]
            for t in page.threads
        ],
        styles=[t.status for t in page.threads],
    )
    if page.cursor:
        _out(f"more: skialith threads --after {page.cursor}")
    return 0


def _status(state: str, nxt: Sequence[str]) -> str:
    return f"next: {', '.join(nxt)}" if state == "next" else state


async def _history(args: argparse.Namespace) -> int:
    async with Inspector.open(_settings(args)) as insp:
        entries = await insp.history(args.thread, limit=args.limit or None, before=args.before)
    if args.json:
        _json([e.as_dict() for e in entries])
        return 0
    rows, styles = [], []
    for e in entries:
        styles.append("error" if e.errors else "interrupt" if e.interrupts else None)
        marks = []
        if e.fork:
            marks.append(f"fork from {e.parent_checkpoint_id}")
        if e.interrupts:
            marks.append(f"{len(e.interrupts)} interrupt(s)")
        if e.errors:
            marks.append(f"error: {shown(e.errors[0], 60)}")
        duration = None if e.duration is None else f"{e.duration:.3f}s"
        rows.append(
            [
                e.step,
                e.source,
                ", ".join(e.nodes),
                e.ts,
                duration,
                e.pending_writes,
                e.checkpoint_id,
                "; ".join(marks),
            ]
        )
    table(["step", "source", "nodes", "time", "duration", "writes", "checkpoint", "notes"], rows, 80, styles)
    if args.limit and len(entries) == args.limit:
        _out(f"older: skialith history {shlex.quote(args.thread)} --before {entries[0].checkpoint_id}")
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with Inspector.open(_settings(args)) as insp:
        state = await insp.show(args.thread, args.checkpoint)
    if args.json:
        _json(state)
        return 0
    _out(f"thread {shown(state['thread_id'])}  checkpoint {state['checkpoint_id']}  ({state['ts']})")
    _out(f"status: {_status(state['status'], state['next'])}", state["status"])
    for channel, messages in state["messages"].items():
        _out(f"\n{shown(channel)} (conversation):", "title")
        for m in messages:
            _out(f"  {shown(m['role']):>9}: {shown(m['content'])}")
            if m.get("tool_calls"):
                _out(f"{'':>13}tool calls: {shown(m['tool_calls'])}")
    if state["values"]:
        _out("\nvalues:", "title")
        for channel, value in state["values"].items():
            _out(f"  {shown(channel)} = {shown(value)}")
    if state["pending_writes"]:
        _out("\npending writes:", "title")
        for w in state["pending_writes"]:
            _out(f"  task {shown(w['task_id'])}: {shown(w['channel'])} = {shown(w['value'], 200)}")
    for what in ("interrupts", "errors"):
        for item in state[what]:
            _out(f"{what[:-1]}: {shown(item)}", what[:-1])
    return 0


async def _diff(args: argparse.Namespace) -> int:
    async with Inspector.open(_settings(args)) as insp:
        d = await insp.diff(args.thread, args.a, args.b, other_thread=args.other_thread)
    if args.json:
        _json(d)
        return 0
    if not d["channels"]:
        _out("no difference")
    for channel, change in d["channels"].items():
        name = shown(channel)
        if change["op"] != "changed":
            value = change.get("new", change.get("old"))
            _out(f"{'+' if change['op'] == 'added' else '-'} {name} = {shown(value, 200)}", change["op"])
        elif "messages" in change:
            md = change["messages"]
            _out(f"~ {name} (messages):", "changed")
            for m in md["added"]:
                _out(f"    + [{shown(m['role'])}] {shown(m['content'], 200)}", "added")
            for m in md["removed"]:
                _out(f"    - [{shown(m['role'])}] {shown(m['content'], 200)}", "removed")
            for m in md["edited"]:
                _out(
                    f"    ~ {shown(m['id'])}: "
                    f"{shown(m['old']['content'], 90)} -> {shown(m['new']['content'], 90)}",
                    "changed",
                )
        else:
            _out(f"~ {name}:", "changed")
            for c in change["changes"]:
                path = c["path"] or "(value)"
                old, new = shown(c.get("old"), 90), shown(c.get("new"), 90)
                text = {"added": f"+ {new}", "removed": f"- {old}"}.get(c["op"], f"{old} -> {new}")
                _out(f"    {shown(path)}: {text}", c["op"])
    return 0


async def _drift(args: argparse.Namespace) -> int:
    async with Inspector.open(_settings(args)) as insp:
        d = await insp.drift(args.a, args.b, threshold=args.threshold)
    code = 1 if d["exceeded"] else 0
    if args.json:
        _json(d)
        return code
    rows = [
        [
            s["step"],
            s["a"] or f"(missing in {s['missing_in']})",
            s["b"] or f"(missing in {s['missing_in']})",
            s["differing"],
            ", ".join(shown(ch) for ch in s["channels"]),
        ]
        for s in d["steps"]
    ]
    table(["step", "checkpoint a", "checkpoint b", "differing", "channels"], rows)
    first = d["first_divergence"]
    if first is None:
        _out("no drift: the runs have the same state at every step", "finished")
    else:
        _out(f"first divergence at step {first}:", "errored")
        step = next(s for s in d["steps"] if s["step"] == first)
        for channel, change in step["channels"].items():
            _out(f"  {shown(channel)}: {shown(change, 200)}")
    if d["exceeded"]:
        _out(
            f"drift above the threshold: {d['max_differing']} channel(s) differ at a step"
            f" (> {args.threshold})"
        )
    return code


async def _lineage(args: argparse.Namespace) -> int:
    async with Inspector.open(_settings(args)) as insp:
        tree = await insp.lineage(args.thread)
    if args.json:
        _json(tree)
        return 0
    _out(f"thread {shown(tree['thread_id'])}")
    _out("subgraph namespaces (checkpoint_ns):")

    def namespaces(node: dict[str, Any], depth: int) -> None:
        name = "(root)" if not node["ns"] else shown(node["ns"].rsplit("|", 1)[-1])
        _out(f"{'  ' * depth}- {name}  {node['checkpoints']} checkpoint(s)")
        for child in node["children"]:
            namespaces(child, depth + 1)

    namespaces(tree["namespaces"], 1)
    _out(f"linked threads (metadata {tree['parent_key']!r}):")
    depth = 1
    for ancestor in tree["ancestors"]:
        _out(f"{'  ' * depth}- {shown(ancestor)}")
        depth += 1
    _out(f"{'  ' * depth}- {shown(tree['thread_id'])}  (this thread)")

    def descendants(items: list[dict[str, Any]], depth: int) -> None:
        for item in items:
            _out(f"{'  ' * depth}- {shown(item['thread_id'])}")
            descendants(item["children"], depth + 1)

    descendants(tree["children"], depth + 1)
    if tree["copied_from"] or tree["copies"]:
        _out("copies (copy_thread: the same checkpoint ids):")
        if tree["copied_from"]:
            _out(f"  - {shown(tree['copied_from'])}  (original)")
            _out(f"    - {shown(tree['thread_id'])}  (this thread, a copy)")
        else:
            _out(f"  - {shown(tree['thread_id'])}  (this thread, the original)")
            for copy in tree["copies"]:
                _out(f"    - {shown(copy)}  (copy)")
    return 0


async def _audit(args: argparse.Namespace) -> int:
    async with Inspector.open(_settings(args)) as insp:
        trail = await insp.audit(args.thread)
    if args.json:
        _json(trail)
        return 0
    rows = [
        [e["seq"], e["time"], e["kind"], e["node"] or e["task"], e["checkpoint_id"], e["run_id"], e["size"]]
        for e in trail
    ]
    table(["seq", "time", "kind", "node or task", "checkpoint", "run id", "bytes"], rows)
    return 0


async def _export(args: argparse.Namespace) -> int:
    async with Inspector.open(_settings(args)) as insp:
        records = await insp.export(args.thread)
    text = dumps_jsonl(records)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


async def _import(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise InspectError(f"{args.file}: not JSON Lines ({exc})") from exc
    async with Inspector.open(_settings(args)) as insp:
        thread_id = await insp.import_records(records, thread_id=args.thread)
    if args.json:
        _json({"thread_id": thread_id, "records": len(records)})
    else:
        _out(f"imported {len(records) - 1} record(s) as thread {shown(thread_id)}")
    return 0


def register(subparsers: Any) -> None:
    """Add the inspection commands: threads, history, show, diff, drift, lineage, audit, export, import."""

    def command(
        name: str,
        run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
        help_text: str,
        description: str,
    ) -> argparse.ArgumentParser:
        p = add_command(subparsers, name, run, help=help_text, description=description)
        _connection_flags(p)
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        return p

    threads = command(
        "threads",
        _threads,
        "threads and agents, most recently active first",
        "List LangGraph threads and SkialithAgent agents (kind thread / agent), most recently "
        "written first: checkpoints, last step, last activity and status (a thread: finished, "
        "interrupted, errored, or the nodes that run next; an agent: resumable, with the step its "
        "resume() returns, or 'no checkpoint'). Pages with --limit/--after. --status and "
        "--metadata are LangGraph's: they list threads only.",
    )
    threads.add_argument("--kind", choices=["thread", "agent"], default=None, help="only threads or agents")
    threads.add_argument("--limit", type=int, default=20, help="threads per page (default: 20)")
    threads.add_argument("--after", default=None, help="the cursor a previous page printed")
    threads.add_argument("--since", default=None, help="active since: 30m, 2h, 7d or an ISO time")
    threads.add_argument("--status", choices=["finished", "interrupted", "errored", "next"], default=None)
    threads.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="match the latest metadata"
    )

    history = command(
        "history",
        _history,
        "a thread's checkpoints in order, forks as branches",
        "List a thread's checkpoints oldest first: step, source, the nodes that wrote, time, duration, "
        "pending writes, interrupts, errors, and where a fork (a new branch from an older "
        "checkpoint) starts.",
    )
    history.add_argument("thread", help="thread id")
    history.add_argument(
        "--limit",
        type=int,
        default=HISTORY_PAGE,
        help=f"the newest N checkpoints, a page (default: {HISTORY_PAGE}; 0: all)",
    )
    history.add_argument("--before", default=None, help="only checkpoints before this checkpoint id")

    show = command(
        "show",
        _show,
        "the state at a checkpoint: conversation and values",
        "Show the state at a checkpoint (default: the latest): messages as a conversation, other "
        "channels as values, the next nodes, pending writes, interrupts and errors.",
    )
    show.add_argument("thread", help="thread id")
    show.add_argument("checkpoint", nargs="?", default=None, help="checkpoint id (default: the latest)")

    diff = command(
        "diff",
        _diff,
        "what changed between two checkpoints, per channel",
        "Compare checkpoint A with checkpoint B, per channel: added, removed, changed; messages "
        "added, removed or edited by id; other values as a structural diff.",
    )
    diff.add_argument("thread", help="thread id")
    diff.add_argument("a", help="checkpoint id (from)")
    diff.add_argument("b", help="checkpoint id (to)")
    diff.add_argument("--other-thread", default=None, help="B is a checkpoint of this thread")

    drift = command(
        "drift",
        _drift,
        "compare two runs step by step; CI gate: --threshold",
        "Compare two runs (threads A and B) step by step, by the checkpoint metadata 'step' along "
        "each thread's current branch: per step the channels whose state differs, and the first step "
        "where the runs diverge. With --threshold N the exit status is 1 when some step has more "
        "than N differing channels (a step only one run reached counts all its channels), so a CI "
        "job can fail on a regression; --threshold 0 fails on any drift.",
    )
    drift.add_argument("a", help="thread id of the expected run")
    drift.add_argument("b", help="thread id of the actual run")
    drift.add_argument(
        "--threshold",
        type=int,
        default=None,
        metavar="N",
        help="exit 1 when a step has more than N differing channels (default: never)",
    )

    lineage = command(
        "lineage",
        _lineage,
        "subgraphs, copies and linked threads, as trees",
        "Show how state flowed across boundaries: the thread's subgraph namespaces (checkpoint_ns) "
        "as a tree with their checkpoint counts, and the threads linked to it through the "
        "checkpoint metadata key 'parent_thread_id' (its ancestors and descendants; pass "
        "metadata={'parent_thread_id': ...} in the config of a run started from another thread), "
        "and the thread it was copied from with copy_thread, or its copies (they share checkpoint ids).",
    )
    lineage.add_argument("thread", help="thread id")

    audit = command(
        "audit",
        _audit,
        "every stream message of a thread, in log order",
        "List every message of a thread still in the stream, in log order: sequence, server time, "
        "kind (checkpoint, writes, delete, prune, replay of a prune), node or task, run id, size. "
        "Values are not decoded.",
    )
    audit.add_argument("thread", help="thread id")

    export = command(
        "export",
        _export,
        "write a thread as JSON Lines (exact and decoded)",
        "Write a thread as JSON Lines: a header, its checkpoints oldest first, then its pending "
        "writes; each value as its exact bytes (base64, with its type) and decoded where the "
        "serializer can. 'skialith import' restores it exactly.",
    )
    export.add_argument("thread", help="thread id")
    export.add_argument("-o", "--output", default=None, help="file to write (default: stdout)")

    imp = command(
        "import",
        _import,
        "restore a thread from 'skialith export' output",
        "Store the thread of an export file in this deployment's stream, byte for byte. Refuses a "
        "thread id that already has checkpoints.",
    )
    imp.add_argument("file", help="the export file ('-' for stdin)")
    imp.add_argument(
        "--thread", default=None, help="store it under this thread id (default: the exported one)"
    )
