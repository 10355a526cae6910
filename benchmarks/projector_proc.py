"""Run a Skialith projector in its own process, so it does not share the measured event loop.

Usage (the benchmark starts it; it is not meant to be run by hand)::

    python -m benchmarks.projector_proc --nats-url URL --database-url URL --stream NAME --ready FILE

It writes ``ready`` to the ``--ready`` file once consuming (with ``--hold``: once connected; it then
waits for SIGUSR1 before consuming), and stops on SIGTERM.
The parent watches the projection watermark in the database (:class:`Watermark`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .databases import MySQLTarget

START_TIMEOUT = 30.0  # seconds
STOP_TIMEOUT = 10.0  # seconds
PROJECTOR_STOP_TIMEOUT = 1.0  # seconds


async def _serve(args: argparse.Namespace) -> None:
    from skialith_langgraph import Projector, Settings

    settings = Settings(
        nats_url=args.nats_url,
        database_url=args.database_url,
        stream=args.stream,
        subject_prefix=args.stream.lower(),
    )
    projector = Projector(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if args.hold:
        go = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, go.set)
        await projector.open()  # connect and set up first, so that the parent can time consumption alone
        Path(args.ready).write_text("ready\n")
        await go.wait()
        await projector.start()
    else:
        await projector.start()
        Path(args.ready).write_text("ready\n")
    await stop.wait()
    await stop_projector(projector)


async def stop_projector(projector: Any, timeout: float = PROJECTOR_STOP_TIMEOUT) -> bool:
    """Stop ``projector``, giving up after ``timeout`` seconds; return False if it had to give up.

    Giving up is harmless here: every batch is committed and acknowledged before the next fetch,
    and the benchmark is done with the projector. (Closing a NATS connection that has a pull
    subscription can sit in ``drain()`` for its full 30 s timeout.)
    """
    try:
        await asyncio.wait_for(projector.stop(), timeout)
    except TimeoutError:
        print(f"projector did not stop within {timeout} s; abandoning it", file=sys.stderr, flush=True)
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    """Entry point of the projector subprocess."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.projector_proc")
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--hold", action="store_true", help="connect, then wait for SIGUSR1 before consuming")
    asyncio.run(_serve(parser.parse_args(argv)))


class ProjectorProcess:
    """A projector subprocess, stopped by pid (SIGTERM, then SIGKILL) when the context exits.

    Args:
        nats_url: the benchmark's nats-server.
        database_url: SQLAlchemy URL of the read model.
        stream: the Skialith stream (its lower-cased name is the subject prefix).
        workdir: where the ready flag and the log go.
        hold: connect, then wait for :meth:`go` before consuming (to time consumption alone).
    """

    def __init__(
        self, *, nats_url: str, database_url: str, stream: str, workdir: Path, hold: bool = False
    ) -> None:
        self._args = ["--nats-url", nats_url, "--database-url", database_url, "--stream", stream]
        self._ready = workdir / f"projector-{stream}.ready"
        self._log = workdir / f"projector-{stream}.log"
        if hold:
            self._args.append("--hold")
        self._proc: subprocess.Popen[bytes] | None = None

    def go(self) -> float:
        """Let a held projector start consuming; return the ``time.monotonic()`` of the signal."""
        assert self._proc is not None, "spawn() first"
        started = time.monotonic()
        self._proc.send_signal(signal.SIGUSR1)
        return started

    def pause(self) -> None:
        """Freeze the subprocess (SIGSTOP): it takes no CPU until :meth:`resume`."""
        assert self._proc is not None, "spawn() first"
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused subprocess carry on (SIGCONT)."""
        assert self._proc is not None, "spawn() first"
        self._proc.send_signal(signal.SIGCONT)

    def spawn(self) -> None:
        """Start the subprocess without waiting for it (see :meth:`wait_ready`)."""
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.projector_proc", *self._args, "--ready", str(self._ready)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(Path(__file__).resolve().parent.parent),
            )

    async def wait_ready(self) -> None:
        """Wait until the subprocess is connected (and consuming, unless held).

        Raises:
            RuntimeError: it exited or did not get ready within ``START_TIMEOUT`` seconds (it is stopped).
        """
        assert self._proc is not None, "spawn() first"
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self._log.read_text(errors="replace")[-3000:]
                await self.stop()
                raise RuntimeError(f"projector subprocess did not start; its output:\n{tail}")
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> ProjectorProcess:
        self.spawn()
        await self.wait_ready()
        return self

    async def stop(self) -> None:
        """Stop the subprocess (SIGTERM, then SIGKILL after ``STOP_TIMEOUT`` seconds)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class Watermark:
    """Reads the projection watermark (last applied stream sequence) from the read model.

    Args:
        target: the MariaDB server.
        db: the read-model database.
    """

    def __init__(self, target: MySQLTarget, db: str) -> None:
        self._target, self._db = target, db
        self._conn: Any = None
        # the lag measurement polls while it also waits for the end: one query at a time on the
        # connection (two at once broke it: "readexactly() called while another coroutine...")
        self._lock = asyncio.Lock()
        from skialith_langgraph.readmodel import PROJECTION
        from skialith_langgraph.readmodel.tables import projection

        self._sql = f"SELECT last_seq FROM {projection.name} WHERE name = %s"
        self._name = PROJECTION

    async def get(self) -> int:
        """Return the committed watermark (0 before the first batch)."""
        async with self._lock:
            if self._conn is None:
                self._conn = await self._target.connect(self._db)
            async with self._conn.cursor() as cur:
                try:
                    await cur.execute(self._sql, (self._name,))
                except Exception:  # no table before the projector's set-up; a broken connection
                    self.close()  # is opened anew on the next call
                    return 0
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def wait_for(self, seq: int, timeout: float = 60.0, poll: float = 0.002) -> float:
        """Wait until the watermark reaches ``seq``; return the seconds waited.

        Raises:
            TimeoutError: it did not within ``timeout`` seconds.
        """
        start = time.monotonic()
        while (current := await self.get()) < seq:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"projection watermark {current} did not reach {seq} within {timeout} s")
            await asyncio.sleep(poll)
        return time.monotonic() - start

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class PgWatermark(Watermark):
    """:class:`Watermark` of a PostgreSQL read model (``url``: a libpq URL of its database)."""

    def __init__(self, url: str) -> None:
        super().__init__(MySQLTarget("", 0, "", ""), "")
        self._url = url
        self._sql = self._sql.replace("%s", "%(name)s")

    async def get(self) -> int:
        """Return the committed watermark (0 before the first batch)."""
        import psycopg

        async with self._lock:
            if self._conn is None:
                self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            try:
                cur = await self._conn.execute(self._sql, {"name": self._name})
                row = await cur.fetchone()
            except Exception:
                await self.aclose()
                return 0
        return int(row[0]) if row else 0

    async def aclose(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def close(self) -> None:
        """Forget the connection (closed by :meth:`aclose`; the run's end drops the database)."""
        self._conn = None


if __name__ == "__main__":
    main()
