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
everything else, and CPU decode is compute-bound, so each added sequence adds less: see
benchmarks/results/serve_compare_cpu.txt for batched tokens/s against transformers' generate_batch
at 1 and 4 clients; llama.cpp's server and Ollama default to 4 slots).
Whether a layout can use those sessions depends on the engine, which the policy names
(`Policy.batching`): vLLM batches pipeline and tensor parallel plans, so for it the planner sizes
what fits; shardwise's own runner serves them one request at a time (the plan's `serving` block
says why), so for it (`shardwise serve`) the driver, planner.driver.planning, plans one session on such a
layout, or the most sessions one GPU holds when the model fits on one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.errors import ShardwiseError
from planner.limits import MAX_SESSIONS
from planner.place.sizing import size_and_place

MAX_SESSIONS_GPU = 64  # policy.max_sessions=auto with GPUs (see the module docstring)
MAX_SESSIONS_CPU = 16  # policy.max_sessions=auto on the CPU


def parse_sessions(value, check_range: bool = True, key: str = "policy.sessions") -> int | None:
    """A session count as a number, or None for auto: the one parser of policy.sessions and max_sessions.

    Called when the config is validated (schema.validate, every verb) and when the typed Policy is built
    (planner.config.request); `check_range=False` leaves the lower bound to the Policy's own check.
    """
    text = str(getattr(value, "value", value)).strip().lower()
    if text == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        raise ShardwiseError(f"bad value for {key}: {value!r} is not a whole number >= 1 or auto") from None
    if check_range and count < 1:
        raise ShardwiseError(f"{key}={count} must be >= 1 (or auto)")
    if count > MAX_SESSIONS:
        raise ShardwiseError(
            f"{key}={count} is more than shardwise plans for ({MAX_SESSIONS:,}): plan fewer concurrent sessions"
        )
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


@dataclass(frozen=True)
class SessionsFound:
    """What policy.sessions=auto settles: the count, the context each session gets, and why no more."""

    sessions: int
    context_tokens: int
    reason: str


def most_sessions(spec, hw, policy, cap_context: bool = False) -> SessionsFound | None:
    """The most sessions that fit at the context one session gets; None when not even one fits.

    Each probe is one call of the single planning step (planner.place.sizing), asked only whether it fits.
    """

    def probe(n: int, context: int | None):
        changed = replace(policy, sessions=n, context_tokens=context)
        return size_and_place(spec, hw, changed, cap_context=cap_context, speed=False).plan

    first = probe(1, policy.context_tokens)
    if not first.fits:
        return None
    context = first.limits.context_tokens
    bound, bound_text = session_bound(policy, bool(hw.devices))

    def fits(n: int) -> bool:
        try:
            found = probe(n, context)
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
        over = probe(low + 1, context)
        if over.fits:
            why = f"{low + 1} would overflow the headroom with continuous batching's buffers (batch buffers bind)"
        else:
            where = over.binding.get("device", "?")
            where = where if where in ("cpu", "disk") else f"GPU {where}"
            why = f"{low + 1} would overflow {where} ({over.binding.get('term', 'memory')} binds)"
    return SessionsFound(low, context, f"{auto_label(policy)}: {low} sequence(s) of {context:,} tokens fit; {why}")


def auto_label(policy) -> str:
    """policy.sessions=auto as a reason names it, with who chose it when the user did not."""
    if not policy.sessions_origin:
        return "policy.sessions=auto"
    return f"policy.sessions=auto ({policy.sessions_origin}; plan and chat size for 1)"


def one_session_reason(policy, why: str) -> str:
    """The reason for one session where auto was asked for (or defaulted to): `why`, and how to ask for more."""
    instead = f"{policy.sessions_origin} auto" if policy.sessions_origin else "auto"
    return f"policy.sessions=1, not {instead}: {why} (policy.sessions=N sets it)"
