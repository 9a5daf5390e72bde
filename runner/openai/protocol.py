"""The OpenAI Chat Completions wire format: request validation, error bodies, response shapes.

The one module for it: the HTTP server (runner.openai.app), the Python API (runner.api) and the
tests all use it. Pure data, no torch and no web framework: `parse_chat_request(body, defaults)`
turns a decoded JSON body into a `ChatRequest` (sampling defaults: runner.engine.sampling) or
raises `APIError` carrying the HTTP status and the OpenAI error body
`{"error": {"message", "type", "param", "code"}}` that the `openai` client reads;
`Response(model)` builds the `chat.completion` body and every `chat.completion.chunk`.
Fields the server does not know are ignored (as OpenAI does); fields it knows but cannot honour
(tools, logprobs, audio or file content) are refused with a 400 that names them, never silently
dropped. Image parts (`image_url` with a `data:` URL, runner.openai.images) are decoded here, within
bounds, and never fetched from the network; a model that takes no images refuses them with a 400
naming the part (`refuse_images`). Nothing from a request is instantiated or executed: values are
checked and copied.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from runner.engine.sampling import SamplingParams
from runner.engine.types import Completion
from runner.openai.images import ImageLimits, ImageRefused, decode_data_url

MAX_STOP_SEQUENCES = 4  # OpenAI's limit on `stop`
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class APIError(Exception):
    """An HTTP error in OpenAI's shape; `status` is the HTTP status code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        # a message or param may quote the request (an unknown model's name): a lone surrogate there (\ud800)
        # cannot be encoded as UTF-8, and the error body would fail to render, a 500 in place of this error
        message, param = _encodable(message), _encodable(param)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _encodable(text: str | None) -> str | None:
    """`text` with any character UTF-8 cannot encode (a lone surrogate) written as its escape, `\\ud800`."""
    if not isinstance(text, str):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


MAX_MESSAGES = 4096  # messages one request may hold by default (serve.max_messages; the Python API's bound)
DEFAULT_IMAGE_LIMITS = ImageLimits()  # serve.max_image_bytes / max_image_pixels / max_images; the Python API's bounds


