"""Other models than the one asked for: the fallback chain of a plan (model=auto is planner.driver.planning's).

Profiles by name are handed in (`load_profile` from planner.config), so this module reads no
files; each smaller model is planned with the single planning step (planner.place.sizing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from planner.decide.policy import Policy
from planner.driver.fixes import speed_text
from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware
from planner.model.source import ModelSpec
from planner.place.sizing import size_and_place

LoadProfile = Callable[[str], ModelSpec]  # profile name or hub id -> its ModelSpec


def lenient(policy: Policy) -> Policy:
    """The policy for other models than the one asked for: quantization=keep applies to that model only."""
    return replace(policy, quantization="auto") if policy.quantization == "keep" else policy


def fallback_chain(spec: ModelSpec, hw: Hardware, policy: Policy, *, load_profile: LoadProfile) -> tuple[dict, ...]:
    """Smaller profiles (each profile's `fallback`), each planned here, then the CPU: what the runner falls back to."""
    chain, seen, name = [], {spec.name}, spec.fallback
    while name and name not in seen:
        seen.add(name)
        smaller = load_profile(name)
        try:
            sub = size_and_place(smaller, hw, lenient(policy), cap_context=True).plan
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
