"""Who runs which replica: a lease per durable consumer in a JetStream key-value bucket.

Each projector or trace-ingest replica owns a durable consumer (``skialith-projector-<name>-<replica>``,
``skialith-traces-<name>-<replica>``) and deletes and re-creates it at every start. Two processes
started with the same replica id used to delete each other's consumer in turn, each looping on
``409 Consumer Deleted``; a lease makes the second one refuse to start, naming the first.

Why a KV lease, not a row in the read model: it needs no database, so it works (and is renewed)
while the database is down, and it lives beside the consumers it guards, in the same NATS account.

* The bucket is ``<stream>_leases`` (its stream is ``KV_<stream>_leases``, subjects
  ``$KV.<stream>_leases.>``: a NATS permission set for a deployment must allow them), created on
  first use with per-message TTLs (nats-server >= 2.11).
* The key is the durable consumer's name; the value says who holds it (JSON: host, pid, since,
  role, replica, owner). It is created with "expected last subject sequence = 0" (or the revision
  of a delete marker), so exactly one process wins; it is written with a TTL (``ttl``, default
  :data:`DEFAULT_LEASE_TTL` seconds) and renewed every ``ttl / 3`` seconds with "expected last
  sequence = my revision", so nobody else's lease is ever overwritten.
* A crashed owner's lease disappears after ``ttl`` seconds. A lease naming this host and a process
  that no longer exists (a kill -9, a container restarted with the same host name) is taken over
  at once, by compare-and-swap on its revision.
* A renewal that finds the lease held by another process (ours expired while this one was stalled
  longer than ``ttl``, and another took it) ends the owner with :class:`LeaseLostError`; a
  renewal that finds it gone takes it again. Stopping deletes it (only if it is still ours).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from sqlalchemy import func, select

from .cluster import clustered
from .config import Settings
from .errors import LogError, SkialithError
from .log import Log
from .readmodel import ReadModel, safe_url
from .readmodel.tables import dead_letters, projection, stream_identity

__all__ = [
    "DEFAULT_LEASE_TTL",
    "Holder",
    "Lease",
    "LeaseHeldError",
    "LeaseLostError",
    "collect_status",
    "consumer_names",
    "forget",
    "lease_bucket",
    "live_leases",
]

logger = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 12.0  # seconds a lease outlives its last renewal (renewed every third of it)
MIN_LEASE_TTL = 1.0  # seconds; JetStream's per-message TTL has a one-second resolution
_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_KV_OPERATION = "KV-Operation"
_WRONG_LAST_SEQ = (10071, 10164)  # JetStream error codes of a failed "expected last sequence"
_HOST = socket.gethostname()
_LIVE: set[str] = set()  # owner tokens of the leases this process holds now


class LeaseHeldError(SkialithError):
    """Another live process holds the lease of this replica: it is already running."""

    def __init__(self, message: str, *, key: str | None = None, holder: Holder | None = None) -> None:
        super().__init__(message)
        self.key, self.holder = key, holder


class LeaseLostError(SkialithError):
    """Another process took this replica's lease while this one held it (ours had expired)."""

    def __init__(self, message: str, *, key: str | None = None, holder: Holder | None = None) -> None:
        super().__init__(message)
        self.key, self.holder = key, holder


def lease_bucket(stream: str) -> str:
    """The KV bucket of a stream's leases (its JetStream stream is ``KV_<bucket>``)."""
    return f"{stream}_leases"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: what a refused process prints, and ``skialith status`` shows."""

    key: str
    host: str
    pid: int
    since: float  # epoch seconds when it took the lease
    role: str
    replica: str
    owner: str  # a random token per lease taken
    revision: int = 0

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"host {self.host} pid {self.pid} (since {since})"

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "role": self.role,
            "replica": self.replica,
        }

    def stale(self) -> bool:
        """Whether this lease names a process of this host that is gone (or is this very process
        under a token it no longer holds: a restarted container that reuses the pid)."""
        if self.host != _HOST or self.owner in _LIVE:
            return False
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def _holder(key: str, data: bytes, revision: int) -> Holder | None:
    try:
        raw = json.loads(data)
        return Holder(
            key=key,
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            since=float(raw["since"]),
            role=str(raw.get("role", "")),
            replica=str(raw.get("replica", "")),
            owner=str(raw.get("owner", "")),
            revision=revision,
        )
    except (ValueError, KeyError, TypeError):
        return None


async def _bucket(js: JetStreamContext, stream: str, replicas: int, *, create: bool) -> str | None:
    """The name of the lease bucket's stream, creating the bucket if asked; ``None`` if missing."""
    bucket = lease_bucket(stream)
    try:
        await js.key_value(bucket)
        return f"KV_{bucket}"
    except nats.js.errors.BucketNotFoundError:
        if not create:
            return None
    try:
        await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas, direct=True)
        )
    except nats.js.errors.BadRequestError:  # created meanwhile by another replica
        await js.key_value(bucket)
    return f"KV_{bucket}"