def invalid(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class ChatRequest:
    """A validated chat completion request; `messages` hold {"role", "content"} dicts (parse_messages)."""

    model: str
    messages: list[dict]
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    user: str | None = None

    def params_for_choice(self, index: int) -> SamplingParams:
        """Choice i samples with seed + i, so n choices differ yet each stays reproducible."""
        if index == 0 or self.params.seed is None:
            return self.params
        seed = self.params.seed + index
        if seed > INT64_MAX:
            seed -= 2**64
        return SamplingParams(**{**self.params.__dict__, "seed": seed})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (
        (isinstance(value, (int, float)))
        and not isinstance(value, bool)
        and value == value
        and value not in (float("inf"), float("-inf"))
    )


def _number(body: dict, name: str, low: float, high: float, default: float, *, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value):
        raise invalid(f"{name} must be a number, got {value!r}", name, "invalid_type")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = f"greater than {low}" if low_open else f"at least {low}"
        raise invalid(f"{name} must be {bound} and at most {high}, got {value!r}", name, "invalid_value")
    return float(value)


def _positive_int(body: dict, name: str, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise invalid(f"{name} must be an integer, got {value!r}", name, "invalid_type")
    if value < 1 or (high is not None and value > high):
        limit = f" and at most {high}" if high is not None else ""
        raise invalid(f"{name} must be at least 1{limit}, got {value}", name, "invalid_value")
    return value


TEXT_AND_IMAGE_PARTS = 'type "text" or "image_url" (an image as a data: URL)'


def _image_part(part: dict, part_param: str, role: str, images: ImageLimits, count: int) -> dict:
    """An OpenAI image_url part as {"type": "image", "image": PIL image}; APIError(400) naming what is wrong."""
    if role != "user":
        raise invalid(
            f"{part_param} is an image in a {role} message: only user messages may carry images",
            part_param,
            "invalid_value",
        )
    if count >= images.max_images:
        raise invalid(
            f"{part_param} is image {count + 1} of this request, more than the {images.max_images} allowed: "
            "send fewer images",
            part_param,
            "too_many_images",
        )
    image_url = part.get("image_url")
    url_param = f"{part_param}.image_url"
    if not isinstance(image_url, dict):
        raise invalid(
            f'{url_param} must be an object like {{"url": "data:image/png;base64,..."}}, got {image_url!r}'[:200],
            url_param,
            "invalid_type",
        )
    detail = image_url.get("detail")
    if detail is not None and detail not in ("auto", "low", "high"):  # a hint: the model's processor sets the size
        raise invalid(f"{url_param}.detail must be auto, low or high, got {detail!r}"[:200], f"{url_param}.detail")
    try:
        image = decode_data_url(image_url.get("url"), images)
    except ImageRefused as exc:
        raise invalid(f"{url_param}.url {exc}", url_param, exc.code) from None
    return {"type": "image", "image": image}


def _content(content, index: int, role: str, images: ImageLimits, counted: list[int]) -> str | list[dict]:
    """A message's content: its text, or (when it holds an image) its parts in order, text parts as
    {"type": "text", "text"} and images as {"type": "image", "image": PIL image}, so part j keeps its index."""
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part_index, part in enumerate(content):
            part_param = f"{param}[{part_index}]"
            if not isinstance(part, dict):
                raise invalid(
                    f'{part_param} must be an object like {{"type": "text", "text": "..."}}, got {part!r}'[:200],
                    part_param,
                    "invalid_type",
                )
            kind = part.get("type")
            if kind == "image_url":
                parts.append(_image_part(part, part_param, role, images, counted[0]))
                counted[0] += 1
                continue
            if kind != "text":
                raise invalid(
                    f"{part_param} has type {kind!r:.60}: this server takes parts of {TEXT_AND_IMAGE_PARTS}",
                    part_param,
                    "invalid_value",
                )
            if not isinstance(part.get("text"), str):
                raise invalid(
                    f"{part_param}.text must be a string, got {part.get('text')!r}"[:200],
                    f"{part_param}.text",
                    "invalid_type",
                )
            parts.append({"type": "text", "text": part["text"]})
        if all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)
        return parts
    if content is None:
        raise invalid(
            f"{param} is missing: every {role} message needs text content (tool calls are not supported)",
            param,
            "invalid_value",
        )
    raise invalid(
        f"{param} must be a string or a list of text and image_url parts, got {type(content).__name__}",
        param,
        "invalid_type",
    )


def message_text(content) -> str:
    """The text of a parsed message's content (its text parts joined; images left out)."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p.get("type") == "text")


def image_params(messages: list[dict]) -> list[str]:
    """The request names (`messages[i].content[j]`) of the image parts in parsed messages, in order."""
    return [
        f"messages[{i}].content[{j}]"
        for i, message in enumerate(messages)
        if not isinstance(message["content"], str)
        for j, part in enumerate(message["content"])
        if part.get("type") == "image"
    ]


def refuse_images(messages: list[dict], model: str, why: str = "it takes text only") -> None:
    """APIError(400) naming the first image part when the model cannot take images."""
    found = image_params(messages)
    if found:
        raise invalid(
            f"{found[0]} is an image, but the model {model} cannot take images ({why}): send text only",
            found[0],
            "images_not_supported",
        )


def parse_messages(value, max_messages: int = MAX_MESSAGES, images: ImageLimits = DEFAULT_IMAGE_LIMITS) -> list[dict]:
    """Chat messages as {"role", "content"} dicts; APIError(400) naming the first bad field.

    Content is a str, or, for a user message with images, its parts in order (see `_content`); images are
    decoded from data: URLs within `images` (never fetched from the network).

    More than `max_messages` is refused before any message is looked at: a conversation of thousands of
    tiny messages costs the prompt fitting far more than its bytes suggest."""
    if not isinstance(value, list) or not value:
        shown = "an empty list" if value == [] else repr(value)[:80]
        raise invalid(
            f"messages must be a non-empty list of {{role, content}} objects, got {shown}", "messages", "invalid_value"
        )
    if len(value) > max_messages:
        raise invalid(
            f"messages holds {len(value)} messages, more than the {max_messages} one request may hold: "
            "send a shorter conversation",
            "messages",
            "too_many_messages",
        )
    out = []
    counted = [0]  # images so far in this request
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise invalid(
                f"messages[{index}] must be an object with role and content, got {message!r}"[:200],
                f"messages[{index}]",
                "invalid_type",
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or an object as role is a 400, not a TypeError
            choices = ", ".join(ROLES)
            raise invalid(
                f"messages[{index}].role is {role!r:.60}: use one of {choices} (tool messages are not supported)",
                f"messages[{index}].role",
                "invalid_value",
            )
        if message.get("tool_calls") or message.get("function_call"):
            raise invalid(
                f"messages[{index}] carries tool calls: this server does not support tools",
                f"messages[{index}].tool_calls",
                "unsupported_parameter",
            )
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid(
                f"messages[{index}].name must be a string, got {name!r}", f"messages[{index}].name", "invalid_type"
            )
        content = _content(message.get("content"), index, role, images, counted)
        try:
            message_text(content).encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800" cannot be tokenized or echoed
            raise invalid(
                f"messages[{index}].content holds a lone surrogate at character {exc.start}: send valid Unicode text",
                f"messages[{index}].content",
                "invalid_value",
            ) from None
        out.append({"role": ROLES[role], "content": content})
    return out


def _stop(value) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid(f"stop must be a string or a list of strings, got {value!r}"[:200], "stop", "invalid_type")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise invalid(
            f"stop has {len(stops)} sequences: at most {MAX_STOP_SEQUENCES} are allowed", "stop", "invalid_value"
        )
    if any(s == "" for s in stops):
        raise invalid(
            "stop contains an empty string: remove it (an empty stop would end every reply at once)",
            "stop",
            "invalid_value",
        )
    return list(stops)


def refuse_unsupported(body: dict) -> None:
    """Known OpenAI fields that would change the output but that this server cannot honour."""
    if body.get("tools") or body.get("functions"):
        name = "tools" if body.get("tools") else "functions"
        raise invalid(
            f"{name} is not supported by this server: send plain chat messages", name, "unsupported_parameter"
        )
    if body.get("logprobs") or body.get("top_logprobs"):
        name = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise invalid(f"{name} is not supported by this server: leave it out", name, "unsupported_parameter")
    if body.get("logit_bias"):
        raise invalid("logit_bias is not supported by this server: leave it out", "logit_bias", "unsupported_parameter")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise invalid(
            f'response_format {response_format!r} is not supported: only {{"type": "text"}}'[:200],
            "response_format",
            "unsupported_parameter",
        )


def parse_chat_request(
    body,
    defaults: SamplingParams,
    max_n: int = 8,
    *,
    max_messages: int = MAX_MESSAGES,
    images: ImageLimits = DEFAULT_IMAGE_LIMITS,
) -> ChatRequest:
    """Validate a decoded JSON body; raise APIError(400) naming the first bad field.

    Fields the body leaves out take `defaults` (the `generation` config); `n` may be at most `max_n`,
    `messages` hold at most `max_messages`.
    """
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid(
            f"model must be a non-empty string naming a model from /v1/models, got {model!r}", "model", "invalid_value"
        )
    messages = parse_messages(body.get("messages"), max_messages, images)
    refuse_unsupported(body)

    max_tokens = _positive_int(body, "max_tokens")
    max_completion_tokens = _positive_int(body, "max_completion_tokens")
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        raise invalid(
            f"max_tokens ({max_tokens}) and max_completion_tokens ({max_completion_tokens}) disagree: "
            "send only max_completion_tokens",
            "max_tokens",
            "invalid_value",
        )
    n = _positive_int(body, "n", max_n) or 1

    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not INT64_MIN <= seed <= INT64_MAX):
        raise invalid(f"seed must be a 64-bit integer, got {seed!r}", "seed", "invalid_value")

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid(f"stream must be true or false, got {stream!r}", "stream", "invalid_type")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise invalid(
                "stream_options is only allowed when stream is true: set stream=true or drop stream_options",
                "stream_options",
                "invalid_value",
            )
        if not isinstance(stream_options, dict):
            raise invalid(f"stream_options must be an object, got {stream_options!r}", "stream_options", "invalid_type")
        include_usage = stream_options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise invalid(
                f"stream_options.include_usage must be true or false, got {include_usage!r}",
                "stream_options.include_usage",
                "invalid_type",
            )

    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid(f"user must be a string, got {user!r}", "user", "invalid_type")

    stop = _stop(body.get("stop"))
    params = SamplingParams(
        max_tokens=max_completion_tokens or max_tokens or defaults.max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, defaults.temperature),
        top_p=_number(body, "top_p", 0.0, 1.0, defaults.top_p, low_open=True),
        seed=seed if seed is not None else defaults.seed,
        stop=stop if stop is not None else list(defaults.stop),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, defaults.presence_penalty),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, defaults.frequency_penalty),
    )
    return ChatRequest(
        model=model, messages=messages, params=params, n=n, stream=bool(stream), include_usage=include_usage, user=user
    )


# ----- responses ---------------------------------------------------------------------------


def finish_reason(completion: Completion) -> str:
    """OpenAI knows "stop" and "length"; a reply cancelled by its caller ended early, as at a stop."""
    return "length" if completion.finish_reason == "length" else "stop"


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_body(completions: list[Completion]) -> dict:
    """Usage over a request's choices: the prompt counts once, every choice's tokens count."""
    prompt_tokens = completions[0].usage.prompt_tokens if completions else 0
    completion_tokens = sum(c.usage.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Response:
    """One response's identity; builds its `chat.completion` body or its `chat.completion.chunk`s."""

    model: str
    request_id: str = field(default_factory=new_request_id)
    created: int = field(default_factory=lambda: now_s())
    fingerprint: str | None = None  # system_fingerprint (the plan's hardware fingerprint)
    include_usage: bool = False  # streaming: end with a usage chunk (and usage: null on the others)

    def _head(self, kind: str) -> dict:
        return {
            "id": self.request_id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def completion(self, completions: list[Completion]) -> dict:
        return {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason(c),
                }
                for i, c in enumerate(completions)
            ],
            "usage": usage_body(completions),
        }

    def chunk(self, index: int, delta: dict, finish: str | None = None) -> dict:
        body = {
            **self._head("chat.completion.chunk"),
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            body["usage"] = None  # OpenAI sends usage: null on every chunk but the last when usage is asked for
        return body

    def role_chunk(self, index: int) -> dict:
        return self.chunk(index, {"role": "assistant", "content": ""})

    def finish_chunk(self, index: int, completion: Completion) -> dict:
        return self.chunk(index, {}, finish_reason(completion))

    def usage_chunk(self, completions: list[Completion]) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage_body(completions)}

    def stream(self, text_stream) -> Iterator[dict]:
        """The chunks of one choice as OpenAI streams them: the role, content deltas, one chunk with the
        finish_reason and an empty delta, then (include_usage) a usage chunk with no choices.
        `text_stream` yields text deltas and has `.completion` afterwards; it is closed however this ends.
        """
        try:
            yield self.role_chunk(0)
            for delta in text_stream:
                yield self.chunk(0, {"content": delta})
            yield self.finish_chunk(0, text_stream.completion)
            if self.include_usage:
                yield self.usage_chunk([text_stream.completion])
        finally:
            text_stream.close()


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "shardwise"}


def now_s() -> int:
    return int(time.time())
