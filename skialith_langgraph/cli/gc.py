"""``skialith gc``: one retention pass."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ..config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
    Settings,
)
from ..retention import DEFAULT_SWEEP_LIMIT, Sweeper
from ._common import (
    CliError,
    _non_negative_float,
    _non_negative_int,
    _out,
    _positive_int,
    add_command,
)
from ._nats import add_nats_flags, nats_overrides

logger = logging.getLogger("skialith_langgraph.cli")


async def _gc(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        database_url=args.database_url,
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        **nats_overrides(args),
    )
    sweeper = Sweeper(settings, idle_ttl=args.idle_ttl, keep_last=args.keep_last, limit=args.limit)
    if not sweeper.active:
        raise CliError(
            "no retention policy is on: give --idle-ttl SECONDS and/or --keep-last N "
            "(or set SKIALITH_RETENTION_IDLE_TTL / SKIALITH_RETENTION_KEEP_LAST)"
        )
    try:
        report = await sweeper.sweep(dry_run=args.dry_run)
    finally:
        await sweeper.close()
    if args.json:
        _out(json.dumps(report.as_dict()))
        return 0
    for line in report.lines():
        _out(line)
    verb = "would delete" if args.dry_run else "deleted"
    _out(
        f"gc: {verb} {len(report.deleted)} idle thread(s) and "
        f"{'would prune' if args.dry_run else 'pruned'} {sum(n for _, n in report.pruned)} checkpoint(s) "
        f"of {len(report.pruned)} thread(s); skipped {len(report.skipped)}"
    )
    return 0


# -- registration --------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``skialith gc``."""
    gc = add_command(
        subparsers,
        "gc",
        _gc,
        help="one retention pass: idle threads, old checkpoints",
        description=(
            "Delete threads whose last write is older than --idle-ttl, and prune threads to their "
            "--keep-last latest checkpoints per namespace, through the log (the projector applies "
            "it; the stream is purged). A thread written during the pass is kept. Prints what it "
            "deleted and pruned, or with --dry-run what it would."
        ),
    )
    add_nats_flags(gc)
    gc.add_argument(
        "--database-url",
        default=None,
        help=f"read model URL (default: $SKIALITH_DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    gc.add_argument(
        "--stream", default=None, help=f"stream name (default: $SKIALITH_STREAM, else {DEFAULT_STREAM})"
    )
    gc.add_argument(
        "--subject-prefix",
        default=None,
        help=f"first subject token (default: $SKIALITH_SUBJECT_PREFIX, else {DEFAULT_SUBJECT_PREFIX})",
    )
    gc.add_argument(
        "--idle-ttl",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="delete threads idle this long (default: $SKIALITH_RETENTION_IDLE_TTL, else off)",
    )
    gc.add_argument(
        "--keep-last",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="keep the N latest checkpoints per namespace (default: $SKIALITH_RETENTION_KEEP_LAST, else all)",
    )
    gc.add_argument(
        "--limit",
        type=_positive_int,
        default=DEFAULT_SWEEP_LIMIT,
        help="threads looked at per policy in this pass",
    )
    gc.add_argument("--dry-run", action="store_true", help="change nothing; print what would be done")
    gc.add_argument("--json", action="store_true", help="print the report as one JSON object")
