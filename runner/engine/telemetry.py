"""Per-turn measurements: time to first token, tokens/s, token counts, peak memory per device vs the plan.

Next to the measured tokens/s each record carries the plan's predicted decode tokens/s (one sequence,
`plan.performance`) and their ratio, so a run shows how far the speed model is from this machine.

Each turn becomes one JSON line in `metrics.jsonl` (the Hydra run directory for `shardwise chat`,
or any path given). Peak memory is reset at the start of each turn so the number belongs to
that turn: `torch.cuda.max_memory_allocated` per GPU, and on the host the resident-set high-water
mark (Linux `VmHWM`, reset through /proc/self/clear_refs; elsewhere the process lifetime peak).
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections import deque
from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _reset_host_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def host_peak_rss_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _cuda():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch
    return None


def _predicted(plan, measured_tokens_per_s) -> dict:
    """The plan's predicted decode tokens/s beside the measured one (empty when the plan predicts none)."""
    perf = getattr(plan, "performance", None) or {}
    predicted = perf.get("decode_tokens_per_s") if perf.get("available") else None
    if not predicted:
        return {}
    ratio = measured_tokens_per_s / predicted if measured_tokens_per_s else None
    return {
        "predicted_tokens_per_s": predicted,
        "measured_over_predicted": round(ratio, 3) if ratio is not None else None,
    }


class Telemetry:
    """Measures turns; appends one JSON record per turn to `path` when given.

    `.turns` keeps the latest RECENT_TURNS records and `.totals` counts every turn, so a
    long-running server does not grow without bound.
    """

    RECENT_TURNS = 100

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.turns: deque[dict] = deque(maxlen=self.RECENT_TURNS)
        self.totals = {
            "turns": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "tokens_per_s_sum": 0.0,
            "timed_turns": 0,
        }
        self._host_peak_is_per_turn = False
        self._lock = threading.Lock()  # turns from several threads (the server, a batched Python API) end at once

    def begin(self) -> None:
        torch = _cuda()
        if torch is not None:
            for index in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(index)
        self._host_peak_is_per_turn = _reset_host_peak()

    def peaks(self) -> dict:
        """Peak bytes per device key as the plan names them ("0", "1", ..., "cpu")."""
        peaks = {"cpu": host_peak_rss_bytes()}
        torch = _cuda()
        if torch is not None:
            for index in range(torch.cuda.device_count()):
                peaks[str(index)] = int(torch.cuda.max_memory_allocated(index))
        return peaks

    def end(self, completion, plan, model_name: str) -> dict:
        planned = {str(b.device): int(b.planned) for b in plan.budget} if plan is not None else {}
        usage = completion.usage
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model": model_name,
            "strategy": plan.strategy if plan is not None else None,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "finish_reason": completion.finish_reason,
            "time_to_first_token_s": completion.time_to_first_token_s,
            "tokens_per_s": completion.tokens_per_s,
            "batch_size": getattr(completion, "batch_size", 1),
            "peak_bytes": self.peaks(),
            "planned_bytes": planned,
            "host_peak_per_turn": self._host_peak_is_per_turn,
            **_predicted(plan, completion.tokens_per_s),
        }
        with self._lock:
            self.turns.append(record)
            self.totals["turns"] += 1
            self.totals["prompt_tokens"] += usage.prompt_tokens
            self.totals["completion_tokens"] += usage.completion_tokens
            if completion.tokens_per_s:
                self.totals["tokens_per_s_sum"] += completion.tokens_per_s
                self.totals["timed_turns"] += 1
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
        return record
