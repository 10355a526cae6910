"""The write-ahead log: NATS JetStream. Connects, ensures the stream, publishes, reads back.

nats errors are translated here, at the boundary, into :mod:`skialith_langgraph.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.transport import TcpTransport
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from .cluster import clustered, leader_seq, why_no_ack
from .config import DEFAULT_DUPLICATE_WINDOW, Settings, safe_nats_url
from .errors import CodecError, ConfigError, ConnectError, LogError, PublishError, StreamNotFoundError
from .identity import StreamIdentity, StreamWatch
from .subjects import Subjects

logger = logging.getLogger(__name__)


class Header(StrEnum):
    MSG_ID = "Nats-Msg-Id"
    EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
    EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
    PARTS = "Skialith-Parts"  # on a message whose body travels in parts: "<n> <base subject>"
    PART = "Skialith-Part"  # on each part


@dataclass(slots=True)
class LogMsg:
    """One message read back from the stream (parts already joined)."""

    seq: int
    subject: str
    body: bytes
    time: str | None = None  # the server's timestamp (RFC 3339, UTC), from the direct get


WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when an expectation header does not hold


class ExpectationFailed(LogError):
    """Something else was written on the expected subjects in between (nothing was stored)."""


class MissingPartError(LogError):
    """A part of a large message is not on the stream (purged with its thread): it never will be."""


_AUTH_VIOLATION = "authorization violation"
MAX_PARTS = 1 << 20  # a Skialith-Parts header naming more is malformed (1 GiB at the 1 KiB minimum chunk)
READ_BATCH = 1000  # messages asked for by one batched direct get of Log.read
READ_BATCH_BYTES = 8 * 1024 * 1024  # and their bytes (the server sends at least one message)
HELD_PARTS_BYTES = 64 * 1024 * 1024  # parts a read keeps for their final message (more: fetched again)
PUBLISH_ATTEMPTS = 5  # publishes of one body before giving up (duplicates, a delete racing its parts)

_HINT = "start it with 'skialith up' or point SKIALITH_NATS_URL at a running nats-server with JetStream"


class TlsNotOfferedError(nats.errors.Error):
    """The server does not offer TLS but the settings require it: nothing was sent to it."""

    def __str__(self) -> str:
        return "nats: the server does not offer TLS"


class _Client(Client):
    """nats-py's client, refusing to send CONNECT (the credentials) without TLS when TLS is required.

    nats-py upgrades a connection to TLS only when the server's INFO asks for it, so a ``tls://``
    URL pointing at a plaintext server would connect in the clear and send the password there.
    """

    require_tls = False
    denied: str | None = None  # the last permissions violation the server reported

    acks: _Acks | None = None  # the PubAck inbox of Log.publish, once it has published
    # the reply subscriptions of Log.lookup taken by the reading task: sid -> _Lookups.deliver
    lookups: dict[int, Callable[[bytes, bytes | None], None]] | None = None

    @functools.cached_property
    def own_publish(self) -> bool:
        """Whether this nats-py has the internals :class:`_Acks` works with (checked once per
        client). They are private: a nats-py that renamed one publishes through ``js.publish``
        instead of failing."""
        return all(hasattr(self, name) for name in _ACK_INTERNALS) and all(
            callable(getattr(Client, name, None)) for name in _ACK_METHODS
        )

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` straight to the socket if nothing nats-py queued is ahead of it and the
        transport is TCP (a websocket sends on drain only); False, and nothing written, if not."""
        transport = self._transport
        if self.is_connected and not self._pending and type(transport) is TcpTransport:
            transport.write(data)  # type: ignore[no-untyped-call]
            return True
        return False

    def _connect_command(self) -> bytes:
        info = self._server_info or {}
        if self.require_tls and not info.get("tls_required") and not self.options.get("tls_handshake_first"):
            raise TlsNotOfferedError()
        command: bytes = super()._connect_command()
        return command

    async def close(self) -> None:
        """nats-py's close, without the CancelledError nats-py 2.16 raises when the client is
        reconnecting (its server just went away): close cancels the reconnect task while that task
        awaits the old socket's close waiter, which cancels the waiter itself, and close then awaits
        the same waiter. The connection is closed all the same. A cancellation of the caller's task
        still propagates."""
        try:
            await super().close()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            logger.debug("NATS close: the socket's close waiter was cancelled by the reconnect task")

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        # a PubAck goes straight to the publish waiting for it, from the reading task: no message
        # object, no subscription queue and task, no wait_for callback in between (see _Acks)
        acks = self.acks
        if acks is not None and sid == acks.sid:
            self.stats["in_msgs"] += 1
            self.stats["in_bytes"] += len(data)
            acks.deliver(subject, data, headers)
            return
        lookups = self.lookups
        if lookups is not None:
            deliver = lookups.get(sid)
            if deliver is not None:  # a lookup's reply: its headers straight to its batch (_Lookups)
                self.stats["in_msgs"] += 1
                self.stats["in_bytes"] += len(data)
                deliver(subject, headers)
                return
        await super()._process_msg(sid, subject, reply, data, headers)


# what _Acks and _Client._process_msg use of nats-py's client, besides its public API
_ACK_INTERNALS = ("_transport", "_pending", "_pending_data_size", "_max_pending_size", "_flush_queue")
_ACK_METHODS = ("_process_msg", "_process_headers")  # of nats-py's Client itself (_Client overrides one)


