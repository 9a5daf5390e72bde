"""Roofline speed model: predicted decode tokens/s and time to first token for a placed plan.

Pure arithmetic on a `SpeedInputs` (no torch, no files, no environment). A decode step reads every
active weight once (MoE: only the routed experts, plus the dense and shared parts) and the KV cache
of each sequence, and does ~2 FLOPs per active parameter per sequence; whichever of memory and
compute takes longer binds (the roofline). Weights streamed from host RAM or disk (offload),
tensor-parallel all-reduces and pipeline hand-offs are added on top, then a fixed per-layer and
per-step cost of the runner (Python, kernel launches, sampling). Stages of a pipeline run one after
another (transformers + accelerate, and torchrun's pipeline, do not overlap them for one step).

Peak numbers are the published ones (datasheets, or the probe's measurement on a CPU); each term
is scaled by an efficiency factor (`Efficiency`), fitted from measurements on other runs than the
ones the prediction is scored on (see conf/policy/default.yaml and benchmarks/speed_prediction.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.units import GIB


@dataclass(frozen=True)
class Efficiency:
    """Fraction of the peak each term reaches, and the runner's fixed costs."""

    bandwidth: float = 0.8  # of peak memory bandwidth
    compute: float = 0.5  # of peak dense FLOPs at the plan's dtype
    link: float = 0.7  # of a link's peak (NVLink, PCIe, network, disk)
    layer_overhead_s: float = 0.0  # per decoder layer per forward pass (launches, Python)
    step_overhead_s: float = 0.0  # per forward pass (generate loop, logits processing, sampling)

    def __post_init__(self):
        for name in ("bandwidth", "compute", "link"):
            value = getattr(self, name)
            assert 0 < value <= 1, f"efficiency {name}={value} must be in (0, 1]"
        assert self.layer_overhead_s >= 0 and self.step_overhead_s >= 0


@dataclass(frozen=True)
class AttentionLayer:
    """What one layer's attention reads and computes per token of context (one sequence, one rank)."""

    kv_bytes_per_token: int  # K and V of one token
    window: int | None  # sliding window in tokens; None: every token of the context
    qk_width: int  # query heads x head_dim: attention FLOPs per (query, key) pair are 4 x this


@dataclass(frozen=True)
class Stream:
    """Weights that do not live on the executing device and are read again every forward pass."""

    bytes: int
    bytes_per_s: float  # peak of the link they come over
    label: str  # "host RAM over PCIe 4.0 x16", "disk"


@dataclass(frozen=True)
class Link:
    label: str  # "NVLink", "PCIe 4.0 x16", "network"
    bytes_per_s: float  # peak, one direction
    latency_s: float = 10e-6  # per message


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a device (or each rank of a tensor-parallel group) and the layers it runs."""

    label: str  # "GPU 0", "cpu", "each of 2 GPUs"
    memory_bytes_per_s: float  # peak memory bandwidth of the device
    flops_per_s: float  # peak dense FLOPs at the plan's dtype
    dense_weight_bytes: int  # weights read by every token (non-expert parts), per rank
    dense_params: int  # parameters every token multiplies (embeddings excluded: a lookup), per rank
    expert_weight_bytes: int = 0  # all routed experts' weights held here, per rank
    expert_params: int = 0  # all routed experts' parameters held here, per rank
    layers: tuple[AttentionLayer, ...] = ()
    streams: tuple[Stream, ...] = ()
    efficiency: Efficiency = field(default_factory=Efficiency)


@dataclass(frozen=True)
class SpeedInputs:
    stages: tuple[Stage, ...]  # in pipeline order
    hidden_bytes: int  # one token's hidden state (hidden_size x dtype bytes): what all-reduces and hand-offs move
    num_experts: int = 0  # routed experts per MoE layer (0: dense model)
    experts_per_token: int = 0
    tp_size: int = 1
    tp_link: Link | None = None  # link inside a tensor-parallel group
    hops: tuple[Link, ...] = ()  # link from each stage to the next (len(stages) - 1)

    def __post_init__(self):
        assert self.stages, "a speed prediction needs at least one stage"
        assert len(self.hops) == len(self.stages) - 1, "one hand-off link between consecutive stages"
        assert self.tp_size == 1 or self.tp_link is not None, "tensor parallel needs its link"


@dataclass(frozen=True)
class StepTime:
    """Seconds of one forward pass, split into the terms that explain it."""

    seconds: float
    terms: dict  # term -> seconds, summed over stages (for the binding term)
    binding: str  # the term that dominates, in words


@dataclass(frozen=True)
class Prediction:
    decode_tokens_per_s: float  # one sequence, at `at_context_tokens`
    aggregate_tokens_per_s: float  # all `sessions` sequences decoding together
    ttft_s: float  # one sequence, prompt of `prompt_tokens`
    ttft_full_s: float  # one sequence, prompt of the full context
    binding: str  # what binds decode of one sequence, in words
    sessions: int
    prompt_tokens: int
    at_context_tokens: int
    context_tokens: int
    aggregate_binding: str = ""

    def to_dict(self) -> dict:
        return {
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 3),
            "aggregate_tokens_per_s": round(self.aggregate_tokens_per_s, 3),
            "sessions": self.sessions,
            "ttft_s": round(self.ttft_s, 4),
            "ttft_full_s": round(self.ttft_full_s, 4),
            "prompt_tokens": self.prompt_tokens,
            "at_context_tokens": self.at_context_tokens,
            "context_tokens": self.context_tokens,
            "binding": self.binding,
            "aggregate_binding": self.aggregate_binding,
        }


def attention_pairs(tokens: int, window: int | None, cached: int = 0) -> int:
    """(query, key) pairs a causal layer scores when `tokens` new tokens follow `cached` ones."""
    total = 0
    # query i (0-based, after `cached` tokens) sees min(cached + i + 1, window) keys
    if window is None or cached + tokens <= window:
        first, last = cached + 1, cached + tokens
        return (first + last) * tokens // 2
    reach = max(0, window - cached)  # queries that still see fewer than `window` keys
    reach = min(reach, tokens)
    if reach:
        first, last = cached + 1, cached + reach
        total += (first + last) * reach // 2
    return total + (tokens - reach) * window


def routed_fraction(num_experts: int, experts_per_token: int, tokens: int) -> float:
    """Expected fraction of one layer's experts that `tokens` independent tokens touch (uniform routing)."""
    if num_experts <= 0 or experts_per_token <= 0:
        return 1.0
    miss = 1.0 - experts_per_token / num_experts
    return 1.0 - miss**tokens


