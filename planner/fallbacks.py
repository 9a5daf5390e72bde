"""Other models than the one asked for: the fallback chain of a plan, and model=auto.

Both need profiles by name and a way to plan one; both are handed in (`load_profile` from
planner.config, `plan_model` from planner.planning), so this module reads no files and
imports no planner entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from planner.errors import ShardwiseError
from planner.fixes import speed_text
from planner.hardware.devices import Hardware
from planner.model.source import ModelSpec
from planner.plan import Decision, Plan
from planner.policy import Policy

LoadProfile = Callable[[str], ModelSpec]  # profile name or hub id -> its ModelSpec
PlanModel = Callable[..., Plan]  # (spec, hardware, policy, *, cap_context, explain, load_profile) -> Plan


def lenient(policy: Policy) -> Policy:
    """The policy for other models than the one asked for: quantization=keep applies to that model only."""
    return replace(policy, quantization="auto") if policy.quantization == "keep" else policy


def fallback_chain(
    spec: ModelSpec, hw: Hardware, policy: Policy, *, load_profile: LoadProfile, plan_model: PlanModel
) -> tuple[dict, ...]:
    """Smaller profiles (each profile's `fallback`), each planned here, then the CPU: what the runner falls back to."""
    chain, seen, name = [], {spec.name}, spec.fallback
    while name and name not in seen:
        seen.add(name)
        smaller = load_profile(name)
        try:
            sub = plan_model(smaller, hw, lenient(policy), cap_context=True, explain=False)
        except ShardwiseError as exc:
            # a policy the asked-for model honours (policy.strategy=tensor_parallel) may be one this smaller model
            # cannot (no TP plan): that rules the fallback out, with its own reason, not the plan asked for
            chain.append({"model": name, "hardware": "same", "fits": False, "reason": f"cannot be planned here: {exc}"})
            name = smaller.fallback
            continue
        chain.append(
            {
                "model": name,
                "hardware": "same",
                "fits": sub.fits,
                "reason": f"smaller model: {'fits' if sub.fits else 'does not fit either'} here "
                f"({sub.strategy}, {sub.limits.context_tokens} tokens{speed_text(sub) if sub.fits else ''})",
            }
        )
        name = smaller.fallback
    if hw.devices:
        last = chain[-1]["model"] if chain else spec.name
        chain.append(
            {"model": last, "hardware": "cpu", "fits": None, "reason": "no GPU memory needed: run on the CPU (slow)"}
        )
    return tuple(chain)


def plan_auto_model(hw: Hardware, policy: Policy, *, load_profile: LoadProfile, plan_model: PlanModel) -> Plan:
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
            plan = plan_model(spec, hw, lenient(policy), cap_context=True)
        except ShardwiseError as exc:  # e.g. a forced strategy this candidate cannot honour: try the next one
            if last:
                raise
            tried.append(f"{name} ({exc})")
            continue
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
        fallbacks = plan_model(spec, hw, lenient(policy), cap_context=True, load_profile=load_profile).fallbacks
        return replace(plan, fallbacks=fallbacks, decisions=(Decision("model", name, reason), *plan.decisions))
    raise AssertionError("unreachable")
