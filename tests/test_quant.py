"""Quantized checkpoints sized exactly: small safetensors files written with each quantizer's real layout.

Each test writes a two-layer Llama checkpoint in one format, with the tensor names, shapes and
dtypes that quantizer stores (laid out here from the formats' documentation and checkpoints, not
from planner.model.quant), then plans it from config.json alone and from the headers: the
checkpoint bytes equal what the files hold, and the loaded weight bytes equal them plus the rotary
buffers (float32, never shipped). params_total stays the logical parameter count.
"""

from __future__ import annotations

import json
import math

import pytest

from planner.errors import ShardwiseError
from planner.model.inventory import build_inventory

HIDDEN, INTER, HEADS, KV_HEADS, LAYERS, VOCAB = 256, 512, 4, 2, 2, 320
HEAD_DIM = HIDDEN // HEADS
ARCH = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    hidden_size=HIDDEN,
    intermediate_size=INTER,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    num_hidden_layers=LAYERS,
    vocab_size=VOCAB,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
# (module, rows = out features, cols = in features) of every Linear a format quantizes
LINEARS = [
    (f"model.layers.{i}.{name}", rows, cols)
    for i in range(LAYERS)
    for name, rows, cols in [
        ("self_attn.q_proj", HIDDEN, HIDDEN),
        ("self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN),
        ("self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN),
        ("self_attn.o_proj", HIDDEN, HIDDEN),
        ("mlp.gate_proj", INTER, HIDDEN),
        ("mlp.up_proj", INTER, HIDDEN),
        ("mlp.down_proj", HIDDEN, INTER),
    ]
]
LOGICAL_PARAMS = 2 * VOCAB * HIDDEN + HIDDEN + sum(r * c for _, r, c in LINEARS) + LAYERS * 2 * HIDDEN
ROTARY_BUFFER_BYTES = 2 * (HEAD_DIM // 2) * 4  # inv_freq + original_inv_freq, float32, not shipped


def _bnb_state(rows: int, cols: int, quant_type: str) -> str:
    state = {"quant_type": quant_type, "blocksize": 64, "dtype": "bfloat16", "shape": [rows, cols]}
    state |= {"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.02185343950986862}
    return json.dumps(state)


def _layout(fmt: str, rows: int, cols: int) -> dict:
    """{suffix: (dtype, shape)} one quantized Linear ships."""
    n = rows * cols
    if fmt == "fp8_block":
        return {"weight": ("F8_E4M3", [rows, cols]), "weight_scale_inv": ("F32", [-(-rows // 128), -(-cols // 128)])}
    if fmt == "ct_fp8_channel":
        return {"weight": ("F8_E4M3", [rows, cols]), "weight_scale": ("BF16", [rows, 1])}
    if fmt == "ct_w4a16_sym":
        return {
            "weight_packed": ("I32", [rows, cols // 8]),
            "weight_scale": ("BF16", [rows, cols // 128]),
            "weight_shape": ("I64", [2]),
        }
    if fmt == "ct_w4a16_asym":
        return _layout("ct_w4a16_sym", rows, cols) | {"weight_zero_point": ("I32", [rows // 8, cols // 128])}
    if fmt == "modelopt_fp8":
        return {"weight": ("F8_E4M3", [rows, cols]), "weight_scale": ("F32", []), "input_scale": ("F32", [])}
    if fmt == "modelopt_nvfp4":
        return {
            "weight": ("U8", [rows, cols // 2]),
            "weight_scale": ("F8_E4M3", [rows, cols // 16]),
            "weight_scale_2": ("F32", []),
            "input_scale": ("F32", []),
        }
    if fmt == "awq":  # GEMM: input-major, 8 int4 per int32 along the outputs
        return {
            "qweight": ("I32", [cols, rows // 8]),
            "qzeros": ("I32", [cols // 128, rows // 8]),
            "scales": ("F16", [cols // 128, rows]),
        }
    if fmt == "gptq":  # 8 int4 per int32 along the inputs
        return {
            "qweight": ("I32", [cols // 8, rows]),
            "qzeros": ("I32", [cols // 128, rows // 8]),
            "scales": ("F16", [cols // 128, rows]),
            "g_idx": ("I32", [cols]),
        }
    if fmt == "bnb_nf4":
        blocks = n // 64
        return {
            "weight": ("U8", [n // 2, 1]),
            "weight.absmax": ("U8", [blocks]),
            "weight.nested_absmax": ("F32", [math.ceil(blocks / 256)]),
            "weight.nested_quant_map": ("F32", [256]),
            "weight.quant_map": ("F32", [16]),
            "weight.quant_state.bitsandbytes__nf4": ("U8", [len(_bnb_state(rows, cols, "nf4"))]),
        }
    if fmt == "bnb_int8":
        return {"weight": ("I8", [rows, cols]), "SCB": ("F32", [rows])}
    raise AssertionError(fmt)


CONFIGS = {
    "fp8_block": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    },
    "ct_fp8_channel": {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True},
            }
        },
        "ignore": ["lm_head"],
    },
    "ct_w4a16_sym": {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True},
            }
        },
        "ignore": ["lm_head"],
    },
    "ct_w4a16_asym": {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": False},
            }
        },
        "ignore": ["lm_head"],
    },
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "bnb_nf4": {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
    },
    "bnb_int8": {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 6.0},
}
# ModelOpt writes its quantization to hf_quant_config.json, not config.json
HF_QUANT = {
    "modelopt_fp8": {"quant_algo": "FP8", "kv_cache_quant_algo": None, "exclude_modules": ["lm_head"]},
    "modelopt_nvfp4": {"quant_algo": "NVFP4", "group_size": 16, "exclude_modules": ["lm_head"]},
}
FLOAT = {"awq": "F16", "gptq": "F16"}  # AWQ / GPTQ checkpoints ship their other tensors in float16
DTYPE_NAME = {"F16": "float16", "BF16": "bfloat16"}
ELEMENT = {"F8_E4M3": 1, "U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "I32": 4, "I64": 8}


def _write(directory, fmt: str, skip: tuple[str, ...] = ()) -> tuple[dict, int]:
    """A checkpoint directory in `fmt`; returns (config.json, the bytes its tensors hold)."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = {
        "F8_E4M3": torch.float8_e4m3fn,
        "U8": torch.uint8,
        "I8": torch.int8,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "I32": torch.int32,
        "I64": torch.int64,
    }
    float_dtype = FLOAT.get(fmt, "BF16")
    tensors = {
        "model.embed_tokens.weight": (float_dtype, [VOCAB, HIDDEN]),
        "model.norm.weight": (float_dtype, [HIDDEN]),
        "lm_head.weight": (float_dtype, [VOCAB, HIDDEN]),
    }
    for i in range(LAYERS):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = (float_dtype, [HIDDEN])
    for module, rows, cols in LINEARS:
        if any(module.startswith(s) for s in skip):
            tensors[f"{module}.weight"] = (float_dtype, [rows, cols])
            continue
        for suffix, spec in _layout(fmt, rows, cols).items():
            tensors[f"{module}.{suffix}"] = spec
    save_file(
        {name: torch.zeros(shape, dtype=torch_dtype[dt]) for name, (dt, shape) in tensors.items()},
        str(directory / "model.safetensors"),
    )
    arch = dict(ARCH, torch_dtype=DTYPE_NAME[float_dtype])
    if fmt in HF_QUANT:
        (directory / "hf_quant_config.json").write_text(
            json.dumps({"producer": {"name": "modelopt", "version": "0.29.0"}, "quantization": HF_QUANT[fmt]})
        )
    else:
        arch["quantization_config"] = dict(CONFIGS[fmt])
        if skip:
            key = {"bitsandbytes": "llm_int8_skip_modules", "compressed-tensors": "ignore"}.get(
                CONFIGS[fmt]["quant_method"], "modules_to_not_convert"
            )
            arch["quantization_config"][key] = [*(CONFIGS[fmt].get(key) or []), *skip]
    (directory / "config.json").write_text(json.dumps(arch))
    shipped = sum(ELEMENT[dt] * math.prod(shape) for dt, shape in tensors.values())
    return arch, shipped


FORMATS = sorted(CONFIGS) + sorted(HF_QUANT)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_checkpoint_bytes_follow_the_format_from_config_alone_and_from_headers(tmp_path, fmt):
    arch, shipped = _write(tmp_path, fmt)
    dtype = DTYPE_NAME[FLOAT.get(fmt, "BF16")]
    # config.json alone (ModelOpt: with its hf_quant_config.json beside it, but no safetensors read)
    (tmp_path / "alone").mkdir()
    if fmt in HF_QUANT:
        (tmp_path / "alone" / "hf_quant_config.json").write_text((tmp_path / "hf_quant_config.json").read_text())
    alone = build_inventory(arch, dtype=dtype, keep_quantized=True, model_dir=str(tmp_path / "alone"))
    headers = build_inventory(arch, dtype=dtype, keep_quantized=True, model_dir=str(tmp_path))
    assert alone.params_total == headers.params_total == LOGICAL_PARAMS
    assert headers.checkpoint_bytes == shipped
    assert headers.weight_bytes == shipped + ROTARY_BUFFER_BYTES
    if fmt == "bnb_nf4":  # bitsandbytes' packed state JSON carries a data-dependent float: a few bytes either way
        assert abs(alone.checkpoint_bytes - shipped) <= 0.02 * shipped
    else:
        assert alone.checkpoint_bytes == shipped
        assert alone.weight_bytes == shipped + ROTARY_BUFFER_BYTES
    assert headers.source == "safetensors" and not [w for w in headers.warnings if "checkpoint has" in w]


@pytest.mark.parametrize("fmt", ["fp8_block", "awq", "bnb_int8", "ct_w4a16_sym"])
def test_exclusion_lists_keep_the_named_modules_unquantized(tmp_path, fmt):
    arch, shipped = _write(tmp_path, fmt, skip=("model.layers.1.mlp",))
    dtype = DTYPE_NAME[FLOAT.get(fmt, "BF16")]
    assert build_inventory(arch, dtype=dtype, keep_quantized=True).checkpoint_bytes == shipped
    inv = build_inventory(arch, dtype=dtype, keep_quantized=True, model_dir=str(tmp_path))
    layer1 = next(m for m in inv.modules if m.name == "model.layers.1")
    layer0 = next(m for m in inv.modules if m.name == "model.layers.0")
    assert layer1.checkpoint_bytes > layer0.checkpoint_bytes  # its MLP ships in the float dtype


@pytest.mark.parametrize("fmt", ["fp8_block", "awq", "gptq", "bnb_nf4", "modelopt_fp8"])
def test_a_dequantized_checkpoint_holds_its_logical_elements_in_the_compute_dtype(tmp_path, fmt):
    arch, _ = _write(tmp_path, fmt)
    inv = build_inventory(arch, dtype="bfloat16", keep_quantized=False, model_dir=str(tmp_path))
    assert inv.weight_bytes == LOGICAL_PARAMS * 2 + ROTARY_BUFFER_BYTES
    assert sum(m.quantized_bytes for m in inv.modules) == 0


def test_deepseek_v3_fp8_weights_are_one_byte_plus_a_float32_scale_per_block():
    from pathlib import Path

    arch = json.loads((Path(__file__).parent / "data/reference_models/deepseek-ai__DeepSeek-V3.json").read_text())
    kept = build_inventory(arch, dtype="bfloat16", keep_quantized=True)
    dequantized = build_inventory(arch, dtype="bfloat16", keep_quantized=False)
    assert kept.params_total == dequantized.params_total
    packed = sum(m.quantized_bytes for m in kept.modules)
    # everything but the packed matrices stays bf16 (embeddings, norms, routers, lm_head)
    other_bytes = kept.weight_bytes - packed
    packed_elements = (dequantized.weight_bytes - other_bytes) // 2
    scale_bytes = packed - packed_elements
    assert 0 < scale_bytes < packed_elements * 4 / (128 * 128) * 1.01  # one fp32 per 128x128 block, edges rounded up
    assert kept.weight_bytes < 0.51 * dequantized.weight_bytes + 2 * other_bytes


def test_an_unknown_quantization_is_refused_in_one_line():
    with pytest.raises(ShardwiseError, match="'hqq' is not one shardwise can size"):
        build_inventory(dict(ARCH, quantization_config={"quant_method": "hqq"}), dtype="bfloat16")


# --- kept / dequantized / cannot run, per target -----------------------------------------------


def _gpu(cc: str):
    from planner.hardware.devices import Device
    from planner.units import GIB

    return Device(id=0, name=f"GPU cc {cc}", total_bytes=80 * GIB, free_bytes=80 * GIB, compute_capability=cc)


def _hw(cc: str | None, probed: bool = True, **installed):
    from planner.hardware.devices import Hardware

    return Hardware(
        source="probe" if probed else "tier", devices=(_gpu(cc),) if cc else (), installed=installed, probed=probed
    )


ALL_PACKAGES = {"compressed-tensors": "0.15.1", "gptqmodel": "5.0.0", "optimum": "1.26.0", "bitsandbytes": "0.48.1"}


@pytest.mark.parametrize(
    "method,hw,expected,needle",
    [
        ("fp8", _hw("9.0"), "kept", ">= 8.9"),
        ("fp8", _hw("8.9"), "kept", ">= 8.9"),
        ("fp8", _hw("8.0"), "dequantized", "8.0 < 8.9"),
        ("fp8", _hw(None), "dequantized", "on CPU"),
        ("compressed-tensors", _hw("8.0", **ALL_PACKAGES), "kept", "compressed-tensors >= 0.15.0 installed"),
        ("compressed-tensors", _hw("9.0"), "cannot", "pip install compressed-tensors"),
        ("compressed-tensors", _hw("9.0", probed=False), "kept", "the target needs compressed-tensors"),
        ("awq", _hw("7.5", **ALL_PACKAGES), "kept", "gptqmodel installed"),
        ("awq", _hw("7.5"), "cannot", "pip install gptqmodel"),
        ("gptq", _hw("8.0", gptqmodel="5.0.0", optimum="1.20.0"), "cannot", "optimum >= 1.24.0 (found 1.20.0)"),
        ("gptq", _hw("8.0", **ALL_PACKAGES), "kept", "installed"),
        ("bitsandbytes", _hw("8.6", **ALL_PACKAGES), "kept", "bitsandbytes installed"),
        ("bitsandbytes", _hw("8.6"), "cannot", "pip install bitsandbytes"),
        ("modelopt", _hw("10.0", **ALL_PACKAGES), "cannot", "vLLM"),
    ],
)
def test_each_format_is_kept_dequantized_or_refused_where_transformers_would(method, hw, expected, needle):
    from planner.decide.decisions import decide_quantization

    if expected == "cannot":
        with pytest.raises(ShardwiseError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            decide_quantization(method, "auto", hw, "bfloat16")
        return
    kept, reason = decide_quantization(method, "auto", hw, "bfloat16")
    assert kept is (expected == "kept") and needle in reason


def test_fp8_profile_is_kept_on_h100_dequantized_on_a100_and_on_request():
    from planner.config.compose import make_plan

    h100 = make_plan("qwen3-235b-a22b-fp8", "h100_80gb", ["hardware.count=8", "policy.context_tokens=4096"])
    a100 = make_plan("qwen3-235b-a22b-fp8", "a100_80gb", ["hardware.count=8", "policy.context_tokens=4096"])
    none = make_plan(
        "qwen3-235b-a22b-fp8",
        "h100_80gb",
        ["hardware.count=8", "policy.context_tokens=4096", "policy.quantization=none"],
    )
    assert h100.model.quantization.kept and not a100.model.quantization.kept and not none.model.quantization.kept
    assert h100.model.weight_bytes < 0.52 * a100.model.weight_bytes
    assert a100.model.weight_bytes == none.model.weight_bytes
    assert h100.model.params_total == a100.model.params_total == 235_093_634_560
    assert "dequantized" in [d for d in a100.decisions if d.what == "quantization"][0].value


# --- quantization on load: policy.quantization=bnb4|bnb8|fp8 -----------------------------------


def test_on_load_quantization_sizes_the_loaded_linears_and_leaves_the_checkpoint_alone():
    from planner.decide.quant_support import ON_LOAD

    plain = build_inventory(ARCH, dtype="bfloat16")
    int8 = build_inventory(ARCH, dtype="bfloat16", load_quantization=ON_LOAD["bnb8"])
    fp8 = build_inventory(ARCH, dtype="bfloat16", load_quantization=ON_LOAD["fp8"])
    others = plain.weight_bytes - 2 * sum(r * c for _, r, c in LINEARS)  # embeddings, norms, lm_head, buffers
    assert int8.weight_bytes == others + sum(r * c + 4 * r for _, r, c in LINEARS)  # int8 + float32 SCB rows
    assert fp8.weight_bytes == others + sum(r * c + 4 * -(-r // 128) * -(-c // 128) for _, r, c in LINEARS)
    assert int8.checkpoint_bytes == fp8.checkpoint_bytes == plain.checkpoint_bytes
    assert int8.params_total == plain.params_total == LOGICAL_PARAMS


def test_bnb4_makes_llama_70b_fit_one_a100_and_is_offered_as_the_fix():
    from planner.config.compose import make_plan

    plain = make_plan("llama-3.1-70b", "a100_80gb")
    assert not plain.fits
    offered = [f["overrides"] for f in plain.binding["fixes"] if "policy.quantization=" in f["text"]]
    assert offered == [["policy.quantization=bnb8"]]  # the least lossy that fits; fp8 needs cc >= 8.9
    assert make_plan("llama-3.1-70b", "a100_80gb", offered[0]).fits
    quantized = make_plan("llama-3.1-70b", "a100_80gb", ["policy.quantization=bnb4"])
    assert quantized.fits and quantized.strategy == "single_gpu"
    assert quantized.model.quantization.on_load == "bnb4" and quantized.model.quantization.kept
    assert quantized.model.weight_bytes < 0.3 * plain.model.weight_bytes
    assert quantized.model.checkpoint_bytes == plain.model.checkpoint_bytes
    assert any(d.what == "quantization" and d.value == "bnb4 on load" for d in quantized.decisions)


@pytest.mark.parametrize(
    "model,tier,policy,needle",
    [
        ("llama-3.1-8b", "a100_80gb", "fp8", "compute capability >= 8.9"),
        ("llama-3.1-8b", "cpu", "bnb4", "needs a CUDA GPU"),
        ("gpt-oss-20b", "h100_80gb", "bnb4", "ships mxfp4"),
    ],
)
def test_on_load_quantization_is_refused_where_transformers_cannot_do_it(model, tier, policy, needle):
    from planner.config.compose import make_plan

    with pytest.raises(ShardwiseError, match=needle):
        make_plan(model, tier, [f"policy.quantization={policy}"])


def test_installed_versions_are_read_as_pip_reads_them():
    """Two-part, local and dev versions keep their release numbers; an unreadable one counts as missing."""
    from planner.decide.quant_support import version_tuple

    assert version_tuple("3.4") == (3, 4, 0)  # not (3, 4), which sorts below (3, 4, 0)
    assert version_tuple("3.5.0+cu128") == (3, 5, 0)
    assert version_tuple("0.18.2.dev1") == (0, 18, 2)
    assert version_tuple("2.9.1.post3") == (2, 9, 1)
    assert version_tuple("not a version") == (0, 0, 0)
