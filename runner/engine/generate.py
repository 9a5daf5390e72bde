"""The generation loop every path runs: ChatSession and each tensor-parallel rank call `generate_ids`.

    completion = generate_ids(model, tokenizer, prompt_ids, params, max_new_tokens=64, eos_ids={2}, pad_id=0)

Rules it keeps (the same on one process and on every torchrun rank, whose logits agree):
- temperature 0 is greedy; top_p is nucleus sampling with no top-k; a seed seeds torch's RNG right
  before generating (callers that share a process hold a lock around it);
- presence/frequency penalties follow OpenAI's definition exactly (subtract presence once and
  frequency x count from the logit of every token already generated in this reply; prompt tokens
  do not count). transformers' repetition_penalty is a different, multiplicative rule over prompt
  and reply together, so it is not used;
- stop strings are matched on the generated text only (a match that would straddle the prompt
  boundary cannot trigger) and trimmed; streamed text holds back only its end that could still
  become a stop string (the longest tail that is the start of one), so deltas are not delayed by
  a stop string the reply is not writing;
- a prompt longer than the plan's `prefill_chunk_tokens` is prefilled in chunks of that size
  (the plan asks for it when a one-pass prefill would not fit);
- usage: prompt_tokens = tokens fed to the model, completion_tokens = tokens it generated (an eos
  token counts, it was computed; token_ids exclude it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from runner.engine.sampling import SamplingParams
from runner.engine.types import Completion, Usage


class _Tracker:
    """A StoppingCriteria that sees every new token: timing, stop strings, cancellation, deltas."""

    def __init__(self, tokenizer, stops, cancel, on_delta, eos_ids):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.cancel = cancel
        self.on_delta = on_delta
        self.eos_ids = eos_ids
        self.decode_each_step = bool(self.stops) or on_delta is not None
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of self.text already sent as deltas
        self.deltas = 0  # non-empty deltas sent
        self.stop_at: int | None = None
        self.saw_eos = False
        self.cancelled = False
        self.first_token_t: float | None = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = self.push(int(input_ids[0, -1]))
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def push(self, token: int) -> bool:
        """Take one generated token (from generate() or the batching engine); True: stop generating."""
        if self.first_token_t is None:
            self.first_token_t = time.perf_counter()
        self.ids.append(token)
        if token in self.eos_ids:
            self.saw_eos = True
        elif self.decode_each_step:
            self._update_text()
        done = self.stop_at is not None
        if self.cancel is not None and self.cancel.is_set():
            self.cancelled = done = True
        return done

    @property
    def content_ids(self) -> list[int]:
        return [t for t in self.ids if t not in self.eos_ids]

    def _update_text(self) -> None:
        self.text = self.tokenizer.decode(self.content_ids, skip_special_tokens=True)
        for stop in self.stops:
            at = self.text.find(stop)
            if at >= 0 and (self.stop_at is None or at < self.stop_at):
                self.stop_at = at
        if self.on_delta is None:
            return
        if self.stop_at is not None:
            safe_end = self.stop_at
        else:
            # A trailing replacement character is half of a multi-byte character: wait for the rest.
            stripped = self.text.rstrip("\ufffd")
            safe_end = len(stripped) - _stop_prefix_tail(stripped, self.stops)
        self._emit(safe_end)

    def _emit(self, end: int) -> None:
        if end > self.emitted:
            self.on_delta(self.text[self.emitted : end])
            self.emitted = end
            self.deltas += 1

    def finish(self) -> str:
        """Final text (stop string trimmed); sends whatever was held back."""
        self._update_text()
        end = self.stop_at if self.stop_at is not None else len(self.text)
        if self.on_delta is not None:
            self._emit(end)
        return self.text[:end]


def _stop_prefix_tail(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string (0: none is): the characters a
    stream must hold back. Any stop string that could still complete starts inside that end, so everything before it
    is final."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


class _OpenAIPenalties:
    """logits -= presence * [count > 0] + frequency * count, counts over this reply's tokens."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len = prompt_len
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def model_eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a reply: the model's generation config and the tokenizer's eos."""
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(x) for x in source)
    return ids


def model_pad_id(tokenizer, eos: set[int]) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else min(eos, default=0)


def generate_ids(
    model,
    tokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    stops: tuple[str, ...] = (),
    prefill_chunk_tokens: int = 0,
    device=None,
    cancel: threading.Event | None = None,
    on_delta: Callable[[str], None] | None = None,
    started_s: float | None = None,
    model_inputs: dict | None = None,
) -> Completion:
    """One reply to `prompt_ids` (already fitted); `started_s` is when the request began, for time to first token.

    `model_inputs`: what a processor made beside the ids (pixel_values, image sizes, ...), passed to generate()
    on `device`, floating-point tensors in the model's dtype.
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    start = started_s if started_s is not None else time.perf_counter()
    tracker = _Tracker(tokenizer, [*params.stop, *stops], cancel, on_delta, eos_ids)
    generation_config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    greedy = params.greedy
    generation_config.update(
        max_new_tokens=max_new_tokens,
        min_new_tokens=None,
        max_length=None,
        do_sample=not greedy,
        temperature=None if greedy else params.temperature,
        top_p=None if greedy else params.top_p,
        top_k=None,
        num_beams=1,
        repetition_penalty=None,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
    )
    processors = LogitsProcessorList()
    if params.presence_penalty or params.frequency_penalty:
        processors.append(_OpenAIPenalties(len(prompt_ids), params.presence_penalty, params.frequency_penalty))
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    extra = _on_device(model_inputs or {}, device, model.dtype)
    if params.seed is not None:
        torch.manual_seed(params.seed)
    with torch.inference_mode():
        cache = prefill_in_chunks(model, input_ids, prefill_chunk_tokens)
        model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **({cache_keyword(model): cache} if cache is not None else {}),
            **extra,
            generation_config=generation_config,
            stopping_criteria=StoppingCriteriaList([tracker]),
            logits_processor=processors,
        )
    return _completion(tracker, prompt_ids, start)


