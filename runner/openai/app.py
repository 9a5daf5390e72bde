"""`shardwise serve`'s HTTP side: an OpenAI-compatible /v1/chat/completions on Starlette + uvicorn.

    app = create_app([ModelSource("gpt2", load=lambda: session)], ServeSettings())
    # `shardwise serve` runs it with uvicorn (shardwise/verbs/serve.py); tests/background_server.py on a loopback thread

Routes: POST /v1/chat/completions, GET /v1/models[/{id}], GET /health (200 once every model is
loaded, 503 before), GET /health/live (200 while the process answers), GET /metrics (Prometheus,
runner/openai/metrics.py). Every failure, the framework's own 404/405 included, is an OpenAI error
body. Generation runs on long-lived worker threads per model (runner/openai/queue.py): one, or as
many as the model's continuous batch has slots (runner.engine.batching), so the event loop stays
free to answer /health, to refuse with 429 when the queue is full, and to notice a client that went
away: its generation is cancelled and its slot freed. One log line per request (RequestLog).

The routes are plain functions over one `ServerState` (models, settings) kept on the Starlette
app; streams are Starlette `StreamingResponse`s over an async generator; every body and chunk
comes from runner.openai.protocol.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.engine.sampling import SamplingParams
from runner.openai import protocol as oai
from runner.openai.images import ImageLimits
from runner.openai.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from runner.openai.metrics import Metrics
from runner.openai.protocol import APIError
from runner.openai.queue import Job, ModelWorker, QueueFull
from runner.openai.responses import (
    EventStream,
    EventWaiter,
    RequestMeta,
    classify,
    collect,
    early_end,
    error_response,
    finish,
    generation_work,
    stall_handler,
    stream_chunks,
)

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
    defaults: SamplingParams = field(default_factory=SamplingParams)  # sampling for fields a request leaves out
    max_n: int = 8  # most choices one request may ask for
    stream_stall_timeout_s: float = 30.0  # a stream whose client accepts nothing this long is cancelled; 0: never
    max_messages: int = oai.MAX_MESSAGES  # most messages one request may hold; more is a 400
    images: ImageLimits = oai.DEFAULT_IMAGE_LIMITS  # bounds on inline images (serve.max_image_bytes, ...)
    request_read_timeout_s: float = 30.0  # a request must arrive whole (headers and body) within this, seconds
    max_connections: int = 512  # client sockets open at once (runner.openai.connections)


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

    @property
    def batching(self):
        """The model's batching engine (runner.engine.batching); None while loading or when it serves sequentially."""
        return getattr(getattr(self.session, "loaded", None), "batching", None)

    def gauges(self) -> dict:
        engine = self.batching
        if engine is not None:
            stats = engine.stats()
            return {**stats, "waiting": stats["waiting"] + self.worker.waiting}
        return {"running": self.worker.running, "waiting": self.worker.waiting, "kv_cache_usage": 0.0, "num_blocks": 0}


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


class ServerState:
    """The served models by name and the settings; the routes find it on `request.app.state.server`."""

    def __init__(
        self,
        sources: list[ModelSource],
        settings: ServeSettings,
        on_load_failure: Callable[[str, BaseException], None] | None = None,
    ):
        self.settings = settings
        self.slots = [ModelSlot(source, settings.max_queue) for source in sources]
        self.by_name: dict[str, ModelSlot] = {}
        for slot in self.slots:
            for name in (slot.source.name, *slot.source.aliases):
                self.by_name.setdefault(name, slot)
        self.on_load_failure = on_load_failure
        self.metrics = Metrics()

    def load_all(self) -> None:
        # One after another: a plan made after the previous model loaded sees the memory it took.
        for slot in self.slots:
            started = time.perf_counter()
            try:
                slot.session = slot.source.load()
                if slot.batching is not None:  # as many jobs at once as the batch has slots
                    slot.worker.resize(slot.batching.admission.slots)
            except BaseException as exc:
                slot.state, slot.error = "failed", f"{type(exc).__name__}: {exc}"
                log.error("model %s failed to load: %s", slot.source.name, slot.error)
                if self.on_load_failure is not None:
                    self.on_load_failure(slot.source.name, exc)
                return
            slot.state = "ready"
            context = getattr(slot.session, "context_tokens", "?")
            log.info(
                "model %s ready in %.1f s (context %s tokens)", slot.source.name, time.perf_counter() - started, context
            )

    def check_auth(self, request: Request) -> None:
        api_key = self.settings.api_key
        if api_key is None:
            return
        headers = request.headers.getlist("authorization")
        if len(headers) > 1:  # a proxy may check one and this server another: refuse the ambiguity
            raise APIError(
                401,
                f"{len(headers)} Authorization headers were sent: send exactly one, `Authorization: Bearer <key>`",
                code="invalid_api_key",
            )
        header = headers[0] if headers else ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            what = "no API key was provided" if not header else "the API key provided is not valid"
            raise APIError(
                401,
                f"{what}: send the server's key as `Authorization: Bearer <key>` (serve.api_key or SHARDWISE_API_KEY)",
                code="invalid_api_key",
            )

    def find_model(self, name: str) -> ModelSlot:
        slot = self.by_name.get(name)
        if slot is None:
            served = ", ".join(s.source.name for s in self.slots)
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


def _state(request: Request) -> ServerState:
    return request.app.state.server


