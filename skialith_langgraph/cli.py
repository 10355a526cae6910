"""The ``skialith`` command (up, projector, status, demo); the only place that configures logging.

* ``skialith up`` starts an embedded nats-server (JetStream, data under ``./.skialith/``, 127.0.0.1
  only, a generated token in ``./.skialith/nats.token``) and the projector, prints how to connect,
  and runs until Ctrl-C, SIGTERM or SIGHUP. Its files are private (0700/0600), its nats-server
  dies with it, and a second ``up`` on the same data directory is refused. It supervises what it
  runs: a nats-server, projector or trace ingest that dies is restarted (at most
  :data:`RESTART_LIMIT` times within :data:`RESTART_WINDOW` seconds, logged), else ``up`` exits 1
  naming it.
* ``skialith projector`` runs the projector alone (``--rebuild`` rebuilds the read model from the
  stream, ``--forget REPLICA`` removes a dead replica's durable consumer), with progress in the log
  and, on request, Prometheus metrics and health endpoints (``/healthz``, ``/readyz``). A replica id
  runs once: a second process with it refuses to start (see ``ownership.py``).
* ``skialith status`` shows the stream, each consumer (live or not, its lag) and the read model.
* ``skialith gc`` runs one retention pass (idle TTL, keep-last-N; ``--dry-run``).
* ``skialith demo`` kills an agent with kill -9 between two nodes and resumes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import nats.js.errors
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, cluster, inspect_cli, regions
from .config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_HOME,
    DEFAULT_NATS_PORT,
    DEFAULT_NATS_URL,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
    NATS_TOKEN_FILE,
    Settings,
    safe_nats_url,
)
from .consumer import Consumer, describe
from .errors import ConnectError, ReadModelError, SkialithError
from .log import Log
from .metrics import DEFAULT_HOST, MetricsServer, ProgressProbe, Readiness, render_metrics
from .ownership import Holder, collect_status, consumer_names, forget, live_leases
from .projector import DEFAULT_BATCH_SIZE, Projector
from .readmodel import ReadModel, safe_url
from .readmodel.tables import metadata
from .retention import DEFAULT_SWEEP_INTERVAL, DEFAULT_SWEEP_LIMIT, Sweeper
from .server import LOCAL_HOSTS, RANDOM_PORT, NatsServer, StoreInUseError
from .traces import TraceIngest

logger = logging.getLogger("skialith_langgraph.cli")

DEFAULT_PROGRESS_INTERVAL = 10.0  # seconds between progress lines
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
PRIVATE_UMASK = 0o077  # what 'up' and 'demo' create is readable by this user only
RESTART_LIMIT = 3  # restarts of one component 'skialith up' allows within RESTART_WINDOW
RESTART_WINDOW = 60.0  # seconds
SUPERVISE_INTERVAL = 0.5  # seconds between two looks at what 'skialith up' runs


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 1."""


# -- shared pieces -------------------------------------------------------------------------------


def _home_database_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home / 'skialith.db'}"


def _resolve_database_url(flag: str | None, home: Path) -> str:
    """``--database-url``, then ``SKIALITH_DATABASE_URL``, then SQLite under ``home``."""
    return flag or os.environ.get("SKIALITH_DATABASE_URL") or _home_database_url(home)


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


async def _stop_projector(projector: Projector) -> None:
    """Stop the projector: it finishes and acknowledges the batch in hand, then closes.

    Raises:
        CliError: the projector's run task had failed (``stop()`` re-raises its error).
    """
    try:
        await projector.stop()
    except Exception as exc:
        raise CliError(f"the projector stopped with an error: {type(exc).__name__}: {exc}") from exc
    finally:
        await projector.close()  # stop() skips it when the run task failed


def _consumer_failure(consumer: Consumer[Any]) -> BaseException | None:
    """The exception that ended a consumer's task, if it ended (Consumer has no public probe)."""
    task: asyncio.Task[None] | None = getattr(consumer, "_task", None)
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception() or RuntimeError(f"the {consumer.role} stopped on its own")


