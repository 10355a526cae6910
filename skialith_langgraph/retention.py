"""Retention: a sweeper that deletes idle threads and prunes old checkpoints through the log.

Two policies (both off by default; see ``docs/retention.md`` for why a sweeper and not
JetStream's per-message TTL):

* **Idle TTL** (``retention_idle_ttl`` seconds): a thread whose last message on the stream is
  older than that is deleted, as ``delete_thread`` deletes it: a tombstone the projector applies
  (rows and traces go), then the thread's older messages are purged from the stream.
* **Keep last N** (``retention_keep_last``): of a thread with more than N checkpoints in a
  namespace, the older ones are pruned, as ``prune`` does (the N latest stay, with the
  ``DeltaChannel`` ancestors they need; the superseded messages leave the stream).

Safe against writers: a thread is judged idle at its last stream sequence, and its delete is
published with that sequence as an expectation (``Nats-Expected-Last-Subject-Sequence`` on the
thread's subjects), so JetStream stores it only if nothing was written on the thread since; a
prune is planned and published the same way (see ``SkialithCheckpointer.prune``). A thread
written during the sweep is skipped, never deleted. Each pass looks at most ``limit`` threads per
policy, oldest (idle) or largest (keep-last) first; the next pass goes on.

Candidates come from the read model (which threads exist, roughly how old); the decision is the
stream's (the last message's sequence and server timestamp). Deletes need no key to encrypted
state; keep-last plans read the checkpoints' channel versions and so need the serializer that
wrote them (with ``EncryptedSerializer``, ``LANGGRAPH_AES_KEY`` in the sweeper's environment).

Example:
    >>> sweeper = Sweeper(Settings(retention_idle_ttl=7 * 86400, retention_keep_last=20))  # doctest: +SKIP
    >>> report = await sweeper.sweep(dry_run=True)  # doctest: +SKIP
    >>> await sweeper.close()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol

from .checkpointer import _Core
from .codec import strict_serde
from .config import Settings
from .errors import ConfigError
from .log import ExpectationFailed, Log
from .readmodel import queries
from .subjects import token
from .views import ReadStats

logger = logging.getLogger(__name__)

DEFAULT_SWEEP_INTERVAL = 60.0  # seconds between passes of the periodic sweeper
DEFAULT_SWEEP_LIMIT = 500  # threads looked at per policy and pass
PRUNE_ATTEMPTS = 3  # plans of one keep-last prune before the pass leaves a busy thread for later
_AES_KEY_VARIABLE = "LANGGRAPH_AES_KEY"


@dataclass(slots=True)
class LastMessage:
    """The last message on a thread's subjects: its sequence, subject and server time (epoch s)."""

    seq: int
    subject: str
    time: float


@dataclass(slots=True)
class SweepReport:
    """What one pass did (or, with ``dry_run``, would do)."""

    dry_run: bool
    deleted: list[str] = field(default_factory=list)  # thread ids deleted as idle
    pruned: list[tuple[str, int]] = field(default_factory=list)  # (thread id, checkpoints removed)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (thread id, why)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable lines, one per thread."""
        verb = ("would delete", "would prune") if self.dry_run else ("deleted", "pruned")
        out = [f"{verb[0]} idle thread {t!r}" for t in self.deleted]
        out += [f"{verb[1]} {n} checkpoint(s) of thread {t!r}" for t, n in self.pruned]
        out += [f"skipped thread {t!r}: {why}" for t, why in self.skipped]
        return out


def default_serde() -> SerializerProtocol:
    """The sweeper's serializer: strict, wrapped in LangGraph's ``EncryptedSerializer`` when
    ``LANGGRAPH_AES_KEY`` is set (it reads unencrypted values as they are)."""
    serde: SerializerProtocol = strict_serde()
    if os.environ.get(_AES_KEY_VARIABLE):
        from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

        serde = EncryptedSerializer.from_pycryptodome_aes(serde=serde)
    return serde


