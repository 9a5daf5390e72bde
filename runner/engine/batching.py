"""Concurrent generation for one loaded model on transformers' continuous batching, sized by the plan.

    engine = attach(loaded, plan.serving, max_waiting=8)      # None (and a logged reason) when it cannot run
    result = engine.generate(prompt_ids, params, max_new_tokens=64, eos_ids={2}, on_token=push, cancel=event)

What it keeps:
- one `ContinuousBatchingManager` per model, started once: its generation thread is the only thread that runs
  the model's forward passes, so requests never start OpenMP/CUDA work on short-lived threads;
- the plan sizes the paged cache (`serving.num_blocks` blocks of `serving.page_size_tokens` tokens,
  `serving.max_batch_tokens`): transformers never probes free memory on its own;
- admission: at most `serving.max_concurrent` requests are inside the manager (the plan sized the cache
  for that many full-context sequences, so it never has to preempt or run out), up to `max_waiting` more
  wait in arrival order, and beyond that `QueueFull` (the server's 429);
- per-request sampling through transformers' per-request processors (temperature, top_k, top_p): a
  greedy request is top_k=1, which keeps only the argmax, so greedy text equals `generate()`'s;
- what the manager cannot do per request goes to the sequential path (`batchable()` says why): a seed
  (transformers samples every request from one torch generator, so a seeded reply would depend on what
  else is in the batch) and presence/frequency penalties (no per-request processor); those turns run
  `generate()` while `exclusive()` holds the batching loop paused;
- stop strings are matched by the caller's `on_token`; a stop, a cancel or a disconnect cancels the
  request in the manager, which frees its blocks before the next forward pass.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from planner.errors import ShardwiseError

RESTARTS = 2  # generation loops that may die (and be restarted) before the engine falls back to sequential


class QueueFull(ShardwiseError):
    """Every batch slot is taken and `max_waiting` requests already wait (the server answers 429)."""


class BatchingStopped(ShardwiseError):
    """The batching loop is gone (closed, or died more than RESTARTS times)."""


@dataclass
class BatchResult:
    tokens: int  # tokens the model generated for this request (an eos included)
    cancelled: bool
    batch_size: int  # most requests generating at once while this one ran
    queued_s: float  # waiting for a batch slot


class Admission:
    """Batch slots handed out in arrival order: `running` at most `slots`, `waiting` at most `max_waiting`."""

    def __init__(self, slots: int, max_waiting: int, *, full_wait_s: float = 0.0, bound: str | None = None):
        self.slots = slots
        self.max_waiting = max_waiting
        # the server answers 429 at once (its own queue is serve.max_queue); the Python API waits this long for room
        self.full_wait_s = full_wait_s
        # the setting that bounds the line, named in QueueFull: what its caller can change
        self.bound = bound or f"serve.max_queue={max_waiting}"
        self.running = 0
        self._line: deque[int] = deque()
        self._tickets = itertools.count()
        self._cond = threading.Condition()
        self.rejected = 0

    @property
    def waiting(self) -> int:
        return len(self._line)

    def _full(self) -> bool:
        return self.running >= self.slots and len(self._line) >= self.max_waiting

    def enter(self, cancel: threading.Event) -> bool:
        """Wait for a slot; False when `cancel` was set first. Raises QueueFull when the line is full (and stays
        full for `full_wait_s`)."""
        with self._cond:
            deadline = time.monotonic() + self.full_wait_s
            while self._full() and time.monotonic() < deadline and not cancel.is_set():
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            if cancel.is_set():
                return False
            if self._full():
                self.rejected += 1
                waited = f", and stayed full for {self.full_wait_s:g} s" if self.full_wait_s else ""
                raise QueueFull(
                    f"{self.running} request(s) generating (the plan's serving.max_concurrent) and "
                    f"{len(self._line)} waiting{waited} ({self.bound})"
                )
            ticket = next(self._tickets)
            self._line.append(ticket)
            try:
                while self.running >= self.slots or self._line[0] != ticket:
                    if cancel.is_set():
                        return False
                    self._cond.wait(0.05)
                self.running += 1
                return True
            finally:
                self._line.remove(ticket)
                self._cond.notify_all()

    def leave(self) -> None:
        with self._cond:
            self.running -= 1
            self._cond.notify_all()


class Inbox:
    """A request's newest output. transformers' streamed outputs are cumulative snapshots, so a reader that fell
    behind (its client reads slowly) needs only the last one: the generation thread never piles up copies."""

    def __init__(self):
        self._cond = threading.Condition()
        self._output = None

    def put(self, output) -> None:
        with self._cond:
            self._output = output
            self._cond.notify()

    def get(self, timeout: float):
        with self._cond:
            if self._output is None:
                self._cond.wait(timeout)
            output, self._output = self._output, None
        if output is None:
            raise queue.Empty
        return output


def _inbox_router(deliver: Callable):
    """transformers' OutputRouter, handing each output to `deliver` on the generation thread (no shared queue to
    poll, no extra thread hop per token). Built on first use: transformers is imported lazily."""
    from transformers.generation.continuous_batching.continuous_api import OutputRouter

    class InboxRouter(OutputRouter):
        def deliver(self, output) -> None:
            deliver(output)

        def deliver_batch(self, outputs) -> None:
            for output in outputs:
                deliver(output)

    return InboxRouter()


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _start_as_daemon(manager) -> None:
    """Start transformers' generation loop on a daemon thread.

    transformers starts it as an ordinary thread, and the interpreter waits for those at exit: a script that
    never closes its OpenAIChat (or a server torn down by an exception) would then hang forever after its last
    line. A new thread takes its daemon flag from the thread that creates it, so the manager is started from a
    short-lived daemon thread; close() still stops the loop cleanly when it is called."""
    import torch

    failures: list[BaseException] = []

    def start() -> None:
        try:
            with torch.inference_mode():  # the loop takes the inference mode of the thread that starts it
                manager.start()
        except BaseException as exc:  # handed to the caller's thread below
            failures.append(exc)

    starter = threading.Thread(target=start, name="shardwise-batching-start", daemon=True)
    starter.start()
    starter.join()
    if failures:
        raise failures[0]


class BatchingEngine:
    """transformers' continuous batching for one model, with admission and per-request routing."""

    def __init__(
        self,
        loaded,
        serving,
        *,
        max_waiting: int = 8,
        log: Callable[[str], None] = _log,
        full_wait_s: float = 0.0,
        bound: str | None = None,
    ):
        self.loaded = loaded
        self.serving = serving
        self.log = log
        slots = max(1, serving.max_concurrent)
        if slots > MAX_BATCH_SLOTS:
            log(f"serving.max_concurrent={slots} clamped to {MAX_BATCH_SLOTS} sequences at once (one thread each)")
            slots = MAX_BATCH_SLOTS
        self.admission = Admission(slots, max(0, max_waiting), full_wait_s=full_wait_s, bound=bound)
        self.vocab_size = int(loaded.model.config.get_text_config().vocab_size)
        self._routes: dict[str, Inbox] = {}
        self._routes_lock = threading.Lock()
        self._ids = itertools.count()
        self._manager = None
        self._restarts = 0
        self._closed = False
        self._start_manager()

    # -- the manager ---------------------------------------------------------------------------
    def _configs(self):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        # Defaults that make transformers build the temperature, top-k and top-p processors; every request then
        # passes its own values (a processor is only built when its default is not neutral).
        generation = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_k=self.vocab_size,
            top_p=0.99,
            max_new_tokens=self.serving.max_batch_tokens,
            eos_token_id=self.loaded.tokenizer.eos_token_id,  # requests pass their own; this silences a warning
        )
        serving = self.serving
        batching = ContinuousBatchingConfig(
            page_size=serving.page_size_tokens,
            num_blocks=serving.num_blocks,
            max_batch_tokens=serving.max_batch_tokens,
            max_requests_per_batch=self.admission.slots,
            per_request_processors=True,
            auto_switch_to_flash=False,  # the plan chose the attention implementation
            safety_margin=0.0,  # admission already keeps the cache from filling up
            max_memory_percent=1.0,  # num_blocks is given: this only bounds transformers' own check
        )
        return generation, batching

    def _start_manager(self) -> None:
        import torch

        generation, batching = self._configs()
        with torch.inference_mode():
            manager = self.loaded.model.init_continuous_batching(
                generation_config=generation, continuous_batching_config=batching
            )
        manager.output_router = _inbox_router(self._deliver)  # before start(): the loop takes it from the manager
        _start_as_daemon(manager)
        self._manager = manager

    def _alive(self) -> bool:
        manager = self._manager
        return manager is not None and manager.is_running() and manager.background_thread_status.fatal_error is None

    def _ensure_running(self) -> None:
        if self._closed:
            raise BatchingStopped("the batching engine is closed")
        if self._alive():
            return
        if self._restarts >= RESTARTS:
            raise BatchingStopped(f"the batching loop died {self._restarts + 1} times: serving sequentially")
        self._restarts += 1
        self.log(f"note: the batching loop stopped; restarting it ({self._restarts}/{RESTARTS})")
        with contextlib.suppress(Exception):
            self._manager.stop(block=True, timeout=5)
        self._start_manager()

    def _deliver(self, output) -> None:
        """Called on the generation thread for each output: straight into the waiting request's inbox."""
        with self._routes_lock:
            target = self._routes.get(output.request_id)
        if target is not None:
            target.put(output)  # outputs of a request already gone (cancelled, stopped) are dropped

    # -- what a caller uses ----------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return not self._closed and (self._alive() or self._restarts < RESTARTS)

    def batchable(self, params) -> str | None:
        """Why these sampling settings must run sequentially (None: they batch)."""
        if params.seed is not None and not params.greedy:
            return "a seeded sampled reply runs alone: batched sampling shares one random generator"
        if params.presence_penalty or params.frequency_penalty:
            return "presence/frequency penalties run alone: transformers has no per-request penalty processor"
        if not self.usable:
            return "the batching loop is down"
        return None

    @contextlib.contextmanager
    def exclusive(self):
        """Pause the batching loop (it keeps its requests and cache) while the caller runs the model itself."""
        if self._alive():
            with self._manager.pause():
                yield
        else:
            yield

    def stats(self) -> dict:
        usage = 0.0
        manager = self._manager
        processor = getattr(manager, "batch_processor", None) if manager is not None else None
        if processor is not None:
            with contextlib.suppress(Exception):  # read while the loop runs: a slightly stale number is fine
                usage = 1.0 - float(processor.cache.compute_free_capacity())
        return {
            "running": self.admission.running,
            "waiting": self.admission.waiting,
            "kv_cache_usage": usage,
            "rejected": self.admission.rejected,
            "max_concurrent": self.admission.slots,
            "num_blocks": self.serving.num_blocks,
        }

    def generate(
        self,
        prompt_ids: list[int],
        params,
        *,
        max_new_tokens: int,
        eos_ids: set[int],
        on_token: Callable[[int], bool],
        cancel: threading.Event,
    ) -> BatchResult:
        """Generate in the shared batch; `on_token(token)` returns True to stop (a stop string matched)."""
        submitted = time.perf_counter()
        if not self.admission.enter(cancel):
            return BatchResult(tokens=0, cancelled=True, batch_size=0, queued_s=time.perf_counter() - submitted)
        queued_s = time.perf_counter() - submitted
        request_id = f"shardwise-{next(self._ids)}"
        inbox = Inbox()
        tokens, batch_size, cancelled, finished = 0, self.admission.running, False, False
        try:
            self._ensure_running()
            with self._routes_lock:
                self._routes[request_id] = inbox
            greedy = params.greedy
            accepted = self._manager.add_request(
                input_ids=list(prompt_ids),
                request_id=request_id,
                max_new_tokens=max_new_tokens,
                streaming=True,
                eos_token_id=sorted(eos_ids) or -1,
                temperature=1.0 if greedy else float(params.temperature),
                top_k=1 if greedy else self.vocab_size,
                top_p=1.0 if greedy else float(params.top_p),
            )
            if accepted is None:
                raise BatchingStopped("the batching loop refused the request (it is stopping)")
            while True:
                try:
                    output = inbox.get(timeout=0.05)
                except queue.Empty:
                    if cancel.is_set():
                        cancelled = True
                        break
                    if not self._alive():
                        raise BatchingStopped("the batching loop stopped while generating") from None
                    continue
                if output.error is not None:
                    raise RuntimeError(f"continuous batching failed this request: {output.error}")
                fresh = output.generated_tokens[tokens:]
                batch_size = max(batch_size, self.admission.running)
                stop = False
                for token in fresh:
                    tokens += 1
                    if on_token(int(token)):
                        stop = True
                        break
                if output.is_finished():
                    finished = True
                    break
                if stop or cancel.is_set():
                    cancelled = cancel.is_set()
                    break
        finally:
            if not finished and self._manager is not None:
                self._manager.cancel_request(request_id)  # its blocks go back to the pool before the next step
            with self._routes_lock:
                self._routes.pop(request_id, None)
            self.admission.leave()
        return BatchResult(tokens=tokens, cancelled=cancelled, batch_size=batch_size, queued_s=queued_s)

    def close(self) -> None:
        self._closed = True
        manager, self._manager = self._manager, None
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.stop(block=True, timeout=10)


