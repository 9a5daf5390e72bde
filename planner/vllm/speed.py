"""Time per output token and time to first token of vLLM serving `sessions` concurrent requests.

A roofline over one engine step of continuous batching, per GPU of a TP group (PP stages in turn):

    step(tokens) = fixed + max(weights read, linear FLOPs) + KV read + all-reduces
    time per output token = the mean step: B decoding sequences in every step, and B / output new
        requests per step (each finished request is replaced) whose prompts ride along in chunks of
        up to max_num_batched_tokens: a fraction q of the steps carries a chunk, the rest decode only
        (when q reaches 1, every step carries B x prompt / output prompt tokens)

- weights read: the non-expert bytes of the GPU plus, for MoE, the experts the step's tokens touch
  (E x (1 - (1 - k/E)^tokens) of E per layer), at bandwidth x efficiency;
- linear FLOPs: 2 x active parameters per GPU x tokens at the weight format's dense peak x efficiency;
- KV read: B sequences at the mean context (prompt + half the output; sliding layers capped);
- all-reduces: two per layer when TP > 1, latency plus the ring's 2(t-1)/t of the step's activations
  over NVLink (or PCIe) at link efficiency;
- B is capped by the KV cache: at most `max_concurrency` sequences of prompt + output tokens run at
  once; the rest wait (which lengthens time to first token, not time per token).

Time to first token: half a step (a request arrives mid-step), the wait for a free slot, then its
prompt in chunks of max_num_batched_tokens riding along with the B decodes. The efficiency factors
and the fixed costs are `policy.performance.vllm` (fitted by benchmarks/vllm_calibration.py --fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class VllmSpeedFactors:
    """Defaults: policy.performance.vllm as shipped (conf/policy/default.yaml says how they were fitted)."""

    bandwidth_efficiency: float = 0.88  # of datasheet HBM bandwidth reached reading weights and KV
    compute_efficiency: float = 0.62  # of datasheet dense TFLOPs reached by the step's GEMMs
    step_overhead_ms: float = 1.0  # fixed cost per engine step (scheduler, sampler, graph launch)
    allreduce_latency_us: float = 36.0  # per all-reduce (custom all-reduce / NCCL), two per layer


@dataclass(frozen=True)
class SpeedModel:
    """Everything the step time needs, per GPU of one pipeline stage."""

    layers: int  # decoder layers on one stage
    pp: int
    tp: int
    hidden_size: int
    dense_weight_bytes: int  # per GPU: everything but routed experts
    expert_bytes_per_layer: int  # per GPU: all routed experts of one MoE layer (0: dense)
    moe_layers: int
    num_experts: int
    experts_per_token: int
    active_params: int  # per GPU, per token: non-expert parameters + experts_per_token experts
    kv_bytes_per_token_full: int  # per GPU, per token, over this stage's full-attention layers
    kv_window_bytes: tuple  # ((window, bytes per token of such layers on this GPU), ...)
    attn_flops_per_token_ctx: int  # per GPU: 4 x heads x head_dim x layers (QK^T and PV) per token pair
    bandwidth_bytes_per_s: float
    flops_per_s: float  # dense peak in the weight format (fp8 / fp4 / bf16)
    link_bytes_per_s: float  # one direction, per GPU (0: no TP traffic)
    link_efficiency: float
    act_bytes: int  # bytes per activation element


def _touched_fraction(experts: int, top_k: int, tokens: float) -> float:
    if experts <= 0:
        return 0.0
    return 1.0 - (1.0 - top_k / experts) ** max(tokens, 1.0)


def step_seconds(m: SpeedModel, f: VllmSpeedFactors, decodes: float, prefill: float, context: float) -> float:
    """One engine step with `decodes` sequences at mean `context` tokens and `prefill` prompt tokens."""
    tokens = max(decodes + prefill, 1.0)
    bandwidth = m.bandwidth_bytes_per_s * f.bandwidth_efficiency
    expert_read = (
        m.expert_bytes_per_layer * m.moe_layers * _touched_fraction(m.num_experts, m.experts_per_token, tokens)
    )
    weights = (m.dense_weight_bytes + expert_read) / bandwidth
    flops = 2.0 * m.active_params * tokens / (m.flops_per_s * f.compute_efficiency)
    kv = m.kv_bytes_per_token_full * context
    for window, per_token in m.kv_window_bytes:
        kv += per_token * min(context, window)
    kv_time = decodes * kv / bandwidth
    # prefill attention: each prompt token attends to half the prompt on average
    attn = m.attn_flops_per_token_ctx * prefill * context / 2 / (m.flops_per_s * f.compute_efficiency)
    reduce = 0.0
    if m.tp > 1:
        payload = tokens * m.hidden_size * m.act_bytes * 2 * (m.tp - 1) / m.tp
        link = m.link_bytes_per_s * m.link_efficiency
        per_reduce = f.allreduce_latency_us * 1e-6 + (payload / link if link else 0.0)
        reduce = 2 * m.layers * per_reduce
    stage = max(weights, flops) + kv_time + attn + reduce
    return f.step_overhead_ms * 1e-3 + stage * m.pp


@dataclass(frozen=True)
class Served:
    tpot_ms: float
    ttft_ms: float
    running: int  # sequences decoding together (sessions, capped by the KV cache)
    binding: str


def mean_step_seconds(
    m: SpeedModel, f: VllmSpeedFactors, running: int, prompt_tokens: int, output_tokens: int, batched_tokens: int
) -> tuple[float, float]:
    """(mean step, decode-only step) in steady state: `running` sequences, each replaced after output_tokens."""
    context = prompt_tokens + output_tokens / 2
    decode_only = step_seconds(m, f, running, 0.0, context)
    chunk = max(batched_tokens - running, 1)
    arrivals = running / max(output_tokens, 1)  # new requests per step
    per_step = arrivals * prompt_tokens  # prompt tokens to prefill per step, on average
    carrying = arrivals * math.ceil(prompt_tokens / chunk)  # fraction of steps that carry a prompt chunk
    if carrying >= 1:
        return step_seconds(m, f, running, min(per_step, chunk), context), decode_only
    with_chunk = step_seconds(m, f, running, min(prompt_tokens, chunk), context)
    return (1 - carrying) * decode_only + carrying * with_chunk, decode_only


def serve_speed(
    m: SpeedModel,
    f: VllmSpeedFactors,
    *,
    sessions: int,
    prompt_tokens: int,
    output_tokens: int,
    max_concurrency: float,
    max_num_batched_tokens: int,
) -> Served:
    """tpot and ttft of `sessions` closed-loop clients sending prompt_tokens in and output_tokens out."""
    running = max(1, min(sessions, math.floor(max_concurrency))) if max_concurrency >= 1 else 1
    step, decode_only = mean_step_seconds(m, f, running, prompt_tokens, output_tokens, max_num_batched_tokens)
    chunk = max(max_num_batched_tokens - running, 1)
    chunks = math.ceil(prompt_tokens / chunk)
    prefill = sum(
        step_seconds(m, f, running, min(chunk, prompt_tokens - i * chunk), prompt_tokens) for i in range(chunks)
    )
    waiting = max(sessions - running, 0)
    wait = waiting / running * output_tokens * step if waiting else 0.0
    ttft = 0.5 * step + wait + prefill
    binding = (
        f"{running} sequence(s) decode together"
        + (f" (the KV cache holds {running} of {sessions})" if waiting else "")
        + f"; prefill of new prompts adds {max(step - decode_only, 0) * 1e3:.1f} ms to the mean step"
    )
    return Served(tpot_ms=step * 1e3, ttft_ms=ttft * 1e3, running=running, binding=binding)


def speed_model(inv, shape, device, hw, *, fp8_math: bool, link_efficiency: float) -> SpeedModel:
    """The SpeedModel of `inv` under `shape` (planner.vllm.memory.Shape) on GPUs like `device` of `hw`.

    fp8_math: the weights are an FP8 format vLLM multiplies in FP8 (else the compute dtype's peak).
    """
    from planner.vllm.memory import _attention_page_per_token, weights_per_gpu

    tp, pp = shape.tp, max(shape.pp, 1)
    layers = math.ceil(len(inv.layers) / pp)
    stage_layers = inv.layers[:layers]
    per_gpu = weights_per_gpu(inv, shape)
    experts_total = sum(m.expert_bytes for m in inv.modules) // pp
    embed_bytes = 0 if inv.tied_embeddings else sum(m.bytes for m in inv.modules if m.kind == "embed")
    dense_bytes = max(per_gpu - experts_total // tp - embed_bytes // tp, 0)
    moe_layers = sum(1 for layer in stage_layers if layer.moe)
    expert_params = sum(m.expert_params for m in inv.modules)
    embed_params = 0 if inv.tied_embeddings else sum(m.params for m in inv.modules if m.kind == "embed")
    routed = inv.experts_per_token / inv.num_experts if inv.num_experts else 1.0
    active = (inv.params_total - embed_params - expert_params * (1 - routed)) / pp / tp
    full = 0
    windows: dict[int, int] = {}
    for layer in stage_layers:
        per_token = _attention_page_per_token(layer, shape)
        if layer.window and layer.attention in ("sliding", "chunked"):
            windows[layer.window] = windows.get(layer.window, 0) + per_token
        else:
            full += per_token
    peak = (
        device.fp8_tflops
        if fp8_math and device.fp8_tflops
        else device.tflops("bfloat16" if shape.dtype_bytes == 2 else "float32")
    )
    if shape.dtype_bytes == 2 and not fp8_math and device.bf16_tflops == 0:
        peak = device.fp16_tflops
    link = hw.nvlink_gb_per_s if hw.interconnect == "nvlink" else hw.pcie_gb_per_s
    return SpeedModel(
        layers=layers,
        pp=pp,
        tp=tp,
        hidden_size=inv.hidden_size,
        dense_weight_bytes=dense_bytes,
        expert_bytes_per_layer=(experts_total // tp) // max(moe_layers, 1) if moe_layers else 0,
        moe_layers=moe_layers,
        num_experts=inv.num_experts,
        experts_per_token=inv.experts_per_token,
        active_params=int(active),
        kv_bytes_per_token_full=full,
        kv_window_bytes=tuple(sorted(windows.items())),
        attn_flops_per_token_ctx=4 * (inv.num_attention_heads // tp) * inv.head_dim * layers,
        bandwidth_bytes_per_s=device.memory_bandwidth_gb_per_s * 1e9,
        flops_per_s=peak * 1e12,
        link_bytes_per_s=link * 1e9,
        link_efficiency=link_efficiency,
        act_bytes=shape.dtype_bytes,
    )
