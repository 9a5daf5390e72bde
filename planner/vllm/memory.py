"""vLLM's startup memory accounting per GPU, as its logs print it.

vLLM (0.10 - 0.20) profiles one forward pass of `max_num_batched_tokens` tokens plus a dummy sampler
run over `max_num_seqs` sequences, then sizes its KV cache as

    kv_cache = gpu_memory_utilization x total - weights - non-torch memory - activation peak

("Available KV cache memory: X GiB"), cuts it into blocks of 16 tokens per layer group, and reports
"GPU KV cache size: N tokens" and "Maximum concurrency for L tokens per request: Cx". CUDA graphs
are captured afterwards, outside that budget (before v0.21). This module reproduces those numbers
and the four ways startup fails; the constants are in planner/vllm/rules.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from planner.model.inventory import Inventory, LayerSpec
from planner.units import GIB
from planner.vllm.rules import (
    CUDA_RESERVED_BYTES,
    GRAPH_BASE_BYTES,
    GRAPH_PER_LAYER_BYTES,
    GRAPH_PER_QUANTIZED_MOE_LAYER_BYTES,
    VllmRules,
)

KV_DTYPE_BYTES = {"auto": None, "bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


@dataclass(frozen=True)
class Shape:
    """What vLLM is asked to run: parallel sizes, lengths, batching limits and the formats."""

    tp: int
    pp: int
    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int
    utilization: float
    dtype_bytes: int  # activations (bf16 / fp16)
    kv_bytes: int  # bytes per KV element (fp8: 1)
    quantized_experts: bool = False  # MoE experts held in a quantized format (graph workspaces)


@dataclass(frozen=True)
class KvGroups:
    """vLLM's KV-cache layout for one GPU: layer groups sharing one block table, and their block costs."""

    block_size: int  # tokens per block
    page_bytes: int  # one block of one layer (the largest spec's; vLLM makes them uniform)
    group_size: int  # layers per group (each group's blocks are one tensor per layer slot)
    num_groups: int
    specs: tuple  # (kind, window or None, layers of that kind on this GPU)

    def blocks_per_request(self, max_model_len: int, batched_tokens: int) -> int:
        """Blocks one request of max_model_len tokens holds at most, summed over the groups (vLLM's
        max_memory_usage_bytes per spec: sliding layers keep window - 1 + one prefill batch, plus a block)."""
        total = 0
        for kind, window, count in self.specs:
            groups = math.ceil(count / self.group_size)
            if kind == "mamba":
                need = 1
            elif kind == "sliding":
                need = math.ceil(min(window - 1 + batched_tokens, max_model_len) / self.block_size) + 1
            elif kind == "chunked":
                need = math.ceil(min(window + batched_tokens, max_model_len) / self.block_size)
            else:
                need = math.ceil(max_model_len / self.block_size)
            total += groups * need
        return total


@dataclass(frozen=True)
class VllmMemory:
    """One GPU's startup budget (bytes) and what vLLM reports from it."""

    total_bytes: int  # what CUDA reports (NVML total - CUDA's reserve)
    free_at_start_bytes: int
    budget_bytes: int  # utilization x total
    weights_bytes: int
    non_torch_bytes: int
    activation_peak_bytes: int
    cudagraph_bytes: int
    kv_cache_bytes: int  # may be negative: no room
    num_gpu_blocks: int
    kv_cache_tokens: int
    max_concurrency: float
    block_size: int
    fits: bool
    refusal: str = ""  # what vLLM says when it refuses to start ("" when it starts)
    term: str = ""  # the term that binds when it does not start
    groups: KvGroups | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("groups")
        return data


