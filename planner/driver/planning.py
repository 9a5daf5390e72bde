"""The planning driver: one request in, one Plan out, running the searches above the single step.

`planner.place.sizing.size_and_place` sizes and places one request with a fixed session count. This
module asks it the questions a plan needs, in this order, and nothing calls back into here:
1. policy.sessions=auto: the most sessions that fit at the context one session gets (planner.driver.sessions);
2. the plan itself, one call, carrying the session count and its reason;
3. a plan that does not fit: the changes that would make it fit, each re-planned (planner.driver.fixes);
4. the fallback chain, smaller profiles then the CPU (planner.driver.fallbacks);
and for model=auto, steps 1-3 per candidate until one fits, then step 4 for it.
Pure: profiles come in through `load_profile`; nothing here reads files or touches a GPU.
"""

from __future__ import annotations

from dataclasses import replace

from planner.decide.policy import Policy
from planner.driver.fallbacks import LoadProfile, fallback_chain, lenient
from planner.driver.fixes import speed_text, what_would_fit
from planner.driver.sessions import most_sessions, one_session_reason
from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware
from planner.model.source import ModelSpec
from planner.place.sizing import Placed, size_and_place
from planner.planfile.plan import Decision, Plan


def plan(request, hardware: Hardware, *, load_profile: LoadProfile | None = None) -> Plan:
    """The Plan for a PlanRequest (planner.config.request) on `hardware`.

    `load_profile` (profile name -> ModelSpec) serves the fallback chain and model=auto; without it
    the plan has no fallbacks.
    """
    if request.model is None:
        if load_profile is None:
            raise ShardwiseError("model=auto needs the shipped profiles: plan it through planner.config")
        return plan_auto_model(hardware, request.policy, load_profile=load_profile)
    return plan_model(request.model, hardware, request.policy, load_profile=load_profile)


def plan_model(
    spec: ModelSpec,
    hw: Hardware,
    policy: Policy,
    *,
    load_profile: LoadProfile | None = None,
    cap_context: bool = False,
    explain: bool = True,
    speed: bool = True,
) -> Plan:
    """Plan one model: the sessions search, the plan, its fixes, then its fallback chain when profiles are given.

    cap_context: a context beyond the model's maximum is capped (fallbacks, model=auto). explain: work out
    (by re-planning) what would make a does-not-fit plan fit. speed=False leaves out the performance block.
    """
    placed, settled = _searched(spec, hw, policy, cap_context, explain, speed)
    if load_profile is None or policy.engine.is_vllm:  # the fallback chain is the runner's
        return placed.plan
    return replace(placed.plan, fallbacks=fallback_chain(spec, placed.used, settled, load_profile=load_profile))


def _searched(
    spec: ModelSpec, hw: Hardware, policy: Policy, cap_context: bool, explain: bool, speed: bool
) -> tuple[Placed, Policy]:
    """Steps 1-3 of the module docstring; also the policy as settled (session count and context fixed).

    With policy.batching=runner (shardwise serve), sessions=auto on a layout the runner serves one
    request at a time (offload, pipeline, tensor parallel, eager attention) plans one session, since
    more would reserve KV cache nobody uses; unless one session fits one GPU, batched, and then the
    most sessions that one GPU holds, batched, serve more than the spread layout.
    """
    placed, settled = _sessions_then_place(spec, hw, policy, cap_context, explain, speed)
    serving = placed.plan.serving
    if policy.sessions is not None or policy.batching != "runner" or serving is None or serving.mode == "batched":
        return placed, settled
    one = size_and_place(spec, hw, replace(policy, sessions=1), cap_context=cap_context, speed=False).plan
    if one.serving is not None and one.serving.mode == "batched" and one.strategy == "single_gpu":
        spread = serving.reason
        suffix = (
            "; on one GPU, which this runner batches (more sessions would spread the model over GPUs that serve "
            f"one request at a time: {spread})"
        )
        pinned = replace(policy, strategy="single_gpu")
        found = _sessions_then_place(spec, hw, pinned, cap_context, explain, speed, suffix)
        pinned_serving = found[0].plan.serving
        if found[0].plan.fits and pinned_serving is not None and pinned_serving.mode == "batched":
            return found
    why = f"this layout serves one request at a time ({(one.serving or serving).reason})"
    alone = replace(policy, sessions=1, sessions_why=one_session_reason(policy, why))
    return _sessions_then_place(spec, hw, alone, cap_context, explain, speed)


