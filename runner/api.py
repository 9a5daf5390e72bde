"""The Python API with the seed's shape: OpenAIChat, create_chat_completion, clear_memory.

    from runner import OpenAIChat, create_chat_completion
    chat = OpenAIChat(model="gpt2", use_cpu=True)
    print(chat.chat([{"role": "user", "content": "Hello"}], max_tokens=100))
    chat.create(messages)                     # the full OpenAI chat.completion dict
    create_chat_completion(model="gpt2", messages=[...], max_tokens=50, stream=True)  # chunk dicts

A model name may be a profile name or a hub id (`openai/gpt-oss-120b`); `model_path=` plans any
local model directory. The plan is made for this machine (`use_cpu=True`: for the CPU); when
it does not fit, the plan's fallback chain (smaller model, then CPU) is walked, announced.
"""

from __future__ import annotations

import math
import numbers
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

from planner.errors import ShardwiseError
from runner.engine.types import Completion, SamplingParams

_UNSET = object()


def _notice(line: str) -> None:
    print(f"shardwise: {line}", file=sys.stderr, flush=True)


# (field, check, what it must be, an example): the ranges of OpenAI's chat completions API.
_SAMPLING_RULES = (
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


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_sampling(params: SamplingParams, prefix: str = "") -> SamplingParams:
    """`params` as plain ints and floats when generation can use every value, else a one-line ShardwiseError.

    The error names `prefix + field`: the CLI passes prefix="generation." so the message names the
    override to fix; the API and the REPL pass "". The server checks requests itself (runner.openai.protocol).
    """
    for name, ok, must_be, example in _SAMPLING_RULES:
        value = getattr(params, name)
        if not ok(value):
            raise ShardwiseError(f"{prefix}{name}={value!r} must be {must_be}: use e.g. {prefix}{name}={example}")
    return replace(
        params,
        max_tokens=int(params.max_tokens),
        temperature=float(params.temperature),
        top_p=float(params.top_p),
        seed=None if params.seed is None else int(params.seed),
        stop=list(params.stop),
        presence_penalty=float(params.presence_penalty),
        frequency_penalty=float(params.frequency_penalty),
    )


def checked_messages(messages) -> list[dict]:
    """Chat messages checked the way the server checks them (roles, text content); a one-line ShardwiseError otherwise."""
    from runner.openai.protocol import APIError, _messages

    try:
        return _messages(list(messages) if isinstance(messages, tuple) else messages)
    except APIError as exc:
        raise ShardwiseError(f"{exc.message}: pass messages=[{{'role': 'user', 'content': '...'}}, ...]") from None


_UNITS = {
    "tib": 1 << 40,
    "tb": 10**12,
    "gib": 1 << 30,
    "gb": 10**9,
    "mib": 1 << 20,
    "mb": 10**6,
    "kib": 1 << 10,
    "kb": 10**3,
    "b": 1,
}


def parse_max_memory(max_memory: dict | None) -> dict:
    """`{0: "20GiB", "cpu": 30 * 2**30}` -> {"0": bytes, "cpu": bytes} (plan budget keys)."""
    caps = {}
    for device, value in (max_memory or {}).items():
        if isinstance(value, (int, float)):
            caps[str(device)] = int(value)
            continue
        text = str(value).strip().lower().replace(" ", "")
        unit = next((u for u in _UNITS if text.endswith(u)), None)
        try:
            caps[str(device)] = int(float(text[: -len(unit)] if unit else text) * _UNITS[unit or "b"])
        except (ValueError, OverflowError):
            raise ShardwiseError(
                f"max_memory[{device!r}]={value!r} is not a size: write bytes or e.g. '20GiB'"
            ) from None
    for device, cap in caps.items():
        if cap <= 0:
            raise ShardwiseError(f"max_memory[{device!r}] must be a positive size, got {cap} bytes: write e.g. '20GiB'")
    return caps


def apply_max_memory(plan, caps: dict):
    """The plan marked as not fitting when it plans more than a cap on some device."""
    from dataclasses import replace

    for budget in plan.budget:
        cap = caps.get(str(budget.device))
        if cap is not None and budget.planned > cap:
            return replace(
                plan,
                fits=False,
                binding={
                    "device": str(budget.device),
                    "term": "max_memory",
                    "needed": budget.planned,
                    "usable": cap,
                    "fixes": [f"raise max_memory[{budget.device!r}] or use a smaller model"],
                },
            )
    return plan


def plan_that_fits(plan, *, notice: Callable[[str], None] = _notice, plan_fallback=None, caps: dict | None = None):
    """`plan` when it fits, else the first of its fallbacks that does (each step announced)."""
    from runner.engine.recovery import default_plan_fallback

    caps = caps or {}
    plan = apply_max_memory(plan, caps)
    if plan.fits:
        return plan
    binding = plan.binding or {}
    why = f"{plan.model.name} does not fit ({binding.get('device', '?')}: {binding.get('term', 'memory')})"
    for entry in plan.fallbacks:
        if entry.get("fits") is False:
            continue
        candidate = apply_max_memory((plan_fallback or (lambda e: default_plan_fallback(e, plan)))(entry), caps)
        if candidate.fits:
            notice(
                f"{why}: using {candidate.model.name} on {candidate.hardware.get('source')} ({entry.get('reason', '')})"
            )
            return candidate
    fixes = "; ".join(fix_texts(binding)) or "use a smaller model or more GPUs"
    raise ShardwiseError(f"{why} and no fallback fits either: {fixes}")


def fix_texts(binding: dict | None) -> list[str]:
    """The plan's "what would make it fit" lines; a fix is a {"text", "overrides"} dict or a plain string."""
    return [str(f.get("text", f)) if isinstance(f, dict) else str(f) for f in (binding or {}).get("fixes", [])]


def sampling_defaults(generation) -> SamplingParams:
    """The `generation` config node as checked SamplingParams (a bad value is one line naming its override)."""
    return check_sampling(
        SamplingParams(
            max_tokens=generation.max_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            seed=generation.seed,
            stop=list(generation.stop or []),
        ),
        prefix="generation.",
    )


def _make_plan(**kwargs):
    """planner.config.compose.make_plan, with what Hydra refuses in `overrides` turned into a one-line ShardwiseError."""
    from planner.config.app import composition_error
    from planner.config.compose import make_plan

    try:
        return make_plan(**kwargs)
    except ShardwiseError:
        raise
    except Exception as exc:
        error = composition_error(exc, "plan")
        if error is None:
            raise
        raise error from None


class OpenAIChat:
    """One model, planned and loaded once, answering chat messages in OpenAI's shapes."""

    def __init__(
        self,
        model: str = "gpt2",
        use_cpu: bool = False,
        max_memory: dict | None = None,
        *,
        model_path: str | None = None,
        hardware: str | None = None,
        overrides: list[str] = (),
        plan=None,
        system_prompt: str | None = None,
        defaults: SamplingParams | None = None,
        notice: Callable[[str], None] = _notice,
        recovery=None,
    ):
        from runner.api_args import check_chat_args
        from runner.engine.recovery import RecoveryPolicy, load_with_fallbacks
        from runner.engine.session import ChatSession

        check_chat_args(model, use_cpu, max_memory, model_path, hardware, overrides, system_prompt)
        if defaults is not None:
            defaults = check_sampling(defaults)
        elif any(o.lstrip("+~").startswith("generation.") for o in overrides):
            from planner.config.compose import compose

            defaults = sampling_defaults(compose("plan", list(overrides)).generation)
        if plan is None:
            hw = "cpu" if use_cpu else (hardware or "auto")
            plan = _make_plan(model=model, hardware=hw, overrides=list(overrides), model_path=model_path)
        self.recovery = recovery or RecoveryPolicy()
        plan = plan_that_fits(
            plan, notice=notice, plan_fallback=self.recovery.plan_fallback, caps=parse_max_memory(max_memory)
        )
        loaded = load_with_fallbacks(plan, policy=self.recovery, notice=notice)
        self.session = ChatSession(
            loaded,
            defaults=defaults or SamplingParams(),
            plan=loaded.plan,
            system_prompt=system_prompt,
            recovery=self.recovery,
            on_notice=notice,
        )

    @property
    def model_name(self) -> str:
        return self.session.loaded.name

    @property
    def plan(self):
        return self.session.plan

    def _params(
        self, max_tokens, temperature, top_p, seed, stop, presence_penalty, frequency_penalty
    ) -> SamplingParams:
        """The request's sampling values over the defaults, checked (a one-line ShardwiseError names a bad one)."""
        base = self.session.defaults
        if isinstance(stop, str):
            stop = [stop]
        pick = lambda value, default: default if value is _UNSET or value is None else value  # noqa: E731
        stops = pick(stop, base.stop)
        return check_sampling(
            SamplingParams(
                max_tokens=pick(max_tokens, base.max_tokens),
                temperature=pick(temperature, base.temperature),
                top_p=pick(top_p, base.top_p),
                seed=pick(seed, base.seed),
                stop=list(stops) if isinstance(stops, (list, tuple)) else stops,
                presence_penalty=pick(presence_penalty, base.presence_penalty),
                frequency_penalty=pick(frequency_penalty, base.frequency_penalty),
            )
        )

    def completion(
        self,
        messages: list[dict],
        *,
        max_tokens=_UNSET,
        temperature=_UNSET,
        top_p=_UNSET,
        seed=_UNSET,
        stop=_UNSET,
        presence_penalty=_UNSET,
        frequency_penalty=_UNSET,
    ) -> Completion:
        params = self._params(max_tokens, temperature, top_p, seed, stop, presence_penalty, frequency_penalty)
        return self.session.generate(checked_messages(messages), params)

    def chat(self, messages: list[dict], max_tokens=100, **sampling) -> str:
        """The assistant's reply text (the seed's `chat.chat(messages, max_tokens=100)`)."""
        return self.completion(messages, max_tokens=max_tokens, **sampling).text

    def create(self, messages: list[dict], max_tokens=_UNSET, **sampling) -> dict:
        """The full OpenAI `chat.completion` object as a dict."""
        return completion_dict(self.completion(messages, max_tokens=max_tokens, **sampling), self.model_name)

    def stream(
        self, messages: list[dict], max_tokens=_UNSET, *, include_usage: bool = False, **sampling
    ) -> Iterator[dict]:
        """`chat.completion.chunk` dicts as OpenAI streams them: the role, content deltas, one chunk with the
        finish_reason and an empty delta, then (include_usage) a usage chunk with no choices.

        Generation starts when the first chunk is asked for, and stops when the iterator is closed.
        """
        params = self._params(
            max_tokens,
            *(
                sampling.get(k, _UNSET)
                for k in ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
            ),
        )
        messages = checked_messages(messages)
        return _chunks(
            lambda: self.session.stream(messages, params, cancel=threading.Event()), self.model_name, include_usage
        )

    def clear_memory(self) -> None:
        self.session.clear_memory()


def _new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _usage_dict(completion: Completion) -> dict:
    usage = completion.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_dict(completion: Completion, model: str) -> dict:
    return {
        "id": _new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": openai_finish_reason(completion.finish_reason),
            }
        ],
        "usage": _usage_dict(completion),
    }