def weights_per_gpu(inv: Inventory, shape: Shape) -> int:
    """Bytes one GPU holds: the largest pipeline stage (layers split evenly, embedding first, head last)
    divided over the TP ranks, plus the K/V projections each rank replicates when TP exceeds the KV heads."""
    layers = [m for m in inv.modules if m.kind == "layer"]
    pre = sum(m.bytes for m in inv.modules if m.kind == "embed")
    post = sum(m.bytes for m in inv.modules if m.kind not in ("layer", "embed"))
    if shape.pp <= 1:
        stage = inv.weight_bytes
    else:
        per_stage = math.ceil(len(layers) / shape.pp)
        chunks = [layers[i : i + per_stage] for i in range(0, len(layers), per_stage)]
        sums = [sum(m.bytes for m in chunk) for chunk in chunks]
        sums[0] += pre
        sums[-1] += post
        stage = max(sums)
    share = -(-stage // shape.tp)
    kv_heads = inv.num_kv_heads
    if shape.tp > kv_heads > 0:  # each rank keeps a whole KV head: K and V projections replicated
        per_layer = 2 * inv.hidden_size * inv.head_dim * shape.dtype_bytes * (1 - kv_heads / shape.tp)
        share += int(per_layer * math.ceil(len(layers) / max(shape.pp, 1)))
    return share


def activation_peak(inv: Inventory, shape: Shape, rules: VllmRules) -> int:
    """The profile run's peak: hidden states of max_num_batched_tokens tokens, the fused-MoE caches, and
    the larger of the dense MLP's intermediates and the dummy sampler over max_num_seqs sequences."""
    tokens = shape.max_num_batched_tokens
    hidden = 2 * tokens * inv.hidden_size * shape.dtype_bytes  # residual + hidden states
    moe = 0
    if inv.num_experts:
        width = 3 * inv.intermediate_size // shape.tp + inv.hidden_size  # w13 out, activation out, w2 out
        moe = tokens * inv.experts_per_token * width * shape.dtype_bytes
    dense = 0 if inv.num_experts else tokens * 3 * inv.intermediate_size // shape.tp * shape.dtype_bytes
    sampler = int(rules.sampler_peak_per_logit * min(shape.max_num_seqs, tokens) * inv.vocab_size)
    return hidden + moe + max(dense, sampler)


def cudagraph_bytes(inv: Inventory, shape: Shape) -> int:
    """Graph pool of the captured sizes (planner/vllm/rules.py says how it was fitted).

    Under tensor parallel half of a layer's captured buffers shrink with the shard (the MLP and attention
    widths), half do not (the hidden states): (1 + 1/tp) / 2 of it, 0.75 at TP 2 (Llama-3.1-8B: 0.76 GiB
    logged at TP 2 against 0.91 at TP 1).
    """
    layers = math.ceil(len(inv.layers) / max(shape.pp, 1))
    moe_layers = sum(1 for layer in inv.layers if layer.moe) / max(shape.pp, 1)
    extra = GRAPH_PER_QUANTIZED_MOE_LAYER_BYTES * moe_layers if shape.quantized_experts else 0
    shard = (1 + 1 / shape.tp) / 2
    return int(GRAPH_BASE_BYTES + (GRAPH_PER_LAYER_BYTES * layers + extra) * shard)


def _attention_page_per_token(layer: LayerSpec, shape: Shape) -> int:
    """K and V (or the MLA latent, which every TP rank keeps whole) of one token on one rank."""
    if layer.kv_width == 0:
        return 0
    if layer.attention == "mla" or layer.num_kv_heads == 0:
        return layer.kv_width * shape.kv_bytes
    heads_here = max(1, layer.num_kv_heads // shape.tp)  # replicated when TP exceeds the KV heads
    return layer.kv_width * heads_here // layer.num_kv_heads * shape.kv_bytes


def kv_groups(inv: Inventory, shape: Shape, block_size: int) -> KvGroups | None:
    """Group this GPU's layers as vLLM's hybrid allocator does (one group per kind when the counts are
    close, else groups of the smallest count), with one page size for all (None: no cache at all)."""
    stage_layers = inv.layers[: math.ceil(len(inv.layers) / max(shape.pp, 1))]
    counts: dict[tuple, int] = {}
    attn_page_token = 0
    mamba_page = 0
    for layer in stage_layers:
        per_token = _attention_page_per_token(layer, shape)
        if per_token:
            attn_page_token = max(attn_page_token, per_token)
            kind = layer.attention if layer.attention in ("sliding", "chunked") and layer.window else "full"
            key = (kind, layer.window if kind != "full" else None)
            counts[key] = counts.get(key, 0) + 1
        state = layer.state_bytes(shape.dtype_bytes)
        if state:
            mamba_page = max(mamba_page, -(-state // shape.tp))
            counts[("mamba", None)] = counts.get(("mamba", None), 0) + 1
    if not counts:
        return None
    if mamba_page and attn_page_token:  # attention blocks grow until a page holds a Mamba state
        block_size = block_size * math.ceil(mamba_page / (attn_page_token * block_size))
    page = max(attn_page_token * block_size, mamba_page)
    fewest, most = min(counts.values()), max(counts.values())
    group_size = most if most < 1.25 * fewest else fewest
    num_groups = sum(math.ceil(n / group_size) for n in counts.values())
    specs = tuple((kind, window, n) for (kind, window), n in counts.items())
    return KvGroups(block_size, page, group_size, num_groups, specs)


def cuda_total(nvml_total_bytes: int) -> int:
    return nvml_total_bytes - CUDA_RESERVED_BYTES


def vllm_memory(inv: Inventory, shape: Shape, rules: VllmRules, nvml_total: int, nvml_free: int) -> VllmMemory:
    """vLLM's budget on one GPU of `nvml_total` bytes (`nvml_free` free now), and whether it starts."""
    total = cuda_total(nvml_total)
    multi = shape.tp * shape.pp > 1
    used_at_start = rules.startup_used_multi_bytes if multi else rules.startup_used_single_bytes
    free_at_start = min(total, nvml_free - CUDA_RESERVED_BYTES) - used_at_start
    budget = int(shape.utilization * total)
    weights = weights_per_gpu(inv, shape)
    non_torch = rules.non_torch_multi_bytes if multi else rules.non_torch_single_bytes
    peak = activation_peak(inv, shape, rules)
    graphs = cudagraph_bytes(inv, shape)
    kv = budget - weights - non_torch - peak
    groups = kv_groups(inv, shape, rules.block_size_tokens)
    blocks = tokens = 0
    concurrency = 0.0
    block_size = rules.block_size_tokens
    if groups is not None and kv > 0:
        block_size = groups.block_size
        blocks = kv // (groups.page_bytes * groups.group_size)
        tokens = blocks // groups.num_groups * groups.block_size
        per_request = groups.blocks_per_request(shape.max_model_len, shape.max_num_batched_tokens)
        concurrency = blocks / per_request
    refusal, term = _refusal(
        shape, weights, total, budget, kv, free_at_start, graphs, concurrency, groups, rules, inv, tokens
    )
    return VllmMemory(
        total_bytes=total,
        free_at_start_bytes=free_at_start,
        budget_bytes=budget,
        weights_bytes=weights,
        non_torch_bytes=non_torch,
        activation_peak_bytes=peak,
        cudagraph_bytes=graphs,
        kv_cache_bytes=kv,
        num_gpu_blocks=blocks,
        kv_cache_tokens=tokens,
        max_concurrency=concurrency,
        block_size=block_size,
        fits=not refusal,
        refusal=refusal,
        term=term,
        groups=groups,
    )


def _refusal(shape, weights, total, budget, kv, free_at_start, graphs, concurrency, groups, rules, inv, tokens):
    """(what vLLM says, the binding term) for the first check startup fails, or ("", "")."""
    g = GIB
    if weights > total:
        return f"CUDA out of memory loading the weights ({weights / g:.2f} GiB on a {total / g:.2f} GiB GPU)", "weights"
    if budget > free_at_start:
        return (
            f"Free memory on device ({free_at_start / g:.2f}/{total / g:.2f} GiB) on startup is less than desired "
            f"GPU memory utilization ({shape.utilization}, {budget / g:.2f} GiB)",
            "gpu_memory_utilization",
        )
    if kv <= 0 or groups is None and inv.layers:
        return (
            f"No available memory for the cache blocks: weights, non-torch memory and the activation peak "
            f"take {(budget - kv) / g:.2f} of the {budget / g:.2f} GiB budget",
            "kv_cache",
        )
    if concurrency < 1:
        longest = tokens  # vLLM's estimate of the longest max_model_len the cache holds (uniform layers)
        return (
            f"To serve at least one request with max seq len ({shape.max_model_len}), more KV cache is needed than "
            f"the available {kv / g:.2f} GiB; the estimated maximum model length is about {longest}",
            "kv_cache",
        )
    left = free_at_start - budget - graphs
    warmup = int(rules.warmup_logit_bytes * shape.max_num_seqs * inv.vocab_size)
    if rules.graphs_outside_budget and left < warmup:
        return (
            f"CUDA out of memory after graph capture: {(free_at_start - budget) / g:.2f} GiB outside the budget, "
            f"graphs take ~{graphs / g:.2f} GiB, the sampler warm-up needs ~{warmup / g:.2f} GiB more",
            "cudagraph",
        )
    return "", ""
