"""The Python API with the seed's shape: OpenAIChat, create_chat_completion, clear_memory.

    from runner import OpenAIChat, create_chat_completion
    chat = OpenAIChat(model="gpt2", use_cpu=True)
    print(chat.chat([{"role": "user", "content": "Hello"}], max_tokens=100))
    chat.create(messages)                     # the full OpenAI chat.completion dict
    create_chat_completion(model="gpt2", messages=[...], max_tokens=50, stream=True)  # chunk dicts

A model name may be a profile name or alias, a local model directory (`./my-model`) or any hub id
(`Qwen/Qwen2.5-7B-Instruct`, planned from its config and safetensors headers, from the HF cache when
offline); `model_path=` plans a local model directory too. The plan is made for this machine
(`use_cpu=True`: for the CPU); when it does not fit, the plan's fallback chain (smaller model, then
CPU) is walked, announced. A plan or profile asking for code shipped with the model runs only with
`trust_remote_code=True` (the caller's consent, as on the CLI); otherwise ShardwiseError.

Threads may share one OpenAIChat: with `overrides=["policy.sessions=N"]` N calls generate together in one continuous
batch and the others wait their turn, up to `queue_timeout_s` (600 s) while the line is full; only then does a call
raise QueueFull (a ShardwiseError) naming what to change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

from planner.errors import ShardwiseError
from runner.api_args import check_sampling_kwargs, checked_messages
from runner.engine.sampling import SamplingParams
from runner.engine.types import Completion
from runner.openai.protocol import APIError, Response, refuse_images
from runner.plan_fitting import parse_max_memory, plan_that_fits, print_notice

_UNSET = object()
_CONSENT_HOW = "pass trust_remote_code=True"


def _profile_or_hub_node(model: str) -> dict:
    """The model config a name stands for, enough to find its hub id: a profile's, or the hub id itself."""
    from planner.config.overrides import resolve_model_name
    from planner.config.reader import load_profile

    try:
        return load_profile(resolve_model_name(model))
    except ShardwiseError:  # not a profile: a hub id is checked as it is; anything else is planning's to refuse
        return {"hub_id": model, "name": model}


