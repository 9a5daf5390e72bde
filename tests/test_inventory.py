"""The inventory against transformers itself: exact parameters, module coverage, bytes as loaded and shipped.

Every reference config.json and every conf/model profile is sized by the fast path and compared
with the model transformers builds on the meta device from the same config.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from planner.errors import ShardwiseError
from planner.model import architectures
from planner.model.headers import read_index
from planner.model.inventory import build_inventory

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = sorted((ROOT / "tests/data/reference_models").glob("*.json"))
PROFILES = sorted(p for p in (ROOT / "conf/model").glob("*.yaml") if p.name != "auto.yaml")


def _arch(path: Path) -> dict:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return yaml.safe_load(path.read_text())["architecture"]


def _meta_model(arch: dict, dtype: str = "float32"):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = architectures.model_type_of(arch)
    config = AutoConfig.for_model(
        model_type, **{k: v for k, v in arch.items() if k not in ("model_type", "quantization_config")}
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.tie_weights()
    return model


def _unique_tensors(model):
    seen, out = set(), []
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        if id(t) not in seen:
            seen.add(id(t))
            out.append((name, t))
    return out


def _owners(name: str, entry_names) -> list[str]:
    return [e for e in entry_names if name.startswith(e + ".")]


CONFIGS = [pytest.param(p, id=p.stem) for p in REFERENCE + PROFILES]


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS)
def test_fast_path_params_and_modules_match_the_meta_build(path):
    arch = _arch(path)
    inv = build_inventory(arch, dtype="bfloat16")
    # families outside the fast path (MLA, hybrids, chunked attention) are sized on the meta device
    assert inv.source == ("fast" if architectures.model_type_of(arch) in architectures.FAMILIES else "meta")
    model = _meta_model(arch)
    assert inv.params_total == sum(p.numel() for p in model.parameters())  # tied weights once
    names = [m.name for m in inv.modules]
    assert len(names) == len(set(names))
    for full_name, _ in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        assert len(_owners(full_name, names)) == 1, full_name
    # each entry's params equal the meta tensors it owns, tied weights counted at their owner only
    by_entry = {n: 0 for n in names}
    for full_name, t in _unique_tensors(model):
        if isinstance(t, __import__("torch").nn.Parameter):
            by_entry[_owners(full_name, names)[0]] += t.numel()
    assert by_entry == {m.name: m.params for m in inv.modules}
    assert inv.no_split_module in model._no_split_modules
    assert len(inv.layers) == model.config.num_hidden_layers
    assert inv.tied_embeddings == (model.get_output_embeddings().weight is model.get_input_embeddings().weight)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS)
def test_loaded_bytes_equal_the_meta_build_in_that_dtype(path):
    """bf16 and fp32: every tensor's bytes as transformers creates it in that dtype (buffers keep their own dtype)."""
    arch = _arch(path)
    for dtype in ("bfloat16", "float32"):
        inv = build_inventory(arch, dtype=dtype)  # a shipped quantization is dequantized unless kept
        model = _meta_model(arch, dtype)
        names = [m.name for m in inv.modules]
        expected = {n: 0 for n in names}
        for full_name, t in _unique_tensors(model):
            expected[_owners(full_name, names)[0]] += t.numel() * t.element_size()
        assert {m.name: m.bytes for m in inv.modules} == expected, dtype


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS)
def test_layer_attention_kinds_follow_the_cache_transformers_builds(path):
    from transformers import DynamicCache

    arch = _arch(path)
    inv = build_inventory(arch, dtype="bfloat16")
    model = _meta_model(arch)
    cache = DynamicCache(config=model.config)
    # the cache layer class says what the layer keeps: every token, a window, a fixed state, or nothing
    grows = {"DynamicLayer": ("full", "mla"), "DynamicSlidingWindowLayer": ("sliding", "chunked")}
    grows |= {"LinearAttentionLayer": ("linear",), "DummyLayer": ("none",)}
    assert [layer.attention in grows[type(c).__name__] for layer, c in zip(inv.layers, cache.layers)] == [True] * len(
        cache.layers
    )
    windows = [getattr(layer, "sliding_window", None) for layer in cache.layers]
    assert [layer.window for layer in inv.layers] == windows
    text = model.config
    if getattr(text, "kv_lora_rank", None):  # MLA: one latent "head" per layer
        assert {layer.kv_width for layer in inv.layers} == {text.kv_lora_rank + text.qk_rope_head_dim}
    else:
        assert inv.num_kv_heads == (getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        assert {layer.head_dim for layer in inv.layers} == {head_dim}
    assert inv.max_context_tokens == getattr(text, "max_position_embeddings", None) or text.n_positions


GPT_OSS = {
    "20b": (20_914_757_184, 13_761_264_768, 41_829_514_368),
    "120b": (116_829_156_672, 65_248_815_744, 233_658_313_344),
}


@pytest.mark.parametrize("size", sorted(GPT_OSS))
def test_gpt_oss_params_checkpoint_and_dequantized_bytes_are_exact(size):
    arch = json.loads((ROOT / f"tests/data/reference_models/openai__gpt-oss-{size}.json").read_text())
    params, shipped, dequantized = GPT_OSS[size]
    kept = build_inventory(
        arch, dtype="bfloat16", quantization="mxfp4", keep_quantized=True, checkpoint_dtype="bfloat16"
    )
    dense = build_inventory(
        arch, dtype="bfloat16", quantization="mxfp4", keep_quantized=False, checkpoint_dtype="bfloat16"
    )
    assert kept.params_total == dense.params_total == params
    assert kept.checkpoint_bytes == dense.checkpoint_bytes == shipped
    rotary = next(m for m in dense.modules if m.name == "model.rotary_emb")
    assert rotary.params == 0 and rotary.bytes == 2 * 32 * 4  # inv_freq + original_inv_freq, head_dim/2 fp32 each
    assert dense.weight_bytes - rotary.bytes == dequantized
    # kept in memory exactly as shipped: MXFP4 experts plus bf16 rest (plus the fp32 rotary buffers)
    assert kept.weight_bytes == shipped + rotary.bytes
    assert sum(m.quantized_bytes for m in kept.modules) > 0
    assert all(m.quantized_bytes == 0 for m in kept.modules if m.kind != "layer")
    assert sum(m.quantized_bytes for m in dense.modules) == 0
    assert [layer.attention for layer in kept.layers].count("full") == len(kept.layers) // 2
    assert {layer.window for layer in kept.layers if layer.attention == "sliding"} == {128}
    assert kept.no_split_module == "GptOssDecoderLayer" and kept.has_tp_plan
    assert kept.max_context_tokens == 131072 and kept.num_experts > 0 and all(layer.moe for layer in kept.layers)


def test_gpt_oss_float16_keeps_its_norms_in_float32():
    arch = json.loads((ROOT / "tests/data/reference_models/openai__gpt-oss-20b.json").read_text())
    fp16 = build_inventory(arch, dtype="float16", quantization="mxfp4", keep_quantized=True)
    bf16 = build_inventory(arch, dtype="bfloat16", quantization="mxfp4", keep_quantized=True)
    hidden, layers = arch["hidden_size"], arch["num_hidden_layers"]
    norm_elements = hidden * (2 * layers + 1)  # input/post-attention norm per layer + final norm
    assert fp16.weight_bytes - bf16.weight_bytes == norm_elements * (4 - 2)
    assert next(m for m in fp16.modules if m.name == "model.norm").bytes == hidden * 4


def test_keep_in_fp32_table_matches_transformers():
    from transformers import AutoConfig, AutoModelForCausalLM

    for model_type, family in architectures.FAMILIES.items():
        cls = AutoModelForCausalLM._model_mapping[type(AutoConfig.for_model(model_type))]
        assert cls.__name__ == family.causal_lm_class
        assert sorted(cls._keep_in_fp32_modules or ()) == sorted(family.keep_fp32), model_type
        assert sorted(cls._keep_in_fp32_modules_strict or ()) == sorted(family.keep_fp32_strict), model_type
        assert family.decoder_class in cls._no_split_modules


def test_tp_plan_table_matches_transformers_config_classes():
    from transformers import CONFIG_MAPPING

    for model_type, family in architectures.FAMILIES.items():
        assert family.has_tp_plan == bool(getattr(CONFIG_MAPPING[model_type], "base_model_tp_plan", None)), model_type
    assert architectures.FAMILIES["gpt2"].has_tp_plan is False


def test_family_defaults_match_the_config_class_defaults():
    from transformers import CONFIG_MAPPING

    for model_type, family in architectures.FAMILIES.items():
        fields = {f.name: f.default for f in dataclasses.fields(CONFIG_MAPPING[model_type])}
        for key, value in family.defaults.items():
            if key not in fields:  # an option this class does not have: the table must read it as off
                assert value in (None, False), (model_type, key)
                continue
            assert fields[key] == value, (model_type, key)


def test_float32_weight_bytes_are_twice_bfloat16_for_gpt2():
    arch = yaml.safe_load((ROOT / "conf/model/gpt2.yaml").read_text())["architecture"]
    fp32 = build_inventory(arch, dtype="float32")
    bf16 = build_inventory(arch, dtype="bfloat16")
    assert fp32.weight_bytes == 2 * bf16.weight_bytes == 4 * fp32.params_total
    assert fp32.checkpoint_bytes == 4 * 124_439_808  # shipped dtype defaults to the compute dtype


def test_tied_lm_head_has_no_params_and_points_at_the_embedding():
    arch = json.loads((ROOT / "tests/data/reference_models/openai-community__gpt2.json").read_text())
    tied = build_inventory(arch, dtype="float32")
    head = tied.modules[-1]
    assert (head.name, head.params, head.bytes, head.tied_to) == ("lm_head", 0, 0, "transformer.wte")
    untied = build_inventory({**arch, "tie_word_embeddings": False}, dtype="float32")
    head = untied.modules[-1]
    assert head.params == 50257 * 768 and head.tied_to is None
    assert untied.params_total - tied.params_total == 50257 * 768
    assert [m.name for m in tied.modules][:3] == ["transformer.wte", "transformer.wpe", "transformer.h.0"]
    assert tied.no_split_module == "GPT2Block" and not tied.has_tp_plan and tied.max_context_tokens == 1024


def test_missing_model_type_is_read_from_the_architectures_class():
    arch = json.loads((ROOT / "tests/data/reference_models/openai-community__gpt2-xl.json").read_text())
    assert "model_type" not in arch
    assert build_inventory(arch, dtype="float32").params_total == 1_557_611_200


def test_fast_path_for_gpt_oss_120b_imports_no_torch():
    """The fast path sizes gpt-oss-120b from its config alone (how fast: benchmarks/plan_speed.py, not a test)."""
    code = (
        "import json,sys; from planner.model.inventory import build_inventory;"
        "a=json.load(open('tests/data/reference_models/openai__gpt-oss-120b.json'));"
        "inv=build_inventory(a,dtype='bfloat16',quantization='mxfp4',keep_quantized=True);"
        "print(inv.source, inv.params_total > 10**11, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["fast", "True", "False", "False"]


TINY_OPT = dict(
    model_type="opt",
    hidden_size=32,
    num_attention_heads=4,
    num_hidden_layers=3,
    ffn_dim=64,
    vocab_size=128,
    word_embed_proj_dim=32,
    max_position_embeddings=64,
    pad_token_id=1,
)


def test_meta_fallback_sizes_an_architecture_outside_the_fast_path():
    inv = build_inventory(TINY_OPT, dtype="bfloat16")
    assert inv.source == "meta"
    model = _meta_model(TINY_OPT, "bfloat16")
    assert inv.params_total == sum(p.numel() for p in model.parameters())
    assert inv.weight_bytes == sum(t.numel() * t.element_size() for _, t in _unique_tensors(model))
    names = [m.name for m in inv.modules]
    for full_name, _ in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        assert len(_owners(full_name, names)) == 1, full_name
    assert [m.name for m in inv.modules if m.kind == "layer"] == [f"model.decoder.layers.{i}" for i in range(3)]
    assert inv.modules[-1].name == "lm_head" and inv.modules[-1].tied_to == "model.decoder.embed_tokens"
    assert inv.no_split_module == "OPTDecoderLayer" and inv.max_context_tokens == 64
    assert [layer.attention for layer in inv.layers] == ["full"] * 3


def test_unknown_model_type_is_a_one_line_error():
    with pytest.raises(ShardwiseError, match=r"cannot size architecture 'foo': .*model.path") as err:
        build_inventory({"model_type": "foo", "hidden_size": 8}, dtype="bfloat16")
    assert "\n" not in str(err.value)


def test_a_config_transformers_cannot_build_is_a_one_line_error():
    with pytest.raises(ShardwiseError, match=r"cannot size architecture 'opt'") as err:
        build_inventory({**TINY_OPT, "num_attention_heads": 5}, dtype="bfloat16")
    assert "\n" not in str(err.value)


def test_bad_numbers_and_quantization_are_refused():
    arch = json.loads((ROOT / "tests/data/reference_models/openai-community__gpt2.json").read_text())
    with pytest.raises(ShardwiseError, match="n_layer=0"):
        build_inventory({**arch, "n_layer": 0}, dtype="float32")
    with pytest.raises(ShardwiseError, match="only gpt_oss experts ship as MXFP4"):
        build_inventory(arch, dtype="float32", quantization="mxfp4")
    with pytest.raises(ShardwiseError, match="'hqq'"):
        build_inventory(arch, dtype="float32", quantization="hqq")
    with pytest.raises(ShardwiseError, match="dtype='int3'"):
        build_inventory(arch, dtype="int3")


TINY_LLAMA = dict(
    model_type="llama",
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=3,
    intermediate_size=48,
    vocab_size=96,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def _save_tiny(tmp_path: Path, arch: dict, max_shard_size=None) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(arch["model_type"], **{k: v for k, v in arch.items() if k != "model_type"})
    model = AutoModelForCausalLM.from_config(config)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(tmp_path, **kwargs)
    return tmp_path


def _data_bytes_on_disk(directory: Path) -> int:
    total = 0
    for path in directory.glob("*.safetensors"):
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
        total += path.stat().st_size - 8 - header_len
    return total


@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
def test_safetensors_headers_give_checkpoint_bytes(tmp_path, max_shard_size):
    directory = _save_tiny(tmp_path, TINY_LLAMA, max_shard_size)
    shards = list(directory.glob("*.safetensors"))
    assert (len(shards) > 1) == bool(max_shard_size)
    index = read_index(str(directory))
    inv = build_inventory(TINY_LLAMA, dtype="bfloat16", checkpoint_dtype="bfloat16", model_dir=str(directory))
    assert inv.source == "safetensors" and inv.warnings == ()
    assert inv.checkpoint_bytes == index.total_bytes == _data_bytes_on_disk(directory)
    assert inv.checkpoint_bytes == 4 * inv.params_total  # saved in float32 whatever checkpoint_dtype claimed
    assert sum(m.checkpoint_bytes for m in inv.modules) == inv.checkpoint_bytes
    computed = build_inventory(TINY_LLAMA, dtype="float32")
    assert [m.checkpoint_bytes for m in inv.modules] == [m.checkpoint_bytes for m in computed.modules]
    assert sum(f.stat().st_size for f in shards) == index.total_bytes + index.header_bytes


def test_safetensors_names_that_miss_the_modules_become_warnings(tmp_path):
    directory = _save_tiny(tmp_path, TINY_LLAMA)
    other = {**TINY_LLAMA, "num_hidden_layers": 4}
    inv = build_inventory(other, dtype="bfloat16", model_dir=str(directory))
    assert len(inv.warnings) == 1 and "model.layers.3" in inv.warnings[0]
    assert all("\n" not in w for w in inv.warnings)


def test_gpt2_checkpoint_names_without_the_base_prefix_still_match(tmp_path):
    import torch
    from safetensors.torch import save_file

    arch = dict(model_type="gpt2", n_embd=16, n_head=2, n_layer=2, n_positions=32, vocab_size=40)
    inv = build_inventory(arch, dtype="float32")
    tensors = {"wte.weight": torch.zeros(40, 16), "wpe.weight": torch.zeros(32, 16), "ln_f.weight": torch.zeros(16)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    per_module, coverage = read_index(str(tmp_path)).bytes_by_module(
        [m.name for m in inv.modules], no_tensors_expected=["lm_head"]
    )
    assert per_module["transformer.wte"] == 40 * 16 * 4 and per_module["transformer.ln_f"] == 16 * 4
    assert coverage.unmatched_tensors == () and coverage.modules_without_tensors == (
        "transformer.h.0",
        "transformer.h.1",
    )


def test_a_corrupt_safetensors_header_is_a_one_line_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes((12).to_bytes(8, "little") + b"not json!!!!")
    with pytest.raises(ShardwiseError, match="not valid JSON"):
        read_index(str(tmp_path))
