"""One chat completion request on the server: its generation events, and the answer they become.

The route (runner.openai.app) submits `generation_work` to the model's queue, then reads the
job's events with an `EventWaiter` (which also notices a client that went away, and the request
timeout) and turns them into one JSON body (`collect`) or a server-sent event stream
(`stream_chunks` inside an `EventStream`). Failures become OpenAI error bodies (`classify`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from runner.engine.batching import BatchingStopped
from runner.engine.batching import QueueFull as BatchFull
from runner.engine.prompt import ContextLengthError
from runner.engine.recovery import MemoryExhaustedError
from runner.openai import protocol as oai
from runner.openai.protocol import APIError, ChatRequest
from runner.openai.queue import Job

log = logging.getLogger("shardwise.serve")


# ----- errors ------------------------------------------------------------------------------


def classify(exc: BaseException) -> APIError:
    """The HTTP error a failure during generation becomes; unknown failures are 500s (logged)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    torch = sys.modules.get("torch")
    torch_oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if isinstance(exc, MemoryExhaustedError) or (torch_oom is not None and isinstance(exc, torch_oom)):
        return APIError(
            503,
            f"out of memory after the recovery ladder: {exc}; "
            "retry later, or with a shorter prompt or fewer max_tokens",
            type="server_error",
            code="memory_exhausted",
            headers={"retry-after": "5"},
        )
    if isinstance(exc, BatchFull):  # the continuous batch's own line (callers beside this server share it)
        return APIError(
            429,
            f"the server is busy: {exc}; retry shortly",
            type="rate_limit_error",
            code="queue_full",
            headers={"retry-after": "1"},
        )
    if isinstance(exc, BatchingStopped):
        return APIError(
            503,
            f"{exc}; retry: the next requests are served one at a time",
            type="server_error",
            code="batching_stopped",
            headers={"retry-after": "1"},
        )
    from planner.errors import ShardwiseError

    if isinstance(exc, ShardwiseError):
        return APIError(400, str(exc), code="invalid_request")
    jinja = sys.modules.get("jinja2")
    if jinja is not None and isinstance(exc, jinja.TemplateError):
        return APIError(
            400, f"the model's chat template refused these messages: {exc}", param="messages", code="invalid_messages"
        )
    log.error("request failed", exc_info=(type(exc), exc, exc.__traceback__))
    return APIError(
        500,
        f"internal error while generating ({type(exc).__name__}); the server log has the details",
        type="server_error",
        code="internal_error",
    )


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


# ----- one request's generation --------------------------------------------------------------


def _run_choice(session, chat: ChatRequest, index: int, job: Job) -> None:
    """One choice, reported as its deltas (streaming) and its completion."""
    params = chat.params_for_choice(index)
    # On the calling thread (the model worker's long-lived one, or a choice's thread whose forward passes run
    # on the batching loop), streamed or not: a thread per streamed request left OpenMP threads parked across
    # many Python threads, and later requests ran ~1.5x slower. A delta the stream has no room for makes the
    # generation wait (bounded, cancellable) when it runs in the batch; a turn that holds the model alone
    # (seeded sampling, penalties, a sequential plan) never waits on its client: the stall limit cancels it.
    wait = _in_batch(session, chat, params)
    on_delta = (lambda delta: delta and job.emit_delta("delta", index, delta, wait=wait)) if chat.stream else None
    completion = session.generate(chat.messages, params, cancel=job.cancel, on_delta=on_delta)
    job.emit("choice", index, completion)


def _in_batch(session, chat: ChatRequest, params) -> bool:
    """Whether this request's turns join the model's continuous batch: its engine batches these settings, and the
    messages hold no image (a prompt with images runs generate() alone, holding the model: runner.engine.session)."""
    engine = getattr(getattr(session, "loaded", None), "batching", None)
    return engine is not None and engine.batchable(params) is None and not oai.image_params(chat.messages)


def _choices_together(session, chat: ChatRequest) -> bool:
    """n > 1 choices join the model's continuous batch at once when its engine batches these settings."""
    return chat.n > 1 and _in_batch(session, chat, chat.params_for_choice(1))


