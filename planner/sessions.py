"""`policy.sessions=auto`: the most concurrent sequences that fit at the planned context, and what binds.

The context is settled first (as for one session: `policy.context_tokens`, or the largest that fits
one sequence when it is auto); then the planner searches the largest session count whose plan
still fits at that context, with continuous batching's own buffers (serving.footprint_bytes beyond
the KV and activation terms) inside the memory left free, capped at MAX_AUTO_SESSIONS (vLLM's
default `max_num_seqs`), and names the device and term that one more session would overflow.
"""

from __future__ import annotations

from dataclasses import replace

from planner.errors import ShardwiseError

MAX_AUTO_SESSIONS = 256


def parse_sessions(value, check_range: bool = True) -> int | None:
    """policy.sessions as a count, or None for auto; `check_range=False` checks only the type (at compose time)."""
    text = str(getattr(value, "value", value)).strip().lower()
    if text == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        raise ShardwiseError(f"bad value for policy.sessions: {value!r} is not a whole number >= 1 or auto") from None
    if check_range and count < 1:
        raise ShardwiseError(f"policy.sessions={count} must be >= 1 (or auto)")
    return count


def serving_fits(plan) -> bool:
    """Continuous batching's footprint beyond the plan's KV and activation terms fits in what is left free."""
    serving = plan.serving
    if serving is None or serving.mode != "batched":
        return True
    planned = sum(b.kv_cache + b.activations for b in plan.budget)
    return serving.footprint_bytes - planned <= sum(max(0, b.free_after) for b in plan.budget)


def plan_auto_sessions(plan_model, spec, hw, policy, **kwargs):
    """The full plan for the most sessions that fit at the context one session gets (`plan_model` plans one)."""
    quiet = {**kwargs, "load_profile": None, "explain": False, "speed": False}  # probes: only whether they fit
    first = plan_model(spec, hw, replace(policy, sessions=1), **quiet)
    if not first.fits:
        return plan_model(spec, hw, replace(policy, sessions=1), **kwargs)  # with its fixes and fallbacks
    context = first.limits.context_tokens

    def attempt(n: int, **options):
        return plan_model(spec, hw, replace(policy, sessions=n, context_tokens=context), **options)

    def fits(n: int) -> bool:
        try:
            found = attempt(n, **quiet)
        except ShardwiseError:
            return False
        return found.fits and serving_fits(found)

    low, high = 1, 2
    while high <= MAX_AUTO_SESSIONS and fits(high):
        low, high = high, high * 2
    high = min(high, MAX_AUTO_SESSIONS + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    if low >= MAX_AUTO_SESSIONS:
        why = f"capped at {MAX_AUTO_SESSIONS} (vLLM's default max_num_seqs); memory allows more"
    else:
        over = attempt(low + 1, **quiet)
        if over.fits:
            why = f"{low + 1} would overflow the headroom with continuous batching's buffers (batch buffers bind)"
        else:
            where = over.binding.get("device", "?")
            where = where if where in ("cpu", "disk") else f"GPU {where}"
            why = f"{low + 1} would overflow {where} ({over.binding.get('term', 'memory')} binds)"
    final = attempt(low, **kwargs)
    reason = f"policy.sessions=auto: the most sequences of {context} tokens that fit; {why}"
    decisions = tuple(replace(d, reason=reason) if d.what == "sessions" else d for d in final.decisions)
    return replace(final, decisions=decisions)
