"""Health endpoints and supervision, against real processes: ``/healthz`` and ``/readyz`` of
``skialith projector`` (not ready while its database is down, ready again after), ``skialith up``
restarting its nats-server after a kill -9 (bounded) and a consumer that ended, and every metric
served being documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy.engine import make_url

from skialith_langgraph import Settings, SkialithCheckpointer
from skialith_langgraph.metrics import METRICS
from skialith_langgraph.sidecar.app import METRICS as SIDECAR_METRICS
from tests.tcp_proxy import TcpProxy
from tests.test_cli import STOP_TIMEOUT, Run, _eventually, _projector_args, cli_runner
from tests.test_ownership import _foreign_lease

pytestmark = pytest.mark.nats

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    yield from cli_runner(tmp_path)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def _documented() -> set[str]:
    return set(re.findall(r"^\| `(skialith_[a-z_]+)` \|", DOCS.read_text(encoding="utf-8"), re.MULTILINE))


def _served(text: str) -> set[str]:
    return set(re.findall(r"^# HELP (\S+) ", text, re.MULTILINE))


SIDECAR = {name for name, _, _ in SIDECAR_METRICS}  # served by the sidecar (skialith serve, up --serve)


def test_every_metric_is_documented() -> None:
    assert _documented() == {name for name, _, _ in METRICS} | SIDECAR


async def test_projector_readyz_follows_the_database(
    run_cli: Callable[..., Run], nats_url: str, mysql_url: str, unique: str
) -> None:
    target = make_url(mysql_url)
    async with TcpProxy(target.host or "127.0.0.1", target.port or 3306) as proxy:
        settings = Settings(
            nats_url=nats_url,
            database_url=target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
            stream=f"SK{unique}".upper(),
            subject_prefix=f"sk{unique}",
        )
        projector = run_cli(*_projector_args(settings, "--metrics-port", "0"))
        base = await asyncio.to_thread(projector.wait_for, r"metrics: (http://127\.0\.0\.1:\d+)/metrics")
        url = base.group(1)

        async def readyz(want: int) -> dict[str, Any]:
            deadline = time.monotonic() + 20
            while True:
                code, body = await asyncio.to_thread(_get, f"{url}/readyz")
                if code == want:
                    result: dict[str, Any] = json.loads(body)
                    return result
                assert time.monotonic() < deadline, f"/readyz stayed {code}: {body}\n{projector.describe()}"
                await asyncio.sleep(0.2)

        code, body = await asyncio.to_thread(_get, f"{url}/healthz")
        assert code == 200 and json.loads(body)["status"] == "alive"
        ready = await readyz(200)
        assert ready["status"] == "ready" and set(ready["checks"].values()) == {"ok"}

        proxy.cut("reset")
        down = await readyz(503)
        assert down["status"] == "not ready"
        assert down["checks"]["database"].startswith("the database is unreachable (")
        assert (await asyncio.to_thread(_get, f"{url}/healthz"))[0] == 200  # alive all the same
        proxy.restore()
        assert (await readyz(200))["checks"]["database"] == "ok"
        _, metrics = await asyncio.to_thread(_get, f"{url}/metrics")
        assert _served(metrics) <= _documented()
        assert 'skialith_projector_subscribed{stream="' in metrics
        projector.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(projector.wait, STOP_TIMEOUT) == 0, projector.describe()


def _write(nats_url: str, token: str, database_url: str, thread: str) -> None:
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    with SkialithCheckpointer(nats_url=nats_url, database_url=database_url, nats_token=token) as saver:
        saver.put(config, empty_checkpoint(), {"source": "input", "step": -1, "parents": {}}, {})


def _metric(text: str, name: str, label: str) -> int:
    match = re.search(rf"^{name}\{{[^}}]*{re.escape(label)}[^}}]*\}} (\d+)$", text, re.MULTILINE)
    assert match is not None, f"{name} {label} missing from:\n{text}"
    return int(match.group(1))


def test_up_restarts_its_nats_server_until_the_bound(run_cli: Callable[..., Run], tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = run_cli(
        "up", "--nats-port", "0", "--home", str(home), "--metrics-port", "0", "--progress-interval", "0.2"
    )
    match = up.wait_for(r"NATS\s+(nats://127\.0\.0\.1:\d+)\s+\(nats-server pid (\d+)\)")
    nats_url, pid = match.group(1), int(match.group(2))
    url = up.wait_for(r"metrics: (http://127\.0\.0\.1:\d+)/metrics").group(1)
    token = (home / "nats.token").read_text().strip()
    database_url = f"sqlite+aiosqlite:///{home / 'skialith.db'}"
    _eventually(lambda: _get(f"{url}/readyz")[0] == 200, what="up ready")
    code, metrics = _get(f"{url}/metrics")
    # up (without --serve) serves every metric there is but the sidecar's
    assert code == 200 and _served(metrics) == _documented() - SIDECAR

    for restart in (1, 2, 3):
        os.kill(pid, signal.SIGKILL)
        found = _eventually(
            lambda n=restart: re.findall(r"restarted nats-server: pid (\d+)", up.err)[n - 1 :],
            what=f"nats-server restart {restart}",
        )
        assert f"nats-server pid {pid} died (killed by signal 9;" in up.err
        pid = int(found[0])
        if restart == 1:
            # clients reconnect; the projector and the trace ingest go on
            _write(nats_url, token, database_url, "after-restart")
            _eventually(
                lambda: "lag=0" in up.err.rsplit("restarted nats-server", 1)[1], what="projected again"
            )
            ready = _eventually(lambda: _get(f"{url}/readyz")[0] == 200, what="ready again")
            assert ready
            _, metrics = _get(f"{url}/metrics")
            assert _metric(metrics, "skialith_up_restarts_total", 'component="nats-server"') == 1
    os.kill(pid, signal.SIGKILL)  # a fourth time within a minute: up gives up, naming it
    assert up.wait(STOP_TIMEOUT + 10) == 1, up.describe()
    assert re.search(
        r"error: nats-server pid \d+ died \(killed by signal 9; .*\); it was restarted 3 times", up.err
    )


def test_up_restarts_a_consumer_that_ended(run_cli: Callable[..., Run], tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = run_cli(
        "up", "--nats-port", "0", "--home", str(home), "--metrics-port", "0", "--progress-interval", "0.2"
    )
    nats_url = up.wait_for(r"NATS\s+(nats://127\.0\.0\.1:\d+)\s+").group(1)
    url = up.wait_for(r"metrics: (http://127\.0\.0\.1:\d+)/metrics").group(1)
    token = (home / "nats.token").read_text().strip()
    settings = Settings(nats_url=nats_url, nats_token=token)
    # another process takes the projector's lease (as after a stall of ours): the projector ends...
    asyncio.run(_foreign_lease(settings, "skialith-projector-main-0", ttl=6))  # past a renewal
    _eventually(lambda: "LeaseLostError" in up.err, timeout=20, what="the projector ending")
    # ...and is restarted once that lease is gone
    _eventually(
        lambda: "restarted the projector skialith-projector-main-0" in up.err, timeout=20, what="restart"
    )
    assert up.proc.poll() is None
    database_url = f"sqlite+aiosqlite:///{home / 'skialith.db'}"
    _write(nats_url, token, database_url, "after")
    _eventually(lambda: _get(f"{url}/readyz")[0] == 200, what="ready again")
    _, metrics = _get(f"{url}/metrics")
    assert _metric(metrics, "skialith_up_restarts_total", 'component="projector"') >= 1

    async def hold() -> None:  # now it keeps being held elsewhere: up gives up, naming the projector
        deadline = time.monotonic() + 40
        while up.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # up (and its nats-server) may be gone meanwhile
                await asyncio.wait_for(_foreign_lease(settings, "skialith-projector-main-0", ttl=30), 5)
            await asyncio.sleep(0.5)

    asyncio.run(hold())
    assert up.wait(STOP_TIMEOUT) == 1, up.describe()
    assert (
        "error: the projector skialith-projector-main-0 could not be started again (LeaseHeldError" in up.err
    )
    assert "is already running on host elsewhere pid 4242" in up.err
    assert "it was restarted 3 times within 60 s already, giving up" in up.err
