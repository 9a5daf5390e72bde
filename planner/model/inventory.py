"""Model inventory: every module with its exact bytes, layer types, tied groups, quantization packing.

`build_inventory(arch, dtype=...)` sizes a config.json dict. Known families (planner/architectures.py)
take the fast path: pure arithmetic on the config numbers, no torch import. Any other model_type
transformers can build goes the general path (planner/model/meta.py), stored on disk after the first
build and shipped for every profile (planner/model/described.py). A local model
directory's safetensors headers replace the computed shipped bytes (planner/safetensors_index.py).
Weight bytes follow how transformers 5.25 loads: the compute dtype, `_keep_in_fp32_modules` for
float16 loads (`_strict` also for bfloat16), and each quantization format's packing when kept
(planner/model/quant.py), its logical elements in the compute dtype when dequantized.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from planner.errors import ShardwiseError
from planner.model.architectures import ROUTED_EXPERTS

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# module kinds tensor parallelism keeps whole on every rank (it shards the decoder layers and the head)
REPLICATED_KINDS = ("embed", "norm", "other", "encoder")


@dataclass(frozen=True)
class ModuleEntry:
    """One placeable module: what a device_map key names."""

    name: str  # real module name, e.g. "model.embed_tokens", "model.layers.3", "lm_head", "transformer.h.0"
    kind: str  # "embed" | "layer" | "norm" | "head" | "encoder" | "other"
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
    attention: str  # "full" | "sliding" | "chunked" | "mla" | "linear" | "hybrid" | "none"
    window: int | None  # tokens a sliding / chunked layer keeps (None: every token)
    num_kv_heads: int
    head_dim: int
    moe: bool
    kv_elems: int | None = None  # K + V elements cached per token; None: 2 x num_kv_heads x head_dim
    state_elems: int = 0  # fixed per-sequence cache state in the compute dtype (Mamba / DeltaNet conv state)
    state_fp32_elems: int = 0  # fixed per-sequence cache state in float32 (SSM / recurrent state)
    cross_kv_elems_per_token: int = 0  # K + V elements per encoder token a cross-attention layer holds

    @property
    def kv_width(self) -> int:
        """K + V elements this layer caches per token (MLA: the latent; linear layers: none)."""
        return 2 * self.num_kv_heads * self.head_dim if self.kv_elems is None else self.kv_elems

    def state_bytes(self, compute_dtype_bytes: int) -> int:
        """Fixed cache state of one sequence, whatever the context."""
        return self.state_elems * compute_dtype_bytes + self.state_fp32_elems * 4


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
    context_limit: str = "config"  # where max_context_tokens comes from: "config" | "tokenizer" | "default"
    warnings: tuple[
        str, ...
    ] = ()  # one-line notes the planner should show (checkpoint names that do not match the modules)
    provenance: tuple[tuple[str, str, str], ...] = ()  # (what, value, reason): where a meta-path description came from
    model_class: str = ""  # the transformers class sized
    class_reason: str = ""  # how that class was chosen
    image_tokens: int = 0  # decoder tokens one image takes (0: text only)
    encoder_tokens: int = 0  # encoder tokens one image gives cross-attention layers
    image_tokens_reason: str = ""
    image_patches: int = 0  # tokens the vision encoder runs on for one image
    encoder_hidden: int = 0  # the vision encoder's width
    encoder_heads: int = 0  # the vision encoder's attention heads


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
# Models without a position limit in config.json (ALiBi: BLOOM; state-only: Mamba) take the
# tokenizer's model_max_length, else this many tokens; a numeric policy.context_tokens may go beyond.
UNBOUNDED_CONTEXT_TOKENS = 32768


def normalize_dtype(name: str, what: str = "dtype") -> str:
    key = str(name).lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ShardwiseError(f"{what}={name!r} is not a weight dtype shardwise sizes; use bfloat16, float16 or float32")
    return _DTYPE_ALIASES[key]


def _fp32_pattern(patterns) -> re.Pattern | None:
    # transformers matches these as `re.search` over the full parameter name, `*` as `.*`
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p.replace('*', '.*')})" for p in patterns))


def _module_of(tensor_name: str) -> str:
    return tensor_name[: -len(".weight")] if tensor_name.endswith(".weight") else tensor_name


def _is_quantized(fmt, t) -> bool:
    if fmt is None or t.matrix is None:
        return False
    if fmt.method == "mxfp4":
        return t.expert_matrix is not None and not fmt.excludes(_module_of(t.name))
    return fmt.covers(_module_of(t.name), is_expert=t.matrix[0] > 1)


def _is_quantized_on_load(fmt, t) -> bool:
    """transformers' bitsandbytes replaces nn.Linear only: fused 3-D MoE experts stay; its FP8 has expert kernels."""
    if fmt is None or not _is_quantized(fmt, t):
        return False
    return fmt.method != "bitsandbytes" or t.matrix[0] == 1


