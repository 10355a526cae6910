"""Raw checkpoints for the LangGraph.js checkpointer (``/v1/checkpoints*``, ``/v1/writes``).

Owned by the TypeScript side of the sidecar work; empty until it lands. The app mounts
:data:`router` under ``/v1``.
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