@contextlib.asynccontextmanager
async def _stop_signals() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT, SIGTERM or SIGHUP (a closed terminal) while the block runs."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it); whether it ran to the end."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        logger.info("received %s; shutting down", sig.name)
    stop.set()


async def _serve(
    watch: Callable[[], Coroutine[Any, Any, None]],
    stop: asyncio.Event,
    probe: ProgressProbe,
    interval: float,
    *,
    quiet_idle: bool,
) -> None:
    """Call ``watch`` every half second and log progress every ``interval`` seconds, until ``stop``
    is set or ``watch`` raises.

    Raises:
        CliError: from ``watch``: what it watches ended, and is not restarted.
    """
    last: tuple[int, int] | None = None
    next_report = time.monotonic() + interval
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(SUPERVISE_INTERVAL, interval))
        if stop.is_set():
            break
        await watch()
        projector = probe.projector
        if stop.is_set() or time.monotonic() < next_report:
            continue
        next_report = time.monotonic() + interval
        progress = await probe.sample()
        now = (progress.watermark, progress.stream_last_seq)
        if quiet_idle and now == last:
            continue
        last = now
        stats = projector.stats
        logger.info(
            "projector %s: watermark=%d stream_last_seq=%d lag=%d applied=%d batches=%d failures=%d",
            projector.durable,
            progress.watermark,
            progress.stream_last_seq,
            progress.lag,
            stats.applied,
            stats.batches,
            stats.failures,
        )


@contextlib.asynccontextmanager
async def _probe(settings: Settings, projector: Projector) -> AsyncIterator[ProgressProbe]:
    """A progress probe with its own NATS connection and engine."""
    log = await Log.open(settings)
    model = ReadModel.from_url(settings.database_url, connect_timeout=settings.connect_timeout)
    try:
        yield ProgressProbe(log, model, projector)
    finally:
        try:
            await log.close()
        except Exception as exc:  # NATS gone for good: the caller raises why
            logger.debug("closing the progress probe's NATS connection failed: %s", describe(exc))
        await model.close()


@contextlib.asynccontextmanager
async def _health_server(
    args: argparse.Namespace, collect: Callable[[], Coroutine[Any, Any, str]], readiness: Readiness
) -> AsyncIterator[MetricsServer | None]:
    """Serve /metrics, /healthz and /readyz on ``--metrics-port`` (nothing without it)."""
    if args.metrics_port is None:
        yield None
        return
    server = MetricsServer(collect, host=args.metrics_host, port=args.metrics_port, ready=readiness.check)
    try:
        await server.start()
    except OSError as exc:
        raise CliError(
            f"cannot serve metrics on {args.metrics_host}:{args.metrics_port} ({exc}); "
            "choose another --metrics-port"
        ) from exc
    _out(f"metrics: {server.url} (health: /healthz, /readyz)")
    try:
        yield server
    finally:
        await server.close()


def _out(text: str = "") -> None:
    print(text, flush=True)


# -- skialith up ----------------------------------------------------------------------------------


