"""Fast-path architecture rules: the tensors of every placeable module, from config.json numbers.

No torch, no transformers: each supported `model_type` is described by the defaults of its
transformers config class, its module layout and its attention rules, all read off the
installed transformers 5.25 source (tests/test_inventory.py checks every table here against
transformers itself). `describe()` returns module specs with every tensor's element count;
planner/inventory.py turns them into bytes for a dtype and a quantization.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner import limits
from planner.errors import ShardwiseError

ROUTED_EXPERTS = ".experts."  # transformers names the routed experts of every MoE block `...mlp.experts.*`


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a module, before choosing a dtype."""

    name: str  # full state-dict name, e.g. "model.layers.0.self_attn.q_proj.weight"
    numel: int
    is_param: bool = True  # False for buffers (not counted in params)
    persistent: bool = True  # False for non-persistent buffers: never shipped in a checkpoint
    fixed_dtype: str | None = None  # dtype the tensor keeps whatever the load dtype (rotary inv_freq: float32)
    expert_matrix: tuple[int, int] | None = None  # (rows, input width) of an MoE expert weight MXFP4 can pack
    # (count, rows, cols) of the Linear / expert weight matrices this tensor holds, as checkpoints ship them
    # (one per expert and projection): what a quantization format packs. None: not a quantizable weight.
    matrix: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    kind: str  # "embed" | "layer" | "norm" | "head" | "encoder" (vision / audio tower, projector) | "other"
    tensors: tuple[TensorSpec, ...]
    layer_index: int | None = None
    tied_to: str | None = None  # its weight is another module's: counted there


@dataclass(frozen=True)
class LayerRule:
    attention: str  # "full" | "sliding" | "chunked" | "mla" | "linear" | "hybrid" | "cross" | "none" (meta_cache)
    window: int | None
    moe: bool
    kv_elems_per_token: int | None = None  # K + V elements per token; None: 2 x kv heads x head_dim
    state_elems: int = 0  # fixed cache state per sequence in the compute dtype (conv state)
    state_fp32_elems: int = 0  # fixed cache state per sequence in float32 (SSM / recurrent state)
    kv_heads: int | None = None  # this layer's cached key heads (None: the model's num_kv_heads)
    head_dim: int | None = None  # this layer's key head dim (None: the model's head_dim); V may differ (kv_elems)
    cross_kv_elems_per_token: int = 0  # K + V elements a cross-attention layer caches per encoder token


@dataclass(frozen=True)
class ArchDescription:
    model_type: str
    modules: tuple[ModuleSpec, ...]
    layers: tuple[LayerRule, ...]
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_context_tokens: int
    tied_embeddings: bool
    no_split_module: str
    has_tp_plan: bool
    num_experts: int = 0
    experts_per_token: int = 0
    keep_fp32: tuple[str, ...] = ()  # transformers' _keep_in_fp32_modules (float16 loads only)
    keep_fp32_strict: tuple[str, ...] = ()  # _keep_in_fp32_modules_strict (float16 and bfloat16 loads)
    notes: tuple[str, ...] = field(default_factory=tuple)
    model_class: str = ""  # the transformers class sized ("" on the fast path: the family's causal LM class)
    class_reason: str = ""  # how that class was chosen
    cache_reason: str = ""  # how the per-layer cache shapes were found
    image_tokens: int = 0  # decoder tokens one image takes at the processor's default size (0: text only)
    image_tokens_reason: str = ""  # where that count comes from
    encoder_tokens: int = 0  # encoder tokens one image gives cross-attention layers (0: none)
    image_patches: int = 0  # tokens the vision encoder runs on for one image
    encoder_hidden: int = 0  # the vision encoder's width
    encoder_heads: int = 0  # the vision encoder's attention heads


@dataclass(frozen=True)
class Family:
    """What the fast path knows about one model_type (all read off transformers' source)."""

    defaults: dict  # config class defaults for the keys the sizing reads (None: derived in __post_init__)
    decoder_class: str  # `_no_split_modules` of the model class
    causal_lm_class: str
    has_tp_plan: bool  # config class has a non-empty `base_model_tp_plan`
    keep_fp32: tuple[str, ...] = ()
    keep_fp32_strict: tuple[str, ...] = ()


