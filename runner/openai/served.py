"""The models a server serves: each planned for serving, then loaded into a ChatSession with batching attached.

The serve verb (shardwise/verbs/serve.py) reads its command line and hands in what it knows of this run
(the hardware option composed, whether policy.sessions was typed, the remote-code consent); nothing here
reads Hydra's per-run state.
"""

from __future__ import annotations

import logging
from pathlib import Path

from planner.config.schema import read_serve_config as read_serve_block
from planner.errors import ShardwiseError

log = logging.getLogger("shardwise.serve")


def _fitting(plan):
    """The plan when it fits, else the first fallback that does (announced), else a one-line error."""
    from runner.plan_fitting import plan_that_fits

    return plan_that_fits(plan, notice=log.warning)


def plan_for(cfg, model_node, *, hardware_choice: str = "", sessions_given: bool = False) -> object:
    """A fresh plan for `model_node` with the rest of `cfg` (hardware probed now), planned once.

    The plan is for this runner (Policy.batching=runner: sessions=auto on a layout it serves one request at a
    time plans one session; planner.driver.planning). serve's default policy.sessions=auto holds for one batched
    model; with serve.models each model plans one session instead (the first model's paged cache must not take
    the memory the next ones are planned in), and with serve.batching=false too (nothing would use the other
    sessions' cache). The planner writes the count and its reason. `hardware_choice` is the hardware option
    the run composed; `sessions_given`, whether policy.sessions was typed (else serve's default, auto, applies).
    """
    from dataclasses import replace

    from omegaconf import OmegaConf

    from planner.config.request import plan_from_config
    from planner.driver.sessions import one_session_reason
    from planner.hardware.tiers import resolve_hardware

    hardware = resolve_hardware(cfg.hardware, name=hardware_choice)
    block = read_serve_block(cfg.get("serve"))
    by_default = not sessions_given

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


def model_sources(cfg, *, consent: bool, hardware_choice: str = "", sessions_given: bool = False) -> list:
    """One ModelSource per served model; the primary one is planned here, before the port opens.

    `consent`: this run's own consent to code shipped with a model (shardwise.verbs.app.remote_code_consent);
    `hardware_choice` and `sessions_given` as for plan_for."""
    from planner.planfile.plan import Plan
    from runner.openai.app import ModelSource

    run = {"hardware_choice": hardware_choice, "sessions_given": sessions_given}
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
        primary_plan = plan_for(cfg, cfg.model, **run)
        # model.path serves a directory under its own name: the profile's hub ids do not name it.
        primary_aliases = _aliases(cfg.model) if primary_plan.model.name == cfg.model.name else ()

    from runner.engine.preflight import check_remote_code, check_weights_reachable

    check_remote_code(primary_plan, consent)  # before the port opens
    if cfg.get("plan_file"):
        check_weights_reachable(primary_plan)  # a reviewed plan's hub model: the same one-line check

    def loader_for(make_plan):
        return lambda: load_session(cfg, make_plan(), consent=consent)

    sources = [
        ModelSource(
            primary_plan.model.name, loader_for(lambda: primary_plan), primary_aliases, primary_plan.fingerprint or None
        )
    ]
    block = read_serve_block(cfg.get("serve"))
    for entry in block.models:
        node = extra_model_node(entry)
        sources.append(
            ModelSource(str(node.name), loader_for(lambda node=node: plan_for(cfg, node, **run)), _aliases(node))
        )
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ShardwiseError(
            f"serve.models names {', '.join(duplicates)} more than once (the served models are {names}): "
            "list each model once"
        )
    return sources


def load_session(cfg, plan, *, consent: bool):
    """Load a plan's model (its fallback chain if it cannot load) in a ChatSession logging to the server log."""
    from runner.engine.preflight import check_remote_code
    from runner.engine.recovery import RecoveryPolicy, load_with_fallbacks
    from runner.engine.sampling import SamplingParams
    from runner.engine.session import ChatSession

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