class _Acks:
    """The replies to this connection's JetStream publishes: one wildcard inbox subscription, one
    future per publish in flight, keyed by its reply token.

    nats-py's ``js.publish`` (a request) spends about a third of a publish's client time on its
    way: the PUB waits for the flusher task, and the PubAck passes through a message object, the
    inbox subscription's queue and task, and a ``wait_for`` callback before the caller wakes.
    Here the reading task hands the PubAck's bytes to its future, and the PUBs requested in one
    turn of the loop go to the socket together at the end of it, in order (a step's writes and
    its checkpoint, which LangGraph sends at once: one write to the socket instead of two, and
    the checkpoint is not held up behind the first one's system call).
    """

    def __init__(self, nc: _Client, sid: int, prefix: str) -> None:
        self.nc = nc
        self.sid = sid
        self.prefix = prefix
        self._cut = len(prefix.encode())
        self.pending: dict[bytes, asyncio.Future[tuple[bytes, bytes | None]]] = {}
        self._count = 0
        self._batch: list[bytes] = []

    def _flush(self) -> None:
        """Send the publishes requested since the last flush, in order, in one write."""
        batch, self._batch = self._batch, []
        nc = self.nc
        if nc.write_now(batch[0] if len(batch) == 1 else b"".join(batch)):
            return
        # behind commands nats-py queued, while reconnecting (sent once reconnected), or over a
        # websocket (its transport sends on drain): into nats-py's buffer, and wake its flusher
        nc._pending.extend(batch)
        nc._pending_data_size += sum(len(command) for command in batch)
        if nc.is_connected and nc._flush_queue is not None and nc._flush_queue.empty():
            nc._flush_queue.put_nowait(asyncio.get_running_loop().create_future())

    @classmethod
    async def open(cls, nc: _Client) -> _Acks:
        prefix = f"{nc.new_inbox()}."
        sub = await nc.subscribe(f"{prefix}*")  # no callback: every reply is taken by deliver()
        return cls(nc, sub._id, prefix)

    def deliver(self, subject: bytes, data: bytes, headers: bytes | None) -> None:
        future = self.pending.pop(subject[self._cut :], None)
        if future is not None and not future.done():
            future.set_result((data, headers))

    async def request(
        self, subject: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[bytes, bytes | None]:
        """Publish ``body`` with ``headers``, reply to a fresh token; the reply's data and raw headers.

        Raises what nats-py's request raises: ``ConnectionClosedError``, ``MaxPayloadError``,
        ``OutboundBufferLimitError`` (reconnecting, its buffer full), ``TimeoutError`` (nats' own)
        when no reply came within ``timeout`` seconds.
        """
        nc = self.nc
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if len(body) > nc.max_payload:
            raise nats.errors.MaxPayloadError
        if not nc.is_connected and (
            nc._max_pending_size <= 0 or len(body) + nc._pending_data_size > nc._max_pending_size
        ):  # as nats-py's publish: no buffering while reconnecting beyond its limit
            raise nats.errors.OutboundBufferLimitError
        self._count += 1
        # unique (the count) and not guessable (random): another client of the account may see
        # the inbox, and a forged PubAck must not be able to confirm a write
        token = f"{self._count:x}{os.urandom(4).hex()}"
        reply = self.prefix + token
        for value in headers.values():
            if "\r" in value or "\n" in value:
                raise ValueError(f"a header of the publish on {subject!r} holds a line break: {value!r}")
        hdr = "".join(["NATS/1.0\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items()), "\r\n"]).encode()
        command = b"".join(
            (f"HPUB {subject} {reply} {len(hdr)} {len(hdr) + len(body)}\r\n".encode(), hdr, body, b"\r\n")
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bytes, bytes | None]] = loop.create_future()
        key = token.encode()
        self.pending[key] = future
        expiry = loop.call_later(timeout, _expire, future)
        try:
            nc.stats["out_msgs"] += 1
            nc.stats["out_bytes"] += len(body)
            self._batch.append(command)
            if len(self._batch) == 1:
                loop.call_soon(self._flush)
            return await future
        finally:
            expiry.cancel()
            self.pending.pop(key, None)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


def _connect_options(settings: Settings) -> dict[str, Any]:
    """nats-py's connect options for the credentials and TLS files of ``settings``.

    Raises:
        ConfigError: a file named by the settings cannot be read, or is not what it should be.
    """
    options: dict[str, Any] = {}
    if settings.nats_user:
        options["user"], options["password"] = settings.nats_user, settings.nats_password or ""
    token = settings.nats_auth_token()
    if token:
        options["token"] = token
    if settings.nats_creds:
        _readable(settings.nats_creds, "nats_creds", "the .creds file")
        options["user_credentials"] = settings.nats_creds
    seed = settings.nats_nkey_seed
    if seed:
        if seed.startswith("SU") and "/" not in seed and not os.path.exists(seed):
            options["nkeys_seed_str"] = seed
        else:
            _readable(seed, "nats_nkey_seed", "a file holding an NKey user seed (SU...)")
            options["nkeys_seed"] = seed
    if settings.nats_tls_ca or settings.nats_tls_cert:
        try:
            context = ssl.create_default_context(cafile=settings.nats_tls_ca or None)
            if settings.nats_tls_cert:
                context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the NATS TLS files (nats_tls_ca={settings.nats_tls_ca!r}, "
                f"nats_tls_cert={settings.nats_tls_cert!r}, nats_tls_key={settings.nats_tls_key!r}): "
                f"{exc}"
            ) from exc
        options["tls"] = context
    return options


def _readable(path: str, name: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name} must name {what}; cannot read {path!r}: {exc.strerror or exc}") from exc


def _diagnose(exc: BaseException) -> str | None:
    """What a connection error means when waiting will not change it; ``None`` for the others."""
    text = str(exc)
    lower = text.lower()
    if _AUTH_VIOLATION in lower or isinstance(exc, nats.errors.AuthorizationError):
        return "authorization violation: the server refused the credentials"
    if isinstance(exc, TlsNotOfferedError):
        return (
            "TLS required (tls:// URL or SKIALITH_NATS_TLS_* set) but the server does not offer TLS; "
            "nothing was sent. Use a nats:// URL without TLS settings, or enable TLS on the server"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate is not trusted ({exc.verify_message}); "
            "set SKIALITH_NATS_TLS_CA to the CA that signed it"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or text
        if "certificate required" in lower or "CERTIFICATE_REQUIRED" in str(reason):
            return (
                f"TLS: the server requires a client certificate ({reason}); "
                "set SKIALITH_NATS_TLS_CERT and SKIALITH_NATS_TLS_KEY"
            )
        return f"TLS handshake failed ({reason}); is the server's TLS set up as the client expects?"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused ({text})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({text})"
    if "tls required" in lower or "secure connection" in lower:
        return f"the server requires TLS ({text}); use a tls:// URL and SKIALITH_NATS_TLS_CA"
    return None


async def connect(settings: Settings) -> Client:
    """Connect to NATS within ``settings.connect_timeout`` seconds, with the credentials and TLS
    files of ``settings`` (or the local token of ``skialith up``).

    Errors that waiting does not cure fail at once, naming the cause: refused credentials
    ("authorization violation"), a refused TCP connection, a TLS mismatch (a ``tls://`` URL to a
    plaintext server, an untrusted certificate, a missing client certificate). With several
    servers, every one must have failed so.

    Raises:
        ConfigError: a credentials or TLS file cannot be read.
        ConnectError: no server could be used; the message names the URL (credentials masked),
            the cause and what to do.
    """
    url = settings.nats_url
    shown = safe_nats_url(url)
    servers = [raw.strip() for raw in url.split(",") if raw.strip()]
    options = _connect_options(settings)
    failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    causes: list[str] = []
    last_error: list[str] = []
    warned = False

    async def _error_cb(exc: Exception) -> None:
        nonlocal warned  # one warning per outage, the rest at DEBUG
        if "permissions violation" in str(exc).lower():
            nc.denied = str(exc)  # a request it dropped times out: say why
        if not failed.done():
            last_error[:] = [f"{type(exc).__name__}: {exc}"]
            cause = _diagnose(exc)
            if cause is not None:
                causes.append(cause)
                if cause.startswith("authorization") or len(causes) >= len(servers):
                    failed.set_result(cause)
        logger.log(logging.DEBUG if warned else logging.WARNING, "NATS %s: %s", shown, exc)
        warned = True

    async def _reconnected_cb() -> None:
        nonlocal warned
        warned = False
        logger.info("reconnected to NATS %s", shown)

    nc = _Client()
    nc.require_tls = settings.nats_tls_required
    attempt = asyncio.ensure_future(
        asyncio.wait_for(
            nc.connect(
                servers=servers,
                connect_timeout=max(1, int(settings.connect_timeout)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]  # annotated int, a float works
                error_cb=_error_cb,
                reconnected_cb=_reconnected_cb,
                name="skialith",
                skip_subject_validation=True,
                **options,
            ),
            timeout=settings.connect_timeout,
        )
    )
    try:
        waiters: set[asyncio.Future[Any]] = {attempt, failed}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not attempt.done():  # a cause that waiting does not cure: nats-py would retry until the timeout
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await attempt
            with contextlib.suppress(Exception):
                await nc.close()
            cause = failed.result()
            hint = ""
            if cause.startswith("authorization"):
                hint = (
                    "; give the server's credentials: SKIALITH_NATS_USER and SKIALITH_NATS_PASSWORD, "
                    "SKIALITH_NATS_TOKEN (e.g. the one 'skialith up' keeps in <home>/nats.token), "
                    "SKIALITH_NATS_NKEY_SEED or SKIALITH_NATS_CREDS (see docs/security.md)"
                )
            elif cause.startswith(("connection refused", "cannot resolve")):
                hint = f"; {_HINT}"
            verb = "reach" if cause.startswith(("connection refused", "cannot resolve")) else "connect to"
            raise ConnectError(f"cannot {verb} NATS at {shown!r}: {cause}{hint}", url=shown)
        attempt.result()
        return nc
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        last = f"; last error: {last_error[0]}" if last_error else f" ({type(exc).__name__}: {exc})"
        raise ConnectError(
            f"cannot reach NATS at {shown!r} within {settings.connect_timeout} s{last}; {_HINT}",
            url=shown,
        ) from exc
    finally:
        if not attempt.done():  # our caller was cancelled
            attempt.cancel()


class Log:
    """JetStream access for one deployment: one stream holding every subject under the prefix.

    Owns nothing it was given: a ``Client`` passed in stays the caller's.
    """

    def __init__(self, settings: Settings, nc: Client, *, owned: bool = True) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.publish_timeout)
        self._owned = owned
        self._ready = False
        self._identity = StreamWatch(self)
        self._skipped: set[int] = set()  # sequences of messages a read skipped (logged once each)
        self._prefix_len = len(settings.subject_prefix.split("."))
        self._acks_lock = asyncio.Lock()
        self._lookups = _Lookups(settings.publish_timeout)  # the replies to lookup()'s direct gets

    @classmethod
    async def open(cls, settings: Settings, *, ensure_stream: bool = False) -> Log:
        """Connect (and, if asked, ensure the stream, closing the connection when that fails)."""
        nc = await connect(settings)
        try:
            log = cls(settings, nc)
        except BaseException:
            await nc.close()
            raise
        if ensure_stream:
            try:
                await log.ensure_stream()
            except BaseException:
                await log.close()
                raise
        return log

    async def close(self) -> None:
        # every publish was awaited to its PubAck, so nothing is pending: close, don't drain
        # (a drain waits for pull subscriptions and can take its full 30 s timeout)
        await self._identity.close()
        self._lookups.fail(LogError(f"the NATS connection to {self.url!r} was closed", url=self.url))
        if self._owned and not self.nc.is_closed:
            try:
                await self.nc.close()
            except (OSError, nats.errors.Error) as exc:  # every server gone (a region lost): closed anyway
                logger.debug("closing the NATS connection to %s: %s", self.url, exc)

    @property
    def url(self) -> str:
        """The NATS URL as shown in messages: credentials replaced by ``***``."""
        return safe_nats_url(self.settings.nats_url)

    def _denied(self) -> str:
        """Why a request may have gone unanswered: the server's last permissions violation, if any
        (it drops a request the user may not publish, so the requester only sees a timeout)."""
        denied = getattr(self.nc, "denied", None)
        return (
            f" The server reported: {denied} (see docs/security.md for the permissions needed)."
            if denied
            else ""
        )

    async def ensure_stream(self) -> None:
        """Create the stream if missing, with the limits of the settings; on an existing stream,
        apply a limit the settings set (non-zero) and the stream does not have yet (idempotent, cheap).

        A limit of 0 leaves an existing stream's limit as it is (every client calls this; one
        without the operator's settings must not lift the operator's limits). See docs/retention.md.
        """
        if self._ready:
            return
        name = self.settings.stream
        try:
            info = await self.js.stream_info(name)
            await self._apply_limits(info.config)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=name,
                subjects=[self.subjects.all],
                storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                num_replicas=self.settings.replicas,
                allow_direct=True,
                duplicate_window=DEFAULT_DUPLICATE_WINDOW,
            )
            self._limit(config)
            try:
                await self.js.add_stream(config)
                logger.info("created stream %s for %s", name, self.subjects.all)
                self._warn_limits(config)
            except nats.js.errors.BadRequestError as exc:
                if "already in use" not in str(exc):
                    raise LogError(
                        f"cannot create stream {name!r} at {self.url!r}: {exc}", url=self.url
                    ) from exc
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
        ) as exc:
            raise LogError(
                f"NATS at {self.url!r} does not answer JetStream requests ({type(exc).__name__}); "
                f"is JetStream enabled? 'skialith up' starts a server with it.{self._denied()}",
                url=self.url,
            ) from exc
        self._ready = True

    def _limit(self, config: StreamConfig) -> bool:
        """Set the limits of the settings on ``config``; whether anything changed.

        ``max_bytes`` goes with discard *new*: a full stream refuses new writes (the writer gets a
        PublishError) instead of dropping the oldest acknowledged ones, which may be the only copy
        of a live thread's first checkpoint. The duplicate window may not exceed the max age.
        """
        changed = False
        max_age, max_bytes = self.settings.stream_max_age, self.settings.stream_max_bytes
        if max_age and config.max_age != max_age:
            config.max_age = max_age
            changed = True
        if max_age and (config.duplicate_window or 0) > max_age:
            config.duplicate_window = max_age
            changed = True
        if max_bytes and (config.max_bytes != max_bytes or config.discard != DiscardPolicy.NEW):
            config.max_bytes, config.discard = max_bytes, DiscardPolicy.NEW
            changed = True
        return changed

    async def _apply_limits(self, config: StreamConfig) -> None:
        before = (config.max_age, config.max_bytes)
        if not self._limit(config):
            return
        try:
            await self.js.update_stream(config)
        except nats.js.errors.APIError as exc:
            raise LogError(
                f"cannot set the limits of stream {config.name!r} at {self.url!r} "
                f"(max age {config.max_age} s, max bytes {config.max_bytes}): {exc}",
                url=self.url,
            ) from exc
        logger.warning(
            "stream %s: limits changed from max_age=%s s, max_bytes=%s to max_age=%s s, max_bytes=%s",
            config.name,
            before[0] or "unlimited",
            before[1] if before[1] and before[1] > 0 else "unlimited",
            config.max_age or "unlimited",
            config.max_bytes if config.max_bytes and config.max_bytes > 0 else "unlimited",
        )
        self._warn_limits(config)

    def _warn_limits(self, config: StreamConfig) -> None:
        if config.max_age:
            logger.warning(
                "stream %s keeps messages for %s s only: older ones leave the log whether or not a "
                "projector applied them. The read model keeps what was applied before, but reads "
                "served from the log and 'skialith projector --rebuild' no longer see them; keep "
                "max age above the retention idle TTL and above any projector downtime",
                config.name,
                config.max_age,
            )
        if config.max_bytes and config.max_bytes > 0:
            logger.warning(
                "stream %s holds at most %d bytes: when full, writes fail (discard new) until "
                "retention frees space",
                config.name,
                config.max_bytes,
            )

    async def publish(
        self, subject: str, body: bytes, msg_id: str, *, expect: tuple[int, str] | None = None
    ) -> int:
        """Publish ``body`` and wait for the PubAck; returns the stream sequence of the stored message.

        Bodies larger than ``settings.chunk_size`` are published as parts first, then a small
        message that names them, so any size fits under the server's ``max_payload``.

        Never reports success for a message that was not stored: a PubAck that says "duplicate"
        (JetStream saw ``msg_id`` inside its duplicate window, so it kept nothing) is answered by
        publishing again under a fresh id. A large body on a thread whose delete or prune landed
        between its first part and its final message (its purge may have taken the parts) is
        published again whole.

        Args:
            subject: where to publish.
            body: the message body.
            msg_id: the ``Nats-Msg-Id``, unique to this call (see :func:`codec.msg_id`); parts
                get ``<msg_id>/<i>``.
            expect: ``(seq, subject_filter)``: store only if the last message on the filter has
                that sequence (0: none). Parts chain the expectation.

        Raises:
            PublishError: no PubAck within ``settings.publish_timeout`` seconds, or the body
                could not be stored whole after :data:`PUBLISH_ATTEMPTS` attempts.
            ExpectationFailed: ``expect`` did not hold, or the publish had to be repeated (it
                cannot be repeated under an expectation); the caller publishes again without it.
                Parts sent before may remain, referenced by nothing.
        """
        ident = msg_id
        for attempt in range(PUBLISH_ATTEMPTS):
            if attempt:
                if expect is not None:
                    raise ExpectationFailed(
                        f"the publish on {subject!r} must be repeated; not under an expectation",
                        url=self.url,
                        subject=subject,
                    )
                ident = f"{msg_id}~{os.urandom(4).hex()}"
            if len(body) <= self.settings.chunk_size:
                seq = await self._publish(subject, body, _expect({Header.MSG_ID.value: ident}, expect))
                if seq:
                    return seq
                logger.warning("JetStream took %r for a duplicate; publishing again under a fresh id", ident)
                continue
            first, seq = await self._publish_parts(subject, body, ident, expect)
            if not seq:
                logger.warning("JetStream took %r for a duplicate; publishing again under a fresh id", ident)
                continue
            if not await self._deleted_between(subject, first, seq):
                return seq
            logger.info(
                "a delete or prune of the thread of %r landed between the parts of seq=%d; publishing again",
                subject,
                seq,
            )
        raise PublishError(
            f"JetStream did not store {subject!r} whole after {PUBLISH_ATTEMPTS} attempts",
            url=self.url,
            subject=subject,
        )

    async def _publish_parts(
        self, subject: str, body: bytes, ident: str, expect: tuple[int, str] | None
    ) -> tuple[int, int]:
        """Publish ``body`` in parts, then the message naming them.

        Returns:
            The sequence of the first part and of the final message (0 if JetStream took it for
            a duplicate).
        """
        size = self.settings.chunk_size
        # the digest covers the chunk size too: a part subject always holds the same bytes
        digest = hashlib.blake2b(size.to_bytes(8, "big") + body, digest_size=16).hexdigest()
        base = self.subjects.part_base(subject, digest)
        n = (len(body) + size - 1) // size
        first = 0
        for i in range(n):
            chunk = body[i * size : (i + 1) * size]
            part_id = f"{ident}/{i}"
            for _ in range(PUBLISH_ATTEMPTS):
                headers = {Header.MSG_ID.value: part_id, Header.PART.value: "1"}
                seq = await self._publish(f"{base}.{i}", chunk, _expect(headers, expect))
                if seq:
                    break
                part_id = f"{ident}/{i}~{os.urandom(4).hex()}"
            else:
                raise PublishError(
                    f"JetStream took every id of part {i} of {subject!r} for a duplicate",
                    url=self.url,
                    subject=subject,
                )
            first = first or seq
            if expect is not None:
                expect = (seq, expect[1])
        headers = {Header.MSG_ID.value: ident, Header.PARTS.value: f"{n} {base}"}
        return first, await self._publish(subject, b"", _expect(headers, expect))

    async def _deleted_between(self, subject: str, first: int, last: int) -> bool:
        """Whether an operation that purges the thread ``subject`` belongs to (a delete, or a prune,
        which trims what came before it) was stored between two sequences: the parts before it may
        be gone."""
        thread_key = self.subjects.thread_token(subject)
        if thread_key is None:
            return False  # not a thread's subject: nothing purges it
        op = await self.next_seq(self.subjects.thread_op(thread_key, "*"), after=first)
        return 0 < op < last

    async def publish_acked(self, subject: str, body: bytes, headers: dict[str, str]) -> tuple[int, bool]:
        """Publish and wait for the PubAck: (stream sequence, duplicate), through this connection's
        PubAck inbox (the write path's way). Raises nats-py's errors for what ``js.publish`` would
        raise them for, so a caller can use it in place of ``js.publish``."""
        nc = self.nc
        if not isinstance(nc, _Client) or not nc.own_publish:  # nats-py's own way
            ack = await self.js.publish(subject, body, timeout=self.settings.publish_timeout, headers=headers)
            return ack.seq, bool(ack.duplicate)
        acks = nc.acks
        if acks is None:
            async with self._acks_lock:
                if nc.acks is None:
                    nc.acks = await _Acks.open(nc)
            acks = nc.acks
            assert acks is not None
        data, raw = await acks.request(subject, body, headers, self.settings.publish_timeout)
        if raw:  # a status from the server instead of a PubAck: 503 when no stream takes the subject
            status = ((await nc._process_headers(raw)) or {}).get("Status")
            if status == "503":
                raise nats.js.errors.NoStreamResponseError
            if not data:
                raise nats.js.errors.APIError(code=int(status) if status and status.isdigit() else None)
        resp = json.loads(data)
        if "error" in resp:
            raise nats.js.errors.APIError.from_error(resp["error"])
        return int(resp["seq"]), bool(resp.get("duplicate"))

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> int:
        """One publish; the stream sequence, or 0 when JetStream dropped it as a duplicate."""
        try:
            seq, duplicate = await self.publish_acked(subject, body, headers)
        except nats.errors.TimeoutError as exc:
            # on a cluster, ask it why (at most 1 s more): a stream without a leader (quorum lost)
            why = await why_no_ack(self.nc, self.settings.stream, min(1.0, self.settings.publish_timeout))
            cause = f" Cause: {why}." if why else f" Is the server up? {_HINT}."
            raise PublishError(
                f"no PubAck from NATS at {self.url!r} within {self.settings.publish_timeout} s "
                f"for {subject!r}; the write may or may not be stored (a retry is safe: see "
                f"docs/production.md).{cause}{self._denied()}",
                url=self.url,
                subject=subject,
            ) from exc
        except nats.js.errors.NoStreamResponseError as exc:
            # on a cluster, the nodes of a stream without a leader answer "no responders" too
            why = await why_no_ack(self.nc, self.settings.stream, min(1.0, self.settings.publish_timeout))
            if why:
                raise PublishError(
                    f"JetStream at {self.url!r} did not store {subject!r}: {why}",
                    url=self.url,
                    subject=subject,
                ) from exc
            raise StreamNotFoundError(
                f"no stream at {self.url!r} takes {subject!r}; call setup() first",
                url=self.url,
                subject=subject,
            ) from exc
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
            raise PublishError(
                f"NATS connection to {self.url!r} is closed; {_HINT}", url=self.url, subject=subject
            ) from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise ExpectationFailed(str(exc), url=self.url, subject=subject) from exc
            raise PublishError(
                f"JetStream refused {subject!r}: {exc}", url=self.url, subject=subject
            ) from exc
        return 0 if duplicate else seq

    async def last_seq(self, *filters: str) -> int:
        """The stream sequence of the last message on any of ``filters`` (0 if none)."""
        return max(await self.last_seqs(*filters), default=0)

    async def last_seqs(self, *filters: str) -> list[int]:
        """The stream sequence of the last message on each of ``filters`` (0 where none)."""
        return await self.settle(await self.lookup([(f, None) for f in filters]))

    async def lookup(self, asks: list[tuple[str, int | None]]) -> asyncio.Future[list[int]]:
        """Ask JetStream, without waiting for the answers, for the stream sequence of the last
        message on each ``(filter, None)`` and of the first message after ``n`` on each
        ``(filter, n)`` (0 where none); :meth:`settle` waits for them.

        The requests go to the socket at once, in one write (behind anything nats-py queued
        before them), so a read can start its database statement meanwhile. Their replies come
        to one subscription of this connection and resolve the future directly: no request
        task, inbox or timer per lookup (see :class:`_Lookups`). On a cluster the leader is
        asked (see :func:`leader_seq`).
        """
        if clustered(self.nc):
            return asyncio.ensure_future(self._ask_leader(asks))  # a Task: see settle
        lookups = self._lookups
        if lookups.prefix is None:
            await lookups.subscribe(self.nc)
        batch = lookups.batch(len(asks))
        try:
            await lookups.send(self.nc, f"$JS.API.DIRECT.GET.{self.settings.stream}", batch, asks)
        except BaseException:
            batch.future.cancel()  # its reply subjects are forgotten at its deadline
            raise
        return batch.future

    async def _ask_leader(self, asks: list[tuple[str, int | None]]) -> list[int]:
        asked = (self._last_seq(f) if n is None else self.next_seq(f, after=n) for f, n in asks)
        return list(await asyncio.gather(*asked))

    async def settle(self, answers: asyncio.Future[list[int]]) -> list[int]:
        """The answers of :meth:`lookup`, waited for up to the publish timeout.

        Raises:
            LogError: no answer in time, or JetStream refused (``StreamNotFoundError``: no stream).
        """
        if isinstance(answers, asyncio.Task):  # a cluster's leader asked: bounded, its own errors
            return list(await answers)
        try:
            return await answers  # failed with _Expired at its deadline (_Lookups): no timer here
        except _Expired as exc:
            raise self._no_answer() from exc
        except _Refused as exc:
            if exc.status == "503":
                raise self._no_stream() from None
            raise LogError(
                f"direct get on {self.settings.stream!r} failed: {exc.status} {exc.detail}", url=self.url
            ) from None

    def _no_answer(self) -> LogError:
        return LogError(
            f"NATS at {self.url!r} did not answer a read within "
            f"{self.settings.publish_timeout} s; {_HINT}.{self._denied()}",
            url=self.url,
        )

    def _no_stream(self) -> StreamNotFoundError:
        return StreamNotFoundError(
            f"stream {self.settings.stream!r} not found at {self.url!r} (or direct get is off); call setup()",
            url=self.url,
        )

    async def _last_seq(self, subject_filter: str) -> int:
        if clustered(self.nc):  # a follower may lag: ask the leader (see cluster.leader_seq)
            return await leader_seq(
                self.nc, self.settings.stream, {"last_by_subj": subject_filter}, self.settings.publish_timeout
            )
        req = json.dumps({"last_by_subj": subject_filter}).encode()
        msg = await self._direct_get(req)
        if msg is None:
            return 0
        return int(msg.headers["Nats-Sequence"]) if msg.headers else 0

    async def _direct_get(self, req: bytes) -> Any:
        subject = f"$JS.API.DIRECT.GET.{self.settings.stream}"
        try:
            msg = await self.nc.request(subject, req, timeout=self.settings.publish_timeout)
        except nats.errors.TimeoutError as exc:
            raise self._no_answer() from exc
        except nats.errors.NoRespondersError as exc:
            raise self._no_stream() from exc
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status is not None:
            detail = headers.get("Description", "")
            raise LogError(f"direct get on {self.settings.stream!r} failed: {status} {detail}", url=self.url)
        return msg

    async def next_seq(self, subject_filter: str, *, after: int) -> int:
        """The stream sequence of the first message on ``subject_filter`` after ``after`` (0 if none)."""
        if clustered(self.nc):
            request = {"seq": after + 1, "next_by_subj": subject_filter}
            return await leader_seq(self.nc, self.settings.stream, request, self.settings.publish_timeout)
        msg = await self._direct_get(json.dumps({"seq": after + 1, "next_by_subj": subject_filter}).encode())
        return int(msg.headers["Nats-Sequence"]) if msg is not None and msg.headers else 0

    async def read(
        self, subject_filter: str, *, start_seq: int = 1, until_seq: int | None = None
    ) -> AsyncIterator[LogMsg]:
        """Yield the messages on ``subject_filter`` in stream order, parts joined, parts skipped.

        Walks the stream with batched direct gets (one request answers up to :data:`READ_BATCH`
        messages), not one request per message. A message that cannot be read whole is skipped
        and logged once: its parts are gone (a delete of its thread purged them; the writer has
        published it again after the delete, see :meth:`publish`), or its ``Skialith-Parts``
        header is malformed (a forged or corrupt message).
        """
        seq = max(1, start_seq)
        held = _HeldParts()
        replies = _Replies()
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=replies.take)
        behind_until = 0.0  # a follower answered without messages the leader has: read again until then
        try:
            while until_seq is None or seq <= until_seq:
                batch, pending = await self._direct_batch(replies, inbox, subject_filter, seq, until_seq)
                if (not batch or not pending) and until_seq is not None and clustered(self.nc):
                    # any replica answers a direct get; one may not have the last messages yet
                    after = int(batch[-1].headers["Nats-Sequence"]) if batch else seq - 1
                    missed = await self.next_seq(subject_filter, after=after)
                    if 0 < missed <= until_seq:
                        behind_until = behind_until or asyncio.get_running_loop().time() + (
                            self.settings.publish_timeout
                        )
                        if asyncio.get_running_loop().time() > behind_until:
                            raise LogError(
                                f"the replicas of stream {self.settings.stream!r} that answered reads stayed "
                                f"behind its leader (seq {missed}) for {self.settings.publish_timeout} s",
                                url=self.url,
                            )
                        pending = 1  # read on (the loop below takes what this batch has)
                        if not batch:
                            await asyncio.sleep(0.005)
                            continue
                for msg in batch:
                    found = int(msg.headers["Nats-Sequence"])
                    if until_seq is not None and found > until_seq:
                        return
                    seq = found + 1
                    headers = msg.headers
                    subject = headers["Nats-Subject"]
                    if headers.get(Header.PART.value):
                        held.add(subject, msg.data)
                        continue
                    try:
                        body = await self._join(headers, msg.data, subject, held)
                    except MissingPartError as exc:
                        self.note_skip(found, logging.INFO, f"skipped, not whole: {exc}")
                        continue
                    except CodecError as exc:
                        self.note_skip(found, logging.WARNING, f"skipped, cannot be read: {exc}")
                        continue
                    yield LogMsg(seq=found, subject=subject, body=body, time=headers.get("Nats-Time-Stamp"))
                if not batch or not pending:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _direct_batch(
        self, replies: _Replies, inbox: str, subject_filter: str, seq: int, until_seq: int | None
    ) -> tuple[list[Any], int]:
        """One batched direct get: the messages on ``subject_filter`` from ``seq`` on, and how many
        more match after them (0 when none; servers without batches answer one message and 1)."""
        size = READ_BATCH if until_seq is None else max(1, min(READ_BATCH, until_seq - seq + 1))
        req = {"seq": seq, "next_by_subj": subject_filter, "batch": size, "max_bytes": READ_BATCH_BYTES}
        done = replies.expect()
        await self.nc.publish(
            f"$JS.API.DIRECT.GET.{self.settings.stream}", json.dumps(req).encode(), reply=inbox
        )
        try:
            await asyncio.wait_for(done, self.settings.publish_timeout)
        except TimeoutError as exc:
            raise self._no_answer() from exc
        out: list[Any] = []
        previous = 0
        for msg in replies.msgs:
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "404":
                return out, 0
            if status == "204":  # end of the batch
                if int(headers.get("Nats-Last-Sequence", previous)) != previous:
                    raise LogError(f"a batched read on {self.settings.stream!r} lost messages", url=self.url)
                return out, int(headers.get("Nats-Num-Pending", 0))
            if status is not None:
                detail = headers.get("Description", "")
                raise LogError(
                    f"direct get on {self.settings.stream!r} failed: {status} {detail}", url=self.url
                )
            if "Nats-Num-Pending" not in headers:
                return [msg], 1  # a server without batched direct gets: one message per request
            if int(headers.get("Nats-Last-Sequence", 0)) != previous:
                raise LogError(f"a batched read on {self.settings.stream!r} lost messages", url=self.url)
            previous = int(headers["Nats-Sequence"])
            out.append(msg)
        raise LogError(
            f"a batched read on {self.settings.stream!r} ended early", url=self.url
        )  # pragma: no cover

    def note_skip(self, seq: int, level: int, text: str) -> None:
        """Log a skipped message once per message (later reads of it at DEBUG), never its payload."""
        if seq in self._skipped:
            level = logging.DEBUG
        else:
            if len(self._skipped) >= 4096:
                self._skipped.clear()
            self._skipped.add(seq)
        logger.log(level, "message seq=%d on stream %s %s", seq, self.settings.stream, text)

    async def join_parts(
        self, headers: dict[str, str] | None, data: bytes, *, subject: str | None = None
    ) -> bytes:
        """Return the whole body of a message that may have been published in parts.

        Args:
            headers: the message's headers.
            data: its body.
            subject: its subject, if known: its parts must then be where :meth:`publish` puts
                them for that subject.

        Raises:
            CodecError: the ``Skialith-Parts`` header is malformed.
            MissingPartError: a part is not on the stream (any more).
        """
        return await self._join(headers, data, subject, None)

    async def _join(
        self, headers: dict[str, str] | None, data: bytes, subject: str | None, held: _HeldParts | None
    ) -> bytes:
        value = headers.get(Header.PARTS.value) if headers else None
        if value is None:
            return data
        n, base = self.parse_parts(value, subject)
        chunks = []
        for i in range(n):
            part = f"{base}.{i}"
            chunk = held.pop(part) if held is not None else None
            if chunk is None:
                msg = await self._direct_get(json.dumps({"last_by_subj": part}).encode())
                if msg is None and clustered(self.nc) and await self._last_seq(part):
                    msg = await self._part_from_a_current_replica(part)
                if msg is None:
                    raise MissingPartError(f"part {i} of {base!r} is missing from the stream", url=self.url)
                chunk = msg.data
            chunks.append(chunk)
        return b"".join(chunks)

    async def _part_from_a_current_replica(self, part: str) -> Any:
        """A part the leader has and the replica that answered has not yet: ask again (any replica
        answers a direct get), up to ``publish_timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + self.settings.publish_timeout
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
            msg = await self._direct_get(json.dumps({"last_by_subj": part}).encode())
            if msg is not None:
                return msg
        return None

    def parse_parts(self, value: str, subject: str | None = None) -> tuple[int, str]:
        """Parse a ``Skialith-Parts`` header: ``"<n> <base>"``.

        Raises:
            CodecError: not ``n`` in 1..:data:`MAX_PARTS` and a base subject under this prefix
                (under ``subject``'s part subjects when given) without wildcards or empty tokens.
        """
        n_text, _, base = value.partition(" ")
        tokens = base.split(".")
        if subject is not None:
            expected = self.subjects.part_base(subject, "").split(".")
            ok_base = len(tokens) == len(expected) and tokens[:-1] == expected[:-1]
        else:
            ok_base = base.startswith(f"{self.subjects.prefix}.") and len(tokens) >= self._prefix_len + 2
        if not (
            n_text.isascii()
            and n_text.isdigit()
            and 1 <= int(n_text) <= MAX_PARTS
            and ok_base
            and all(t and t not in ("*", ">") and t.isprintable() and " " not in t for t in tokens)
        ):
            raise CodecError(f"malformed {Header.PARTS.value} header: {value[:100]!r}")
        return int(n_text), base

    async def purge(self, subject_filter: str, *, before_seq: int) -> None:
        """Remove the messages on ``subject_filter`` with a sequence below ``before_seq``."""
        await self.js.purge_stream(self.settings.stream, seq=before_seq, subject=subject_filter)

    async def identity(self, *, fresh: bool = False) -> StreamIdentity:
        """The stream's name and creation time, asked once and again only when it may have changed
        (a stream advisory or a reconnect; see :class:`identity.StreamWatch`), or when ``fresh``."""
        return await self._identity.get(fresh=fresh)

    async def stream_last_seq(self) -> int:
        info = await self.js.stream_info(self.settings.stream)
        return int(info.state.last_seq)


class _Refused(Exception):
    """A direct get answered with an error status (turned into our errors by Log.settle)."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(status, detail)
        self.status, self.detail = status, detail


class _Expired(Exception):
    """A lookup not answered within the publish timeout (turned into LogError by Log.settle)."""


class _Batch:
    """The answers to one :meth:`Log.lookup`, filled in as its replies come."""

    __slots__ = ("deadline", "future", "seqs", "tokens", "waiting")

    def __init__(self, n: int, deadline: float) -> None:
        self.future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self.seqs = [0] * n
        self.waiting = n
        self.tokens: list[bytes] = []
        self.deadline = deadline
        if n == 0:
            self.future.set_result([])


_SEQ = b"\r\nNats-Sequence:"


def _direct_reply(headers: bytes | None) -> tuple[str | None, str, int]:
    """(status, description, sequence) of a direct get's reply from its raw header block:
    ``NATS/1.0 404 Message Not Found`` or ``NATS/1.0`` and ``Name: value`` lines (the last
    ``Nats-Sequence``, as nats-py's header dict keeps the last). Read as nats-py parses them, without
    building the whole dict and message object."""
    if not headers:
        return "500", "a direct get reply without headers", 0
    end = headers.find(b"\r\n")
    line = headers if end < 0 else headers[:end]
    if line[8:9] == b" ":  # an inline status: NATS/1.0 <code> <description>
        status = line[9:12].decode("ascii", "replace")
        if status.isdigit():
            return status, line[13:].decode("utf-8", "replace").strip(), 0
    at = headers.rfind(_SEQ)
    if at < 0:
        return "500", "a direct get reply without Nats-Sequence", 0
    start = at + len(_SEQ)
    stop = headers.find(b"\r\n", start)
    try:
        return None, "", int(headers[start : stop if stop >= 0 else len(headers)])
    except ValueError:
        return "500", "a direct get reply with a malformed Nats-Sequence", 0


class _Lookups:
    """One reply subscription per connection for :meth:`Log.lookup`: reply subjects
    ``<inbox>.<token>`` map to (batch, index) until answered.

    Where nats-py has the internals :class:`_Acks` uses (a :class:`_Client`), the requests of one
    lookup go to the socket in one write, and the reading task hands each reply's raw headers to
    :meth:`deliver` (``_Client._process_msg``): no message object or header dict, no subscription
    queue and task in between; else nats-py's publish and a subscription callback do it. Either
    way no timer runs per lookup: one timer, at the oldest unanswered lookup's deadline, fails
    every lookup past its deadline with :class:`_Expired` and forgets the reply subjects of
    lookups given up on (cancelled).
    """

    def __init__(self, timeout: float) -> None:
        self.prefix: str | None = None
        self.timeout = timeout
        self._prefix = b""
        self._open: dict[bytes, tuple[_Batch, int]] = {}
        self._batches: dict[_Batch, None] = {}  # unanswered, oldest (earliest deadline) first
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0
        self._lock = asyncio.Lock()
        self._direct = False  # requests written and replies taken directly (see the class docstring)

    async def subscribe(self, nc: Client) -> None:
        async with self._lock:
            if self.prefix is None:
                prefix = nc.new_inbox()
                direct = isinstance(nc, _Client) and nc.own_publish
                if direct:
                    sub = await nc.subscribe(f"{prefix}.*")  # no callback: replies go to deliver()
                    assert isinstance(nc, _Client)
                    if nc.lookups is None:
                        nc.lookups = {}
                    nc.lookups[sub._id] = self.deliver
                else:
                    await nc.subscribe(f"{prefix}.*", cb=self._take)
                self._direct = direct
                self._prefix = (prefix + ".").encode()
                self.prefix = prefix + "."

    def batch(self, n: int) -> _Batch:
        loop = asyncio.get_running_loop()
        batch = _Batch(n, loop.time() + self.timeout)
        if n:
            self._batches[batch] = None
            if self._timer is None:
                self._timer = loop.call_at(batch.deadline, self._expire)
        return batch

    def _expire(self) -> None:
        """Fail the lookups past their deadline, forget those done, and wait for the next one."""
        self._timer = None
        now = asyncio.get_running_loop().time()
        while self._batches:
            batch = next(iter(self._batches))
            if batch.deadline > now and not batch.future.done():
                self._timer = asyncio.get_running_loop().call_at(batch.deadline, self._expire)
                return
            self._done(batch)
            if not batch.future.done():
                batch.future.set_exception(_Expired())

    def _done(self, batch: _Batch) -> None:
        """Forget ``batch``: answered, failed, or given up on (timed out, cancelled)."""
        self._batches.pop(batch, None)
        for token in batch.tokens:
            self._open.pop(token, None)

    def reply_to(self, batch: _Batch, index: int) -> str:
        """A new reply subject for answer ``index`` of ``batch``."""
        self._next += 1
        # unique (the count) and not guessable (random), as the PubAck inbox's tokens: a forged
        # reply must not be able to move where a read thinks a thread ends
        token = f"{self._next:x}{os.urandom(4).hex()}"
        key = token.encode()
        self._open[key] = (batch, index)
        batch.tokens.append(key)
        assert self.prefix is not None
        return self.prefix + token

    async def send(self, nc: Client, subject: str, batch: _Batch, asks: list[tuple[str, int | None]]) -> None:
        """Send the direct gets of ``asks``, replying to ``batch``."""
        requests = []
        for i, (subject_filter, after) in enumerate(asks):
            if after is None:
                req = b'{"last_by_subj":' + _json_str(subject_filter) + b"}"
            else:
                req = b'{"seq":%d,"next_by_subj":' % (after + 1) + _json_str(subject_filter) + b"}"
            requests.append((self.reply_to(batch, i), req))
        if self._direct and isinstance(nc, _Client):
            commands = b"".join(
                b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(req), req)
                for reply, req in requests
            )
            if nc.write_now(commands):  # nothing queued before them: one write
                nc.stats["out_msgs"] += len(requests)
                nc.stats["out_bytes"] += sum(len(req) for _, req in requests)
                return
        for reply, req in requests:  # behind queued commands, reconnecting, or another transport
            await nc.publish(subject, req, reply=reply)

    def deliver(self, subject: bytes, headers: bytes | None) -> None:
        """A reply, from the reading task: its raw subject and header block."""
        found = self._open.pop(subject[len(self._prefix) :], None)
        if found is not None:
            self._answer(found[0], found[1], *_direct_reply(headers))

    async def _take(self, msg: Any) -> None:
        """A reply, from nats-py's subscription task (the fallback of :meth:`deliver`)."""
        assert self.prefix is not None
        found = self._open.pop(msg.subject[len(self.prefix) :].encode(), None)
        if found is None:
            return  # a late reply to a lookup given up on
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None and "Nats-Sequence" not in headers:
            self._answer(found[0], found[1], "500", "a direct get reply without Nats-Sequence", 0)
            return
        try:
            seq = int(headers["Nats-Sequence"]) if status is None else 0
        except ValueError:  # as _direct_reply answers it: the read fails now, not at its deadline
            self._answer(found[0], found[1], "500", "a direct get reply with a malformed Nats-Sequence", 0)
            return
        self._answer(found[0], found[1], status, headers.get("Description", ""), seq)

    def _answer(self, batch: _Batch, index: int, status: str | None, detail: str, seq: int) -> None:
        future = batch.future
        if future.done():
            return  # a late reply to a lookup given up on
        if status is None:
            batch.seqs[index] = seq
        elif status != "404":
            self._done(batch)
            future.set_exception(_Refused(status, detail))
            return
        batch.waiting -= 1
        if batch.waiting == 0:
            self._done(batch)
            future.set_result(batch.seqs)

    def fail(self, exc: BaseException) -> None:
        """Fail every lookup still waiting (the connection is closing)."""
        batches, self._batches, self._open = self._batches, {}, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for batch in batches:
            if not batch.future.done():
                batch.future.set_exception(exc)


