"""Sampling settings in one form: `SamplingParams`, built from the `generation` config node and checked.

    params = SamplingParams.from_generation(cfg.generation)   # chat, serve, launch, every torchrun rank
    params = params.checked()                                  # a bad value: one line naming the field

The defaults here are conf/generation/default.yaml's (a test composes the config and compares).
The HTTP server validates request bodies with OpenAI's error shape (runner.openai.protocol) and
fills absent fields from these defaults.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, replace

from planner.errors import ShardwiseError

# A temperature below this samples as greedy. Dividing logits by a positive temperature this small (1e-320 passes
# every range check) overflows them to inf, the softmax turns to NaN, and torch.multinomial fails the request and
# stops the continuous batch under every request in it; at such a temperature sampling is argmax anyway. vLLM
# treats temperatures under the same 1e-5 as greedy.
GREEDY_BELOW_TEMPERATURE = 1e-5


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# (field, check, what it must be, an example): the ranges of OpenAI's chat completions API.
RULES = (
    ("max_tokens", lambda v: _is_int(v) and v >= 1, "an integer >= 1", "256"),
    ("temperature", lambda v: _is_real(v) and 0 <= v <= 2, "a number from 0 (greedy) to 2", "0.7"),
    ("top_p", lambda v: _is_real(v) and 0 < v <= 1, "a number above 0 and at most 1", "1.0"),
    ("presence_penalty", lambda v: _is_real(v) and -2 <= v <= 2, "a number from -2 to 2", "0"),
    ("frequency_penalty", lambda v: _is_real(v) and -2 <= v <= 2, "a number from -2 to 2", "0"),
    ("seed", lambda v: v is None or (_is_int(v) and -(2**63) <= v < 2**63), "null or a 64-bit integer", "1234"),
    (
        "stop",
        lambda v: isinstance(v, list) and all(isinstance(s, str) and s for s in v),
        "a list of non-empty strings",
        "[END]",
    ),
)


@dataclass
class SamplingParams:
    max_tokens: int = 256  # new tokens at most
    temperature: float = 0.7  # 0: greedy
    top_p: float = 1.0  # nucleus sampling mass (1.0: every token)
    seed: int | None = None  # None: a fresh draw per turn
    stop: list[str] = field(default_factory=list)  # matched on generated text only, trimmed
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @classmethod
    def from_generation(cls, generation, prefix: str = "generation.") -> SamplingParams:
        """The composed `generation` node (or any object with its fields; absent ones keep the defaults), checked."""
        values = {}
        for name in ("max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty"):
            value = getattr(generation, name, None)
            if value is not None:
                values[name] = list(value) if name == "stop" and not isinstance(value, str) else value
        return cls(**values).checked(prefix)

    def checked(self, prefix: str = "") -> SamplingParams:
        """These values as plain ints and floats when generation can use every one, else a one-line ShardwiseError.

        The error names `prefix + field`: the CLI passes prefix="generation." so the message names the
        override to fix; the API and the REPL pass "".
        """
        for name, ok, must_be, example in RULES:
            value = getattr(self, name)
            if not ok(value):
                raise ShardwiseError(f"{prefix}{name}={value!r} must be {must_be}: use e.g. {prefix}{name}={example}")
        return replace(
            self,
            max_tokens=int(self.max_tokens),
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            seed=None if self.seed is None else int(self.seed),
            stop=list(self.stop),
            presence_penalty=float(self.presence_penalty),
            frequency_penalty=float(self.frequency_penalty),
        )

    @property
    def greedy(self) -> bool:
        """Whether this turn takes the most likely token at each step (temperature 0, or too small to divide by)."""
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    def with_overrides(self, **changes) -> SamplingParams:
        """A copy with the given fields changed (None leaves a field alone)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)
