"""What would make a does-not-fit plan fit: each suggestion is re-planned before it is offered.

A suggestion is a change a user can make (a policy knob, more GPUs, a package install); it is
shown only when the plan with that change applied fits, with what it would give.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from planner.decide import stack
from planner.decide.decisions import Formats, mxfp4_blocked_by_hardware
from planner.decide.policy import Policy
from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware
from planner.limits import MAX_NODES
from planner.model.inventory import Inventory
from planner.model.source import ModelSpec
from planner.place.sizing import size_and_place
from planner.planfile.plan import Plan
from planner.units import GIB

Replan = Callable[..., Plan | None]  # (policy=None, hardware=None, fit_only=False) -> the plan changed; None: invalid


def _fits(plan) -> bool:
    return plan is not None and plan.fits


def _more_gpus(hw: Hardware, policy: Policy, quick_policy: Policy, replan: Replan, limit: int = 64):
    """The fewest GPUs like this machine's roomiest one that fit, as (count, plan, that GPU).

    The search checks fits at one context (quick_policy); the count found is then planned in full.
    """
    if not hw.devices or hw.nodes > 1:
        return None
    best = max(hw.devices, key=lambda d: (d.free_bytes, -d.id))

    def on(count: int, policy=quick_policy, fit_only=True):  # the bisection asks only whether it fits
        devices = tuple(replace(best, id=i, uuid="", pci_bus_id="", processes=()) for i in range(count))
        pairs = tuple((i, j) for i in range(count) for j in range(i + 1, count)) if hw.interconnect == "nvlink" else ()
        return replan(policy, hardware=replace(hw, devices=devices, nvlink_pairs=pairs), fit_only=fit_only)

    low, high, found = len(hw.devices), len(hw.devices) + 1, None
    while high <= limit:
        found = on(high)
        if _fits(found):
            break
        low, high = high, high * 2
    if not _fits(found):
        return None
    while high - low > 1:  # the fewest in (low, high]
        mid = (low + high) // 2
        attempt = on(mid)
        if _fits(attempt):
            high, found = mid, attempt
        else:
            low = mid
    return high, on(high, policy, fit_only=False), best


def _more_nodes(hw: Hardware, policy: Policy, quick_policy: Policy, replan: Replan):
    """The fewest nodes like these that fit (a tier or snapshot of several nodes), as (nodes, plan).

    Bisection between this many and MAX_NODES, as for more GPUs: more nodes only add memory. A
    probed machine does not grow by editing a key, so it gets no such fix.
    """
    if not hw.devices or not 1 < hw.nodes < MAX_NODES or hw.probed:
        return None
    first = [d for d in hw.devices if d.node == 0]

    def on(nodes: int, policy=quick_policy, fit_only=True):  # the bisection asks only whether it fits
        devices = tuple(replace(d, node=n) for n in range(nodes) for d in first)
        return replan(policy, hardware=replace(hw, devices=devices, nodes=nodes), fit_only=fit_only)

    low, high, found = hw.nodes, min(hw.nodes * 2, MAX_NODES), None
    while True:
        found = on(high)
        if _fits(found) or high >= MAX_NODES:
            break
        low, high = high, min(high * 2, MAX_NODES)
    if not _fits(found):
        return None
    while high - low > 1:  # the fewest in (low, high]
        mid = (low + high) // 2
        if _fits(on(mid)):
            high = mid
        else:
            low = mid
    return high, on(high, policy, fit_only=False)


def _most_sessions_that_fit(policy: Policy, replan: Replan, most: int, quick_policy: Policy):
    """(the largest session count <= most that fits, its plan), by bisection: fitting only gets harder with more.

    The probes plan at quick_policy's one context (the least a plan accepts, or the one asked for):
    a plan fits at all exactly when it fits there, and one fit check is much cheaper than the
    search for the largest context; only the count found is planned in full.
    """
    if not _fits(replan(replace(quick_policy, sessions=1), fit_only=True)):
        return None
    low, high = 1, most + 1  # low fits, high is the first count not known to fit
    while high - low > 1:
        mid = (low + high) // 2
        if _fits(replan(replace(quick_policy, sessions=mid), fit_only=True)):
            low = mid
        else:
            high = mid
    return low, replan(replace(policy, sessions=low))


def speed_text(plan) -> str:
    """ ", ~35 tok/s" from a re-planned plan's predicted one-sequence decode; "" where it has none."""
    performance = getattr(plan, "performance", None) or {}
    if not performance.get("available"):
        return ""
    rate = performance["decode_tokens_per_s"]
    return f", ~{rate:.0f} tok/s" if rate >= 10 else f", ~{rate:.2g} tok/s"


