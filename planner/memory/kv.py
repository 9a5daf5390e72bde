"""KV cache bytes per layer, as transformers 5.25's DynamicCache actually holds them.

Per layer and token: the layer's KV width (`LayerSpec.kv_width`: K and V, each num_kv_heads x
head_dim elements; MLA layers the compressed latent; linear-attention / Mamba layers nothing,
they hold a fixed state per sequence instead: `layer_state_bytes`). Full-attention layers
(DynamicLayer) keep every token. Sliding and chunked layers (DynamicSlidingWindowLayer) keep a *view* of the
last `window - 1` tokens, sliced from the tensor the step concatenated; the view keeps that whole
tensor's storage alive until the next step. Measured on tiny CPU models (tests/test_kv.py):

- after a step that fed `new_tokens` tokens with `cached` tokens already in the layer, a sliding
  layer's storage holds min(cached, window - 1) + new_tokens tokens;
- decoding one token at a time that is min(context, window) tokens (the tensor shape says
  min(context, window - 1): one token less than the memory);
- right after a one-shot prefill of T tokens it is all T tokens, for every sliding layer, until the
  first decode step frees it: a long prompt costs full-attention KV on every layer at that moment
  (plan prefill chunks of C tokens to cap it at window - 1 + C).

`new_tokens` (default 1: the decode steady state) selects between these cases.
"""

from __future__ import annotations

from planner.model.inventory import LayerSpec


def layer_bytes_per_token(layer: LayerSpec, kv_dtype_bytes: int) -> int:
    """K and V (or the MLA latent) of one token in one layer."""
    return layer.kv_width * kv_dtype_bytes


def kv_bytes_per_token(layers, kv_dtype_bytes: int) -> int:
    """One sequence, all attention layers: the cost of one more token while the context is shorter than every window."""
    return sum(layer_bytes_per_token(layer, kv_dtype_bytes) for layer in layers)


def layer_held_tokens(layer: LayerSpec, context_tokens: int, new_tokens: int = 1) -> int:
    """Tokens whose K/V storage the layer holds after the step that fed `new_tokens` and reached `context_tokens`."""
    if context_tokens <= 0:
        return 0
    new_tokens = max(1, min(new_tokens, context_tokens))
    if layer.window is None:
        return context_tokens
    cached_before = context_tokens - new_tokens
    return min(cached_before, layer.window - 1) + new_tokens


def layer_kv_bytes(
    layer: LayerSpec, context_tokens: int, sessions: int, kv_dtype_bytes: int, new_tokens: int = 1
) -> int:
    """KV bytes one layer holds for `sessions` sequences of `context_tokens` each (see module docstring)."""
    return (
        sessions * layer_held_tokens(layer, context_tokens, new_tokens) * layer_bytes_per_token(layer, kv_dtype_bytes)
    )


def kv_cache_bytes(layers, context_tokens: int, sessions: int, kv_dtype_bytes: int, new_tokens: int = 1) -> int:
    """KV bytes of all `layers` (pass one device's layers for its share)."""
    return sum(layer_kv_bytes(layer, context_tokens, sessions, kv_dtype_bytes, new_tokens) for layer in layers)


def layer_state_bytes(layer: LayerSpec, sessions: int, compute_dtype_bytes: int) -> int:
    """Fixed conv + recurrent state a Mamba / linear-attention layer holds for `sessions` sequences."""
    return sessions * layer.state_bytes(compute_dtype_bytes)


def state_bytes_per_sequence(layers, compute_dtype_bytes: int) -> int:
    """All layers' fixed state for one sequence (0 for pure attention models)."""
    return sum(layer.state_bytes(compute_dtype_bytes) for layer in layers)
