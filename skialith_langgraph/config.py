"""Settings: explicit arguments, then ``SKIALITH_*`` environment variables, then local defaults.

The defaults match what ``skialith up`` starts: an embedded nats-server on
127.0.0.1:4322 (4222 is often taken by a system NATS) and SQLite under ``./.skialith/``.
That server requires the token ``skialith up`` keeps in ``./.skialith/nats.token``; a client
with no credentials of its own reads that file when every server in its URL is local.

Any other NATS server is reached with the credentials and TLS files given here (user and
password, token, NKey seed, creds file; a CA, a client certificate and key): see docs/security.md.
Settings are checked when they are built, before anything connects. Secrets never appear in
``repr``, in log lines or in error messages (:func:`safe_nats_url`).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, SubjectError
from .subjects import check_prefix

DEFAULT_NATS_PORT = 4322
DEFAULT_NATS_URL = f"nats://127.0.0.1:{DEFAULT_NATS_PORT}"
DEFAULT_HOME = ".skialith"
NATS_TOKEN_FILE = "nats.token"  # in the home of 'skialith up', mode 0600
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_DATABASE_URL = f"sqlite+aiosqlite:///./{DEFAULT_HOME}/skialith.db"
DEFAULT_STREAM = "SKIALITH"
DEFAULT_SUBJECT_PREFIX = "skialith"
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds
DEFAULT_PUBLISH_TIMEOUT = 5.0  # seconds
DEFAULT_READ_WAIT = 0.5  # seconds a read waits for the projector before reading the log
DEFAULT_DUPLICATE_WINDOW = 120.0  # seconds, JetStream's own default
DEFAULT_CHUNK_SIZE = 512 * 1024  # bytes; bodies above this travel in chunks
# a stream_max_bytes below this is refused: a few large checkpoints would fill it (see docs/retention.md)
MIN_STREAM_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Where Skialith connects and how it behaves.

    Attributes:
        nats_url: NATS server URL(s), comma separated.
        database_url: SQLAlchemy async URL of the read model.
        stream: JetStream stream name.
        subject_prefix: the first token(s) of every subject, e.g. ``skialith`` or
            ``acme.prod.skialith`` (NATS permissions are written on such hierarchies).
        connect_timeout: seconds to wait for NATS or the database at start-up.
        publish_timeout: seconds to wait for a PubAck before raising PublishError.
        read_wait: seconds a read waits for the projector before reading the log itself.
        replicas: stream replicas when Skialith creates the stream (1, or 3 on a cluster).
        chunk_size: bodies larger than this are published in chunks.
        nats_token: the token NATS requires (``skialith up`` generates one); ``None``: read
            ``./.skialith/nats.token`` if every server of ``nats_url`` is local. Never shown
            in ``repr``.
        retention_idle_ttl: seconds after its last write when a thread is deleted by the
            retention sweeper (``skialith gc``, or ``up``/``projector`` with a sweep interval);
            0: never.
        retention_keep_last: checkpoints per namespace the sweeper keeps of each thread (older
            ones are pruned; ``DeltaChannel`` ancestors of kept ones stay); 0: all.
        stream_max_age: seconds JetStream keeps a message (applied when Skialith creates or
            updates the stream); 0: unlimited. Older messages leave the log, applied or not.
        stream_max_bytes: size cap of the stream in bytes; 0: unlimited. When full, new writes
            are refused (discard new), never old acknowledged ones dropped.
        nats_user: NATS user name (or give ``nats://user:password@host`` in ``nats_url``).
        nats_password: the password of ``nats_user``. Never shown.
        nats_nkey_seed: an NKey user seed (``SU...``) or the path of a file holding one. Never shown.
        nats_creds: path of a ``.creds`` file (a user JWT and its NKey seed, as ``nsc`` writes).
        nats_tls_ca: path of the CA certificate(s) (PEM) that signed the server's certificate;
            setting it (or any ``nats_tls_*``, or a ``tls://`` URL) makes TLS required.
        nats_tls_cert: path of this client's certificate (PEM), for servers that verify clients.
        nats_tls_key: path of the key of ``nats_tls_cert`` (PEM).
    """

    nats_url: str = DEFAULT_NATS_URL
    database_url: str = DEFAULT_DATABASE_URL
    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT
    read_wait: float = DEFAULT_READ_WAIT
    replicas: int = 1
    chunk_size: int = DEFAULT_CHUNK_SIZE
    nats_token: str | None = field(default=None, repr=False)
    retention_idle_ttl: float = 0.0
    retention_keep_last: int = 0
    stream_max_age: float = 0.0
    stream_max_bytes: int = 0
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_nkey_seed: str | None = field(default=None, repr=False)
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.repr:
                value = None if value is None else "***"
            elif f.name == "nats_url":
                value = safe_nats_url(value)
            elif f.name == "database_url":
                value = safe_database_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def __post_init__(self) -> None:
        for name in ("retention_idle_ttl", "retention_keep_last", "stream_max_age", "stream_max_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: off), got {getattr(self, name)!r}")
        if 0 < self.stream_max_bytes < MIN_STREAM_MAX_BYTES:
            raise ConfigError(
                f"stream_max_bytes must be 0 (unlimited) or >= {MIN_STREAM_MAX_BYTES} bytes, got "
                f"{self.stream_max_bytes!r}: a full stream refuses every write until retention frees space"
            )
        for name in ("connect_timeout", "publish_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.read_wait < 0:
            raise ConfigError(f"read_wait must be >= 0 seconds, got {self.read_wait!r}")
        if self.replicas not in (1, 3, 5):
            raise ConfigError(f"replicas must be 1, 3 or 5, got {self.replicas!r}")
        if self.chunk_size < 1024:
            raise ConfigError(f"chunk_size must be >= 1024 bytes, got {self.chunk_size!r}")
        if not isinstance(self.stream, str) or not self.stream.isidentifier():
            raise ConfigError(f"stream must be a plain name like 'SKIALITH', got {self.stream!r}")
        try:
            check_prefix(self.subject_prefix)
        except SubjectError as exc:
            raise ConfigError(str(exc)) from exc
        self._check_nats_auth()

    def _check_nats_auth(self) -> None:
        """Refuse credentials that contradict each other (nats-py would silently pick one)."""
        if self.nats_password and not self.nats_user:
            raise ConfigError("nats_password is set without nats_user; set SKIALITH_NATS_USER too")
        in_url = any("@" in raw.partition("://")[2] for raw in self.nats_url.split(","))
        given = [
            name
            for name, value in (
                ("nats_user", self.nats_user),
                ("nats_token", self.nats_token),
                ("nats_nkey_seed", self.nats_nkey_seed),
                ("nats_creds", self.nats_creds),
            )
            if value
        ]
        if in_url:
            given.insert(0, "credentials in nats_url")
        if len(given) > 1:
            raise ConfigError(
                f"give NATS one way to authenticate, got {' and '.join(given)}; keep one of them"
            )
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ConfigError(
                "nats_tls_cert and nats_tls_key go together (a client certificate and its key); "
                f"got only {'nats_tls_cert' if self.nats_tls_cert else 'nats_tls_key'}"
            )

    @property
    def nats_tls_required(self) -> bool:
        """Whether the connection must be encrypted: a ``tls://`` URL or any ``nats_tls_*`` setting."""
        urls = [raw.strip().lower() for raw in self.nats_url.split(",")]
        return any(u.startswith("tls://") for u in urls) or any(
            (self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key)
        )

    def nats_auth_token(self) -> str | None:
        """The token to present to NATS: ``nats_token``, else the one ``skialith up`` keeps in
        ``./.skialith/nats.token`` when every server of ``nats_url`` is on this machine.

        Read at connect time, relative to the working directory (as the default SQLite file).
        """
        if self.nats_token:
            return self.nats_token
        if self.nats_user or self.nats_nkey_seed or self.nats_creds:
            return None  # other credentials
        if "@" in self.nats_url or not all(host in _LOCAL_HOSTS for host in nats_hosts(self.nats_url)):
            return None  # credentials in the URL, or a server elsewhere
        try:
            token = (Path(DEFAULT_HOME) / NATS_TOKEN_FILE).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return token or None

    def replace(self, **overrides: Any) -> Settings:
        """A copy with the given fields changed (``None`` values are ignored).

        Raises:
            ConfigError: an unknown field or a bad value.
        """
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from explicit overrides, then ``SKIALITH_*`` variables, then defaults.

        Overrides that are ``None`` are ignored, so callers can pass their optional arguments through.

        Raises:
            ConfigError: an override or variable has the wrong type or value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"SKIALITH_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _convert(f.type, raw)
            except ValueError as exc:
                raise ConfigError(f"SKIALITH_{f.name.upper()}={raw!r} is not a valid {f.type}") from exc
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def nats_hosts(nats_url: str) -> list[str]:
    """The host of each server in a comma-separated NATS URL (``127.0.0.1`` when left out)."""
    hosts = []
    for raw in nats_url.split(","):
        raw = raw.strip()
        parts = urllib.parse.urlsplit(raw if "://" in raw else f"nats://{raw}")
        hosts.append(parts.hostname or "127.0.0.1")
    return hosts


def safe_nats_url(nats_url: str) -> str:
    """``nats_url`` with any user, password or token in it replaced by ``***``, for messages."""
    shown = []
    for raw in nats_url.split(","):
        scheme, sep, rest = raw.partition("://")
        if not sep:
            scheme, rest = "", raw
        creds, at, where = rest.rpartition("@")
        shown.append(f"{scheme}{sep}***@{where}" if at and creds else raw)
    return ",".join(shown)


def safe_database_url(url: str) -> str:
    """``url`` with the password of its user replaced by ``***`` (the user name is kept)."""
    scheme, sep, rest = url.partition("://")
    creds, at, where = rest.rpartition("@")
    user, colon, _password = creds.partition(":")
    if not (sep and at and colon):
        return url
    return f"{scheme}{sep}{user}:***@{where}"


def _convert(type_name: Any, raw: str) -> Any:
    name = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    if name == "float":
        return float(raw)
    if name == "int":
        return int(raw)
    return raw
