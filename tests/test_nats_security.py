"""NATS security against real nats-servers configured by the tests (issue 10, item 1).

Each way to authenticate (user and password, token, NKey seed, creds file in operator mode) and
TLS (server verified by a CA, mutual TLS) works by argument, ``SKIALITH_*`` variable and CLI flag;
secrets never show in logs, errors, metrics or ``repr``; and the connection errors that waiting
does not cure (refused credentials, refused connection, TLS mismatch) are reported at once, with
their cause in the message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from nats_auth import make_pki, nats_server, nkey, operator_setup, tls_config
from test_cli import Run, cli_runner

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.cli import build_parser, nats_overrides
from skialith_langgraph.errors import ConfigError, ConnectError
from skialith_langgraph.log import Log
from skialith_langgraph.metrics import ProgressProbe, render_metrics
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.traces import TraceIngest

pytestmark = pytest.mark.nats

PASSWORD = "pw-Secret-4711"  # a test secret, grepped for in every output
TOKEN = "tok-Secret-0815-abcdefgh"
FAST = 2.5  # seconds an error that waiting does not cure may take (connect_timeout is 10 s)


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    yield from cli_runner(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _round_trip(settings: Settings, thread_id: str = "sec") -> None:
    """What a user checks: a checkpoint written through the server can be read back."""
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    async with SkialithCheckpointer(settings=settings) as saver:
        saved = await saver.aput(config, checkpoint, {"source": "input", "step": -1, "parents": {}}, {})
        found = await saver.aget_tuple(saved)
        assert found is not None and found.checkpoint["id"] == checkpoint["id"]


async def _write(settings: Settings, thread_id: str) -> None:
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    async with SkialithCheckpointer(settings=settings) as saver:
        await saver.aput(config, empty_checkpoint(), {"source": "input", "step": -1, "parents": {}}, {})


def _base(tmp_path: Path, url: str, **more: Any) -> Settings:
    return Settings(
        nats_url=url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}",
        read_wait=0.0,
        connect_timeout=10.0,
        **more,
    )


# -- each way to authenticate ---------------------------------------------------------------------


async def test_user_and_password_by_url_argument_variable_and_flag(tmp_path: Path) -> None:
    with nats_server(tmp_path, f'authorization {{ user: alice, password: "{PASSWORD}" }}') as server:
        port = server.port
        await _round_trip(_base(tmp_path, f"nats://alice:{PASSWORD}@127.0.0.1:{port}"))
        await _round_trip(_base(tmp_path, server.url, nats_user="alice", nats_password=PASSWORD))
        env = {
            "SKIALITH_NATS_URL": server.url,
            "SKIALITH_NATS_USER": "alice",
            "SKIALITH_NATS_PASSWORD": PASSWORD,
        }
        from_env = Settings.from_env(env, database_url=f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}")
        assert (from_env.nats_user, from_env.nats_password) == ("alice", PASSWORD)
        await _round_trip(from_env)
        args = build_parser().parse_args(
            ["projector", "--nats-url", server.url, "--nats-user", "alice", "--nats-password", PASSWORD]
        )
        from_flags = Settings.from_env({}, **nats_overrides(args))
        assert (from_flags.nats_url, from_flags.nats_user, from_flags.nats_password) == (
            server.url,
            "alice",
            PASSWORD,
        )


async def test_token_by_argument_and_variable(tmp_path: Path) -> None:
    with nats_server(tmp_path, f'authorization {{ token: "{TOKEN}" }}') as server:
        await _round_trip(_base(tmp_path, server.url, nats_token=TOKEN))
        from_env = Settings.from_env({"SKIALITH_NATS_URL": server.url, "SKIALITH_NATS_TOKEN": TOKEN})
        assert from_env.nats_token == TOKEN
        await _round_trip(_base(tmp_path, server.url, nats_token=from_env.nats_token))
        with pytest.raises(ConnectError, match="authorization violation"):
            await Log.open(_base(tmp_path, server.url, nats_token="not-the-token"))


async def test_nkey_seed_as_value_and_as_file(tmp_path: Path) -> None:
    user = nkey("user")
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(user.seed + "\n")
    seed_file.chmod(0o600)
    config = f"authorization {{ users: [ {{ nkey: {user.public} }} ] }}"
    with nats_server(tmp_path, config) as server:
        await _round_trip(_base(tmp_path, server.url, nats_nkey_seed=user.seed))
        await _round_trip(_base(tmp_path, server.url, nats_nkey_seed=str(seed_file)))
        from_env = Settings.from_env({"SKIALITH_NATS_NKEY_SEED": str(seed_file)})
        assert from_env.nats_nkey_seed == str(seed_file)
        args = build_parser().parse_args(["projector", "--nats-nkey-seed", str(seed_file)])
        assert Settings.from_env({}, **nats_overrides(args)).nats_nkey_seed == str(seed_file)
        stranger = nkey("user")
        with pytest.raises(ConnectError, match="authorization violation"):
            await Log.open(_base(tmp_path, server.url, nats_nkey_seed=stranger.seed))
    assert user.seed not in repr(_base(tmp_path, "nats://127.0.0.1:1", nats_nkey_seed=user.seed))


async def test_creds_file_in_operator_mode(tmp_path: Path) -> None:
    """An operator, its system account and an account with JetStream, preloaded in a memory
    resolver; the user's JWT and seed in a .creds file, as nsc writes it."""
    op = operator_setup(tmp_path / "op", {"app": {}})
    with nats_server(tmp_path, op.config) as server:
        await _round_trip(_base(tmp_path, server.url, nats_creds=str(op.creds["app"])))
        from_env = Settings.from_env({"SKIALITH_NATS_CREDS": str(op.creds["app"])})
        assert from_env.nats_creds == str(op.creds["app"])
        args = build_parser().parse_args(["projector", "--nats-creds", str(op.creds["app"])])
        assert Settings.from_env({}, **nats_overrides(args)).nats_creds == str(op.creds["app"])
        started = time.monotonic()
        with pytest.raises(ConnectError, match="authorization violation"):
            await Log.open(_base(tmp_path, server.url))  # no credentials
        assert time.monotonic() - started < FAST
    with pytest.raises(ConfigError, match="nats_creds"):
        await Log.open(_base(tmp_path, "nats://127.0.0.1:1", nats_creds=str(tmp_path / "missing.creds")))


