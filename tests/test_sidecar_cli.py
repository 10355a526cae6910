"""The sidecar's processes: the devserver the TypeScript tests spawn (ready line, no orphans),
``skialith up --serve``, and ``skialith serve`` refusing a public address without a token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        state = (
            Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
        )
        if state == "Z":
            return True  # dead, not yet reaped by its (dead) parent's reaper
        time.sleep(0.05)
    return False


def _devserver(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "skialith_langgraph.sidecar.devserver", *args],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, json.loads(line)


@pytest.mark.parametrize("how", ["stdin EOF", "SIGTERM", "SIGKILL"])
def test_devserver_ready_line_and_no_orphans(how: str) -> None:
    proc, ready = _devserver()
    try:
        assert set(ready) >= {"url", "natsUrl", "databaseUrl"}
        assert ready["url"].startswith("http://127.0.0.1:") and ready["natsUrl"].startswith(
            "nats://127.0.0.1:"
        )
        r = httpx.post(f"{ready['url']}/v1/agents/ts/checkpoints", json={"step": 0, "data": {"a": 1}})
        assert r.status_code == 201
        assert httpx.get(f"{ready['url']}/v1/agents/ts/state").json()["data"] == {"a": 1}
        nats_pids = _children(proc.pid)
        assert nats_pids, "the devserver runs its nats-server as a child"
        home = Path(ready["databaseUrl"].removeprefix("sqlite+aiosqlite:///")).parent
        assert home.is_dir()
        assert proc.stdin is not None
        if how == "stdin EOF":
            proc.stdin.close()
        elif how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            proc.kill()
        code = proc.wait(timeout=30)
        assert code == (-9 if how == "SIGKILL" else 0)
        assert all(_gone(pid) for pid in nats_pids), "nats-server outlived the devserver"
        if how != "SIGKILL":
            assert not home.exists(), "the temporary directory was left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_up_serve_runs_the_sidecar(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "skialith_langgraph.cli", "up", "--home", str(tmp_path / "home"),
            "--nats-port", "0", "--serve", "--serve-port", "0",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "up exited"
            if line.startswith("sidecar: "):
                url = line.split()[1]
        assert url is not None
        r = httpx.post(f"{url}/v1/agents/up/checkpoints", json={"step": 4, "data": [1, 2]}, timeout=10)
        assert r.status_code == 201, r.text
        assert httpx.get(f"{url}/v1/agents/up/state", timeout=10).json()["stepIndex"] == 5
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Skialith stopped." in out


def test_serve_refuses_a_public_address_without_a_token() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "skialith_langgraph.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=_env(SKIALITH_NATS_URL="nats://127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "refusing to serve on '0.0.0.0' without a token" in done.stderr
    assert "SKIALITH_API_TOKEN" in done.stderr
