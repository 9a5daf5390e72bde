"""Model inventory: every module with its exact bytes, layer types, tied groups, quantization packing.

INTERFACE STUB written by the lead; the inventory helper fills in the implementation.
No torch import at module level: the fast path computes everything from config.json numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    quantization: shipped quantization ("mxfp4" or None); keep_quantized: whether it stays packed in memory.
    checkpoint_dtype: dtype of the shipped non-quantized tensors (for checkpoint_bytes).
    model_dir: a local directory whose *.safetensors headers give exact shipped bytes.
    Raises ShardwiseError for an architecture it cannot size.
    """
    raise NotImplementedError
