"""Model inventory: every module with its exact bytes, layer types, tied groups, quantization packing.

`build_inventory(arch, dtype=...)` sizes a config.json dict. Known families (planner/architectures.py)
take the fast path: pure arithmetic on the config numbers, no torch import. Any other model_type
transformers knows is built on the meta device (planner/inventory_meta.py). A local model
directory's safetensors headers replace the computed shipped bytes (planner/safetensors_index.py).
Weight bytes follow how transformers 5.24 loads: the compute dtype, `_keep_in_fp32_modules` for
float16 loads (`_strict` also for bfloat16), MXFP4 expert packing when kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from planner.errors import ShardwiseError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModuleEntry:
    """One placeable module: what a device_map key names."""

    name: str  # real module name, e.g. "model.embed_tokens", "model.layers.3", "lm_head", "transformer.h.0"
    kind: str  # "embed" | "layer" | "norm" | "head" | "other"
    params: int  # parameter elements in this module (a tied weight counted only at its owner)
    bytes: int  # bytes resident in memory as loaded (plan dtype, kept quantization, fp32-kept parts)
    checkpoint_bytes: int  # bytes as shipped
    layer_index: int | None = None  # decoder layer index for kind == "layer"
    tied_to: str | None = None  # name of the module that owns a weight this one shares (lm_head -> embed)
    quantized_bytes: int = 0  # of `bytes`, bytes held in a kept quantized format (MXFP4 experts): never offload these
    expert_bytes: int = 0  # of `bytes`, routed MoE experts (a token reads only experts_per_token of num_experts)
    expert_params: int = 0  # of `params`, routed MoE experts


@dataclass(frozen=True)
class LayerSpec:
    """What a decoder layer needs at run time besides its weights."""

    index: int
    attention: str  # "full" | "sliding"
    window: int | None  # sliding window in tokens (None for full attention)
    num_kv_heads: int
    head_dim: int
    moe: bool


@dataclass(frozen=True)
class Inventory:
    model_type: str
    params_total: int  # exact, tied weights once
    weight_bytes: int  # sum of ModuleEntry.bytes
    checkpoint_bytes: int | None  # bytes as shipped (safetensors headers when present)
    modules: tuple[ModuleEntry, ...]  # in forward order; device_map keys
    layers: tuple[LayerSpec, ...]
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP width, or per-expert width for MoE
    max_context_tokens: int
    tied_embeddings: bool
    no_split_module: str  # transformers' decoder layer class name (for accelerate), e.g. "LlamaDecoderLayer"
    has_tp_plan: bool  # transformers ships a base_model_tp_plan for this architecture
    num_experts: int = 0
    experts_per_token: int = 0
    source: str = "fast"  # "fast" (from config numbers) | "meta" (built on the meta device) | "safetensors"
    warnings: tuple[
        str, ...
    ] = ()  # one-line notes the planner should show (checkpoint names that do not match the modules)


# bytes per element of dtypes a tensor may be pinned to (buffers, integer tensors)
ELEMENT_BYTES = {
    **DTYPE_BYTES,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}
_DTYPE_ALIASES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "f32": "float32",
    "f16": "float16",
}
ROUTED_EXPERTS = ".experts."  # transformers names the routed experts of every MoE block `...mlp.experts.*`
MXFP4_BLOCK = 32  # FP4 values sharing one E8M0 scale byte; two values per byte in the blocks
QUANTIZATIONS = ("mxfp4",)


def normalize_dtype(name: str, what: str = "dtype") -> str:
    key = str(name).lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ShardwiseError(f"{what}={name!r} is not a weight dtype shardwise sizes; use bfloat16, float16 or float32")
    return _DTYPE_ALIASES[key]


def mxfp4_bytes(rows: int, width: int) -> int:
    """Packed MXFP4 bytes of a rows x width matrix: blocks of 32 along the width, 16 bytes + 1 scale byte each."""
    blocks = -(-width // MXFP4_BLOCK)
    return rows * blocks * (MXFP4_BLOCK // 2 + 1)


def _fp32_pattern(patterns) -> re.Pattern | None:
    # transformers matches these as `re.search` over the full parameter name, `*` as `.*`
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p.replace('*', '.*')})" for p in patterns))


def _size_modules(desc, dtype: str, checkpoint_dtype: str, shipped_mxfp4: bool, keep_mxfp4: bool):
    """ModuleEntry per ModuleSpec: loaded bytes, shipped bytes, packed bytes."""
    keep = list(desc.keep_fp32) if dtype == "float16" else []
    if dtype in ("float16", "bfloat16"):
        keep += list(desc.keep_fp32_strict)
    fp32_re = _fp32_pattern(keep)
    element, ckpt_element = DTYPE_BYTES[dtype], DTYPE_BYTES[checkpoint_dtype]
    entries = []
    for spec in desc.modules:
        params = loaded = shipped = packed = expert_loaded = expert_params = 0
        for t in spec.tensors:
            routed = ROUTED_EXPERTS in t.name
            if t.is_param:
                params += t.numel
                expert_params += t.numel if routed else 0
            if t.persistent:
                if t.expert_matrix is not None and shipped_mxfp4:
                    shipped += mxfp4_bytes(*t.expert_matrix)
                else:
                    shipped += t.numel * (ELEMENT_BYTES[t.fixed_dtype] if t.fixed_dtype else ckpt_element)
            if t.expert_matrix is not None and keep_mxfp4:
                nbytes = mxfp4_bytes(*t.expert_matrix)
                packed += nbytes
            elif t.fixed_dtype:
                nbytes = t.numel * ELEMENT_BYTES[t.fixed_dtype]
            elif fp32_re is not None and t.persistent and fp32_re.search(t.name):
                nbytes = t.numel * 4
            else:
                nbytes = t.numel * element
            loaded += nbytes
            expert_loaded += nbytes if routed else 0
        entries.append(
            ModuleEntry(
                name=spec.name,
                kind=spec.kind,
                params=params,
                bytes=loaded,
                checkpoint_bytes=shipped,
                layer_index=spec.layer_index,
                tied_to=spec.tied_to,
                quantized_bytes=packed,
                expert_bytes=expert_loaded,
                expert_params=expert_params,
            )
        )
    return entries


def _shipped_quantization(arch: dict, quantization: str | None) -> str | None:
    if quantization is None:
        quantization = (arch.get("quantization_config") or {}).get("quant_method")
    if quantization is None:
        return None
    method = str(quantization).lower()
    if method not in QUANTIZATIONS:
        raise ShardwiseError(
            f"quantization {quantization!r} is not one shardwise can size; use a profile without quantization or mxfp4"
        )
    return method


def build_inventory(
    arch: dict,
    *,
    dtype: str,
    quantization: str | None = None,
    keep_quantized: bool = False,
    checkpoint_dtype: str | None = None,
    model_dir: str | None = None,
) -> Inventory:
    """Inventory for a config.json dict.

    dtype: compute dtype the weights are loaded in ("bfloat16" | "float16" | "float32").
    quantization: shipped quantization ("mxfp4" or None; None reads config.json's quantization_config);
    keep_quantized: whether it stays packed in memory.
    checkpoint_dtype: dtype of the shipped non-quantized tensors (for checkpoint_bytes); None: config.json's
    `torch_dtype`/`dtype`, else the compute dtype.
    model_dir: a local directory whose *.safetensors headers give exact shipped bytes.
    Raises ShardwiseError for an architecture it cannot size.
    """
    from planner.model import architectures

    if isinstance(arch, Mapping):
        arch = dict(arch)  # an OmegaConf DictConfig reads the same
    if not isinstance(arch, dict) or not arch:
        raise ShardwiseError(
            "model architecture is empty; give the profile an `architecture:` (config.json) or model.path"
        )
    dtype = normalize_dtype(dtype)
    shipped_dtype = checkpoint_dtype or arch.get("torch_dtype") or arch.get("dtype") or dtype
    shipped_dtype = normalize_dtype(shipped_dtype, "checkpoint_dtype")
    method = _shipped_quantization(arch, quantization)
    model_type = architectures.model_type_of(arch)
    if model_type is None:
        raise ShardwiseError(
            f"cannot size architecture {arch.get('architectures')!r}: config.json has no model_type; "
            "add model_type or give model.path to a directory with safetensors files"
        )
    desc, source = None, "fast"
    if model_type in architectures.FAMILIES:
        try:
            desc = architectures.describe(model_type, arch)
        except NotImplementedError:
            desc = None  # an option only the real module tree can size: fall through to the meta build
    if desc is None:
        from planner.model.meta import describe_on_meta

        desc, source = describe_on_meta(model_type, arch, dtype), "meta"
    if method == "mxfp4" and not any(t.expert_matrix for m in desc.modules for t in m.tensors):
        raise ShardwiseError(
            f"quantization 'mxfp4' on model_type {model_type!r}: only gpt_oss experts ship as MXFP4; "
            "set quantization: null for this profile"
        )
    entries = _size_modules(desc, dtype, shipped_dtype, method == "mxfp4", method == "mxfp4" and keep_quantized)
    checkpoint_total: int | None = sum(e.checkpoint_bytes for e in entries)
    warnings: list[str] = []
    if model_dir is not None:
        from planner.model.headers import read_index

        index = read_index(model_dir)
        if index is not None:
            per_module, coverage = index.bytes_by_module(
                [e.name for e in entries], no_tensors_expected=[e.name for e in entries if e.checkpoint_bytes == 0]
            )
            entries = [_with_checkpoint_bytes(e, per_module.get(e.name, 0)) for e in entries]
            checkpoint_total, source = index.total_bytes, "safetensors"
            warnings.extend(coverage.warnings())
    layers = tuple(
        LayerSpec(
            index=i,
            attention=rule.attention,
            window=rule.window,
            num_kv_heads=desc.num_kv_heads,
            head_dim=desc.head_dim,
            moe=rule.moe,
        )
        for i, rule in enumerate(desc.layers)
    )
    return Inventory(
        model_type=model_type,
        params_total=sum(e.params for e in entries),
        weight_bytes=sum(e.bytes for e in entries),
        checkpoint_bytes=checkpoint_total,
        modules=tuple(entries),
        layers=layers,
        hidden_size=desc.hidden_size,
        vocab_size=desc.vocab_size,
        num_attention_heads=desc.num_attention_heads,
        num_kv_heads=desc.num_kv_heads,
        head_dim=desc.head_dim,
        intermediate_size=desc.intermediate_size,
        max_context_tokens=desc.max_context_tokens,
        tied_embeddings=desc.tied_embeddings,
        no_split_module=desc.no_split_module,
        has_tp_plan=desc.has_tp_plan,
        num_experts=desc.num_experts,
        experts_per_token=desc.experts_per_token,
        source=source,
        warnings=tuple(warnings) + tuple(desc.notes),
    )


def _with_checkpoint_bytes(entry: ModuleEntry, checkpoint_bytes: int) -> ModuleEntry:
    from dataclasses import replace

    return replace(entry, checkpoint_bytes=checkpoint_bytes)
