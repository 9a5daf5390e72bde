"""What transformers' DynamicCache holds per decoder layer: per-token KV width and fixed per-sequence state.

transformers 5.25 builds one cache layer per decoder layer from the config's `layer_types`
(cache_utils.get_layer_types_and_kwargs): `full_attention` grows with every token,
`sliding_attention` and `chunked_attention` keep at most their window (chunked layers use the
sliding cache with `attention_chunk_size` as the window), `linear_attention` (Mamba, gated
DeltaNet) keeps a fixed conv state and recurrent state per sequence and no KV, `hybrid` keeps
both (Falcon-H1), and `mlp` / `moe` layers keep nothing. Without `layer_types` a layer is
sliding when `sliding_window` is set, chunked when `attention_chunk_size` is set, else full.

Widths are read off the modeling code (tests/test_kv.py measures them on tiny models):
- MLA (DeepSeek-V2/V3, Kimi K2) caches the compressed latent: `kv_lora_rank` as "keys" and the
  shared rotary key `qk_rope_head_dim` as "values", one head, per layer and token.
- Mamba-1 (mamba, falcon_mamba, jamba): conv state inner x d_conv, SSM state inner x d_state.
- Mamba-2 (mamba2, nemotron_h, granitemoehybrid, falcon_h1): conv state
  (inner + 2 x groups x d_state) x d_conv, SSM state heads x head_dim x d_state.
- Gated DeltaNet (qwen3_next): conv state (2 x key_heads x key_dim + value_heads x value_dim) x
  kernel, recurrent state value_heads x key_dim x value_dim.
Conv states are held in the compute dtype, recurrent / SSM states in float32 (the PyTorch path).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheRule:
    """One decoder layer's cache as transformers builds it."""

    attention: str  # "full" | "sliding" | "chunked" | "mla" | "linear" | "hybrid" | "none"
    window: int | None  # tokens kept by sliding / chunked layers (None: every token)
    kv_elems_per_token: int  # K + V elements per token (0: no KV)
    state_elems: int = 0  # fixed per sequence, compute dtype (conv state)
    state_fp32_elems: int = 0  # fixed per sequence, float32 (SSM / recurrent state)


def _mamba1(get, hidden: int) -> tuple[int, int]:
    inner = get("intermediate_size") or 2 * hidden
    return inner * get("conv_kernel", 4), inner * get("state_size", 16)


def _jamba(get, hidden: int) -> tuple[int, int]:
    inner = get("mamba_expand", 2) * hidden
    return inner * get("mamba_d_conv", 4), inner * get("mamba_d_state", 16)


def _mamba2_like(inner: int, groups: int, d_state: int, d_conv: int, heads: int, head_dim: int) -> tuple[int, int]:
    return (inner + 2 * groups * d_state) * d_conv, heads * head_dim * d_state


def _mamba2(get, hidden: int) -> tuple[int, int]:
    return _mamba2_like(
        int(get("expand", 2) * hidden),
        get("n_groups", 1),
        get("state_size", 128),
        get("conv_kernel", 4),
        get("num_heads"),
        get("head_dim", 64),
    )


def _nemotron_h(get, hidden: int) -> tuple[int, int]:
    heads, head_dim = get("mamba_num_heads", 128), get("mamba_head_dim", 64)
    return _mamba2_like(
        heads * head_dim, get("n_groups", 8), get("ssm_state_size", 128), get("conv_kernel", 4), heads, head_dim
    )


def _granite_hybrid(get, hidden: int) -> tuple[int, int]:
    return _mamba2_like(
        int(get("mamba_expand", 2) * hidden),
        get("mamba_n_groups", 1),
        get("mamba_d_state", 256),
        get("mamba_d_conv", 4),
        get("mamba_n_heads", 128),
        get("mamba_d_head", 64),
    )


def _falcon_h1(get, hidden: int) -> tuple[int, int]:
    inner = get("mamba_d_ssm") or int(get("mamba_expand", 2) * hidden)
    return _mamba2_like(
        inner,
        get("mamba_n_groups", 1),
        get("mamba_d_state", 256),
        get("mamba_d_conv", 4),
        get("mamba_n_heads", 128),
        get("mamba_d_head", 64),
    )


def _gated_deltanet(get, hidden: int) -> tuple[int, int]:
    key_heads, key_dim = get("linear_num_key_heads", 16), get("linear_key_head_dim", 128)
    value_heads, value_dim = get("linear_num_value_heads", 32), get("linear_value_head_dim", 128)
    conv = (2 * key_heads * key_dim + value_heads * value_dim) * get("linear_conv_kernel_dim", 4)
    return conv, value_heads * key_dim * value_dim


STATE_RULES = {
    "mamba": _mamba1,
    "falcon_mamba": _mamba1,
    "jamba": _jamba,
    "mamba2": _mamba2,
    "nemotron_h": _nemotron_h,
    "granitemoehybrid": _granite_hybrid,
    "falcon_h1": _falcon_h1,
    "qwen3_next": _gated_deltanet,
}
STATE_FREE = {"full_attention", "sliding_attention", "chunked_attention"}
NO_CACHE = {"mlp", "moe", "dummy"}


class UnknownCacheLayout(ValueError):
    """A layer type or recurrent family whose cache this module does not know."""


def cache_rules(model_type: str, get, n_layers: int, kv_heads: int, head_dim: int, hidden: int) -> list[CacheRule]:
    """CacheRule per layer; `get(key, default=None)` reads the (text) config, None counting as absent."""
    kinds = get("layer_types")
    if kinds is None:
        if get("sliding_window") is not None:
            kinds = ["sliding_attention"] * n_layers
        elif get("attention_chunk_size") is not None:
            kinds = ["chunked_attention"] * n_layers
        else:
            kinds = ["full_attention"] * n_layers
    kinds = list(kinds)
    if get("kv_lora_rank"):  # MLA: the latent and the shared rotary key, one "head"
        width = get("kv_lora_rank") + get("qk_rope_head_dim")
        attention_kind = "mla"
    else:
        width = 2 * kv_heads * head_dim
        attention_kind = "full"
    rules = []
    for kind in kinds:
        if kind in NO_CACHE:
            rules.append(CacheRule("none", None, 0))
        elif kind == "full_attention":
            rules.append(CacheRule(attention_kind, None, width))
        elif kind == "sliding_attention":
            rules.append(CacheRule("sliding", get("sliding_window"), width))
        elif kind == "chunked_attention":
            rules.append(CacheRule("chunked", get("attention_chunk_size"), width))
        elif kind in ("linear_attention", "hybrid") and model_type in STATE_RULES:
            conv, recurrent = STATE_RULES[model_type](get, hidden)
            states = get("number_of_conv_states", 1)
            if kind == "hybrid":
                rules.append(CacheRule("hybrid", None, width, states * conv, states * recurrent))
            else:
                rules.append(CacheRule("linear", None, 0, states * conv, states * recurrent))
        else:
            raise UnknownCacheLayout(f"{model_type}: cache of layer type {kind!r} is not known to shardwise")
    return rules
