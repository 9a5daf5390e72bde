"""Prometheus metrics for `shardwise serve` (`GET /metrics`, text exposition format 0.0.4, written by hand).

Names follow vLLM's where they mean the same, with the `shardwise:` prefix in place of `vllm:`, so dashboards
built for vLLM need only the prefix changed; every series carries `model_name`:

    shardwise:num_requests_running         gauge      requests generating now (inside the batch)
    shardwise:num_requests_waiting         gauge      requests admitted and waiting for a batch slot
    shardwise:kv_cache_usage_perc          gauge      fraction of the paged KV cache in use (0 when sequential)
    shardwise:kv_cache_blocks              gauge      paged-cache blocks the plan sized (0 when sequential)
    shardwise:prompt_tokens_total          counter    prompt tokens fed to the model
    shardwise:generation_tokens_total      counter    tokens generated (rate() of it is tokens/s)
    shardwise:request_success_total        counter    finished requests, by finished_reason
    shardwise:request_rejected_total       counter    requests refused with 429 because the line was full (no vLLM twin)
    shardwise:request_stalled_total        counter    streams cancelled: the client accepted no data for
                                                      serve.stream_stall_timeout_s (no vLLM twin)
    shardwise:time_to_first_token_seconds  histogram  arrival to first token, queueing included
    shardwise:e2e_request_latency_seconds  histogram  arrival to last token
    shardwise:request_queue_time_seconds   histogram  arrival to the start of generation
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# vLLM's bucket boundaries for the same histograms
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)

PREFIX = "shardwise:"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    def __init__(self, buckets: tuple):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1  # cumulative: every bucket at or above the value counts it


def _labels(**labels) -> str:
    def escape(value) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in labels.items()) + "}"


class Metrics:
    """Per-model counters and histograms; gauges are read at scrape time from `gauges()`."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[tuple, float] = {}  # (name, model, extra label tuple) -> value
        self.histograms: dict[tuple, Histogram] = {}  # (name, model) -> Histogram

    def _add(self, name: str, model: str, value: float, **extra) -> None:
        key = (name, model, tuple(sorted(extra.items())))
        self.counters[key] = self.counters.get(key, 0) + value

    def _observe(self, name: str, model: str, buckets: tuple, value: float | None) -> None:
        if value is None:
            return
        self.histograms.setdefault((name, model), Histogram(buckets)).observe(max(0.0, value))

    def request_done(
        self,
        model: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        ttft_s: float | None,
        e2e_s: float | None,
        queue_s: float | None,
    ) -> None:
        with self._lock:
            self._add("prompt_tokens_total", model, prompt_tokens)
            self._add("generation_tokens_total", model, completion_tokens)
            self._add("request_success_total", model, 1, finished_reason=finish_reason)
            self._observe("time_to_first_token_seconds", model, TTFT_BUCKETS, ttft_s)
            self._observe("e2e_request_latency_seconds", model, LATENCY_BUCKETS, e2e_s)
            self._observe("request_queue_time_seconds", model, LATENCY_BUCKETS, queue_s)

    def rejected(self, model: str) -> None:
        with self._lock:
            self._add("request_rejected_total", model, 1)

    def stalled(self, model: str) -> None:
        with self._lock:
            self._add("request_stalled_total", model, 1)

    def render(self, gauges: dict[str, dict]) -> str:
        """The exposition text; `gauges` maps model name -> {"running", "waiting", "kv_cache_usage", "num_blocks"}."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, emit: Callable[[], None]) -> None:
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")
            emit()

        def gauge(name: str, key: str, help_text: str) -> None:
            def emit():
                for model, values in sorted(gauges.items()):
                    lines.append(f"{PREFIX}{name}{_labels(model_name=model)} {float(values.get(key, 0))}")

            family(name, "gauge", help_text, emit)

        gauge("num_requests_running", "running", "Requests generating now.")
        gauge("num_requests_waiting", "waiting", "Requests waiting for a batch slot.")
        gauge("kv_cache_usage_perc", "kv_cache_usage", "Fraction of the paged KV cache in use.")
        gauge("kv_cache_blocks", "num_blocks", "Paged KV cache blocks the plan sized.")
        with self._lock:
            counters = sorted(self.counters.items())
            histograms = sorted(self.histograms.items())
        helps = {
            "prompt_tokens_total": "Prompt tokens processed.",
            "generation_tokens_total": "Tokens generated.",
            "request_success_total": "Finished requests by finish reason.",
            "request_rejected_total": "Requests refused because the waiting line was full.",
            "request_stalled_total": "Streams cancelled because the client stopped reading.",
        }
        for name, help_text in helps.items():

            def emit(name=name):
                for (counter, model, extra), value in counters:
                    if counter == name:
                        lines.append(f"{PREFIX}{name}{_labels(model_name=model, **dict(extra))} {float(value)}")

            family(name, "counter", help_text, emit)
        for name, help_text in (
            ("time_to_first_token_seconds", "Time to first token, queueing included."),
            ("e2e_request_latency_seconds", "Request latency from arrival to the last token."),
            ("request_queue_time_seconds", "Time from arrival to the start of generation."),
        ):

            def emit(name=name):
                for (hist_name, model), hist in histograms:
                    if hist_name != name:
                        continue
                    for bound, count in zip(hist.buckets, hist.counts):
                        lines.append(f"{PREFIX}{name}_bucket{_labels(model_name=model, le=bound)} {float(count)}")
                    lines.append(f"{PREFIX}{name}_bucket{_labels(model_name=model, le='+Inf')} {float(hist.total)}")
                    lines.append(f"{PREFIX}{name}_sum{_labels(model_name=model)} {hist.sum}")
                    lines.append(f"{PREFIX}{name}_count{_labels(model_name=model)} {float(hist.total)}")

            family(name, "histogram", help_text, emit)
        return "\n".join(lines) + "\n"