def _on_device(inputs: dict, device, dtype) -> dict:
    import torch

    moved = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        moved[name] = value
    return moved


def generate_ids_batched(
    engine,
    tokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    stops: tuple[str, ...] = (),
    cancel: threading.Event | None = None,
    on_delta: Callable[[str], None] | None = None,
    started_s: float | None = None,
) -> Completion:
    """generate_ids' twin for a turn that joins the model's continuous batch (runner.engine.batching).

    The same tracker sees every token, so stop strings, held-back deltas, usage and timing follow the
    same rules; the engine samples with the request's own temperature and top_p (greedy: argmax).
    """
    start = started_s if started_s is not None else time.perf_counter()
    tracker = _Tracker(tokenizer, [*params.stop, *stops], cancel, on_delta, eos_ids)
    result = engine.generate(
        prompt_ids,
        params,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        on_token=tracker.push,
        cancel=cancel if cancel is not None else threading.Event(),
    )
    tracker.cancelled = tracker.cancelled or result.cancelled
    completion = _completion(tracker, prompt_ids, start)
    completion.batch_size = result.batch_size
    return completion


def _completion(tracker: _Tracker, prompt_ids: list[int], start: float) -> Completion:
    text = tracker.finish()
    end = time.perf_counter()
    if tracker.cancelled:
        finish = "cancelled"
    elif tracker.stop_at is not None or tracker.saw_eos:
        finish = "stop"
    else:
        finish = "length"
    first = tracker.first_token_t or end
    generated = len(tracker.ids)
    return Completion(
        text=text,
        finish_reason=finish,
        usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=generated),
        token_ids=tracker.content_ids,
        time_to_first_token_s=first - start,
        tokens_per_s=(generated - 1) / (end - first) if generated > 1 and end > first else None,
    )


def prefill_in_chunks(model, input_ids, chunk: int):
    """Run all but the last prompt token through the model `chunk` tokens at a time; return the cache.

    The plan asks for this when a one-pass prefill would not fit (eager attention's T x T scores,
    or a sliding cache holding a whole long prompt). generate() then feeds only the last token.
    None when the prompt is short enough for one pass.
    """
    from transformers import DynamicCache

    total = input_ids.shape[1]
    if chunk <= 0 or total <= chunk:
        return None
    cache = DynamicCache(config=model.config)
    keyword = cache_keyword(model)
    for start in range(0, total - 1, chunk):
        piece = input_ids[:, start : min(start + chunk, total - 1)]
        model(input_ids=piece, use_cache=True, logits_to_keep=1, **{keyword: cache})
    return cache


def cache_keyword(model) -> str:
    """transformers 5.2x renamed `past_key_values` to `cache`; use whichever this version takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