def test_contradicting_credentials_are_refused_before_connecting() -> None:
    with pytest.raises(ConfigError, match="one way"):
        Settings(nats_url="nats://a:b@127.0.0.1:1", nats_token=TOKEN)
    with pytest.raises(ConfigError, match="nats_user"):
        Settings(nats_password=PASSWORD)
    with pytest.raises(ConfigError, match="nats_tls_key"):
        Settings(nats_tls_cert="/x.pem")


# -- TLS ------------------------------------------------------------------------------------------


async def test_tls_verified_by_ca_and_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with nats_server(tmp_path, tls_config(pki, verify=False), "tls") as server:
        tls_url = server.url.replace("nats://", "tls://")
        await _round_trip(_base(tmp_path, tls_url, nats_tls_ca=str(pki.ca)))
        env = Settings.from_env({"SKIALITH_NATS_URL": tls_url, "SKIALITH_NATS_TLS_CA": str(pki.ca)})
        assert env.nats_tls_ca == str(pki.ca) and env.nats_tls_required
        for ca, why in ((None, "not trusted"), (pki.other_ca, "not trusted")):
            started = time.monotonic()
            with pytest.raises(ConnectError, match=why) as caught:
                await Log.open(_base(tmp_path, tls_url, nats_tls_ca=None if ca is None else str(ca)))
            assert "TLS" in str(caught.value) and time.monotonic() - started < FAST
        # a plaintext URL to a server that requires TLS: upgraded, and verified as well
        with pytest.raises(ConnectError, match="TLS: the server's certificate is not trusted"):
            await Log.open(_base(tmp_path, server.url))
        await _round_trip(_base(tmp_path, server.url, nats_tls_ca=str(pki.ca)))
    with nats_server(tmp_path, tls_config(pki, verify=True), "mtls") as server:
        mutual = {
            "nats_tls_ca": str(pki.ca),
            "nats_tls_cert": str(pki.client_cert),
            "nats_tls_key": str(pki.client_key),
        }
        await _round_trip(_base(tmp_path, server.url, **mutual))
        args = build_parser().parse_args(
            ["projector", "--nats-tls-ca", str(pki.ca), "--nats-tls-cert", str(pki.client_cert)]
            + ["--nats-tls-key", str(pki.client_key)]
        )
        assert {k: v for k, v in nats_overrides(args).items() if v} == mutual
        started = time.monotonic()
        with pytest.raises(ConnectError, match="requires a client certificate"):
            await Log.open(_base(tmp_path, server.url, nats_tls_ca=str(pki.ca)))
        assert time.monotonic() - started < FAST


