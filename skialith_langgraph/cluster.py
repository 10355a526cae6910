"""A local JetStream cluster: N ``nats-server`` processes on loopback, routed to each other.

For ``skialith up --cluster 3`` (people trying a replicated stream on one machine) and for the
tests (tests/cluster.py). Each node is a :class:`~skialith_langgraph.server.NatsServer`, so it keeps
that class's guarantees: its own store directory under a ``flock`` (a second ``up`` on the same
home is refused), it dies with the process that started it (no orphan after a ``kill -9``), the
client token never on a command line. The nodes name each other as routes, authenticate their
routes with the same secret as the clients, and share a cluster name; JetStream elects a metadata
leader among them and places a stream's replicas on distinct nodes.

A region is one such cluster (or one node) with a JetStream ``domain``; a second region reaches the
first over a leaf node connection to mirror its stream (see docs/production.md, Two regions).

Example:
    cluster = LocalCluster(Path("./.skialith/cluster"), nodes=3, port=4322)
    cluster.start()
    try:
        settings = Settings(nats_url=cluster.url, replicas=3, nats_token=cluster.token)
    finally:
        cluster.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ConnectError, SkialithError
from .server import RANDOM_PORT, NatsServer

__all__ = ["CLUSTER_NAME", "LocalCluster", "Node", "free_port", "use_cluster", "why_no_ack"]

logger = logging.getLogger(__name__)

CLUSTER_NAME = "skialith"
ROUTE_PORT_OFFSET = 2000  # node i routes on its client port + 2000 (4322 -> 6322), as docs/production.md
LEAF_PORT_OFFSET = 3000  # and takes leaf node connections on client port + 3000, when asked
MONITOR_PORT_OFFSET = 4000  # and serves /healthz (readiness of JetStream, its streams) on + 4000
ROUTE_USER = "skialith-route"
LEAF_USER = "skialith-leaf"
DEFAULT_READY_TIMEOUT = 20.0  # seconds for the nodes to elect a JetStream metadata leader


_PICKED: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now, below Linux's ephemeral range.

    Not one the kernel would hand out: a route connecting from node 1 to node 2 takes a local
    port from the ephemeral range (32768-60999), which could be the port picked for node 3.
    """
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in _PICKED:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PICKED.add(port)
        return port
    raise ConfigError("no free TCP port on 127.0.0.1 between 20000 and 32000")


