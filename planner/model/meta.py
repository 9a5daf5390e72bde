"""The general path: size any generative model transformers can build, without weights or memory.

Used for every model outside the fast path (planner/model/architectures.py). Imports torch and
transformers lazily, resolves the class the config names through transformers' own auto
mappings (planner.model.resolve: causal LM, image-text-to-text, multimodal LM), builds it on
`torch.device("meta")` from the full config (text, vision and audio sub-configs) in the compute
dtype with tied weights tied and without running any initializer, and reads the module tree: the
decoder layers are the ModuleList as long as transformers' cache; every other module with
weights (embeddings, vision tower, projector, audio encoder, head) is named by the highest module
that does not contain the layers, so device_map keys cover every parameter. The cache each layer
keeps comes from transformers' own cache after a one-token forward (planner.model.meta_cache).
Anything transformers raises while doing so becomes one ShardwiseError line naming the cause.
"""

from __future__ import annotations

import json

from planner.errors import ShardwiseError
from planner.model.architectures import ROUTED_EXPERTS, ArchDescription, LayerRule, ModuleSpec, TensorSpec


def _fail(model_type: str, why: str) -> ShardwiseError:
    return ShardwiseError(
        f"cannot size architecture {model_type!r}: {why}; "
        "give model.path to a directory with safetensors files or use a known family"
    )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


# config.json keys that are not model options: the shipped quantization is sized by planner.model.quant,
# and auto_map points at the checkpoint's own code, which shardwise never runs
_NOT_OPTIONS = ("model_type", "quantization_config", "auto_map")


def _config(model_type: str, arch: dict, resolved):
    """The config object transformers would load: its own class for a known model_type, else the class's."""
    from transformers import CONFIG_MAPPING, AutoConfig

    kwargs = {k: v for k, v in arch.items() if k not in _NOT_OPTIONS}
    if model_type in CONFIG_MAPPING:
        return AutoConfig.for_model(model_type, **kwargs)
    # a model_type transformers does not register (kimi_k2) whose `architectures` names a class it ships
    return resolved.config_class(**kwargs)


def _build(model_type: str, arch: dict, dtype: str):
    """(config, model, how the class was chosen): the class in `architectures` built on the meta device."""
    import torch
    from transformers.initialization import no_init_weights

    from planner.model.resolve import resolve

    resolved = resolve(arch, model_type)
    try:
        config = _config(model_type, arch, resolved)
    except Exception as err:  # transformers raises ValueError, KeyError, TypeError, strict-validation errors alike
        why = f"transformers {_transformers_version()} rejects its config ({_one_line(err)})"
        raise _fail(model_type, why) from None
    if getattr(config, "is_encoder_decoder", False):
        raise ShardwiseError(
            f"{model_type} is an encoder-decoder model: shardwise plans decoder-only (causal) chat models"
        )
    if not isinstance(config, resolved.config_class):
        text_class = (getattr(config, "sub_configs", None) or {}).get("text_config")
        if text_class is resolved.config_class:  # what transformers' auto classes do: build the text model alone
            config = config.get_text_config()
        else:  # the named class belongs to another config: build what the config's own type maps to
            resolved = resolve({k: v for k, v in arch.items() if k != "architectures"}, model_type)
    try:
        with torch.device("meta"), no_init_weights():
            model = resolved.model_class._from_config(config, dtype=getattr(torch, dtype))
        model.tie_weights()
    except Exception as err:
        raise _fail(
            model_type, f"transformers cannot build {resolved.model_class.__name__} from it ({_one_line(err)})"
        ) from None
    return config, model, resolved.reason


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


def _attr(config, key: str, default=None):
    """A config value, None when absent or ambiguous (heterogeneous configs raise for per-layer keys)."""
    try:
        value = getattr(config, key, None)
    except Exception:  # noqa: BLE001 - transformers' AmbiguousGlobalPerLayerAttributeError and kin
        return default
    return default if value is None else value