def cannot_attach(loaded, serving) -> str | None:
    """Why this loaded model cannot batch under this serving block (None: it can)."""
    if serving is None:
        return "the plan has no serving block (written before batching existed): serving one request at a time"
    if serving.mode != "batched":
        return serving.reason
    model = getattr(loaded, "model", None)
    if model is None or not hasattr(model, "init_continuous_batching"):
        return "this model class has no continuous batching in transformers: serving one request at a time"
    attn = model.config._attn_implementation
    if attn != serving.attn_implementation:
        return f"the model runs {attn} attention but the plan batched with {serving.attn_implementation}: re-plan"
    if getattr(model, "hf_device_map", None) and len(set(model.hf_device_map.values())) > 1:
        return "the model is spread over several devices: transformers' paged cache lives on one"
    return _cache_beyond_device(model, serving)


# Sequences one model batches at once, each on its own server thread: far above what one device's batch serves
# well (vLLM's max-num-seqs defaults to 256-1024); a hand-edited plan asking for more is clamped, with the reason.
MAX_BATCH_SLOTS = 1024


def _device_total_bytes(device) -> int | None:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        from planner.hardware.host import host_info

        return host_info().ram_bytes
    return None


def _cache_beyond_device(model, serving) -> str | None:
    """Why the serving block's paged cache cannot exist on the model's device (None: it may).

    A lower bound from the model's own config (K and V of every layer, each block `page_size_tokens` tokens), so only a
    block no device could hold is refused; the planner's exact footprint has already been checked against the budget.
    """
    config = model.config.get_text_config()
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or (getattr(config, "hidden_size", 0) // max(1, heads)))
    element_bytes = next(model.parameters()).element_size()
    cache_bytes = serving.num_blocks * serving.page_size_tokens * 2 * layers * kv_heads * head_dim * element_bytes
    total = _device_total_bytes(next(model.parameters()).device)
    if total is not None and cache_bytes > total:
        return (
            f"the plan's serving block asks for {serving.num_blocks} blocks of {serving.page_size_tokens} tokens, "
            f"{cache_bytes / 2**30:.1f} GiB of paged cache at least, more than this device's "
            f"{total / 2**30:.1f} GiB: re-create the plan with `shardwise plan`"
        )
    return None


def attach(loaded, serving, *, max_waiting: int = 8, log: Callable[[str], None] = _log, **admission):
    """Start batching for `loaded` (stored as `loaded.batching`); None, with the reason logged, when it cannot."""
    reason = cannot_attach(loaded, serving)
    if reason is None:
        try:
            loaded.batching = BatchingEngine(loaded, serving, max_waiting=max_waiting, log=log, **admission)
        except Exception as exc:  # e.g. an architecture the paged cache does not support
            reason = f"continuous batching did not start ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    if reason is not None:
        loaded.batching = None
        log(f"serving {loaded.name} one request at a time: {reason}")
        return None
    hint = " (plan policy.sessions=N or auto to batch concurrent requests)" if serving.max_concurrent == 1 else ""
    log(
        f"serving {loaded.name} with continuous batching: {serving.max_concurrent} at once{hint}, "
        f"{serving.num_blocks} blocks of {serving.page_size_tokens} tokens, {serving.max_batch_tokens} tokens per step"
    )
    return loaded.batching