async def read_json(request: Request, max_body_bytes: int):
    """The decoded body, refused with 413 past `max_body_bytes` (declared or streamed) and 400 when not JSON."""
    too_large = APIError(
        413,
        f"the request body is larger than serve.max_body_bytes={max_body_bytes} bytes: send a shorter conversation "
        "(inline images count: raise serve.max_body_bytes to accept larger ones)",
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
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


def _has_content_parts(body) -> bool:
    """Whether a message of this (unvalidated) body has a list of content parts, the only place inline images are."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages
    )


async def chat_completions(request: Request) -> Response:
    state = _state(request)
    info = request.scope.get("shardwise.log", {})
    arrived = time.perf_counter()
    state.check_auth(request)
    body = await read_json(request, state.settings.max_body_bytes)
    settings = state.settings
    parse = functools.partial(
        oai.parse_chat_request,
        body,
        settings.defaults,
        settings.max_n,
        max_messages=settings.max_messages,
        images=settings.images,
    )
    # on a worker thread when it may decode inline images (long enough to hold up every other request on the loop);
    # text alone is validated here: a thread hop would only delay the request's first token
    chat = await run_in_threadpool(parse) if _has_content_parts(body) else parse()
    slot = state.find_model(chat.model)
    if not getattr(slot.session, "takes_images", False):
        oai.refuse_images(chat.messages, slot.source.name)
    # an alias answers under the served name, as OpenAI does
    response = oai.Response(slot.source.name, fingerprint=slot.source.fingerprint, include_usage=chat.include_usage)
    info.update(id=response.request_id, model=slot.source.name)
    loop = asyncio.get_running_loop()
    job = Job(generation_work(slot.session, chat), loop)
    try:
        slot.worker.submit(job)
    except QueueFull as exc:
        state.metrics.rejected(slot.source.name)
        raise APIError(
            429,
            f"the server is busy: {exc}; retry shortly",
            type="rate_limit_error",
            code="queue_full",
            headers={"retry-after": "1"},
        ) from None
    timeout_s = state.settings.request_timeout_s
    waiter = EventWaiter(job, request, loop.time() + timeout_s if timeout_s > 0 else None)
    meta = RequestMeta(response, arrived, info, state.metrics)
    streaming = False
    try:
        first = await waiter.next()
        if first[0] in ("error", "timeout", "disconnected", "cancelled"):
            return early_end(first, info, job, slot)
        if chat.stream:
            streaming = True  # from here the stream's end finishes the request
            stall_s = state.settings.stream_stall_timeout_s
            return EventStream(
                stream_chunks(first, waiter, chat, meta, job),
                on_close=lambda: finish(waiter, slot, job),
                stall_s=stall_s,
                on_stall=stall_handler(meta, job, slot, stall_s),
            )
        return await collect(first, waiter, chat, meta, job, slot)
    finally:
        if not streaming:
            finish(waiter, slot, job)


async def list_models(request: Request) -> Response:
    state = _state(request)
    state.check_auth(request)
    return JSONResponse({"object": "list", "data": [oai.model_card(s.source.name, s.created) for s in state.slots]})


async def get_model(request: Request) -> Response:
    state = _state(request)
    state.check_auth(request)
    name = request.path_params["model_id"]
    slot = state.by_name.get(name)
    if slot is None:
        raise APIError(404, f"the model `{name}` does not exist on this server", param="model", code="model_not_found")
    return JSONResponse(oai.model_card(slot.source.name, slot.created))


async def health(request: Request) -> Response:
    slots = _state(request).slots
    states = {s.source.name: s.state for s in slots}
    if all(v == "ready" for v in states.values()):
        overall = "ok"
    else:
        overall = "failed" if "failed" in states.values() else "loading"
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
    method, path = request.method, request.url.path
    if exc.status_code in (404, 405):
        # with a key set, a client without it learns nothing, not even which URLs and methods exist (/health is open)
        try:
            _state(request).check_auth(request)
        except APIError as refused:
            return await on_api_error(request, refused)
    if exc.status_code == 404:
        error = APIError(
            404,
            f"unknown request URL: {method} {path}; this server has /v1/chat/completions, /v1/models and /health",
            code="unknown_url",
        )
    elif exc.status_code == 405:
        error = APIError(
            405, f"{method} is not allowed on {path}", code="method_not_allowed", headers=dict(exc.headers or {})
        )
    else:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error = APIError(exc.status_code, str(exc.detail), type=kind)
    return await on_api_error(request, error)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    return await on_api_error(request, classify(exc))


@asynccontextmanager
async def lifespan(app: Starlette):
    state: ServerState = app.state.server
    threading.Thread(target=state.load_all, name="shardwise-load", daemon=True).start()
    try:
        yield
    finally:
        for slot in state.slots:
            slot.worker.close()


async def prometheus(request: Request) -> Response:
    state = _state(request)
    state.check_auth(request)
    text = state.metrics.render({s.source.name: s.gauges() for s in state.slots})
    return Response(text, media_type=METRICS_CONTENT_TYPE)


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/health/live", live, methods=["GET"]),
    Route("/metrics", prometheus, methods=["GET"]),
]


def create_app(
    sources: list[ModelSource],
    settings: ServeSettings | None = None,
    *,
    on_load_failure: Callable[[str, BaseException], None] | None = None,
) -> RequestLog:
    """The ASGI app; models load one after another on a background thread at startup."""
    if not sources:
        raise ValueError("create_app needs at least one ModelSource")
    app = Starlette(
        routes=ROUTES,
        exception_handlers={APIError: on_api_error, HTTPException: on_http_error, Exception: on_unexpected},
        lifespan=lifespan,
    )
    app.state.server = ServerState(sources, settings or ServeSettings(), on_load_failure)
    return RequestLog(app)


def _loaded_name(slot) -> str | None:
    """The model a slot's session runs now (None before it loads)."""
    session = getattr(slot, "session", None)
    loaded = getattr(session, "loaded", None)
    return getattr(loaded, "name", None)
