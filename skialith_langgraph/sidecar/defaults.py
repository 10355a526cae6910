"""The sidecar's defaults, importable without the web stack (the ``skialith`` parser uses them)."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8322
DEFAULT_MAX_BODY = 8 * 1024 * 1024  # bytes of a request body
TOKEN_ENV = "SKIALITH_API_TOKEN"
