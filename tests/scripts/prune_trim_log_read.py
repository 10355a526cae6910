"""Time a read served from the log on a 3,000-message thread, before and after prune(keep_latest).

Run: PYTHONPATH=$PWD:tests python tests/scripts/prune_trim_log_read.py
Starts its own nats-server (temporary store); the readers' read model is an empty SQLite file, so
every read replays the thread from the log (issue 9, item 11).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from test_prune_trim import config, thread_messages, write_history

from skialith_langgraph import Settings, SkialithCheckpointer
from skialith_langgraph.log import Log
from skialith_langgraph.server import NatsServer

CHECKPOINTS = 1000  # one put and two put_writes each: 3,000 messages
READS = 7


async def timed_reads(settings: Settings) -> list[float]:
    reader = SkialithCheckpointer(settings=settings)
    try:
        await reader.aget_tuple(config("t"))  # connect, create the scratch model
        out = []
        for _ in range(READS):
            start = time.perf_counter()
            assert await reader.aget_tuple(config("t")) is not None
            out.append((time.perf_counter() - start) * 1000)
        assert reader.read_stats.database == 0
        return out
    finally:
        await reader.aclose()


async def main(store: Path) -> None:
    server = NatsServer(store_dir=store / "nats", port=-1)
    server.start()
    try:
        settings = Settings(
            nats_url=server.url,
            database_url=f"sqlite+aiosqlite:///{store / 'writer.db'}",
            stream="TRIM",
            subject_prefix="trim",
        )
        reading = settings.replace(database_url=f"sqlite+aiosqlite:///{store / 'empty.db'}", read_wait=0.0)
        writer = SkialithCheckpointer(settings=settings)
        log = await Log.open(settings, ensure_stream=True)
        try:
            await write_history([writer], "t", CHECKPOINTS)
            n_before = await thread_messages(log, "t")
            before = await timed_reads(reading)
            await writer.aprune(["t"], strategy="keep_latest")
            n_after = await thread_messages(log, "t")
            after = await timed_reads(reading)
        finally:
            await log.close()
            await writer.aclose()
        for label, n, ms in (("before prune", n_before, before), ("after prune", n_after, after)):
            print(
                f"{label}: {n} messages on the thread; log read median {statistics.median(ms):.1f} ms "
                f"(min {min(ms):.1f}, max {max(ms):.1f}, {READS} reads)"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
