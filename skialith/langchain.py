"""LangGraph integration under the product name: ``from skialith.langchain import SkialithCheckpointer``.

An alias of :class:`skialith_langgraph.SkialithCheckpointer` (the same class, not a subclass).
"""

from skialith_langgraph.checkpointer import SkialithCheckpointer

__all__ = ["SkialithCheckpointer"]
