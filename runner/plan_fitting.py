"""The plan a run uses: memory caps from `max_memory`, and the first of a plan's fallbacks that fits.

Shared by the Python API (runner.api), `shardwise chat`, `shardwise serve` and `shardwise launch`:
each walks a plan that does not fit to the first fallback that does, announcing every step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace

from planner.errors import ShardwiseError


def print_notice(line: str) -> None:
    print(f"shardwise: {line}", file=sys.stderr, flush=True)


_UNITS = {
    "tib": 1 << 40,
    "tb": 10**12,
    "gib": 1 << 30,
    "gb": 10**9,
    "mib": 1 << 20,
    "mb": 10**6,
    "kib": 1 << 10,
    "kb": 10**3,
    "b": 1,
}


def parse_max_memory(max_memory: dict | None) -> dict:
    """`{0: "20GiB", "cpu": 30 * 2**30}` -> {"0": bytes, "cpu": bytes} (plan budget keys)."""
    caps = {}
    for device, value in (max_memory or {}).items():
        try:
            if isinstance(value, bool):  # YAML's true is no size
                raise ValueError(value)
            if isinstance(value, (int, float)):
                caps[str(device)] = int(value)  # nan: ValueError, inf: OverflowError
                continue
            text = str(value).strip().lower().replace(" ", "")
            unit = next((u for u in _UNITS if text.endswith(u)), None)
            caps[str(device)] = int(float(text[: -len(unit)] if unit else text) * _UNITS[unit or "b"])
        except (ValueError, OverflowError):
            raise ShardwiseError(
                f"max_memory[{device!r}]={value!r} is not a size: write bytes or e.g. '20GiB'"
            ) from None
    for device, cap in caps.items():
        if cap <= 0:
            raise ShardwiseError(f"max_memory[{device!r}] must be a positive size, got {cap} bytes: write e.g. '20GiB'")
    return caps


def apply_max_memory(plan, caps: dict):
    """The plan marked as not fitting when it plans more than a cap on some device."""
    for budget in plan.budget:
        cap = caps.get(str(budget.device))
        if cap is not None and budget.planned > cap:
            return replace(
                plan,
                fits=False,
                binding={
                    "device": str(budget.device),
                    "term": "max_memory",
                    "needed": budget.planned,
                    "usable": cap,
                    "fixes": [f"raise max_memory[{budget.device!r}] or use a smaller model"],
                },
            )
    return plan


def plan_that_fits(plan, *, notice: Callable[[str], None] = print_notice, plan_fallback=None, caps: dict | None = None):
    """`plan` when it fits, else the first of its fallbacks that does (each step announced)."""
    from runner.engine.recovery import default_plan_fallback

    caps = caps or {}
    plan = apply_max_memory(plan, caps)
    if plan.fits:
        return plan
    binding = plan.binding or {}
    why = f"{plan.model.name} does not fit ({binding.get('device', '?')}: {binding.get('term', 'memory')})"
    for entry in plan.fallbacks:
        if entry.get("fits") is False:
            continue
        candidate = apply_max_memory((plan_fallback or (lambda e: default_plan_fallback(e, plan)))(entry), caps)
        if candidate.fits:
            notice(
                f"{why}: using {candidate.model.name} on {candidate.hardware.get('source')} ({entry.get('reason', '')})"
            )
            return candidate
    fixes = "; ".join(fix_texts(binding)) or "use a smaller model or more GPUs"
    raise ShardwiseError(f"{why} and no fallback fits either: {fixes}")


def fix_texts(binding: dict | None) -> list[str]:
    """The plan's "what would make it fit" lines; a fix is a {"text", "overrides"} dict or a plain string."""
    return [str(f.get("text", f)) if isinstance(f, dict) else str(f) for f in (binding or {}).get("fixes", [])]