_LLAMA_LIKE = dict(
    num_key_value_heads=None, head_dim=None, tie_word_embeddings=False, attention_bias=False, sliding_window=None
)

FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        dict(
            vocab_size=50257,
            n_positions=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            n_inner=None,
            tie_word_embeddings=True,
            add_cross_attention=False,
        ),
        "GPT2Block",
        "GPT2LMHeadModel",
        has_tp_plan=False,
    ),
    "llama": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "max_position_embeddings": 2048,
            "mlp_bias": False,
        },
        "LlamaDecoderLayer",
        "LlamaForCausalLM",
        has_tp_plan=True,
    ),
    "mistral": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 131072,
            "sliding_window": 4096,
        },
        "MistralDecoderLayer",
        "MistralForCausalLM",
        has_tp_plan=True,
    ),
    "mixtral": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 131072,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
        },
        "MixtralDecoderLayer",
        "MixtralForCausalLM",
        has_tp_plan=True,
    ),
    "qwen2": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 151936,
            "hidden_size": 4096,
            "intermediate_size": 22016,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 32768,
            "use_sliding_window": False,
            "sliding_window": 4096,
            "max_window_layers": 28,
        },
        "Qwen2DecoderLayer",
        "Qwen2ForCausalLM",
        has_tp_plan=True,
    ),
    "qwen3": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 151936,
            "hidden_size": 4096,
            "intermediate_size": 22016,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "head_dim": 128,
            "max_position_embeddings": 32768,
            "use_sliding_window": False,
            "sliding_window": 4096,
            "max_window_layers": 28,
        },
        "Qwen3DecoderLayer",
        "Qwen3ForCausalLM",
        has_tp_plan=True,
    ),
    "qwen3_moe": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "max_position_embeddings": 32768,
            "use_sliding_window": False,
            "sliding_window": 4096,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 768,
            "decoder_sparse_step": 1,
            "mlp_only_layers": None,
        },
        "Qwen3MoeDecoderLayer",
        "Qwen3MoeForCausalLM",
        has_tp_plan=True,
    ),
    "gemma2": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 256000,
            "hidden_size": 2304,
            "intermediate_size": 9216,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "max_position_embeddings": 8192,
            "tie_word_embeddings": True,
            "sliding_window": 4096,
        },
        "Gemma2DecoderLayer",
        "Gemma2ForCausalLM",
        has_tp_plan=True,
    ),
    "gemma3_text": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 262208,
            "hidden_size": 2304,
            "intermediate_size": 9216,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": True,
            "sliding_window": 4096,
            "use_bidirectional_attention": False,
        },
        "Gemma3DecoderLayer",
        "Gemma3ForCausalLM",
        has_tp_plan=True,
    ),
    "phi3": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 32064,
            "hidden_size": 3072,
            "intermediate_size": 8192,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "max_position_embeddings": 4096,
        },
        "Phi3DecoderLayer",
        "Phi3ForCausalLM",
        has_tp_plan=True,
    ),
    "gpt_oss": Family(
        {
            **_LLAMA_LIKE,
            "vocab_size": 201088,
            "hidden_size": 2880,
            "intermediate_size": 2880,
            "num_hidden_layers": 36,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "max_position_embeddings": 131072,
            "attention_bias": True,
            "sliding_window": 128,
            "num_local_experts": 128,
            "num_experts_per_tok": 4,
        },
        "GptOssDecoderLayer",
        "GptOssForCausalLM",
        has_tp_plan=True,
        keep_fp32=("post_attention_layernorm", "input_layernorm", "norm"),
    ),
}

# config.json files without `model_type` (gpt2-large, gpt2-xl as published) still name their class
CLASS_TO_MODEL_TYPE = {family.causal_lm_class: model_type for model_type, family in FAMILIES.items()}


def model_type_of(arch: dict) -> str | None:
    if arch.get("model_type"):
        return str(arch["model_type"])
    for class_name in arch.get("architectures") or ():
        if class_name in CLASS_TO_MODEL_TYPE:
            return CLASS_TO_MODEL_TYPE[class_name]
    return None