async def test_tls_url_to_a_plaintext_server_sends_nothing(tmp_path: Path) -> None:
    """Before, nats-py connected in the clear and sent the password; now CONNECT is never sent."""
    config = f'authorization {{ user: alice, password: "{PASSWORD}" }}'
    with nats_server(tmp_path, config) as server:
        tls_url = server.url.replace("nats://", "tls://")
        started = time.monotonic()
        with pytest.raises(ConnectError, match="does not offer TLS"):
            await Log.open(_base(tmp_path, tls_url, nats_user="mallory", nats_password=PASSWORD))
        assert time.monotonic() - started < FAST
        await asyncio.sleep(0.2)
        # the server logs every CONNECT whose credentials it refuses: none came
        assert "authentication error" not in server.log_file.read_text()


# -- errors that waiting does not cure, at once -----------------------------------------------------


async def test_refused_connection_and_wrong_password_fail_at_once(tmp_path: Path) -> None:
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(ConnectError, match="connection refused") as caught:
        await Log.open(_base(tmp_path, f"nats://alice:{PASSWORD}@127.0.0.1:{port}"))
    assert time.monotonic() - started < FAST
    assert "Errno 111" in str(caught.value) and PASSWORD not in str(caught.value)

    with nats_server(tmp_path, f'authorization {{ user: alice, password: "{PASSWORD}" }}') as server:
        started = time.monotonic()
        with pytest.raises(ConnectError, match="authorization violation") as caught:
            await Log.open(_base(tmp_path, server.url, nats_user="alice", nats_password="wrong-" + PASSWORD))
        assert time.monotonic() - started < FAST
        assert PASSWORD not in str(caught.value)


