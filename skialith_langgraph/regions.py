"""Two regions: a mirror of the stream in a second region, and its promotion when the first is lost.

NATS does the replication: region B's stream is a JetStream *mirror* of region A's, fed
asynchronously over a leaf node connection between the two (each region its own JetStream
domain, see docs/production.md, Two regions). A mirror keeps the origin's sequence numbers, so
region B's projector fills its own read model from it exactly as A's does, and readers in B see
what was replicated.

``skialith mirror --source-domain A`` (:func:`create_mirror`), run against region B, creates the
mirror. ``skialith promote`` (:func:`promote`), run against region B after region A is lost,
removes the mirror configuration (nats-server >= 2.12 allows it) and gives the stream the
deployment's subjects: from then on B takes writes, and agents resume there from the last step
that was replicated. Writes acknowledged by A and not yet mirrored are lost (the RPO, measured by
tests/test_cluster_regions.py). Failback is documented, not automated: see docs/production.md.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import ExternalStream, RetentionPolicy, StorageType, StreamConfig, StreamSource

from .config import DEFAULT_DUPLICATE_WINDOW, Settings
from .errors import ConfigError, LogError
from .log import Log

__all__ = ["create_mirror", "mirror_state", "promote", "register"]

logger = logging.getLogger(__name__)


def _api(domain: str) -> str:
    if not domain or not all(c.isalnum() or c in "-_" for c in domain):
        raise ConfigError(f"a JetStream domain is a name like 'region-a', got {domain!r}")
    return f"$JS.{domain}.API"


async def create_mirror(settings: Settings, source_domain: str) -> StreamConfig:
    """Create ``settings.stream`` on the region ``settings.nats_url`` points at as a mirror of the
    stream of the same name in JetStream domain ``source_domain``. Idempotent.

    Raises:
        ConfigError: ``source_domain`` is not a domain name.
        LogError: the stream exists and is not that mirror, or JetStream refused.
    """
    api = _api(source_domain)
    log = await Log.open(settings)
    try:
        try:
            info = await log.js.stream_info(settings.stream)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            mirror = info.config.mirror
            if mirror is None or mirror.external is None or mirror.external.api != api:
                raise LogError(
                    f"stream {settings.stream!r} at {log.url!r} exists and is not a mirror of domain "
                    f"{source_domain!r}; delete it first, or point SKIALITH_NATS_URL at the other region",
                    url=log.url,
                )
            return info.config
        config = StreamConfig(
            name=settings.stream,
            mirror=StreamSource(name=settings.stream, external=ExternalStream(api=api)),
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            num_replicas=settings.replicas,
            allow_direct=True,  # readers in this region read the mirror, before and after a promotion
            duplicate_window=DEFAULT_DUPLICATE_WINDOW,
        )
        try:
            created = await log.js.add_stream(config)
        except nats.js.errors.APIError as exc:
            raise LogError(f"cannot create the mirror {settings.stream!r} at {log.url!r}: {exc}") from exc
        logger.info("created %s at %s as a mirror of domain %s", settings.stream, log.url, source_domain)
        return created.config
    finally:
        await log.close()


async def mirror_state(settings: Settings) -> dict[str, Any]:
    """The mirror's last sequence and NATS's own view of its lag (messages, and seconds since it
    last heard from the origin): what ``skialith promote --dry-run`` prints."""
    log = await Log.open(settings)
    try:
        info = await log.js.stream_info(settings.stream)
    finally:
        await log.close()
    out: dict[str, Any] = {"stream": settings.stream, "last_seq": info.state.last_seq, "mirror": None}
    if info.mirror is not None:
        out["mirror"] = {"name": info.mirror.name, "lag": info.mirror.lag, "active": info.mirror.active}
    return out


async def promote(settings: Settings) -> StreamConfig:
    """Make the mirror ``settings.stream`` a writable stream: remove its mirror configuration and
    give it the subjects of ``settings.subject_prefix``. Idempotent (a promoted stream is left as
    it is).

    Run it only once the origin region is lost or fenced: both streams taking the same subjects
    over a connection between the regions would store every write twice.

    Raises:
        LogError: the stream is missing, or the server refuses (older than 2.12).
    """
    log = await Log.open(settings)
    try:
        try:
            info = await log.js.stream_info(settings.stream)
        except nats.js.errors.NotFoundError as exc:
            raise LogError(f"no stream {settings.stream!r} at {log.url!r} to promote", url=log.url) from exc
        config = info.config
        if config.mirror is None:
            logger.info("stream %s is not a mirror: nothing to promote", settings.stream)
            return config
        config.mirror = None
        config.subjects = [log.subjects.all]
        config.allow_direct = True
        try:
            updated = await log.js.update_stream(config)
        except (nats.js.errors.APIError, nats.errors.TimeoutError) as exc:
            raise LogError(
                f"cannot promote {settings.stream!r} at {log.url!r} ({exc}); removing a mirror's "
                "configuration needs nats-server 2.12 or later",
                url=log.url,
            ) from exc
        logger.warning("promoted %s at %s: it now takes %s", settings.stream, log.url, log.subjects.all)
        return updated.config
    finally:
        await log.close()


def register(commands: Any) -> None:
    """Add ``skialith mirror`` and ``skialith promote`` to the ``skialith`` parser's subcommands."""
    from .cli._common import add_command  # the cli package imports this module
    from .cli._nats import _connection_flags

    mirror = add_command(
        commands,
        "mirror",
        _mirror,
        help="make this region's stream a mirror of another's",
        description="Create the stream (SKIALITH_STREAM) on the NATS of this region (SKIALITH_NATS_URL) "
        "as an asynchronous JetStream mirror of the stream of the same name in JetStream domain "
        "--source-domain, reached over a leaf node connection. See docs/production.md, Two regions.",
        log_level="INFO",
    )
    _connection_flags(mirror)
    mirror.add_argument("--source-domain", required=True, help="the JetStream domain of the origin region")
    mirror.add_argument(
        "--replicas", type=int, choices=[1, 3, 5], default=None, help="replicas of the mirror"
    )
    prom = add_command(
        commands,
        "promote",
        _promote,
        help="failover: make this region's mirror writable",
        description="Remove the mirror configuration of the stream on the NATS of this region and give "
        "it the deployment's subjects, so that writes go to it (nats-server >= 2.12). Run it after the "
        "origin region is lost or fenced. --dry-run prints the mirror's state (lag) only.",
        log_level="INFO",
    )
    _connection_flags(prom)
    prom.add_argument("--dry-run", action="store_true", help="print the mirror's state, change nothing")


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    from .cli import nats_overrides  # the shared connection flags

    return Settings.from_env(
        database_url=getattr(args, "database_url", None),
        stream=getattr(args, "stream", None),
        subject_prefix=getattr(args, "subject_prefix", None),
        **nats_overrides(args),
        **extra,
    )


async def _mirror(args: argparse.Namespace) -> int:
    settings = _settings(args, replicas=args.replicas)
    config = await create_mirror(settings, args.source_domain)
    print(f"stream {config.name} mirrors {args.source_domain}:{settings.stream}", flush=True)
    return 0


async def _promote(args: argparse.Namespace) -> int:
    settings = _settings(args)
    state = await mirror_state(settings)
    print(f"before: {state}", flush=True)
    if args.dry_run:
        return 0
    config = await promote(settings)
    print(f"promoted: stream {config.name} takes {', '.join(config.subjects or [])}", flush=True)
    return 0
