"""Which of the layouts that fit at the planned context a plan takes, by predicted speed (policy.objective).

The search (planner.place.search.first_fit) finds the fewest GPUs that reach the context; the layouts that
also fit at that context are then weighed by the speed model (planner.speed.block), once each, never per
context probe:

- latency: the fastest one-sequence decode (ties: fewer GPUs);
- throughput: the most tokens/s over policy.sessions (ties: fewer GPUs);
- auto: the fewest GPUs whose one-sequence decode is within 10% of the fastest among the layouts the
  search itself spreads over (one GPU, pipelines, across nodes). A model that fits on one GPU stays
  there, and more GPUs in tensor parallel inside a node (a torchrun launch) are taken only for
  latency or throughput; when they would be faster the decision says so.

Pure: the caller hands in how to fit a layout at the context and how to price it (planner.driver.planning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from planner.decide.policy import Policy
from planner.place.search import Attempt, Found

AUTO_MARGIN = 0.10  # auto: fewer GPUs are worth up to this fraction of the fastest decode
# Layouts weighed per family (planner.place.objective.family), fewest GPUs first: a larger pipeline of the
# same GPUs splits the same layers into more stages that run one after another, reading the same bytes
# per token plus one hand-off more per stage, so it is never faster than a smaller one that fits.
# The first few that fit hold the fastest (one would do; the rest is margin for rounding in the
# split); without the bound a 256-node machine would weigh thousands of pipelines.
PER_FAMILY = 4


@dataclass(frozen=True)
class Option:
    """A layout that fits at the planned context, with its predicted speed."""

    label: str
    gpus: int
    decode: float  # tokens/s of one sequence
    aggregate: float  # tokens/s over the planned sessions
    searched: bool = True  # among the layouts objective=auto may take


def label(attempt) -> str:
    """A layout's name in decisions: "pipeline over 2 GPUs", "tensor_parallel tp=4"."""
    if attempt.strategy == "single_gpu":
        return "one GPU"
    if attempt.strategy == "pipeline":
        return f"pipeline over {attempt.gpus} GPUs" + (f" on {attempt.nodes} nodes" if attempt.nodes > 1 else "")
    if attempt.strategy == "tensor_parallel":
        across = f" pp={attempt.pp_size} over {attempt.nodes} nodes" if attempt.nodes > 1 else ""
        return f"tensor_parallel tp={attempt.tp_size}{across}"
    return attempt.strategy


def family(attempt) -> tuple:
    """Layouts whose speed falls with their size: the same strategy and tensor-parallel degree, in one node or across.

    Tensor parallel inside a node is a family per degree: more GPUs there split every layer, which
    is faster, so each degree is weighed.
    """
    across = attempt.nodes > 1
    if attempt.strategy == "tensor_parallel" and not across:
        return (attempt.strategy, attempt.tp_size, across, attempt.gpus)
    return (attempt.strategy, attempt.tp_size, across)


def choose(
    options: list[Option], objective: str, sessions: int, context: int, skipped: bool = False
) -> tuple[int, str]:
    """(index of the option to take, the reason in words); options[0] is the fewest-GPUs layout.

    skipped: larger pipelines also fit but were not weighed (PER_FAMILY); the reason says so.
    """
    fewest = options[0]
    at = f"at {context:,} tokens" + ("; larger layouts of the same kind, never faster, not weighed" if skipped else "")
    if objective in ("latency", "throughput"):
        speed = (lambda o: o.decode) if objective == "latency" else (lambda o: o.aggregate)
        what = "per sequence" if objective == "latency" else f"over {sessions} session(s)"
        index = max(range(len(options)), key=lambda i: (speed(options[i]), -options[i].gpus, -i))
        best = options[index]
        reason = f"{best.label}: {speed(best):.1f} tok/s {what}, the fastest of {len(options)} layouts that fit {at}"
        if index != 0:
            reason += f" (the fewest GPUs, {fewest.label}: {speed(fewest):.1f} tok/s)"
        return index, reason
    pool = [i for i, o in enumerate(options) if o.searched]
    best = max(pool, key=lambda i: (options[i].decode, -options[i].gpus, -i))
    close = [i for i in pool if options[i].decode >= (1 - AUTO_MARGIN) * options[best].decode]
    index = min(close, key=lambda i: (options[i].gpus, -options[i].decode, i))
    chosen = options[index]
    if index == best:
        reason = f"{chosen.label}: {chosen.decode:.1f} tok/s, the fastest of {len(pool)} layouts that fit {at}"
    else:
        reason = (
            f"{chosen.label}: {chosen.decode:.1f} tok/s, within {AUTO_MARGIN:.0%} of the best "
            f"({options[best].label}: {options[best].decode:.1f} tok/s); fewer GPUs"
        )
    faster = max(range(len(options)), key=lambda i: (options[i].decode, -options[i].gpus))
    if options[faster].decode > chosen.decode and not options[faster].searched:
        reason += (
            f"; {options[faster].label} would decode {options[faster].decode:.1f} tok/s "
            "(more GPUs in tensor parallel inside a node: policy.objective=latency takes it)"
        )
    return index, reason


