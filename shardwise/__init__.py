"""shardwise's Python API under the product's name.

    from shardwise import OpenAIChat, create_chat_completion
    chat = OpenAIChat(model="gpt2", use_cpu=True)
    chat.chat([{"role": "user", "content": "Hello"}], max_tokens=32)

The code lives in the `runner` package (`from runner import OpenAIChat` keeps working); this
module only re-exports it, lazily, so importing shardwise loads no torch.
"""

from __future__ import annotations

__all__ = ["OpenAIChat", "create_chat_completion", "clear_memory", "ChatSession", "ShardwiseError", "make_plan"]


def __getattr__(name):
    if name == "make_plan":  # planning from Python, as `shardwise plan` composes it
        from planner.config.compose import make_plan

        return make_plan
    if name in __all__:
        import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'shardwise' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
