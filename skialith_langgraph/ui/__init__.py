"""The web viewer (``skialith ui``): threads, a thread's branch tree, state and diffs, node timings,
drift and lineage in a browser, over :class:`~skialith_langgraph.inspect.Inspector`.

Example:
    >>> from skialith_langgraph.ui import create_app
    >>> app = create_app(Settings.from_env())  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8765), or host_app.mount("/ui", app)
"""

from .app import create_app
from .security import TOKEN_ENV, UiError, check_bind, is_loopback

__all__ = ["TOKEN_ENV", "UiError", "check_bind", "create_app", "is_loopback"]
