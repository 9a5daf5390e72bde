"""`shardwise serve [hydra overrides]`: plan, load, and serve an OpenAI-compatible API on 127.0.0.1.

    shardwise serve model=gpt2 hardware=cpu                 # plans, loads, listens on :8000
    shardwise serve plan_file=plan.json serve.api_key=KEY   # a reviewed plan, key required
    shardwise serve model=gpt2 serve.models=[gpt2-medium]   # more than one model
    shardwise serve model=gpt2 policy.sessions=4            # batch 4 at once (default auto: as many as fit)

    from openai import OpenAI
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY").chat.completions.create(...)

Concurrent requests share transformers' continuous batching: serve plans `policy.sessions=auto` by default (as
many full-context sequences as fit, bounded by policy.max_sessions; conf/serve.yaml), and the plan's `sessions`
decision says how many and what binds. A plan_file serves exactly what it planned.

The primary model is planned before the port opens, so a plan that does not fit fails at once
with exit 2. The server then listens (GET /health answers 503 "loading") while the models load
one after another: each extra model is planned only after the previous one is in memory, so a
probed GPU's free memory already counts what the earlier models took. A model that fails to
load stops the server with its one-line reason.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from planner.config.schema import read_serve_config as read_serve_block
from planner.errors import ShardwiseError

log = logging.getLogger("shardwise.serve")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def settings_from_config(cfg):
    """ServeSettings from the composed config; the API key falls back to $SHARDWISE_API_KEY."""
    from runner.engine.sampling import SamplingParams
    from runner.openai.app import ServeSettings
    from runner.openai.images import ImageLimits

    block = read_serve_block(cfg.get("serve"))
    # a bad generation.* default is refused now, not on every request
    defaults = SamplingParams.from_generation(cfg.generation)
    api_key = block.api_key or os.environ.get("SHARDWISE_API_KEY") or None
    if not str(block.host or "").strip():  # an empty host would bind every interface, shown as a blank address
        raise ShardwiseError(
            "serve.host is empty: give an address to bind, 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        )
    return ServeSettings(
        host=block.host,
        port=block.port,
        api_key=api_key,
        max_queue=block.max_queue,
        max_body_bytes=block.max_body_bytes,
        request_timeout_s=float(block.request_timeout_s),
        defaults=defaults,
        max_n=block.max_n,
        stream_stall_timeout_s=float(block.stream_stall_timeout_s),
        max_messages=block.max_messages,
        images=ImageLimits(
            max_bytes=block.max_image_bytes, max_pixels=block.max_image_pixels, max_images=block.max_images
        ),
        request_read_timeout_s=float(block.request_read_timeout_s),
        max_connections=block.max_connections,
    ), block


def _hardware_choice(cfg) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("hardware", "")
    except ValueError:  # composed outside a Hydra run (tests)
        return ""


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind now, so a busy port is a one-line error instead of a uvicorn traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY on such sockets
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            fix = "choose another serve.port or stop what uses it"
        else:  # the address itself: a name that does not resolve, an IP this machine does not have
            fix = "set serve.host to an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
        raise ShardwiseError(f"cannot listen on {host}:{port} ({reason}): {fix}") from None
    return sock


def serve(cfg) -> None:
    from runner.engine.loader import set_runtime_env
    from runner.openai.app import create_app
    from runner.openai.connections import make_server

    settings, block = settings_from_config(cfg)
    log.setLevel(block.log_level.upper())
    set_runtime_env(cfg.get("alloc_conf"), log.info)  # before anything can start CUDA
    if settings.host not in LOOPBACK and settings.api_key is None:
        log.warning(
            "serving on %s without an API key: anyone who can reach this port can use the model (set serve.api_key)",
            settings.host,
        )
    # a host or port that cannot be bound is bad input: said before the model is looked up, planned or fetched
    listen_socket(settings.host, settings.port).close()
    from runner.openai.served import model_sources
    from shardwise.verbs.app import given_on_command_line, remote_code_consent

    sources = model_sources(
        cfg,
        consent=remote_code_consent(cfg),
        hardware_choice=_hardware_choice(cfg),
        sessions_given=given_on_command_line("policy.sessions"),  # else serve's default, auto, applies
    )
    failure: list[BaseException] = []
    server_box: list = []

    def on_load_failure(name: str, exc: BaseException) -> None:
        failure.append(exc)
        if server_box:
            server_box[0].should_exit = True

    app = create_app(sources, settings, on_load_failure=on_load_failure)
    sock = listen_socket(settings.host, settings.port)
    server = make_server(app, settings, log_level=block.log_level, timeout_graceful_shutdown=5)
    server_box.append(server)
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info(
        "serving %s on http://%s:%d/v1 (api key %s, queue %d per model)",
        ", ".join(s.name for s in sources),
        shown,
        sock.getsockname()[1],  # the port bound: serve.port=0 lets the system pick a free one
        "required" if settings.api_key else "off",
        settings.max_queue,
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it already handled by shutting down
        log.info("stopped")
    finally:
        sock.close()
    if failure:
        exc = failure[0]
        if isinstance(exc, ShardwiseError):
            raise exc
        raise ShardwiseError(f"loading the model failed ({type(exc).__name__}: {exc}): see the log above")


def run(argv: list[str]) -> None:
    from shardwise.verbs.app import run_verb

    run_verb("serve", "serve", serve, argv)
