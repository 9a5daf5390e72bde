"""Predicted vs measured decode tokens/s and time to first token on this CPU, for llama-style models.

    PYTHONPATH=. python benchmarks/speed_prediction.py            # score: 5 models, ~9M-0.85B, fp32 and bf16
    PYTHONPATH=. python benchmarks/speed_prediction.py --fit      # fit CPU factors on 6 *other* model shapes

Each model is built from a LlamaConfig with random weights (uniform, seeded) in the dtype, and runs
plain greedy `model.generate` with a fixed number of new tokens; a streamer stamps the first token
(time to first token) and the last (decode tokens/s = (new - 1) / (last - first)); the median of
`--runs` runs is reported. One thread by default (`--threads`): on a machine shared with other
busy processes, two spinning OpenMP threads lose most of their time waiting for each other; and
with one thread the process's CPU time (`--clock cpu`, the default) is what the generation would
take on a core of its own, which the wall clock of a shared machine cannot show (`--clock wall`).

The prediction is the plan's `performance` block: `shardwise plan` for the model's config.json on
hardware=cpu, with the host's memory bandwidth and matmul rate measured once at the start by the
probe (planner/hardware/host.py), as `shardwise plan` does. The plan gets `--threads` CPUs, so it
streams at min(threads x one thread's copy, all cores' copy): with the default one thread, one
thread's copy, which is what the CPU factors were fitted against.

The CPU efficiency factors in conf/policy/default.yaml (policy.performance.cpu for float32,
cpu_half for bfloat16) come from `--fit`, a separate run over FIT_MODELS (other widths and depths
than SCORE_MODELS): it predicts them with every factor neutral (efficiency 1, no fixed costs) and
solves measured step = a x ideal step + layers x b + c by least squares, per dtype; the scored
table never feeds the fit.

The split is frozen (issue 19): FIT_MODELS and SCORE_MODELS below were fixed before any score was
taken, and benchmarks/tests/test_benchmarks.py holds a copy of both, so moving a shape from one
list to the other, or adding one after seeing a score, fails a test. A refit runs `--fit` alone,
writes the factors, and only then is the score run (and committed) once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runner.speed_measure import measure  # noqa: E402  (after the sys.path line above)

# name: (hidden, layers, intermediate, heads, kv heads)
SCORE_MODELS = {
    "llama-9m": (128, 4, 512, 4, 4),
    "llama-40m": (384, 6, 1024, 6, 2),
    "llama-150m": (768, 12, 2048, 12, 4),
    "llama-400m": (1024, 24, 2816, 16, 8),
    "llama-850m": (2048, 16, 5632, 32, 8),
}
FIT_MODELS = {
    "fit-20m": (256, 8, 768, 4, 2),
    "fit-60m": (512, 3, 1536, 8, 8),
    "fit-120m": (640, 10, 1792, 10, 2),
    "fit-250m": (896, 20, 2432, 14, 2),
    "fit-500m": (1536, 8, 4096, 12, 4),
    "fit-800m": (1792, 20, 4864, 14, 2),
}
FACTOR_BLOCKS = {"float32": "cpu", "bfloat16": "cpu_half"}  # policy.performance.<block> each dtype uses
NEUTRAL = [
    f"policy.performance.{block}.{key}={value}"
    for block in FACTOR_BLOCKS.values()
    for key, value in (
        ("bandwidth_efficiency", 1),
        ("compute_efficiency", 1),
        ("layer_overhead_us", 0),
        ("step_overhead_ms", 0),
    )
]


def build(shape, dtype_name: str):
    """(config, model) for a shape, built as `shardwise calibrate` builds its models."""
    from runner.speed_measure import build as build_model
    from runner.speed_measure import llama_config

    config = llama_config(shape)
    return config, build_model(config, dtype_name)


def predict(config, dtype: str, prompt_tokens: int, speed, threads: int, extra: list[str]) -> dict:
    from planner.config.compose import make_plan

    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        plan = make_plan(
            "gpt2",
            "cpu",
            [
                f"policy.dtype={dtype}",
                "policy.context_tokens=1024",
                f"policy.performance.prompt_tokens={prompt_tokens}",
                f"hardware.memory_bandwidth_gb_per_s={speed.memory_bandwidth_gb_per_s:.3f}",
                f"hardware.all_core_bandwidth_gb_per_s={speed.all_core_bandwidth_gb_per_s:.3f}",
                f"hardware.fp32_tflops={speed.fp32_tflops:.5f}",
                f"hardware.bf16_tflops={speed.bf16_tflops:.5f}",
                f"hardware.cpu_count={threads}",
                *extra,
            ],
            model_path=folder,
        )
    return {**plan.performance, "params": plan.model.params_total, "layers": plan.model.num_layers}


def host_now(threads: int):
    from planner.hardware.host import host_speed

    host_speed.cache_clear()
    return host_speed(threads)


def run(models: dict, dtypes, args, extra: list[str]) -> list[dict]:
    # One thread: the process's CPU time is the time this generation would take on a core of its own,
    # which a machine shared with other busy processes cannot give in wall time. More threads: wall time.
    clock = time.process_time if args.threads == 1 and args.clock == "cpu" else time.perf_counter
    print(f"# clock: {'process CPU time' if clock is time.process_time else 'wall time'}")
    rows = []
    speed = host_now(args.threads)
    print(f"# probe: {speed.note}")
    for name, shape in models.items():
        for dtype in dtypes:
            config, model = build(shape, dtype)
            load = os.getloadavg()[0]
            ttft, rate = measure(
                model, args.prompt_tokens, args.new_tokens, args.runs, clock
            )  # as shardwise calibrate measures
            predicted = predict(config, dtype, args.prompt_tokens, speed, args.threads, extra)
            rows.append(
                {
                    "model": name,
                    "dtype": dtype,
                    "params": predicted["params"],
                    "layers": predicted["layers"],
                    "load": load,
                    "bandwidth_gb_per_s": speed.memory_bandwidth_gb_per_s,
                    "all_core_bandwidth_gb_per_s": speed.all_core_bandwidth_gb_per_s,
                    "gflops_fp32": speed.fp32_tflops * 1e3,
                    "predicted_tokens_per_s": predicted["decode_tokens_per_s"],
                    "measured_tokens_per_s": rate,
                    "predicted_ttft_s": predicted["ttft_s"],
                    "measured_ttft_s": ttft,
                    "binding": predicted["binding"],
                    "ttft_binding": predicted["ttft_binding"],
                }
            )
            del model
            print_row(rows[-1])
    return rows


def print_row(r: dict) -> None:
    decode_ratio = r["predicted_tokens_per_s"] / r["measured_tokens_per_s"]
    ttft_ratio = r["predicted_ttft_s"] / r["measured_ttft_s"]
    print(
        f"{r['model']:<11} {r['dtype']:<8} {r['params'] / 1e6:>6.0f}M  load {r['load']:4.1f}  "
        f"{r['bandwidth_gb_per_s']:5.1f} GB/s {r['gflops_fp32']:4.0f} GF | "
        f"decode tok/s pred {r['predicted_tokens_per_s']:7.2f} meas {r['measured_tokens_per_s']:7.2f} "
        f"ratio {decode_ratio:4.2f} | ttft s pred {r['predicted_ttft_s']:6.3f} meas {r['measured_ttft_s']:6.3f} "
        f"ratio {ttft_ratio:4.2f} | {r['binding']}",
        flush=True,
    )


def fit(rows: list[dict]) -> dict:
    """policy.performance factors from rows predicted with neutral factors (planner/speed/calibration.py)."""
    from planner.speed.calibration import Sample, fit_factors

    return fit_factors(
        [
            Sample(
                layers=r["layers"],
                ideal_step_s=1 / r["predicted_tokens_per_s"],
                measured_step_s=1 / r["measured_tokens_per_s"],
                ideal_prefill_s=r["predicted_ttft_s"],
                measured_prefill_s=r["measured_ttft_s"],
            )
            for r in rows
        ]
    )


def save_snapshot(path: str, speed, threads: int, factors: dict) -> None:
    """This host as a snapshot (`hardware=snapshot hardware.path=FILE`) with its speed and fitted factors."""
    from planner.hardware.devices import Hardware
    from planner.hardware.host import host_info
    from planner.hardware.snapshot import save_snapshot as write

    host = host_info()
    hw = Hardware(
        source="probe",
        host_ram_bytes=host.ram_bytes,
        cpu_count=threads,
        interconnect="none",
        probed=True,
        host_memory_bandwidth_gb_per_s=speed.memory_bandwidth_gb_per_s,
        host_memory_bandwidth_all_cores_gb_per_s=speed.all_core_bandwidth_gb_per_s,
        host_fp32_tflops=speed.fp32_tflops,
        host_bf16_tflops=speed.bf16_tflops,
        speed_factors=factors,
        notes=(speed.note, "speed factors fitted by benchmarks/speed_prediction.py --fit"),
    )
    print(f"# wrote {write(hw, path)}: plan with hardware=snapshot hardware.path={path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="fit CPU factors on FIT_MODELS instead of scoring")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=9)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--snapshot", help="with --fit: record this host and the fitted factors as a snapshot file")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="time generation by the process's CPU time (default, one thread only) or by the wall clock",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for torch and the probe's matmul (default 1: on a shared machine two spinning OpenMP "
        "threads lose most of their time waiting for each other)",
    )
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)  # before numpy and torch load their thread pools
    import torch

    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    dtypes = args.dtypes.split(",")
    print(
        f"# {'fit' if args.fit else 'score'}: torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; prompt {args.prompt_tokens} tokens, "
        f"{args.new_tokens} new tokens, median of {args.runs} runs"
    )
    rows = run(FIT_MODELS if args.fit else SCORE_MODELS, dtypes, args, NEUTRAL if args.fit else [])
    if args.fit:
        fitted = {}
        for dtype, block in FACTOR_BLOCKS.items():
            mine = [r for r in rows if r["dtype"] == dtype]
            if mine:
                fitted[block] = fit(mine)
                print(f"# fitted policy.performance.{block} ({dtype}, {len(mine)} models):", json.dumps(fitted[block]))
        if args.snapshot:
            save_snapshot(args.snapshot, host_now(args.threads), args.threads, fitted)
    else:
        ratios = [r["predicted_tokens_per_s"] / r["measured_tokens_per_s"] for r in rows]
        within = sum(1 for x in ratios if 0.75 <= x <= 1.25)
        ttft = [r["predicted_ttft_s"] / r["measured_ttft_s"] for r in rows]
        print(
            f"# decode: {within}/{len(rows)} within 25%, median ratio {statistics.median(ratios):.2f}; "
            f"ttft median ratio {statistics.median(ttft):.2f}"
        )
    print(f"# load average {os.getloadavg()[0]:.1f} at end; {time.perf_counter() - started:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
