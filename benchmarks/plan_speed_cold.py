"""Cold `shardwise plan` of a model outside the fast path against gpt2's, side by side (issue 17).

    .venv/bin/python benchmarks/plan_speed_cold.py                      # deepseek-v3 vs gpt2, 5 rounds
    .venv/bin/python benchmarks/plan_speed_cold.py --runs 7 --also qwen3-next-80b-a3b llama-4-scout
    .venv/bin/python benchmarks/plan_speed_cold.py --code /tmp/main-tree   # another tree's planner, same venv

Each round runs `python -m shardwise plan model=M` as a fresh process for every model in turn
(gpt2 first, then the others: A, B, A, B...), so machine load hits all alike; one unmeasured
warm-up of each fills the page cache. Prints the median, the spread (min to max) and every run
per model, and each model's median over gpt2's. Target: deepseek-v3 <= 1.5x gpt2.

`--code DIR` puts DIR first on PYTHONPATH, so the same interpreter runs that tree's `planner` and
`runner` (e.g. `git archive main | tar -x -C DIR` for the numbers before a change). The hardware is
probed as a plain `shardwise plan` does (`--hardware h100_80gb` picks a tier instead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BASELINE, TARGET, TARGET_RATIO = "gpt2", "deepseek-v3", 1.5


def _command(model: str, hardware: str | None) -> list[str]:
    hardware_args = [f"hardware={hardware}"] if hardware else []
    return [sys.executable, "-m", "shardwise", "plan", f"model={model}", *hardware_args]


def _timed(cmd: list[str], cwd: str, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def measure(models: list[str], runs: int, hardware: str | None, code: str | None) -> dict[str, list[float]]:
    """Seconds per cold plan of each model, `runs` rounds, models interleaved within each round."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "HF_HUB_OFFLINE": "1"}
    if code:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(code).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    times: dict[str, list[float]] = {m: [] for m in models}
    with tempfile.TemporaryDirectory() as cwd:  # Hydra writes outputs/ under the working directory
        for model in models:
            _timed(_command(model, hardware), cwd, env)  # warm-up: page cache, .pyc files
        for _ in range(runs):
            for model in models:
                times[model].append(_timed(_command(model, hardware), cwd, env))
    return times


def report(times: dict[str, list[float]]) -> dict:
    base = _common.median(times[BASELINE])
    rows, result = [], {"runs": len(times[BASELINE]), "models": {}}
    for model, runs in times.items():
        median = _common.median(runs)
        ratio = median / base
        result["models"][model] = {"median_s": median, "min_s": min(runs), "max_s": max(runs), "all_s": runs}
        result["models"][model]["ratio_to_gpt2"] = ratio
        rows.append(
            [
                model,
                f"{median:.2f}",
                f"{min(runs):.2f}-{max(runs):.2f}",
                " ".join(f"{t:.2f}" for t in runs),
                f"{ratio:.2f}",
            ]
        )
    _common.print_table(["model", "median s", "spread s", "runs s", f"x {BASELINE}"], rows)
    if TARGET in times:
        ratio = result["models"][TARGET]["ratio_to_gpt2"]
        verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
        print(f"{TARGET} / {BASELINE} = {ratio:.2f}: {verdict} the <= {TARGET_RATIO}x target")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured rounds (each plans every model once)")
    parser.add_argument("--also", nargs="*", default=[], help="more profiles to time beside deepseek-v3 and gpt2")
    parser.add_argument("--hardware", default=None, help="a hardware tier (default: probe this machine)")
    parser.add_argument("--code", default=None, help="a source tree whose planner/runner to run instead of this one")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    models = [BASELINE, TARGET, *[m for m in args.also if m not in (BASELINE, TARGET)]]
    load = os.getloadavg()[0]
    print(
        f"cold `shardwise plan model=M{' hardware=' + args.hardware if args.hardware else ''}`, {args.runs} rounds, "
        f"models interleaved, code from {args.code or _common.REPO}, load average {load:.1f} on {os.cpu_count()} CPUs"
    )
    result = report(measure(models, args.runs, args.hardware, args.code))
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "code": args.code or str(_common.REPO)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
