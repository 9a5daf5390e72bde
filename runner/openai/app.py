"""`shardwise serve`'s HTTP side: an OpenAI-compatible /v1/chat/completions on Starlette + uvicorn.

    app = create_app([ModelSource("gpt2", load=lambda: session)], ServeSettings())
    with BackgroundServer(app) as server:      # tests and benchmarks: a live server on loopback
        OpenAI(base_url=server.url + "/v1", api_key="-")

Routes: POST /v1/chat/completions, GET /v1/models[/{id}], GET /health (200 once every model is
loaded, 503 before), GET /health/live (200 while the process answers). Every failure, the
framework's own 404/405 included, is an OpenAI error body. Generation runs on one worker thread
per model (runner/server_queue.py), so the event loop stays free to answer /health, to refuse
with 429 when the queue is full, and to notice a client that went away: its generation is
cancelled and its slot freed. One log line per request (runner/server.py's RequestLog).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.openai import protocol as oai
from runner.openai.protocol import APIError, ChatRequest, Defaults
from runner.openai.queue import Job, ModelWorker, QueueFull

log = logging.getLogger("shardwise.serve")


@dataclass
class ServeSettings:
    """The `serve:` block of conf/serve.yaml, resolved (the API key already read from the env)."""

    host: str = "127.0.0.1"  # address to bind
    port: int = 8000  # TCP port
    api_key: str | None = None  # required bearer token, None: no authentication
    max_queue: int = 8  # requests waiting per model behind the one generating
    max_body_bytes: int = 1 << 20  # largest request body, bytes
    request_timeout_s: float = 600.0  # queue wait + generation per request, seconds; 0: no limit
    defaults: Defaults = field(default_factory=Defaults)  # sampling defaults for absent fields


@dataclass
class ModelSource:
    """A model to serve: its public name, other names it answers to, and how to load it."""

    name: str
    load: Callable[[], Any]  # -> a ChatSession (context_tokens, generate, stream, prompt_token_count)
    aliases: tuple[str, ...] = ()
    fingerprint: str | None = None  # shown as system_fingerprint (the plan's hardware fingerprint)


class ModelSlot:
    def __init__(self, source: ModelSource, max_queue: int):
        self.source = source
        self.worker = ModelWorker(source.name, max_queue)
        self.session = None
        self.state = "loading"  # loading | ready | failed
        self.error: str | None = None
        self.created = oai.now_s()


# ----- errors ------------------------------------------------------------------------------


def _runner_error_types() -> tuple[type | None, type | None]:
    """runner.engine.session.ContextLengthError and runner.engine.recovery.MemoryExhaustedError, if present."""
    context = memory = None
    try:
        from runner.engine.session import ContextLengthError as context
    except ImportError:
        pass
    try:
        from runner.engine.recovery import MemoryExhaustedError as memory
    except ImportError:
        pass
    return context, memory


def classify(exc: BaseException) -> APIError:
    """The HTTP error a failure during generation becomes; unknown failures are 500s (logged)."""
    if isinstance(exc, APIError):
        return exc
    context_error, memory_error = _runner_error_types()
    if context_error is not None and isinstance(exc, context_error):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    torch = sys.modules.get("torch")
    torch_oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if (memory_error is not None and isinstance(exc, memory_error)) or (
        torch_oom is not None and isinstance(exc, torch_oom)
    ):
        return APIError(
            503,
            f"out of memory after the recovery ladder: {exc}; retry later, or with a shorter prompt or fewer max_tokens",
            type="server_error",
            code="memory_exhausted",
            headers={"retry-after": "5"},
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


def _sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


# ----- request log -------------------------------------------------------------------------


class RequestLog:
    """ASGI middleware: one line per HTTP request once its response (stream included) is over."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        info: dict = {"status": None}
        scope["shardwise.log"] = info
        start = time.perf_counter()

        async def send_logged(message):
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            if info["status"] is None:  # the app failed before it could answer
                info["status"] = 500
            log.info(_log_line(scope, info, time.perf_counter() - start))


