"""What transformers' own cache holds per decoder layer, read off a one-token forward on the meta device.

The model built on the meta device (planner.model.meta) runs one text token through a
`DynamicCache(config=...)`, exactly as `generate` would start; afterwards each cache layer holds
meta tensors whose shapes are what one token costs: keys and values (each with its own head count
and head dim, so a layer whose V head is narrower than its K, or whose sliding layers keep fewer
KV heads, is sized as it is), an indexer's keys (DeepSeek-V3.2), the conv and recurrent states of
linear-attention / Mamba layers (their dtype read off the tensors), or nothing at all (layers that
share another layer's KV). A layer whose cache the text token leaves empty holds the encoder's
tokens instead (cross-attention, mllama): it does not grow with the context.

Layers with the same tensors and the same cache class cost the same, so the forward runs one
representative of each (the decoder list is swapped for the representatives, each keeping its
own layer index); if that run fails or fills a layer it should not, the whole stack runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheShape:
    """One decoder layer's cache after one token, batch 1."""

    cache_class: str  # transformers' cache layer class, e.g. "DynamicSlidingWindowLayer"
    window: int | None  # tokens a sliding / chunked layer keeps
    kv_heads: int  # heads of the cached keys (0: no KV)
    k_head_dim: int
    v_heads: int
    v_head_dim: int
    indexer_elems: int  # indexer keys cached per token (DeepSeek-V3.2's lightning indexer)
    state_by_dtype: tuple[tuple[str, int], ...]  # fixed per-sequence state elements by dtype name
    holds_tokens: bool  # the text token was cached here (False: cross-attention or shared-KV layer)

    @property
    def kv_elems_per_token(self) -> int:
        return self.kv_heads * self.k_head_dim + self.v_heads * self.v_head_dim + self.indexer_elems


def _plain_token_id(config) -> int:
    """A token id that is no image/audio/video placeholder (those make a multimodal forward want pixels)."""
    special = set()

    def collect(node) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                collect(value)
            elif isinstance(key, str) and key.endswith(("token_id", "token_index", "token_ids")):
                special.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))

    collect(config.to_dict())
    return next(i for i in range(len(special) + 1) if i not in special)


def _shape(layer) -> CacheShape:
    import torch

    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    holds = isinstance(keys, torch.Tensor) and keys.dim() == 4 and keys.shape[-2] > 0
    by_dtype: dict[str, int] = {}
    for states in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
        for tensor in (states or {}).values():
            if isinstance(tensor, torch.Tensor):
                name = str(tensor.dtype).removeprefix("torch.")
                by_dtype[name] = by_dtype.get(name, 0) + tensor.numel()
    indexer = getattr(layer, "indexer_keys", None)
    indexer_elems = indexer.numel() if isinstance(indexer, torch.Tensor) and holds else 0
    return CacheShape(
        cache_class=type(layer).__name__,
        window=getattr(layer, "sliding_window", None),
        kv_heads=keys.shape[1] if holds else 0,
        k_head_dim=keys.shape[-1] if holds else 0,
        v_heads=values.shape[1] if holds else 0,
        v_head_dim=values.shape[-1] if holds else 0,
        indexer_elems=indexer_elems,
        state_by_dtype=tuple(sorted(by_dtype.items())),
        holds_tokens=holds,
    )


def _forward(model, owner, attr: str, keep: list[int] | None):
    """Cache layers after one token through the model (only the decoder layers `keep`, when given)."""
    import torch
    from transformers import DynamicCache

    full = getattr(owner, attr)
    if keep is not None:
        setattr(owner, attr, torch.nn.ModuleList([full[i] for i in keep]))
    try:
        cache = DynamicCache(config=model.config)
        token = torch.full((1, 1), _plain_token_id(model.config), dtype=torch.long, device="meta")
        with torch.no_grad():
            out = model(input_ids=token, cache=cache, use_cache=True)
        found = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        return (found if hasattr(found, "layers") else cache).layers
    finally:
        setattr(owner, attr, full)


def _signature(layer, cache_layer) -> tuple:
    tensors = tuple((n, tuple(t.shape), str(t.dtype)) for n, t in layer.named_parameters())
    return (type(layer).__name__, tensors, type(cache_layer).__name__, getattr(cache_layer, "sliding_window", None))


def probe_cache(model, owner, attr: str) -> tuple[list[CacheShape], str]:
    """CacheShape per decoder layer (`getattr(owner, attr)` is the decoder list), and how it was found."""
    from transformers import DynamicCache

    layers = getattr(owner, attr)
    empty = DynamicCache(config=model.config).layers
    if len(empty) != len(layers):
        raise ValueError(f"transformers' cache has {len(empty)} layers for {len(layers)} decoder layers")
    first_of: dict[tuple, int] = {}
    rep_of = [first_of.setdefault(_signature(layer, c), i) for i, (layer, c) in enumerate(zip(layers, empty))]
    reps = sorted(set(rep_of))
    if len(reps) < len(layers):
        try:
            cached = _forward(model, owner, attr, reps)
            shapes = {i: _shape(c) for i, c in enumerate(cached)}
            # every layer keeps its own layer_idx: only representatives may have been filled
            if all(i in reps or not shapes[i].holds_tokens for i in shapes):
                return [shapes[rep] for rep in rep_of], f"one token through {len(reps)} representative layers"
        except Exception:  # noqa: BLE001 - a forward that cannot run on a subset runs on every layer below
            pass
    cached = _forward(model, owner, attr, None)
    return [_shape(c) for c in cached], f"one token through all {len(layers)} layers"