def _stage_terms(stage: Stage, inp: SpeedInputs, sequences: int, new_tokens: int, cached: int) -> dict:
    """Seconds per term for `sequences` sequences each feeding `new_tokens` after `cached` tokens, on one stage."""
    eff = stage.efficiency
    bandwidth = stage.memory_bytes_per_s * eff.bandwidth
    flops_rate = stage.flops_per_s * eff.compute
    tokens = sequences * new_tokens
    touched = routed_fraction(inp.num_experts, inp.experts_per_token, tokens)
    per_token = (inp.experts_per_token / inp.num_experts) if inp.num_experts else 1.0
    weights = stage.dense_weight_bytes + stage.expert_weight_bytes * touched
    kv_read = sum(
        sequences * layer.kv_bytes_per_token * (min(cached, layer.window) if layer.window else cached)
        for layer in stage.layers
    )
    kv_write = sum(tokens * layer.kv_bytes_per_token for layer in stage.layers)
    flops = 2 * tokens * (stage.dense_params + stage.expert_params * per_token)
    flops += sum(
        4 * layer.qk_width * sequences * attention_pairs(new_tokens, layer.window, cached) for layer in stage.layers
    )
    terms = {
        "weights": weights / bandwidth,
        "kv": (kv_read + kv_write) / bandwidth,
        "compute": flops / flops_rate,
        "overhead": eff.layer_overhead_s * len(stage.layers),
    }
    memory = terms["weights"] + terms["kv"]
    # the roofline: memory traffic and math overlap; only the larger counts
    if terms["compute"] >= memory:
        terms["weights"] = terms["kv"] = 0.0
    else:
        terms["compute"] = 0.0
    for stream in stage.streams:
        key = f"stream:{stream.label}"
        terms[key] = terms.get(key, 0.0) + stream.bytes / (stream.bytes_per_s * eff.link)
    if inp.tp_size > 1:
        link = inp.tp_link
        payload = tokens * inp.hidden_bytes * 2 * (inp.tp_size - 1) / inp.tp_size  # ring all-reduce
        per_call = link.latency_s + payload / (link.bytes_per_s * eff.link)
        terms["tp"] = 2 * len(stage.layers) * per_call  # after attention and after the MLP, every layer
    return terms


