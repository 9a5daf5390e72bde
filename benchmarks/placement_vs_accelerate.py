"""Our placement against transformers' `device_map="auto"`, case by case, with the same GPU memory.

    .venv/bin/python benchmarks/placement_vs_accelerate.py [--json out.json] [--only llama-3.1-8b]

For each case (model x GPU tier x count x context): our plan (the same path as
planner.config.compose.make_plan with policy.context_tokens=N), and what transformers 5 computes for
`from_pretrained(device_map="auto", max_memory=...)`: the model built from the profile's
architecture on the meta device in the plan's dtype, then transformers' own
`_get_device_map` (get_balanced_memory + infer_auto_device_map with the model's
`_no_split_modules`), given accelerate's documented practice: no max_memory of ours, but what
accelerate's get_max_memory reads itself, each GPU's free memory (on an idle GPU of the tier: its
free bytes, no headroom taken off), plus the tier's host RAM as "cpu" so overflow shows as offload.

gpt-oss: the meta model is built with `quantization_config` dropped, i.e. experts dequantized to
bf16. That is what accelerate sees whenever transformers cannot keep MXFP4 (and all a meta
build can hold); our plan keeps MXFP4 where the target can run it, so the weights columns differ.

Per case it prints GPUs used (ours / accelerate), the largest per-GPU load (ours: weights + KV +
activations + overhead; accelerate: weights only, as accelerate sizes it), and whether the KV
cache at the context fits where accelerate's layers landed: per accelerate GPU, its weights +
planner.memory.kv.layer_kv_bytes of its layers + the activations our cost model accounts for those
layers (and the lm_head) + the same overhead, against that GPU's usable bytes.

This is a model-based comparison: accelerate's layout is judged with shardwise's own KV and
activation model, not by measurement, so it cannot by itself show that one layout runs where the
other runs out of memory. What can be measured without GPUs is in placement_measured_cpu.py
(both device maps loaded and prefilled on the CPU); on GPUs nothing has been measured yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# (model, tier, count, context tokens)
CASES = [
    ("llama-3.1-8b", "rtx4090", 1, 8192),
    ("llama-3.1-8b", "rtx4090", 1, 32768),
    ("llama-3.1-8b", "rtx4090", 2, 8192),
    ("llama-3.1-8b", "rtx4090", 2, 32768),
    ("llama-3.1-8b", "a10g", 1, 8192),
    ("llama-3.1-8b", "a10g", 1, 32768),
    ("llama-3.1-70b", "h100_80gb", 2, 8192),
    ("llama-3.1-70b", "h100_80gb", 2, 65536),
    ("llama-3.1-70b", "h100_80gb", 4, 8192),
    ("llama-3.1-70b", "h100_80gb", 4, 65536),
    ("gpt-oss-20b", "h100_80gb", 1, 32768),
    ("gpt-oss-20b", "l4", 2, 8192),
    ("mixtral-8x7b", "a100_80gb", 2, 8192),
    ("mixtral-8x7b", "a100_80gb", 2, 32768),
    ("mixtral-8x7b", "a100_80gb", 4, 32768),
    ("qwen2.5-7b", "h100_80gb", 8, 32768),
    ("gpt-oss-120b", "h100_80gb", 2, 65536),
    ("gemma-2-9b", "l4", 1, 8192),
]


def our_plan(model: str, tier: str, count: int, context: int):
    """(plan, inventory, cost model, hardware, policy) through Hydra compose exactly as make_plan does."""
    from planner.config.compose import compose
    from planner.config.request import request_from_config
    from planner.driver.planning import plan_model
    from planner.hardware.tiers import resolve_hardware
    from planner.memory.terms import CostModel
    from planner.model.inventory import build_inventory

    cfg = compose(
        "plan", [f"model={model}", f"hardware={tier}", f"hardware.count={count}", f"policy.context_tokens={context}"]
    )
    hw = resolve_hardware(cfg.hardware, name=tier)
    request = request_from_config(cfg)
    spec, policy = request.model, request.policy
    plan = plan_model(spec, hw, policy)
    inv = build_inventory(
        spec.architecture,
        dtype=plan.model.dtype,
        quantization=spec.quantization,
        keep_quantized=plan.model.quantization.kept,
        checkpoint_dtype=spec.shipped_dtype,
        model_dir=spec.model_dir,
    )
    cost = CostModel(
        inv, plan.model.dtype, plan.kv_cache_dtype, plan.attn_implementation, policy.sessions, policy.overhead
    )
    return plan, inv, cost, hw, policy


_META_CACHE: dict = {}


def meta_model(model: str, dtype: str):
    """The profile's architecture built on the meta device in `dtype` (gpt-oss: dequantized experts)."""
    key = (model, dtype)
    if key not in _META_CACHE:
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        arch = dict(_common.read_option("model", model)["architecture"])
        arch.pop("quantization_config", None)
        config = AutoConfig.for_model(**arch)
        with init_empty_weights():
            _META_CACHE[key] = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    return _META_CACHE[key]