def _slowdown(warning: str, plan) -> str:
    """An offload fix's cost: the plan's offload warning, and the speed model's prediction where it has one."""
    predicted = speed_text(plan).removeprefix(", ")
    return (warning.removeprefix("offload: ") or "slow") + (f"; predicted {predicted}" if predicted else "")


def _fix(text: str, *overrides: str) -> dict:
    """A suggestion: what to tell the user, and the CLI overrides that apply it (empty when it is not a knob)."""
    return {"text": text, "overrides": list(overrides)}


def _quantize_on_load(spec: ModelSpec, hw: Hardware, policy: Policy, replan: Replan) -> list[dict]:
    """The first on-load quantization (least lossy first) that makes an unquantized model fit these GPUs."""
    if spec.quantization or not hw.devices or policy.quantization != "auto":
        return []
    for choice in ("fp8", "bnb8", "bnb4"):  # refused choices (fp8 below cc 8.9, no bitsandbytes) replan to None
        plan = replan(replace(policy, quantization=choice))
        if _fits(plan):
            gpus = len({b.device for b in plan.budget if b.device not in ("cpu", "disk")})
            return [
                _fix(
                    f"fits on {gpus}x {hw.devices[0].name} with policy.quantization={choice}, "
                    f"{plan.limits.context_tokens:,} tokens ({plan.model.weight_bytes / GIB:.1f} GiB of weights"
                    f"{speed_text(plan)})",
                    f"policy.quantization={choice}",
                )
            ]
    return []


def _replanner(spec: ModelSpec, hw: Hardware, policy: Policy) -> Replan:
    """Plan this model again with another policy or hardware; None when that change makes the request invalid."""

    def replan(changed: Policy | None = None, hardware: Hardware | None = None, fit_only: bool = False) -> Plan | None:
        """fit_only: the caller asks only whether it fits (no performance block, no choice by objective)."""
        try:
            return size_and_place(spec, hardware or hw, changed or policy, choose=not fit_only, speed=not fit_only).plan
        except ShardwiseError:  # a change that makes the config invalid is no fix
            return None

    return replan


