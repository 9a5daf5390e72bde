"""The general path against transformers itself, on this year's designs (tests/configs/*.json).

Each config mirrors the structure of a public 2025-2026 config.json (multimodal, MLA + indexer,
hybrid linear attention, per-layer KV shapes, odd-but-accepted values). The ground truth is the
model transformers builds from it on the meta device (exact parameters, every tensor placed once)
and the cache transformers fills on a real CPU forward of a tiny copy (KV and state per layer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from planner.errors import ShardwiseError
from planner.kv import kv_bytes_per_token, layer_kv_bytes, layer_state_bytes, state_bytes_per_sequence
from planner.model import architectures
from planner.model.inventory import build_inventory

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "tests/configs").glob("*.json"))
REFERENCE = sorted((ROOT / "tests/data/reference_models").glob("*.json"))
PROFILES = sorted(p for p in (ROOT / "conf/model").glob("*.yaml") if p.name != "auto.yaml")


def _arch(path: Path) -> dict:
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())["architecture"]


def _transformers_build(arch: dict, dtype: str = "bfloat16"):
    """The model transformers builds, the plain way: its config class, the named class, weights initialised."""
    import torch
    import transformers
    from transformers import CONFIG_MAPPING, AutoConfig

    cls = getattr(transformers, arch["architectures"][0])
    kwargs = {k: v for k, v in arch.items() if k not in ("model_type", "quantization_config", "auto_map")}
    if arch["model_type"] in CONFIG_MAPPING:
        config = AutoConfig.for_model(arch["model_type"], **kwargs)
    else:
        config = cls.config_class(**kwargs)
    with torch.device("meta"):
        model = cls(config)
    model.to(getattr(torch, dtype)).tie_weights()
    return model


def _unique(model) -> list:
    seen, out = set(), []
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        if id(t) not in seen:
            seen.add(id(t))
            out.append((name, t))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_params_and_module_coverage_equal_transformers_full_build(path):
    """Exact parameters for the whole model (encoders too); every parameter under exactly one device_map key."""
    import torch

    arch = _arch(path)
    inv = build_inventory(arch, dtype="bfloat16")
    model = _transformers_build(arch)
    assert inv.params_total == sum(p.numel() for p in model.parameters())
    names = [m.name for m in inv.modules]
    owned = {n: 0 for n in names}
    for full_name, t in _unique(model):
        owners = [n for n in names if full_name.startswith(n + ".")]
        assert len(owners) == 1, full_name
        if isinstance(t, torch.nn.Parameter):
            owned[owners[0]] += t.numel()
    assert owned == {m.name: m.params for m in inv.modules}
    assert len(inv.layers) == sum(m.kind == "layer" for m in inv.modules)
    # encoders (vision tower, projector) come before the layers: placement puts them with the first stage
    kinds = [m.kind for m in inv.modules]
    if "encoder" in kinds:
        assert max(i for i, k in enumerate(kinds) if k == "encoder") < kinds.index("layer")
        assert inv.image_tokens > 0 and inv.image_tokens_reason


def test_multimodal_models_count_their_encoders():
    """Qwen2.5-VL, Mistral 3, mllama: the vision tower and projector are weights of the plan."""
    for stem, encoders in [
        ("qwen2.5-vl-7b", ["model.visual"]),
        ("mistral-small-3.1-24b", ["model.vision_tower", "model.multi_modal_projector"]),
        ("llama-3.2-11b-vision", ["model.vision_model", "model.multi_modal_projector"]),
    ]:
        inv = build_inventory(_arch(ROOT / f"tests/configs/{stem}.json"), dtype="bfloat16")
        found = [m for m in inv.modules if m.kind == "encoder"]
        assert [m.name for m in found] == encoders, stem
        assert all(m.params > 0 for m in found)


def test_kv_per_token_of_full_size_configs():
    """Per-layer shapes read off transformers' cache: sliding layers with their own KV heads, V narrower than K,
    MLA latent + indexer keys, cross-attention layers that do not grow with the context."""
    expected = {
        # MiMo-V2-Flash: 39 sliding layers with 8 KV heads, 9 full with 4; K head 192, V head 128
        "mimo-v2-flash": 39 * 8 * (192 + 128) * 2 + 9 * 4 * (192 + 128) * 2,
        # DeepSeek-V3.2: latent 512 + rope key 64 + indexer key 128, 61 layers
        "deepseek-v3.2-exp": 61 * (512 + 64 + 128) * 2,
        # Kimi K2 resolves to DeepseekV3ForCausalLM: latent 512 + rope key 64
        "kimi-k2-instruct": 61 * (512 + 64) * 2,
        # Llama 3.2 11B Vision: 32 self-attention layers grow; the 8 cross-attention layers hold the image
        "llama-3.2-11b-vision": 32 * 2 * 8 * 128 * 2,
        # EXAONE 4 ("LLLG"): every layer 8 KV heads x 128, K and V
        "exaone-4.0-32b": 64 * 2 * 8 * 128 * 2,
        # Qwen3.5: KV only on the 16 full-attention layers
        "qwen3.5-27b-like": 16 * 2 * 4 * 256 * 2,
    }
    for stem, per_token in expected.items():
        inv = build_inventory(_arch(ROOT / f"tests/configs/{stem}.json"), dtype="bfloat16")
        assert kv_bytes_per_token(inv.layers, 2) == per_token, stem
    qwen35 = build_inventory(_arch(ROOT / "tests/configs/qwen3.5-27b-like.json"), dtype="bfloat16")
    # 48 gated-DeltaNet layers: conv (2 x 16 x 128 + 48 x 128) x 4 in bf16, recurrent 48 x 128 x 128 in fp32
    assert state_bytes_per_sequence(qwen35.layers, 2) == 48 * ((2 * 16 * 128 + 48 * 128) * 4 * 2 + 48 * 128 * 128 * 4)


@pytest.mark.slow
def test_representative_layer_forward_equals_the_whole_stack():
    """The one-token forward through one layer per distinct shape gives every layer the shapes the full run does."""
    from planner.model import meta, meta_cache

    for stem in ("mimo-v2-flash", "qwen3.5-27b-like", "deepseek-v3.2-exp", "exaone-4.0-32b"):
        arch = _arch(ROOT / f"tests/configs/{stem}.json")
        _, model, _ = meta._build(arch["model_type"], arch, "bfloat16")
        name, layers = meta._decoder_list(model, meta._cache_layer_count(model))
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        fast, how = meta_cache.probe_cache(model, owner, attr)
        assert "representative" in how, stem
        full = [meta_cache._shape(c) for c in meta_cache._forward(model, owner, attr, None)]
        assert fast == full, stem


# Tiny copies of the new designs: the cache transformers fills on a real CPU forward is the truth.
COMMON = dict(vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY = {
    "mimo_v2_flash_per_layer_heads": dict(
        model_type="mimo_v2_flash",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=12,
        v_head_dim=8,
        sliding_window=4,
        moe_intermediate_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    ),
    "deepseek_v32_indexer": dict(
        model_type="deepseek_v32",
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=24,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=12,
        index_head_dim=16,
        index_n_heads=2,
        index_topk=4,
    ),
    "qwen3_5_text_linear": dict(
        model_type="qwen3_5_text",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=8,
        linear_value_head_dim=12,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    ),
    "exaone4_lllg": dict(
        model_type="exaone4",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=4,
        sliding_window_pattern="LLLG",
        layer_types=["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(8)],
    ),
    "gemma4_text_shared_kv": dict(
        model_type="gemma4_text",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        sliding_window=4,
        num_kv_shared_layers=2,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=64,
        layer_types=["sliding_attention", "full_attention"] * 3,
    ),
}
SESSIONS = 2


def _measure(cache) -> tuple[list[int], list[int]]:
    """(KV + indexer storage bytes, conv + recurrent state bytes) per cache layer."""
    kv, state = [], []
    for layer in cache.layers:
        held = 0
        if getattr(layer, "is_initialized", False):
            for attr in ("keys", "values", "indexer_keys"):
                t = getattr(layer, attr, None)
                held += t.untyped_storage().nbytes() if t is not None and t.numel() else 0
        kv.append(held)
        fixed = 0
        for states in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
            fixed += sum(t.numel() * t.element_size() for t in (states or {}).values() if t is not None)
        state.append(fixed)
    return kv, state


@pytest.mark.parametrize("name", sorted(TINY))
def test_kv_and_state_equal_what_transformers_cache_holds(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = {**TINY[name], **COMMON}
    inv = build_inventory(arch, dtype="bfloat16")
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch["model_type"], **{k: v for k, v in arch.items() if k != "model_type"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    prompt = 6
    with torch.no_grad():
        cache = model(torch.randint(3, 60, (SESSIONS, prompt)), use_cache=True).past_key_values
        cache = model(torch.randint(3, 60, (SESSIONS, 1)), cache=cache, use_cache=True).past_key_values
    kv, state = _measure(cache)
    assert len(cache.layers) == len(inv.layers)
    assert kv == [layer_kv_bytes(layer, prompt + 1, SESSIONS, 2) for layer in inv.layers]
    assert state == [layer_state_bytes(layer, SESSIONS, 2) for layer in inv.layers]


def _tensor_key(t) -> tuple:
    return (t.name, t.numel, t.is_param, t.persistent, t.fixed_dtype, t.matrix)


@pytest.mark.slow
@pytest.mark.parametrize("path", REFERENCE + PROFILES, ids=[p.stem for p in REFERENCE + PROFILES])
def test_fast_path_equals_the_general_path(path):
    """Every fast-path family on every profile and reference config: the same tensors, KV, state and layout."""
    from planner.model.meta import describe_on_meta

    arch = _arch(path)
    model_type = architectures.model_type_of(arch)
    if model_type not in architectures.FAMILIES:
        pytest.skip(f"{model_type} has no fast path: the general path sizes it")
    fast = architectures.describe(model_type, arch)
    general = describe_on_meta(model_type, arch, "bfloat16")
    assert [(m.name, m.kind, m.tied_to, m.layer_index) for m in fast.modules] == [
        (m.name, m.kind, m.tied_to, m.layer_index) for m in general.modules
    ]
    for f, g in zip(fast.modules, general.modules):  # tensor order inside a module does not matter
        assert sorted(map(_tensor_key, f.tensors)) == sorted(map(_tensor_key, g.tensors)), f.name
    fast_inv = build_inventory(arch, dtype="bfloat16")
    assert fast_inv.source == "fast"
    assert [(r.attention, r.window, r.moe) for r in fast.layers] == [
        (r.attention, r.window, r.moe) for r in general.layers
    ]
    general_kv = sum(r.kv_elems_per_token for r in general.layers)
    assert kv_bytes_per_token(fast_inv.layers, 2) == 2 * general_kv
    assert state_bytes_per_sequence(fast_inv.layers, 2) == 0 == sum(r.state_elems for r in general.layers)
    assert (fast.num_kv_heads, fast.head_dim, fast.no_split_module, fast.has_tp_plan) == (
        general.num_kv_heads,
        general.head_dim,
        general.no_split_module,
        general.has_tp_plan,
    )
    assert sorted(fast.keep_fp32) == sorted(general.keep_fp32)
    assert (fast.num_experts, fast.experts_per_token) == (general.num_experts, general.experts_per_token)


@pytest.mark.parametrize(
    "arch,needle",
    [
        (dict(model_type="bert", architectures=["BertForMaskedLM"], hidden_size=32), "not a causal language model"),
        (dict(model_type="bert", hidden_size=32), "not a causal language model"),
        (dict(model_type="t5", architectures=["T5ForConditionalGeneration"], d_model=32), "encoder-decoder"),
        (dict(model_type="t5", d_model=32), "encoder-decoder"),
        (dict(model_type="not_a_model", architectures=["NotAModelForCausalLM"]), "no model type of that name"),
        (dict(model_type="olmo2", hidden_size=30, num_attention_heads=4), "cannot size architecture 'olmo2'"),
    ],
)
def test_what_transformers_refuses_is_one_line(arch, needle):
    with pytest.raises(ShardwiseError, match=needle) as caught:
        build_inventory({**arch, **COMMON}, dtype="bfloat16")
    assert "\n" not in str(caught.value)


def test_odd_but_accepted_values_and_aliases_plan():
    """EXAONE 4's "LLLG", kimi_k2 through the class in `architectures`, gemma-4's per-layer config."""
    exaone = build_inventory(_arch(ROOT / "tests/configs/exaone-4.0-32b.json"), dtype="bfloat16")
    assert [layer.attention for layer in exaone.layers[:4]] == ["sliding", "sliding", "sliding", "full"]
    kimi = build_inventory(_arch(ROOT / "tests/configs/kimi-k2-instruct.json"), dtype="bfloat16")
    assert kimi.model_class == "DeepseekV3ForCausalLM" and kimi.model_type == "kimi_k2"
    assert kimi.num_experts == 384 and kimi.experts_per_token == 8
    gemma4 = build_inventory(_arch(ROOT / "tests/configs/gemma-4-like.json"), dtype="bfloat16")
    full = [layer for layer in gemma4.layers if layer.attention == "full"]
    assert {(layer.num_kv_heads, layer.head_dim) for layer in full} == {(1, 512)}
    assert sum(layer.attention == "none" for layer in gemma4.layers) == 18  # layers reading another's KV


def test_gpt_oss_config_alone_ships_bf16_beside_its_mxfp4_experts(tmp_path):
    """The published config has no torch_dtype: MXFP4's unquantized tensors are bfloat16, not float32."""
    from planner.config.compose import make_plan

    (tmp_path / "config.json").write_text((ROOT / "tests/data/reference_models/openai__gpt-oss-120b.json").read_text())
    plan = make_plan("gpt2", "h100_80gb", [], model_path=str(tmp_path))
    assert plan.model.checkpoint_bytes == 65_248_815_744
    assert plan.model.params_total == 116_829_156_672