def _connect_banner(stack: EmbeddedStack) -> list[str]:
    settings = stack.settings
    nats_url, shown_db = settings.nats_url, safe_url(settings.database_url)
    hidden = shown_db != settings.database_url
    # DEFAULT_DATABASE_URL is SQLite in ./.skialith, relative to where the checkpointer runs
    default_db = _home_database_url(Path(DEFAULT_HOME).resolve())
    defaults = nats_url == DEFAULT_NATS_URL and settings.database_url == default_db
    if defaults:
        snippet_args = ""
    else:
        snippet_args = f"{nats_url!r}, {shown_db!r}"
    lines = [
        "Skialith is up.",
        f"  NATS       {nats_url}  (nats-server pid {stack.server.pid})",
        f"  JetStream  {stack.server.store_dir}",
        f"  server log {stack.server.log_file}",
        f"  NATS auth  token in {stack.token_file} (readable by you only; 127.0.0.1 only)",
        f"  database   {shown_db}" + ("  (password hidden)" if hidden else ""),
        f"  projector  {stack.projector.durable if stack.projector else '-'} on stream {settings.stream}",
        "",
        "Connect from another shell:",
        f"  export SKIALITH_NATS_URL={nats_url}",
        f'  export SKIALITH_NATS_TOKEN="$(cat {stack.token_file})"',
        f"  export SKIALITH_DATABASE_URL={shown_db}" + ("  # put the real password in" if hidden else ""),
        "",
        "and in Python:",
        "  from skialith_langgraph import SkialithCheckpointer",
        f"  checkpointer = SkialithCheckpointer({snippet_args})",
        "  app = graph.compile(checkpointer=checkpointer)",
        "",
    ]
    if defaults:
        lines += [
            "(From this directory, SkialithCheckpointer() with no arguments connects here;",
            f" it reads the token from ./{DEFAULT_HOME}/{NATS_TOKEN_FILE}.)",
            "",
        ]
    lines.append("Press Ctrl-C to stop.")
    return lines