def _decoder_list(model, n_cache_layers: int):
    """(name, ModuleList) of the text decoder: the list as long as transformers' cache with the most parameters."""
    import torch

    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    fitting = [item for item in lists if len(item[1]) == n_cache_layers] or lists
    if not fitting:
        return None, None
    return max(fitting, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def _cache_layer_count(model) -> int:
    from transformers import DynamicCache

    try:
        return len(DynamicCache(config=model.config).layers)
    except Exception:  # noqa: BLE001 - a config the cache cannot read: pick the list by parameters alone
        return -1


def _describe_on_meta(model_type: str, arch: dict, dtype: str) -> ArchDescription:
    config, model, how = _build(model_type, arch, dtype)
    layers_name, layers = _decoder_list(model, _cache_layer_count(model))
    if layers is None:
        raise _fail(model_type, "the built model has no list of decoder layers")

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
    by_prefix = sorted(entry_names, key=len, reverse=True)

    def entry_of(full_name: str) -> str | None:
        for n in by_prefix:
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
    text_prefix = layers_name.rsplit(".", 1)[0] if "." in layers_name else ""
    modules = []
    ordered = _forward_order(model, entry_names, text_prefix)
    # vision tower, projector, audio encoder: everything outside the text model but the head
    encoders = {n for n in ordered if text_prefix and not n.startswith(text_prefix + ".") and _kind(n) != "head"}
    for n in ordered:
        if not tensors_by_entry[n] and n not in tied_to:
            continue  # nothing to place (dropout, activation modules)
        kind = "layer" if n in layer_index else ("encoder" if n in encoders else _kind(n))
        modules.append(
            ModuleSpec(n, kind, tuple(tensors_by_entry[n]), layer_index=layer_index.get(n), tied_to=tied_to.get(n))
        )

    text = config.get_text_config(decoder=True)
    heads = _attr(text, "num_attention_heads") or _attr(text, "n_head", 0)
    hidden = _attr(text, "hidden_size", 0) or _attr(text, "n_embd", 0)
    rules, shapes_note = _cache_rules(model_type, model, layers_name, layers, text, dtype)
    num_experts, experts_per_token, rules = _routing(model, layers, text, rules)
    first_kv = next((r for r in rules if r.kv_heads), None)
    kv_heads = first_kv.kv_heads if first_kv else (_attr(text, "num_key_value_heads") or heads)
    head_dim = first_kv.head_dim if first_kv else (_attr(text, "head_dim") or (hidden // heads if heads else 0))
    if _attr(text, "kv_lora_rank"):  # MLA: attention runs on heads expanded to qk_nope + qk_rope per head
        kv_heads, head_dim = heads, _attr(text, "qk_nope_head_dim", 0) + _attr(text, "qk_rope_head_dim", 0)
    max_ctx = _attr(text, "max_position_embeddings") or _attr(text, "n_positions") or 0
    no_split = list(getattr(model, "_no_split_modules", None) or [type(layers[0]).__name__])
    layer_class = type(layers[0]).__name__
    from planner.model.media import image_cost

    image = image_cost(config)
    return ArchDescription(
        model_type=model_type,
        modules=tuple(modules),
        layers=rules,
        hidden_size=hidden,
        vocab_size=_attr(text, "vocab_size", 0),
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_attr(text, "intermediate_size") or _attr(text, "ffn_dim", 0) or 0,
        max_context_tokens=max_ctx,
        tied_embeddings=bool(tied_to),
        no_split_module=layer_class if layer_class in no_split else no_split[0],
        # the top config's plan: a composite model whose own config declares none is not claimed tensor-parallel
        has_tp_plan=bool(getattr(type(config), "base_model_tp_plan", None)),
        keep_fp32=tuple(sorted(model._keep_in_fp32_modules or ())),  # a set in transformers 5: one order
        keep_fp32_strict=tuple(sorted(model._keep_in_fp32_modules_strict or ())),
        notes=(),
        num_experts=num_experts,
        experts_per_token=experts_per_token,
        model_class=type(model).__name__,
        class_reason=how,
        cache_reason=shapes_note,
        image_tokens=image.tokens,
        image_tokens_reason=image.reason,
        encoder_tokens=image.encoder_tokens,
        image_patches=image.patches,
        encoder_hidden=image.encoder_hidden,
        encoder_heads=image.encoder_heads,
    )


def _matrix(model, full_name: str, tensor) -> tuple[int, int, int] | None:
    """(count, rows, cols) of the weight matrices a quantization format packs: Linear weights, fused experts.

    transformers 5 fuses MoE experts into 3-D [experts, out, in] parameters ([experts, in, out] where its
    experts decorator marks them `is_transposed`); checkpoints ship one matrix per expert and projection
    (gate and up apart).
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    module_name, _, leaf = full_name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, torch.nn.Linear) and leaf == "weight":
        return (1, *tensor.shape)
    if isinstance(module, Conv1D) and leaf == "weight":  # GPT-2's transposed Linear: [in, out]
        return (1, tensor.shape[1], tensor.shape[0])
    if tensor.dim() == 3 and "expert" in type(module).__name__.lower():
        experts, rows, cols = tensor.shape
        if getattr(module, "is_transposed", False):  # transformers' experts decorator: stored [experts, in, out]
            rows, cols = cols, rows
        if leaf == "gate_up_proj":
            return (2 * experts, rows // 2, cols)
        return (experts, rows, cols)
    return None


def _cache_rules(model_type: str, model, layers_name: str, layers, text, dtype: str):
    """LayerRule per decoder layer from the cache transformers fills on a one-token meta forward."""
    from planner.model.meta_cache import probe_cache

    owner_name, _, attr = layers_name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    try:
        shapes, how = probe_cache(model, owner, attr)
    except Exception as err:  # noqa: BLE001 - anything transformers raises while running its own model
        if dtype == "bfloat16":
            raise _fail(model_type, f"transformers' cache for it cannot be filled ({_one_line(err)})") from None
        # some kernels (grouped MoE matmuls) take bfloat16 only; cache shapes do not depend on the dtype, and
        # states kept in the compute dtype stay apart from float32 ones (the tensors were read already)
        import torch

        model.to(torch.bfloat16)
        try:
            shapes, how = probe_cache(model, owner, attr)
        except Exception as err:  # noqa: BLE001
            raise _fail(model_type, f"transformers' cache for it cannot be filled ({_one_line(err)})") from None
        how += " (in bfloat16)"
    kinds = list(_attr(text, "layer_types") or [])
    mla = bool(_attr(text, "kv_lora_rank"))
    rules = []
    for i, shape in enumerate(shapes):
        compute = sum(n for d, n in shape.state_by_dtype if d != "float32")
        fp32 = sum(n for d, n in shape.state_by_dtype if d == "float32")
        declared = kinds[i] if i < len(kinds) else ""
        if shape.state_by_dtype:
            attention = "hybrid" if shape.holds_tokens else "linear"
        elif shape.cache_class == "DummyLayer":
            attention = "none"
        elif not shape.holds_tokens:
            attention = "cross"  # filled from the encoder's tokens, never by text: does not grow with the context
        elif shape.window is not None:
            attention = "chunked" if declared == "chunked_attention" else "sliding"
        else:
            attention = "mla" if mla else "full"
        cross_elems = _cross_kv_elems(layers[i]) if attention == "cross" else 0
        rules.append(
            LayerRule(
                attention,
                shape.window if shape.holds_tokens else None,
                moe=False,
                kv_elems_per_token=shape.kv_elems_per_token,
                state_elems=compute,
                state_fp32_elems=fp32,
                kv_heads=shape.kv_heads or None,
                head_dim=shape.k_head_dim or None,
                cross_kv_elems_per_token=cross_elems,
            )
        )
    return tuple(rules), how


# config keys transformers' MoE configs use for the experts each token is routed to
_TOP_K_KEYS = ("num_experts_per_tok", "top_k_experts", "moe_topk", "num_experts_per_token")


def _routing(model, layers, text, rules):
    """(routed experts per MoE layer, experts per token, rules with `moe` set on layers holding routed experts).

    transformers 5 fuses a layer's routed experts into 3-D [experts, rows, cols] parameters under
    `.experts.`; their first dimension is the expert count.
    """
    from dataclasses import replace

    counts, moe = set(), []
    for layer in layers:
        routed = [t for n, t in layer.named_parameters() if ROUTED_EXPERTS in f".{n}" and t.dim() == 3]
        moe.append(bool(routed))
        counts.update(t.shape[0] for t in routed)
    if not counts:
        return 0, 0, rules
    top_k = next((_attr(text, k) for k in _TOP_K_KEYS if isinstance(_attr(text, k), int)), 0)
    return max(counts), top_k, tuple(replace(r, moe=m) for r, m in zip(rules, moe))


def _cross_kv_elems(layer) -> int:
    """K + V elements a cross-attention layer caches per encoder token: its key and value projections' widths."""
    import torch

    widths = [
        m.out_features
        for n, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("k_proj", "v_proj")
    ]
    return sum(widths)


def _forward_order(model, entry_names: list[str], text_prefix: str) -> list[str]:
    """Entries in module-registration order (forward order), encoders first.

    Everything outside the text model but the head (vision tower, projector, audio encoder) runs
    before the first decoder layer: its output is merged into the first layer's input, so it
    belongs with the first stage.
    """
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    for i, (name, _) in enumerate(model.named_parameters()):
        position.setdefault(name, len(position) + i)
    ordered = sorted(entry_names, key=lambda n: position.get(n, len(position)))
    if not text_prefix:
        return ordered
    inside = [n for n in ordered if n.startswith(text_prefix + ".") or _kind(n) == "head"]
    return [n for n in ordered if n not in inside] + inside