async def test_prefix_and_stream_are_checked_before_connecting(tmp_path: Path) -> None:
    """Before, a bad prefix was refused only after a NATS connection was opened (and left open)."""
    nothing = f"nats://127.0.0.1:{_free_port()}"
    for bad in ("a..b", "acme.*", "acme prod", "$JS.acme"):
        with pytest.raises(ConfigError, match="subject_prefix"):
            SkialithCheckpointer(nothing, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", subject_prefix=bad)
    with pytest.raises(ConfigError, match="stream"):
        Settings(stream="A.B")


# -- secrets never shown ----------------------------------------------------------------------------


async def test_secrets_are_masked_in_logs_errors_metrics_and_repr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    config = f'authorization {{ user: alice, password: "{PASSWORD}" }}'
    server_cm = nats_server(tmp_path, config)
    server = server_cm.__enter__()
    try:
        settings = _base(tmp_path, f"nats://alice:{PASSWORD}@127.0.0.1:{server.port}")
        shown.append(repr(settings))
        shown.append(repr(_base(tmp_path, server.url, nats_user="alice", nats_password=PASSWORD)))
        shown.append(repr(_base(tmp_path, server.url, nats_token=TOKEN)))
        projector = Projector(settings, fetch_timeout=0.2)
        traces = TraceIngest(settings, fetch_timeout=0.2)
        await projector.start()
        await traces.start()
        try:
            await _write(settings, "sec")
            log = await Log.open(settings)
            model = ReadModel.from_url(settings.database_url)
            try:
                shown.append(log.url)
                shown.append(await render_metrics([ProgressProbe(log, model, projector)]))
            finally:
                await log.close()
                await model.close()
            server.stop()  # an outage: the reconnect warnings name the server
            await asyncio.sleep(1.0)
            server.start()
            await asyncio.sleep(1.0)
            await _write(settings, "after-outage")
        finally:
            await traces.stop()
            await projector.stop()
        for bad in (
            _base(tmp_path, f"nats://alice:wrong-{PASSWORD}@127.0.0.1:{server.port}"),
            _base(tmp_path, f"tls://alice:{PASSWORD}@127.0.0.1:{server.port}"),
            _base(tmp_path, f"nats://alice:{PASSWORD}@127.0.0.1:{_free_port()}"),
        ):
            with pytest.raises(ConnectError) as caught:
                await _round_trip(bad)
            shown += [str(caught.value), repr(caught.value), str(caught.value.url)]
    finally:
        server_cm.__exit__(None, None, None)
    shown += [r.getMessage() for r in caplog.records]
    assert any("reconnected to NATS" in line or "NATS nats://***@" in line for line in shown)
    leaks = [line for line in shown if PASSWORD in line or TOKEN in line]
    assert not leaks, leaks


def test_cli_projector_with_flags_shows_no_password(tmp_path: Path, run_cli: Callable[..., Run]) -> None:
    """The projector's start line, its logs and its metrics, over mutual TLS and a password."""
    pki = make_pki(tmp_path / "pki")
    config = tls_config(pki, verify=True) + f'authorization {{ user: alice, password: "{PASSWORD}" }}\n'
    with nats_server(tmp_path, config) as server:
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
        projector = run_cli(
            "projector",
            "--nats-url",
            f"nats://alice:{PASSWORD}@127.0.0.1:{server.port}",
            "--nats-tls-ca",
            str(pki.ca),
            "--nats-tls-cert",
            str(pki.client_cert),
            "--nats-tls-key",
            str(pki.client_key),
            "--database-url",
            database_url,
            "--metrics-port",
            "0",
            "--progress-interval",
            "0.2",
        )
        metrics_url = projector.wait_for(r"metrics: (http://\S+)").group(1)
        assert "nats://***@127.0.0.1" in projector.out
        settings = Settings(
            nats_url=server.url,
            database_url=database_url,
            nats_user="alice",
            nats_password=PASSWORD,
            nats_tls_ca=str(pki.ca),
            nats_tls_cert=str(pki.client_cert),
            nats_tls_key=str(pki.client_key),
        )
        # only a write: the projector applying it (metrics below) is what this test checks
        asyncio.run(_write(settings, "cli"))
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(metrics_url, timeout=5) as response:
                metrics = response.read().decode()
            if re.search(r"^skialith_projector_applied_total\{[^}]*\} [1-9]", metrics, re.MULTILINE):
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        wrong = run_cli(
            "projector",
            "--nats-url",
            f"nats://alice:wrong-{PASSWORD}@127.0.0.1:{server.port}",
            "--nats-tls-ca",
            str(pki.ca),
            "--nats-tls-cert",
            str(pki.client_cert),
            "--nats-tls-key",
            str(pki.client_key),
            "--database-url",
            database_url,
        )
        assert wrong.wait(30) == 1
        assert "authorization violation" in wrong.err
    for text in (projector.out, projector.err, metrics, wrong.out, wrong.err):
        assert PASSWORD not in text