def _epoch(stamp: str) -> float:
    """JetStream's RFC 3339 timestamp (nanoseconds, ``Z``) as epoch seconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return base + (float(f"0.{frac}") if frac else 0.0)


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def last_message(log: Log, subject_filter: str) -> LastMessage | None:
    """The last message on ``subject_filter`` (one direct get), or None when there is none."""
    msg = await log._direct_get(json.dumps({"last_by_subj": subject_filter}).encode())
    if msg is None or not msg.headers:
        return None
    headers = msg.headers
    return LastMessage(
        int(headers["Nats-Sequence"]), headers["Nats-Subject"], _epoch(headers["Nats-Time-Stamp"])
    )


async def first_seq_since(log: Log, epoch: float) -> int:
    """The sequence of the stream's first message stored at or after ``epoch`` (the stream's last
    sequence + 1 when there is none): every message before it is older."""
    msg = await log._direct_get(json.dumps({"start_time": _rfc3339(epoch)}).encode())
    if msg is None or not msg.headers:
        return await log.stream_last_seq() + 1
    return int(msg.headers["Nats-Sequence"])


class Sweeper:
    """Applies the retention policies of ``settings`` (or the overrides given here).

    Args:
        settings: where to connect; ``retention_idle_ttl`` and ``retention_keep_last`` are the
            policies unless ``idle_ttl`` / ``keep_last`` are given.
        idle_ttl: seconds; 0 turns the idle policy off.
        keep_last: checkpoints kept per namespace; 0 turns the policy off.
        limit: threads looked at per policy and pass.
        serde: the serializer keep-last plans read checkpoints with (see :func:`default_serde`).

    Raises:
        ConfigError: a negative policy or a limit below 1.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        idle_ttl: float | None = None,
        keep_last: int | None = None,
        limit: int = DEFAULT_SWEEP_LIMIT,
        serde: SerializerProtocol | None = None,
    ) -> None:
        self.idle_ttl = settings.retention_idle_ttl if idle_ttl is None else float(idle_ttl)
        self.keep_last = settings.retention_keep_last if keep_last is None else int(keep_last)
        if self.idle_ttl < 0 or self.keep_last < 0:
            raise ConfigError(
                f"idle_ttl and keep_last must be >= 0, got {self.idle_ttl!r}, {self.keep_last!r}"
            )
        if limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit!r}")
        self.settings = settings
        self.limit = limit
        self._serde = serde
        self._core: _Core | None = None

    @property
    def active(self) -> bool:
        """Whether any policy is on."""
        return self.idle_ttl > 0 or self.keep_last > 0

    async def _open(self) -> _Core:
        if self._core is None:
            core = _Core(self.settings, self._serde or default_serde(), ReadStats())
            try:
                await core.setup()
            except BaseException:
                await core.close()
                raise
            self._core = core
        return self._core

    async def close(self) -> None:
        core, self._core = self._core, None
        if core is not None:
            await core.close()

    async def sweep(self, *, dry_run: bool = False) -> SweepReport:
        """One pass: delete idle threads, then prune the others down to ``keep_last``.

        Raises:
            SkialithError: NATS or the database cannot be used.
        """
        report = SweepReport(dry_run=dry_run)
        core = await self._open()
        if self.idle_ttl > 0:
            await self._sweep_idle(core, report, dry_run)
        if self.keep_last > 0:
            await self._sweep_keep_last(core, report, dry_run, set(report.deleted))
        return report

    async def _sweep_idle(self, core: _Core, report: SweepReport, dry_run: bool) -> None:
        log = await core._log()
        cutoff = time.time() - self.idle_ttl
        before_seq = await first_seq_since(log, cutoff)
        async with core.model.connect() as conn:
            candidates = await queries.idle_candidates(conn, before_seq=before_seq, limit=self.limit)
        for thread_id, _ in candidates:
            tk = token(thread_id, field="thread_id")
            last = await last_message(log, log.subjects.thread(tk))
            if last is not None and last.subject == log.subjects.thread_op(tk, "delete"):
                continue  # deleted already; the projector has not applied it yet
            if last is not None and last.time >= cutoff:
                report.skipped.append((thread_id, f"written {time.time() - last.time:.1f} s ago"))
                continue
            if not dry_run:
                try:
                    await core.delete_thread(thread_id, expect_seq=last.seq if last else 0)
                except ExpectationFailed:
                    report.skipped.append((thread_id, "written during the sweep; kept"))
                    continue
            report.deleted.append(thread_id)

    async def _sweep_keep_last(
        self, core: _Core, report: SweepReport, dry_run: bool, deleted: set[str]
    ) -> None:
        async with core.model.connect() as conn:
            candidates = await queries.over_keep_last(conn, keep=self.keep_last, limit=self.limit)
        for thread_id, _ in candidates:
            if thread_id in deleted:
                continue
            try:
                if dry_run:
                    async with core.view(thread_id) as conn:
                        plan = await queries.prune_plan(
                            conn, core.serde, thread_id, "keep_latest", keep=self.keep_last
                        )
                        removed = await queries.checkpoint_count(conn, thread_id) - len(set(plan.keep))
                else:
                    removed = await core._prune_keep_latest(
                        thread_id, self.keep_last, attempts=PRUNE_ATTEMPTS
                    )
            except ExpectationFailed:
                report.skipped.append((thread_id, "written during the sweep; pruned by a later pass"))
                continue
            except (NotImplementedError, ValueError, TypeError, KeyError) as exc:
                # the checkpoints cannot be read with this serializer (encrypted, without the key)
                report.skipped.append(
                    (
                        thread_id,
                        f"cannot read its checkpoints ({type(exc).__name__}: {exc}); keep-last needs "
                        f"the serializer that wrote them (encrypted state: set {_AES_KEY_VARIABLE})",
                    )
                )
                continue
            if removed > 0:
                report.pruned.append((thread_id, removed))

    async def run(self, stop: asyncio.Event, *, interval: float = DEFAULT_SWEEP_INTERVAL) -> None:
        """Sweep every ``interval`` seconds until ``stop`` is set; a failed pass is logged and retried."""
        while not stop.is_set():
            try:
                report = await self.sweep()
            except Exception as exc:  # NATS or the database down: the next pass tries again
                logger.warning(
                    "retention sweep failed (%s: %s); next pass in %s s", type(exc).__name__, exc, interval
                )
            else:
                if report.deleted or report.pruned:
                    logger.info(
                        "retention: deleted %d idle thread(s), pruned %d thread(s), skipped %d",
                        len(report.deleted),
                        len(report.pruned),
                        len(report.skipped),
                    )
                for thread_id, why in report.skipped:
                    logger.debug("retention skipped thread %r: %s", thread_id, why)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
