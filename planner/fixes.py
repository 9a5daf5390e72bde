"""What would make a does-not-fit plan fit: each suggestion is re-planned before it is offered.

A suggestion is a change a user can make (a policy knob, more GPUs, a package install); it is
shown only when the plan with that change applied fits, with what it would give.
"""

from __future__ import annotations

from dataclasses import replace

from planner.hardware.devices import Hardware


class PolicyOverride:
    """A policy with some fields replaced; everything else is read from the base policy."""

    def __init__(self, base, **changes):
        self._base, self._changes = base, changes

    def __getattr__(self, name):
        if name in self._changes:
            return self._changes[name]
        return getattr(self._base, name)


def _value(setting) -> str:
    return str(getattr(setting, "value", setting))


def _replan(planner, policy=None, hardware: Hardware | None = None):
    from planner.planning import Planner

    sub = Planner(
        planner.spec,
        hardware or planner.hw,
        policy or planner.policy,
        planner.generation,
        with_fallbacks=False,
        explain=False,
    )
    try:
        return sub.plan()
    except Exception as exc:  # a change that makes the config invalid is no fix
        from planner.errors import ShardwiseError

        if isinstance(exc, ShardwiseError):
            return None
        raise


def _fits(plan) -> bool:
    return plan is not None and plan.fits


def _more_gpus(planner, quick_policy, limit: int = 64):
    """The fewest GPUs like this machine's roomiest one that fit, as (count, plan, that GPU).

    The search checks fits at one context (quick_policy); the count found is then planned in full.
    """
    hw = planner.hw
    if not hw.devices or hw.nodes > 1:
        return None
    best = max(hw.devices, key=lambda d: (d.free_bytes, -d.id))

    def on(count: int, policy=quick_policy):
        devices = tuple(replace(best, id=i, uuid="", pci_bus_id="", processes=()) for i in range(count))
        pairs = tuple((i, j) for i in range(count) for j in range(i + 1, count)) if hw.interconnect == "nvlink" else ()
        return _replan(planner, policy, hardware=replace(hw, devices=devices, nvlink_pairs=pairs))

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
    return high, on(high, planner.policy), best


def _most_sessions_that_fit(planner, most: int):
    """(the largest session count <= most that fits, its plan), by bisection: fitting only gets harder with more."""
    policy = planner.policy

    def plan_for(n: int):
        return _replan(planner, PolicyOverride(policy, sessions=n))

    best = plan_for(1)
    if not _fits(best):
        return None
    low, high = 1, most + 1  # low fits, high is the first count not known to fit
    while high - low > 1:
        mid = (low + high) // 2
        attempt = plan_for(mid)
        if _fits(attempt):
            low, best = mid, attempt
        else:
            high = mid
    return low, best


def _fix(text: str, *overrides: str) -> dict:
    """A suggestion: what to tell the user, and the CLI overrides that apply it (empty when it is not a knob)."""
    return {"text": text, "overrides": list(overrides)}


def what_would_fit(planner) -> list[dict]:
    policy, hw = planner.policy, planner.hw
    fixes = []
    context_setting = _value(policy.context_tokens)
    # fit checks at one context are much cheaper than finding the largest one
    probe_context = (
        context_setting
        if context_setting != "auto"
        else str(min(int(policy.min_context_tokens), planner.inv.max_context_tokens))
    )
    quick = PolicyOverride(policy, context_tokens=probe_context)
    if context_setting != "auto":
        shorter = _replan(planner, PolicyOverride(policy, context_tokens="auto"))
        if _fits(shorter):
            n = shorter.limits.context_tokens
            fixes.append(
                _fix(
                    f"a shorter context: policy.context_tokens={n} (the most that fits here)",
                    f"policy.context_tokens={n}",
                )
            )
    sessions = int(policy.sessions)
    fewer = _most_sessions_that_fit(planner, sessions - 1) if sessions > 1 else None
    if fewer:
        n, plan = fewer
        fixes.append(
            _fix(
                f"fewer concurrent sessions: policy.sessions={n} "
                f"({plan.limits.context_tokens:,} tokens of context each)",
                f"policy.sessions={n}",
            )
        )
    if planner.dtype == "float32":
        lower = "bfloat16" if (not hw.devices or all(d.supports_bf16 for d in hw.devices)) else "float16"
        halved = _replan(planner, PolicyOverride(policy, dtype=lower))
        if _fits(halved):
            fixes.append(
                _fix(
                    f"policy.dtype={lower}: half the weight memory ({halved.limits.context_tokens:,} tokens of context)",
                    f"policy.dtype={lower}",
                )
            )
    if planner.spec.quantization and not planner.quant_kept:
        from planner.decisions import mxfp4_blocked_by_hardware

        if not mxfp4_blocked_by_hardware(hw):
            ready = replace(hw, installed={**hw.installed, "triton": "3.5.0", "kernels": "0.18.2"})
            kept = _replan(planner, PolicyOverride(policy, quantization="auto"), hardware=ready)
            if _fits(kept):
                again = ["policy.quantization=auto"] if _value(policy.quantization) == "none" else []
                fixes.append(
                    _fix(
                        f"keep {planner.spec.quantization} ({kept.model.weight_bytes / (1 << 30):.1f} GiB of weights instead of "
                        f"{planner.inv.weight_bytes / (1 << 30):.1f}): pip install 'triton>=3.4' 'kernels>=0.18.2,<0.19'"
                        + (" and policy.quantization=auto" if again else ""),
                        *again,
                    )
                )
    more = _more_gpus(planner, quick)
    if more:
        count, plan, like = more
        how = (
            f"hardware.count={count}"
            if not hw.probed
            else f"{count} GPUs like {like.name} (this machine has {len(hw.devices)})"
        )
        fixes.append(
            _fix(
                f"more GPUs: {how}, {plan.strategy} with {plan.limits.context_tokens:,} tokens of context",
                *([] if hw.probed else [f"hardware.count={count}"]),
            )
        )
    if hw.devices and not (policy.allow_cpu_offload and policy.allow_disk_offload):
        for changes in ({"allow_cpu_offload": True}, {"allow_cpu_offload": True, "allow_disk_offload": True}):
            offloaded = _replan(planner, PolicyOverride(policy, context_tokens=probe_context, **changes))
            if _fits(offloaded):
                slow = next((w for w in offloaded.warnings if w.startswith("offload:")), "")
                # the speed holds at the context it was planned for: the fix names that context and sets it
                knobs = [f"policy.{k}=true" for k in changes] + [f"policy.context_tokens={probe_context}"]
                fixes.append(_fix(f"{' '.join(knobs)} ({slow.removeprefix('offload: ') or 'slow'})", *knobs))
                break
    elif not hw.devices and not policy.allow_disk_offload:
        offloaded = _replan(planner, PolicyOverride(policy, context_tokens=probe_context, allow_disk_offload=True))
        if _fits(offloaded):
            slow = next((w for w in offloaded.warnings if w.startswith("offload:")), "")
            knobs = ["policy.allow_disk_offload=true", f"policy.context_tokens={probe_context}"]
            fixes.append(_fix(f"{' '.join(knobs)} ({slow.removeprefix('offload: ') or 'slow'})", *knobs))
    return fixes