def _log_line(scope, info: dict, seconds: float) -> str:
    # the path is escaped: a request for "/x\n[...] status=200" must not forge a second log line
    path = str(scope["path"]).encode("unicode_escape").decode("ascii")
    parts = [f"{scope['method']} {path}", f"status={info.get('status')}"]
    for key in ("id", "model", "prompt_tokens", "completion_tokens", "ttft_ms", "tokens_per_s", "queue_ms", "error"):
        if info.get(key) is not None:
            value = info[key]
            parts.append(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}")
    parts.append(f"duration_ms={seconds * 1000:.1f}")
    return " ".join(parts)


# ----- the app -----------------------------------------------------------------------------


def create_app(
    sources: list[ModelSource],
    settings: ServeSettings | None = None,
    *,
    on_load_failure: Callable[[str, BaseException], None] | None = None,
) -> Starlette:
    """The ASGI app; models load one after another on a background thread at startup."""
    settings = settings or ServeSettings()
    if not sources:
        raise ValueError("create_app needs at least one ModelSource")
    slots = [ModelSlot(source, settings.max_queue) for source in sources]
    by_name: dict[str, ModelSlot] = {}
    for slot in slots:
        for name in (slot.source.name, *slot.source.aliases):
            by_name.setdefault(name, slot)

    def load_all() -> None:
        # One after another: a plan made after the previous model loaded sees the memory it took.
        for slot in slots:
            started = time.perf_counter()
            try:
                slot.session = slot.source.load()
            except BaseException as exc:
                slot.state, slot.error = "failed", f"{type(exc).__name__}: {exc}"
                log.error("model %s failed to load: %s", slot.source.name, slot.error)
                if on_load_failure is not None:
                    on_load_failure(slot.source.name, exc)
                return
            slot.state = "ready"
            log.info(
                "model %s ready in %.1f s (context %s tokens)",
                slot.source.name,
                time.perf_counter() - started,
                getattr(slot.session, "context_tokens", "?"),
            )

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=load_all, name="shardwise-load", daemon=True).start()
        try:
            yield
        finally:
            for slot in slots:
                slot.worker.close()

    def check_auth(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            what = "no API key was provided" if not header else "the API key provided is not valid"
            raise APIError(
                401,
                f"{what}: send the server's key as `Authorization: Bearer <key>` (serve.api_key or SHARDWISE_API_KEY)",
                code="invalid_api_key",
            )

    async def read_json(request: Request):
        declared = request.headers.get("content-length", "")
        too_large = APIError(
            413,
            f"the request body is larger than serve.max_body_bytes={settings.max_body_bytes} bytes: send a shorter conversation",
            code="request_too_large",
        )
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise too_large
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_body_bytes:
                    raise too_large
                chunks.append(chunk)
        except ClientDisconnect:
            raise APIError(
                400, "the client disconnected while sending the request body", code="client_disconnected"
            ) from None
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as exc:
            raise oai.invalid(f"the request body is not valid JSON ({exc})"[:300], None, "invalid_json") from None

    def find_model(name: str) -> ModelSlot:
        slot = by_name.get(name)
        if slot is None:
            served = ", ".join(s.source.name for s in slots)
            raise APIError(
                404,
                f"the model `{name}` does not exist on this server: use one of {served} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        if slot.state != "ready":
            detail = "is still loading" if slot.state == "loading" else f"failed to load ({slot.error})"
            raise APIError(
                503,
                f"the model `{name}` {detail}: retry once GET /health answers 200",
                type="server_error",
                code="model_not_ready",
                headers={"retry-after": "5"},
            )
        return slot

    async def chat_completions(request: Request) -> Response:
        info = request.scope.get("shardwise.log", {})
        arrived = time.perf_counter()
        check_auth(request)
        chat = oai.parse_chat_request(await read_json(request), settings.defaults)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        info.update(id=request_id, model=chat.model)
        slot = find_model(chat.model)
        info["model"] = slot.source.name  # an alias answers under the served name, as OpenAI does
        loop = asyncio.get_running_loop()
        job = Job(_generation_work(slot.session, chat), loop)
        try:
            slot.worker.submit(job)
        except QueueFull as exc:
            raise APIError(
                429,
                f"the server is busy: {exc}; retry shortly",
                type="rate_limit_error",
                code="queue_full",
                headers={"retry-after": "1"},
            ) from None
        deadline = loop.time() + settings.request_timeout_s if settings.request_timeout_s > 0 else None
        waiter = _EventWaiter(job, request, deadline)
        meta = _ResponseMeta(request_id, slot.source.name, oai.now_s(), slot.source.fingerprint, arrived, info)
        streaming = False
        try:
            first = await waiter.next()
            if first[0] in ("error", "timeout", "disconnected", "cancelled"):
                return _early_end(first, info, job, slot)
            if chat.stream:
                streaming = True  # from here the response's on_close finishes the request
                return _SSEResponse(
                    _stream_chunks(first, waiter, chat, meta, job, slot), on_close=lambda: _finish(waiter, slot, job)
                )
            return await _collect(first, waiter, chat, meta, job, slot)
        finally:
            if not streaming:
                _finish(waiter, slot, job)

    async def list_models(request: Request) -> Response:
        check_auth(request)
        return JSONResponse({"object": "list", "data": [oai.model_card(s.source.name, s.created) for s in slots]})

    async def get_model(request: Request) -> Response:
        check_auth(request)
        name = request.path_params["model_id"]
        slot = by_name.get(name)
        if slot is None:
            raise APIError(
                404, f"the model `{name}` does not exist on this server", param="model", code="model_not_found"
            )
        return JSONResponse(oai.model_card(slot.source.name, slot.created))

    async def health(request: Request) -> Response:
        states = {s.source.name: s.state for s in slots}
        overall = (
            "ok"
            if all(v == "ready" for v in states.values())
            else ("failed" if "failed" in states.values() else "loading")
        )
        body = {"status": overall, "models": states, "queued": {s.source.name: s.worker.admitted for s in slots}}
        # after an out-of-memory fallback a served name is answered by a smaller model: say which
        loaded = {s.source.name: _loaded_name(s) for s in slots}
        body["serving"] = {name: actual for name, actual in loaded.items() if actual and actual != name}
        return JSONResponse(body, status_code=200 if overall == "ok" else 503)

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def on_api_error(request: Request, exc: APIError) -> Response:
        info = request.scope.get("shardwise.log")
        if info is not None:
            info["error"] = exc.code or exc.type
        return error_response(exc)

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            error = APIError(
                404,
                f"unknown request URL: {request.method} {request.url.path}; this server has /v1/chat/completions, /v1/models and /health",
                code="unknown_url",
            )
        elif exc.status_code == 405:
            error = APIError(
                405,
                f"{request.method} is not allowed on {request.url.path}",
                code="method_not_allowed",
                headers=dict(exc.headers or {}),
            )
        else:
            error = APIError(
                exc.status_code,
                str(exc.detail),
                type="invalid_request_error" if exc.status_code < 500 else "server_error",
            )
        return await on_api_error(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return await on_api_error(request, classify(exc))

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/health/live", live, methods=["GET"]),
        ],
        exception_handlers={APIError: on_api_error, HTTPException: on_http_error, Exception: on_unexpected},
        lifespan=lifespan,
    )
    app.state.slots = slots
    return RequestLog(app)


# ----- one request's generation --------------------------------------------------------------


def _generation_work(session, chat: ChatRequest) -> Callable[[Job], None]:
    """The worker-thread side: n completions one after another, reported as events."""

    def work(job: Job) -> None:
        started = time.perf_counter()
        for index in range(chat.n):
            params = chat.params_for_choice(index)
            if chat.stream:
                text_stream = session.stream(chat.messages, params, cancel=job.cancel)
                for delta in text_stream:
                    if delta:
                        job.emit("delta", index, delta)
                completion = text_stream.completion
            else:
                completion = session.generate(chat.messages, params, cancel=job.cancel)
            job.emit("choice", index, completion)
            if job.cancel.is_set():
                return
        job.emit("done", time.perf_counter() - started)

    return work


class _EventWaiter:
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
class _ResponseMeta:
    request_id: str
    model: str
    created: int
    fingerprint: str | None
    arrived_s: float
    info: dict


def _finish(waiter: _EventWaiter, slot: ModelSlot, job: Job) -> None:
    """Always called once per request: stops a generation nobody will read, frees the slot."""
    waiter.close()
    if job.finished_s is None:
        slot.worker.cancel(job)


def _record(
    meta: _ResponseMeta, job: Job, completions: list, generation_s: float | None, first_token_s: float | None
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


def _end_error(event: tuple) -> APIError:
    kind = event[0]
    if kind == "error":
        return classify(event[1])
    if kind == "timeout":
        return APIError(
            504,
            "the request took longer than serve.request_timeout_s and was stopped: ask for fewer max_tokens or retry when the server is less busy",
            type="timeout",
            code="timeout",
        )
    return APIError(
        503, "the server is shutting down: retry against a running server", type="server_error", code="shutting_down"
    )


def _early_end(event: tuple, info: dict, job: Job, slot: ModelSlot) -> Response:
    if event[0] == "disconnected":
        slot.worker.cancel(job)
        info["error"] = "client_disconnected"
        return Response(status_code=499)  # nobody reads it; the log shows the client left
    error = _end_error(event)
    info["error"] = error.code
    return error_response(error)


async def _collect(
    first: tuple, waiter: _EventWaiter, chat: ChatRequest, meta: _ResponseMeta, job: Job, slot: ModelSlot
) -> Response:
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
            return JSONResponse(
                oai.completion_body(meta.request_id, meta.model, meta.created, ordered, meta.fingerprint)
            )
        else:
            return _early_end(event, meta.info, job, slot)
        event = await waiter.next()


async def _stream_chunks(
    first: tuple, waiter: _EventWaiter, chat: ChatRequest, meta: _ResponseMeta, job: Job, slot: ModelSlot
) -> AsyncIterator[bytes]:
    """SSE for one request: per choice a role chunk, content deltas, one finish chunk; usage; [DONE]."""

    def chunk(**kwargs) -> bytes:
        return _sse(
            oai.chunk_body(
                meta.request_id, meta.model, meta.created, meta.fingerprint, include_usage=chat.include_usage, **kwargs
            )
        )

    started: set[int] = set()
    completions: list = []
    first_token_s = None
    event = first
    while True:
        kind = event[0]
        if kind in ("delta", "choice") and event[1] not in started:
            started.add(event[1])
            yield chunk(index=event[1], delta={"role": "assistant", "content": ""})
        if kind == "delta":
            first_token_s = first_token_s or time.perf_counter()
            yield chunk(index=event[1], delta={"content": event[2]})
        elif kind == "choice":
            completions.append(event[2])
            yield chunk(index=event[1], finish=oai.finish_reason(event[2]))
        elif kind == "done":
            _record(meta, job, completions, event[1], first_token_s)
            if chat.include_usage:
                prompt_tokens = completions[0].usage.prompt_tokens if completions else 0
                yield _sse(
                    oai.chunk_body(
                        meta.request_id,
                        meta.model,
                        meta.created,
                        meta.fingerprint,
                        usage=oai.usage_body(prompt_tokens, sum(c.usage.completion_tokens for c in completions)),
                    )
                )
            break
        elif kind == "disconnected":
            meta.info["error"] = "client_disconnected"
            _record(meta, job, completions, None, first_token_s)
            return
        else:
            error = _end_error(event)
            meta.info["error"] = error.code
            _record(meta, job, completions, None, first_token_s)
            yield _sse(error.body())
            break
        event = await waiter.next()
    yield _sse("[DONE]")


class _SSEResponse:
    """An ASGI text/event-stream response from an async iterator; `on_close` runs however it ends."""

    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]

    def __init__(self, chunks: AsyncIterator[bytes], on_close: Callable[[], None]):
        self.chunks = chunks
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            async for data in self.chunks:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.on_close()


# ----- running it ----------------------------------------------------------------------------


class BackgroundServer:
    """uvicorn on a loopback port in a daemon thread; a context manager for tests and benchmarks."""

    def __init__(
        self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", startup_timeout_s: float = 20.0
    ):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.startup_timeout_s = startup_timeout_s
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="shardwise-uvicorn", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url} within {self.startup_timeout_s} s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def _loaded_name(slot) -> str | None:
    """The model a slot's session runs now (None before it loads)."""
    session = getattr(slot, "session", None)
    loaded = getattr(session, "loaded", None)
    return getattr(loaded, "name", None)
