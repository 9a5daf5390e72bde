"""Check table for the general path: parameters and KV bytes per token, ours against transformers' own.

For every config under tests/configs/ (and the reference configs outside the fast path) it prints
the planner's exact parameter count and KV bytes per token (bf16) beside what transformers gives
independently of the planner's code: the parameters of the class built the plain way (weights
initialised, on the meta device), and the keys, values and indexer keys its `DynamicCache` holds
after one token through every layer. Also the time `describe_on_meta` takes once transformers is
imported (the second of two runs, so the first one's lazy imports are not counted).

Run: .venv/bin/python benchmarks/general_path_table.py > benchmarks/results/general_path_table.txt
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = sorted((ROOT / "tests/configs").glob("*.json")) + [
    ROOT / "tests/data/reference_models" / name
    for name in (
        "deepseek-ai__DeepSeek-V3.json",
        "Qwen__Qwen3-Next-80B-A3B-Instruct.json",
        "meta-llama__Llama-4-Scout-17B-16E-Instruct.json",
    )
]


def transformers_side(arch: dict) -> tuple[int, int]:
    """(parameters, KV bytes per token) of the model transformers builds, its cache filled by one token."""
    import torch
    import transformers
    from transformers import CONFIG_MAPPING, AutoConfig, DynamicCache

    cls = getattr(transformers, arch["architectures"][0])
    kwargs = {k: v for k, v in arch.items() if k not in ("model_type", "quantization_config", "auto_map")}
    if arch["model_type"] in CONFIG_MAPPING:
        config = AutoConfig.for_model(arch["model_type"], **kwargs)
    else:
        config = cls.config_class(**kwargs)
    with torch.device("meta"):
        model = cls(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device="meta"), cache=cache, use_cache=True)
    per_token = 0
    for layer in cache.layers:
        for name in ("keys", "values", "indexer_keys"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.dim() >= 3 and t.shape[-2] == 1:
                per_token += t.numel() * t.element_size()
    return params, per_token


def main() -> None:
    from planner.memory.kv import kv_bytes_per_token, state_bytes_per_sequence
    from planner.model.inventory import build_inventory
    from planner.model.meta import _describe_on_meta

    print(
        f"{'config':44} {'params ours':>16} {'params transformers':>20} {'kv B/tok ours':>14} "
        f"{'kv B/tok cache':>14} {'state B/seq':>12} {'describe s':>10}  verdict"
    )
    for path in CONFIGS:
        arch = json.loads(path.read_text())
        inv = build_inventory(arch, dtype="bfloat16")
        start = time.perf_counter()
        _describe_on_meta(inv.model_type, arch, "bfloat16")
        seconds = time.perf_counter() - start
        params, cache_per_token = transformers_side(arch)
        ours = kv_bytes_per_token(inv.layers, 2)
        ok = params == inv.params_total and ours == cache_per_token
        print(
            f"{path.stem:44} {inv.params_total:>16,} {params:>20,} {ours:>14,} {cache_per_token:>14,} "
            f"{state_bytes_per_sequence(inv.layers, 2):>12,} {seconds:>10.2f}  {'exact' if ok else 'DIFFERS'}"
        )


if __name__ == "__main__":
    main()
