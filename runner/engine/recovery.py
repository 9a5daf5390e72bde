"""The out-of-memory ladder: free and retry, halve max_tokens, then the plan's fallback chain.

Every step is announced in one line and the conversation is kept (it lives in the session,
and each retry renders it again). Tokens that already reached a stream reader are never
silently regenerated: that case raises MemoryExhaustedError instead. When no fallback loads, the
model the ladder released is loaded again, so the next turn still works. A model that fails to
load walks the same fallback chain (`load_with_fallbacks`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from planner.errors import ShardwiseError
from runner.engine.memory import clear_memory, is_out_of_memory


class MemoryExhaustedError(ShardwiseError):
    """Out of memory after every step of the ladder (the server answers 503)."""

    exit_code = 3


@dataclass
class RecoveryPolicy:
    retries_after_free: int = 1  # retries with the same settings after gc + empty_cache
    halvings: int = 2  # then retries with max_tokens halved each time
    min_max_tokens: int = 16  # never halve below this many tokens
    use_fallbacks: bool = True  # then walk the plan's fallback chain (smaller model, then CPU)
    plan_fallback: Callable | None = None  # fallback dict -> Plan; default planner.config.compose.make_plan
    load: Callable | None = None  # Plan -> LoadedModel; default runner.engine.loader.load
    remote_code_consent: bool = (
        False  # the run's consent (trust_remote_code=true): else a fallback asking for it is skipped
    )

    def loader(self) -> Callable:
        """`load`, else runner.engine.loader.load (imported only now: it brings torch and transformers)."""
        if self.load is not None:
            return self.load
        from runner.engine.loader import load

        return load


def _load_failure(exc: BaseException) -> bool:
    """Failures a smaller model or the CPU may avoid; user errors (ShardwiseError) are not among them."""
    if isinstance(exc, ShardwiseError):
        return False
    return is_out_of_memory(exc) or isinstance(exc, (OSError, RuntimeError, ValueError, ImportError))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def hardware_choice(entry: dict, base_plan) -> tuple[str, list[str]]:
    """The `hardware=` choice (and overrides) for a fallback entry; "same" means the base plan's hardware."""
    wanted = str(entry.get("hardware") or "same")
    if wanted != "same":
        return wanted, []
    source = str(base_plan.hardware.get("source", "probe")) if base_plan is not None else "probe"
    if source == "probe":
        return "auto", []
    if source.endswith(".json") or os.path.sep in source:
        return "snapshot", [f"hardware.path={source}"]
    return source, []


def default_plan_fallback(entry: dict, base_plan=None):
    from planner.config.compose import make_plan

    model = str(entry["model"])
    hardware, overrides = hardware_choice(entry, base_plan)
    if os.path.exists(model):
        return make_plan(model_path=model, hardware=hardware, overrides=overrides)
    return make_plan(model=model, hardware=hardware, overrides=overrides)


def next_fallback(chain: list[dict], policy: RecoveryPolicy, notice: Callable[[str], None], why: str, base_plan=None):
    """Pop fallbacks until one plans, fits and loads; returns (plan, loaded) or None."""
    plan_fallback = policy.plan_fallback or (lambda entry: default_plan_fallback(entry, base_plan))
    load = policy.loader()
    while chain:
        entry = chain.pop(0)
        target = f"{entry['model']} on {entry.get('hardware') or 'same'} hardware"
        if entry.get("fits") is False:
            notice(f"{why}: skipping {target}, the planner says it does not fit ({entry.get('reason', '')})")
            continue
        notice(f"{why}: falling back to {target} ({entry.get('reason', 'next in the plan chain')})")
        try:
            plan = plan_fallback(entry)
        except ShardwiseError as exc:
            notice(f"cannot plan {target}: {exc}")
            continue
        if not plan.fits:
            notice(f"{target} does not fit either: skipping it")
            continue
        if plan.model.trust_remote_code and not policy.remote_code_consent:
            # a fallback picked while running never runs the model directory's Python unless the run consented
            notice(
                f"{target} asks to run code shipped with the model (trust_remote_code) "
                "without this run's consent: skipping it"
            )
            continue
        try:
            return plan, load(plan)
        except BaseException as exc:
            if not _load_failure(exc):
                raise
            clear_memory()
            why = f"loading {target} failed ({_one_line(exc)})"
    return None


_MISSING_WEIGHTS = (
    "couldn't connect",
    "could not connect",
    "not a valid model identifier",
    "does not appear to have",
    "no such file",
    "couldn't find",
    "not found",
    "offline",
)


def _weights_missing(error: str) -> bool:
    return isinstance(error, str) and any(text in error.lower() for text in _MISSING_WEIGHTS)


