"""Read each field of a quantization_config with its type and range: one line naming the field, never a traceback.

A quantization_config is input (config.json, hf_quant_config.json, a profile): `bits: "four"`,
`weight_block_size: [0, 0]` or `config_groups: [1]` must be refused where it is read, and a value
that parses but means nothing (gptq `bits: 0`, `group_size: 0`) must not be sized as if it were
real. `planner.model.quant.parse_format` reads every field it uses through `QuantFields`, so the
rules live here once. The ranges are transformers' own where it checks them (GPTQConfig and
FineGrainedFP8Config `post_init`; tests/test_hardening_files.py compares them), written out
because planning a profile must not import transformers.
"""

from __future__ import annotations

from planner.errors import ShardwiseError

# GPTQConfig.post_init: "Only support quantization to [2,3,4,8] bits"; AwqConfig subclasses it and packs the same way
PACKED_INT_BITS = (2, 3, 4, 8)
MAX_BLOCK = 1 << 20  # a scale block wider than any weight matrix is a typo; real ones are 32 to 128
MAX_GROUP = 1 << 20


class QuantFields:
    """The fields of one quantization_config (or one compressed-tensors group), checked as they are read."""

    def __init__(self, cfg, where: str):
        if not isinstance(cfg, dict):
            raise ShardwiseError(f"{where} is {cfg!r:.60}, not an object: fix config.json")
        self.cfg, self.where = cfg, where

    def _bad(self, key: str, wanted: str) -> ShardwiseError:
        return ShardwiseError(f"{self.where}.{key} is {self.cfg.get(key)!r:.60}, not {wanted}: fix config.json")

    def count(self, key: str, default: int, *, minimum: int = 1, maximum: int = MAX_GROUP, also=(), aliases=()):
        """An integer in [minimum, maximum] (or one of `also`); `default` when absent or null."""
        for name in (key, *aliases):
            value = self.cfg.get(name)
            if value is not None:
                key = name
                break
        else:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not (minimum <= value <= maximum or value in also):
            extra = f" or {', '.join(map(str, also))}" if also else ""
            raise self._bad(key, f"an integer from {minimum} to {maximum}{extra}")
        return value

    def choice(self, key: str, default, choices: tuple):
        """One of `choices` (compared as given: ints stay ints, strings are lower-cased); `default` when absent."""
        value = self.cfg.get(key)
        if value is None:
            return default
        found = value.lower() if isinstance(value, str) else value
        if isinstance(found, bool) or found not in choices:
            raise self._bad(key, f"one of {', '.join(map(str, choices))}")
        return found

    def text(self, key: str, default: str = "") -> str:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def names(self, *keys: str) -> tuple[str, ...]:
        """Module names or patterns (an exclusion list): a list of strings, () when absent."""
        for key in keys:
            value = self.cfg.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self._bad(key, "a list of module names")
            return tuple(value)
        return ()

    def pair(self, key: str) -> tuple[int, int] | None:
        """A (rows, cols) block of two integers >= 1, or None when absent."""
        value = self.cfg.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_BLOCK for v in value)
        ):
            raise self._bad(key, f"[rows, cols], two integers from 1 to {MAX_BLOCK}")
        return value[0], value[1]

    def section(self, key: str, required: bool = False) -> QuantFields | None:
        """A nested object as QuantFields; None when absent (an error when `required`)."""
        value = self.cfg.get(key)
        if value is None or value == {}:
            if required:
                raise self._bad(key, "an object")
            return None
        return QuantFields(value, f"{self.where}.{key}")


def quant_method(cfg: dict, where: str = "quantization_config") -> str:
    """The lower-cased quant_method of a quantization_config ("" when it names none)."""
    method = QuantFields(cfg, where).text("quant_method")
    return method.lower()
