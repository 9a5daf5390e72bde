"""Memory against context: the planner's own answer, re-planned at each context, drawn as one chart.

`context_curve` re-plans the model on the same hardware and policy at a grid of contexts from the
smallest the policy allows to the model's maximum (plus the planned context and each sliding /
chunked window): once for one session (memory on the tightest device, and whether it fits) and
once with policy.sessions=auto (how many sessions fit there; bounded by policy.max_sessions).
`context_chart` draws those points; nothing on it is interpolated beyond straight lines between
re-planned points, and every point carries its numbers as `data-*` attributes.
"""

from __future__ import annotations

from dataclasses import replace

from planner.charts.svg import GRID, TERM_COLOURS, TEXT, USABLE, Svg, nice_step, num
from planner.units import GIB

POINTS = 12  # contexts on the grid (the planned context and each window are added)
WIDTH, HEIGHT, LEFT, RIGHT, TOP = 820, 500, 80, 40, 60
MEM_H, SES_TOP, SES_H = 230, 350, 70


def grid(low: int, high: int, extra: tuple[int, ...] = ()) -> list[int]:
    """POINTS contexts evenly from `low` to `high`, with the extra ones up to `high` (a window may sit below
    `low`: where the sliding layers stop growing is worth a point), sorted, unique."""
    low, high = max(1, low), max(1, high)
    even = [high] if high <= low else [low + round((high - low) * i / (POINTS - 1)) for i in range(POINTS)]
    return sorted({c for c in (*even, *extra) if 1 <= c <= high})


def tightest(budget) -> dict:
    """The budget row with the least room left relative to what it can hold (a CPU/disk row only if alone)."""
    rows = [r for r in budget if str(r.device) not in ("cpu", "disk")] or list(budget)
    return min(rows, key=lambda r: (r.usable - r.planned) / max(r.usable, 1))


def context_curve(spec, hw, policy, plan_model, *, max_context: int, planned: int, windows: tuple[int, ...]) -> dict:
    """Re-planned points {context, planned_bytes, usable_bytes, kv_bytes, fits, sessions_fit, kv_tokens, ...}.

    `plan_model(spec, hw, policy, explain=False, speed=False)` is the planner's single-model entry:
    each point is a real plan at that context.
    """
    low = min(policy.min_context_tokens, max_context)
    points = []
    for context in grid(low, max_context, (planned, *windows)):
        one = plan_model(spec, hw, replace(policy, context_tokens=context, sessions=1), explain=False, speed=False)
        row = tightest(one.budget) if one.budget else None
        many = plan_model(spec, hw, replace(policy, context_tokens=context, sessions=None), explain=False, speed=False)
        sessions = many.limits.sessions if many.fits else 0
        points.append(
            {
                "context": context,
                "fits": bool(one.fits),
                "device": str(row.device) if row else "",
                "planned_bytes": int(row.planned) if row else 0,
                "usable_bytes": int(row.usable) if row else 0,
                "kv_bytes": int(row.kv_cache + row.state) if row else 0,
                "strategy": one.strategy,
                "sessions_fit": int(sessions),
                "kv_tokens": int(sessions) * context,
            }
        )
    return {"points": points, "planned_context": planned, "windows": sorted(set(windows)), "max_context": max_context}


