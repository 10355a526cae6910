"""The embedded stack ``skialith up`` and ``skialith demo`` run: a nats-server subprocess, the
projector and the trace ingest, restarted within a budget when they die."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from ..config import (
    NATS_TOKEN_FILE,
    Settings,
)
from ..consumer import Consumer, describe
from ..errors import ConnectError, SkialithError
from ..projector import Projector
from ..server import RANDOM_PORT, NatsServer, StoreInUseError
from ..traces import TraceIngest
from ._common import (
    CliError,
    _resolve_database_url,
)
from ._running import (
    _consumer_failure,
)

logger = logging.getLogger("skialith_langgraph.cli")

RESTART_LIMIT = 3  # restarts of one component 'skialith up' allows within RESTART_WINDOW
RESTART_WINDOW = 60.0  # seconds


def _port_in_use(host: str, port: int) -> bool:
    """Whether a listener holds ``host:port`` (SO_REUSEADDR as nats-server, so TIME_WAIT is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _port_taken_message(port: int) -> str:
    # never suggest only another port: a second server on the same store loses acknowledged writes
    return (
        f"port {port} is already in use on 127.0.0.1 (is another 'skialith up' or nats-server running?); "
        "stop that process, or run a separate Skialith with its own data directory and port: "
        "'skialith up --home OTHER_DIR --nats-port N', then export SKIALITH_NATS_URL=nats://127.0.0.1:N "
        'and SKIALITH_NATS_TOKEN="$(cat OTHER_DIR/nats.token)"'
    )


def _store_in_use_message(home: Path, holder: str) -> str:
    return (
        f"the data directory {str(home)!r} is in use by {holder} (another 'skialith up'?); "
        "two nats-servers on one JetStream store lose acknowledged writes. Stop that one first "
        "(Ctrl-C where it runs), or give this one its own: 'skialith up --home OTHER_DIR --nats-port N'"
    )


def _private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing and make it 0700, also when it existed (older
    versions created 0755): the JetStream store, the read model and the token live below."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _read_token(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return token or None


def _write_token(path: Path, token: str) -> None:
    """Write the token readable by this user only (0600), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    os.replace(tmp, path)


class EmbeddedStack:
    """What ``skialith up`` runs: a nats-server subprocess plus the projector on this event loop.

    Args:
        home: data directory (made 0700); the JetStream store goes to ``<home>/nats``, the server
            log to ``<home>/nats-server.log``, the NATS token to ``<home>/nats.token`` (0600; kept
            across restarts, so connected clients reconnect).
        port: NATS client port on 127.0.0.1 (``-1``: a free one).
        database_url: the read model; ``None`` means ``SKIALITH_DATABASE_URL`` or SQLite under ``home``.
        sync_always: fsync every JetStream write.
    """

    def __init__(
        self,
        home: Path,
        port: int,
        database_url: str | None,
        *,
        sync_always: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.home = home.resolve()
        self.overrides = dict(overrides or {})  # other Settings fields (retention, stream limits)
        self.port = port
        self.database_url = _resolve_database_url(database_url, self.home)
        self.token_file = self.home / NATS_TOKEN_FILE
        self.token = _read_token(self.token_file) or secrets.token_urlsafe(32)
        self.server = NatsServer(
            store_dir=self.home / "nats",
            port=port,
            log_file=self.home / "nats-server.log",
            sync_always=sync_always,
            token=self.token,
        )
        self.projector: Projector | None = None
        self.traces: TraceIngest | None = None
        self.restarts: dict[str, int] = {"nats-server": 0, "projector": 0, "trace ingest": 0}
        self._budgets = {name: _RestartBudget() for name in self.restarts}
        self._server_pid: int | None = None
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        assert self._settings is not None, "start() first"
        return self._settings

    async def start(self) -> None:
        """Start nats-server, then the projector (which ensures the stream and the tables) and the
        trace ingest (``skialith_agent_traces``).

        Raises:
            CliError: the data directory is in use by another process, or the port is taken.
            SkialithError: the server, NATS or the database cannot be used.
        """
        holder = self.server.store_holder()  # checked before anything is created
        if holder is not None:
            raise CliError(_store_in_use_message(self.home, holder))
        if self.port != RANDOM_PORT and _port_in_use("127.0.0.1", self.port):
            raise CliError(_port_taken_message(self.port))
        try:
            _private_dir(self.home)
            self.server.lock_store()  # held for our life, and our nats-server's (it inherits it)
            _private_dir(self.server.store_dir)
            if _read_token(self.token_file) != self.token:
                _write_token(self.token_file, self.token)
            self.token_file.chmod(0o600)
            # on this (main) thread: the server dies with the thread that starts it
            self.server.start()
            self._server_pid = self.server.pid
        except StoreInUseError as exc:
            raise CliError(_store_in_use_message(self.home, exc.holder or "another process")) from exc
        except ConnectError as exc:
            self.server.stop()
            if "address already in use" in str(exc):
                raise CliError(_port_taken_message(self.port)) from exc
            raise
        except BaseException:
            self.server.stop()
            raise
        try:
            settings = Settings.from_env(
                nats_url=self.server.url,
                database_url=self.database_url,
                nats_token=self.token,
                **self.overrides,
            )
            self._settings = settings
            self.projector = Projector(settings)
            await self.projector.start()
            self.traces = TraceIngest(settings)
            await self.traces.start()
        except BaseException:
            await self.stop()
            raise

    @property
    def consumers(self) -> list[Consumer[Any]]:
        """The projector and the trace ingest running now."""
        return [c for c in (self.projector, self.traces) if c is not None]

    def server_problem(self) -> str | None:
        """``None`` while our nats-server runs, else what happened to it (for ``/readyz``)."""
        return None if self.server.running else f"nats-server pid {self._server_pid} is not running"

    async def supervise(self) -> None:
        """Restart what died: the nats-server, the projector, the trace ingest (bounded, logged).

        Raises:
            CliError: one died more than :data:`RESTART_LIMIT` times within :data:`RESTART_WINDOW`
                seconds, or cannot be started again; the message names it.
        """
        if not self.server.running:
            await self._restart_server()
        for attr in ("projector", "traces"):
            consumer: Consumer[Any] | None = getattr(self, attr)
            failure = _consumer_failure(consumer) if consumer is not None else None
            if consumer is not None and failure is not None:
                await self._restart_consumer(attr, consumer, failure)

    async def _restart_server(self) -> None:
        process = getattr(self.server, "_process", None)  # NatsServer keeps the exit code there
        code = process.poll() if process is not None else None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        what = f"nats-server pid {self._server_pid} died ({how}; its log: {self.server.log_file})"
        while True:
            logger.error("%s", what)
            self._spend("nats-server", what)
            try:
                # on this (main) thread, as at start: the server dies with the thread that starts it
                self.server.restart()
            except SkialithError as exc:
                what = f"nats-server could not be started again ({exc})"
                continue
            self._server_pid = self.server.pid
            logger.warning("restarted nats-server: pid %s on %s", self._server_pid, self.server.url)
            return

    async def _restart_consumer(self, attr: str, consumer: Consumer[Any], failure: BaseException) -> None:
        role = consumer.role
        what = f"the {role} {consumer.durable} ended ({describe(failure)})"
        logger.error("%s", what)
        with contextlib.suppress(Exception):
            await consumer.close()
        assert self._settings is not None
        while True:
            attempt = self._spend(role, what)
            await asyncio.sleep(min(2.0 ** (attempt - 1), 8.0))  # 1, 2, 4 s: e.g. a lease may expire
            fresh: Consumer[Any] = (
                Projector(self._settings) if attr == "projector" else TraceIngest(self._settings)
            )
            try:
                await fresh.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await fresh.close()
                what = f"the {role} {consumer.durable} could not be started again ({describe(exc)})"
                logger.error("%s", what)
                continue
            setattr(self, attr, fresh)
            logger.warning("restarted the %s %s", role, fresh.durable)
            return

    def _spend(self, name: str, what: str) -> int:
        """Count a restart of ``name``; raise CliError naming ``what`` beyond the bound."""
        budget = self._budgets[name]
        if not budget.spend():
            raise CliError(
                f"{what}; it was restarted {RESTART_LIMIT} times within {RESTART_WINDOW:.0f} s already, "
                "giving up"
            )
        self.restarts[name] += 1
        logger.warning(
            "restarting %s (restart %d of at most %d within %.0f s)",
            name,
            budget.recent,
            RESTART_LIMIT,
            RESTART_WINDOW,
        )
        return budget.recent

    async def stop(self) -> None:
        """Stop the projector (it finishes its batch), then the server. Idempotent.

        A consumer that had failed is closed; its failure was reported by :meth:`supervise`.
        """
        projector, self.projector = self.projector, None
        traces, self.traces = self.traces, None
        try:
            for consumer in (traces, projector):
                if consumer is None:
                    continue
                try:
                    await consumer.stop()
                except Exception as exc:
                    logger.error(
                        "the %s %s stopped with an error: %s", consumer.role, consumer.durable, describe(exc)
                    )
                finally:
                    # after its nats-server died for good a close may fail too: the reason to exit
                    # is what the caller is raising, not this
                    try:
                        await consumer.close()
                    except Exception as exc:
                        logger.debug("closing the %s failed: %s", consumer.role, describe(exc))
        finally:
            await asyncio.to_thread(self.server.stop)


class _RestartBudget:
    """At most :data:`RESTART_LIMIT` restarts within any :data:`RESTART_WINDOW` seconds."""

    def __init__(self) -> None:
        self._times: list[float] = []

    @property
    def recent(self) -> int:
        return len(self._times)

    def spend(self) -> bool:
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < RESTART_WINDOW]
        if len(self._times) >= RESTART_LIMIT:
            return False
        self._times.append(now)
        return True
