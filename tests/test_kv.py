"""KV cache bytes against what transformers' DynamicCache holds on tiny random CPU models.

Each model is built from a config sized like the inventory sees it; after a prefill of T tokens
(and after one more decoded token) the key/value tensors of `past_key_values` are measured two
ways: the bytes their shapes say, and the bytes of the storage they keep alive (a sliding layer's
tensors are views into the step's concatenation). planner.kv plans the storage.
"""

from __future__ import annotations

import pytest

from planner.kv import kv_bytes_per_token, kv_cache_bytes, layer_held_tokens, layer_kv_bytes
from planner.model.inventory import LayerSpec, build_inventory

COMMON = dict(vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY = {
    "gpt2_mha": dict(model_type="gpt2", n_embd=32, n_head=4, n_layer=2, n_positions=64, **COMMON),
    "llama_gqa": dict(
        model_type="llama",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=48,
        **COMMON,
    ),
    "gpt_oss_sliding_and_full": dict(
        model_type="gpt_oss",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=4,
        intermediate_size=32,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=8,
        **COMMON,
    ),
    "gemma2_alternating": dict(
        model_type="gemma2",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        num_hidden_layers=2,
        intermediate_size=48,
        sliding_window=6,
        **COMMON,
    ),
    "mistral_all_sliding": dict(
        model_type="mistral",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=48,
        sliding_window=8,
        **COMMON,
    ),
}
SESSIONS = 2
DTYPE_BYTES = 4  # the tiny models run in float32 on CPU


def _model(arch: dict):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(arch["model_type"], **{k: v for k, v in arch.items() if k != "model_type"})
    return AutoModelForCausalLM.from_config(config).eval()


def _measure(cache) -> tuple[list[int], list[int]]:
    """(bytes the tensors' shapes say, bytes of the storage they keep alive) per layer."""
    shaped, stored = [], []
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        shaped.append(k.numel() * k.element_size() + v.numel() * v.element_size())
        stored.append(k.untyped_storage().nbytes() + v.untyped_storage().nbytes())
    return shaped, stored


def _run(model, prompt_tokens: int):
    import torch

    ids = torch.randint(3, 60, (SESSIONS, prompt_tokens))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        after_prefill = _measure(cache)
        cache = model(torch.randint(3, 60, (SESSIONS, 1)), cache=cache, use_cache=True).past_key_values
    return after_prefill, _measure(cache)


def _view_bytes(layer: LayerSpec, context: int) -> int:
    tokens = context if layer.attention == "full" else min(context, layer.window - 1)
    return SESSIONS * tokens * 2 * layer.num_kv_heads * layer.head_dim * DTYPE_BYTES


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("prompt_tokens", [3, 7, 8, 20])
def test_kv_bytes_equal_what_the_cache_holds_after_prefill_and_decode(name, prompt_tokens):
    arch = TINY[name]
    inv = build_inventory(arch, dtype="float32")
    (pre_shaped, pre_stored), (dec_shaped, dec_stored) = _run(_model(arch), prompt_tokens)
    layers = inv.layers
    # right after a one-shot prefill every layer's storage holds the whole prompt
    assert pre_stored == [
        layer_kv_bytes(l, prompt_tokens, SESSIONS, DTYPE_BYTES, new_tokens=prompt_tokens) for l in layers
    ]
    # one decoded token later: sliding layers are back to min(context, window) tokens of storage
    context = prompt_tokens + 1
    assert dec_stored == [layer_kv_bytes(l, context, SESSIONS, DTYPE_BYTES) for l in layers]
    assert sum(dec_stored) == kv_cache_bytes(layers, context, SESSIONS, DTYPE_BYTES)
    # the tensors' shapes show one token less for a full sliding window: window - 1
    assert pre_shaped == [_view_bytes(l, prompt_tokens) for l in layers]
    assert dec_shaped == [_view_bytes(l, context) for l in layers]


def test_sliding_layers_hold_window_tokens_once_decoding_and_full_layers_grow():
    sliding = LayerSpec(index=0, attention="sliding", window=128, num_kv_heads=8, head_dim=64, moe=True)
    full = LayerSpec(index=1, attention="full", window=None, num_kv_heads=8, head_dim=64, moe=True)
    assert [layer_held_tokens(sliding, c) for c in (1, 127, 128, 129, 100_000)] == [1, 127, 128, 128, 128]
    assert layer_held_tokens(sliding, 100_000, new_tokens=100_000) == 100_000  # one-shot prefill
    assert layer_held_tokens(sliding, 100_000, new_tokens=512) == 127 + 512  # chunked prefill
    assert layer_held_tokens(full, 100_000) == 100_000
    assert layer_kv_bytes(full, 1000, 3, 2) == 3 * 1000 * 2048
    assert layer_kv_bytes(sliding, 0, 3, 2) == 0


def test_gpt_oss_kv_bytes_per_token_is_2048_per_layer_and_only_full_layers_grow():
    import json
    from pathlib import Path

    arch = json.loads((Path(__file__).parent / "data/reference_models/openai__gpt-oss-120b.json").read_text())
    inv = build_inventory(arch, dtype="bfloat16", quantization="mxfp4", keep_quantized=True)
    assert kv_bytes_per_token(inv.layers, 2) == 36 * 2048
    full = [l for l in inv.layers if l.attention == "full"]
    sliding = [l for l in inv.layers if l.attention == "sliding"]
    assert len(full) == 18 and len(sliding) == 18
    context = 131_072
    assert kv_cache_bytes(inv.layers, context, 1, 2) == 18 * 2048 * context + 18 * 2048 * 128
    assert (
        kv_cache_bytes(inv.layers, context + 1000, 1, 2) - kv_cache_bytes(inv.layers, context, 1, 2) == 18 * 2048 * 1000
    )