def _composed(overrides):
    """The plan config with `overrides` (what Hydra refuses is a one-line ShardwiseError from compose)."""
    from planner.config.compose import compose

    return compose("plan", list(overrides))


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
        notice: Callable[[str], None] = print_notice,
        recovery=None,
        batching: bool = True,
        queue_timeout_s: float = 600.0,
        trust_remote_code: bool = False,
    ):
        from runner.api_args import check_chat_args
        from runner.engine.preflight import (
            check_model_reachable,
            check_remote_code,
            check_weights_reachable,
            consents_to_remote_code,
        )
        from runner.engine.recovery import RecoveryPolicy, load_with_fallbacks
        from runner.engine.session import ChatSession

        check_chat_args(model, use_cpu, max_memory, model_path, hardware, overrides, system_prompt, trust_remote_code)
        if (
            isinstance(queue_timeout_s, bool)
            or not isinstance(queue_timeout_s, (int, float))
            or not 0 <= queue_timeout_s < float("inf")
        ):
            raise ShardwiseError(f"queue_timeout_s must be seconds >= 0, got {queue_timeout_s!r:.40}")
        # the CLI's rule: a plan or profile never consents to running the model's own Python; the caller does
        consent = consents_to_remote_code(trust_remote_code, overrides, fresh_plan=plan is None)
        if defaults is not None:
            defaults = defaults.checked()
        if overrides:  # a typo'd key is bad input: said before the model is looked up or fetched
            composed = _composed(overrides)
            if defaults is None and any(o.lstrip("+~").startswith("generation.") for o in overrides):
                defaults = SamplingParams.from_generation(composed.generation)
        checked = False
        if plan is None and not model_path:
            checked = check_model_reachable(_profile_or_hub_node(model))  # offline: one error before planning
        if plan is None:
            hw = "cpu" if use_cpu else (hardware or "auto")
            from planner.config.compose import make_plan

            plan = make_plan(model=model, hardware=hw, overrides=list(overrides), model_path=model_path)
        check_remote_code(plan, consent, _CONSENT_HOW)
        # OOM-time fallbacks obey this caller's consent (a copy: a policy shared with another chat keeps its own)
        self.recovery = replace(recovery or RecoveryPolicy(), remote_code_consent=consent)
        plan = plan_that_fits(
            plan, notice=notice, plan_fallback=self.recovery.plan_fallback, caps=parse_max_memory(max_memory)
        )
        check_remote_code(plan, consent, _CONSENT_HOW)  # a fallback model may ask too
        if not checked:
            check_weights_reachable(plan)  # offline and uncached: one ShardwiseError now, not minutes of retries
        loaded = load_with_fallbacks(plan, policy=self.recovery, notice=notice)
        self.session = ChatSession(
            loaded,
            defaults=defaults or SamplingParams(),
            plan=loaded.plan,
            system_prompt=system_prompt,
            recovery=self.recovery,
            on_notice=notice,
        )
        serving = loaded.plan.serving if loaded.plan is not None else None
        if batching and serving is not None and serving.max_concurrent > 1:
            # calls from several threads then share one continuous batch (plan: policy.sessions=N or auto)
            from runner.engine.batching import attach

            attach(
                loaded,
                serving,
                max_waiting=4 * serving.max_concurrent,
                log=notice,
                full_wait_s=queue_timeout_s,
                bound=(
                    f"OpenAIChat(queue_timeout_s={queue_timeout_s:g}): call from fewer threads, pass a larger "
                    "queue_timeout_s, or plan more sessions with overrides=['policy.sessions=N']"
                ),
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
        return SamplingParams(
            max_tokens=pick(max_tokens, base.max_tokens),
            temperature=pick(temperature, base.temperature),
            top_p=pick(top_p, base.top_p),
            seed=pick(seed, base.seed),
            stop=list(stops) if isinstance(stops, (list, tuple)) else stops,
            presence_penalty=pick(presence_penalty, base.presence_penalty),
            frequency_penalty=pick(frequency_penalty, base.frequency_penalty),
        ).checked()

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
        return self.session.generate(self._messages(messages), params)

    def _messages(self, messages):
        """Checked messages; an image part for a model that takes none is a ShardwiseError naming the part."""
        messages = checked_messages(messages)
        if not self.session.takes_images:
            try:
                refuse_images(messages, self.model_name)
            except APIError as exc:
                raise ShardwiseError(exc.message) from None
        return messages

    def chat(self, messages: list[dict], max_tokens=_UNSET, **sampling) -> str:
        """The assistant's reply text (the seed's `chat.chat(messages, max_tokens=100)`; 100 when left out)."""
        sampling = check_sampling_kwargs("chat", _with_max_tokens(max_tokens, sampling))
        sampling.setdefault("max_tokens", 100)
        return self.completion(messages, **sampling).text

    def create(self, messages: list[dict], max_tokens=_UNSET, **sampling) -> dict:
        """The full OpenAI `chat.completion` object as a dict."""
        sampling = check_sampling_kwargs("create", _with_max_tokens(max_tokens, sampling))
        return Response(self.model_name).completion([self.completion(messages, **sampling)])

    def stream(
        self, messages: list[dict], max_tokens=_UNSET, *, include_usage: bool = False, **sampling
    ) -> Iterator[dict]:
        """`chat.completion.chunk` dicts as OpenAI streams them: the role, content deltas, one chunk with the
        finish_reason and an empty delta, then (include_usage) a usage chunk with no choices.

        Generation starts when the first chunk is asked for, and stops when the iterator is closed.
        """
        sampling = check_sampling_kwargs("stream", _with_max_tokens(max_tokens, sampling))
        params = self._params(
            sampling.pop("max_tokens", _UNSET),
            *(
                sampling.get(k, _UNSET)
                for k in ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
            ),
        )
        messages = self._messages(messages)
        return _chunks(self.session, messages, params, Response(self.model_name, include_usage=include_usage))

    def clear_memory(self) -> None:
        self.session.clear_memory()

    def close(self) -> None:
        """Stop the continuous-batching loop (if this chat planned sessions); later calls run one at a time.

        Not required before exit (the loop's thread never holds the process open); `with OpenAIChat(...) as chat:`
        calls it at the end of the block."""
        engine = getattr(self.session.loaded, "batching", None)
        if engine is not None:
            engine.close()

    def __enter__(self) -> OpenAIChat:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _with_max_tokens(max_tokens, sampling: dict) -> dict:
    """A call's keyword arguments with its max_tokens among them (left out when the caller left it out)."""
    return sampling if max_tokens is _UNSET else {"max_tokens": max_tokens, **sampling}


def _chunks(session, messages: list[dict], params: SamplingParams, response) -> Iterator[dict]:
    """Generation starts at the first chunk asked for (a generator), and stops when the iterator is closed."""
    yield from response.stream(session.stream(messages, params, cancel=threading.Event()))


_CACHE: dict[tuple, OpenAIChat] = {}
_CACHE_LOCK = threading.Lock()


def _cached_chat(
    model: str, use_cpu: bool, hardware: str | None, model_path: str | None, trust_remote_code: bool = False
) -> OpenAIChat:
    from pathlib import Path

    from planner.files import names_existing

    local = isinstance(model, str) and names_existing(model)  # "./m" names another model elsewhere
    # consent is part of the key: a call without it never reuses a model loaded with it
    key = (str(Path(model).expanduser().resolve()) if local else model, use_cpu, hardware, model_path)
    key += (trust_remote_code,)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = OpenAIChat(
                model=model,
                use_cpu=use_cpu,
                hardware=hardware,
                model_path=model_path,
                trust_remote_code=trust_remote_code,
            )
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
    trust_remote_code: bool = False,
    **sampling,
):
    """OpenAI-shaped dict (or an iterator of chunk dicts with stream=True); one loaded model per (model, hardware).

    `trust_remote_code=True` is consent to run Python shipped with the model when its plan asks for it;
    without it such a model is refused (ShardwiseError). It never turns remote code on for a plan that
    does not ask."""
    from runner.api_args import check_completion_args

    check_completion_args(
        model, stream, sampling.get("stream_options"), use_cpu, hardware, model_path, trust_remote_code
    )
    if not messages:
        raise ShardwiseError("messages is empty: pass at least one {'role': 'user', 'content': ...} message")
    messages = checked_messages(messages)
    stream_options = sampling.pop("stream_options", None) or {}
    if stream_options and not stream:
        raise ShardwiseError("stream_options is only allowed with stream=True")
    # checked before a model is looked up or loaded, like every other argument
    check_sampling_kwargs("create_chat_completion", _with_max_tokens(max_tokens, sampling))
    chat = _cached_chat(model, use_cpu, hardware, model_path, trust_remote_code)
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
