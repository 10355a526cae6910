"""``skialith status``: the stream, its consumers and the read model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..config import (
    Settings,
)
from ..ownership import collect_status
from ._common import (
    _out,
    add_command,
)
from ._nats import _connection_flags, nats_overrides

logger = logging.getLogger("skialith_langgraph.cli")


def _status_lines(status: dict[str, Any]) -> list[str]:
    stream = status["stream"]
    lines = [f"stream    {stream['name']}"]
    if "error" in stream:
        lines[0] += f"  (cannot read it: {stream['error']})"
    else:
        lines[0] += (
            f"  created {stream['created']}  messages={stream['messages']} bytes={stream['bytes']} "
            f"first_seq={stream['first_seq']} last_seq={stream['last_seq']}"
        )
    lines.append("consumers")
    if not status["consumers"]:
        lines.append("  (none)")
    header = ("DURABLE", "ROLE", "REPLICA", "LIVE", "HOLDER", "PENDING", "ACK FLOOR", "LAG")
    rows = [header]
    for c in status["consumers"]:
        holder = c["holder"]
        rows.append(
            (
                c["durable"],
                c["role"],
                c["replica"],
                "live" if c["live"] else "not live",
                f"{holder['host']} pid {holder['pid']} since {holder['since']}" if holder else "-",
                *("-" if c[k] is None else str(c[k]) for k in ("pending", "ack_floor", "lag")),
            )
        )
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    database = status["database"]
    lines.append(f"database  {database['url']}")
    if "error" in database:
        lines.append(f"  cannot read it: {database['error']}")
    else:
        recorded = database["stream"]
        lines.append(
            f"  filled from stream {recorded['name']} created {recorded['created']}"
            if recorded
            else "  filled from no stream yet"
        )
        for name, mark in database["watermarks"].items():
            lines.append(f"  watermark {name}: {mark['last_seq']} (lag {mark['lag']})")
        lines.append(f"  dead letters: {database['dead_letters_total']}")
    return lines


async def _status(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        database_url=args.database_url,
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        **nats_overrides(args),
    )
    status, problems = await collect_status(settings)
    if args.json:
        _out(json.dumps(status, indent=2, sort_keys=True))
    else:
        for line in _status_lines(status):
            _out(line)
    for problem in problems:
        print(f"skialith status: cannot read {problem}", file=sys.stderr, flush=True)
    return 1 if problems else 0


# -- registration --------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``skialith status``."""
    status = add_command(
        subparsers,
        "status",
        _status,
        help="the stream, its consumers and lag, the read model",
        description=(
            "Show the stream (name, creation time, messages, bytes, first and last sequence), each durable "
            "consumer (replica, whether a live process holds it and which, pending messages, ack floor, "
            "lag), the read model's watermarks and dead letters, and the database URL (password hidden). "
            "Exit code 1 if a part could not be read."
        ),
    )
    _connection_flags(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
