"""Build a plan's charts from its composed config: the memory chart, and the context curve by re-planning."""

from __future__ import annotations


def plan_charts(cfg, hardware, plan) -> dict[str, tuple[str, str]]:
    """{kind: (caption, svg)} for a plan made from `cfg` on `hardware`."""
    from planner.charts.context import context_chart
    from planner.charts.memory import memory_chart

    charts = {"memory": ("Memory per device", memory_chart(plan.to_dict()))}
    curve = _curve(cfg, hardware, plan)
    if curve is not None:
        title = f"{plan.model.name}: memory against context"
        charts["context"] = ("Memory against context", context_chart(curve, title))
    return charts


def _curve(cfg, hardware, plan) -> dict | None:
    from planner.charts.context import context_curve
    from planner.config.gpu_speeds import with_published_speeds
    from planner.config.reader import profile_spec
    from planner.config.request import request_from_config
    from planner.driver.planning import plan_model
    from planner.model.inventory import build_inventory

    request = request_from_config(cfg)
    spec = request.model or profile_spec(plan.model.name)  # model=auto: the candidate it chose
    max_context = plan.model.max_context_tokens or plan.limits.context_tokens
    if not max_context:
        return None
    inv = build_inventory(spec.architecture, dtype=plan.model.dtype, checkpoint_dtype=spec.shipped_dtype)
    windows = tuple(sorted({layer.window for layer in inv.layers if layer.window}))
    return context_curve(
        spec,
        with_published_speeds(hardware),
        request.policy,
        plan_model,
        max_context=max_context,
        planned=plan.limits.context_tokens if plan.fits else 0,
        windows=windows,
    )
