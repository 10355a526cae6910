"""The write-ahead log: NATS JetStream. Connects, ensures the stream, publishes, reads back.

nats errors are translated here, at the boundary, into :mod:`skialith_langgraph.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from .config import Settings, safe_nats_url
from .errors import ConnectError, LogError, PublishError, StreamNotFoundError
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


WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when an expectation header does not hold


class ExpectationFailed(LogError):
    """Something else was written on the expected subjects in between (nothing was stored)."""


class MissingPartError(LogError):
    """A part of a large message is not on the stream (purged with its thread): it never will be."""


_AUTH_VIOLATION = "authorization violation"
_HINT = "start it with 'skialith up' or point SKIALITH_NATS_URL at a running nats-server with JetStream"


async def connect(settings: Settings) -> Client:
    """Connect to NATS within ``settings.connect_timeout`` seconds, with its token if it needs one.

    Raises:
        ConnectError: no server answered, or the server refused the credentials (at once, not
            after the timeout); the message names the URL (credentials masked) and what to do.
    """
    url = settings.nats_url
    shown = safe_nats_url(url)
    token = settings.nats_auth_token()
    denied: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    warned = False

    async def _error_cb(exc: Exception) -> None:
        nonlocal warned  # one warning per outage, the rest at DEBUG
        if _AUTH_VIOLATION in str(exc).lower() and not denied.done():
            denied.set_result(exc)
        logger.log(logging.DEBUG if warned else logging.WARNING, "NATS %s: %s", shown, exc)
        warned = True

    async def _reconnected_cb() -> None:
        nonlocal warned
        warned = False
        logger.info("reconnected to NATS %s", shown)

    attempt = asyncio.ensure_future(
        asyncio.wait_for(
            nats.connect(
                servers=url.split(","),
                connect_timeout=max(1, int(settings.connect_timeout)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=_error_cb,
                reconnected_cb=_reconnected_cb,
                name="skialith",
                skip_subject_validation=True,
                token=token,
            ),
            timeout=settings.connect_timeout,
        )
    )
    try:
        waiters: set[asyncio.Future[Any]] = {attempt, denied}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not attempt.done():  # refused: nats-py would retry until the timeout
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await attempt
            how = "the token it was given" if token else "no token"
            raise ConnectError(
                f"NATS at {shown!r} refused the connection (authorization violation) with {how}; "
                "set SKIALITH_NATS_TOKEN (or Settings(nats_token=...)) to the token of that server, "
                "e.g. the one 'skialith up' keeps in <home>/nats.token",
                url=shown,
            ) from denied.result()
        return attempt.result()
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise ConnectError(
            f"cannot reach NATS at {shown!r} within {settings.connect_timeout} s "
            f"({type(exc).__name__}: {exc}); {_HINT}",
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

    @classmethod
    async def open(cls, settings: Settings, *, ensure_stream: bool = False) -> Log:
        """Connect (and, if asked, ensure the stream, closing the connection when that fails)."""
        log = cls(settings, await connect(settings))
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
        if self._owned and not self.nc.is_closed:
            await self.nc.close()

    @property
    def url(self) -> str:
        return self.settings.nats_url

    async def ensure_stream(self) -> None:
        """Create the stream if missing (idempotent, cheap)."""
        if self._ready:
            return
        name = self.settings.stream
        try:
            await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=name,
                subjects=[self.subjects.all],
                storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                num_replicas=self.settings.replicas,
                allow_direct=True,
                duplicate_window=120.0,
            )
            try:
                await self.js.add_stream(config)
                logger.info("created stream %s for %s", name, self.subjects.all)
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
                "is JetStream enabled? 'skialith up' starts a server with it",
                url=self.url,
            ) from exc
        self._ready = True

    async def publish(
        self, subject: str, body: bytes, msg_id: str, *, expect: tuple[int, str] | None = None
    ) -> int:
        """Publish ``body`` and wait for the PubAck; returns the stream sequence.

        Bodies larger than ``settings.chunk_size`` are published as parts first, then a small
        message that names them, so any size fits under the server's ``max_payload``.

        Args:
            subject: where to publish.
            body: the message body.
            msg_id: the ``Nats-Msg-Id`` (JetStream drops a repeat inside its duplicate window).
            expect: ``(seq, subject_filter)``: store only if the last message on the filter has
                that sequence (0: none). Parts chain the expectation.

        Raises:
            PublishError: no PubAck within ``settings.publish_timeout`` seconds.
            ExpectationFailed: ``expect`` did not hold; the message was not stored (parts sent
                before may remain, referenced by nothing).
        """
        headers: dict[str, str] = {Header.MSG_ID.value: msg_id}
        if len(body) > self.settings.chunk_size:
            digest = hashlib.blake2b(body, digest_size=16).hexdigest()
            base = self.subjects.part_base(subject, digest)
            size = self.settings.chunk_size
            n = (len(body) + size - 1) // size
            for i in range(n):
                part_headers = {Header.MSG_ID.value: f"{base}.{i}", Header.PART.value: "1"}
                seq = await self._publish(
                    f"{base}.{i}", body[i * size : (i + 1) * size], _expect(part_headers, expect)
                )
                if expect is not None:
                    expect = (seq, expect[1])
            headers[Header.PARTS.value] = f"{n} {base}"
            body = b""
        return await self._publish(subject, body, _expect(headers, expect))

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            ack = await self.js.publish(subject, body, timeout=self.settings.publish_timeout, headers=headers)
        except nats.errors.TimeoutError as exc:
            raise PublishError(
                f"no PubAck from NATS at {self.url!r} within {self.settings.publish_timeout} s "
                f"for {subject!r}; the write may or may not be stored. Is the server up? {_HINT}",
                url=self.url,
                subject=subject,
            ) from exc
        except nats.js.errors.NoStreamResponseError as exc:
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
        return int(ack.seq)

    async def last_seq(self, *filters: str) -> int:
        """The stream sequence of the last message on any of ``filters`` (0 if none)."""
        return max(await self.last_seqs(*filters), default=0)

    async def last_seqs(self, *filters: str) -> list[int]:
        """The stream sequence of the last message on each of ``filters`` (0 where none)."""
        if len(filters) == 1:
            return [await self._last_seq(filters[0])]
        return list(await asyncio.gather(*(self._last_seq(f) for f in filters)))

    async def _last_seq(self, subject_filter: str) -> int:
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
            raise LogError(
                f"NATS at {self.url!r} did not answer a read within "
                f"{self.settings.publish_timeout} s; {_HINT}",
                url=self.url,
            ) from exc
        except nats.errors.NoRespondersError as exc:
            raise StreamNotFoundError(
                f"stream {self.settings.stream!r} not found at {self.url!r} "
                "(or direct get is off); call setup()",
                url=self.url,
            ) from exc
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
        msg = await self._direct_get(json.dumps({"seq": after + 1, "next_by_subj": subject_filter}).encode())
        return int(msg.headers["Nats-Sequence"]) if msg is not None and msg.headers else 0

    async def read(
        self, subject_filter: str, *, start_seq: int = 1, until_seq: int | None = None
    ) -> AsyncIterator[LogMsg]:
        """Yield the messages on ``subject_filter`` in stream order, parts joined, parts skipped."""
        seq = max(1, start_seq)
        while until_seq is None or seq <= until_seq:
            req = json.dumps({"seq": seq, "next_by_subj": subject_filter}).encode()
            msg = await self._direct_get(req)
            if msg is None:
                return
            found = int(msg.headers["Nats-Sequence"])
            if until_seq is not None and found > until_seq:
                return
            seq = found + 1
            if msg.headers.get(Header.PART.value):
                continue
            body = await self.join_parts(msg.headers, msg.data)
            yield LogMsg(seq=found, subject=msg.headers["Nats-Subject"], body=body)

    async def join_parts(self, headers: dict[str, str] | None, data: bytes) -> bytes:
        """Return the whole body of a message that may have been published in parts."""
        parts = headers.get(Header.PARTS.value) if headers else None
        if not parts:
            return data
        n_text, base = parts.split(" ", 1)
        chunks = []
        for i in range(int(n_text)):
            req = json.dumps({"last_by_subj": f"{base}.{i}"}).encode()
            msg = await self._direct_get(req)
            if msg is None:
                raise MissingPartError(f"part {i} of {base!r} is missing from the stream", url=self.url)
            chunks.append(msg.data)
        return b"".join(chunks)

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


def _expect(headers: dict[str, str], expect: tuple[int, str] | None) -> dict[str, str]:
    if expect is not None:
        headers[Header.EXPECTED_LAST_SUBJECT_SEQ.value] = str(expect[0])
        headers[Header.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT.value] = expect[1]
    return headers
