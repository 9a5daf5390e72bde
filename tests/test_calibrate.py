"""`shardwise calibrate` on the CPU: measured factors land in a snapshot, and plans on that snapshot use them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TINY_SHAPES = "shapes=[[64,2,128,2,2],[128,4,256,2,2],[192,3,384,2,2]]"


def run(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "shardwise", "calibrate", *args, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_calibrate_writes_a_snapshot_whose_factors_plans_use(tmp_path):
    from planner.config.compose import make_plan

    box = tmp_path / "box.json"
    done = run(tmp_path, "hardware=cpu", f"out={box}", TINY_SHAPES, "runs=1", "new_tokens=4", "prompt_tokens=8")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("M params, float32 on cpu: decode") == 3
    snapshot = json.loads(box.read_text())
    factors = snapshot["speed_factors"]["cpu"]
    assert set(factors) == {"bandwidth_efficiency", "compute_efficiency", "layer_overhead_us", "step_overhead_ms"}
    assert 0 < factors["bandwidth_efficiency"] <= 1 and 0 < factors["compute_efficiency"] <= 1
    assert snapshot["host_memory_bandwidth_gb_per_s"] > 0

    overrides = ["policy.dtype=float32", "policy.context_tokens=512"]
    calibrated = make_plan("gpt2", "snapshot", [f"hardware.path={box}", *overrides])
    # the same box without the recorded factors, given them through the policy instead, predicts the same
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({**snapshot, "speed_factors": {}}))
    through_policy = [f"policy.performance.cpu.{key}={value}" for key, value in factors.items()]
    uncalibrated = make_plan("gpt2", "snapshot", [f"hardware.path={plain}", *overrides])
    given = make_plan("gpt2", "snapshot", [f"hardware.path={plain}", *overrides, *through_policy])
    assert calibrated.performance == given.performance
    assert calibrated.performance != uncalibrated.performance


def test_calibrate_without_out_is_one_line(tmp_path):
    done = run(tmp_path, "hardware=cpu")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("shardwise calibrate: error: calibrate needs out=FILE")
