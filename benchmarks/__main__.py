"""``python -m benchmarks``: run the benchmarks and write results.md, results.json and latency.png."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import warnings
from pathlib import Path

from .databases import DEFAULT_MYSQL_URL, DEFAULT_POSTGRES_URL
from .env import Options

SECTIONS = ("latency", "graph", "concurrency", "projector")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse the command line into :class:`Options`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Skialith vs LangGraph's checkpointers: latency, whole graph, concurrency, projector.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (a few seconds per section)")
    parser.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help="timed calls per latency row (default 1000: the p99 is then the 10th slowest call, not the 3rd)",
    )
    parser.add_argument(
        "--sync-always",
        action="store_true",
        help="also run the JetStream side on a nats-server with 'jetstream { sync_interval: always }'",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results directory (default: benchmarks/results/)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--mysql-url", default=DEFAULT_MYSQL_URL, help="MariaDB/MySQL server (default: %(default)s)"
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="any database on the PostgreSQL server (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    return Options(
        quick=args.quick,
        iterations=args.iterations,
        sync_always=args.sync_always,
        out=args.out,
        mysql_url=args.mysql_url,
        postgres_url=args.postgres_url,
        sections=sections,
    )


def main(argv: list[str] | None = None) -> int:
    """Run, print the Markdown report, and write the result files; return the exit code."""
    options = parse_args(argv)
    # the savers' setup() runs CREATE TABLE IF NOT EXISTS; MariaDB answers with a warning each time
    warnings.filterwarnings("ignore", message=r".*already exists", module=r"aiomysql\.")

    from .chart import plot_aput
    from .report import render, settings_line
    from .results import to_json
    from .runner import progress, run

    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = asyncio.run(run(options, command.strip()))
    markdown = render(results)
    print(markdown)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown + "\n")
    (out / "results.json").write_text(json.dumps(to_json(results), indent=1) + "\n")
    if results.latency:
        plot_aput(results.latency, out / "latency.png", subtitle=settings_line(results).strip("*"))
    progress(
        f"wrote {out / 'results.md'}, {out / 'results.json'}" + (", latency.png" if results.latency else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