def _plan(tmp_path, stem: str, *overrides: str):
    from planner.config.compose import make_plan

    (tmp_path / "config.json").write_text((ROOT / f"tests/configs/{stem}.json").read_text())
    return make_plan("gpt2", "h100_80gb", list(overrides), model_path=str(tmp_path))


def test_images_per_request_prices_cross_attention_and_the_encoder(tmp_path):
    """mllama: each image's encoder tokens sit in the 8 cross-attention layers of every session."""
    text_only = _plan(tmp_path, "llama-3.2-11b-vision", "policy.images_per_request=0", "policy.context_tokens=8192")
    one = _plan(tmp_path, "llama-3.2-11b-vision", "policy.context_tokens=8192")
    two = _plan(tmp_path, "llama-3.2-11b-vision", "policy.images_per_request=2", "policy.context_tokens=8192")
    per_image = 8 * 6404 * 2 * 8 * 128 * 2  # layers x encoder tokens x K+V x kv heads x head dim x bf16
    state = [sum(b.state for b in p.budget) for p in (text_only, one, two)]
    assert state == [0, per_image, 2 * per_image]
    assert one.budget[0].activations >= text_only.budget[0].activations
    assert any(d.what == "images_per_request" for d in one.decisions)
    with pytest.raises(ShardwiseError, match="images_per_request"):
        _plan(tmp_path, "llama-3.2-11b-vision", "policy.images_per_request=-1")


@pytest.mark.slow
@pytest.mark.parametrize("stem", [p.stem for p in CONFIGS])
def test_every_test_config_plans_without_a_traceback(tmp_path, stem):
    plan = _plan(tmp_path, stem, "policy.context_tokens=4096")
    inv = build_inventory(_arch(ROOT / f"tests/configs/{stem}.json"), dtype="bfloat16")
    assert plan.model.params_total == inv.params_total
    # a 300B-1T model does not fit one H100: the plan says so (no traceback); every other one fits
    assert plan.fits == (plan.model.weight_bytes < 80 * 10**9)
    assert plan.limits.kv_bytes_per_token == kv_bytes_per_token(inv.layers, 2)
