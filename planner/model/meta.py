"""Meta-device fallback: size any causal LM transformers can build, without weights or memory.

Used for model_types outside the fast path (planner/architectures.py). Imports torch and
transformers lazily (seconds), builds the auto class that owns the config (planner/model/auto_class.py: causal
LM, else image-text-to-text) with `from_config` on `torch.device("meta")`
in the compute dtype with tied weights tied, and reads the module tree: the decoder layers are
the children of the ModuleList holding the most parameters; every other module with weights
is named by the highest module that does not contain the layers.
"""

from __future__ import annotations

import json

from planner.errors import ShardwiseError
from planner.model.architectures import ArchDescription, LayerRule, ModuleSpec, TensorSpec


def _fail(model_type: str, why: str) -> ShardwiseError:
    return ShardwiseError(
        f"cannot size architecture {model_type!r}: {why}; "
        "give model.path to a directory with safetensors files or use a known family"
    )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


CAUSAL_CLASS_ENDINGS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _refuse_non_causal(model_type: str, arch: dict) -> None:
    """Encoder-decoder and encoder-only checkpoints are not chat decoders: one line, before any build."""
    named = [str(c) for c in arch.get("architectures") or ()]
    if arch.get("is_encoder_decoder"):
        raise ShardwiseError(
            f"{model_type} is an encoder-decoder model: shardwise plans decoder-only (causal) chat models"
        )
    if named and not any(c.endswith(CAUSAL_CLASS_ENDINGS) for c in named):
        raise ShardwiseError(
            f"{model_type} ships {', '.join(named)}, not a causal language model: "
            "shardwise plans decoder-only (causal) chat models"
        )


def _build(model_type: str, arch: dict, dtype: str):
    import torch
    from transformers import AutoConfig

    from planner.model.auto_class import auto_model_class

    _refuse_non_causal(model_type, arch)
    kwargs = {k: v for k, v in arch.items() if k not in ("model_type", "quantization_config")}
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except Exception as err:  # transformers raises ValueError/KeyError/strict-validation errors alike
        from transformers import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            raise _fail(model_type, f"transformers {_transformers_version()} has no model type of that name") from None
        raise _fail(
            model_type, f"transformers rejects its config ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from None
    auto = auto_model_class(config)[0]  # causal LM, else the image-text-to-text class that config.json names
    try:
        with torch.device("meta"):
            model = auto.from_config(config, dtype=getattr(torch, dtype))
    except Exception as err:
        raise _fail(
            model_type,
            f"transformers cannot build a causal LM from it ({type(err).__name__}: {str(err).splitlines()[0][:120]})",
        ) from None
    model.tie_weights()
    return config, model


def _kind(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if name == "lm_head" or leaf in ("lm_head", "embed_out", "output"):
        return "head"
    if "embed" in leaf or leaf in ("wte", "wpe"):
        return "embed"
    if "norm" in leaf or leaf.startswith("ln"):
        return "norm"
    return "other"


def _dtype_name(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def describe_on_meta(model_type: str, arch: dict, dtype: str) -> ArchDescription:
    """The model's modules and tensors, read off a model built on the meta device (no weights).

    Built once per (model_type, config, dtype) in a process: a plan re-plans the same model many
    times (the fixes' searches, policy.sessions=auto), and a build takes a second for a large
    model. The description is frozen (tuples), so sharing it is safe.
    """
    try:
        key = (model_type, json.dumps(arch, sort_keys=True, default=repr), dtype)
    except (TypeError, ValueError):  # a config json cannot write: build it every time
        return _describe_on_meta(model_type, arch, dtype)
    if key not in _DESCRIBED:
        if len(_DESCRIBED) >= _DESCRIBED_MAX:
            _DESCRIBED.pop(next(iter(_DESCRIBED)))
        _DESCRIBED[key] = _describe_on_meta(model_type, arch, dtype)
    return _DESCRIBED[key]


_DESCRIBED: dict = {}  # (model_type, config as JSON, dtype) -> ArchDescription, oldest first
_DESCRIBED_MAX = 16


def _describe_on_meta(model_type: str, arch: dict, dtype: str) -> ArchDescription:
    import torch

    config, model = _build(model_type, arch, dtype)
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, torch.nn.ModuleList) and len(mod)]
    if not lists:
        raise _fail(model_type, "the built model has no list of decoder layers")
    layers_name, layers = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))

    # entry names: the layers, plus siblings of every module on the path from the root to the layer list
    entry_names = [f"{layers_name}.{i}" for i in range(len(layers))]
    path = layers_name.split(".")
    for depth in range(len(path)):
        parent_name = ".".join(path[:depth])
        parent = model.get_submodule(parent_name) if parent_name else model
        for child, _ in parent.named_children():
            if child != path[depth]:
                entry_names.append(f"{parent_name}.{child}" if parent_name else child)
        # tensors held directly by a module on the path: their own device_map keys
        entry_names += [f"{parent_name}.{n}" if parent_name else n for n, _ in parent.named_parameters(recurse=False)]
        entry_names += [f"{parent_name}.{n}" if parent_name else n for n, _ in parent.named_buffers(recurse=False)]

    state_keys = set(model.state_dict().keys())
    owner_by_id: dict[int, str] = {}
    tensors_by_entry: dict[str, list[TensorSpec]] = {n: [] for n in entry_names}
    tied_to: dict[str, str] = {}

    def entry_of(full_name: str) -> str | None:
        for n in entry_names:
            if full_name == n or full_name.startswith(n + "."):
                return n
        return None

    named = [(n, t, True) for n, t in model.named_parameters(remove_duplicate=False)]
    named += [(n, t, False) for n, t in model.named_buffers(remove_duplicate=False)]
    for full_name, tensor, is_param in named:
        entry = entry_of(full_name)
        if entry is None:
            raise _fail(model_type, f"tensor {full_name} sits outside every placeable module")
        if id(tensor) in owner_by_id:  # a tied weight: counted once, at its first owner
            owner = owner_by_id[id(tensor)]
            if owner != entry:
                tied_to[entry] = owner
            continue
        owner_by_id[id(tensor)] = entry
        name = _dtype_name(tensor)
        tensors_by_entry[entry].append(
            TensorSpec(
                name=full_name,
                numel=tensor.numel(),
                is_param=is_param,
                persistent=full_name in state_keys,
                fixed_dtype=None if name == dtype else name,
                matrix=_matrix(model, full_name, tensor) if is_param else None,
            )
        )

    layer_index = {n: i for i, n in enumerate(entry_names[: len(layers)])}
    modules = []
    for n in _forward_order(model, entry_names):
        if not tensors_by_entry[n] and n not in tied_to:
            continue  # nothing to place (dropout, activation modules)
        kind = "layer" if n in layer_index else _kind(n)
        modules.append(
            ModuleSpec(n, kind, tuple(tensors_by_entry[n]), layer_index=layer_index.get(n), tied_to=tied_to.get(n))
        )

    text = config.get_text_config(decoder=True)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 0)
    hidden = getattr(text, "hidden_size", 0)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if heads else 0)
    if getattr(text, "kv_lora_rank", None):  # MLA: attention runs on heads expanded to qk_nope + qk_rope per head
        head_dim = text.qk_nope_head_dim + text.qk_rope_head_dim
    rules, notes = _cache_rules(model_type, text, len(layers), kv_heads, head_dim, hidden)
    max_ctx = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None) or 0
    no_split = list(getattr(model, "_no_split_modules", None) or [type(layers[0]).__name__])
    return ArchDescription(
        model_type=model_type,
        modules=tuple(modules),
        layers=rules,
        hidden_size=hidden,
        vocab_size=getattr(text, "vocab_size", 0),
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", 0) or 0,
        max_context_tokens=max_ctx,
        tied_embeddings=bool(tied_to),
        no_split_module=no_split[0],
        has_tp_plan=bool(getattr(type(config), "base_model_tp_plan", None)),
        keep_fp32=tuple(model._keep_in_fp32_modules or ()),
        keep_fp32_strict=tuple(model._keep_in_fp32_modules_strict or ()),
        notes=tuple(notes),
    )