@dataclass
class Node:
    """One node of a :class:`LocalCluster`: its name, ports and server."""

    name: str
    port: int
    route_port: int
    leaf_port: int | None
    server: NatsServer

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class LocalCluster:
    """``nodes`` nats-servers with JetStream on 127.0.0.1, clustered when ``nodes`` > 1.

    Args:
        home: directory of the node stores (``<home>/<name>``) and logs (``<home>/<name>.log``).
        nodes: how many servers (1, 3 or 5: a stream's replicas need a majority).
        port: client port of the first node, the next nodes take the following ones; routes on
            port + 2000. ``-1``: free ports.
        token: clients must present it; also the route password. ``None``: no client auth.
        domain: the JetStream domain of this region (needed to mirror across regions).
        sync_always: fsync every write before the PubAck (``sync_interval: always``).
        leaf_listen: accept leaf node connections (from another region) on port + 3000.
        leaf_remotes: leaf node URLs of another region to connect to (to mirror its stream).
        leaf_deny: subjects the leaf node connection does not carry either way (the deployment's
            subject prefix and its lease buckets: each region keeps its own).
        name_prefix: node names are ``<prefix>1..<prefix>N``.
    """

    def __init__(
        self,
        home: Path,
        *,
        nodes: int = 3,
        port: int = RANDOM_PORT,
        token: str | None = None,
        domain: str | None = None,
        sync_always: bool = False,
        leaf_listen: bool = False,
        leaf_remotes: list[str] | None = None,
        leaf_deny: list[str] | None = None,
        name_prefix: str = "n",
    ) -> None:
        if nodes not in (1, 3, 5):
            raise ConfigError(f"a cluster has 1, 3 or 5 nodes (a majority must survive), got {nodes!r}")
        if port != RANDOM_PORT and not 1 <= port <= 65535 - LEAF_PORT_OFFSET - nodes:
            raise ConfigError(f"port must leave room for the route ports (port + {ROUTE_PORT_OFFSET})")
        self.home = Path(home)
        self.token = token
        self.domain = domain
        self.sync_always = sync_always
        self.leaf_remotes = list(leaf_remotes or [])
        self.leaf_deny = list(leaf_deny or [])
        self._ports: list[tuple[str, int, int, int | None]] = []
        self._monitor: dict[str, int] = {}
        for i in range(nodes):
            if port == RANDOM_PORT:
                client, route = free_port(), free_port()
                leaf = free_port() if leaf_listen else None
            else:
                client, route = port + i, port + i + ROUTE_PORT_OFFSET
                leaf = port + i + LEAF_PORT_OFFSET if leaf_listen else None
            self._ports.append((f"{name_prefix}{i + 1}", client, route, leaf))
            self._monitor[f"{name_prefix}{i + 1}"] = (
                free_port() if port == RANDOM_PORT else port + i + MONITOR_PORT_OFFSET
            )
        self.nodes: list[Node] = [
            Node(
                name,
                client,
                route,
                leaf,
                NatsServer(
                    store_dir=self.home / name,
                    port=client,
                    log_file=self.home / f"{name}.log",
                    token=token,
                    config=self._config(name, route, leaf),
                ),
            )
            for name, client, route, leaf in self._ports
        ]

    def __repr__(self) -> str:
        return f"LocalCluster({len(self.nodes)} nodes, {self.url!r}, home={str(self.home)!r})"

    # -- what EmbeddedStack (skialith up) uses of a NatsServer ------------------------------------

    @property
    def url(self) -> str:
        """Every node's client URL, comma separated (what ``SKIALITH_NATS_URL`` takes)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def store_dir(self) -> Path:
        return self.home

    @property
    def log_file(self) -> Path:
        return self.home / "*.log"

    @property
    def pid(self) -> int | None:
        """The first node's pid while every node runs, else ``None``."""
        return self.nodes[0].server.pid if self.running else None

    @property
    def pids(self) -> dict[str, int | None]:
        return {node.name: node.server.pid for node in self.nodes}

    @property
    def running(self) -> bool:
        """Whether every node runs."""
        return all(node.server.running for node in self.nodes)

    def store_holder(self) -> str | None:
        for node in self.nodes:
            holder = node.server.store_holder()
            if holder is not None:
                return holder
        return None

    def lock_store(self) -> None:
        for node in self.nodes:
            node.server.lock_store()

    def start(self, timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        """Start every node, then wait until JetStream has a metadata leader (a stream can be made).

        Call it from the main thread: each node dies with the thread that starts it.

        Raises:
            ConnectError: a node did not start (its port taken: "address already in use"), or no
                metadata leader within ``timeout``; the nodes started are stopped again.
        """
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            for node in self.nodes:
                if not node.server.running:
                    node.server.start()
            self.wait_meta_leader(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("cluster of %d nodes is up: %s", len(self.nodes), self.url)

    def restart(self, timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        """Start again the nodes that died (the others keep running)."""
        for node in self.nodes:
            if not node.server.running:
                node.server.start()
        self.wait_meta_leader(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a bound). Idempotent."""
        for node in self.nodes:
            if timeout is None:
                node.server.stop()
            else:
                node.server.stop(timeout)

    # -- faults and look-ups (tests, drills) ---------------------------------------------------------

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise SkialithError(f"no node {name!r} in {[n.name for n in self.nodes]}")

    def kill(self, name: str) -> int:
        """SIGKILL node ``name`` (a crash, with no goodbye to its peers); returns the pid killed."""
        server = self.node(name).server
        pid = server.pid
        if pid is None:
            raise SkialithError(f"node {name!r} is not running")
        server.kill()
        logger.warning("killed node %s (pid %d)", name, pid)
        return pid

    def start_node(self, name: str, timeout: float = 10.0) -> None:
        """Start node ``name`` again on its ports and store."""
        self.node(name).server.start(timeout)

    def wait_meta_leader(self, timeout: float = DEFAULT_READY_TIMEOUT, offsets: Any = None) -> None:
        """Wait until every running node's ``/healthz`` answers 200: JetStream has a metadata leader
        and the node's streams and consumers are current (after a restart, their leaders elected)."""
        deadline = time.monotonic() + timeout
        while True:
            sick = []
            for node in self.nodes:
                if not node.server.running:
                    continue
                url = f"http://127.0.0.1:{self._monitor[node.name]}/healthz"
                try:
                    with urllib.request.urlopen(url, timeout=2) as reply:
                        if reply.status != 200:
                            sick.append(f"{node.name}: {reply.status}")
                except (OSError, ValueError) as exc:
                    sick.append(f"{node.name}: {exc}")
            if not sick:
                break
            if time.monotonic() > deadline:
                raise ConnectError(
                    f"the nodes at {self.url!r} are not healthy after {timeout} s ({'; '.join(sick)}); "
                    f"see their logs in {str(self.home)!r}"
                )
            time.sleep(0.1)
        if len(self.nodes) > 1 and self.running:
            left = max(1.0, deadline - time.monotonic())
            # in a thread: our caller may run an event loop (skialith up)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, self._streams_led(left)).result()

    async def _streams_led(self, timeout: float) -> None:
        """Wait until every stream of the cluster answers a stream info with a leader (after a
        restart the streams elect theirs after the metadata leader; a client must not time out)."""
        import nats
        import nats.errors
        import nats.js.errors

        deadline = time.monotonic() + timeout
        nc = await nats.connect(servers=self.urls, token=self.token, connect_timeout=2)
        try:
            js = nc.jetstream(timeout=1.0)
            while True:
                try:
                    names = await js.streams_info()
                    if all(i.cluster is None or i.cluster.leader for i in names):
                        for info in names:
                            await js.stream_info(str(info.config.name))
                        return
                except (nats.errors.TimeoutError, nats.js.errors.APIError):
                    pass
                if time.monotonic() > deadline:
                    raise ConnectError(f"the streams at {self.url!r} have no leader after {timeout:.0f} s")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    # -- configuration ------------------------------------------------------------------------------

    def _config(self, name: str, route_port: int, leaf_port: int | None) -> str:
        lines = [f"server_name: {name}", f"http: 127.0.0.1:{self._monitor[name]}"]
        js = []
        if self.domain:
            js.append(f"  domain: {self.domain}")
        if self.sync_always:
            js.append("  sync_interval: always")
        if js:
            lines += ["jetstream {", *js, "}"]
        if len(self._ports) > 1:
            secret = self.token or ""
            auth = f"{ROUTE_USER}:{secret}@" if secret else ""
            lines += [
                "cluster {",
                f"  name: {CLUSTER_NAME}",
                f"  listen: 127.0.0.1:{route_port}",
            ]
            if secret:
                lines += [
                    "  authorization {",
                    f'    user: "{ROUTE_USER}"',
                    f'    password: "{secret}"',
                    "  }",
                ]
            lines.append("  routes: [")
            lines += [f'    "nats-route://{auth}127.0.0.1:{peer[2]}"' for peer in self._ports]
            lines += ["  ]", "}"]
        if leaf_port is not None or self.leaf_remotes:
            lines.append("leafnodes {")
            if leaf_port is not None:
                lines.append(f"  listen: 127.0.0.1:{leaf_port}")
                if self.token:
                    lines += [
                        "  authorization {",
                        f'    user: "{LEAF_USER}"',
                        f'    password: "{self.token}"',
                        "  }",
                    ]
            if self.leaf_remotes:
                lines.append("  remotes: [")
                lines.append("    {")
                lines.append("      urls: [" + ", ".join(f'"{u}"' for u in self.leaf_remotes) + "]")
                if self.leaf_deny:
                    deny = ", ".join(f'"{s}"' for s in self.leaf_deny)
                    lines.append(f"      deny_imports: [{deny}]")
                    lines.append(f"      deny_exports: [{deny}]")
                lines.append("    }")
                lines.append("  ]")
            lines.append("}")
        return "\n".join(lines) + "\n"

    def node_config(self, name: str) -> str:
        """The nats-server configuration of node ``name`` beyond its client port, store and token
        (given on its command line): what docs/production.md shows, byte for byte."""
        for node_name, _client, route, leaf in self._ports:
            if node_name == name:
                return self._config(node_name, route, leaf)
        raise SkialithError(f"no node {name!r} in {[n[0] for n in self._ports]}")

    @property
    def leaf_urls(self) -> list[str]:
        """Where another region's leaf node connects (``leaf_listen=True``)."""
        auth = f"{LEAF_USER}:{self.token}@" if self.token else ""
        return [f"nats-leaf://{auth}127.0.0.1:{n.leaf_port}" for n in self.nodes if n.leaf_port is not None]


def use_cluster(stack: Any, nodes: int) -> None:
    """Make ``skialith up``'s embedded stack run ``nodes`` clustered servers and an R``nodes`` stream.

    The nodes live under ``<home>/cluster``, listen on the client port and the next ones (routes
    on + 2000), share the stack's token, and are supervised and stopped like the single server.
    """
    port = stack.port
    stack.server = LocalCluster(stack.home / "cluster", nodes=nodes, port=port, token=stack.token)
    stack.overrides["replicas"] = nodes


STREAM_NOT_FOUND = 10059  # JetStream's err_code
QUORUM_HINT = (
    "without a quorum a replicated stream answers neither writes nor reads: a majority of its "
    "replicas (2 of 3) must be up and have a leader; start the nodes that are down (see "
    "docs/production.md, Topologies)"
)


async def why_no_ack(nc: Any, stream: str, timeout: float = 1.0) -> str | None:
    """Why a clustered JetStream did not acknowledge a publish, asked of the cluster itself.

    One stream-info request (at most ``timeout`` seconds). ``None`` when the client is not on a
    cluster, or the stream has a leader and every replica is current (the timeout had another
    cause: a slow server, a dropped permission).
    """
    info = getattr(nc, "_server_info", None) or {}
    if not info.get("cluster"):
        return None
    import nats.errors  # here: this module is also imported where nats is not needed

    try:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
    except nats.errors.TimeoutError:
        return (
            "the JetStream cluster did not answer a stream info request either: it has lost its "
            f"quorum (a majority of its nodes is down) or is electing a leader; {QUORUM_HINT}"
        )
    except nats.errors.NoRespondersError:
        return f"no node answers JetStream requests: the cluster has lost its quorum; {QUORUM_HINT}"
    except Exception as exc:  # the connection went away meanwhile
        return f"the cluster could not be asked why ({type(exc).__name__}: {exc})"
    try:
        data = json.loads(reply.data)
    except ValueError:
        return None
    error = data.get("error")
    if error and error.get("err_code") == STREAM_NOT_FOUND:
        return None  # what it says: the stream is missing
    if error:
        return (
            f"JetStream answered {error.get('code')} {error.get('description')!r} "
            f"(err_code {error.get('err_code')}); {QUORUM_HINT}"
        )
    cluster = data.get("cluster") or {}
    replicas = cluster.get("replicas") or []
    down = sorted(r.get("name", "?") for r in replicas if r.get("offline") or not r.get("current", True))
    if not cluster.get("leader"):
        return f"stream {stream!r} has no leader (quorum lost, or an election is under way); {QUORUM_HINT}"
    if down:
        return (
            f"stream {stream!r} has leader {cluster['leader']!r}; replicas not current: {', '.join(down)} "
            "(the write may have been acknowledged meanwhile)"
        )
    return None


JS_UNAVAILABLE = 10008  # "JetStream system temporarily unavailable": no (meta) leader
NO_MESSAGE_FOUND = 10037  # JetStream's err_code of a message get that finds nothing


def clustered(nc: Any) -> bool:
    """Whether ``nc`` is connected to a clustered server (a stream there may have replicas that
    lag its leader)."""
    info = getattr(nc, "_server_info", None) or {}
    return bool(info.get("cluster"))


async def leader_seq(nc: Any, stream: str, request: dict[str, Any], timeout: float) -> int:
    """The sequence a message get finds, asked of the stream's leader (``STREAM.MSG.GET``); 0 if none.

    A direct get (``allow_direct``) is answered by any replica, and a follower may not have the
    last messages yet: 13 of 300 reads right after a PubAck on a local R3 stream found an older
    checkpoint that way. The classic message get is answered by the leader only, which has every
    acknowledged message.

    Raises:
        LogError: no answer within ``timeout``, or JetStream refused.
    """
    import nats.errors

    from .errors import LogError

    subject = f"$JS.API.STREAM.MSG.GET.{stream}"
    try:
        reply = await nc.request(subject, json.dumps(request).encode(), timeout=timeout)
    except nats.errors.TimeoutError as exc:
        why = await why_no_ack(nc, stream, min(1.0, timeout))
        raise LogError(
            f"the leader of stream {stream!r} did not answer a read within {timeout} s"
            + (f"; {why}" if why else "")
        ) from exc
    data = json.loads(reply.data)
    error = data.get("error")
    if error:
        if error.get("err_code") == NO_MESSAGE_FOUND:
            return 0
        raise LogError(
            f"a read of stream {stream!r} failed: {error.get('description')} ({error.get('err_code')})"
            + (f"; {QUORUM_HINT}" if error.get("err_code") == JS_UNAVAILABLE else "")
        )
    return int(data["message"]["seq"])