def _json_str(value: str) -> bytes:
    """``value`` as a JSON string (as ``json.dumps`` writes it)."""
    return encode_basestring_ascii(value).encode()


class _Replies:
    """Collects the replies to one batched direct get at a time (a callback: no task per message)."""

    def __init__(self) -> None:
        self.msgs: list[Any] = []
        self._done: asyncio.Future[None] | None = None

    def expect(self) -> asyncio.Future[None]:
        self.msgs = []
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    async def take(self, msg: Any) -> None:
        done = self._done
        if done is None or done.done():
            return  # a late reply to a request given up on
        self.msgs.append(msg)
        headers = msg.headers or {}
        if "Status" in headers or "Nats-Num-Pending" not in headers:  # the end, or an old server
            done.set_result(None)


class _HeldParts:
    """Parts met by a read before their final message, up to :data:`HELD_PARTS_BYTES` (oldest out)."""

    def __init__(self) -> None:
        self._parts: dict[str, bytes] = {}
        self._bytes = 0

    def add(self, subject: str, data: bytes) -> None:
        old = self._parts.pop(subject, None)
        if old is not None:
            self._bytes -= len(old)
        self._parts[subject] = data
        self._bytes += len(data)
        while self._bytes > HELD_PARTS_BYTES and self._parts:
            self._bytes -= len(self._parts.pop(next(iter(self._parts))))

    def pop(self, subject: str) -> bytes | None:
        data = self._parts.pop(subject, None)
        if data is not None:
            self._bytes -= len(data)
        return data


def _expect(headers: dict[str, str], expect: tuple[int, str] | None) -> dict[str, str]:
    if expect is not None:
        headers[Header.EXPECTED_LAST_SUBJECT_SEQ.value] = str(expect[0])
        headers[Header.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT.value] = expect[1]
    return headers
