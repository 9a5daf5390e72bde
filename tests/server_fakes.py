"""A fake ChatSession for the server tests: the session contract without a model.

Replies are words drawn from a fixed vocabulary: greedy (temperature 0) replies depend only on
the prompt, sampled ones only on the seed, so tests can predict and compare them. It honours
max_tokens ("length"), stop strings (trimmed; streamed text holds back a possible stop prefix),
the cancel event ("cancelled", and it records that it saw it), the context window
(ContextLengthError), and can be told to sleep per token or to fail before or after some tokens.
"""

from __future__ import annotations

import random
import threading
import time

from runner.engine.types import Completion, SamplingParams, Usage

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]


class FakeTextStream:
    def __init__(self, run):
        self.completion: Completion | None = None
        self._deltas = []
        self._iter = self._generate(run)

    def _generate(self, run):
        pending: list[str] = []
        generator = run(pending.append)
        while True:
            try:
                next(generator)
            except StopIteration as done:
                self.completion = done.value
                yield from pending
                return
            yield from pending
            pending.clear()

    def __iter__(self):
        return self._iter


class FakeSession:
    def __init__(
        self,
        *,
        context_tokens: int = 64,
        token_delay_s: float = 0.0,
        fail_with: BaseException | None = None,
        fail_after_tokens: int = 0,
        reply_tokens: int | None = None,
    ):
        self.context_tokens = context_tokens
        self.token_delay_s = token_delay_s
        self.fail_with = fail_with
        self.fail_after_tokens = fail_after_tokens
        self.reply_tokens = reply_tokens  # the reply ends by itself ("stop") after this many tokens
        self.cancel_seen = threading.Event()
        self.started = threading.Event()
        self.calls: list[tuple[list[dict], SamplingParams]] = []
        self._lock = threading.Lock()  # one generation at a time, like the real session

    def prompt_token_count(self, messages: list[dict]) -> int:
        return sum(2 + len(m["content"].split()) for m in messages) + 1

    def _words(self, messages, params: SamplingParams):
        if params.temperature == 0:
            start = sum(len(m["content"]) for m in messages)
            return (WORDS[(start + i) % len(WORDS)] for i in range(10**6))
        rng = random.Random(params.seed)
        return (rng.choice(WORDS) for _ in range(10**6))

    def _run(self, messages, params: SamplingParams, cancel, on_delta):
        """A generator: yields after each token (so deltas flow), returns the Completion."""
        from runner.engine.session import ContextLengthError

        prompt = self.prompt_token_count(messages)
        if prompt >= self.context_tokens:
            raise ContextLengthError(
                f"the prompt is {prompt} tokens but the context window holds {self.context_tokens}: shorten it"
            )
        with self._lock:
            self.calls.append((messages, params))
            self.started.set()
            start = time.perf_counter()
            text, emitted, tokens, finish, first = "", 0, 0, "length", None
            holdback = max((len(s) for s in params.stop), default=1) - 1
            words = self._words(messages, params)
            limit = min(params.max_tokens, self.context_tokens - prompt)
            while tokens < limit:
                if cancel is not None and cancel.is_set():
                    self.cancel_seen.set()
                    finish = "cancelled"
                    break
                if self.fail_with is not None and tokens >= self.fail_after_tokens:
                    raise self.fail_with
                if self.token_delay_s:
                    time.sleep(self.token_delay_s)
                text += (" " if text else "") + next(words)
                tokens += 1
                first = first or time.perf_counter()
                hits = [text.find(s) for s in params.stop if s in text]
                if hits:
                    text, finish = text[: min(hits)], "stop"
                    break
                if self.reply_tokens is not None and tokens >= self.reply_tokens:
                    finish = "stop"
                    break
                if on_delta is not None and len(text) - holdback > emitted:
                    on_delta(text[emitted : len(text) - holdback])
                    emitted = len(text) - holdback
                yield
            if on_delta is not None and len(text) > emitted:
                on_delta(text[emitted:])
            end = time.perf_counter()
        return Completion(
            text=text,
            finish_reason=finish,
            usage=Usage(prompt_tokens=prompt, completion_tokens=tokens),
            time_to_first_token_s=(first or end) - start,
            tokens_per_s=tokens / (end - start) if end > start else None,
        )

    def generate(self, messages, params: SamplingParams, *, cancel=None, on_delta=None) -> Completion:
        generator = self._run(messages, params, cancel, on_delta)
        while True:
            try:
                next(generator)
            except StopIteration as done:
                return done.value

    def stream(self, messages, params: SamplingParams, *, cancel=None) -> FakeTextStream:
        return FakeTextStream(lambda on_delta: self._run(messages, params, cancel, on_delta))
