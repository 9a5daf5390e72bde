"""`shardwise calibrate`: measure this machine's speed factors and record them in a hardware snapshot.

    shardwise calibrate out=box.json                        # the first GPU (or the CPU), the plan's dtype
    shardwise plan hardware=snapshot hardware.path=box.json model=llama-3.1-8b   # plans learn from it

The verb: it resolves the hardware, runs runner.speed_measure.calibrate (the measurements and the
fit) and writes the snapshot whose `speed_factors` win over the policy's defaults.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from planner.errors import ShardwiseError
from shardwise.verbs.app import run_verb


def task(cfg):
    from hydra.core.hydra_config import HydraConfig

    from planner.config.gpu_speeds import with_published_speeds
    from planner.hardware.snapshot import save_snapshot
    from planner.hardware.tiers import resolve_hardware

    if not cfg.get("out"):
        raise ShardwiseError(
            "calibrate needs out=FILE: the snapshot to write (plan with hardware=snapshot hardware.path=FILE)"
        )
    hardware = with_published_speeds(
        resolve_hardware(cfg.hardware, name=HydraConfig.get().runtime.choices.get("hardware"))
    )
    from runner.speed_measure import calibrate

    factors = calibrate(cfg, hardware, log=lambda line: print(line, flush=True))
    note = f"speed factors measured by shardwise calibrate on {time.strftime('%Y-%m-%d')}: {factors}"
    path = save_snapshot(replace(hardware, speed_factors=factors, notes=(*hardware.notes, note)), str(cfg.out))
    print(f"speed factors {factors}\nwrote {path}: plan with hardware=snapshot hardware.path={path}")


def run(argv: list[str]) -> None:
    run_verb("calibrate", "calibrate", task, argv)


if __name__ == "__main__":
    run(sys.argv[1:])
