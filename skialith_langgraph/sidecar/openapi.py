"""Write the sidecar's OpenAPI document: ``python -m skialith_langgraph.sidecar.openapi [PATH]``.

``docs/openapi.json`` is this output; tests/test_sidecar.py checks it equals what ``/openapi.json``
serves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..config import Settings
from .app import create_app

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def document() -> dict[str, Any]:
    """The OpenAPI document (it does not depend on the settings; nothing is connected)."""
    doc: dict[str, Any] = create_app(Settings()).openapi()
    return doc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    path.write_text(json.dumps(document(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