class _Config:
    """config.json values over the family defaults, with the numbers checked."""

    def __init__(self, model_type: str, arch: dict):
        self.model_type = model_type
        self.values = {**FAMILIES[model_type].defaults, **{k: v for k, v in arch.items()}}

    def get(self, key: str, default=None):
        value = self.values.get(key, default)
        return default if value is None else value

    def count(self, key: str, minimum: int = 1) -> int:
        value = self.values.get(key)
        # an upper bound keeps a hostile config.json (num_hidden_layers: 1e9) from planning without end
        maximum = limits.MAX_LAYERS if key in _LAYER_KEYS else _MAX_COUNT
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ShardwiseError(
                f"architecture {self.model_type!r}: {key}={value!r:.40} is not an integer "
                f"from {minimum} to {maximum:,}; "
                "fix the profile's architecture (config.json) numbers"
            )
        return value

    def heads(self, hidden: int, heads: int, kv_key: str | None) -> tuple[int, int]:
        """(kv heads, head_dim), checked: kv heads divide the query heads, hidden divides by heads without head_dim."""
        kv_heads = self.count(kv_key) if kv_key and self.values.get(kv_key) is not None else heads
        if heads % kv_heads:
            raise ShardwiseError(
                f"architecture {self.model_type!r}: {kv_key}={kv_heads} does not divide num_attention_heads={heads}; "
                "fix config.json"
            )
        if self.values.get("head_dim") is not None:
            return kv_heads, self.count("head_dim")
        if hidden % heads:
            raise ShardwiseError(
                f"architecture {self.model_type!r}: hidden size {hidden} is not divisible by {heads} attention heads "
                "and config.json gives no head_dim; fix config.json"
            )
        return kv_heads, hidden // heads


_LAYER_KEYS = ("num_hidden_layers", "n_layer")
_MAX_COUNT = 2**31  # any width, vocabulary or expert count beyond this is not a model


def _rotary_dim(cfg: _Config, head_dim: int) -> int:
    factor = cfg.get("partial_rotary_factor")
    for rope_key in ("rope_parameters", "rope_scaling"):
        rope = cfg.get(rope_key)
        if factor is None and isinstance(rope, dict) and rope.get("partial_rotary_factor") is not None:
            factor = rope["partial_rotary_factor"]
    return int(head_dim * (1.0 if factor is None else float(factor)))


def _linear(prefix: str, rows: int, cols: int, bias: bool) -> list[TensorSpec]:
    tensors = [TensorSpec(f"{prefix}.weight", rows * cols, matrix=(1, rows, cols))]
    if bias:
        tensors.append(TensorSpec(f"{prefix}.bias", rows))
    return tensors


def _describe_gpt2(cfg: _Config) -> ArchDescription:
    if cfg.get("add_cross_attention"):
        raise NotImplementedError("gpt2 with cross attention: sized on the meta device")
    hidden, heads, n_layers = cfg.count("n_embd"), cfg.count("n_head"), cfg.count("n_layer")
    cfg.heads(hidden, heads, None)
    vocab, positions = cfg.count("vocab_size"), cfg.count("n_positions")
    inner = cfg.get("n_inner") or 4 * hidden
    tied = bool(cfg.get("tie_word_embeddings"))
    modules = [
        ModuleSpec("transformer.wte", "embed", (TensorSpec("transformer.wte.weight", vocab * hidden),)),
        ModuleSpec("transformer.wpe", "embed", (TensorSpec("transformer.wpe.weight", positions * hidden),)),
    ]
    for i in range(n_layers):
        p = f"transformer.h.{i}"
        tensors = [
            TensorSpec(f"{p}.ln_1.weight", hidden),
            TensorSpec(f"{p}.ln_1.bias", hidden),
            *_linear(f"{p}.attn.c_attn", 3 * hidden, hidden, True),
            *_linear(f"{p}.attn.c_proj", hidden, hidden, True),
            TensorSpec(f"{p}.ln_2.weight", hidden),
            TensorSpec(f"{p}.ln_2.bias", hidden),
            *_linear(f"{p}.mlp.c_fc", inner, hidden, True),
            *_linear(f"{p}.mlp.c_proj", hidden, inner, True),
        ]
        modules.append(ModuleSpec(p, "layer", tuple(tensors), layer_index=i))
    modules.append(
        ModuleSpec(
            "transformer.ln_f",
            "norm",
            (TensorSpec("transformer.ln_f.weight", hidden), TensorSpec("transformer.ln_f.bias", hidden)),
        )
    )
    modules.append(_lm_head(vocab, hidden, tied, "transformer.wte"))
    family = FAMILIES["gpt2"]
    return ArchDescription(
        model_type="gpt2",
        modules=tuple(modules),
        layers=tuple(LayerRule("full", None, False) for _ in range(n_layers)),
        hidden_size=hidden,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=inner,
        max_context_tokens=positions,
        tied_embeddings=tied,
        no_split_module=family.decoder_class,
        has_tp_plan=family.has_tp_plan,
    )


