"""Private: an event loop running in a daemon thread, owned by one checkpointer.

nats-py is asyncio-only. The sync face of the checkpointer submits its coroutines here, so a
sync call works from any thread, including one whose own loop is running (Jupyter).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

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

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
