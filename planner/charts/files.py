"""Where the pictures go: beside a plan file, named after it (plan.json -> plan.memory.svg, plan.html)."""

from __future__ import annotations

from pathlib import Path

from planner.charts.page import plan_page


def chart_paths(plan_file: Path) -> dict[str, Path]:
    stem = plan_file.with_suffix("") if plan_file.suffix == ".json" else plan_file
    return {
        "memory": stem.parent / f"{stem.name}.memory.svg",
        "context": stem.parent / f"{stem.name}.context.svg",
        "html": stem.parent / f"{stem.name}.html",
    }


def write_beside(plan_file: Path, plan: dict, charts: dict[str, tuple[str, str]]) -> list[Path]:
    """Write each chart's SVG and the page beside `plan_file`; charts: {kind: (caption, svg)}."""
    from planner.jsonfile import write_text_atomic

    paths = chart_paths(plan_file)
    written = [write_text_atomic(paths[kind], svg) for kind, (_, svg) in charts.items()]
    written.append(write_text_atomic(paths["html"], plan_page(plan, list(charts.values()))))
    return written