def context_chart(curve: dict, title: str) -> str:
    points = curve["points"]
    svg = Svg(WIDTH, HEIGHT, title, "context")
    svg.label(16, 24, title, size=15, weight="bold")
    svg.label(
        16, 44, "re-planned at each point: memory on the tightest device (1 session), and sessions that fit", size=12
    )
    if not points:
        svg.label(LEFT, TOP + 40, "no context could be planned", size=13)
        return svg.text()
    plot_w = WIDTH - LEFT - RIGHT
    x_max = max(p["context"] for p in points)
    y_max = max(max(p["planned_bytes"], p["usable_bytes"]) for p in points) * 1.08 or 1
    s_max = max(max(p["sessions_fit"] for p in points), 1)

    def x_of(context: float) -> float:
        return LEFT + plot_w * context / x_max

    def y_of(n_bytes: float) -> float:
        return TOP + MEM_H - MEM_H * n_bytes / y_max

    def ys_of(sessions: float) -> float:
        return SES_TOP + SES_H - SES_H * sessions / s_max

    # axes and grid
    step = nice_step(y_max / GIB)
    tick = 0.0
    while tick * GIB <= y_max:
        y = y_of(tick * GIB)
        svg.line(LEFT, y, WIDTH - RIGHT, y, GRID)
        svg.label(LEFT - 6, y + 4, num(tick), size=11, anchor="end")
        tick += step
    svg.label(20, TOP + MEM_H / 2, "GiB", size=12, anchor="middle", rotate=-90)
    xstep = nice_step(x_max)
    tick = 0.0
    while tick <= x_max:
        x = x_of(tick)
        svg.line(x, TOP, x, SES_TOP + SES_H, GRID)
        svg.label(x, SES_TOP + SES_H + 16, f"{int(tick):,}", size=11, anchor="middle")
        tick += xstep
    svg.label(LEFT + plot_w / 2, SES_TOP + SES_H + 34, "context (tokens per session)", size=12, anchor="middle")

    # usable line (per point: the tightest device may change with the layout), planned memory, KV
    svg.polyline(
        [(x_of(p["context"]), y_of(p["usable_bytes"])) for p in points], USABLE, width=2, stroke_dasharray="6 3"
    )
    svg.polyline([(x_of(p["context"]), y_of(p["planned_bytes"])) for p in points], TERM_COLOURS["weights"], width=2.5)
    svg.polyline([(x_of(p["context"]), y_of(p["kv_bytes"])) for p in points], TERM_COLOURS["kv_cache"], width=2)
    for p in points:
        svg.circle(
            x_of(p["context"]),
            y_of(p["planned_bytes"]),
            3.5,
            TERM_COLOURS["weights"] if p["fits"] else USABLE,
            data_context=p["context"],
            data_planned_bytes=p["planned_bytes"],
            data_usable_bytes=p["usable_bytes"],
            data_kv_bytes=p["kv_bytes"],
            data_fits=str(p["fits"]).lower(),
            data_device=p["device"],
            data_sessions_fit=p["sessions_fit"],
            data_kv_tokens=p["kv_tokens"],
        )
    misfit = next((p for p in points if not p["fits"]), None)
    if misfit is not None:
        x = x_of(misfit["context"])
        near_right = x > WIDTH - RIGHT - 200
        svg.label(
            x - 6 if near_right else x + 6,
            y_of(misfit["planned_bytes"]) - 10,
            f"does not fit from {misfit['context']:,} tokens",
            size=11,
            fill=USABLE,
            anchor="end" if near_right else "start",
        )
    planned = curve.get("planned_context")
    if planned:
        x = x_of(planned)
        svg.line(x, TOP - 4, x, SES_TOP + SES_H, TEXT, width=1.5, dash="2 2", data_planned_context=planned)
        near_right = x > WIDTH - RIGHT - 120
        svg.label(
            x - 4 if near_right else x + 4,
            TOP + 10,
            f"planned {planned:,}",
            size=11,
            anchor="end" if near_right else "start",
        )
    for window in curve.get("windows", []):
        if window <= x_max:
            x = x_of(window)
            svg.line(x, TOP, x, TOP + MEM_H, TERM_COLOURS["state"], width=1.5, dash="3 3", data_window=window)
            svg.label(
                x + 4,
                TOP + MEM_H - 6,
                f"window {window:,}: sliding layers stop growing",
                size=10,
                fill=TERM_COLOURS["state"],
            )

    # sessions panel
    svg.line(LEFT, SES_TOP + SES_H, WIDTH - RIGHT, SES_TOP + SES_H, TEXT)
    svg.label(LEFT - 6, SES_TOP + 4, str(s_max), size=11, anchor="end")
    svg.label(LEFT - 6, SES_TOP + SES_H + 4, "0", size=11, anchor="end")
    svg.label(20, SES_TOP + SES_H / 2, "sessions", size=12, anchor="middle", rotate=-90)
    svg.label(
        LEFT + 6, SES_TOP - 6, "sessions that fit at each context (re-planned with policy.sessions=auto)", size=11
    )
    steps = []
    for a, b in zip(points, points[1:] + [None]):
        steps.append((x_of(a["context"]), ys_of(a["sessions_fit"])))
        if b is not None:
            steps.append((x_of(b["context"]), ys_of(a["sessions_fit"])))
    svg.polyline(steps, TERM_COLOURS["activations"], width=2)

    # legend
    y = HEIGHT - 10
    items = [
        (TERM_COLOURS["weights"], "planned (1 session)"),
        (TERM_COLOURS["kv_cache"], "KV + state"),
        (USABLE, "usable"),
        (TERM_COLOURS["activations"], "sessions that fit"),
    ]
    x = 16
    for colour, text in items:
        svg.line(x, y - 4, x + 18, y - 4, colour, width=2.5)
        svg.label(x + 22, y, text, size=11)
        x += 30 + 7 * len(text)
    return svg.text()
