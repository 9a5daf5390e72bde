"""ChatSession: one conversation with a loaded model (template, context window, sampling, streaming).

    session = ChatSession(loaded, defaults=SamplingParams(max_tokens=128))
    reply = session.send("hello")                       # keeps history
    for delta in session.stream(messages, params): ...  # stateless, cancellable

Rules it keeps:
- the prompt is rendered with the tokenizer's chat template, else the plan's profile template,
  else a plain "Role: text" template (gpt2), which also stops at the next "\nUser:" line;
- the prompt stays inside the context window: the oldest non-system turns are dropped (with a
  notice); a conversation that cannot fit even with only its last message raises
  ContextLengthError; max_tokens is capped by the room left and by the plan's max_new_tokens;
- temperature 0 is greedy; top_p is nucleus sampling with no top-k; a seed seeds torch's RNG
  right before the turn (under the model lock, so concurrent turns cannot disturb it);
- presence/frequency penalties follow OpenAI's definition exactly (subtract presence once and
  frequency x count from the logit of every token already generated in this reply; prompt
  tokens do not count). transformers' repetition_penalty is a different, multiplicative rule
  over prompt and reply together, so it is not used;
- stop strings are matched on the generated text only (a match that would straddle the prompt
  boundary cannot trigger) and trimmed; streamed text holds back the characters that could
  still become a stop string;
- usage: prompt_tokens = tokens fed to the model, completion_tokens = tokens it generated
  (an eos token counts, it was computed; token_ids exclude it);
- when the model has a batching engine (runner.engine.batching, `loaded.batching`), turns join its
  continuous batch; turns it cannot batch (a seed, penalties) and models without one run generate()
  one at a time (the LoadedModel's lock, with the batching loop paused); out-of-memory goes through
  runner.engine.recovery's ladder without losing the conversation.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from planner.errors import ShardwiseError
from runner.engine.types import Completion, SamplingParams, Usage

SEEDED_SAMPLING = threading.Lock()

FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# Models without a template (gpt2) happily write the next user turn themselves.
FALLBACK_STOPS = ("\nUser:",)


class ContextLengthError(ShardwiseError):
    """A single message (with the system prompt) does not fit in the context window."""


class _Tracker:
    """A StoppingCriteria that sees every new token: timing, stop strings, cancellation, deltas."""

    def __init__(self, tokenizer, stops, cancel, on_delta, eos_ids):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
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
            safe_end = len(self.text) - self.holdback
            # A trailing replacement character is half of a multi-byte character: wait for the rest.
            stripped = self.text.rstrip("\ufffd")
            safe_end = min(safe_end, len(stripped))
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


_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class TextStream:
    """Iterate for text deltas; `.completion` is set once iteration ends.

    The generation runs in a worker thread that always ends the queue, so an exception there is
    re-raised here instead of leaving the reader waiting. `close()` (or breaking out and
    dropping the stream) cancels the generation.
    """

    def __init__(
        self,
        run: Callable[[Callable[[str], None]], Completion],
        cancel: threading.Event,
        on_done: Callable | None = None,
    ):
        self.cancel = cancel
        self.completion: Completion | None = None
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._run = run
        self._on_done = on_done
        self._finished = False
        self._thread = threading.Thread(target=self._work, name="shardwise-generate", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            self.completion = self._run(self._queue.put)
        except BaseException as exc:  # forwarded to the reader, never swallowed
            self.error = exc
            self._queue.put(_Failure(exc))
        finally:
            if self._on_done is not None:
                try:
                    self._on_done(self.completion, self.error)
                except BaseException as exc:  # a broken hook must not hang the reader
                    self._queue.put(_Failure(exc))
            self._queue.put(_END)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._finished = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.exc
        return item

    def close(self) -> None:
        """Cancel the generation and wait for the worker to finish."""
        self.cancel.set()
        while not self._finished:
            try:
                next(self)
            except StopIteration:
                break
            except BaseException:
                continue

    def __del__(self):
        if not self._finished:
            self.cancel.set()


def _eos_ids(loaded) -> set[int]:
    ids: set[int] = set()
    for source in (loaded.model.generation_config.eos_token_id, loaded.tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(x) for x in source)
    return ids


class ChatSession:
    """A conversation with one loaded model; the server and the REPL both drive it."""

    def __init__(
        self,
        loaded,
        *,
        defaults: SamplingParams,
        plan=None,
        system_prompt: str | None = None,
        recovery=None,
        on_notice: Callable[[str], None] | None = None,
        telemetry=None,
    ):
        from runner.engine.recovery import RecoveryPolicy
        from runner.engine.telemetry import Telemetry

        self.loaded = loaded
        self.plan = plan if plan is not None else loaded.plan
        self.defaults = defaults
        self.system_prompt = system_prompt
        self.history: list[dict] = []
        self.recovery = recovery or RecoveryPolicy()
        self.on_notice = on_notice or (lambda line: print(line, file=sys.stderr, flush=True))
        self.telemetry = telemetry or Telemetry(None)
        self.last_completion: Completion | None = None
        self._configure()

    # -- model facts -------------------------------------------------------------------------
    def _configure(self) -> None:
        tokenizer = self.loaded.tokenizer
        profile_template = getattr(self.plan.model, "chat_template", None) if self.plan is not None else None
        self.template = tokenizer.chat_template or profile_template or FALLBACK_TEMPLATE
        self.template_stops = FALLBACK_STOPS if self.template == FALLBACK_TEMPLATE else ()
        self.eos_ids = _eos_ids(self.loaded)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    @property
    def context_tokens(self) -> int:
        """Prompt + reply tokens per turn: the plan's limit, else the model's own maximum."""
        planned = self.plan.limits.context_tokens if self.plan is not None else 0
        config = self.loaded.model.config
        own = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        return min(planned, own) if planned else own

    def swap_model(self, loaded, plan=None) -> None:
        """Continue this conversation on another model (the recovery ladder's fallback)."""
        self.loaded = loaded
        self.plan = plan if plan is not None else loaded.plan
        self._configure()

    # -- prompt ------------------------------------------------------------------------------
    def _with_system(self, messages: list[dict]) -> list[dict]:
        if self.system_prompt and not any(m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def _encode(self, messages: list[dict]) -> list[int]:
        tokenizer = self.loaded.tokenizer
        text = tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_token_count(self, messages: list[dict]) -> int:
        return len(self._encode(self._with_system(messages)))

    def fit_prompt(self, messages: list[dict], max_tokens: int) -> tuple[list[int], int]:
        """Prompt ids inside the context window, and how many oldest messages were dropped."""
        context = self.context_tokens
        reply_room = max(1, min(max_tokens, context // 4))
        kept = self._with_system(messages)
        dropped = 0
        ids = self._encode(kept)
        while len(ids) + reply_room > context:
            droppable = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
            if not droppable:
                break
            del kept[droppable[0]]
            dropped += 1
            # Never start the kept conversation with an orphaned assistant reply.
            first = next((i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"), None)
            if first is not None and kept[first].get("role") == "assistant":
                del kept[first]
                dropped += 1
            ids = self._encode(kept)
        if len(ids) >= context:
            last = kept[-1] if kept else {"content": ""}
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens (last message {len(self._encode([last]))} tokens with its template) "
                f"but the context window holds {context}: shorten the message, or plan a longer context "
                f"(policy.context_tokens)"
            )
        return ids, dropped

    # -- generation --------------------------------------------------------------------------
    def _params(self, params: SamplingParams | None) -> SamplingParams:
        return params if params is not None else self.defaults

    def _attempt(self, messages, params: SamplingParams, cancel, on_delta) -> Completion:
        from runner.engine.recovery import MemoryExhaustedError

        if self.loaded.model is None:
            raise MemoryExhaustedError(
                f"{self.loaded.name} was unloaded after running out of memory and could not be loaded again: "
                f"restart with a smaller model or hardware=cpu"
            )
        start = time.perf_counter()
        prompt_ids, dropped = self.fit_prompt(messages, params.max_tokens)
        notices = []
        if dropped:
            notices.append(
                f"dropped the {dropped} oldest message(s) to keep the prompt ({len(prompt_ids)} tokens) "
                f"inside the {self.context_tokens}-token context"
            )
            self.on_notice(notices[-1])
        room = self.context_tokens - len(prompt_ids)
        max_new = min(params.max_tokens, room)
        plan_cap = self.plan.limits.max_new_tokens if self.plan is not None else 0
        if plan_cap:
            max_new = min(max_new, plan_cap)
        loaded = self.loaded
        tracker = _Tracker(loaded.tokenizer, [*params.stop, *self.template_stops], cancel, on_delta, self.eos_ids)
        batching = getattr(loaded, "batching", None)
        batch_size = 1
        if batching is not None and batching.batchable(params) is None:
            result = batching.generate(
                prompt_ids,
                params,
                max_new_tokens=max_new,
                eos_ids=self.eos_ids,
                on_token=tracker.push,
                cancel=cancel if cancel is not None else threading.Event(),
            )
            tracker.cancelled = tracker.cancelled or result.cancelled
            batch_size = result.batch_size
        else:
            self._generate_alone(loaded, batching, prompt_ids, params, max_new, tracker)
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
            notices=notices,
            batch_size=batch_size,
        )

    def _generate_alone(self, loaded, batching, prompt_ids, params, max_new, tracker) -> None:
        """One turn through generate(), with the batching loop (if any) paused meanwhile."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        generation_config = loaded.model.generation_config.__class__.from_dict(loaded.model.generation_config.to_dict())
        greedy = params.temperature <= 0
        generation_config.update(
            max_new_tokens=max_new,
            min_new_tokens=None,
            max_length=None,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None,
            num_beams=1,
            repetition_penalty=None,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids) or None,
        )
        processors = LogitsProcessorList()
        if params.presence_penalty or params.frequency_penalty:
            processors.append(_OpenAIPenalties(len(prompt_ids), params.presence_penalty, params.frequency_penalty))
        seeded = params.seed is not None and params.temperature > 0
        paused = batching.exclusive() if batching is not None else contextlib.nullcontext()
        # torch.manual_seed seeds one process-wide generator: seeded sampling on two models at once
        # would interleave their draws, so it takes a process-wide lock (after the model's own).
        with loaded.lock, paused, SEEDED_SAMPLING if seeded else contextlib.nullcontext():
            device = loaded.input_device
            input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.inference_mode():
                chunk = self.plan.limits.prefill_chunk_tokens if self.plan is not None else 0
                cache = prefill_in_chunks(loaded.model, input_ids, chunk) if chunk else None
                loaded.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    **({cache_keyword(loaded.model): cache} if cache is not None else {}),
                    generation_config=generation_config,
                    stopping_criteria=StoppingCriteriaList([tracker]),
                    logits_processor=processors,
                )

    def _generate(self, messages, params, cancel, on_delta) -> Completion:
        from runner.engine.recovery import generate_with_recovery

        emitted = [0]

        def counting(delta: str) -> None:
            emitted[0] += 1
            on_delta(delta)

        def attempt(p: SamplingParams) -> Completion:
            return self._attempt(messages, p, cancel, counting if on_delta is not None else None)

        self.telemetry.begin()
        completion = generate_with_recovery(self, attempt, params, emitted=lambda: emitted[0])
        self.telemetry.end(completion, self.plan, self.loaded.name)
        self.last_completion = completion
        return completion

    def generate(
        self, messages: list[dict], params: SamplingParams | None = None, *, cancel: threading.Event | None = None
    ) -> Completion:
        """One reply to `messages` (history is not touched)."""
        return self._generate(messages, self._params(params), cancel or threading.Event(), None)

    def stream(
        self,
        messages: list[dict],
        params: SamplingParams | None = None,
        *,
        cancel: threading.Event | None = None,
        on_done: Callable | None = None,
    ) -> TextStream:
        """Like generate(), as text deltas; errors from the generation thread re-raise while iterating."""
        cancel = cancel or threading.Event()
        params = self._params(params)
        return TextStream(lambda on_delta: self._generate(messages, params, cancel, on_delta), cancel, on_done)

    # -- conversation ------------------------------------------------------------------------
    def conversation(self) -> list[dict]:
        return self._with_system(self.history)

    def send(self, user_text: str, params: SamplingParams | None = None, *, stream: bool = False):
        """Add a user turn, reply to the whole history, and keep the reply (partial if cancelled)."""
        self.history.append({"role": "user", "content": user_text})
        messages = list(self.history)

        def settle(completion, error) -> None:
            if completion is not None:
                self.history.append({"role": "assistant", "content": completion.text})
            elif self.history and self.history[-1] == {"role": "user", "content": user_text}:
                self.history.pop()

        if stream:
            return self.stream(messages, params, on_done=settle)
        try:
            completion = self.generate(messages, params)
        except BaseException as exc:
            settle(None, exc)
            raise
        settle(completion, None)
        return completion

    def clear(self) -> None:
        self.history = []

    def clear_memory(self) -> None:
        from runner.engine.memory import clear_memory

        clear_memory()


def with_overrides(params: SamplingParams, **changes) -> SamplingParams:
    """A copy of `params` with the given fields changed (None leaves a field alone)."""
    return replace(params, **{k: v for k, v in changes.items() if v is not None})


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
