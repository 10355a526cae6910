"""Private: an event loop running in a daemon thread, owned by one checkpointer.

nats-py is asyncio-only. The sync face of the checkpointer submits its coroutines here, so a
sync call works from any thread, including one whose own loop is running (Jupyter).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


class LoopThread:
    """Starts lazily; ``run`` blocks the calling thread until the coroutine finishes."""

    def __init__(self, name: str = "skialith-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def _main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=_main, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @property
    def started(self) -> bool:
        return self._loop is not None and not self._loop.is_closed()

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], *, method: str = "") -> T:
        """Run ``coro`` on the owned loop and wait for its result.

        Raises:
            RuntimeError: called from the owned loop's own thread, where waiting would deadlock.
        """
        if self.in_loop_thread():
            coro.close()
            hint = f"; use 'await {method}(...)'" if method else ""
            raise RuntimeError(
                f"synchronous call from the checkpointer's own event-loop thread would deadlock{hint}"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self, last: Coroutine[Any, Any, Any] | None = None) -> None:
        """Stop the loop and its thread, after running ``last`` on it (errors ignored)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or loop.is_closed():
            if last is not None:
                last.close()
            return

        async def finish() -> None:
            if last is not None:
                with contextlib.suppress(Exception):
                    await last
            loop.stop()

        asyncio.run_coroutine_threadsafe(finish(), loop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()


async def cancel_until_done(*tasks: asyncio.Future[Any], every: float = 0.1) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every ``every`` seconds
    while one still runs. Their results and errors are left on them.

    One cancellation can be lost on Python 3.11: ``asyncio.wait_for`` (around aiomysql's connect)
    returns or raises what its inner call produced when that call ends as the cancellation
    arrives, so a loop that retries a refused connection carries on as if never cancelled. A
    cancellation of the caller itself still propagates."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)


# -- what a closed event loop leaves behind ---------------------------------------------------------
#
# A loop closed without ``shutdown_asyncgens`` (``loop.close()`` after ``run_until_complete``) never
# runs the async close of what was opened on it, and asyncio cannot close it afterwards: every way
# to close a transport ends in scheduling ``connection_lost`` on its loop, which raises
# ``RuntimeError`` once the loop is closed. The helpers below close such leftovers synchronously.


def close_stream(writer: asyncio.StreamWriter | None) -> None:
    """Close the socket under ``writer``, whose event loop is closed.

    ``abort()`` still marks the transport closed (so a later ``close()`` by its library is a no-op)
    before it raises at scheduling ``connection_lost``; the socket is then closed here, as
    ``connection_lost`` would have done, and forgotten by the transport (whose ``__del__`` would
    otherwise warn about an unclosed transport).
    """
    if writer is None:
        return
    close_transport(writer.transport)


def close_transport(transport: Any) -> None:
    """Close the socket under ``transport``, whose event loop is closed (see :func:`close_stream`)."""
    with contextlib.suppress(RuntimeError):
        transport.abort()
    sock = getattr(transport, "_sock", None)  # asyncio's socket transports
    if isinstance(sock, socket.socket):
        sock.close()
        transport._sock = None


def settle_tasks(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Finish the coroutines of ``tasks``, left pending on a closed loop, and keep asyncio from
    logging "Task was destroyed but it is pending!" for them when they are collected."""
    for task in tasks:
        if task is None or task.done():
            continue
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        with contextlib.suppress(BaseException):
            task.get_coro().close()


def close_nats(nc: Any) -> None:
    """Close a nats-py client whose event loop is closed: its socket, its tasks."""
    transport = getattr(nc, "_transport", None)
    close_stream(getattr(transport, "_io_writer", None))
    subs = getattr(nc, "_subs", {}) or {}
    settle_tasks(
        [
            getattr(nc, "_reading_task", None),
            getattr(nc, "_ping_interval_task", None),
            getattr(nc, "_flusher_task", None),
            getattr(nc, "_reconnection_task", None),
            *(getattr(sub, "_wait_for_msgs_task", None) for sub in list(subs.values())),
        ]
    )


class Connections:
    """The DBAPI connections an engine's pool holds open (kept by pool events), so that they can
    be closed after their event loop was closed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._open: dict[int, Any] = {}
        pool = engine.sync_engine
        event.listen(pool, "connect", self._connected)
        event.listen(pool, "close", self._closed)
        event.listen(pool, "close_detached", self._detached)

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        self._open[id(dbapi_connection)] = dbapi_connection

    def _closed(self, dbapi_connection: Any, _record: Any) -> None:
        self._open.pop(id(dbapi_connection), None)

    def _detached(self, dbapi_connection: Any) -> None:
        self._open.pop(id(dbapi_connection), None)

    def __len__(self) -> int:
        return len(self._open)

    async def close_orphans(self) -> None:
        """Close every connection, opened on a loop that is closed now (call on a running loop)."""
        conns, self._open = list(self._open.values()), {}
        for conn in conns:
            driver = getattr(conn, "driver_connection", conn)
            stop = getattr(driver, "stop", None)
            if callable(stop):  # aiosqlite: a worker thread holds the sqlite3 connection
                done = stop()
                if isinstance(done, asyncio.Future):
                    with contextlib.suppress(Exception):
                        await done
                continue
            pgconn = getattr(driver, "pgconn", None)  # psycopg: libpq owns the socket, no loop needed
            if pgconn is not None:
                with contextlib.suppress(Exception):
                    pgconn.finish()
                continue
            writer = getattr(driver, "_writer", None)  # aiomysql: a socket on the closed loop
            if isinstance(writer, asyncio.StreamWriter):
                close_stream(writer)
                with contextlib.suppress(Exception):
                    driver.close()
                continue
            transport = getattr(driver, "_transport", None)  # asyncmy (the hot reads' connections)
            if isinstance(transport, asyncio.BaseTransport):
                close_transport(transport)
                with contextlib.suppress(Exception):
                    driver.close()
