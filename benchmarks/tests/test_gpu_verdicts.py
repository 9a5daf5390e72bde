"""The GPU checks fail on purpose: a planned value below the measured one gives a non-zero exit, on any machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

import gpu_verdicts  # noqa: E402

H200_ROW = json.loads((BENCH / "results" / "gpu_memory_check_h200.json").read_text())["rows"][1]


def _memory_row(planned: int, measured: int) -> dict:
    """A row as a GPU run writes it (the H200 run's gemma-3-1b row), with these totals."""
    return {
        **H200_ROW,
        "model": "m",
        "context": 4096,
        "planned": {**H200_ROW["planned"], "total": planned},
        "measured": {**H200_ROW["measured"], "total": measured},
        "ratio_total": planned / measured,
    }


def _judge(script: str, rows: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": rows}))
    return subprocess.run(
        [sys.executable, str(BENCH / script), "--judge", str(results)], capture_output=True, text=True, timeout=300
    )


def test_memory_flags_follow_the_band():
    assert gpu_verdicts.memory_flag(99, 100) == "UNDER"
    assert gpu_verdicts.memory_flag(100, 100) == "ok"
    assert gpu_verdicts.memory_flag(110, 100) == "ok"
    assert gpu_verdicts.memory_flag(111, 100) == "OVER"


def test_memory_check_exits_1_when_planned_is_below_measured(tmp_path):
    """The real script's main, judging rows a GPU run would write: one under-estimate fails the run."""
    fine = _memory_row(1030, 1000)
    done = _judge("gpu_memory_check.py", [fine, _memory_row(990, 1000)], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL m @ 4096: UNDER" in done.stdout
    assert _judge("gpu_memory_check.py", [fine], tmp_path).returncode == 0


@pytest.mark.parametrize(
    "row",
    [
        {"model": "m", "context": 4096, "error": "OOM: CUDA out of memory"},
        _memory_row(2000, 1000),  # OVER: the plan wastes half the memory
    ],
)
def test_memory_check_fails_on_out_of_memory_and_over_estimates(row):
    assert gpu_verdicts.memory_failures([row])
    assert gpu_verdicts.exit_status(gpu_verdicts.memory_failures([row]), "check") == 1


def test_a_row_skipped_because_it_does_not_fit_one_gpu_does_not_fail():
    assert gpu_verdicts.memory_failures([{"model": "m", "context": 4096, "skipped": "plan does not fit one GPU"}]) == []


def test_chat_check_exits_1_when_the_turn_peaks_above_the_plan(tmp_path):
    over_plan = {"device": "0", "peak": 1_900, "planned_tensors": 1_835}
    done = _judge("gpu_chat_check.py", [over_plan], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "device 0: UNDER" in done.stdout
    inside = {"device": "0", "peak": 1_757, "planned_tensors": 1_835}  # the H200 run's numbers, in MiB
    assert _judge("gpu_chat_check.py", [inside], tmp_path).returncode == 0
    far_below = {"device": "0", "peak": 1_000, "planned_tensors": 1_835}
    assert gpu_verdicts.chat_failures([far_below])[0].startswith("device 0: OVER")