def _run_choices_together(session, chat: ChatRequest, job: Job) -> None:
    """Every choice on its own thread, so all n share one batch; the first failure cancels the rest and is raised."""
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            _run_choice(session, chat, index, job)
        except BaseException as exc:
            failures.append(exc)
            job.cancel.set()

    threads = [
        threading.Thread(target=run, args=(index,), name=f"shardwise-choice-{index}", daemon=True)
        for index in range(chat.n)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def generation_work(session, chat: ChatRequest) -> Callable[[Job], None]:
    """The worker-thread side: n completions (together in the batch when the model batches), reported as events."""

    def work(job: Job) -> None:
        started = time.perf_counter()
        if _choices_together(session, chat):
            _run_choices_together(session, chat, job)
            if job.cancel.is_set():
                return
        else:
            for index in range(chat.n):
                _run_choice(session, chat, index, job)
                if job.cancel.is_set():
                    return
        job.emit("done", time.perf_counter() - started)

    return work


class EventWaiter:
    """Next event of a job, or ("disconnected",) / ("timeout",), without blocking the loop."""

    def __init__(self, job: Job, request: Request, deadline: float | None):
        self.job = job
        self.deadline = deadline
        self._watch = asyncio.ensure_future(self._wait_disconnect(request))

    @staticmethod
    async def _wait_disconnect(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def next(self) -> tuple:
        event = await self._next()
        self.job.taken(event)
        return event

    async def _next(self) -> tuple:
        if not self.job.events.empty():
            return self.job.events.get_nowait()
        if self._watch.done():
            return ("disconnected",)
        get = asyncio.ensure_future(self.job.events.get())
        timeout = None if self.deadline is None else max(0.0, self.deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({get, self._watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        return ("disconnected",) if self._watch in done else ("timeout",)

    def close(self) -> None:
        self._watch.cancel()


@dataclass
class RequestMeta:
    response: oai.Response  # id, model, created, fingerprint: the shapes of this request's answer
    arrived_s: float
    info: dict  # the request's log line fields
    metrics: Any = None  # runner.openai.metrics.Metrics: the finished request is counted there


def finish(waiter: EventWaiter, slot, job: Job) -> None:
    """Always called once per request: stops a generation nobody will read, frees the slot."""
    waiter.close()
    if job.finished_s is None:
        slot.worker.cancel(job)


def _record(
    meta: RequestMeta, job: Job, completions: list, generation_s: float | None, first_token_s: float | None
) -> None:
    info = meta.info
    if completions:
        info["prompt_tokens"] = completions[0].usage.prompt_tokens
        info["completion_tokens"] = sum(c.usage.completion_tokens for c in completions)
        if generation_s:
            info["tokens_per_s"] = info["completion_tokens"] / generation_s
    if first_token_s is not None:
        info["ttft_ms"] = (first_token_s - meta.arrived_s) * 1000
    if job.started_s is not None:
        info["queue_ms"] = (job.started_s - job.submitted_s) * 1000
    if meta.metrics is not None and completions:
        meta.metrics.request_done(
            meta.response.model,
            prompt_tokens=completions[0].usage.prompt_tokens,
            completion_tokens=info["completion_tokens"],
            finish_reason=info.get("error") or completions[-1].finish_reason,
            ttft_s=first_token_s - meta.arrived_s if first_token_s is not None else None,
            e2e_s=time.perf_counter() - meta.arrived_s,
            queue_s=job.started_s - job.submitted_s if job.started_s is not None else None,
        )


def _end_error(event: tuple) -> APIError:
    kind = event[0]
    if kind == "error":
        return classify(event[1])
    if kind == "stalled":
        return APIError(
            408,
            "the client accepted no data for serve.stream_stall_timeout_s seconds, so the request was cancelled: "
            "read the stream as it arrives",
            type="timeout",
            code="stream_stalled",
        )
    if kind == "timeout":
        return APIError(
            504,
            "the request took longer than serve.request_timeout_s and was stopped: "
            "ask for fewer max_tokens or retry when the server is less busy",
            type="timeout",
            code="timeout",
        )
    return APIError(
        503, "the server is shutting down: retry against a running server", type="server_error", code="shutting_down"
    )


def early_end(event: tuple, info: dict, job: Job, slot) -> Response:
    if event[0] == "disconnected":
        slot.worker.cancel(job)
        info["error"] = "client_disconnected"
        return Response(status_code=499)  # nobody reads it; the log shows the client left
    error = _end_error(event)
    info["error"] = error.code
    return error_response(error)


async def collect(first: tuple, waiter: EventWaiter, chat: ChatRequest, meta: RequestMeta, job: Job, slot) -> Response:
    completions: dict[int, Any] = {}
    event = first
    while True:
        kind = event[0]
        if kind == "choice":
            completions[event[1]] = event[2]
        elif kind == "done":
            ordered = [completions[i] for i in range(chat.n)]
            ttft = ordered[0].time_to_first_token_s
            _record(meta, job, ordered, event[1], job.started_s + ttft if ttft is not None and job.started_s else None)
            return JSONResponse(meta.response.completion(ordered))
        else:
            return early_end(event, meta.info, job, slot)
        event = await waiter.next()


async def stream_chunks(
    first: tuple, waiter: EventWaiter, chat: ChatRequest, meta: RequestMeta, job: Job
) -> AsyncIterator[bytes]:
    """SSE for one request: per choice a role chunk, content deltas, one finish chunk; usage; [DONE]."""
    response = meta.response
    started: set[int] = set()
    completions: list = []
    first_token_s = None
    event = first
    while True:
        kind = event[0]
        if kind in ("delta", "choice") and event[1] not in started:
            started.add(event[1])
            yield sse(response.role_chunk(event[1]))
        if kind == "delta":
            first_token_s = first_token_s or time.perf_counter()
            yield sse(response.chunk(event[1], {"content": event[2]}))
        elif kind == "choice":
            completions.append(event[2])
            yield sse(response.finish_chunk(event[1], event[2]))
        elif kind == "done":
            _record(meta, job, completions, event[1], first_token_s)
            if chat.include_usage:
                yield sse(response.usage_chunk(completions))
            break
        elif kind == "disconnected":
            meta.info["error"] = "client_disconnected"
            _record(meta, job, completions, None, first_token_s)
            return
        else:
            error = _end_error(event)
            meta.info["error"] = error.code
            _record(meta, job, completions, None, first_token_s)
            yield sse(error.body())
            break
        event = await waiter.next()
    yield sse("[DONE]")


def stall_handler(meta: RequestMeta, job: Job, slot, stall_s: float) -> Callable[[], None]:
    """What a stream whose client stopped reading does: cancel the generation (its batch slot and cache blocks
    free at once), count and log it, and end the stream with an error should the client read again."""

    def stalled() -> None:
        slot.worker.cancel(job)
        meta.info["error"] = "stream_stalled"
        if meta.metrics is not None:
            meta.metrics.stalled(meta.response.model)
        log.warning(
            "request %s: the client accepted no data for %.1f s (serve.stream_stall_timeout_s): generation cancelled",
            meta.response.request_id,
            stall_s,
        )
        job.events.put_nowait(("stalled",))

    return stalled


class EventStream(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends (a client gone before the first byte too).

    With `stall_s` > 0, a send the client has not accepted after `stall_s` seconds (it keeps the connection open
    but stopped reading, so the transport's flow control holds the send) calls `on_stall` once; the send then
    waits for the client to read or leave, holding no generation. One watchdog per stream checks the send in
    progress, so a chunk costs no extra task.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        on_close: Callable[[], None],
        *,
        stall_s: float = 0.0,
        on_stall: Callable[[], None] | None = None,
    ):
        super().__init__(chunks, headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.on_close = on_close
        self.stall_s = stall_s if on_stall is not None else 0.0
        self.on_stall = on_stall

    async def __call__(self, scope, receive, send) -> None:
        if self.stall_s <= 0:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.on_close()
            return
        loop = asyncio.get_running_loop()
        sending_since: list[float] = []  # when the send in progress began; empty between sends

        async def watched(message) -> None:
            sending_since.append(loop.time())
            try:
                await send(message)
            finally:
                sending_since.clear()

        async def watchdog() -> None:
            while True:
                await asyncio.sleep(self.stall_s / 4)
                if sending_since and loop.time() - sending_since[0] >= self.stall_s:
                    self.on_stall()
                    return

        watching = asyncio.ensure_future(watchdog())
        try:
            await super().__call__(scope, receive, watched)
        finally:
            watching.cancel()
            self.on_close()
