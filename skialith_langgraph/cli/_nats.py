"""The connection flags of commands that talk to NATS and the read model."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_NATS_URL,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
)

logger = logging.getLogger("skialith_langgraph.cli")

_NATS_FLAGS = (
    # (setting, metavar, help); each flag is --<setting with dashes>, each variable SKIALITH_<SETTING>
    (
        "nats_url",
        "URL",
        f"NATS URL(s), comma separated (default: $SKIALITH_NATS_URL, else {DEFAULT_NATS_URL})",
    ),
    ("nats_user", "USER", "NATS user name (default: $SKIALITH_NATS_USER)"),
    (
        "nats_password",
        "PASSWORD",
        "password of --nats-user (default: $SKIALITH_NATS_PASSWORD; prefer the variable: other "
        "local users can read a command line)",
    ),
    ("nats_token", "TOKEN", "NATS token (default: $SKIALITH_NATS_TOKEN; prefer the variable)"),
    (
        "nats_nkey_seed",
        "SEED_OR_FILE",
        "NKey user seed, or better the path of a file holding it (default: $SKIALITH_NATS_NKEY_SEED)",
    ),
    ("nats_creds", "FILE", "NATS .creds file, a user JWT and its seed (default: $SKIALITH_NATS_CREDS)"),
    (
        "nats_tls_ca",
        "FILE",
        "CA certificate(s) that signed the NATS server's certificate; makes TLS required "
        "(default: $SKIALITH_NATS_TLS_CA)",
    ),
    ("nats_tls_cert", "FILE", "client certificate for mutual TLS (default: $SKIALITH_NATS_TLS_CERT)"),
    ("nats_tls_key", "FILE", "key of --nats-tls-cert (default: $SKIALITH_NATS_TLS_KEY)"),
)


def add_nats_flags(parser: argparse.ArgumentParser) -> None:
    """Add the NATS connection flags (URL, credentials, TLS files) to a command that connects.

    Each flag overrides its ``SKIALITH_*`` variable; read them back with :func:`nats_overrides`.
    """
    group = parser.add_argument_group("NATS connection (see docs/security.md)")
    for name, metavar, help_text in _NATS_FLAGS:
        group.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, metavar=metavar, help=help_text
        )


def nats_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The NATS settings given as flags (``None`` where not given), for :meth:`Settings.from_env`."""
    return {name: getattr(args, name, None) for name, _, _ in _NATS_FLAGS}


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    add_nats_flags(parser)
    parser.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy async URL of the read model "
        f"(default: $SKIALITH_DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--stream", default=None, help=f"stream name (default: $SKIALITH_STREAM, else {DEFAULT_STREAM})"
    )
    parser.add_argument(
        "--subject-prefix",
        default=None,
        help="first subject token(s), e.g. acme.prod.skialith "
        f"(default: $SKIALITH_SUBJECT_PREFIX, else {DEFAULT_SUBJECT_PREFIX})",
    )
