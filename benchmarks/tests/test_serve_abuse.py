"""Smoke test of `serve_load.py --abuse` at a tiny size: the server survives every abuse step.

A 3000-message conversation abandoned by its client, a burst past batch slots + serve.max_queue, and
streaming clients that hang up, each against a tiny random-weight model served on 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

import serve_load  # noqa: E402

TINY = [
    "--abuse",
    "--abuse-unloaded", "1",
    "--abuse-normal", "1",
    "--abuse-slots", "2",
    "--abuse-queue", "1",
    "--abuse-burst", "6",
    "--abuse-streams", "1",
    "--timeout-s", "60",
]  # fmt: skip


def _five_hundreds(row) -> list:
    statuses = [s for step in (row.before, row.during, row.after) for s in step.normal_statuses]
    return [s for s in statuses if isinstance(s, int) and s >= 500] + ["5xx"] * row.during.abuse.get("5xx", 0)


@pytest.mark.slow
def test_abuse_phase_gives_no_5xx_and_the_server_answers_after_each_step():
    result = serve_load.measure_abuse(serve_load.build_parser().parse_args(TINY))
    rows = result["rows"]
    assert [row.name[:3] for row in rows] == ["(a)", "(b)", "(c)"]
    assert result["seconds"] < 30
    for row in rows:
        assert _five_hundreds(row) == [], row.name
        assert row.after.normal_statuses == [200], f"no normal answer after {row.name}"
        assert row.during.problems == [] and row.after.problems == [], row.name
        assert row.health_failed == 0 and row.health_answered > 0, row.name
    huge, burst, hang_up = rows
    # the max_tokens=1 probe answered, then the same conversation asking for 1500 tokens, abandoned at 0.1 s
    assert huge.during.abuse == {"2xx": 1, "abandoned": 1}
    # 2 slots + 1 waiting place: of 6 at once, at least 3 are refused, with 429 and nothing else
    assert burst.during.abuse.get("429", 0) >= 3
    assert set(burst.during.abuse) <= {"2xx", "429"}
    assert hang_up.during.abuse == {"hung up mid-stream": 1}
    assert result["idle"] and result["health"].failed == 0


def test_abuse_sizes_are_bounded():
    parser = serve_load.build_parser()
    for bad in (["--abuse-messages", "100000"], ["--abuse-burst", "1000"], ["--abandon-s", "60"]):
        try:
            serve_load.main(["--abuse", *bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"{bad} was accepted")
    assert parser.parse_args(TINY).abuse