def _size_modules(desc, dtype: str, checkpoint_dtype: str, fmt, keep: bool, on_load=None):
    """ModuleEntry per ModuleSpec: loaded bytes, shipped bytes, packed bytes (planner.model.quant for the formats)."""
    keep_fp32 = list(desc.keep_fp32) if dtype == "float16" else []
    if dtype in ("float16", "bfloat16"):
        keep_fp32 += list(desc.keep_fp32_strict)
    fp32_re = _fp32_pattern(keep_fp32)
    element, ckpt_element = DTYPE_BYTES[dtype], DTYPE_BYTES[checkpoint_dtype]
    entries = []
    for spec in desc.modules:
        params = loaded = shipped = packed = expert_loaded = expert_params = 0
        for t in spec.tensors:
            routed = ROUTED_EXPERTS in t.name
            if t.is_param:
                params += t.numel
                expert_params += t.numel if routed else 0
            quantized = _is_quantized(fmt, t)
            packed_bytes = t.matrix[0] * fmt.matrix_bytes(t.matrix[1], t.matrix[2], ckpt_element) if quantized else 0
            if t.persistent:
                if quantized:
                    shipped += packed_bytes
                else:
                    shipped += t.numel * (ELEMENT_BYTES[t.fixed_dtype] if t.fixed_dtype else ckpt_element)
            if quantized and keep:
                nbytes = packed_bytes
                packed += nbytes
            elif _is_quantized_on_load(on_load, t):
                nbytes = t.matrix[0] * on_load.matrix_bytes(t.matrix[1], t.matrix[2], element)
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


def _shipped_format(arch: dict, quantization: str | None, model_dir: str | None):
    """The checkpoint's QuantFormat: config.json (or hf_quant_config.json), or the method a profile names."""
    from planner.model.quant import parse_format, shipped_config

    config = shipped_config(arch, model_dir)
    if quantization is None:
        return parse_format(config)
    method = str(quantization).lower()
    if config and str(config.get("quant_method", "")).lower() == method:
        return parse_format(config)
    return parse_format({"quant_method": method})


def _description(model_type: str, arch: dict, dtype: str):
    """(ArchDescription, source, provenance): the fast path for a known family, else the general path (a stored
    meta-device build, or a fresh one: planner.model.described)."""
    from planner.model import architectures

    if model_type in architectures.FAMILIES:
        try:
            return architectures.describe(model_type, arch), "fast", ()
        except NotImplementedError:
            pass  # an option only the real module tree can size: the meta build sizes it
    from planner.model import described

    desc, decision = described.describe(model_type, arch, dtype)
    return desc, "meta", (decision,)


def _measured_from_headers(entries: list, model_dir: str | None, *, kept: bool):
    """(entries with their shipped bytes, total shipped bytes, coverage warnings) from a local directory's
    safetensors headers; None without a directory or headers."""
    if model_dir is None:
        return None
    from planner.model.headers import read_index

    index = read_index(model_dir)
    if index is None:
        return None
    per_module, coverage = index.bytes_by_module(
        [e.name for e in entries], no_tensors_expected=[e.name for e in entries if e.checkpoint_bytes == 0]
    )
    measured = [_with_checkpoint_bytes(e, per_module.get(e.name, 0), kept=kept) for e in entries]
    return measured, index.total_bytes, coverage.warnings()


def _layer_specs(desc) -> tuple[LayerSpec, ...]:
    """Per-layer attention, KV and state shapes; a layer without its own heads takes the model's."""
    return tuple(
        LayerSpec(
            index=i,
            attention=rule.attention,
            window=rule.window,
            num_kv_heads=rule.kv_heads or desc.num_kv_heads,
            head_dim=rule.head_dim or desc.head_dim,
            moe=rule.moe,
            kv_elems=rule.kv_elems_per_token,
            state_elems=rule.state_elems,
            state_fp32_elems=rule.state_fp32_elems,
            cross_kv_elems_per_token=rule.cross_kv_elems_per_token,
        )
        for i, rule in enumerate(desc.layers)
    )


