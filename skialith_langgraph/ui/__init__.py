"""The web viewer (``skialith ui``): threads, a thread's branch tree, state and diffs, node timings,
drift and lineage in a browser, over :class:`~skialith_langgraph.inspect.Inspector`.

Example:
    >>> from skialith_langgraph.ui import create_app
    >>> app = create_app(Settings.from_env())  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8765), or host_app.mount("/ui", app)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .security import TOKEN_ENV, UiError, check_bind, is_loopback

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["TOKEN_ENV", "UiError", "check_bind", "create_app", "is_loopback"]


def __getattr__(name: str) -> Any:
    # the app (Starlette) is imported when used, not when the skialith command builds its parser
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