def _lm_head(vocab: int, hidden: int, tied: bool, embed_name: str) -> ModuleSpec:
    if tied:
        return ModuleSpec("lm_head", "head", (), tied_to=embed_name)
    return ModuleSpec("lm_head", "head", (TensorSpec("lm_head.weight", vocab * hidden, matrix=(1, vocab, hidden)),))


def _layer_types(cfg: _Config, n_layers: int) -> tuple[list[str], int | None]:
    """Per-layer attention kind as transformers' DynamicCache sees it, and the sliding window.

    The cache takes `config.layer_types` when the config has it, else marks every layer sliding
    when `sliding_window` is set (mistral v0.1, phi3 mini), else full (cache_utils.get_layer_types_and_kwargs).
    """
    mt = cfg.model_type
    window = cfg.get("sliding_window")
    if mt in ("qwen2", "qwen3", "qwen3_moe") and not cfg.get("use_sliding_window"):
        window = None  # their __post_init__ drops the window unless use_sliding_window
    if mt == "gemma3_text" and cfg.get("use_bidirectional_attention") and window is not None:
        window = window // 2 + 1
    explicit = cfg.get("layer_types")
    if explicit is not None:
        kinds = list(explicit)
        if len(kinds) != n_layers:
            raise ShardwiseError(
                f"architecture {mt!r}: layer_types has {len(kinds)} entries for num_hidden_layers={n_layers}; "
                "give one entry per layer"
            )
    elif mt in ("qwen2", "qwen3"):
        max_window_layers = cfg.get("max_window_layers", 0)
        kinds = [
            "sliding_attention" if window is not None and i >= max_window_layers else "full_attention"
            for i in range(n_layers)
        ]
    elif mt in ("gemma2", "gpt_oss"):
        kinds = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
    elif mt == "gemma3_text":
        pattern = cfg.get("sliding_window_pattern", 6)
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise NotImplementedError("a sliding_window_pattern that is not a count: sized on the meta device")
        kinds = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    else:
        kinds = ["sliding_attention" if window is not None else "full_attention" for _ in range(n_layers)]
    unknown = sorted(set(kinds) - {"sliding_attention", "full_attention"})
    if unknown:
        raise NotImplementedError(f"layer types {unknown}: sized on the meta device")
    if "sliding_attention" in kinds and window is None:
        raise ShardwiseError(
            f"architecture {mt!r}: layer_types has sliding_attention but sliding_window is null; set sliding_window"
        )
    return kinds, window


@dataclass(frozen=True)
class _DecoderShape:
    """The numbers of a llama-shaped decoder that its per-layer tensors are built from."""

    cfg: _Config
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    q_dim: int
    kv_dim: int
    inter: int
    attn_bias: bool
    num_experts: int
    mlp_only: frozenset
    sparse_step: int

    @property
    def mt(self) -> str:
        return self.cfg.model_type


