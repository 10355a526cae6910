"""``Idempotency-Key`` for the sidecar's writes: a retry after a lost response writes nothing new.

Two layers, so that a retry is deduplicated whichever sidecar process it reaches:

1. **JetStream's duplicate window.** A write carrying a key is published with
   ``Nats-Msg-Id = "idem/<agent token>/<sha256(key)>"`` and a ``Skialith-Request-Digest`` header
   (sha256 of the canonical request). JetStream drops a second message with that id inside the
   stream's duplicate window (120 s by default, ``DEFAULT_DUPLICATE_WINDOW``) and answers with the
   sequence of the first: the sidecar reads that message's digest back and answers the first
   response (same body) or 409 (another body under the same key). This holds across sidecar
   restarts and replicas, since the state is the stream's.
2. **A per-process cache** of the responses of the last :data:`CACHE_SIZE` keys, for the same
   window, which also makes concurrent retries of one key wait for the first instead of racing.

After the window a retry is a new write. For SkialithAgent writes that is still harmless: the read
model keeps one row per ``(agent, step)`` / ``(agent, step, name)``, so a late retry leaves the
same state (one more message in the stream). Keys are scoped to the agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors

from ..errors import PublishError
from ..log import Header, Log
from .errors import ApiError

__all__ = ["DIGEST_HEADER", "KEY_MAX", "Idempotency", "digest", "publish_once"]

KEY_MAX = 200  # characters of an Idempotency-Key
CACHE_SIZE = 10_000  # keys whose responses one process remembers
DIGEST_HEADER = "Skialith-Request-Digest"


def digest(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (what a retry must repeat exactly)."""
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > KEY_MAX or not key.isprintable():
        raise ApiError(
            400,
            f"Idempotency-Key must be 1 to {KEY_MAX} printable characters, got {len(key)} characters; "
            "use a UUID per logical write",
        )
    return key


def msg_id(scope: str, key: str) -> str:
    return f"idem/{scope}/{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"


class Idempotency:
    """The per-process layer: remembered responses and in-flight writes, by (scope, key)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._done: OrderedDict[tuple[str, str], tuple[float, str, Any]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def run(
        self, scope: str, key: str | None, request_digest: str, write: Callable[[], Awaitable[Any]]
    ) -> Any:
        """``write()``'s result, or the remembered result of an earlier call with this key."""
        if key is None:
            return await write()
        slot = (scope, key)
        while (waiting := self._inflight.get(slot)) is not None:
            await asyncio.shield(waiting)
        found = self._done.get(slot)
        if found is not None and time.monotonic() - found[0] < self.window:
            if found[1] != request_digest:
                raise _conflict(key)
            return found[2]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[slot] = future
        try:
            result = await write()
            self._done[slot] = (time.monotonic(), request_digest, result)
            self._done.move_to_end(slot)
            while len(self._done) > CACHE_SIZE:
                self._done.popitem(last=False)
            return result
        finally:
            del self._inflight[slot]
            future.set_result(None)


def _conflict(key: str) -> ApiError:
    return ApiError(
        409,
        f"Idempotency-Key {key[:40]!r} was used for a different request; "
        "use a new key for a new write (a retry must repeat the same body)",
    )


async def publish_once(log: Log, subject: str, body: bytes, ident: str, request_digest: str, key: str) -> int:
    """Publish ``body`` once per ``ident`` within the duplicate window; the stream sequence of
    the stored message (the first one's, for a duplicate).

    Raises:
        ApiError: 409, the first message of ``ident`` carried another request digest.
        PublishError: no PubAck (the write may or may not be stored; retry with the same key).
    """
    headers = {Header.MSG_ID.value: ident, DIGEST_HEADER: request_digest}
    size = log.settings.chunk_size
    if len(body) > size:
        # parts live on subjects named by the body's digest: a duplicate part is the same bytes
        body_digest = hashlib.blake2b(size.to_bytes(8, "big") + body, digest_size=16).hexdigest()
        base = log.subjects.part_base(subject, body_digest)
        n = (len(body) + size - 1) // size
        for i in range(n):
            part_headers = {Header.MSG_ID.value: f"{ident}/{i}", Header.PART.value: "1"}
            await _js_publish(log, f"{base}.{i}", body[i * size : (i + 1) * size], part_headers)
        headers[Header.PARTS.value] = f"{n} {base}"
        body = b""
    seq, duplicate = await _js_publish(log, subject, body, headers)
    if duplicate:
        first = await _first_digest(log, seq)
        if first is not None and first != request_digest:
            raise _conflict(key)
    return seq


async def _first_digest(log: Log, seq: int) -> str | None:
    try:
        msg = await log.js.get_msg(log.settings.stream, seq, direct=True)
    except nats.js.errors.NotFoundError:
        return None  # purged since (a deleted agent): nothing to compare with
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as exc:
        raise PublishError(
            f"cannot read back the first write of an idempotency key at seq={seq}: {exc}; retry",
            url=log.url,
        ) from exc
    return (msg.headers or {}).get(DIGEST_HEADER)


async def _js_publish(log: Log, subject: str, body: bytes, headers: dict[str, str]) -> tuple[int, bool]:
    timeout = log.settings.publish_timeout
    try:
        # the write path's own PubAck inbox, as an agent's writes without a key take
        seq, duplicate = await log.publish_acked(subject, body, headers)
    except nats.errors.TimeoutError as exc:
        raise PublishError(
            f"no PubAck from NATS at {log.url!r} within {timeout} s for {subject!r}; the write may or "
            "may not be stored: retry with the same Idempotency-Key",
            url=log.url,
            subject=subject,
        ) from exc
    except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError, OSError) as exc:
        raise PublishError(
            f"NATS connection to {log.url!r} is closed ({type(exc).__name__}); retry with the same "
            "Idempotency-Key once it is back",
            url=log.url,
            subject=subject,
        ) from exc
    except nats.js.errors.APIError as exc:
        raise PublishError(f"JetStream refused {subject!r}: {exc}", url=log.url, subject=subject) from exc
    return seq, duplicate
