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


@pytest.mark.parametrize(
    "override, needle",
    [
        ("runs=0", "runs=0 must be an integer from 1"),
        ("runs=abc", "runs='abc' must be an integer"),
        ("new_tokens=1000000000000", "new_tokens=1000000000000 must be an integer from 2"),
        ("prompt_tokens=-5", "prompt_tokens=-5 must be an integer from 1"),
        ("shapes=[]", "must be a list of 1 to"),
        ("shapes=abc", "must be a list of 1 to"),
        ("shapes=[[1]]", "shapes[0]=[1] is not [hidden, layers, intermediate, heads, kv heads]"),
        ("shapes=[[-1,2,3,4,2]]", "hidden must be an integer from 1"),
        ("shapes=[[64,2,128,3,2]]", "3 heads must divide hidden 64"),
        ("shapes=[[1000000,1000,100000,1000,1000]]", "hidden must be an integer from 1 to 65,536"),
    ],
)
def test_calibrate_settings_are_checked_before_anything_is_measured(override, needle):
    """A bad shape was a transformers traceback after torch loaded; new_tokens=1e12 ran for ever."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from planner.errors import ShardwiseError
    from shardwise.verbs.calibrate import check_settings

    cfg = OmegaConf.create({"runs": 3, "prompt_tokens": 64, "new_tokens": 17, "shapes": [[256, 8, 768, 4, 2]]})
    parsed = OverridesParser.create().parse_overrides([override])[0]
    cfg[parsed.key_or_group] = parsed.value()
    with pytest.raises(ShardwiseError) as caught:
        check_settings(cfg)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("target", ["dir", "file/x.json", "loop", "missing/x.json", "[a,b]", "true"])
def test_calibrate_refuses_a_target_it_cannot_write_before_measuring(tmp_path, target):
    """out= was checked only when the snapshot was written, after minutes of measuring."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "loop").symlink_to("loop")
    done = subprocess.run(
        [sys.executable, "-m", "shardwise", "calibrate", f"out={target}", "shapes=[[64,2,128,2,2]]", "runs=1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardwise calibrate: error:"), lines
    assert "M params" not in done.stdout  # nothing was measured