def _attention_tensors(s: _DecoderShape, p: str) -> list[TensorSpec]:
    a, mt = f"{p}.self_attn", s.mt
    if mt == "phi3":
        return [
            *_linear(f"{a}.o_proj", s.hidden, s.q_dim, False),
            *_linear(f"{a}.qkv_proj", s.q_dim + 2 * s.kv_dim, s.hidden, False),
        ]
    tensors = [TensorSpec(f"{a}.sinks", s.heads)] if mt == "gpt_oss" else []
    qkv_bias = s.attn_bias or mt == "qwen2"  # qwen2 hard-codes q/k/v biases, no o_proj bias
    tensors += [
        *_linear(f"{a}.q_proj", s.q_dim, s.hidden, qkv_bias),
        *_linear(f"{a}.k_proj", s.kv_dim, s.hidden, qkv_bias),
        *_linear(f"{a}.v_proj", s.kv_dim, s.hidden, qkv_bias),
        *_linear(f"{a}.o_proj", s.hidden, s.q_dim, s.attn_bias),
    ]
    if mt in ("qwen3", "qwen3_moe", "gemma3_text"):
        tensors += [TensorSpec(f"{a}.q_norm.weight", s.head_dim), TensorSpec(f"{a}.k_norm.weight", s.head_dim)]
    return tensors


def _stacked_experts(m: str, s: _DecoderShape, width: int) -> list[TensorSpec]:
    """mixtral's and qwen3_moe's sparse block: a router and the experts' stacked gate_up / down matrices."""
    n, hidden = s.num_experts, s.hidden
    return [
        TensorSpec(f"{m}.gate.weight", n * hidden),
        TensorSpec(f"{m}.experts.gate_up_proj", n * 2 * width * hidden, matrix=(2 * n, width, hidden)),
        TensorSpec(f"{m}.experts.down_proj", n * hidden * width, matrix=(n, hidden, width)),
    ]


def _gpt_oss_experts(m: str, s: _DecoderShape) -> list[TensorSpec]:
    n, hidden, inter, e = s.num_experts, s.hidden, s.inter, f"{m}.experts"
    return [  # the router is transformers' GptOssTopKRouter, not a Linear: no format packs it
        TensorSpec(f"{m}.router.weight", n * hidden),
        TensorSpec(f"{m}.router.bias", n),
        TensorSpec(
            f"{e}.gate_up_proj",
            n * hidden * 2 * inter,
            expert_matrix=(n * 2 * inter, hidden),
            matrix=(2 * n, inter, hidden),
        ),
        TensorSpec(f"{e}.gate_up_proj_bias", n * 2 * inter),
        TensorSpec(f"{e}.down_proj", n * inter * hidden, expert_matrix=(n * hidden, inter), matrix=(n, hidden, inter)),
        TensorSpec(f"{e}.down_proj_bias", n * hidden),
    ]


def _mlp_tensors(s: _DecoderShape, p: str, i: int) -> tuple[list[TensorSpec], bool]:
    """Layer i's feed-forward tensors, and whether it is a mixture of experts."""
    m, mt, hidden, inter = f"{p}.mlp", s.mt, s.hidden, s.inter
    if mt == "phi3":
        return [
            *_linear(f"{m}.gate_up_proj", 2 * inter, hidden, False),
            *_linear(f"{m}.down_proj", hidden, inter, False),
        ], False
    if mt == "mixtral":
        return _stacked_experts(m, s, inter), True
    if mt == "qwen3_moe" and i not in s.mlp_only and s.num_experts > 0 and (i + 1) % s.sparse_step == 0:
        return _stacked_experts(m, s, s.cfg.count("moe_intermediate_size")), True
    if mt == "gpt_oss":
        return _gpt_oss_experts(m, s), True
    mlp_bias = bool(s.cfg.get("mlp_bias")) and mt == "llama"
    return [
        *_linear(f"{m}.gate_proj", inter, hidden, mlp_bias),
        *_linear(f"{m}.up_proj", inter, hidden, mlp_bias),
        *_linear(f"{m}.down_proj", hidden, inter, mlp_bias),
    ], False


