"""shardwise runner: load a Plan with transformers/accelerate and run chat sessions from it.

`from runner import OpenAIChat, create_chat_completion, clear_memory` is the Python API.
Heavy modules (torch, transformers) load on first use, not at import.
"""

from __future__ import annotations

__all__ = ["OpenAIChat", "create_chat_completion", "clear_memory", "ChatSession", "ShardwiseError"]


def __getattr__(name):
    if name in ("OpenAIChat", "create_chat_completion", "clear_memory"):
        from runner import api

        return getattr(api, name)
    if name == "ShardwiseError":  # the one exception type for bad arguments, as openai's BadRequestError
        from planner.errors import ShardwiseError

        return ShardwiseError
    if name == "ChatSession":
        from runner.engine.session import ChatSession

        return ChatSession
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
