"""The pass / fail rules of the GPU checks, as pure functions (no torch, no CUDA): tested on any machine.

gpu_memory_check.py: each measured row's planned total against the measured total must lie in
[1.0, OVER_FACTOR]: below 1.0 the plan under-estimates (UNDER: a plan that says "fits" may run out
of memory), above OVER_FACTOR it wastes memory a longer context could use (OVER). A row that ran
out of memory, or failed, fails the check; a row skipped because its plan does not fit one GPU
does not. gpu_chat_check.py: per device, the peak allocated during a real chat turn against the
plan's tensors (weights + KV + activations) must lie in [CHAT_LOW, 1.0]; the lower bound allows for
the KV a turn shorter than the planned context does not fill.

Speed is printed beside memory by both checks and does not decide the exit status: the GPU speed
model is not validated yet (README), so a band for it would be a guess.
"""

from __future__ import annotations

OVER_FACTOR = 1.10  # planned may exceed measured by at most 10%
CHAT_LOW = 0.75  # the default turn (3000 + 256 of 4096 tokens) fills ~80% of the planned KV


def memory_flag(planned_bytes: int, measured_bytes: int) -> str:
    """UNDER (planned < measured), OVER (planned > OVER_FACTOR x measured) or ok."""
    if planned_bytes < measured_bytes:
        return "UNDER"
    if planned_bytes > OVER_FACTOR * measured_bytes:
        return "OVER"
    return "ok"


def memory_failures(rows: list[dict]) -> list[str]:
    """One line per row of gpu_memory_check's results outside its band, out of memory, or failed."""
    failures = []
    for row in rows:
        where = f"{row.get('model')} @ {row.get('context')}"
        if "error" in row:
            failures.append(f"{where}: {row['error']}")
        elif "planned" in row:
            flag = memory_flag(row["planned"]["total"], row["measured"]["total"])
            if flag != "ok":
                ratio = row["planned"]["total"] / row["measured"]["total"]
                failures.append(f"{where}: {flag}, planned/measured = {ratio:.3f} (band 1.000-{OVER_FACTOR:.3f})")
    return failures


def chat_flag(peak_bytes: int, planned_tensor_bytes: int) -> str:
    """UNDER (the turn's peak exceeds the planned tensors), OVER (peak < CHAT_LOW x planned) or ok."""
    if peak_bytes > planned_tensor_bytes:
        return "UNDER"
    if peak_bytes < CHAT_LOW * planned_tensor_bytes:
        return "OVER"
    return "ok"


def chat_failures(rows: list[dict]) -> list[str]:
    """One line per device of gpu_chat_check's results outside its band (rows: device, peak, planned_tensors)."""
    failures = []
    for row in rows:
        flag = chat_flag(row["peak"], row["planned_tensors"])
        if flag != "ok":
            ratio = row["peak"] / row["planned_tensors"]
            failures.append(f"device {row['device']}: {flag}, peak/planned tensors = {ratio:.3f} (band {CHAT_LOW}-1.0)")
    return failures


def exit_status(failures: list[str], check: str) -> int:
    """Print the failures and return the check's exit status: 1 when any, else 0."""
    for line in failures:
        print(f"{check}: FAIL {line}")
    if failures:
        print(f"{check}: {len(failures)} failure(s): exit 1")
        return 1
    print(f"{check}: every row inside its band")
    return 0
