"""Skialith: durable, resumable agent state on NATS JetStream.

The names the product pages use::

    from skialith import SkialithAgent
    from skialith.langchain import SkialithCheckpointer

They are the objects of :mod:`skialith_langgraph`, re-exported.
"""

from skialith_langgraph.agent import AgentRecord, AgentState, SkialithAgent
from skialith_langgraph.checkpointer import SkialithCheckpointer
from skialith_langgraph.config import Settings

__all__ = ["AgentRecord", "AgentState", "Settings", "SkialithAgent", "SkialithCheckpointer"]