def accelerate_map(model_obj, max_memory: dict) -> dict:
    """transformers' device_map="auto" for these max_memory bytes (what from_pretrained would compute)."""
    try:
        from transformers.integrations.accelerate import _get_device_map

        return _get_device_map(model_obj, "auto", dict(max_memory), None)
    except ImportError:  # older transformers: the two public steps
        from accelerate.utils import get_balanced_memory, infer_auto_device_map

        no_split = list(model_obj._no_split_modules or [])
        balanced = get_balanced_memory(model_obj, max_memory=dict(max_memory), no_split_module_classes=no_split)
        return infer_auto_device_map(model_obj, max_memory=balanced, no_split_module_classes=no_split)


def device_of(name: str, device_map: dict):
    """Device of module `name` under a device_map (longest key that is the name or a parent of it)."""
    best, best_len = None, -1
    for key, device in device_map.items():
        if (key == "" or name == key or name.startswith(key + ".")) and len(key) > best_len:
            best, best_len = device, len(key)
    return best


def accelerate_loads(model_obj, device_map: dict) -> dict:
    """Bytes of weights per device as accelerate sized them."""
    from transformers.integrations.accelerate import compute_module_sizes

    sizes, _ = compute_module_sizes(model_obj)
    loads: dict = defaultdict(int)
    for key, device in device_map.items():
        loads[device] += sizes[key]
    return dict(loads)


def compare(case) -> dict:
    model, tier, count, context = case
    plan, inv, cost, hw, policy = our_plan(model, tier, count, context)
    from planner.memory.kv import layer_kv_bytes
    from planner.memory.terms import headroom

    usable = {
        d.id: max(d.free_bytes - headroom(d.free_bytes, policy.headroom_fraction, policy.headroom_mib << 20), 0)
        for d in hw.devices
    }
    for row in plan.budget:  # our budget rows must agree with this usable
        if str(row.device).isdigit():
            assert row.usable == usable[int(row.device)], (row, usable)
    max_memory = {d.id: d.free_bytes for d in hw.devices}  # what accelerate's get_max_memory reads itself
    max_memory["cpu"] = hw.host_ram_bytes
    obj = meta_model(model, plan.model.dtype)
    dmap = accelerate_map(obj, max_memory)
    acc_weights = accelerate_loads(obj, dmap)
    acc_gpus = sorted(d for d in acc_weights if isinstance(d, int) and acc_weights[d] > 0)
    offloaded = sorted(str(d) for d in acc_weights if not isinstance(d, int) and acc_weights[d] > 0)

    # KV at the context where accelerate's layers landed (our cost model on accelerate's layout)
    layer_names = {m.layer_index: m.name for m in inv.modules if m.kind == "layer"}
    head_names = [m.name for m in inv.modules if m.kind == "head"]
    layers_on: dict = defaultdict(list)
    for index, name in layer_names.items():
        layers_on[device_of(name, dmap)].append(inv.layers[index])
    head_device = device_of(head_names[0], dmap) if head_names else None
    chunk = plan.limits.prefill_chunk_tokens or context
    kv_elem = cost.kv_elem_bytes
    acc_needed, acc_oom_on = {}, []
    for gpu in acc_gpus:
        layers = layers_on.get(gpu, [])
        kv = sum(layer_kv_bytes(layer, context, cost.sessions, kv_elem) for layer in layers)
        act = cost.activations(layers, head_device == gpu, chunk, context)
        tensors = acc_weights[gpu] + kv + act
        need = tensors + cost.overhead(hw.devices[gpu], tensors)
        acc_needed[gpu] = need
        if need > usable[gpu]:
            acc_oom_on.append(gpu)

    ours_gpu_rows = [b for b in plan.budget if str(b.device).isdigit()]
    over_budget = [b.device for b in plan.budget if plan.fits and b.planned > b.usable]
    return {
        "model": model,
        "tier": tier,
        "count": count,
        "context": context,
        "ours_fits": plan.fits,
        "ours_strategy": plan.strategy,
        "ours_gpus": len(ours_gpu_rows),
        "ours_max_load": max((b.planned for b in ours_gpu_rows), default=0),
        "ours_weights_total": plan.model.weight_bytes,
        "ours_quant_kept": plan.model.quantization.kept,
        "ours_over_budget": over_budget,
        "usable_per_gpu": usable[0],
        "acc_gpus": len(acc_gpus),
        "acc_offloaded": offloaded,
        "acc_max_weights": max((acc_weights[g] for g in acc_gpus), default=0),
        "acc_weights_total": sum(acc_weights.values()),
        "acc_max_needed": max(acc_needed.values(), default=0),
        "acc_oom_on": acc_oom_on,
    }


