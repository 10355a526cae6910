"""The Skialith sidecar: an HTTP API (FastAPI on uvicorn) over the stream and the read model.

``skialith serve`` runs it; :func:`create_app` builds the ASGI app; docs/sidecar.md describes the
API and docs/lss.md the specification it implements. The web stack is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .defaults import DEFAULT_HOST, DEFAULT_MAX_BODY, DEFAULT_PORT, TOKEN_ENV

if TYPE_CHECKING:
    from .app import create_app
    from .state import Limits

__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_BODY", "DEFAULT_PORT", "TOKEN_ENV", "Limits", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Limits":
        from .state import Limits

        return Limits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
