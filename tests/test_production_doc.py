"""docs/production.md runs: its commands parse, its NATS configurations start and serve Skialith
(one server with fsync on every write, a three-node cluster with an R3 stream), its Kubernetes
probes point at the health endpoints, and its backup and restore commands bring a stream back
from which `skialith projector --rebuild` refills the read model."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy import select

from skialith_langgraph import Settings, SkialithCheckpointer
from skialith_langgraph.cli import build_parser
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import checkpoints
from skialith_langgraph.server import NatsServer, nats_server_binary

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "production.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", DOC, flags=re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start(servers: list[subprocess.Popen[bytes]], conf: Path) -> None:
    with open(conf.with_suffix(".log"), "wb") as log:  # the server keeps its own descriptor
        servers.append(
            subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        )


async def round_trip(settings: Settings) -> None:
    """A put and a get through the server(s), retried while a cluster elects its leaders."""
    deadline = time.monotonic() + 60
    while True:
        try:
            async with SkialithCheckpointer(settings=settings) as saver:
                stored = await saver.aput(config("t"), empty_checkpoint(), {"step": 0}, {})
                found = await saver.aget_tuple(stored)
                assert found is not None and found.config == stored
                return
        except AssertionError:
            raise
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def test_every_skialith_command_of_the_doc_parses() -> None:
    parser = build_parser()
    lines = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("skialith ")]
    unit = blocks("ini")[0]
    exec_start = re.search(r"^ExecStart=\S*/skialith (.+)$", unit, flags=re.M)
    assert exec_start is not None
    lines.append("skialith " + exec_start.group(1).replace("%H", "host-1"))
    manifest = yaml.safe_load(blocks("yaml")[0])
    args = manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    lines.append("skialith " + shlex.join(a.replace("$(POD_NAME)", "pod-1") for a in args))
    assert len(lines) >= 5
    for line in lines:
        parser.parse_args(shlex.split(line)[1:])  # an unknown flag or command exits


def test_the_kubernetes_probes_use_the_health_endpoints_on_the_metrics_port() -> None:
    manifest = yaml.safe_load(blocks("yaml")[0])
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    port = int(args[args.index("--metrics-port") + 1])
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"  # a probe comes from outside the pod


async def test_the_single_server_configuration_serves_skialith(
    servers: list[subprocess.Popen[bytes]], tmp_path: Path, unique: str
) -> None:
    text = blocks("conf")[0]
    assert "sync_interval: always" in text
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        text.replace("port: 4222", f"port: {port}").replace("/var/lib/nats", str(tmp_path / "store"))
    )
    start(servers, conf)
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", blocks("bash")[0], flags=re.M))
    token = exports["SKIALITH_NATS_TOKEN"]
    assert f'token: "{token}"' in text
    settings = Settings(
        nats_url=f"nats://127.0.0.1:{port}",
        nats_token=token,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}",
        stream=f"SK{unique}".upper(),
        subject_prefix=f"sk{unique}",
        read_wait=0.0,
    )
    await round_trip(settings)
    with pytest.raises(Exception, match="(?i)authorization violation"):
        async with SkialithCheckpointer(
            settings=settings.replace(nats_token="wrong-token-0123456789")
        ) as saver:
            await saver.asetup()


@pytest.mark.slow
async def test_the_three_node_cluster_configuration_serves_an_r3_stream(
    servers: list[subprocess.Popen[bytes]], tmp_path: Path, unique: str
) -> None:
    text = blocks("conf")[1]
    clients = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    documented_routes = ["6222", "6223", "6224"]
    for i, name in enumerate("abc"):
        node = (
            text.replace("server_name: a", f"server_name: {name}")
            .replace("port: 4222", f"port: {clients[i]}")
            .replace("/var/lib/nats-a", str(tmp_path / f"nats-{name}"))
            .replace("  port: 6222", f"  port: {routes[i]}")
        )
        for documented, real in zip(documented_routes, routes, strict=True):
            node = node.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{real}")
        conf = tmp_path / f"nats-{name}.conf"
        conf.write_text(node)
        start(servers, conf)
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", blocks("bash")[1], flags=re.M))
    assert exports["SKIALITH_REPLICAS"] == "3" and exports["SKIALITH_NATS_URL"].count("nats://") == 3
    settings = Settings(
        nats_url=",".join(f"nats://127.0.0.1:{p}" for p in clients),
        replicas=int(exports["SKIALITH_REPLICAS"]),
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}",
        stream=f"SK{unique}".upper(),
        subject_prefix=f"sk{unique}",
        read_wait=0.0,
    )
    await round_trip(settings)
    import nats

    nc = await nats.connect(servers=settings.nats_url.split(","))
    try:
        info = await nc.jetstream().stream_info(settings.stream)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2  # a leader and two more
    finally:
        await nc.close()


@pytest.mark.slow
async def test_backup_and_restore_bring_the_stream_back_and_rebuild_refills_the_read_model(
    tmp_path: Path, unique: str
) -> None:
    backup, restore = [b for b in blocks("bash") if "tar " in b]
    old_store, new_store, backups = tmp_path / "old", tmp_path / "new", tmp_path / "backup"
    backups.mkdir()
    server = NatsServer(store_dir=old_store, port=-1)
    server.start()
    settings = Settings(
        nats_url=server.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'old.db'}",
        stream=f"SK{unique}".upper(),
        subject_prefix=f"sk{unique}",
    )
    async with SkialithCheckpointer(settings=settings) as saver:
        for i in range(5):
            await saver.aput(config(f"t{i}"), empty_checkpoint(), {"step": 0}, {})
    server.stop()  # a cold backup: the server is stopped
    subprocess.run(
        ["bash", "-c", backup.replace("/var/lib/nats", str(old_store)).replace("/backup", str(backups))],
        check=True,
    )
    new_store.mkdir()
    tar_line, rebuild_line = restore.splitlines()
    subprocess.run(
        ["bash", "-c", tar_line.replace("/var/lib/nats", str(new_store)).replace("/backup", str(backups))],
        check=True,
    )
    restored = NatsServer(store_dir=new_store, port=-1)
    restored.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")}
        env.update(
            SKIALITH_NATS_URL=restored.url,
            SKIALITH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'new.db'}",
            SKIALITH_STREAM=settings.stream,
            SKIALITH_SUBJECT_PREFIX=settings.subject_prefix,
        )
        out = tmp_path / "rebuild.out"
        with open(out, "wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "skialith_langgraph.cli", *shlex.split(rebuild_line)[1:]],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + 60
            while "rebuild: done" not in out.read_text():
                assert process.poll() is None and time.monotonic() < deadline, out.read_text()
                await asyncio.sleep(0.1)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, out.read_text()
        model = ReadModel.from_url(env["SKIALITH_DATABASE_URL"])
        try:
            async with model.connect() as conn:
                threads = {r[0] for r in await conn.execute(select(checkpoints.c.thread_id))}
        finally:
            await model.close()
        assert threads == {f"t{i}" for i in range(5)}
    finally:
        restored.stop()
