"""Plain data shared by the chat session, the Python API and the server (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.engine.sampling import SamplingParams  # noqa: F401 (its home before sampling.py)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    usage: Usage
    token_ids: list[int] = field(default_factory=list)
    time_to_first_token_s: float | None = None
    tokens_per_s: float | None = None
    notices: list[str] = field(default_factory=list)  # one-line notes about this turn (dropped turns, recovery)
    batch_size: int = 1  # most requests generating together while this one ran (1: alone)
