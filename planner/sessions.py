"""`policy.sessions=auto`: the most concurrent sequences that fit at the planned context, and what binds.

The context is settled first (as for one session: `policy.context_tokens`, or the largest that fits
one sequence when it is auto), so extra sessions never shrink it; then the planner searches the
largest session count whose plan still fits at that context, with continuous batching's own buffers
(serving.footprint_bytes beyond the KV and activation terms) inside the memory left free, bounded by
`policy.max_sessions`, and names what one more session would overflow.

Why a bound: transformers' paged cache is allocated whole when serving starts, one full-context
sequence per slot, so "as many as fit" would reserve all of memory for a small model (gpt2 on a
32 GiB host: 208 sequences, 15 GiB). `policy.max_sessions=auto` is 64 with GPUs (a GPU is a
dedicated serving device, as vLLM assumes, and batched decode stays nearly free up to a few dozen
sequences; vLLM's own cap, max_num_seqs, is 256) and 16 on the CPU (host RAM is shared with
everything else, and CPU decode is compute-bound: issue 13 measured 213 tokens/s at 4 clients,
310 at 8, 365 at 16 against a 402 ceiling; llama.cpp's server and Ollama default to 4 slots).
Whether a layout can use those sessions depends on the engine: vLLM batches pipeline and tensor
parallel plans, shardwise's own runner serves them one request at a time (the plan's `serving`
block says why). So the planner sizes what fits, and `shardwise serve` plans one session for a
layout it serves sequentially (runner.openai.serve_cli.plan_for).
"""

from __future__ import annotations

from dataclasses import replace

from planner.errors import ShardwiseError

MAX_SESSIONS_GPU = 64  # policy.max_sessions=auto with GPUs (see the module docstring)
MAX_SESSIONS_CPU = 16  # policy.max_sessions=auto on the CPU


def parse_sessions(value, check_range: bool = True, key: str = "policy.sessions") -> int | None:
    """A session count as a number, or None for auto; `check_range=False` checks only the type (at compose time)."""
    text = str(getattr(value, "value", value)).strip().lower()
    if text == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        raise ShardwiseError(f"bad value for {key}: {value!r} is not a whole number >= 1 or auto") from None
    if check_range and count < 1:
        raise ShardwiseError(f"{key}={count} must be >= 1 (or auto)")
    return count


def session_bound(policy, on_gpu: bool) -> tuple[int, str]:
    """The most sessions auto may pick, and how to say where that number comes from."""
    if policy.max_sessions is not None:
        return policy.max_sessions, f"policy.max_sessions={policy.max_sessions}"
    if on_gpu:
        return MAX_SESSIONS_GPU, f"policy.max_sessions=auto ({MAX_SESSIONS_GPU} with GPUs)"
    return MAX_SESSIONS_CPU, f"policy.max_sessions=auto ({MAX_SESSIONS_CPU} on the CPU, whose RAM is shared)"


def serving_fits(plan) -> bool:
    """Continuous batching's footprint beyond the plan's KV and activation terms fits in what is left free."""
    serving = plan.serving
    if serving is None or serving.mode != "batched":
        return True
    planned = sum(b.kv_cache + b.activations for b in plan.budget)
    return serving.footprint_bytes - planned <= sum(max(0, b.free_after) for b in plan.budget)


def _with_reason(plan, reason: str):
    decisions = tuple(replace(d, reason=reason) if d.what == "sessions" else d for d in plan.decisions)
    return replace(plan, decisions=decisions)


def plan_auto_sessions(plan_model, spec, hw, policy, **kwargs):
    """The full plan for the most sessions that fit at the context one session gets (`plan_model` plans one)."""
    quiet = {**kwargs, "load_profile": None, "explain": False, "speed": False}  # probes: only whether they fit
    first = plan_model(spec, hw, replace(policy, sessions=1), **quiet)
    if not first.fits:
        return plan_model(spec, hw, replace(policy, sessions=1), **kwargs)  # with its fixes and fallbacks
    context = first.limits.context_tokens
    bound, bound_text = session_bound(policy, bool(hw.devices))

    def attempt(n: int, **options):
        return plan_model(spec, hw, replace(policy, sessions=n, context_tokens=context), **options)

    def fits(n: int) -> bool:
        try:
            found = attempt(n, **quiet)
        except ShardwiseError:
            return False
        return found.fits and serving_fits(found)

    low, high = 1, 2
    while high <= bound and fits(high):
        low, high = high, high * 2
    high = min(high, bound + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    if low >= bound:
        more = "memory allows more" if fits(bound + 1) else "memory allows no more either"
        why = f"bounded by {bound_text}; {more} (policy.max_sessions=N sets the bound)"
    else:
        over = attempt(low + 1, **quiet)
        if over.fits:
            why = f"{low + 1} would overflow the headroom with continuous batching's buffers (batch buffers bind)"
        else:
            where = over.binding.get("device", "?")
            where = where if where in ("cpu", "disk") else f"GPU {where}"
            why = f"{low + 1} would overflow {where} ({over.binding.get('term', 'memory')} binds)"
    final = attempt(low, **kwargs)
    return _with_reason(final, f"policy.sessions=auto: {low} sequence(s) of {context:,} tokens fit; {why}")