def _sessions_then_place(
    spec: ModelSpec,
    hw: Hardware,
    policy: Policy,
    cap_context: bool,
    explain: bool,
    speed: bool,
    reason_suffix: str = "",
) -> tuple[Placed, Policy]:
    """The sessions search (auto), one placement carrying the count and its reason, and a misfit's fixes."""
    reason = ""
    if policy.sessions is None and not policy.engine.is_vllm:  # vLLM: its driver sizes auto from its KV cache
        found = most_sessions(spec, hw, policy, cap_context)
        if found is None:  # not even one sequence fits: plan one, with its fixes
            policy = replace(policy, sessions=1)
        else:
            policy = replace(policy, sessions=found.sessions, context_tokens=found.context_tokens)
            reason = found.reason + reason_suffix
    placed = size_and_place(spec, hw, policy, cap_context=cap_context, speed=speed, sessions_reason=reason)
    if explain and not placed.plan.fits and placed.plan.binding and not policy.engine.is_vllm:
        fixes = what_would_fit(spec, placed.used, policy, placed.formats, placed.inv)
        placed = replace(placed, plan=replace(placed.plan, binding={**placed.plan.binding, "fixes": fixes}))
    return placed, policy


def plan_auto_model(hw: Hardware, policy: Policy, *, load_profile: LoadProfile) -> Plan:
    """model=auto: the largest of policy.candidates that fits (at the requested context, if any)."""
    candidates = list(policy.candidates)
    if not candidates:
        raise ShardwiseError("model=auto needs policy.candidates, a list of profiles from largest to smallest")
    requested = policy.context_tokens
    tried = []
    for name in candidates:
        spec = load_profile(name)
        last = name == candidates[-1]
        try:
            placed, settled = _searched(spec, hw, lenient(policy), cap_context=True, explain=True, speed=True)
        except ShardwiseError as exc:  # e.g. a forced strategy this candidate cannot honour: try the next one
            if last:
                raise
            tried.append(f"{name} ({exc})")
            continue
        plan = placed.plan
        short = requested is not None and plan.limits.context_tokens < requested
        if not (plan.fits and not short) and not last:
            why = (
                f"its maximum context {plan.limits.context_tokens} < {requested}"
                if short
                else f"{plan.binding.get('term', 'memory')} on {plan.binding.get('device', '?')}"
            )
            tried.append(f"{name} ({why})")
            continue
        if plan.fits and not short:
            reason = (
                f"largest of policy.candidates that fits this hardware; did not fit: {', '.join(tried)}"
                if tried
                else "largest of policy.candidates, and it fits"
            ) + speed_text(plan).replace(",", "; predicted", 1)
        else:
            at = f" at {requested} tokens" if short else ""
            reason = f"no candidate fits{at}; showing the smallest ({', '.join(tried) or 'none other'} did not fit)"
            if short and plan.fits:
                plan = replace(
                    plan,
                    fits=False,
                    binding={
                        "device": "-",
                        "term": "context",
                        "needed": 0,
                        "usable": 0,
                        "fixes": [f"policy.context_tokens={plan.limits.context_tokens} or less"],
                    },
                )
        fallbacks = (
            plan.fallbacks
            if policy.engine.is_vllm
            else fallback_chain(spec, placed.used, settled, load_profile=load_profile)
        )
        return replace(plan, fallbacks=fallbacks, decisions=(Decision("model", name, reason), *plan.decisions))
    raise AssertionError("unreachable")