def _matrix(model, full_name: str, tensor) -> tuple[int, int, int] | None:
    """(count, rows, cols) of the weight matrices a quantization format packs: Linear weights, fused experts.

    transformers 5 fuses MoE experts into 3-D [experts, out, in] parameters; checkpoints ship one
    matrix per expert and projection (gate and up apart).
    """
    import torch

    module_name, _, leaf = full_name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, torch.nn.Linear) and leaf == "weight":
        return (1, *tensor.shape)
    if tensor.dim() == 3 and "expert" in type(module).__name__.lower():
        experts, rows, cols = tensor.shape
        if leaf == "gate_up_proj":
            return (2 * experts, rows // 2, cols)
        return (experts, rows, cols)
    return None


def _cache_rules(model_type: str, text, n_layers: int, kv_heads: int, head_dim: int, hidden: int):
    """LayerRule per decoder layer from the cache transformers builds for this config (planner.model.cache_layout)."""
    from planner.model.cache_layout import UnknownCacheLayout, cache_rules

    def get(key, default=None):
        value = getattr(text, key, None)
        return default if value is None else value

    try:
        found = cache_rules(model_type, get, n_layers, kv_heads, head_dim, hidden)
    except UnknownCacheLayout as err:
        raise _fail(model_type, str(err)) from None
    rules = tuple(
        LayerRule(
            r.attention,
            r.window,
            moe=False,
            kv_elems_per_token=r.kv_elems_per_token,
            state_elems=r.state_elems,
            state_fp32_elems=r.state_fp32_elems,
        )
        for r in found[:n_layers]
    )
    return rules, []


def _forward_order(model, entry_names: list[str]) -> list[str]:
    """Entries in module-registration order (how transformers builds, which is forward order)."""
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    for i, (name, _) in enumerate(model.named_parameters()):
        position.setdefault(name, len(position) + i)
    return sorted(entry_names, key=lambda n: position.get(n, len(position)))