def _retention_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The retention and stream-limit flags of ``up``/``projector`` as Settings overrides."""
    return {
        "retention_idle_ttl": args.retention_idle_ttl,
        "retention_keep_last": args.retention_keep_last,
        "stream_max_age": args.stream_max_age,
        "stream_max_bytes": args.stream_max_bytes,
    }


@contextlib.asynccontextmanager
async def _sweeping(settings: Settings, interval: float) -> AsyncIterator[None]:
    """Run the retention sweeper every ``interval`` seconds while the block runs, if a policy is on."""
    sweeper = Sweeper(settings)
    if not sweeper.active:
        yield
        return
    _out(
        f"retention: idle TTL {sweeper.idle_ttl or 'off'} s, keep last {sweeper.keep_last or 'all'}, "
        f"a pass every {interval} s"
    )
    done = asyncio.Event()
    task = asyncio.create_task(sweeper.run(done, interval=interval))
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(Exception):
            await task
        await sweeper.close()


async def _up(args: argparse.Namespace) -> int:
    port = RANDOM_PORT if args.nats_port == 0 else args.nats_port
    stack = EmbeddedStack(
        Path(args.home),
        port,
        args.database_url,
        sync_always=args.sync_always,
        overrides=_retention_overrides(args),
    )
    if args.cluster > 1:  # N clustered nodes and an RN stream (skialith_langgraph/cluster.py)
        cluster.use_cluster(stack, args.cluster)
    async with _stop_signals() as stop:
        await stack.start()
        try:
            for line in _connect_banner(stack):
                _out(line)
            assert stack.projector is not None and stack.traces is not None
            async with _probe(stack.settings, stack.projector) as probe:
                traces = ProgressProbe(probe.log, probe.model, stack.traces)

                async def watch() -> None:
                    await stack.supervise()
                    if stack.projector is not None:
                        probe.projector = stack.projector
                    if stack.traces is not None:
                        traces.projector = stack.traces

                readiness = Readiness(
                    lambda: stack.consumers, probe.model, {"nats-server": stack.server_problem}
                )
                async with (
                    _health_server(args, lambda: render_metrics([probe, traces], stack.restarts), readiness),
                    _sweeping(stack.settings, args.sweep_interval),
                ):
                    await _serve(watch, stop, probe, args.progress_interval, quiet_idle=True)
        finally:
            await stack.stop()
    _out("Skialith stopped.")
    return 0


# -- skialith projector ---------------------------------------------------------------------------


async def _rebuild(settings: Settings, projector: Projector) -> int:
    """Drop and re-create the read-model tables and delete the durable consumer.

    Returns:
        The stream's last sequence: the rebuild is complete once the watermark reaches it.
    """
    shown = safe_url(settings.database_url)
    log = await Log.open(settings)
    try:
        live = await live_leases(log.js, settings.stream)
    finally:
        await log.close()
    if live:
        raise CliError(
            f"refusing to rebuild while replicas of stream {settings.stream} are live (the rebuild drops "
            f"the tables they write): {_describe_live(live)}; stop them first"
        )
    _out(f"rebuild: dropping the read-model tables in {shown}")
    model = ReadModel.from_url(settings.database_url, connect_timeout=settings.connect_timeout)
    try:
        try:
            async with model.engine.begin() as conn:
                await conn.run_sync(metadata.drop_all)
        except (SQLAlchemyError, OSError) as exc:
            raise ReadModelError(
                f"cannot drop the read-model tables in {shown!r} ({type(exc).__name__}: {exc})", url=shown
            ) from exc
        _out("rebuild: creating them again")
        await model.setup()
    finally:
        await model.close()
    log = await Log.open(settings)
    try:
        await log.ensure_stream()
        # every replica of this projection has its own durable; all must start again from sequence 1
        prefix = projector.durable.removesuffix(projector.replica)
        durables = {projector.durable} | {
            n for n in await consumer_names(log.js, settings.stream) if n.startswith(prefix)
        }
        for durable in sorted(durables):
            try:
                await log.js.delete_consumer(settings.stream, durable)
                _out(f"rebuild: deleted the durable consumer {durable} on stream {settings.stream}")
            except nats.js.errors.NotFoundError:
                pass
        last = await log.stream_last_seq()
    finally:
        await log.close()
    _out(f"rebuild: projecting stream {settings.stream} from sequence 1 (last sequence now {last})")
    return last


async def _announce_caught_up(probe: ProgressProbe, target: int, started: float) -> None:
    while True:
        progress = await probe.sample()
        if progress.watermark >= target:
            _out(
                f"rebuild: done; the read model reflects the stream up to sequence {progress.watermark} "
                f"({time.monotonic() - started:.1f} s). Still running; Ctrl-C or SIGTERM stops."
            )
            return
        await asyncio.sleep(0.2)


async def _projector(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        database_url=args.database_url,
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        **_retention_overrides(args),
        **nats_overrides(args),
    )
    if args.forget is not None:
        return await _forget(settings, args.forget)
    projector = Projector(settings, replica=args.replica, batch_size=args.batch_size)
    async with _stop_signals() as stop:
        started = time.monotonic()
        target = await _rebuild(settings, projector) if args.rebuild else None
        try:
            # start waits for a database that does not answer yet: a stop signal ends the wait
            if not await _unless_stopped(projector.start(), stop):
                await projector.close()
                _out("projector stopped before it started")
                return 0
        except BaseException:
            await projector.close()
            raise
        announce: asyncio.Task[None] | None = None
        try:
            _out(
                f"projector {projector.durable}: stream {settings.stream} at "
                f"{safe_nats_url(settings.nats_url)} -> {safe_url(settings.database_url)}"
            )
            async with _probe(settings, projector) as probe:
                readiness = Readiness(lambda: [projector], probe.model)
                async with _health_server(args, lambda: render_metrics([probe]), readiness):
                    if target is not None:
                        announce = asyncio.create_task(_announce_caught_up(probe, target, started))

                    async def watch() -> None:
                        failure = _consumer_failure(projector)
                        if failure is not None:
                            raise CliError(f"the projector stopped: {describe(failure)}") from failure

                    try:
                        async with _sweeping(settings, args.sweep_interval):
                            await _serve(watch, stop, probe, args.progress_interval, quiet_idle=False)
                    finally:
                        if announce is not None:
                            announce.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await announce
        finally:
            await _stop_projector(projector)
    stats = projector.stats
    _out(f"projector stopped: applied={stats.applied} batches={stats.batches} watermark={stats.last_seq}")
    return 0


# -- skialith gc ----------------------------------------------------------------------------------


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


def _describe_live(live: dict[str, Holder]) -> str:
    return "; ".join(
        f"{h.role} replica {h.replica!r} ({key}) on {h.describe()}" for key, h in sorted(live.items())
    )


async def _forget(settings: Settings, replica: str) -> int:
    """Delete the durable consumers (projector and trace ingest) and lease of a replica that is gone.

    Raises:
        CliError: the replica is live (its lease is held), or it has no consumer on the stream.
    """
    durables = [Projector(settings, replica=replica).durable, TraceIngest(settings, replica=replica).durable]
    log = await Log.open(settings)
    try:
        live = {k: h for k, h in (await live_leases(log.js, settings.stream)).items() if k in durables}
        if live:
            raise CliError(
                f"refusing to forget replica {replica!r}: it is live ({_describe_live(live)}); stop it first"
            )
        existing = set(await consumer_names(log.js, settings.stream))
        found = [d for d in durables if d in existing]
        if not found:
            others = ", ".join(sorted(existing)) or "none"
            raise CliError(
                f"replica {replica!r} has no durable consumer on stream {settings.stream} "
                f"(its consumers: {others})"
            )
        for durable in found:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await log.js.delete_consumer(settings.stream, durable)
            await forget(log.js, settings.stream, durable)
            _out(
                f"forgot replica {replica!r}: deleted the durable consumer {durable} "
                f"on stream {settings.stream}"
            )
    finally:
        await log.close()
    return 0


# -- skialith status ------------------------------------------------------------------------------


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


# -- skialith demo --------------------------------------------------------------------------------


def _servers(nats_url: str) -> list[tuple[str, int]]:
    found = []
    for raw in nats_url.split(","):
        parts = urllib.parse.urlsplit(raw.strip() if "://" in raw else f"nats://{raw.strip()}")
        found.append((parts.hostname or "127.0.0.1", parts.port or 4222))
    return found


async def _answers(nats_url: str, timeout: float = 0.5) -> bool:
    """Whether any server of ``nats_url`` accepts a TCP connection."""
    for host, port in _servers(nats_url):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


async def _until_stopped(run: Coroutine[Any, Any, int], stop: asyncio.Event) -> int:
    """Run the demo until it ends or a stop signal arrives (then 130, as a shell reports Ctrl-C)."""
    task = asyncio.create_task(run)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        _out("interrupted")
        return 130
    return task.result()


async def _demo(args: argparse.Namespace) -> int:
    from . import demo  # LangGraph graph building is only needed here

    nats_url = args.nats_url or os.environ.get("SKIALITH_NATS_URL") or DEFAULT_NATS_URL
    _out("skialith demo: kill -9 an agent between two nodes, then resume it.")
    async with _stop_signals() as stop:
        # a private directory for this run; what a killed run left behind is removed first
        with demo.workspace() as work:
            if await _answers(nats_url):
                database_url = (
                    args.database_url or os.environ.get("SKIALITH_DATABASE_URL") or DEFAULT_DATABASE_URL
                )
                _out(f"  NATS      {safe_nats_url(nats_url)} (already running)")
                _out(f"  database  {safe_url(database_url)}")
                return await _until_stopped(demo.run(nats_url, database_url, out=_out, work=work), stop)
            servers = _servers(nats_url)
            host, port = servers[0]
            if len(servers) > 1 or host not in LOCAL_HOSTS:
                raise CliError(
                    f"nothing answers at {safe_nats_url(nats_url)!r}; start NATS there, or run "
                    "'skialith demo' without --nats-url to use an embedded server"
                )
            home = work / "home"
            stack = EmbeddedStack(home, port, args.database_url)
            await stack.start()
            try:
                settings = stack.settings
                _out(
                    f"  NATS      {settings.nats_url} (embedded: nats-server pid {stack.server.pid}, "
                    f"home {home}; stopped at the end)"
                )
                _out(f"  database  {safe_url(settings.database_url)}")
                run = demo.run(
                    settings.nats_url, settings.database_url, token=stack.token, out=_out, work=work
                )
                return await _until_stopped(run, stop)
            finally:
                await stack.stop()


# -- argument parsing -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0..65535 (0: a free one), got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_retention_flags(parser: argparse.ArgumentParser) -> None:
    """Retention and stream limits of ``up`` and ``projector`` (see docs/retention.md)."""
    parser.add_argument(
        "--retention-idle-ttl",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="delete threads idle this long, every --sweep-interval (default: "
        "$SKIALITH_RETENTION_IDLE_TTL, else 0: off)",
    )
    parser.add_argument(
        "--retention-keep-last",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="prune each thread to its N latest checkpoints per namespace, every --sweep-interval "
        "(default: $SKIALITH_RETENTION_KEEP_LAST, else 0: keep all)",
    )
    parser.add_argument(
        "--sweep-interval",
        type=_positive_float,
        default=DEFAULT_SWEEP_INTERVAL,
        metavar="SECONDS",
        help="seconds between retention passes (only when a retention policy is on)",
    )
    parser.add_argument(
        "--stream-max-age",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="JetStream drops messages older than this, applied or not (default: "
        "$SKIALITH_STREAM_MAX_AGE, else 0: unlimited; see docs/retention.md)",
    )
    parser.add_argument(
        "--stream-max-bytes",
        type=_non_negative_int,
        default=None,
        metavar="BYTES",
        help="cap on the stream's size; when full, writes fail (default: $SKIALITH_STREAM_MAX_BYTES, "
        "else 0: unlimited)",
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where the help text does not already explain it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


_NATS_FLAGS = (
    # (setting, metavar, help); each flag is --<setting with dashes>, each variable SKIALITH_<SETTING>
    (
        "nats_url",
        "URL",
        f"NATS URL(s), comma separated (default: $SKIALITH_NATS_URL, else {DEFAULT_NATS_URL})",
    ),
    ("nats_user", "USER", "NATS user name (default: $SKIALITH_NATS_USER)"),
    (
        "nats_password",
        "PASSWORD",
        "password of --nats-user (default: $SKIALITH_NATS_PASSWORD; prefer the variable: other "
        "local users can read a command line)",
    ),
    ("nats_token", "TOKEN", "NATS token (default: $SKIALITH_NATS_TOKEN; prefer the variable)"),
    (
        "nats_nkey_seed",
        "SEED_OR_FILE",
        "NKey user seed, or better the path of a file holding it (default: $SKIALITH_NATS_NKEY_SEED)",
    ),
    ("nats_creds", "FILE", "NATS .creds file, a user JWT and its seed (default: $SKIALITH_NATS_CREDS)"),
    (
        "nats_tls_ca",
        "FILE",
        "CA certificate(s) that signed the NATS server's certificate; makes TLS required "
        "(default: $SKIALITH_NATS_TLS_CA)",
    ),
    ("nats_tls_cert", "FILE", "client certificate for mutual TLS (default: $SKIALITH_NATS_TLS_CERT)"),
    ("nats_tls_key", "FILE", "key of --nats-tls-cert (default: $SKIALITH_NATS_TLS_KEY)"),
)


def add_nats_flags(parser: argparse.ArgumentParser) -> None:
    """Add the NATS connection flags (URL, credentials, TLS files) to a command that connects.

    Each flag overrides its ``SKIALITH_*`` variable; read them back with :func:`nats_overrides`.
    """
    group = parser.add_argument_group("NATS connection (see docs/security.md)")
    for name, metavar, help_text in _NATS_FLAGS:
        group.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, metavar=metavar, help=help_text
        )


def nats_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The NATS settings given as flags (``None`` where not given), for :meth:`Settings.from_env`."""
    return {name: getattr(args, name, None) for name, _, _ in _NATS_FLAGS}


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    add_nats_flags(parser)
    parser.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy async URL of the read model "
        f"(default: $SKIALITH_DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--stream", default=None, help=f"stream name (default: $SKIALITH_STREAM, else {DEFAULT_STREAM})"
    )
    parser.add_argument(
        "--subject-prefix",
        default=None,
        help="first subject token(s), e.g. acme.prod.skialith "
        f"(default: $SKIALITH_SUBJECT_PREFIX, else {DEFAULT_SUBJECT_PREFIX})",
    )