def step_time(inp: SpeedInputs, sequences: int, new_tokens: int, cached: int, what: str) -> StepTime:
    """One forward pass over every stage in turn."""
    terms: dict[str, float] = {}
    per_stage = []
    for stage in inp.stages:
        stage_terms = _stage_terms(stage, inp, sequences, new_tokens, cached)
        per_stage.append(stage_terms)
        for key, seconds in stage_terms.items():
            terms[key] = terms.get(key, 0.0) + seconds
    for link in inp.hops:
        eff = inp.stages[0].efficiency.link
        terms["hop"] = (
            terms.get("hop", 0.0)
            + link.latency_s
            + sequences * new_tokens * inp.hidden_bytes / (link.bytes_per_s * eff)
        )
    terms["overhead"] = terms.get("overhead", 0.0) + inp.stages[0].efficiency.step_overhead_s
    seconds = sum(terms.values())
    return StepTime(seconds, terms, _binding_words(inp, terms, sequences, new_tokens, cached, what))


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e12:.2f} TB/s" if bytes_per_s >= 1e12 else f"{bytes_per_s / 1e9:.1f} GB/s"


def _binding_words(inp: SpeedInputs, terms: dict, sequences: int, new_tokens: int, cached: int, what: str) -> str:
    key = max(terms, key=terms.get)
    stages = inp.stages
    where = f" ({len(stages)} stages in turn)" if len(stages) > 1 else ""
    slowest_bw = min(s.memory_bytes_per_s for s in stages)
    tokens = sequences * new_tokens
    if key == "weights":
        touched = routed_fraction(inp.num_experts, inp.experts_per_token, tokens)
        read = sum(s.dense_weight_bytes + s.expert_weight_bytes * touched for s in stages)
        per = "per token" if what == "decode" and sequences == 1 else "per step"
        return f"{what} is bound by reading {read / GIB:.1f} GiB of weights {per} at {_rate(slowest_bw)}{where}"
    if key == "kv":
        kv = f"the KV cache of {sequences} sequence(s) at {cached:,} tokens"
        return f"{what} is bound by reading {kv} at {_rate(slowest_bw)}{where}"
    if key == "compute":
        peak = min(s.flops_per_s for s in stages)
        rate = f"{peak / 1e12:.1f} dense TFLOPs" if peak >= 1e12 else f"{peak / 1e9:.0f} GFLOPs"
        return f"{what} is bound by compute: {tokens:,} token(s) per pass at {rate}{where}"
    if key.startswith("stream:"):
        label = key.split(":", 1)[1]
        read = sum(st.bytes for s in stages for st in s.streams if st.label == label)
        return f"{what} is bound by streaming {read / GIB:.1f} GiB of offloaded weights per pass from {label}"
    if key == "tp":
        calls = 2 * len(stages[0].layers)
        return f"{what} is bound by tensor-parallel all-reduces over {inp.tp_link.label} ({calls} per pass)"
    if key == "hop":
        return f"{what} is bound by pipeline hand-offs between {len(stages)} stages"
    layers = sum(len(s.layers) for s in stages)
    return f"{what} is bound by the runner's fixed cost per pass ({layers} layers of kernel launches and Python)"


def predict(
    inp: SpeedInputs, *, context_tokens: int, sessions: int, prompt_tokens: int = 512, prefill_chunk_tokens: int = 0
) -> Prediction:
    """Decode tokens/s (one sequence and `sessions` together) and time to first token.

    Decode is priced at the typical prompt (`prompt_tokens` already in the cache, capped at the
    context); `ttft_full_s` prefills the whole context in chunks of `prefill_chunk_tokens` (0: one pass).
    """
    prompt = max(1, min(prompt_tokens, context_tokens))
    single = step_time(inp, 1, 1, prompt, "decode")
    many = step_time(inp, sessions, 1, prompt, "decode")
    return Prediction(
        decode_tokens_per_s=1.0 / single.seconds,
        aggregate_tokens_per_s=sessions / many.seconds,
        ttft_s=prefill_seconds(inp, prompt, prefill_chunk_tokens),
        ttft_full_s=prefill_seconds(inp, context_tokens, prefill_chunk_tokens),
        binding=single.binding,
        aggregate_binding=many.binding,
        sessions=sessions,
        prompt_tokens=prompt,
        at_context_tokens=prompt,
        context_tokens=context_tokens,
    )


def prefill_seconds(inp: SpeedInputs, tokens: int, chunk_tokens: int = 0) -> float:
    """Time to first token for a prompt of `tokens`: every chunk is one forward pass over all stages."""
    chunk = chunk_tokens if 0 < chunk_tokens < tokens else tokens
    seconds, done = 0.0, 0
    while done < tokens:
        step = min(chunk, tokens - done)
        seconds += step_time(inp, 1, step, done, "prefill").seconds
        done += step
    return seconds


def prefill_binding(inp: SpeedInputs, tokens: int) -> str:
    return step_time(inp, 1, tokens, 0, "prefill").binding