def take(
    found: Found,
    tried: list[Attempt],
    extra: list[Attempt],
    policy: Policy,
    *,
    chunk_at: Callable[[Attempt], int | None],
    price: Callable[[Attempt, int], dict],
) -> tuple[Found, str]:
    """The layout to plan, and why ("": no choice was made, the search's stands unsaid).

    `found` is the search's fewest-GPUs layout, `tried` every layout it searched, `extra` those only
    a speed objective may take; chunk_at(attempt) is the prefill chunk at which it fits at found's
    context (None: it does not), price(attempt, chunk) its performance block there.
    """
    fewest, context = found.attempt, found.context
    if fewest.strategy == "offload" and policy.objective != "auto":
        return found, f"offload is the only layout that fits at {context:,} tokens"
    if fewest.strategy in ("cpu", "offload") or (policy.objective == "auto" and fewest.gpus <= 1):
        return found, ""  # offload only when nothing else fits; one GPU is never spread by default
    layouts, options, unknown = [], [], ""
    weighed: dict[tuple, int] = {}  # family -> layouts of it that fit, so far
    skipped = False
    # the search went through `tried` in order and took the first layout that reaches `context`: those
    # before it cannot fit there, so they are not laid out again
    after = next((i + 1 for i, a in enumerate(tried) if a is fewest), 0)
    for attempt in [fewest, *(a for a in tried[after:] if a.strategy != "offload"), *extra]:
        kind = family(attempt)
        if weighed.get(kind, 0) >= PER_FAMILY:
            skipped = True
            continue
        chunk = found.chunk if attempt is fewest else chunk_at(attempt)
        if chunk is None:
            continue
        weighed[kind] = weighed.get(kind, 0) + 1
        speed = price(attempt, chunk)
        name = label(attempt)
        if not speed.get("available"):
            unknown = unknown or f"no predicted speed for {name} ({speed.get('reason', 'unavailable')})"
            speed = {"decode_tokens_per_s": 0.0, "aggregate_tokens_per_s": 0.0}
        layouts.append((attempt, chunk))
        # auto never adds GPUs to tensor parallel inside a node (a torchrun launch): only latency/throughput do
        searched = attempt is fewest or not (attempt.strategy == "tensor_parallel" and attempt.nodes == 1)
        options.append(
            Option(name, attempt.gpus, speed["decode_tokens_per_s"], speed["aggregate_tokens_per_s"], searched)
        )
    if len(options) > 1 and unknown:
        return found, f"{unknown}: kept the fewest GPUs that fit, {options[0].label}"
    if len(options) == 1:
        return (
            found,
            ""
            if policy.objective == "auto"
            else f"{options[0].label} is the only layout that fits at {context:,} tokens",
        )
    index, why = choose(options, policy.objective, policy.sessions, context, skipped)
    if index == 0:
        return found, why
    attempt, chunk = layouts[index]
    return Found(attempt, context, chunk, why=f"policy.objective={policy.objective}: {why}"), why