def _load_fix(error: str, plan, memory: bool = True) -> str:
    """What to do about a failed load: fetch the weights when they were missing, make room when memory ran out,
    else look at what the loader refused."""
    if _weights_missing(error):
        return (
            f"the weights are not here: download them first (hf download {plan.model.source}) or point "
            f"model.path=DIR at a local copy; HF_HUB_OFFLINE=1 skips the network retries"
        )
    if memory:
        return "use a smaller model, hardware=cpu, or allow offload (policy.allow_cpu_offload=true)"
    return "check the model's files and the plan (re-create it with `shardwise plan`)"


def load_with_fallbacks(plan, *, policy: RecoveryPolicy | None = None, notice: Callable[[str], None] = print):
    """Load `plan`; when that fails for lack of memory (or weights/kernels), walk its fallback chain."""
    policy = policy or RecoveryPolicy()
    load = policy.loader()
    if policy.load is None:
        from runner.engine.preflight import check_runnable

        check_runnable(plan)  # a GPU this machine lacks, a missing directory, int64: bad input, not memory
    try:
        return load(plan)
    except BaseException as exc:
        if not _load_failure(exc) or not policy.use_fallbacks:
            raise
        clear_memory()
        first_error, memory = _one_line(exc), is_out_of_memory(exc)
    found = next_fallback(
        list(plan.fallbacks), policy, notice, f"loading {plan.model.name} failed ({first_error})", plan
    )
    if found is None:
        message = (
            f"could not load {plan.model.name} ({first_error}) nor any of its {len(plan.fallbacks)} fallback(s): "
            + _load_fix(first_error, plan, memory)
        )
        if not memory:  # missing weights, a file or kernel the loader refused: exit 2, not the out-of-memory status
            raise ShardwiseError(message)
        raise MemoryExhaustedError(message)
    return found[1]


def _reload(loaded, policy: RecoveryPolicy, notice: Callable[[str], None]) -> None:
    """Put back the weights the ladder released when no fallback could take their place."""
    load = policy.loader()
    notice(f"no fallback could be loaded: reloading {loaded.name} so the conversation can go on")
    try:
        loaded.model = load(loaded.plan).model
    except BaseException as exc:
        if not _load_failure(exc):
            raise
        clear_memory()
        notice(f"reloading {loaded.name} failed ({_one_line(exc)}): it stays unloaded")


def generate_with_recovery(session, attempt: Callable, params, *, emitted: Callable[[], int]):
    """Run `attempt(params)`, climbing the ladder on out-of-memory; the session may switch models."""
    policy = session.recovery
    notice = session.on_notice
    retries, halvings = policy.retries_after_free, policy.halvings
    chain = list(session.plan.fallbacks) if (policy.use_fallbacks and session.plan is not None) else []
    current = params
    steps: list[str] = []
    while True:
        try:
            completion = attempt(current)
            completion.notices[:0] = steps
            return completion
        except BaseException as exc:
            if not is_out_of_memory(exc):
                raise
            if emitted():
                clear_memory()
                raise MemoryExhaustedError(
                    f"out of memory after {emitted()} streamed chunk(s) of the reply on {session.loaded.name}: "
                    "the reply is incomplete and was not retried; memory was freed, ask again with a smaller max_tokens"
                ) from exc
            error = _one_line(exc)
        # Outside the except block: the exception's traceback no longer pins the failed attempt's
        # tensors (prompt ids, KV cache), so freeing memory really frees them.
        clear_memory()
        if retries > 0:
            retries -= 1
            steps.append(f"out of memory on {session.loaded.name}: freed cached memory and retrying")
        elif halvings > 0 and current.max_tokens // 2 >= policy.min_max_tokens:
            halvings -= 1
            current = replace(current, max_tokens=current.max_tokens // 2)
            steps.append(f"out of memory on {session.loaded.name} again: retrying with max_tokens={current.max_tokens}")
        elif chain:
            old = session.loaded
            why = f"out of memory on {old.name} with max_tokens={current.max_tokens}"
            old.model = None  # release the weights before a fallback takes their place
            clear_memory()
            found = next_fallback(chain, policy, notice, why, session.plan)
            if found is None:
                _reload(old, policy, notice)
                break
            session.swap_model(found[1], found[0])
            steps.append(f"{why}: continued on {session.loaded.name}")
            current, retries, halvings = params, policy.retries_after_free, policy.halvings
            continue
        else:
            break
        notice(steps[-1])
    raise MemoryExhaustedError(
        f"out of memory on {session.loaded.name} ({error}) after freeing memory, max_tokens={current.max_tokens} and "
        f"every fallback: use a smaller model, hardware=cpu, or a shorter conversation (/clear)"
    )
