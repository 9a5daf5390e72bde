"""KV cache bytes against what transformers' DynamicCache holds on tiny random CPU models.

Each model is built from a config sized like the inventory sees it; after a prefill of T tokens
(and after one more decoded token) the key/value tensors of `past_key_values` are measured two
ways: the bytes their shapes say, and the bytes of the storage they keep alive (a sliding layer's
tensors are views into the step's concatenation). planner.kv plans the storage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.kv import kv_bytes_per_token, kv_cache_bytes, layer_held_tokens, layer_kv_bytes
from planner.model.inventory import LayerSpec, build_inventory

REFERENCE = Path(__file__).parent / "data/reference_models"
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


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("prompt_tokens", [3, 7, 8, 20])
def test_kv_bytes_equal_what_the_cache_holds_after_prefill_and_decode(name, prompt_tokens):
    arch = TINY[name]
    inv = build_inventory(arch, dtype="float32")
    (pre_shaped, pre_stored), (dec_shaped, dec_stored) = _run(_model(arch), prompt_tokens)
    layers = inv.layers
    # right after a one-shot prefill every layer's storage holds the whole prompt
    assert pre_stored == [
        layer_kv_bytes(layer, prompt_tokens, SESSIONS, DTYPE_BYTES, new_tokens=prompt_tokens) for layer in layers
    ]
    # one decoded token later: sliding layers are back to min(context, window) tokens of storage
    context = prompt_tokens + 1
    assert dec_stored == [layer_kv_bytes(layer, context, SESSIONS, DTYPE_BYTES) for layer in layers]
    assert sum(dec_stored) == kv_cache_bytes(layers, context, SESSIONS, DTYPE_BYTES)
    # the tensors' shapes show one token less for a full sliding window: window - 1
    assert pre_shaped == [_view_bytes(layer, prompt_tokens) for layer in layers]
    assert dec_shaped == [_view_bytes(layer, context) for layer in layers]


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
    full = [layer for layer in inv.layers if layer.attention == "full"]
    sliding = [layer for layer in inv.layers if layer.attention == "sliding"]
    assert len(full) == 18 and len(sliding) == 18
    context = 131_072
    assert kv_cache_bytes(inv.layers, context, 1, 2) == 18 * 2048 * context + 18 * 2048 * 128
    assert (
        kv_cache_bytes(inv.layers, context + 1000, 1, 2) - kv_cache_bytes(inv.layers, context, 1, 2) == 18 * 2048 * 1000
    )


# Shrunken copies of today's attention designs (real field names, tiny sizes): MLA latents,
# hybrid Mamba / gated-DeltaNet stacks, chunked attention, ALiBi and state-only models.
MODERN = {
    "deepseek_v3_mla": dict(
        model_type="deepseek_v3",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
        intermediate_size=48,
        moe_intermediate_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        n_shared_experts=1,
        kv_lora_rank=16,
        q_lora_rank=24,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=12,
    ),
    "deepseek_v2_mla_no_q_lora": dict(
        model_type="deepseek_v2",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
        intermediate_size=48,
        moe_intermediate_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        n_shared_experts=1,
        kv_lora_rank=24,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=12,
    ),
    "jamba_mamba1_hybrid": dict(
        model_type="jamba",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        intermediate_size=48,
        num_experts=2,
        num_experts_per_tok=1,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
    ),
    "nemotron_h_mamba2_hybrid": dict(
        model_type="nemotron_h",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        layers_block_type=["mamba", "attention", "mlp", "mamba"],
        mamba_num_heads=4,
        mamba_head_dim=16,
        ssm_state_size=8,
        n_groups=2,
        conv_kernel=4,
    ),
    "qwen3_next_gated_deltanet": dict(
        model_type="qwen3_next",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        num_experts=4,
        num_experts_per_tok=2,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=12,
        linear_conv_kernel_dim=4,
        full_attention_interval=2,
    ),
    "granite4_hybrid": dict(
        model_type="granitemoehybrid",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        intermediate_size=48,
        shared_intermediate_size=48,
        num_local_experts=0,
        layer_types=["mamba", "attention", "mamba", "mamba"],
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_d_state=8,
        mamba_n_groups=2,
        mamba_d_conv=4,
        mamba_expand=2,
    ),
    "falcon_h1_parallel_hybrid": dict(
        model_type="falcon_h1",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=2,
        intermediate_size=48,
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_d_ssm=64,
        mamba_d_state=8,
        mamba_n_groups=2,
        mamba_d_conv=4,
    ),
    "falcon_mamba_state_only": dict(
        model_type="falcon_mamba", hidden_size=32, num_hidden_layers=2, state_size=8, conv_kernel=4, expand=2
    ),
    "mamba2_state_only": dict(
        model_type="mamba2",
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=4,
        head_dim=16,
        state_size=8,
        n_groups=2,
        conv_kernel=4,
        expand=2,
    ),
    "llama4_chunked": dict(
        model_type="llama4_text",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=4,
        intermediate_size=48,
        intermediate_size_mlp=48,
        num_local_experts=2,
        num_experts_per_tok=1,
        attention_chunk_size=8,
        interleave_moe_layer_step=1,
    ),
    "bloom_alibi": dict(model_type="bloom", hidden_size=32, n_head=4, n_layer=2),
}
BF16 = 2


def _measure_all(cache) -> tuple[list[int], list[int]]:
    """(KV storage bytes, conv + recurrent state bytes) per cache layer."""
    kv, state = [], []
    for layer in cache.layers:
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        kv.append(
            sum(t.untyped_storage().nbytes() for t in (k, v) if t is not None and t.numel())
            if getattr(layer, "is_initialized", False)
            else 0
        )
        held = 0
        for states in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
            held += sum(t.numel() * t.element_size() for t in (states or {}).values() if t is not None)
        state.append(held)
    return kv, state


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODERN))
@pytest.mark.parametrize("prompt_tokens", [5, 12])
def test_kv_and_state_equal_what_the_cache_holds_for_modern_attention(name, prompt_tokens):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from planner.kv import layer_state_bytes

    arch = {**MODERN[name], **COMMON}
    inv = build_inventory(arch, dtype="bfloat16")
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch["model_type"], **{k: v for k, v in arch.items() if k != "model_type"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        cache = model(torch.randint(3, 60, (SESSIONS, prompt_tokens)), use_cache=True).past_key_values
        cache = model(torch.randint(3, 60, (SESSIONS, 1)), cache=cache, use_cache=True).past_key_values
    kv, state = _measure_all(cache)
    context = prompt_tokens + 1
    assert len(cache.layers) == len(inv.layers)
    assert kv == [layer_kv_bytes(layer, context, SESSIONS, BF16) for layer in inv.layers]
    assert state == [layer_state_bytes(layer, SESSIONS, BF16) for layer in inv.layers]


def test_mla_caches_the_latent_not_the_expanded_heads():
    """DeepSeek-V3 as published: (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes x 61 layers."""
    arch = json.loads((REFERENCE / "deepseek-ai__DeepSeek-V3.json").read_text())
    inv = build_inventory(arch, dtype="bfloat16", quantization=None)
    assert {layer.attention for layer in inv.layers} == {"mla"}
    assert kv_bytes_per_token(inv.layers, 2) == 61 * (512 + 64) * 2 == 70_272


def test_hybrid_models_hold_kv_only_on_attention_layers_and_a_state_per_sequence():
    from planner.kv import state_bytes_per_sequence

    arch = json.loads((REFERENCE / "Qwen__Qwen3-Next-80B-A3B-Instruct.json").read_text())
    inv = build_inventory(arch, dtype="bfloat16")
    full = [layer for layer in inv.layers if layer.attention == "full"]
    linear = [layer for layer in inv.layers if layer.attention == "linear"]
    assert (len(full), len(linear)) == (12, 36)
    # 2 KV heads x head_dim 256, K and V, bf16
    assert kv_bytes_per_token(inv.layers, 2) == 12 * 2 * 2 * 256 * 2
    # conv: (2 x 16 x 128 + 32 x 128) x 4 in bf16; recurrent: 32 x 128 x 128 in fp32
    per_layer = (2 * 16 * 128 + 32 * 128) * 4 * 2 + 32 * 128 * 128 * 4
    assert state_bytes_per_sequence(inv.layers, 2) == 36 * per_layer


def test_llama4_chunked_layers_stop_growing_at_the_chunk():
    arch = json.loads((REFERENCE / "meta-llama__Llama-4-Scout-17B-16E-Instruct.json").read_text())
    inv = build_inventory(arch, dtype="bfloat16")
    chunked = [layer for layer in inv.layers if layer.attention == "chunked"]
    full = [layer for layer in inv.layers if layer.attention == "full"]
    assert (len(chunked), len(full)) == (36, 12)
    assert {layer.window for layer in chunked} == {8192}
    per_layer_token = 2 * 8 * 128 * 2
    grow = kv_cache_bytes(inv.layers, 200_001, 1, 2) - kv_cache_bytes(inv.layers, 200_000, 1, 2)
    assert grow == 12 * per_layer_token  # past the chunk only the global layers grow


def test_models_without_a_position_limit_take_a_stated_context_limit(tmp_path):
    bloom = {**MODERN["bloom_alibi"], **COMMON}
    inv = build_inventory(bloom, dtype="bfloat16")
    assert inv.context_limit == "default" and inv.max_context_tokens > 0
    assert any("no max_position_embeddings" in w for w in inv.warnings)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    inv = build_inventory(bloom, dtype="bfloat16", model_dir=str(tmp_path))
    assert (inv.max_context_tokens, inv.context_limit) == (2048, "tokenizer")
    mamba = {**MODERN["falcon_mamba_state_only"], **COMMON}
    inv = build_inventory(mamba, dtype="bfloat16")
    assert kv_bytes_per_token(inv.layers, 2) == 0 and inv.max_context_tokens > 0
    assert any("no KV cache" in w for w in inv.warnings)


@pytest.mark.parametrize(
    "arch,needle",
    [
        (dict(model_type="t5", is_encoder_decoder=True, d_model=32, num_layers=2, num_heads=4), "encoder-decoder"),
        (
            dict(model_type="bert", architectures=["BertForMaskedLM"], hidden_size=32, num_hidden_layers=2),
            "not a causal language model",
        ),
    ],
)
def test_encoder_decoder_and_encoder_only_models_are_refused_in_one_line(arch, needle):
    from planner.errors import ShardwiseError

    with pytest.raises(ShardwiseError, match=needle) as caught:
        build_inventory({**arch, **COMMON}, dtype="bfloat16")
    assert "\n" not in str(caught.value)


PUBLIC = Path(__file__).parent / "data/public_configs"


def _plan_public(tmp_path, stem: str, *overrides: str):
    from planner.config.compose import make_plan

    (tmp_path / "config.json").write_text((PUBLIC / f"{stem}.json").read_text())
    return make_plan("gpt2", "h100_80gb", list(overrides), model_path=str(tmp_path))


def test_state_only_mamba_plans_a_real_context_with_no_kv_and_a_fixed_state(tmp_path):
    plan = _plan_public(tmp_path, "tiiuae__falcon-mamba-7b")
    assert plan.fits and plan.limits.context_tokens >= 512
    assert plan.limits.kv_bytes_per_token == 0
    # 64 layers x (conv 8192 x 4 in bf16 + SSM 8192 x 16 in float32)
    assert plan.limits.state_bytes_per_sequence == 64 * (8192 * 4 * 2 + 8192 * 16 * 4)
    assert sum(b.state for b in plan.budget) == plan.limits.state_bytes_per_sequence
    assert any("no KV cache" in w for w in plan.warnings)


def test_alibi_bloom_takes_a_stated_context_or_the_policys(tmp_path):
    plan = _plan_public(tmp_path, "bigscience__bloom-560m")
    assert plan.fits and plan.limits.context_tokens == 32768
    assert any("no max_position_embeddings" in w for w in plan.warnings)
    assert plan.limits.kv_bytes_per_token == 24 * 2 * 1024 * 2
    longer = _plan_public(tmp_path, "bigscience__bloom-560m", "policy.context_tokens=65536")
    assert longer.fits and longer.limits.context_tokens == 65536


def test_jamba_holds_kv_on_its_attention_layers_and_state_on_its_mamba_layers(tmp_path):
    plan = _plan_public(tmp_path, "ai21labs__Jamba-v0.1", "policy.context_tokens=8192", "policy.sessions=2")
    assert plan.limits.kv_bytes_per_token == 4 * 2 * 8 * 128 * 2  # 4 attention layers of 32
    assert plan.limits.state_bytes_per_sequence == 28 * (8192 * 4 * 2 + 8192 * 16 * 4)
    assert sum(b.state for b in plan.budget) == 2 * plan.limits.state_bytes_per_sequence
