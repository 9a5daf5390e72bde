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
from pathlib import Path

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


def _fitting(plan):
    """The plan when it fits, else the first fallback that does (announced), else a one-line error."""
    from runner.plan_fitting import plan_that_fits

    return plan_that_fits(plan, notice=log.warning)


def _sessions_given() -> bool:
    """policy.sessions was set on the command line (else serve's default, auto, applies)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except ValueError:  # composed outside a Hydra run (tests): only the composed value is known
        return False
    return any(o.lstrip("+~").split("=", 1)[0] == "policy.sessions" for o in overrides)


def plan_for(cfg, model_node) -> object:
    """A fresh plan for `model_node` with the rest of `cfg` (hardware probed now), planned once.

    The plan is for this runner (Policy.batching=runner: sessions=auto on a layout it serves one request at a
    time plans one session; planner.driver.planning). serve's default policy.sessions=auto holds for one batched
    model; with serve.models each model plans one session instead (the first model's paged cache must not take
    the memory the next ones are planned in), and with serve.batching=false too (nothing would use the other
    sessions' cache). The planner writes the count and its reason.
    """
    from dataclasses import replace

    from omegaconf import OmegaConf

    from planner.config.request import plan_from_config
    from planner.driver.sessions import one_session_reason
    from planner.hardware.tiers import resolve_hardware

    hardware = resolve_hardware(cfg.hardware, name=_hardware_choice(cfg))
    block = read_serve_block(cfg.get("serve"))
    by_default = not _sessions_given()

    def for_serve(policy):
        if policy.sessions is not None or not by_default:
            return replace(policy, batching="runner")
        policy = replace(policy, batching="runner", sessions_origin="serve's default")
        why_one = None
        if not block.batching:
            why_one = "serve.batching=false serves one request at a time"
        elif block.models:
            why_one = "the first of several served models (serve.models) would take the memory the next ones need"
        if why_one:
            return replace(policy, sessions=1, sessions_why=one_session_reason(policy, why_one))
        return policy

    node = OmegaConf.create({"model": model_node, "policy": cfg.policy, "generation": cfg.generation})
    return _fitting(plan_from_config(node, hardware, adjust_policy=for_serve))


def extra_model_node(entry: str):
    """The model config for a `serve.models` entry: a profile name, a hub id or a local directory."""
    from omegaconf import OmegaConf

    from planner.config.overrides import resolve_model_name
    from planner.config.reader import load_profile
    from planner.config.schema import ModelConfig

    path = Path(entry).expanduser()
    if path.is_dir() or path.name == "config.json":
        name = (path.parent if path.name == "config.json" else path).name
        return OmegaConf.merge(OmegaConf.structured(ModelConfig), {"name": name, "path": str(path)})
    return load_profile(resolve_model_name(entry))


def _aliases(model_node) -> tuple[str, ...]:
    names = [model_node.get("hub_id") or "", *(model_node.get("aliases") or [])]
    return tuple(n for n in names if n)


def model_sources(cfg) -> list:
    """One ModelSource per served model; the primary one is planned here, before the port opens."""
    from planner.planfile.plan import Plan
    from runner.openai.app import ModelSource

    if cfg.get("plan_file"):
        from runner.engine.loader import check_fresh

        primary_plan = Plan.load(cfg.plan_file)
        try:
            check_fresh(primary_plan, str(cfg.plan_file))
        except ShardwiseError as exc:  # serve has no replan=true: say what works here
            stale = str(exc).split(": review a new plan", 1)[0]
            raise ShardwiseError(
                f"{stale}: review a new plan with `shardwise plan`, or serve without plan_file= to plan afresh here"
            ) from None
        primary_plan = _fitting(primary_plan)
        primary_aliases: tuple[str, ...] = ()
    else:
        from runner.engine.preflight import check_model_reachable

        check_model_reachable(cfg.model)  # offline and uncached: one line before planning, before the port opens
        primary_plan = plan_for(cfg, cfg.model)
        # model.path serves a directory under its own name: the profile's hub ids do not name it.
        primary_aliases = _aliases(cfg.model) if primary_plan.model.name == cfg.model.name else ()

    from runner.engine.preflight import check_remote_code, check_weights_reachable
    from shardwise.verbs.app import remote_code_consent

    check_remote_code(primary_plan, remote_code_consent(cfg))  # before the port opens
    if cfg.get("plan_file"):
        check_weights_reachable(primary_plan)  # a reviewed plan's hub model: the same one-line check

    def loader_for(make_plan):
        return lambda: load_session(cfg, make_plan())

    sources = [
        ModelSource(
            primary_plan.model.name, loader_for(lambda: primary_plan), primary_aliases, primary_plan.fingerprint or None
        )
    ]
    block = read_serve_block(cfg.get("serve"))
    for entry in block.models:
        node = extra_model_node(entry)
        sources.append(ModelSource(str(node.name), loader_for(lambda node=node: plan_for(cfg, node)), _aliases(node)))
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ShardwiseError(
            f"serve.models names {', '.join(duplicates)} more than once (the served models are {names}): "
            "list each model once"
        )
    return sources


def load_session(cfg, plan):
    """Load a plan's model (its fallback chain if it cannot load) in a ChatSession logging to the server log."""
    from runner.engine.preflight import check_remote_code
    from runner.engine.recovery import RecoveryPolicy, load_with_fallbacks
    from runner.engine.sampling import SamplingParams
    from runner.engine.session import ChatSession
    from shardwise.verbs.app import remote_code_consent

    consent = remote_code_consent(cfg)
    check_remote_code(plan, consent)  # every served model, serve.models' too (the primary's is checked up front)
    policy = RecoveryPolicy(remote_code_consent=consent)
    loaded = load_with_fallbacks(plan, policy=policy, notice=log.warning)
    if loaded.plan is not plan:
        log.warning("serving %s with its fallback %s: the planned model could not load", plan.model.name, loaded.name)
    session = ChatSession(
        loaded,
        defaults=SamplingParams.from_generation(cfg.generation),
        plan=loaded.plan,
        system_prompt=cfg.generation.get("system_prompt"),
        recovery=policy,
        on_notice=log.info,
    )
    block = read_serve_block(cfg.get("serve"))
    sessions = next((d.reason for d in loaded.plan.decisions if d.what == "sessions"), None)
    if sessions:
        log.info("%s sessions: %s", loaded.name, sessions)
    if block.batching:
        from runner.engine.batching import attach

        # The server's own line (serve.max_queue, 429) admits requests; the batch's line must then hold the
        # extra choices (n > 1) of the requests generating, which join the batch together.
        slots = loaded.plan.serving.max_concurrent if loaded.plan.serving is not None else 1
        waiting = block.max_queue + max(1, slots) * (block.max_n - 1)
        attach(loaded, loaded.plan.serving, max_waiting=waiting, log=log.info)
    else:
        log.info("serving %s one request at a time: serve.batching=false", loaded.name)
    return session


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind now, so a busy port is a one-line error instead of a uvicorn traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
    sources = model_sources(cfg)
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
