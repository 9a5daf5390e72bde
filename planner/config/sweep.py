"""Hydra callback that ends `shardwise plan -m` with one model x hardware summary table."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = []
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
            rows.append(
                (
                    plan["model"]["name"],
                    hw_text,
                    "yes" if plan["fits"] else "NO",
                    plan["strategy"],
                    str(len(gpus)),
                    f"{plan['limits']['context_tokens']:,}" if plan["fits"] else "-",
                    _tokens_per_s(plan.get("performance") or {}),
                )
            )
        if not rows:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="shardwise plan sweep", header_style="bold")
        for col in ("model", "hardware", "fits", "strategy", "GPUs used", "max context", "tok/s"):
            table.add_column(col, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        probe = Console()
        Console(highlight=False, width=probe.width if probe.is_terminal else max(probe.width, 110)).print(table)


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