async def _last(js: JetStreamContext, kv_stream: str, key: str) -> tuple[int, Holder | None]:
    """The revision of ``key``'s last message and its holder (``None``: no lease, or a delete marker)."""
    subject = f"$KV.{kv_stream.removeprefix('KV_')}.{key}"
    try:
        # on a cluster any replica answers a direct get, one that lags with an older revision: every
        # compare-and-swap on it would fail, and the lease be judged lost; the leader has the last
        msg = await js.get_msg(kv_stream, subject=subject, direct=not clustered(getattr(js, "_nc", None)))
    except nats.js.errors.NotFoundError:
        return 0, None
    if msg.headers and msg.headers.get(_KV_OPERATION) in ("DEL", "PURGE"):
        return int(msg.seq or 0), None
    return int(msg.seq or 0), _holder(key, msg.data or b"", int(msg.seq or 0))


async def live_leases(js: JetStreamContext, stream: str) -> dict[str, Holder]:
    """Every lease held now on ``stream``, by key (the durable consumer's name), but those of gone
    processes of this host (see :meth:`Holder.stale`)."""
    kv_stream = await _bucket(js, stream, 1, create=False)
    if kv_stream is None:
        return {}
    # the keys from the stream's subjects, not KeyValue.keys(): that watcher can end early when a
    # lease is renewed while it runs, and a live replica then looked gone (and --forget took it)
    prefix = f"$KV.{lease_bucket(stream)}."
    info = await js.stream_info(kv_stream, subjects_filter=f"{prefix}>")
    keys = sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))
    found: dict[str, Holder] = {}
    for key in keys:
        _, holder = await _last(js, kv_stream, key)
        if holder is not None and not holder.stale():
            found[key] = holder
    return found


