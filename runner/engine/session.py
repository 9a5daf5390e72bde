"""ChatSession: one conversation with a loaded model (template, context window, sampling, streaming).

    session = ChatSession(loaded, defaults=SamplingParams(max_tokens=128))
    reply = session.send("hello")                       # keeps history
    for delta in session.stream(messages, params): ...  # stateless, cancellable

Rules it keeps (the prompt rules live in runner.engine.prompt, the generation rules in
runner.engine.generate, shared with the tensor-parallel rank):
- max_tokens is capped by the room left in the context and by the plan's max_new_tokens;
- a seed is applied under the model lock and a process-wide lock, so concurrent turns cannot
  disturb it;
- when the model has a batching engine (runner.engine.batching, `loaded.batching`), turns join its
  continuous batch; turns it cannot batch (a seed, penalties, images) and models without one run generate()
  one at a time (the LoadedModel's lock, with the batching loop paused meanwhile); out-of-memory
  goes through runner.engine.recovery's ladder without losing the conversation;
- a stream generates on the session's long-lived StreamThreads, never a thread of its own per turn
  (issue 13: that made later turns ~1.5x slower); the server's worker streams on its own thread
  through `generate(on_delta=...)`.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable

from runner.engine.prompt import (  # noqa: F401 (FALLBACK_TEMPLATE, ContextLengthError: re-exported)
    FALLBACK_TEMPLATE,
    ChatPrompt,
    ContextLengthError,
    PromptCancelled,
    context_tokens,
    max_new_tokens,
)
from runner.engine.sampling import SamplingParams
from runner.engine.types import Completion, Usage

SEEDED_SAMPLING = threading.Lock()

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class StreamThreads:
    """Long-lived daemon threads that run a session's streamed turns, started when needed and never stopped.

    A thread per stream left OpenMP threads parked across many Python threads, and turns ran ~1.5x slower
    once another thread had generated (issue 13). At most `size` threads: 1 without batching (turns run one
    at a time anyway); with a batching engine, one per request it admits (running or waiting) plus one, so
    concurrent streams share one continuous batch and the engine's own line (and its QueueFull) decides who
    waits. A stream beyond that waits here for the next free thread.
    """

    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job that nobody has claimed
        self._backlog = 0  # jobs queued while every thread was busy

    def submit(self, work: Callable[[], None], size: int) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread takes this job
            elif len(self._threads) < size:
                thread = threading.Thread(
                    target=self._loop, name=f"shardwise-stream-{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._backlog += 1
            self._jobs.put(work)

    def _loop(self) -> None:
        while True:
            work = self._jobs.get()
            try:
                work()
            except BaseException:  # TextStream._work reports its own errors; this thread must outlive any job
                pass
            finally:
                with self._lock:
                    if self._backlog:
                        self._backlog -= 1  # a queued job is this thread's next
                    else:
                        self._idle += 1


class TextStream:
    """Iterate for text deltas; `.completion` is set once iteration ends.

    The generation runs on one of the session's StreamThreads (or, without `submit`, a thread of its own)
    and always ends the queue, so an exception there is re-raised here instead of leaving the reader
    waiting. `close()` (or breaking out and dropping the stream) cancels the generation.
    """

    def __init__(
        self,
        run: Callable[[Callable[[str], None]], Completion],
        cancel: threading.Event,
        on_done: Callable | None = None,
        submit: Callable[[Callable[[], None]], None] | None = None,
    ):
        self.cancel = cancel
        self.completion: Completion | None = None
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._run = run
        self._on_done = on_done
        self._finished = False
        if submit is not None:
            submit(self._work)
        else:
            threading.Thread(target=self._work, name="shardwise-generate", daemon=True).start()

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
        self._system_prompt = system_prompt
        self.history: list[dict] = []
        self.recovery = recovery or RecoveryPolicy()
        self.on_notice = on_notice or (lambda line: print(line, file=sys.stderr, flush=True))
        self.telemetry = telemetry or Telemetry(None)
        self.last_completion: Completion | None = None
        self._stream_threads = StreamThreads(getattr(loaded, "name", "model"))
        self._configure()

    # -- model facts -------------------------------------------------------------------------
    def _configure(self) -> None:
        from runner.engine.generate import model_eos_ids, model_pad_id

        profile_template = getattr(self.plan.model, "chat_template", None) if self.plan is not None else None
        self.prompt = ChatPrompt(
            self.loaded.tokenizer,
            profile_template=profile_template,
            system_prompt=self._system_prompt,
            processor=getattr(self.loaded, "processor", None),
        )
        self.eos_ids = model_eos_ids(self.loaded.model, self.loaded.tokenizer)
        self.pad_id = model_pad_id(self.loaded.tokenizer, self.eos_ids)

    @property
    def system_prompt(self) -> str | None:
        return self.prompt.system_prompt

    @system_prompt.setter
    def system_prompt(self, text: str | None) -> None:
        self._system_prompt = self.prompt.system_prompt = text

    @property
    def template(self) -> str:
        return self.prompt.template

    @property
    def takes_images(self) -> bool:
        """Whether image parts can go to this model (it was loaded with an image processor)."""
        return self.prompt.takes_images

    @property
    def template_stops(self) -> tuple[str, ...]:
        return self.prompt.template_stops

    @property
    def context_tokens(self) -> int:
        """Prompt + reply tokens per turn: the plan's limit, else the model's own maximum."""
        return context_tokens(self.plan, self.loaded.model.config)

    def swap_model(self, loaded, plan=None) -> None:
        """Continue this conversation on another model (the recovery ladder's fallback)."""
        self.loaded = loaded
        self.plan = plan if plan is not None else loaded.plan
        self._configure()

    # -- prompt ------------------------------------------------------------------------------
    def prompt_token_count(self, messages: list[dict]) -> int:
        return self.prompt.token_count(messages)

    def fit_prompt(
        self, messages: list[dict], max_tokens: int, cancel: threading.Event | None = None
    ) -> tuple[list[int], int]:
        """Prompt ids inside the context window, and how many oldest messages were dropped."""
        return self.prompt.fit(messages, context_tokens=self.context_tokens, max_tokens=max_tokens, cancel=cancel)

    def fit_inputs(self, messages: list[dict], max_tokens: int, cancel: threading.Event | None = None):
        """`fit_prompt` with the processor's inputs for the kept images (runner.engine.prompt.FittedPrompt)."""
        return self.prompt.fit_inputs(
            messages, context_tokens=self.context_tokens, max_tokens=max_tokens, cancel=cancel
        )

    # -- generation --------------------------------------------------------------------------
    def _params(self, params: SamplingParams | None) -> SamplingParams:
        return params if params is not None else self.defaults

    def _attempt(self, messages, params: SamplingParams, cancel, on_delta) -> Completion:
        from runner.engine.generate import generate_ids, generate_ids_batched
        from runner.engine.recovery import MemoryExhaustedError

        if self.loaded.model is None:
            raise MemoryExhaustedError(
                f"{self.loaded.name} was unloaded after running out of memory and could not be loaded again: "
                f"restart with a smaller model or hardware=cpu"
            )
        start = time.perf_counter()
        try:
            fitted = self.fit_inputs(messages, params.max_tokens, cancel)
        except PromptCancelled:
            return Completion(text="", finish_reason="cancelled", usage=Usage())
        prompt_ids, dropped = fitted.ids, fitted.dropped
        notices = []
        if dropped:
            notices.append(
                f"dropped the {dropped} oldest message(s) to keep the prompt ({len(prompt_ids)} tokens) "
                f"inside the {self.context_tokens}-token context"
            )
            self.on_notice(notices[-1])
        plan_cap = self.plan.limits.max_new_tokens if self.plan is not None else 0
        loaded = self.loaded
        max_new = max_new_tokens(self.context_tokens, len(prompt_ids), params.max_tokens, plan_cap)
        batching = getattr(loaded, "batching", None)
        # transformers' continuous batching takes token ids only: a prompt with images runs generate() alone
        if batching is not None and not fitted.media and batching.batchable(params) is None:
            completion = generate_ids_batched(
                batching,
                loaded.tokenizer,
                prompt_ids,
                params,
                max_new_tokens=max_new,
                eos_ids=self.eos_ids,
                stops=self.template_stops,
                cancel=cancel,
                on_delta=on_delta,
                started_s=start,
            )
            completion.notices = notices
            return completion
        seeded = params.seed is not None and not params.greedy
        paused = batching.exclusive() if batching is not None else contextlib.nullcontext()
        chunk_tokens = self.plan.limits.prefill_chunk_tokens if self.plan is not None else 0
        if fitted.media and chunk_tokens and len(prompt_ids) > chunk_tokens:
            # the image features join the prompt in one forward pass: a chunk of ids alone has no pixels
            notices.append(
                f"a prompt with images ({len(prompt_ids)} tokens) is prefilled in one pass, not in the plan's "
                f"{chunk_tokens}-token chunks"
            )
            self.on_notice(notices[-1])
            chunk_tokens = 0
        # torch.manual_seed seeds one process-wide generator: seeded sampling on two models at once
        # would interleave their draws, so it takes a process-wide lock (after the model's own).
        with loaded.lock, paused, SEEDED_SAMPLING if seeded else contextlib.nullcontext():
            completion = generate_ids(
                loaded.model,
                loaded.tokenizer,
                prompt_ids,
                params,
                max_new_tokens=max_new,
                eos_ids=self.eos_ids,
                pad_id=self.pad_id,
                stops=self.template_stops,
                prefill_chunk_tokens=chunk_tokens,
                device=loaded.input_device,
                model_inputs=fitted.media,
                cancel=cancel,
                on_delta=on_delta,
                started_s=start,
            )
        completion.notices = notices
        return completion

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
        self,
        messages: list[dict],
        params: SamplingParams | None = None,
        *,
        cancel: threading.Event | None = None,
        on_delta: Callable[[str], None] | None = None,
    ) -> Completion:
        """One reply to `messages` (history is not touched), generated on the calling thread.

        `on_delta` receives the text as it grows (what `stream()` yields): a caller that owns a long-lived
        thread (the server's model worker) streams this way, so the model never runs on a fresh thread.
        """
        return self._generate(messages, self._params(params), cancel or threading.Event(), on_delta)

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
        batching = getattr(self.loaded, "batching", None)
        admitted = batching.admission.slots + batching.admission.max_waiting if batching is not None else 0
        return TextStream(
            lambda on_delta: self._generate(messages, params, cancel, on_delta),
            cancel,
            on_done,
            submit=lambda work: self._stream_threads.submit(work, admitted + 1),
        )

    # -- conversation ------------------------------------------------------------------------
    def conversation(self) -> list[dict]:
        return self.prompt.with_system(self.history)

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
