"""Argument checks for the Python API: every bad argument is one ShardwiseError that names it.

`OpenAIChat(...)` and `create_chat_completion(...)` take Python values, not a parsed config, so
a list where a name belongs or NaN where a size belongs would otherwise surface as a TypeError
from deep inside. As the `openai` client raises one `BadRequestError` for a bad request, these
raise `planner.errors.ShardwiseError` (also `runner.ShardwiseError`), before anything is planned
or loaded.
"""

from __future__ import annotations

import math

from planner.errors import ShardwiseError
from runner.openai.protocol import APIError, parse_messages, refuse_unsupported


def _text(name: str, value, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise ShardwiseError(f"{name} must be a non-empty string, got {value!r:.60}")


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ShardwiseError(f"{name} must be True or False, got {value!r:.60}")


def check_max_memory(max_memory) -> None:
    if max_memory is None:
        return
    if not isinstance(max_memory, dict):
        raise ShardwiseError(
            f"max_memory must be a dict of device -> size, got {max_memory!r:.60}: "
            "write e.g. {0: '20GiB', 'cpu': '30GiB'}"
        )
    for device, size in max_memory.items():
        if isinstance(size, bool) or not isinstance(size, (int, float, str)):
            raise ShardwiseError(f"max_memory[{device!r}] must be bytes or a size such as '20GiB', got {size!r:.60}")
        if isinstance(size, float) and not math.isfinite(size):
            raise ShardwiseError(f"max_memory[{device!r}] must be a finite size, got {size!r}")


def check_chat_args(
    model, use_cpu, max_memory, model_path, hardware, overrides, system_prompt, trust_remote_code=False
) -> None:
    """The arguments of OpenAIChat, checked before planning; raises ShardwiseError naming the argument."""
    _text("model", model, optional=False)
    _flag("use_cpu", use_cpu)
    _flag("trust_remote_code", trust_remote_code)
    check_max_memory(max_memory)
    _text("model_path", model_path)
    _text("hardware", hardware)
    if isinstance(overrides, str) or not isinstance(overrides, (list, tuple)):
        raise ShardwiseError(
            f"overrides must be a list of 'key=value' strings, got {overrides!r:.60}: write e.g. ['policy.sessions=2']"
        )
    for i, item in enumerate(overrides):
        if not isinstance(item, str):
            raise ShardwiseError(f"overrides[{i}] must be a 'key=value' string, got {item!r:.60}")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise ShardwiseError(f"system_prompt must be a string or None, got {system_prompt!r:.60}")


def check_completion_args(
    model, stream, stream_options, use_cpu, hardware, model_path, trust_remote_code=False
) -> None:
    """The arguments of create_chat_completion that are not messages or sampling (those have their own checks)."""
    _text("model", model, optional=False)
    _flag("stream", stream)
    _flag("use_cpu", use_cpu)
    _flag("trust_remote_code", trust_remote_code)
    _text("hardware", hardware)
    _text("model_path", model_path)
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ShardwiseError(
            f"stream_options must be a dict such as {{'include_usage': True}}, got {stream_options!r:.60}"
        )


class CheckedMessages(list):
    """Messages `checked_messages` has already checked (their images decoded): not parsed a second time."""


def checked_messages(messages) -> CheckedMessages:
    """Chat messages checked as the server checks them (roles, text and image_url parts within
    protocol.DEFAULT_IMAGE_LIMITS, at most protocol.MAX_MESSAGES); else a one-line ShardwiseError."""
    if isinstance(messages, CheckedMessages):
        return messages
    try:
        return CheckedMessages(parse_messages(list(messages) if isinstance(messages, tuple) else messages))
    except APIError as exc:
        if exc.code == "too_many_messages" or ".content[" in (exc.param or ""):  # the message names the part
            raise ShardwiseError(exc.message) from None
        raise ShardwiseError(f"{exc.message}: pass messages=[{{'role': 'user', 'content': '...'}}, ...]") from None


# The sampling keywords of OpenAIChat.chat/create/stream and create_chat_completion (SamplingParams' fields).
SAMPLING_ARGS = ("max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")

# OpenAI request fields that, once refuse_unsupported has passed them (no tools, logprobs off, text format), change
# nothing in a reply: taken and ignored, as the server takes them in a body.
OPENAI_FIELDS_WITHOUT_EFFECT = (
    "logprobs",
    "top_logprobs",
    "tools",
    "functions",
    "tool_choice",
    "parallel_tool_calls",
    "logit_bias",
    "response_format",
    "user",
    "metadata",
    "store",
    "service_tier",
)


def check_sampling_kwargs(call: str, sampling: dict) -> dict:
    """The keyword arguments of a chat call, checked as the server checks a body's fields, as SAMPLING_ARGS.

    `max_completion_tokens` (OpenAI's newer name) is taken as max_tokens, as the server takes it; OpenAI fields this
    API cannot honour (tools, logprobs, n above 1, ...) are refused naming them, as the server does; any other name
    (a typo such as `temprature`) is refused too: a chat call must not silently ignore a setting."""
    sampling = dict(sampling)
    if "max_completion_tokens" in sampling:
        newer = sampling.pop("max_completion_tokens")
        older = sampling.get("max_tokens")
        if older is not None and newer is not None and older != newer:
            raise ShardwiseError(
                f"{call}: max_tokens={older!r:.40} and max_completion_tokens={newer!r:.40} disagree: pass only one"
            )
        if newer is not None:
            sampling["max_tokens"] = newer
    try:
        refuse_unsupported(sampling)
    except APIError as exc:
        raise ShardwiseError(f"{call}: {exc.message.replace(' by this server', '')}") from None
    for name in OPENAI_FIELDS_WITHOUT_EFFECT:  # what refuse_unsupported let through changes nothing in the reply
        sampling.pop(name, None)
    n = sampling.pop("n", None)
    if n is not None and n != 1:
        raise ShardwiseError(f"{call}: n={n!r:.40} is not supported here (one choice per call): call it n times")
    unknown = sorted(set(sampling) - set(SAMPLING_ARGS))
    if unknown:
        import difflib

        name = unknown[0]
        near = difflib.get_close_matches(name, SAMPLING_ARGS, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ShardwiseError(
            f"{call} got an unknown argument {name!r:.60}: {hint}it takes messages and {', '.join(SAMPLING_ARGS)}"
        )
    return sampling
