"""Efficiency factors fitted from measured runs: what `policy.performance` and snapshots carry.

    factors = fit_factors(samples)   # samples: predicted with neutral factors, and measured, per model

A sample is one model run: its decode step and prefill as the speed model predicts them with every
factor neutral (efficiency 1, no fixed costs), the same measured, and its number of layers. The
decode fit solves measured = a x ideal + layers x b + c by least squares (bandwidth efficiency
1/a, per-layer cost b, per-pass cost c; a fixed cost that comes out negative is dropped and the
rest solved again); prefill then gives the compute efficiency as the median of ideal / (measured -
fixed costs). Pure Python: no numpy, no files.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    layers: int
    ideal_step_s: float  # decode step predicted with neutral factors
    measured_step_s: float
    ideal_prefill_s: float  # prefill predicted with neutral factors
    measured_prefill_s: float


def _least_squares(rows: list[list[float]], target: list[float]) -> list[float]:
    """Solve the normal equations (A^T A) x = A^T y by Gaussian elimination with partial pivoting."""
    n = len(rows[0])
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]
    aty = [sum(r[i] * y for r, y in zip(rows, target)) for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(ata[r][col]))
        ata[col], ata[pivot] = ata[pivot], ata[col]
        aty[col], aty[pivot] = aty[pivot], aty[col]
        if abs(ata[col][col]) < 1e-30:
            raise ValueError("calibration samples do not determine the factors: use models of different sizes")
        for row in range(col + 1, n):
            ratio = ata[row][col] / ata[col][col]
            ata[row] = [a - ratio * b for a, b in zip(ata[row], ata[col])]
            aty[row] -= ratio * aty[col]
    solution = [0.0] * n
    for row in reversed(range(n)):
        solution[row] = (aty[row] - sum(ata[row][k] * solution[k] for k in range(row + 1, n))) / ata[row][row]
    return solution


def fit_factors(samples: list[Sample]) -> dict:
    """`policy.performance.<kind>` values from measured samples (see the module docstring)."""
    if len(samples) < 3:
        raise ValueError(f"calibration needs at least 3 samples of different sizes, got {len(samples)}")
    full = [[s.ideal_step_s, float(s.layers), 1.0] for s in samples]
    target = [s.measured_step_s for s in samples]
    kept = [0, 1, 2]
    while True:
        solved = dict(zip(kept, _least_squares([[row[k] for k in kept] for row in full], target)))
        negative = [k for k in kept[1:] if solved[k] < 0]
        if not negative:
            break
        kept.remove(negative[0])
    a, per_layer, per_pass = (solved.get(k, 0.0) for k in range(3))
    compute = statistics.median(
        s.ideal_prefill_s / max(s.measured_prefill_s - s.layers * per_layer - per_pass, 1e-9) for s in samples
    )
    return {
        "bandwidth_efficiency": round(min(1.0, 1 / a), 3) if a > 0 else 1.0,
        "compute_efficiency": round(min(1.0, compute), 3),
        "layer_overhead_us": round(per_layer * 1e6, 1),
        "step_overhead_ms": round(per_pass * 1e3, 2),
    }