def report(rows: list[dict]) -> None:
    headers = [
        "model",
        "hardware",
        "ctx",
        "ours",
        "GPUs o/a",
        "ours max GiB",
        "acc max wts GiB",
        "acc needs GiB",
        "usable GiB",
        "KV fits @acc",
        "acc offload",
        "wts GiB o/a",
    ]
    table = []
    for r in rows:
        ours = f"{r['ours_strategy']}" + ("" if r["ours_fits"] else " (no fit)")
        kv_fits = "yes" if not r["acc_oom_on"] else "OOM gpu " + ",".join(map(str, r["acc_oom_on"]))
        table.append(
            [
                r["model"],
                f"{r['count']}x{r['tier']}",
                r["context"],
                ours,
                f"{r['ours_gpus']}/{r['acc_gpus']}",
                _common.gib(r["ours_max_load"]),
                _common.gib(r["acc_max_weights"]),
                _common.gib(r["acc_max_needed"]),
                _common.gib(r["usable_per_gpu"]),
                kv_fits,
                ",".join(r["acc_offloaded"]) or "-",
                f"{_common.gib(r['ours_weights_total'])}/{_common.gib(r['acc_weights_total'])}",
            ]
        )
    _common.print_table(headers, table)
    oom = sum(1 for r in rows if r["acc_oom_on"] and r["ours_fits"])
    oom_both = sum(1 for r in rows if r["acc_oom_on"] and not r["ours_fits"])
    spread = sum(1 for r in rows if r["ours_fits"] and r["ours_gpus"] == 1 and r["acc_gpus"] > 1)
    more = sum(1 for r in rows if r["ours_fits"] and r["acc_gpus"] > r["ours_gpus"])
    over = sum(1 for r in rows if r["ours_over_budget"])
    no_fit = sum(1 for r in rows if not r["ours_fits"])
    print(
        f"\nsummary over {len(rows)} cases: accelerate's layout OOMs at the context where ours fits in {oom} "
        f"(and where ours says does-not-fit in {oom_both}); "
        f"accelerate spreads a model that fits on one GPU in {spread} (uses more GPUs than ours in {more}); "
        f"ours over budget in {over} (must be 0); ours says does-not-fit in {no_fit}"
    )
    print(
        "ours max = weights + KV + activations + overhead on our busiest GPU; acc max wts = accelerate's weights only; "
        "acc needs = accelerate's busiest GPU with the same KV, activations and overhead added; "
        "gpt-oss weights o/a: ours keeps MXFP4 where the target can, accelerate's meta model is dequantized bf16"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only cases of this model profile")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "Device N is not available" on a GPU-less machine
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cases = [c for c in CASES if not args.only or c[0] == args.only]
    if not cases:
        parser.error(f"--only {args.only!r} matches no case; models: {', '.join(sorted({c[0] for c in CASES}))}")
    rows = []
    for case in cases:
        rows.append(compare(case))
        _META_CACHE.pop(next((k for k in _META_CACHE if k[0] != case[0]), None), None)  # keep memory low
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 1 if any(r["ours_over_budget"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
