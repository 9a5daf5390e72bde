"""The sweep matrix: a heatmap of a `-m` sweep's plans over two swept keys (models x hardware by default).

The two axes are the swept keys whose values vary across the jobs (read from each job's overrides);
a third varying key joins the column labels. Each cell says fits / does not fit, the headroom on
the tightest device, the planned context and the predicted tokens/s, and carries them as `data-*`.
"""

from __future__ import annotations

from planner.charts.svg import TEXT, Svg
from planner.units import GIB

CELL_W, CELL_H, LEFT, TOP = 150, 58, 170, 90


def axes(jobs: list[tuple[dict, dict]]) -> tuple[list[str], list[str]]:
    """(row keys, column keys): the swept keys that vary, in the order the sweep named them."""
    order: list[str] = []
    for overrides, _ in jobs:
        for key in overrides:
            if key not in order:
                order.append(key)
    varying = [k for k in order if len({str(o.get(k)) for o, _ in jobs}) > 1]
    if not varying:
        return ([order[0]] if order else []), []
    return varying[:1], varying[1:]


def headroom(plan: dict) -> float:
    """Free fraction of the tightest GPU after the plan (negative when it does not fit)."""
    rows = [r for r in plan.get("budget") or [] if str(r["device"]) not in ("cpu", "disk")] or plan.get("budget") or []
    if not rows:
        return 0.0
    return min((r["usable"] - r["planned"]) / max(r["usable"], 1) for r in rows)


def _colour(plan: dict) -> str:
    if not plan.get("fits"):
        return "#f4c7c3"
    room = max(0.0, min(headroom(plan), 0.5)) / 0.5  # 0: tight, 1: half the memory or more left
    # light to deep green: more headroom, deeper colour
    r, g, b = (int(round(a + (c - a) * room)) for a, c in ((0xE5, 0x4C), (0xF5, 0xA8), (0xE0, 0x6A)))
    return f"#{r:02x}{g:02x}{b:02x}"


def sweep_chart(jobs: list[tuple[dict, dict]], title: str = "shardwise plan sweep") -> str:
    """jobs: (overrides {key: value}, plan dict) per job, in job order."""
    row_keys, col_keys = axes(jobs)

    def label(overrides: dict, keys: list[str]) -> str:
        return ", ".join(str(overrides.get(k)) for k in keys) if keys else "-"

    rows = list(dict.fromkeys(label(o, row_keys) for o, _ in jobs))
    cols = list(dict.fromkeys(label(o, col_keys) for o, _ in jobs))
    width = LEFT + CELL_W * max(len(cols), 1) + 20
    height = TOP + CELL_H * max(len(rows), 1) + 50
    svg = Svg(width, height, title, "sweep")
    svg.label(16, 24, title, size=15, weight="bold")
    svg.label(16, 44, f"rows: {', '.join(row_keys) or '-'}; columns: {', '.join(col_keys) or '-'}", size=12)
    for j, col in enumerate(cols):
        svg.label(LEFT + CELL_W * j + CELL_W / 2, TOP - 10, _short(col, 22), size=12, anchor="middle", weight="bold")
    for i, row in enumerate(rows):
        svg.label(LEFT - 8, TOP + CELL_H * i + CELL_H / 2 + 4, _short(row, 24), size=12, anchor="end", weight="bold")
    for overrides, plan in jobs:
        i, j = rows.index(label(overrides, row_keys)), cols.index(label(overrides, col_keys))
        x, y = LEFT + CELL_W * j, TOP + CELL_H * i
        perf = plan.get("performance") or {}
        fits = bool(plan.get("fits"))
        context = int(plan.get("limits", {}).get("context_tokens") or 0)
        tok_s = float(perf["decode_tokens_per_s"]) if perf.get("available") else None
        svg.rect(
            x + 2,
            y + 2,
            CELL_W - 4,
            CELL_H - 4,
            _colour(plan),
            stroke="#ffffff",
            data_row=rows[i],
            data_col=cols[j],
            data_fits=str(fits).lower(),
            data_context=context if fits else 0,
            data_headroom=f"{headroom(plan):.4f}",
            data_tokens_per_s=f"{tok_s:.1f}" if tok_s is not None else "",
        )
        cx = x + CELL_W / 2
        svg.label(cx, y + 20, "fits" if fits else "DOES NOT FIT", size=12, anchor="middle", weight="bold", fill=TEXT)
        if fits:
            svg.label(cx, y + 36, f"{context:,} tok, {headroom(plan):.0%} free", size=11, anchor="middle")
            if tok_s is not None:
                svg.label(cx, y + 50, f"{tok_s:,.1f} tok/s", size=11, anchor="middle")
        else:
            need = (plan.get("binding") or {}).get("needed", 0)
            svg.label(cx, y + 36, f"needs {need / GIB:,.1f} GiB" if need else "", size=11, anchor="middle")
    svg.label(16, height - 14, "green: fits (deeper = more headroom on the tightest GPU); red: does not fit", size=11)
    return svg.text()


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
