"""Type checks on a config.json before any rule reads it: one line naming the key, never a TypeError later.

A config.json is input: it may be truncated, edited or hostile. The architecture rules read
counts, fractions, lists and sub-objects from it; each key they read is checked here for the kind
of value transformers itself expects (a count is an integer, `layer_types` a list of strings,
`rope_scaling` an object). Keys not listed are not read by shardwise and are left alone.
"""

from __future__ import annotations

import math

from planner.errors import ShardwiseError

# integers >= 0 (or null); their ranges are checked by the architecture rules that use them
COUNT_KEYS = (
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "vocab_size",
    "max_position_embeddings",
    "head_dim",
    "sliding_window",
    "attention_chunk_size",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "decoder_sparse_step",
    "n_embd",
    "n_head",
    "n_layer",
    "n_positions",
    "n_inner",
    "n_ctx",
    "max_window_layers",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
)
FRACTION_KEYS = ("partial_rotary_factor", "rope_theta", "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps")
FLAG_KEYS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "add_cross_attention", "use_sliding_window")
OBJECT_KEYS = ("rope_scaling", "rope_parameters", "quantization_config", "text_config", "auto_map")
LIST_KEYS = {"layer_types": str, "mlp_only_layers": int, "architectures": str}
TEXT_KEYS = ("model_type", "torch_dtype", "dtype", "hidden_act")


def _bad(path, key: str, value, wanted: str) -> ShardwiseError:
    return ShardwiseError(
        f"{path}: {key} in config.json is {value!r:.60}, not {wanted}: fix or re-download config.json"
    )


def check_config(data: dict, path) -> None:
    """Refuse the first value of a known key whose kind cannot be right; nested text_config is checked too."""
    for key in COUNT_KEYS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _bad(path, key, value, "an integer >= 0")
    for key in FRACTION_KEYS:
        value = data.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(float(value) if abs(value) < 1e300 else math.inf)
        ):
            raise _bad(path, key, value, "a finite number")
    for key in FLAG_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, bool):
            raise _bad(path, key, value, "true or false")
    for key in OBJECT_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise _bad(path, key, value, "an object")
    for key, kind in LIST_KEYS.items():
        value = data.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
        ):
            raise _bad(path, key, value, f"a list of {'strings' if kind is str else 'integers'}")
    for key in TEXT_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise _bad(path, key, value, "a string")
    _check_meaning(data, path)
    if isinstance(data.get("text_config"), dict):
        check_config(data["text_config"], f"{path} (text_config)")


# what transformers names the class of a model that generates text (meta.py's rule for the meta path, too)
CAUSAL_CLASS_ENDINGS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def _check_meaning(data: dict, path) -> None:
    """Values of the right kind that still cannot describe a chat model: refused, never planned as something else."""
    model_type = data.get("model_type")
    if model_type is not None and not model_type.strip():
        raise _bad(path, "model_type", model_type, "a model type name (an empty one would be guessed from the class)")
    step = data.get("decoder_sparse_step")
    if step is not None and step < 1:
        raise _bad(path, "decoder_sparse_step", step, "an integer >= 1 (every how many layers an MoE block sits)")
    experts = next((data[k] for k in EXPERT_COUNT_KEYS if isinstance(data.get(k), int) and data[k] > 0), 0)
    top_k = data.get("num_experts_per_tok")
    if experts and top_k is not None and not 1 <= top_k <= experts:
        raise _bad(path, "num_experts_per_tok", top_k, f"an integer from 1 to the {experts} experts")
    if data.get("is_encoder_decoder") is True:
        raise ShardwiseError(
            f"{path}: an encoder-decoder model (is_encoder_decoder: true): shardwise plans decoder-only chat models"
        )
    named = data.get("architectures") or []
    if named and not any(c.endswith(CAUSAL_CLASS_ENDINGS) for c in named):
        raise ShardwiseError(
            f"{path}: the checkpoint ships {', '.join(named)[:120]}, not a causal language model: "
            "shardwise plans decoder-only chat models"
        )