def _metrics_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics and the health probes "
        "/healthz and /readyz beside them (0: a free port; default: off)",
    )
    parser.add_argument("--metrics-host", default=DEFAULT_HOST, help="address of the metrics endpoint")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``skialith`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity on stderr (default: INFO for up and projector, WARNING for demo)",
    )
    parser = argparse.ArgumentParser(
        prog="skialith",
        parents=[common],
        description=(
            "Skialith for LangGraph: checkpoints are written to NATS JetStream first and served "
            "from a SQL read model that the projector fills."
        ),
        epilog=(
            "Quick start: run 'skialith up' in one shell, then use SkialithCheckpointer() in Python. "
            "Environment: SKIALITH_NATS_URL, SKIALITH_NATS_TOKEN, SKIALITH_DATABASE_URL, SKIALITH_STREAM, "
            "SKIALITH_SUBJECT_PREFIX; NATS credentials and TLS: SKIALITH_NATS_USER, SKIALITH_NATS_PASSWORD, "
            "SKIALITH_NATS_NKEY_SEED, SKIALITH_NATS_CREDS, SKIALITH_NATS_TLS_CA, SKIALITH_NATS_TLS_CERT, "
            "SKIALITH_NATS_TLS_KEY (docs/security.md)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"skialith-langgraph {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", required=True)
    fmt = _HelpFormatter

    up = commands.add_parser(
        "up",
        parents=[common],
        formatter_class=fmt,
        help="start an embedded NATS server and the projector, print how to connect",
        description=(
            "Start nats-server (JetStream on, data under HOME/nats, 127.0.0.1 only, token in "
            "HOME/nats.token) and the projector in this process, print how to connect, and run until "
            "Ctrl-C, SIGTERM or SIGHUP; then the projector finishes its batch and the server stops. "
            "The server dies with this process; a second 'up' on the same HOME is refused. The "
            "defaults are what SkialithCheckpointer() connects to."
        ),
    )
    up.add_argument(
        "--nats-port",
        type=_port,
        default=DEFAULT_NATS_PORT,
        help="NATS client port on 127.0.0.1 (0: a free one)",
    )
    up.add_argument(
        "--home",
        default=f"./{DEFAULT_HOME}",
        help="data directory, private to you (JetStream store, logs, SQLite, NATS token)",
    )
    up.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy async URL of the read model, e.g. mysql+aiomysql://user:pw@host/db "
        "(default: $SKIALITH_DATABASE_URL, else SQLite at HOME/skialith.db)",
    )
    up.add_argument(
        "--sync-always",
        action="store_true",
        help="fsync every JetStream write, so acknowledged writes survive a power cut, not only a crash",
    )
    up.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=DEFAULT_PROGRESS_INTERVAL,
        help="seconds between progress log lines (only when something changed)",
    )
    up.add_argument(
        "--cluster",
        type=int,
        choices=[1, 3, 5],
        default=1,
        help="run N clustered nats-servers (client ports NATS_PORT.., routes +2000, stores in "
        "HOME/cluster) and create the stream with N replicas; prints every URL",
    )
    _add_retention_flags(up)
    _metrics_flags(up)
    up.set_defaults(run=_up, default_log_level="INFO")

    proj = commands.add_parser(
        "projector",
        parents=[common],
        formatter_class=fmt,
        help="run the projector alone (log -> SQL read model); --rebuild rebuilds the read model",
        description=(
            "Consume the stream with a durable pull consumer and apply it to the SQL read model, "
            "one transaction per batch, until SIGTERM or Ctrl-C (the batch in hand is finished). "
            "Several replicas may run at once. Progress (watermark, lag) is logged every "
            "--progress-interval seconds; --metrics-port serves Prometheus metrics."
        ),
    )
    _connection_flags(proj)
    proj.add_argument(
        "--replica",
        default="0",
        help="this replica's id; replicas running at once need distinct ids (e.g. the pod name), "
        "each has its own durable consumer and they take turns on the read model",
    )
    proj.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="messages per fetch"
    )
    _metrics_flags(proj)
    proj.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=DEFAULT_PROGRESS_INTERVAL,
        help="seconds between progress log lines",
    )
    proj.add_argument(
        "--rebuild",
        action="store_true",
        help="drop the read-model tables and the durable consumers of every replica, then project the "
        "whole stream again from sequence 1 (refused while other replicas are live)",
    )
    proj.add_argument(
        "--forget",
        metavar="REPLICA",
        default=None,
        help="delete the durable consumers (projector and trace ingest) of replica REPLICA, which is gone "
        "for good, and exit (refused while it is live)",
    )
    _add_retention_flags(proj)
    proj.set_defaults(run=_projector, default_log_level="INFO")

    status = commands.add_parser(
        "status",
        parents=[common],
        formatter_class=fmt,
        help="show the stream, each consumer (live or not, its lag), the watermarks and the database",
        description=(
            "Show the stream (name, creation time, messages, bytes, first and last sequence), each durable "
            "consumer (replica, whether a live process holds it and which, pending messages, ack floor, "
            "lag), the read model's watermarks and dead letters, and the database URL (password hidden). "
            "Exit code 1 if a part could not be read."
        ),
    )
    _connection_flags(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(run=_status, default_log_level="WARNING")

    demo = commands.add_parser(
        "demo",
        parents=[common],
        formatter_class=fmt,
        help="kill -9 an agent between two LangGraph nodes and resume it",
        description=(
            "Run a four-node LangGraph pipeline in a child process, kill it with SIGKILL after the "
            "second node's checkpoint is acknowledged, and resume the thread here: the first two "
            "nodes do not run again. If nothing answers at the NATS URL, an embedded NATS server "
            "and projector are started in a temporary directory and stopped at the end."
        ),
    )
    demo.add_argument(
        "--nats-url", default=None, help=f"NATS URL (default: $SKIALITH_NATS_URL, else {DEFAULT_NATS_URL})"
    )
    demo.add_argument(
        "--database-url",
        default=None,
        help="read model URL (default: $SKIALITH_DATABASE_URL, else the default SQLite file, or a "
        "temporary one with the embedded server)",
    )
    demo.set_defaults(run=_demo, default_log_level="WARNING")

    gc = commands.add_parser(
        "gc",
        parents=[common],
        formatter_class=fmt,
        help="one retention pass: delete idle threads, prune old checkpoints (--dry-run: only show)",
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
    gc.set_defaults(run=_gc, default_log_level="WARNING")

    inspect_cli.register(commands, parents=[common], formatter_class=fmt, connection_flags=_connection_flags)
    regions.register(commands, parents=[common], formatter_class=fmt, connection_flags=_connection_flags)
    return parser


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``; libraries' own chatter only from WARNING (aiosqlite: INFO) up."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    numeric = logging.getLevelName(level)
    logging.getLogger("nats").setLevel(max(logging.WARNING, numeric))
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, numeric))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``skialith`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    os.umask(PRIVATE_UMASK)  # data directories 0700, files 0600: checkpoints are user data
    configure_logging(getattr(args, "log_level", None) or args.default_log_level)
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.run
    try:
        code = asyncio.run(command(args))
    except (CliError, SkialithError, OSError) as exc:
        print(f"skialith {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
