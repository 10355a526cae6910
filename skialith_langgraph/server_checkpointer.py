"""The checkpointer of LangGraph's Agent Server (``langgraph dev``, ``langgraph up``, the API image).

The server loads a custom checkpointer named in ``langgraph.json``, enters it as an async context
manager when it starts and leaves it when it stops::

    {
      "graphs": {"agent": "./agent.py:graph"},
      "checkpointer": {"path": "skialith_langgraph.server_checkpointer.checkpointer"}
    }

(langgraph-api 0.16.7 imports a module path by its *last dot*, so the dotted form above works
and ``module:function`` does not; a file path ``./file.py:function`` works too.)

:func:`checkpointer` builds a :class:`SkialithCheckpointer` from the ``SKIALITH_*`` environment
(``Settings.from_env``), creates the stream and the tables (``asetup``), yields it, and closes it.

Thread TTL: the server's thread TTL (``"checkpointer": {"ttl": {...}}`` in ``langgraph.json``, which
the server passes on in ``LANGGRAPH_CHECKPOINTER``, or ``LANGGRAPH_THREAD_TTL``, which wins, as in
the server) becomes Skialith's retention:

- ``"strategy": "delete"`` (the default) with ``"default_ttl": M`` minutes: ``retention_idle_ttl``
  = M * 60 seconds (a thread idle that long is deleted from the stream and the read model);
- ``"strategy": "keep_latest"``: ``retention_keep_last`` = 1 (every thread keeps only its latest
  checkpoint; Skialith applies it to all threads, not only to those idle past ``default_ttl``).

``SKIALITH_RETENTION_IDLE_TTL`` / ``SKIALITH_RETENTION_KEEP_LAST`` set in the environment win over
the mapping. ``sweep_interval_minutes`` and ``sweep_limit`` belong to the server's own sweeper
and are not mapped. See ``docs/agent-server.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from .checkpointer import SkialithCheckpointer
from .config import Settings, safe_nats_url
from .errors import ConfigError
from .readmodel import safe_url

__all__ = ["checkpointer", "retention_from_ttl", "server_settings", "server_ttl"]

log = logging.getLogger(__name__)

SERVER_TTL_ENV = "LANGGRAPH_THREAD_TTL"
"""The server's thread TTL: minutes, or a JSON object like the ``ttl`` of ``langgraph.json``."""
SERVER_CHECKPOINTER_ENV = "LANGGRAPH_CHECKPOINTER"
"""The ``checkpointer`` object of ``langgraph.json``, as JSON (``langgraph dev`` sets it)."""

IDLE_TTL = "retention_idle_ttl"  # Settings field: seconds a thread may stay idle, 0 = off
KEEP_LAST = "retention_keep_last"  # Settings field: checkpoints kept per thread, 0 = off
STRATEGIES = ("delete", "keep_latest")


def server_ttl(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The server's thread TTL configuration, read as langgraph-api reads it.

    ``LANGGRAPH_THREAD_TTL`` first (a number of minutes means ``{"strategy": "delete",
    "default_ttl": minutes}``; or a JSON object), else the ``ttl`` of ``LANGGRAPH_CHECKPOINTER``.

    Raises:
        ConfigError: either variable is not valid JSON / not a number, or ``ttl`` is not an object.
    """
    env = os.environ if environ is None else environ
    raw = env.get(SERVER_TTL_ENV, "").strip()
    if raw:
        if raw.startswith("{"):
            return _json_object(SERVER_TTL_ENV, raw)
        try:
            return {"strategy": "delete", "default_ttl": float(raw)}
        except ValueError as exc:
            raise ConfigError(
                f"{SERVER_TTL_ENV}={raw!r} is neither minutes nor a JSON object like "
                '{"strategy": "delete", "default_ttl": 60}'
            ) from exc
    raw = env.get(SERVER_CHECKPOINTER_ENV, "").strip()
    if not raw:
        return None
    ttl = _json_object(SERVER_CHECKPOINTER_ENV, raw).get("ttl")
    if ttl is None:
        return None
    if not isinstance(ttl, dict):
        raise ConfigError(f'"ttl" of the checkpointer in langgraph.json must be an object, got {ttl!r}')
    return ttl


def retention_from_ttl(ttl: Mapping[str, Any] | None) -> dict[str, float | int]:
    """Skialith's retention settings for the server's thread TTL (empty: no retention).

    Raises:
        ConfigError: an unknown strategy, or a TTL that is not a number >= 0.
    """
    if not ttl:
        return {}
    strategy = ttl.get("strategy") or "delete"
    if strategy not in STRATEGIES:
        raise ConfigError(f"thread TTL strategy must be one of {STRATEGIES}, got {strategy!r}")
    minutes = ttl.get("ttl", ttl.get("default_ttl"))
    if minutes is None:
        return {}  # TTLs given per thread only: the server keeps those, Skialith cannot see them
    try:
        seconds = float(minutes) * 60.0
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"thread TTL default_ttl must be minutes, got {minutes!r}") from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"thread TTL default_ttl must be minutes >= 0, got {minutes!r}")
    if seconds == 0:
        return {}
    if strategy == "delete":
        return {IDLE_TTL: seconds}
    return {KEEP_LAST: 1}


def server_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """``Settings.from_env`` plus the retention the server's thread TTL asks for.

    A ``SKIALITH_RETENTION_*`` variable that is set wins over the mapping. A Skialith without
    retention settings logs a warning and runs without retention.

    Raises:
        ConfigError: a bad ``SKIALITH_*`` variable or server TTL.
    """
    env = os.environ if environ is None else environ
    settings = Settings.from_env(env)
    mapped = retention_from_ttl(server_ttl(env))
    known = {f.name for f in dataclasses.fields(Settings)}
    unsupported = sorted(name for name in mapped if name not in known)
    if unsupported:
        log.warning(
            "the Agent Server's thread TTL asks for %s, which this Skialith does not support; "
            "threads are kept",
            ", ".join(f"{name}={mapped[name]!r}" for name in unsupported),
        )
    overrides = {
        name: value
        for name, value in mapped.items()
        if name in known and not env.get(f"SKIALITH_{name.upper()}", "").strip()
    }
    return settings.replace(**overrides)


def _retention_text(settings: Settings) -> str:
    idle = getattr(settings, IDLE_TTL, 0) or 0
    keep = getattr(settings, KEEP_LAST, 0) or 0
    parts = ([f"idle TTL {idle:g} s"] if idle else []) + ([f"keep last {keep}"] if keep else [])
    return ", ".join(parts) or "off"


@asynccontextmanager
async def checkpointer() -> AsyncIterator[SkialithCheckpointer]:
    """The Agent Server's checkpointer: a :class:`SkialithCheckpointer` from the ``SKIALITH_*``
    environment and the server's thread TTL, set up (stream and tables) before the server takes
    requests and closed when it stops.

    Raises:
        ConfigError: a bad ``SKIALITH_*`` variable or server TTL.
        LogError, ReadModelError: NATS or the database cannot be reached at start-up.
    """
    settings = server_settings()
    saver = SkialithCheckpointer(settings=settings)
    try:
        await saver.asetup()
        log.info(
            "Skialith checkpointer for the Agent Server: NATS %s, stream %s, read model %s, retention %s",
            safe_nats_url(settings.nats_url),
            settings.stream,
            safe_url(settings.database_url),
            _retention_text(settings),
        )
        yield saver
    finally:
        await saver.aclose()


def _json_object(name: str, raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {raw!r}")
    return value
