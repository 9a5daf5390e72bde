"""Hydra callback that ends `shardwise plan -m` with one model x hardware summary table."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.jobs: list[tuple[dict, Path]] = []  # (overrides, output dir) per job, for charts=true

    def on_job_end(self, config, job_return, **kwargs) -> None:
        pairs = (str(o).split("=", 1) for o in (job_return.overrides or ()) if "=" in str(o))
        self.jobs.append(({k.lstrip("+~"): v for k, v in pairs}, Path(config.hydra.runtime.output_dir)))

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if config.get("charts") is True:
            self._draw(sweep_dir)
        rows, misfits = [], []
        # A job directory is `<num>_<overrides>`; a hub id in the overrides (model=ORG/NAME) nests it one level deeper.
        for path in sorted(sweep_dir.glob("**/plan.json"), key=lambda p: _job_number(p.relative_to(sweep_dir))):
            try:
                plan = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            gpus = [b for b in plan["budget"] if b["device"] not in ("cpu", "disk")]
            hw = plan["hardware"]
            devices = hw.get("devices", [])
            hw_text = f"{hw.get('source')} ({len(devices)} GPU)" if devices else f"{hw.get('source')} (CPU)"
            # a misfit row names what was tried, on how many of the GPUs; its fix (or none) follows the table
            tp = max(int(plan.get("tp_size") or 1), 1) if plan["strategy"] == "tensor_parallel" else 1
            used = str(len(gpus) * tp) if plan["fits"] else f"tried {len(gpus) * tp} of {len(devices)}"
            if not plan["fits"]:
                misfits.append((plan["model"]["name"], hw_text, plan.get("binding") or {}))
            rows.append(
                (
                    plan["model"]["name"],
                    hw_text,
                    "yes" if plan["fits"] else "NO",
                    plan["strategy"],
                    used,
                    f"{plan['limits']['context_tokens']:,}" if plan["fits"] else "-",
                    _tokens_per_s(plan.get("performance") or {}),
                )
            )
        if not rows:
            return
        from rich.table import Table

        from planner import terminal

        table = Table(title="shardwise plan sweep", header_style="bold")
        for col in ("model", "hardware", "fits", "strategy", "GPUs", "max context", "tok/s"):
            table.add_column(col, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console = terminal.console()
        console.print(table)
        for line in misfit_lines(misfits):
            console.print(line, markup=False)

    def _draw(self, sweep_dir: Path) -> None:
        """charts=true: sweep.svg and sweep.html in the sweep directory, from each job's plan.json."""
        import sys

        from planner.charts.page import sweep_page
        from planner.charts.sweep import sweep_chart
        from planner.jsonfile import write_text_atomic

        jobs = []
        for overrides, out_dir in self.jobs:
            try:
                jobs.append((overrides, json.loads((out_dir / "plan.json").read_text())))
            except (OSError, json.JSONDecodeError):
                continue  # a job that wrote no plan (json=true, or it failed) has no cell
        if not jobs:
            return
        svg = sweep_chart(jobs)
        try:
            paths = [
                write_text_atomic(sweep_dir / "sweep.svg", svg),
                write_text_atomic(sweep_dir / "sweep.html", sweep_page(svg)),
            ]
        except OSError as exc:
            print(f"charts: cannot write into {sweep_dir} ({exc.strerror or exc})", file=sys.stderr)
            return
        print("charts: " + ", ".join(str(p) for p in paths), file=sys.stderr)


def misfit_lines(misfits: list[tuple[str, str, dict]]) -> list[str]:
    """One line per DOES NOT FIT row: what was tried, then the first fix, or that nothing here would fit."""
    lines = []
    for model, hardware, binding in misfits:
        tried = f" (tried {binding['tried']})" if binding.get("tried") else ""
        fixes = binding.get("fixes") or []
        if fixes:
            first = fixes[0]["text"] if isinstance(fixes[0], dict) else str(fixes[0])
            advice = f"would fit with: {first}" + (
                f" (+{len(fixes) - 1} more in its plan.json)" if len(fixes) > 1 else ""
            )
        else:
            advice = "nothing here would fit: choose a smaller model (model=auto) or other hardware"
        lines.append(f"{model} on {hardware} DOES NOT FIT{tried}: {advice}")
    return lines


def _job_number(relative: Path) -> int:
    head = relative.parts[0].split("_")[0]
    return int(head) if head.isdigit() else 0


def _tokens_per_s(perf: dict) -> str:
    """Predicted decode tokens/s of one sequence (and at the planned sessions when more than one)."""
    if not perf.get("available"):
        return "-"
    text = f"{perf['decode_tokens_per_s']:,.1f}"
    if perf.get("sessions", 1) > 1:
        text += f" ({perf['aggregate_tokens_per_s']:,.0f} x{perf['sessions']})"
    return text