def _decoder_shape(cfg: _Config) -> _DecoderShape:
    mt = cfg.model_type
    hidden, heads = cfg.count("hidden_size"), cfg.count("num_attention_heads")
    kv_heads, head_dim = cfg.heads(hidden, heads, "num_key_value_heads")
    num_experts = 0
    if mt in ("mixtral", "gpt_oss"):
        num_experts = cfg.count("num_local_experts")
    elif mt == "qwen3_moe":
        num_experts = cfg.count("num_experts", 0)
    return _DecoderShape(
        cfg=cfg,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        q_dim=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        inter=cfg.count("intermediate_size"),
        attn_bias=bool(cfg.get("attention_bias")) and mt not in ("mistral", "mixtral", "phi3", "qwen2"),
        num_experts=num_experts,
        mlp_only=frozenset(cfg.get("mlp_only_layers") or ()),
        sparse_step=cfg.get("decoder_sparse_step", 1),
    )


def _describe_decoder(cfg: _Config) -> ArchDescription:
    """The llama-shaped families: embed_tokens, layers, norm, rotary_emb, lm_head."""
    mt = cfg.model_type
    family = FAMILIES[mt]
    s = _decoder_shape(cfg)
    hidden, head_dim = s.hidden, s.head_dim
    n_layers, vocab = cfg.count("num_hidden_layers"), cfg.count("vocab_size")
    tied = bool(cfg.get("tie_word_embeddings"))
    kinds, window = _layer_types(cfg, n_layers)
    top_k = cfg.count("num_experts_per_tok") if mt in ("mixtral", "gpt_oss", "qwen3_moe") else 0

    gemma = mt in ("gemma2", "gemma3_text")
    embed = [TensorSpec("model.embed_tokens.weight", vocab * hidden)]
    if gemma:  # embed_scale: a 0-d non-persistent buffer created in the load dtype
        embed.append(TensorSpec("model.embed_tokens.embed_scale", 1, is_param=False, persistent=False))
    modules = [ModuleSpec("model.embed_tokens", "embed", tuple(embed))]
    layer_rules = []
    norms = ["input_layernorm", "post_attention_layernorm"]
    if gemma:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(n_layers):
        p = f"model.layers.{i}"
        mlp_tensors, is_moe = _mlp_tensors(s, p, i)
        tensors = _attention_tensors(s, p) + mlp_tensors + [TensorSpec(f"{p}.{n}.weight", hidden) for n in norms]
        modules.append(ModuleSpec(p, "layer", tuple(tensors), layer_index=i))
        sliding = kinds[i] == "sliding_attention"
        layer_rules.append(LayerRule("sliding" if sliding else "full", window if sliding else None, is_moe))
    modules.append(ModuleSpec("model.norm", "norm", (TensorSpec("model.norm.weight", hidden),)))
    inv_freq = (_rotary_dim(cfg, head_dim) + 1) // 2
    prefixes = [f"{k}_" for k in sorted(set(kinds))] if mt == "gemma3_text" else [""]
    rotary = tuple(
        TensorSpec(
            f"model.rotary_emb.{prefix}{name}", inv_freq, is_param=False, persistent=False, fixed_dtype="float32"
        )
        for prefix in prefixes
        for name in ("inv_freq", "original_inv_freq")
    )
    modules.append(ModuleSpec("model.rotary_emb", "other", rotary))
    modules.append(_lm_head(vocab, hidden, tied, "model.embed_tokens"))
    return ArchDescription(
        model_type=mt,
        modules=tuple(modules),
        layers=tuple(layer_rules),
        hidden_size=hidden,
        vocab_size=vocab,
        num_attention_heads=s.heads,
        num_kv_heads=s.kv_heads,
        head_dim=head_dim,
        intermediate_size=cfg.count("moe_intermediate_size") if mt == "qwen3_moe" else s.inter,
        max_context_tokens=cfg.count("max_position_embeddings"),
        tied_embeddings=tied,
        no_split_module=family.decoder_class,
        has_tp_plan=family.has_tp_plan,
        num_experts=s.num_experts,
        experts_per_token=top_k,
        keep_fp32=family.keep_fp32,
        keep_fp32_strict=family.keep_fp32_strict,
    )


def describe(model_type: str, arch: dict) -> ArchDescription:
    """Module specs for a fast-path family; NotImplementedError for options only the meta build can size."""
    cfg = _Config(model_type, arch)
    if model_type == "gpt2":
        return _describe_gpt2(cfg)
    return _describe_decoder(cfg)
