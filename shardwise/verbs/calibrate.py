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

from planner.config.overrides import path_option
from planner.errors import ShardwiseError
from planner.files import check_writable
from shardwise.verbs.app import run_verb

# Bounds of what one calibration measures: each far above a useful run (the shipped shapes reach hidden 2048,
# 16 layers; 3 runs of 17 tokens), so only a typo hits them, and the run stays minutes, not days.
MAX_RUNS = 100
MAX_PROMPT_TOKENS = 32768
MAX_NEW_TOKENS = 4096
MAX_SHAPES = 32
# [hidden, layers, intermediate, heads, kv heads]: the largest of each a random-weight model is built with
SHAPE_FIELDS = (("hidden", 65536), ("layers", 1024), ("intermediate", 262144), ("heads", 1024), ("kv heads", 1024))


def _count(cfg, key: str, least: int, most: int) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ShardwiseError(f"{key}={value!r} must be an integer from {least} to {most:,}")
    return value


def check_settings(cfg) -> None:
    """runs, prompt_tokens, new_tokens and every shape, each in range, in one line before anything is built
    (a shape transformers refuses, heads that do not divide hidden, was a traceback after torch loaded)."""
    _count(cfg, "runs", 1, MAX_RUNS)
    _count(cfg, "prompt_tokens", 1, MAX_PROMPT_TOKENS)
    # decode tokens/s is measured over the tokens after the first: at least two
    _count(cfg, "new_tokens", 2, MAX_NEW_TOKENS)
    shapes = cfg.get("shapes")
    if not hasattr(shapes, "__len__") or isinstance(shapes, str) or not 1 <= len(shapes) <= MAX_SHAPES:
        raise ShardwiseError(
            f"shapes={shapes!r:.80} must be a list of 1 to {MAX_SHAPES} shapes [hidden, layers, intermediate, heads, "
            "kv heads], e.g. shapes=[[256,8,768,4,2]]"
        )
    for index, shape in enumerate(shapes):
        is_list = hasattr(shape, "__len__") and not isinstance(shape, str)
        where = f"shapes[{index}]={list(shape) if is_list else repr(shape)}"
        if not is_list or len(shape) != len(SHAPE_FIELDS):
            raise ShardwiseError(f"{where} is not [hidden, layers, intermediate, heads, kv heads]")
        for value, (name, most) in zip(shape, SHAPE_FIELDS):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise ShardwiseError(f"{where}: {name} must be an integer from 1 to {most:,}")
        hidden, _, _, heads, kv_heads = shape
        if hidden % heads or heads % kv_heads:
            raise ShardwiseError(
                f"{where}: {heads} heads must divide hidden {hidden}, and {kv_heads} kv heads must divide the heads"
            )


def task(cfg):
    from hydra.core.hydra_config import HydraConfig

    from planner.config.gpu_speeds import with_published_speeds
    from planner.hardware.snapshot import save_snapshot
    from planner.hardware.tiers import resolve_hardware

    out = path_option(cfg, "out")
    if out is None:
        raise ShardwiseError(
            "calibrate needs out=FILE: the snapshot to write (plan with hardware=snapshot hardware.path=FILE)"
        )
    # everything is checked before minutes of measuring: a bad shape or target must not cost the run
    check_writable(out, "the hardware snapshot", "choose a writable out=FILE")
    check_settings(cfg)
    hardware = with_published_speeds(
        resolve_hardware(cfg.hardware, name=HydraConfig.get().runtime.choices.get("hardware"))
    )
    from runner.speed_measure import calibrate

    factors = calibrate(cfg, hardware, log=lambda line: print(line, flush=True))
    note = f"speed factors measured by shardwise calibrate on {time.strftime('%Y-%m-%d')}: {factors}"
    path = save_snapshot(replace(hardware, speed_factors=factors, notes=(*hardware.notes, note)), str(out))
    print(f"speed factors {factors}\nwrote {path}: plan with hardware=snapshot hardware.path={path}")


def run(argv: list[str]) -> None:
    run_verb("calibrate", "calibrate", task, argv)


if __name__ == "__main__":
    run(sys.argv[1:])