def openai_finish_reason(reason: str) -> str:
    """OpenAI knows stop and length: a reply cancelled by its caller ended early, as at a stop."""
    return "length" if reason == "length" else "stop"


def _chunks(start_stream, model: str, include_usage: bool) -> Iterator[dict]:
    ident, created = _new_id(), int(time.time())

    def chunk(delta: dict, finish_reason=None) -> dict:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    text_stream = start_stream()
    try:
        yield chunk({"role": "assistant", "content": ""})
        for delta in text_stream:
            yield chunk({"content": delta})
        completion = text_stream.completion
        yield chunk({}, openai_finish_reason(completion.finish_reason))
        if include_usage:
            yield {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage_dict(completion),
            }
    finally:
        text_stream.close()


_CACHE: dict[tuple, OpenAIChat] = {}
_CACHE_LOCK = threading.Lock()


def _cached_chat(model: str, use_cpu: bool, hardware: str | None, model_path: str | None) -> OpenAIChat:
    key = (model, use_cpu, hardware, model_path)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = OpenAIChat(model=model, use_cpu=use_cpu, hardware=hardware, model_path=model_path)
        return _CACHE[key]


def create_chat_completion(
    model: str = "gpt2",
    messages: list[dict] = (),
    max_tokens=_UNSET,
    temperature=_UNSET,
    stream: bool = False,
    *,
    use_cpu: bool = False,
    hardware: str | None = None,
    model_path: str | None = None,
    **sampling,
):
    """OpenAI-shaped dict (or an iterator of chunk dicts with stream=True); one loaded model per (model, hardware)."""
    from runner.api_args import check_completion_args

    check_completion_args(model, stream, sampling.get("stream_options"), use_cpu, hardware, model_path)
    if not messages:
        raise ShardwiseError("messages is empty: pass at least one {'role': 'user', 'content': ...} message")
    messages = checked_messages(messages)
    chat = _cached_chat(model, use_cpu, hardware, model_path)
    stream_options = sampling.pop("stream_options", None) or {}
    if stream_options and not stream:
        raise ShardwiseError("stream_options is only allowed with stream=True")
    if stream:
        return chat.stream(
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            include_usage=bool(stream_options.get("include_usage")),
            **sampling,
        )
    return chat.create(messages, max_tokens=max_tokens, temperature=temperature, **sampling)


def clear_memory() -> None:
    """Free Python garbage and cached GPU memory (models stay loaded)."""
    from runner.engine.memory import clear_memory as _clear

    _clear()