def what_would_fit(spec: ModelSpec, hw: Hardware, policy: Policy, formats: Formats, inv: Inventory) -> list[dict]:
    """The changes that make this does-not-fit plan fit, each re-planned (planner.place.sizing) before it is offered."""
    replan = _replanner(spec, hw, policy)
    fixes = []
    # fit checks at one context are much cheaper than finding the largest one
    probe_context = policy.context_tokens or min(policy.min_context_tokens, inv.max_context_tokens)
    quick = replace(policy, context_tokens=probe_context)
    if policy.context_tokens is not None:
        shorter = replan(replace(policy, context_tokens=None))
        if _fits(shorter):
            n = shorter.limits.context_tokens
            fixes.append(
                _fix(
                    f"a shorter context: policy.context_tokens={n} (the most that fits here{speed_text(shorter)})",
                    f"policy.context_tokens={n}",
                )
            )
    sessions = policy.sessions
    fewer = _most_sessions_that_fit(policy, replan, sessions - 1, quick) if sessions > 1 else None
    if fewer:
        n, plan = fewer
        fixes.append(
            _fix(
                f"fewer concurrent sessions: policy.sessions={n} "
                f"({plan.limits.context_tokens:,} tokens of context each{speed_text(plan)})",
                f"policy.sessions={n}",
            )
        )
    if formats.dtype == "float32":
        lower = "bfloat16" if (not hw.devices or all(d.supports_bf16 for d in hw.devices)) else "float16"
        halved = replan(replace(policy, dtype=lower))
        if _fits(halved):
            fixes.append(
                _fix(
                    f"policy.dtype={lower}: half the weight memory ({halved.limits.context_tokens:,} tokens of "
                    f"context{speed_text(halved)})",
                    f"policy.dtype={lower}",
                )
            )
    if spec.quantization == "mxfp4" and not formats.quant_kept:
        if not mxfp4_blocked_by_hardware(hw):
            ready = replace(hw, installed={**hw.installed, **_kernels_transformers_takes()})
            kept = replan(replace(policy, quantization="auto"), hardware=ready)
            if _fits(kept):
                again = ["policy.quantization=auto"] if policy.quantization == "none" else []
                fixes.append(
                    _fix(
                        f"keep {spec.quantization} ({kept.model.weight_bytes / GIB:.1f} GiB of weights instead of "
                        f"{inv.weight_bytes / GIB:.1f}{speed_text(kept)}): pip install 'triton>=3.4' "
                        f"'{stack.requirement_text('kernels')}'" + (" and policy.quantization=auto" if again else ""),
                        *again,
                    )
                )
    fixes.extend(_quantize_on_load(spec, hw, policy, replan))
    more = _more_gpus(hw, policy, quick, replan)
    if more:
        count, plan, like = more
        how = (
            f"hardware.count={count}"
            if not hw.probed
            else f"{count} GPUs like {like.name} (this machine has {len(hw.devices)})"
        )
        fixes.append(
            _fix(
                f"more GPUs: {how}, {plan.strategy} with {plan.limits.context_tokens:,} tokens of context"
                + speed_text(plan),
                *([] if hw.probed else [f"hardware.count={count}"]),
            )
        )
    wider = _more_nodes(hw, policy, quick, replan)
    if wider:
        count, plan = wider
        fixes.append(
            _fix(
                f"more nodes: hardware.nodes={count}, {plan.strategy} with {plan.limits.context_tokens:,} tokens "
                f"of context{speed_text(plan)}",
                f"hardware.nodes={count}",
            )
        )
    if hw.devices and not (policy.allow_cpu_offload and policy.allow_disk_offload):
        for changes in ({"allow_cpu_offload": True}, {"allow_cpu_offload": True, "allow_disk_offload": True}):
            offloaded = replan(replace(policy, context_tokens=probe_context, **changes))
            if _fits(offloaded):
                slow = next((w for w in offloaded.warnings if w.startswith("offload:")), "")
                # the speed holds at the context it was planned for: the fix names that context and sets it
                knobs = [f"policy.{k}=true" for k in changes] + [f"policy.context_tokens={probe_context}"]
                fixes.append(_fix(f"{' '.join(knobs)} ({_slowdown(slow, offloaded)})", *knobs))
                break
    elif not hw.devices and not policy.allow_disk_offload:
        offloaded = replan(replace(policy, context_tokens=probe_context, allow_disk_offload=True))
        if _fits(offloaded):
            slow = next((w for w in offloaded.warnings if w.startswith("offload:")), "")
            knobs = ["policy.allow_disk_offload=true", f"policy.context_tokens={probe_context}"]
            fixes.append(_fix(f"{' '.join(knobs)} ({_slowdown(slow, offloaded)})", *knobs))
    return fixes


def _kernels_transformers_takes() -> dict:
    """Kernel packages as a machine that follows the MXFP4 fix would have them: triton 3.5, the lowest kernels
    release the installed transformers accepts."""
    return {"triton": "3.5.0", "kernels": stack.minimum_version("kernels") or "0"}
