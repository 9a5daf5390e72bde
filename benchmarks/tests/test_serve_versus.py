"""benchmarks/serve_versus.py without a peer: its bounds and the spread it prints (the run itself needs transformers'
serving extras in another environment and minutes of CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serve_versus  # noqa: E402


@pytest.mark.parametrize(
    "argv",
    [["--clients", "0"], ["--clients", "17"], ["--repeats", "0"], ["--max-tokens", "500"], ["--prompt-tokens", "4"]],
)
def test_unbounded_runs_are_refused_before_anything_starts(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_versus.main(["--peer-python", sys.executable, *argv])
    assert exit_info.value.code == 2 and "keep it bounded" in capsys.readouterr().err


def test_a_peer_python_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_versus.main([])
    assert exit_info.value.code == 2 and "--peer-python" in capsys.readouterr().err


def test_the_spread_is_the_median_with_the_range():
    assert serve_versus.spread([1.0, 0.9, 1.2]) == "1.00 [0.90-1.20]"
    assert serve_versus.spread([30.4, 28.0, 35.6], 0) == "30 [28-36]"
