"""Score the vLLM engine model (planner/vllm) on the public calibration rows, side by side.

    python benchmarks/vllm_calibration.py            # memory + decode tables, fractions within tolerance
    python benchmarks/vllm_calibration.py --fit      # refit policy.performance.vllm on the fit rows first

Memory: every startup record of benchmarks/data/vllm/startup_memory_calibration.json (copied from
the shared reference): predicted vs logged KV-cache GiB per GPU (within max(5%, 1 GiB)), KV tokens,
max concurrency and whether vLLM starts. Decode: every row of decode_measured_calibration.csv
(Qwen3-32B on H100, vLLM 0.12): predicted vs measured time per output token (within 25%) and time
to first token, beside a baseline that reads only the weights once per step (bandwidth roofline).

The speed factors were fitted on the FIT rows only (bf16, TP 2 and 8); the HELD-OUT rows (bf16 TP 4,
and the three FP8 rows at TP 1, 2, 8) never entered the fit and are scored separately. All rows are
one model on one GPU kind: a score here is calibration, not the accuracy on other models.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from planner.units import GIB  # noqa: E402
from planner.vllm import memory as vm  # noqa: E402
from planner.vllm import speed as vs  # noqa: E402
from planner.vllm.rules import default_batching, rules_for  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "vllm"
PROFILES = {  # calibration models that have a profile in conf/model/
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b",
    "microsoft/phi-4": "phi-4",
}
TIERS = {"H100": "h100_80gb", "A100": "a100_80gb"}


def architecture(model: str) -> dict:
    extra = json.loads((DATA / "models.json").read_text())
    if model in extra:
        return extra[model]
    from planner.config.reader import profile_spec

    return profile_spec(PROFILES[model]).architecture


def hardware(gpu: str, count: int):
    from planner.config.reader import read_option
    from planner.hardware.tiers import resolve_hardware

    tier = next(t for key, t in TIERS.items() if key in gpu)
    return resolve_hardware({**read_option("hardware", tier), "count": count}, name=tier)


def inventory(model: str, fp8: bool = False):
    from planner.decide.quant_support import ON_LOAD
    from planner.model.inventory import build_inventory

    return build_inventory(architecture(model), dtype="bfloat16", load_quantization=ON_LOAD["fp8"] if fp8 else None)


def memory_rows() -> list[dict]:
    rows = []
    for record in json.loads((DATA / "startup_memory_calibration.json").read_text()):
        hw = hardware(record["gpu"], record["tp"] * record["pp"])
        device = hw.devices[0]
        mnbt_default, seqs_default, _ = default_batching(vm.cuda_total(device.total_bytes), device.name)
        shape = vm.Shape(
            tp=record["tp"],
            pp=record["pp"],
            max_model_len=record["max_model_len"],
            max_num_batched_tokens=record["max_num_batched_tokens"] or mnbt_default,
            max_num_seqs=record["max_num_seqs"] or seqs_default,
            utilization=record["gpu_memory_utilization"],
            dtype_bytes=2,
            kv_bytes=2,
        )
        got = vm.vllm_memory(
            inventory(record["model"]), shape, rules_for(record["vllm_version"]), device.total_bytes, device.free_bytes
        )
        log = record["log"]
        kv = got.kv_cache_bytes / GIB
        rows.append(
            {
                "id": record["id"],
                "version": record["vllm_version"],
                "kv_pred": kv,
                "kv_log": log["kv_cache_gib"],
                "ok": abs(kv - log["kv_cache_gib"]) <= max(0.05 * log["kv_cache_gib"], 1.0),
                "tokens": (got.kv_cache_tokens, log["kv_cache_tokens"]),
                "concurrency": (got.max_concurrency, log["max_concurrency"]),
                "verdict": ("starts" if got.fits else "fails", "starts" if record["outcome"] == "ok" else "fails"),
            }
        )
    return rows


def decode_points() -> list[dict]:
    with (DATA / "decode_measured_calibration.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    points = []
    for row in rows:
        fp8 = row["precision"] == "fp8"
        tp = int(row["tp_size"])
        held_out = fp8 or tp == 4
        points.append(
            {
                "fp8": fp8,
                "tp": tp,
                "isl": int(row["isl"]),
                "osl": int(row["osl"]),
                "conc": int(row["batch_size"]),
                "tpot": float(row["silicon_tpot_ms"]),
                "ttft": float(row["silicon_ttft_ms"]),
                "split": "held-out" if held_out else "fit",
            }
        )
    return points


_MODELS: dict = {}


def prepared(point: dict, link_efficiency: float = 0.7):
    """(SpeedModel, max concurrency at prompt + output tokens, batched tokens) for one measured point."""
    key = (point["fp8"], point["tp"], point["isl"] + point["osl"])
    if key not in _MODELS:
        inv = inventory("Qwen/Qwen3-32B", fp8=point["fp8"])
        hw = hardware("H100", point["tp"])
        device = hw.devices[0]
        mnbt, seqs, _ = default_batching(vm.cuda_total(device.total_bytes), device.name)
        shape = vm.Shape(point["tp"], 1, key[2], mnbt, seqs, 0.9, 2, 2)
        mem = vm.vllm_memory(inv, shape, rules_for("0.19.0"), device.total_bytes, device.free_bytes)
        model = vs.speed_model(inv, shape, device, hw, fp8_math=point["fp8"], link_efficiency=link_efficiency)
        _MODELS[key] = (model, mem.max_concurrency, mnbt)
    return _MODELS[key]


def predict(point: dict, factors: vs.VllmSpeedFactors) -> vs.Served:
    model, concurrency, mnbt = prepared(point)
    return vs.serve_speed(
        model,
        factors,
        sessions=point["conc"],
        prompt_tokens=point["isl"],
        output_tokens=point["osl"],
        max_concurrency=concurrency,
        max_num_batched_tokens=mnbt,
    )


def baseline_ms(point: dict) -> float:
    """Weights read once per step at the datasheet bandwidth: the naive decode roofline."""
    model, _, _ = prepared(point)
    return (
        (model.dense_weight_bytes + model.expert_bytes_per_layer * model.moe_layers) / model.bandwidth_bytes_per_s * 1e3
    )


def tpot_ms(point: dict, factors: vs.VllmSpeedFactors) -> float:
    """Only the mean step (what the fit needs), as serve_speed computes it."""
    model, concurrency, mnbt = prepared(point)
    running = max(1, min(point["conc"], math.floor(concurrency)))
    return vs.mean_step_seconds(model, factors, running, point["isl"], point["osl"], mnbt)[0] * 1e3


def fit(points: list[dict]) -> vs.VllmSpeedFactors:
    """Exhaustive grid over three factors, minimising the squared log ratio of predicted to measured TPOT on
    the fit rows (deterministic: no start point). The step overhead is not fitted: on TP >= 2 rows it trades
    one for one with the all-reduce latency (both are constants per step); it stays at the assumed 1 ms."""
    rows = [p for p in points if p["split"] == "fit"]
    best, best_loss = None, math.inf
    grid = itertools.product(
        [x / 100 for x in range(50, 101, 2)],  # bandwidth efficiency
        [x / 100 for x in range(20, 96, 3)],  # compute efficiency
        range(0, 61, 2),  # all-reduce latency, us
    )
    for bandwidth, compute, latency in grid:
        factors = vs.VllmSpeedFactors(bandwidth, compute, 1.0, float(latency))
        loss = sum(math.log(tpot_ms(p, factors) / p["tpot"]) ** 2 for p in rows)
        if loss < best_loss:
            best, best_loss = factors, loss
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="refit the speed factors on the fit rows and use them")
    args = parser.parse_args()

    print("== memory: KV cache per GPU, predicted vs vLLM's log (tolerance max(5%, 1 GiB)) ==")
    print(
        f"{'record':22} {'ver':>8} {'pred GiB':>9} {'log GiB':>8} {'ratio':>6} {'tokens pred/log':>22} "
        f"{'concurrency pred/log':>21} {'verdict pred/log':>17}"
    )
    mem = memory_rows()
    for r in mem:
        print(
            f"{r['id']:22} {r['version']:>8} {r['kv_pred']:9.2f} {r['kv_log']:8.2f} {r['kv_pred'] / r['kv_log']:6.3f} "
            f"{r['tokens'][0]:>10,}/{r['tokens'][1]:<11,} {r['concurrency'][0]:>9.2f}/{r['concurrency'][1]:<11.2f} "
            f"{r['verdict'][0]:>8}/{r['verdict'][1]}"
        )
    for version in sorted({r["version"] for r in mem}):
        sub = [r for r in mem if r["version"] == version]
        print(
            f"vLLM {version}: KV within tolerance {sum(r['ok'] for r in sub)}/{len(sub)}; verdict agrees "
            f"{sum(r['verdict'][0] == r['verdict'][1] for r in sub)}/{len(sub)}"
        )

    points = decode_points()
    factors = fit(points) if args.fit else vs.VllmSpeedFactors(**_configured())
    print()
    print(f"== decode: time per output token (Qwen3-32B, H100 SXM, vLLM 0.12), factors {factors} ==")
    print(
        f"{'split':8} {'prec':4} {'tp':>2} {'isl':>5} {'osl':>5} {'conc':>4} {'tpot meas':>9} {'pred':>7} {'ratio':>6} "
        f"{'baseline':>8} {'ratio':>6} {'ttft meas':>9} {'pred':>8} {'ratio':>6}"
    )
    scored = {"fit": [], "held-out": [], "held-out bf16 TP 4": [], "held-out fp8": []}
    for p in points:
        got = predict(p, factors)
        base = baseline_ms(p)
        ratio = got.tpot_ms / p["tpot"]
        scored[p["split"]].append((ratio, base / p["tpot"], got.ttft_ms / p["ttft"]))
        if p["split"] == "held-out":
            scored["held-out fp8" if p["fp8"] else "held-out bf16 TP 4"].append(scored["held-out"][-1])
        print(
            f"{p['split']:8} {'fp8' if p['fp8'] else 'bf16':4} {p['tp']:>2} {p['isl']:>5} {p['osl']:>5} {p['conc']:>4} "
            f"{p['tpot']:9.2f} {got.tpot_ms:7.2f} {ratio:6.2f} {base:8.2f} {base / p['tpot']:6.2f} {p['ttft']:9.1f} "
            f"{got.ttft_ms:8.1f} {got.ttft_ms / p['ttft']:6.2f}"
        )
    for split, values in scored.items():
        within = sum(abs(r - 1) <= 0.25 for r, _, _ in values)
        base_within = sum(abs(b - 1) <= 0.25 for _, b, _ in values)
        ttft_within = sum(abs(t - 1) <= 0.25 for _, _, t in values)
        print(
            f"{split}: TPOT within 25% {within}/{len(values)} (baseline {base_within}/{len(values)}); "
            f"TTFT within 25% {ttft_within}/{len(values)}; median TPOT ratio "
            f"{sorted(r for r, _, _ in values)[len(values) // 2]:.2f}"
        )


def _configured() -> dict:
    """policy.performance.vllm as shipped in conf/policy/default.yaml."""
    from planner.config.reader import read_option

    return dict(read_option("policy", "default")["performance"]["vllm"])


if __name__ == "__main__":
    main()
