"""A small asyncio TCP proxy for fault tests: forwards a local port to a target, and can cut and
restore the connections in between, as a network or a database outage would.

Two kinds of cut:

* ``"reset"``: every open connection is aborted at once and new ones are accepted and closed
  straight away, as when the database process dies or a firewall rejects (errors come fast).
* ``"blackhole"``: connections stay open but no byte goes through in either direction, and new
  ones are accepted but never reach the target, as in a network partition (only timeouts help).
  On :meth:`TcpProxy.restore` the held bytes flow on, and held new connections are connected.

Example:
    async with TcpProxy("127.0.0.1", 3306) as proxy:
        url = f"mysql+aiomysql://root@127.0.0.1:{proxy.port}/test"
        proxy.cut()
        ...
        proxy.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal

logger = logging.getLogger(__name__)

CutMode = Literal["reset", "blackhole"]
_CHUNK = 64 * 1024


class TcpProxy:
    """Forwards ``host:port`` (a free port unless given) to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = asyncio.Event()  # set while bytes may flow
        self._open.set()
        self.mode: CutMode | None = None  # the current cut, None while connected
        self.accepted = 0  # connections accepted, in total
        self.refused = 0  # connections closed at once because of a "reset" cut

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy's port is known after start()")
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.info("proxy 127.0.0.1:%d -> %s:%d", self._port, *self.target)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._abort_all()
        self._open.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def cut(self, mode: CutMode = "reset") -> None:
        """Cut the connections: ``"reset"`` aborts them, ``"blackhole"`` freezes them."""
        self.mode = mode
        self._open.clear()
        if mode == "reset":
            self._abort_all()
        logger.info("proxy :%d cut (%s)", self._port, mode)

    def restore(self) -> None:
        """Let connections through again (held bytes and held connections go on)."""
        self.mode = None
        self._open.set()
        logger.info("proxy :%d restored", self._port)

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._links)

    def _abort_all(self) -> None:
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, writer: asyncio.StreamWriter) -> bool:
        if self.mode != "reset":
            return False
        self.refused += 1
        writer.transport.abort()
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refuse(writer):
            return
        await self._open.wait()  # a blackhole holds the new connection here
        if self._refuse(writer):  # cut again, with "reset", meanwhile
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        self._spawn(self._pump(reader, up_writer, link))
        self._spawn(self._pump(up_reader, writer, link))

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._open.wait()  # a blackhole holds the bytes here
                if link not in self._links:
                    return  # aborted meanwhile: the bytes die with the connection
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # one side ended: end both, as a real connection would
            if link in self._links:
                self._links.discard(link)
                for w in link:
                    with contextlib.suppress(Exception):
                        w.close()
