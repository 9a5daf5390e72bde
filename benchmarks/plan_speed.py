"""How fast shardwise plans: the cold CLI against transformers/accelerate, and an in-process sweep.

    .venv/bin/python benchmarks/plan_speed.py            # both parts, 5 cold runs each
    .venv/bin/python benchmarks/plan_speed.py --runs 3 --skip-sweep
    .venv/bin/python benchmarks/plan_speed.py --skip-cold --profile 15
    .venv/bin/python benchmarks/plan_speed.py --skip-cold --skip-sweep --runs 7   # (c) only
    .venv/bin/python benchmarks/plan_speed.py --worst-only                        # (d) only

(a) Cold: `shardwise plan model=gpt-oss-120b hardware=h100_80gb hardware.count=8` as a fresh
subprocess, against a fresh subprocess doing the same job with transformers + accelerate:
gpt-oss-120b built on the meta device from the profile's architecture, then
`get_balanced_memory` + `infer_auto_device_map` with max_memory of 8 GPUs of the tier's size.
The baseline drops `quantization_config` before building (from_config cannot build packed
MXFP4 tensors; accelerate sizes what the meta model holds: experts dequantized to bf16).
The two commands run alternately (A, B, B, A, A, B, ...: the order flips each round, so neither
always runs right after the other) for --runs rounds, after one unmeasured warm-up of each (page
cache) and after byte-compiling shardwise's packages (`byte_compile_ours`: pip compiles the baseline's).
Printed: each side's median with its min and max, and the ratio of the medians.
Target: ours / accelerate <= 0.1. `--cold-only` runs only this part.

(c) Hub id from the HF cache: `shardwise plan model=bench/qwen2.5-7b` with HF_HUB_OFFLINE=1 after
one online plan through tests/fake_hub.py (127.0.0.1) filled an HF cache in a temp directory with
its config.json and safetensors header table (the real Qwen2.5-7B tensor names and shapes, headers
only), against `shardwise plan model=qwen2.5-7b` (the profile). Medians of --runs fresh processes,
interleaved. Target: hub <= 1.5x profile.

(b) Sweep: every profile in conf/model (except auto) x every `kind: tier` option in
conf/hardware x counts 1, 2, 8, planned in-process through planner.driver.planning.plan_model with the
configs read once (no Hydra compose per plan; one compose is timed to show what it would add).
Timed twice: the planner alone (no fallback chain) and as the CLI does it (fallback chain
planned too). Target: 200+ plans <= 2 s. --profile N prints cProfile's top N functions.

(d) Worst cases (issue 10): the largest inputs planner/limits.py allows (256 nodes of 16 GPUs,
256 GPUs in a node, 65,536 sessions, sessions=auto, model=auto, each objective and strategy,
offload), planned in-process as `shardwise plan` does (compose included), each timed on its
second run (the first also imports transformers for models sized on the meta device) with the
layout chosen. Target: each <= 3 s.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

COLD_MODEL, COLD_TIER, COLD_COUNT = "gpt-oss-120b", "h100_80gb", 8
COUNTS = (1, 2, 8)
TARGET_COLD_RATIO = 0.1
TARGET_SWEEP_S = 2.0
HUB_PROFILE, HUB_ID, TARGET_HUB_RATIO = "qwen2.5-7b", "bench/qwen2.5-7b", 1.5
TARGET_WORST_S = 3.0
WORST = [  # (model, hardware, overrides): every search at its largest
    ("gpt-oss-120b", "l4", "hardware.count=16 hardware.nodes=256"),
    ("gpt-oss-120b", "h100_80gb", "hardware.count=256"),
    ("gpt-oss-120b", "h100_80gb", "hardware.count=16 hardware.nodes=256 policy.objective=latency"),
    ("gpt-oss-120b", "l4", "hardware.count=16 hardware.nodes=256 policy.objective=throughput policy.sessions=64"),
    ("gpt-oss-120b", "l4", "hardware.count=16 hardware.nodes=256 policy.sessions=auto"),
    ("gpt-oss-120b", "l4", "hardware.count=16 hardware.nodes=256 policy.sessions=65536"),
    ("gpt-oss-120b", "l4", "hardware.count=256 policy.sessions=65536"),
    ("auto", "l4", "hardware.count=16 hardware.nodes=256"),
    ("gpt-oss-120b", "l4", "hardware.count=16 hardware.nodes=256 policy.strategy=pipeline"),
    ("llama-3.1-70b", "h100_80gb", "hardware.count=16 hardware.nodes=256 policy.strategy=tensor_parallel"),
    ("deepseek-v3", "t4", "hardware.count=16 hardware.nodes=256"),
    ("deepseek-v3", "l4", "hardware.count=256 policy.objective=latency"),
    ("deepseek-v3", "l4", "policy.allow_cpu_offload=true policy.allow_disk_offload=true"),
    ("gpt-oss-120b", "l4", "hardware.count=16 hardware.nodes=2"),
    ("gpt-oss-120b", "l4", "hardware.count=16 hardware.nodes=16"),
]


# ---- (a) cold CLI against transformers/accelerate ----------------------------------------------
def shardwise_script() -> Path:
    script = Path(sys.executable).with_name("shardwise")
    if not script.is_file():
        raise SystemExit(f"no `shardwise` console script next to {sys.executable}: pip install -e . in this venv")
    return script


def baseline_child(tier: str, count: int) -> None:
    """The accelerate job, run in its own process: meta model + balanced memory + auto device map."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import get_balanced_memory, infer_auto_device_map
    from transformers import AutoConfig, AutoModelForCausalLM

    profile = _common.read_option("model", COLD_MODEL)
    arch = dict(profile["architecture"])
    arch.pop("quantization_config", None)  # from_config cannot build MXFP4-packed experts
    config = AutoConfig.for_model(**arch)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tier_cfg = _common.read_option("hardware", tier)
    per_gpu = int(tier_cfg["memory_mib"]) << 20
    max_memory = {i: per_gpu for i in range(count)}
    no_split = list(model._no_split_modules or [])
    balanced = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=torch.bfloat16)
    device_map = infer_auto_device_map(
        model, max_memory=balanced, no_split_module_classes=no_split, dtype=torch.bfloat16
    )
    used = sorted({d for d in device_map.values() if isinstance(d, int)})
    print(
        json.dumps(
            {
                "gpus_used": len(used),
                "offloaded": sorted({str(d) for d in device_map.values() if not isinstance(d, int)}),
            }
        )
    )