class Lease:
    """One replica's lease, held from :meth:`acquire` until :meth:`release`.

    Args:
        js: a JetStream context of the owner's connection.
        stream: the deployment's stream (the bucket is named after it).
        key: the durable consumer's name.
        role: ``projector`` or ``traces``, for messages.
        replica: the replica id, for messages.
        ttl: seconds the lease outlives its last renewal.
        replicas: replicas of the bucket when it is created.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        key: str,
        *,
        role: str,
        replica: str,
        ttl: float = DEFAULT_LEASE_TTL,
        replicas: int = 1,
    ) -> None:
        if ttl < MIN_LEASE_TTL:
            raise ValueError(f"a lease lasts at least {MIN_LEASE_TTL} s, got {ttl!r}")
        self.js, self.stream, self.key = js, stream, key
        self.role, self.replica, self.ttl, self.replicas = role, replica, ttl, replicas
        self.owner = secrets.token_hex(8)
        self.since = time.time()
        self.revision = 0
        self._kv_stream = ""

    @property
    def held(self) -> bool:
        return self.revision > 0

    def _value(self) -> bytes:
        return json.dumps(
            {
                "host": _HOST,
                "pid": os.getpid(),
                "since": self.since,
                "role": self.role,
                "replica": self.replica,
                "owner": self.owner,
            }
        ).encode()

    async def _write(self, last: int) -> int:
        """Publish the lease expecting ``last`` as the key's last revision; 0 if that was wrong."""
        subject = f"$KV.{self._kv_stream.removeprefix('KV_')}.{self.key}"
        headers = {_EXPECTED_LAST_SUBJECT_SEQ: str(last)}
        try:
            ack = await self.js.publish(subject, self._value(), headers=headers, msg_ttl=self.ttl)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQ:
                return 0
            raise
        return int(ack.seq)

    async def _take(self) -> Holder | None:
        """Take the lease if free or stale; the live holder if another process has it."""
        for _ in range(5):  # each round lost a race; the next one sees who won
            last, holder = await _last(self.js, self._kv_stream, self.key)
            if holder is not None and holder.owner == self.owner:
                last = holder.revision  # ours (a renewal that timed out but was stored)
            elif holder is not None and not holder.stale():
                return holder
            elif holder is not None:
                logger.warning(
                    "%s %s: taking over the lease of %s, a process of this host that is gone",
                    self.role,
                    self.key,
                    holder.describe(),
                )
            revision = await self._write(last)
            if revision:
                self.revision = revision
                _LIVE.add(self.owner)
                return None
        last, holder = await _last(self.js, self._kv_stream, self.key)
        if holder is not None and holder.owner == self.owner:
            self.revision = last  # ours after all (every write raced a renewal of ours that was stored)
            _LIVE.add(self.owner)
            return None
        return holder

    async def acquire(self) -> None:
        """Take the lease.

        Raises:
            LeaseHeldError: another live process holds it (the message names it).
            LogError: NATS did not answer.
        """
        try:
            self._kv_stream = await _bucket(self.js, self.stream, self.replicas, create=True) or ""
            holder = await self._take()
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise LogError(
                f"cannot take the lease of {self.role} {self.key!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if holder is not None:
            raise LeaseHeldError(
                f"{self.role} replica {self.replica!r} (durable consumer {self.key}) is already running on "
                f"{holder.describe()}; stop it first, or give this one another replica id (--replica). "
                f"A process that is gone without stopping releases it within {self.ttl:.0f} s.",
                key=self.key,
                holder=holder,
            )
        self.since = time.time()
        logger.info("%s %s: took its lease (renewed every %.1f s)", self.role, self.key, self.ttl / 3)

    async def renew(self) -> None:
        """Renew the lease once (take it again if it expired and nobody took it).

        Raises:
            LeaseLostError: another process holds it now.
        """
        revision = await self._write(self.revision)
        if revision:
            self.revision = revision
            return
        holder = await self._take()
        if holder is not None:
            _LIVE.discard(self.owner)
            self.revision = 0
            raise LeaseLostError(
                f"{self.role} replica {self.replica!r} lost its lease (durable consumer {self.key}) to "
                f"{holder.describe()}: ours had expired (this process was stalled or cut off from NATS for "
                f"more than {self.ttl:.0f} s) and another with the same replica id took it; stopping",
                key=self.key,
                holder=holder,
            )
        logger.warning(
            "%s %s: its lease had expired (stalled or NATS away); took it again", self.role, self.key
        )

    async def keep(self) -> None:
        """Renew every ``ttl / 3`` seconds until cancelled; NATS errors are retried.

        Raises:
            LeaseLostError: another process took the lease.
        """
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except LeaseLostError:
                raise
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                logger.debug("%s %s: cannot renew its lease (%s); retrying", self.role, self.key, exc)

    async def release(self) -> None:
        """Delete the lease if it is still ours (a delete marker expecting our revision)."""
        revision, self.revision = self.revision, 0
        _LIVE.discard(self.owner)
        if not revision:
            return
        subject = f"$KV.{self._kv_stream.removeprefix('KV_')}.{self.key}"
        headers = {_KV_OPERATION: "DEL", _EXPECTED_LAST_SUBJECT_SEQ: str(revision)}
        try:
            await self.js.publish(subject, b"", headers=headers, timeout=2.0)
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            logger.warning(
                "%s %s: cannot release its lease (%s); it expires within %.0f s",
                self.role,
                self.key,
                exc,
                self.ttl,
            )


async def forget(js: JetStreamContext, stream: str, key: str) -> None:
    """Delete the lease of ``key`` (whoever holds it: call only for a dead replica)."""
    kv_stream = await _bucket(js, stream, 1, create=False)
    if kv_stream is None:
        return
    revision, holder = await _last(js, kv_stream, key)
    if holder is not None:
        subject = f"$KV.{kv_stream.removeprefix('KV_')}.{key}"
        await js.publish(
            subject, b"", headers={_KV_OPERATION: "DEL", _EXPECTED_LAST_SUBJECT_SEQ: str(revision)}
        )


_ROLES = (("skialith-projector-", "projector"), ("skialith-traces-", "trace ingest"))


def _role_and_replica(durable: str, holder: Holder | None) -> tuple[str, str]:
    for prefix, role in _ROLES:
        if durable.startswith(prefix):
            replica = holder.replica if holder is not None else durable[len(prefix) :].partition("-")[2]
            return role, replica
    return (holder.role, holder.replica) if holder is not None else ("other", "")


async def consumer_names(js: JetStreamContext, stream: str) -> list[str]:
    """The names of every consumer of ``stream``."""
    names: list[str] = []
    while True:
        page = await js.consumers_info(stream, offset=len(names))
        names += [str(info.name) for info in page]
        if len(page) < 256:  # JetStream lists consumers in pages of 256
            return names


async def collect_status(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """What ``skialith status`` shows: the stream, each consumer and lease, the read model.

    Returns:
        The status (a JSON-able dict), and the parts that could not be read (empty: all read).
    """
    problems: list[str] = []
    status: dict[str, Any] = {"stream": {"name": settings.stream}, "consumers": []}
    last_seq: int | None = None
    log = await Log.open(settings)
    try:
        try:
            info = await log.js.stream_info(settings.stream)
            state = info.state
            last_seq = int(state.last_seq)
            identity = await log.identity(fresh=True)
            status["stream"].update(
                created=identity.created,
                messages=int(state.messages),
                bytes=int(state.bytes),
                first_seq=int(state.first_seq),
                last_seq=last_seq,
                subjects=list(info.config.subjects or []),
            )
        except (nats.errors.Error, nats.js.errors.Error, SkialithError) as exc:
            problems.append(f"stream {settings.stream}: {exc}")
            status["stream"]["error"] = str(exc) or type(exc).__name__
        leases = await live_leases(log.js, settings.stream)
        names = await consumer_names(log.js, settings.stream) if last_seq is not None else []
        for name in sorted(set(names) | set(leases)):
            holder = leases.get(name)
            role, replica = _role_and_replica(name, holder)
            entry: dict[str, Any] = {
                "durable": name,
                "role": role,
                "replica": replica,
                "live": holder is not None,
                "holder": holder.to_json() if holder is not None else None,
            }
            if name in names:
                ci = await log.js.consumer_info(settings.stream, name)
                floor = int(ci.ack_floor.stream_seq or 0) if ci.ack_floor is not None else 0
                entry.update(
                    pending=int(ci.num_pending or 0),
                    ack_pending=int(ci.num_ack_pending or 0),
                    ack_floor=floor,
                    lag=max(0, (last_seq or 0) - floor),
                )
            else:
                entry.update(pending=None, ack_pending=None, ack_floor=None, lag=None)
            status["consumers"].append(entry)
    finally:
        await log.close()

    database: dict[str, Any] = {"url": safe_url(settings.database_url)}
    status["database"] = database
    model = ReadModel.from_url(settings.database_url, connect_timeout=settings.connect_timeout)
    try:
        async with model.connect() as conn:
            recorded = (await conn.execute(select(stream_identity))).first()
            database["stream"] = (
                {"name": recorded.stream, "created": recorded.created} if recorded is not None else None
            )
            rows = (await conn.execute(select(projection.c.name, projection.c.last_seq))).all()
            database["watermarks"] = {
                r.name: {"last_seq": int(r.last_seq), "lag": max(0, (last_seq or 0) - int(r.last_seq))}
                for r in sorted(rows)
            }
            counted = await conn.execute(
                select(dead_letters.c.projection, func.count()).group_by(dead_letters.c.projection)
            )
            by_name = {str(name): int(n) for name, n in counted}
            database["dead_letters"] = by_name
            database["dead_letters_total"] = sum(by_name.values())
    except Exception as exc:  # unreachable, or no tables yet
        problems.append(f"database {database['url']}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        database["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        await model.close()
    return status, problems
