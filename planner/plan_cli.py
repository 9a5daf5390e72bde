"""`shardwise plan [overrides]`: a dry-run plan; prints the report and writes plan.json.

    shardwise plan model=gpt-oss-120b hardware=h100_80gb
    shardwise plan model=llama-3.1-70b hardware=h100_80gb hardware.count=2 out=plan.json
    shardwise plan -m model=gpt2,gpt-oss-20b hardware=t4,a100_80gb     # summary table at the end
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.hydra_app import run_verb


def hardware_choice() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("hardware")


def task(cfg):
    from hydra.core.hydra_config import HydraConfig

    from planner.planning import plan_from_config
    from planner.resolve_hardware import resolve_hardware

    hardware = resolve_hardware(cfg.hardware, name=hardware_choice())
    plan = plan_from_config(cfg, hardware)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    written = [plan.save(run_dir / "plan.json")]
    if cfg.get("out"):
        written.append(plan.save(cfg.out))
    if cfg.get("json"):
        print(plan.to_json())
    else:
        from planner.report import render

        render(plan, plan_path=str(written[-1]))
        print("plan.json: " + ", ".join(str(p) for p in written))
    return {"fits": plan.fits, "strategy": plan.strategy}


def run(argv: list[str]) -> None:
    run_verb("plan", "plan", task, argv)