def byte_compile_ours() -> str:
    """Byte-compile shardwise's own packages, as the baseline's are, and say so ("" when nothing was to do).

    pip compiles what it installs into site-packages (transformers, accelerate, torch); an editable install of
    shardwise is never compiled, and where PYTHONDONTWRITEBYTECODE is set (this machine sets it) Python then
    compiles every shardwise module from source on every run: ~13% of a cold plan here, a cost neither a
    wheel install nor a machine that writes bytecode pays. compileall writes the bytecode a first run would.
    """
    import compileall
    import importlib.util

    folders = [Path(importlib.util.find_spec(name).origin).parent for name in ("planner", "runner", "shardwise")]
    if all(compileall.compile_dir(str(folder), quiet=2) for folder in folders):
        writes = "off" if sys.dont_write_bytecode else "on"
        return f"(shardwise's packages byte-compiled first, as pip compiles the baseline's; bytecode writing {writes})"
    return "(shardwise's packages could not all be byte-compiled: ours runs partly from source)"


def time_command(cmd: list[str], cwd: str, env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env={**(env or os.environ), "HYDRA_FULL_ERROR": "0"}
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def cold(runs: int) -> dict:
    ours_cmd = [
        str(shardwise_script()),
        "plan",
        f"model={COLD_MODEL}",
        f"hardware={COLD_TIER}",
        f"hardware.count={COLD_COUNT}",
        "json=true",
    ]
    base_cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-child"]
    compiled = byte_compile_ours()
    if compiled:
        print(compiled)
    ours, base = [], []
    with tempfile.TemporaryDirectory() as cwd:  # Hydra writes outputs/ under the working directory
        time_command(ours_cmd, cwd)
        _, base_out = time_command(base_cmd, cwd)
        for i in range(runs):  # alternated, order flipped each round, so machine load hits both alike
            pair = ((ours, ours_cmd), (base, base_cmd))
            for times, cmd in pair if i % 2 == 0 else pair[::-1]:
                times.append(time_command(cmd, cwd)[0])
        plan = json.loads(time_command(ours_cmd, cwd)[1])
    accelerate = json.loads(base_out.strip().splitlines()[-1])
    ours_gpus = sum(1 for b in plan["budget"] if b["device"] not in ("cpu", "disk"))
    result = {
        "runs": runs,
        "ours_median_s": _common.median(ours),
        "accelerate_median_s": _common.median(base),
        "ours_all_s": ours,
        "accelerate_all_s": base,
        "ours_gpus": ours_gpus,
        "ours_strategy": plan["strategy"],
        "ours_context_tokens": plan["limits"]["context_tokens"],
        "accelerate_gpus": accelerate["gpus_used"],
    }
    print(f"(a) cold plan, {COLD_MODEL} on {COLD_COUNT} x {COLD_TIER}, {runs} alternated rounds of fresh processes")
    _common.print_table(
        ["tool", "median s (min, max)", "runs s", "GPUs used", "notes"],
        [
            [
                "shardwise plan",
                _common.spread(ours),
                " ".join(f"{t:.2f}" for t in ours),
                ours_gpus,
                f"{plan['strategy']}, context {plan['limits']['context_tokens']}, MXFP4 "
                f"kept={plan['model']['quantization']['kept']}",
            ],
            [
                "transformers+accelerate",
                _common.spread(base),
                " ".join(f"{t:.2f}" for t in base),
                accelerate["gpus_used"],
                "meta model (experts dequantized: quantization_config dropped), weights only",
            ],
        ],
    )
    ratio = result["ours_median_s"] / result["accelerate_median_s"]
    per_round = [o / b for o, b in zip(ours, base)]
    result["ratio"] = ratio
    result["ratio_per_round"] = per_round
    verdict = "meets" if ratio <= TARGET_COLD_RATIO else "MISSES"
    print(
        f"ratio of medians ours/accelerate = {ratio:.3f} ({1 / ratio:.1f}x faster; per round "
        f"{min(per_round):.3f}-{max(per_round):.3f}); {verdict} the {TARGET_COLD_RATIO} target"
    )
    return result


# ---- (b) in-process sweep ----------------------------------------------------------------------
def sweep_inputs() -> tuple[dict, list, list]:
    configs, _ = _common.load_configs()
    models = _common.model_profile_names()
    hardware = [(tier, n, _common.tier_hardware(configs, tier, n)) for tier in _common.gpu_tier_names() for n in COUNTS]
    return configs, models, hardware


def run_sweep(configs, models, hardware, fallbacks: bool) -> tuple[int, int]:
    plans = fits = 0
    for model in models:
        for _tier, _n, hw in hardware:
            plan = _common.plan_without_hydra(configs, model, hw, fallbacks=fallbacks)
            plans += 1
            fits += plan.fits
    return plans, fits


def time_compose(samples: int = 3) -> float:
    from planner.config.compose import compose

    compose("plan", ["model=gpt2", "hardware=h100_80gb"])  # the first compose also sets Hydra up: not counted
    start = time.perf_counter()
    for i in range(samples):
        compose("plan", [f"model={_common.model_profile_names()[i]}", "hardware=h100_80gb"])
    return (time.perf_counter() - start) / samples


def sweep(profile_top: int) -> dict:
    start = time.perf_counter()
    configs, models, hardware = sweep_inputs()
    setup_s = time.perf_counter() - start
    results = {"setup_s": setup_s, "models": len(models), "hardware": len(hardware)}
    print(
        f"\n(b) in-process sweep: {len(models)} profiles x {len(hardware) // len(COUNTS)} GPU tiers x counts {COUNTS}"
    )
    print(
        f"setup (read {len(models)} profiles + tiers through planner.config, resolve {len(hardware)} hardware): "
        f"{setup_s:.3f} s"
    )
    rows = []
    for label, fallbacks in (("planner only", False), ("with fallback chains (as the CLI)", True)):
        start = time.perf_counter()
        plans, fits = run_sweep(configs, models, hardware, fallbacks)
        seconds = time.perf_counter() - start
        per_200 = seconds * 200 / plans
        results[label] = {
            "plans": plans,
            "fits": fits,
            "seconds": seconds,
            "plans_per_s": plans / seconds,
            "seconds_per_200": per_200,
        }
        rows.append(
            [
                label,
                plans,
                fits,
                f"{seconds:.2f}",
                f"{plans / seconds:.0f}",
                f"{seconds / plans * 1e3:.1f}",
                f"{per_200:.2f}",
                "meets" if per_200 <= TARGET_SWEEP_S else "MISSES",
            ]
        )
    _common.print_table(
        ["mode", "plans", "fit", "seconds", "plans/s", "ms/plan", "s per 200", f"<= {TARGET_SWEEP_S:.0f} s / 200"], rows
    )
    compose_s = time_compose()
    results["compose_s"] = compose_s
    n_pairs = len(models) * len(hardware) // len(COUNTS)
    print(
        f"one Hydra compose (after the first): {compose_s * 1e3:.0f} ms; composing once per model x tier "
        f"({n_pairs} pairs) would add {compose_s * n_pairs:.1f} s"
    )
    if profile_top:
        print(f"\ncProfile of the planner-only sweep, top {profile_top} by own time:")
        profiler = cProfile.Profile()
        profiler.enable()
        run_sweep(configs, models, hardware, False)
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.strip_dirs().sort_stats("tottime").print_stats(profile_top)
    return results


# ---- (c) hub id from the HF cache against the profile ----------------------------------------------
def qwen2_header_only_files(arch: dict, shards: int = 4) -> dict[str, bytes]:
    """config.json and safetensors files holding only headers: a Qwen2 checkpoint's tensor table, no data."""
    import struct

    h, inter, vocab = arch["hidden_size"], arch["intermediate_size"], arch["vocab_size"]
    heads, kv = arch["num_attention_heads"], arch["num_key_value_heads"]
    hd = h // heads
    shapes = {"model.embed_tokens.weight": [vocab, h]}
    for i in range(arch["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, rows in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd)):
            shapes |= {f"{p}self_attn.{proj}_proj.weight": [rows, h], f"{p}self_attn.{proj}_proj.bias": [rows]}
        shapes |= {
            f"{p}self_attn.o_proj.weight": [h, heads * hd],
            f"{p}mlp.gate_proj.weight": [inter, h],
            f"{p}mlp.up_proj.weight": [inter, h],
            f"{p}mlp.down_proj.weight": [h, inter],
            f"{p}input_layernorm.weight": [h],
            f"{p}post_attention_layernorm.weight": [h],
        }
    shapes |= {"model.norm.weight": [h], "lm_head.weight": [vocab, h]}
    names = list(shapes)
    files, weight_map = {"config.json": json.dumps(arch).encode()}, {}
    for s in range(shards):
        shard, header, offset = f"model-{s + 1:05d}-of-{shards:05d}.safetensors", {}, 0
        for name in names[s * len(names) // shards : (s + 1) * len(names) // shards]:
            size = 2 * _prod(shapes[name])  # BF16
            header[name] = {"dtype": "BF16", "shape": shapes[name], "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = shard
        encoded = json.dumps(header).encode()
        files[shard] = struct.pack("<Q", len(encoded)) + encoded
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def hub_from_cache(runs: int) -> dict:
    sys.path.insert(0, str(_common.REPO / "tests"))
    from fake_hub import FakeHub

    from planner.config.reader import read_option

    arch = dict(read_option("model", HUB_PROFILE)["architecture"])
    hub = FakeHub()
    hub.add(HUB_ID, qwen2_header_only_files(arch))
    script = str(shardwise_script())
    common = ["hardware=h100_80gb", "json=true"]
    profile_cmd, hub_cmd = (
        [script, "plan", f"model={HUB_PROFILE}", *common],
        [script, "plan", f"model={HUB_ID}", *common],
    )
    with tempfile.TemporaryDirectory() as cwd:
        with hub:
            time_command(hub_cmd, cwd, hub.env(Path(cwd) / "hf"))  # online once: config.json + header table cached
        env = hub.env(Path(cwd) / "hf", HF_HUB_OFFLINE="1")  # both commands in the same environment
        time_command(profile_cmd, cwd, env)
        ours, profile = [], []
        for _ in range(runs):
            profile.append(time_command(profile_cmd, cwd, env)[0])
            ours.append(time_command(hub_cmd, cwd, env)[0])
        hub_plan = json.loads(time_command(hub_cmd, cwd, env)[1])
        profile_plan = json.loads(time_command(profile_cmd, cwd, env)[1])
    result = {
        "runs": runs,
        "hub_median_s": _common.median(ours),
        "profile_median_s": _common.median(profile),
        "hub_all_s": ours,
        "profile_all_s": profile,
    }
    result["ratio"] = result["hub_median_s"] / result["profile_median_s"]
    print(
        f"\n(c) {HUB_ID} from the HF cache (HF_HUB_OFFLINE=1) against the {HUB_PROFILE} profile, {runs} fresh processes"
    )
    rows = []
    for label, p, times in (("profile", profile_plan, profile), ("hub id, cached", hub_plan, ours)):
        m = p["model"]
        rows.append(
            [
                label,
                f"{_common.median(times):.3f}",
                " ".join(f"{t:.2f}" for t in times),
                f"{m['params_total']:,}",
                f"{m['checkpoint_bytes']:,}",
                p["limits"]["context_tokens"],
            ]
        )
    _common.print_table(["source", "median s", "runs s", "params", "checkpoint bytes", "context"], rows)
    verdict = "meets" if result["ratio"] <= TARGET_HUB_RATIO else "MISSES"
    print(f"ratio hub/profile = {result['ratio']:.2f}; {verdict} the {TARGET_HUB_RATIO}x target")
    return result


# ---- (d) worst cases --------------------------------------------------------------------------
def _layout(plan) -> str:
    gpus = sum(1 for b in plan.budget if b.device not in ("cpu", "disk")) * max(plan.tp_size, 1)
    shape = f"{plan.strategy} {gpus} GPU(s)" + (f" on {plan.nodes} nodes" if plan.nodes > 1 else "")
    if plan.strategy == "tensor_parallel":
        shape += f" (tp={plan.tp_size} pp={plan.pp_size})"
    return f"{'fits' if plan.fits else 'DOES NOT FIT'}: {shape}, {plan.limits.context_tokens:,} tokens, " + (
        f"{plan.limits.sessions} session(s)"
    )


def worst_cases() -> dict:
    from planner.config.compose import make_plan

    print("\n(d) worst cases in-process (compose included), second run of each")
    rows, results = [], {}
    for model, hardware, overrides in WORST:
        args = overrides.split()
        start = time.perf_counter()
        make_plan(model, hardware, args)
        first = time.perf_counter() - start
        start = time.perf_counter()
        plan = make_plan(model, hardware, args)
        seconds = time.perf_counter() - start
        name = f"{model} {hardware} {overrides}"
        results[name] = {"first_s": first, "seconds": seconds, "layout": _layout(plan)}
        verdict = "meets" if seconds <= TARGET_WORST_S else "MISSES"
        rows.append([name, f"{first:.2f}", f"{seconds:.2f}", verdict, _layout(plan)])
    _common.print_table(["plan", "first s", "s", f"<= {TARGET_WORST_S:.0f} s", "layout"], rows)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold runs of each command (median reported)")
    parser.add_argument("--skip-cold", action="store_true", help="skip (a), the subprocess comparison")
    parser.add_argument("--skip-sweep", action="store_true", help="skip (b), the in-process sweep")
    parser.add_argument("--skip-hub", action="store_true", help="skip (c), the hub id from the HF cache")
    parser.add_argument("--worst-only", action="store_true", help="run only (d), the worst cases")
    parser.add_argument("--cold-only", action="store_true", help="run only (a), the cold CLI against accelerate")
    parser.add_argument("--profile", type=int, default=15, metavar="N", help="cProfile top N after the sweep (0: off)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_child:
        baseline_child(COLD_TIER, COLD_COUNT)
        return 0
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    results = {}
    if args.worst_only:
        args.skip_cold = args.skip_sweep = args.skip_hub = True
    if args.cold_only:
        args.skip_sweep = args.skip_hub = True
    if not args.skip_cold:
        results["cold"] = cold(args.runs)
    if not args.skip_sweep:
        results["sweep"] = sweep(args.profile)
    if not args.skip_hub:
        results["hub"] = hub_from_cache(args.runs)
    if not args.cold_only:
        results["worst"] = worst_cases()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