def build_inventory(
    arch: dict,
    *,
    dtype: str,
    quantization: str | None = None,
    keep_quantized: bool = False,
    checkpoint_dtype: str | None = None,
    model_dir: str | None = None,
    load_quantization: dict | None = None,
) -> Inventory:
    """Inventory for a config.json dict.

    dtype: compute dtype the weights are loaded in ("bfloat16" | "float16" | "float32").
    quantization: shipped quantization ("mxfp4" or None; None reads config.json's quantization_config);
    keep_quantized: whether it stays packed in memory.
    checkpoint_dtype: dtype of the shipped non-quantized tensors (for checkpoint_bytes); None: config.json's
    `torch_dtype`/`dtype`, else the compute dtype.
    model_dir: a local directory whose *.safetensors headers give exact shipped bytes.
    load_quantization: a quantization_config transformers applies while loading an unquantized checkpoint
    (policy.quantization=bnb4|bnb8|fp8): sizes the loaded bytes, not the shipped ones.
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
    fmt = _shipped_format(arch, quantization, model_dir)
    model_type = architectures.model_type_of(arch)
    if model_type is None:
        raise ShardwiseError(
            f"cannot size architecture {arch.get('architectures')!r}: config.json has no model_type; "
            "add model_type or give model.path to a directory with safetensors files"
        )
    desc, source, provenance = _description(model_type, arch, dtype)
    if fmt is not None and fmt.method == "mxfp4" and not any(t.expert_matrix for m in desc.modules for t in m.tensors):
        raise ShardwiseError(
            f"quantization 'mxfp4' on model_type {model_type!r}: only gpt_oss experts ship as MXFP4; "
            "set quantization: null for this profile"
        )
    if load_quantization is not None and fmt is None:
        from planner.model.quant import parse_format

        entries = _size_modules(desc, dtype, shipped_dtype, None, False, on_load=parse_format(load_quantization))
    else:
        entries = _size_modules(desc, dtype, shipped_dtype, fmt, keep_quantized)
    checkpoint_total: int | None = sum(e.checkpoint_bytes for e in entries)
    warnings: list[str] = []
    measured = _measured_from_headers(entries, model_dir, kept=fmt is not None and keep_quantized)
    if measured is not None:
        entries, checkpoint_total, header_warnings = measured
        source = "safetensors"
        warnings.extend(header_warnings)
    max_context, context_limit, note = _context_limit(desc, model_type, model_dir)
    if note:
        warnings.append(note)
    layers = _layer_specs(desc)
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
        max_context_tokens=max_context,
        tied_embeddings=desc.tied_embeddings,
        no_split_module=desc.no_split_module,
        has_tp_plan=desc.has_tp_plan,
        num_experts=desc.num_experts,
        experts_per_token=desc.experts_per_token,
        source=source,
        context_limit=context_limit,
        warnings=tuple(warnings) + tuple(desc.notes),
        provenance=provenance,
        model_class=desc.model_class,
        class_reason=desc.class_reason,
        image_tokens=desc.image_tokens,
        encoder_tokens=desc.encoder_tokens,
        image_tokens_reason=desc.image_tokens_reason,
        image_patches=desc.image_patches,
        encoder_hidden=desc.encoder_hidden,
        encoder_heads=desc.encoder_heads,
    )


def _tokenizer_limit(model_dir: str | None) -> int | None:
    if model_dir is None:
        return None
    from pathlib import Path

    from planner.jsonfile import read_json

    path = Path(model_dir)
    path = (path if path.is_dir() else path.parent) / "tokenizer_config.json"
    try:  # the safe reader: a FIFO or a 5,000-digit number here is no limit, not a hang or a traceback
        limit = read_json(path, "tokenizer_config.json").get("model_max_length")
    except ShardwiseError:
        return None
    # transformers writes int(1e30) when a tokenizer has no limit
    return int(limit) if isinstance(limit, (int, float)) and 0 < limit < 10**9 else None


def _context_limit(desc, model_type: str, model_dir: str | None) -> tuple[int, str, str | None]:
    """(max context tokens, where it comes from, a warning when config.json gives no position limit)."""
    if desc.max_context_tokens > 0:
        return desc.max_context_tokens, "config", None
    why = (
        "it keeps a fixed state and no KV cache"
        if all(layer.kv_elems_per_token == 0 for layer in desc.layers)
        else "it has no max_position_embeddings (ALiBi or similar)"
    )
    limit = _tokenizer_limit(model_dir)
    if limit is not None:
        return (
            limit,
            "tokenizer",
            (
                f"{model_type}: {why}; context capped at the tokenizer's model_max_length of {limit} tokens "
                "(set policy.context_tokens to plan another length; quality past the training length is not guaranteed)"
            ),
        )
    return (
        UNBOUNDED_CONTEXT_TOKENS,
        "default",
        (
            f"{model_type}: {why} and no tokenizer limit is known; context capped at {UNBOUNDED_CONTEXT_TOKENS} tokens "
            "(set policy.context_tokens to plan another length; quality beyond the training length is not guaranteed)"
        ),
    )


def _with_checkpoint_bytes(entry: ModuleEntry, checkpoint_bytes: int, kept: bool) -> ModuleEntry:
    """The headers' bytes for a module; a kept quantized module holds what is shipped, so its packed bytes follow."""
    from dataclasses import replace

    if not kept or not entry.quantized_bytes or not checkpoint_bytes:
        return replace(entry, checkpoint_bytes=checkpoint_bytes)
    # the headers are the truth for packing details the config cannot say (padding, bitsandbytes' state JSON)
    delta = checkpoint_bytes - entry.checkpoint_bytes
    return replace(
        entry,
        checkpoint_bytes=checkpoint_bytes,
        bytes=entry.bytes + delta,
        quantized_bytes=entry.quantized_bytes + delta,
    )
