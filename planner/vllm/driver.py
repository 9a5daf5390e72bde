"""A plan for vLLM: the layout, context and verdict vLLM itself would reach, and the Plan that says so.

planner.driver.planning calls `plan_vllm` once the formats and the inventory are decided. Tensor parallel
size: every GPU of a node for policy.strategy=tensor_parallel (pipeline stages across nodes), one
for single_gpu, and for auto the fewest (a divisor of the attention heads) on which vLLM starts.
max_model_len: policy.context_tokens, or the model's maximum, or (auto) the longest that starts.
A layout that does not start carries vLLM's refusal and fixes re-checked with the same rules.
"""

from __future__ import annotations

import math

from planner.decide.stack import software_block
from planner.errors import ShardwiseError
from planner.memory.kv import kv_bytes_per_token, state_bytes_per_sequence
from planner.model.inventory import DTYPE_BYTES
from planner.planfile.plan import DeviceBudget, Launch, Limits, Plan
from planner.vllm import memory as vm
from planner.vllm.flags import serve_flags
from planner.vllm.rules import default_batching, rules_for
from planner.vllm.speed import VllmSpeedFactors, serve_speed, speed_model


def _tp_sizes(inv, policy, per_node: int, nodes: int) -> list[tuple[int, int]]:
    """(tp, pp) layouts to try, fewest GPUs first."""
    heads = inv.num_attention_heads

    def ok(t: int) -> bool:
        kv = inv.num_kv_heads
        return heads % t == 0 and (kv == 0 or kv % t == 0 or t % kv == 0)

    if policy.strategy == "tensor_parallel" or nodes > 1:
        if not ok(per_node):
            raise ShardwiseError(
                f"vLLM needs the {heads} attention heads to divide by the tensor-parallel size {per_node}: "
                "use a hardware.count that divides them"
            )
        return [(per_node, nodes)]
    if policy.strategy == "single_gpu" or per_node == 1:
        return [(1, 1)]
    if policy.strategy == "pipeline":
        return [(1, per_node)]
    return [(t, 1) for t in range(1, per_node + 1) if ok(t)]


def _factors(policy) -> VllmSpeedFactors:
    given = ((policy.performance or {}).get("vllm")) or {}
    return VllmSpeedFactors(**{k: float(v) for k, v in dict(given).items()})


class _Sizer:
    """vLLM's memory for this model and hardware at any (tp, pp, max_model_len, utilization, kv bytes)."""

    def __init__(self, inv, formats, hw, policy):
        self.inv, self.formats, self.hw, self.policy = inv, formats, hw, policy
        self.engine = policy.engine
        self.rules = rules_for(self.engine.version)
        gpus = [d for d in hw.devices if d.node == 0]
        self.device = min(gpus, key=lambda d: (d.free_bytes, d.total_bytes))  # the tightest GPU binds
        mnbt, seqs, self.batching_reason = default_batching(vm.cuda_total(self.device.total_bytes), self.device.name)
        self.mnbt = self.engine.max_num_batched_tokens or mnbt
        self.seqs = self.engine.max_num_seqs or seqs
        self.util = self.engine.gpu_memory_utilization or self.rules.default_utilization
        self.dtype_bytes = DTYPE_BYTES[formats.dtype]
        kv = formats.kv_dtype
        self.kv_bytes = 1 if kv.startswith("fp8") else DTYPE_BYTES.get(kv, self.dtype_bytes)
        self.quantized_experts = bool(inv.num_experts and formats.quant_kept)
        self.eight_bit_math = False  # weights and activations in 8 bits: the GPU's FP8 / INT8 tensor-core peak

    def shape(self, tp, pp, length, util=None, kv_bytes=None) -> vm.Shape:
        return vm.Shape(
            tp=tp,
            pp=pp,
            max_model_len=length,
            max_num_batched_tokens=self.mnbt,
            max_num_seqs=self.seqs,
            utilization=util or self.util,
            dtype_bytes=self.dtype_bytes,
            kv_bytes=kv_bytes or self.kv_bytes,
            quantized_experts=self.quantized_experts,
        )

    def memory(self, tp, pp, length, util=None, kv_bytes=None) -> vm.VllmMemory:
        d = self.device
        return vm.vllm_memory(
            self.inv, self.shape(tp, pp, length, util, kv_bytes), self.rules, d.total_bytes, d.free_bytes
        )

    def longest(self, tp, pp, low, high, util=None, kv_bytes=None) -> int | None:
        """The longest max_model_len in [low, high] (a multiple of the block size, or high) that starts."""
        if self.memory(tp, pp, high, util, kv_bytes).fits:
            return high
        if not self.memory(tp, pp, low, util, kv_bytes).fits:
            return None
        block = self.rules.block_size_tokens
        lo, hi = low, high  # lo starts, hi does not
        while hi - lo > block:
            mid = (lo + hi) // 2 // block * block or lo
            if mid <= lo:
                break
            if self.memory(tp, pp, mid, util, kv_bytes).fits:
                lo = mid
            else:
                hi = mid
        return lo


def _decide_engine_knobs(sizer, engine, notes) -> None:
    """The engine and its three memory/batching knobs, each with whether the user or vLLM's default set it."""
    notes.decide("engine", f"vllm {engine.version}", f"launch.engine=vllm: sized by vLLM {sizer.rules.release}'s rules")
    notes.decide(
        "gpu_memory_utilization",
        f"{sizer.util:.2f}",
        "launch.gpu_memory_utilization" if engine.gpu_memory_utilization else "vLLM's default",
    )
    notes.decide(
        "max_num_batched_tokens",
        sizer.mnbt,
        "launch.max_num_batched_tokens" if engine.max_num_batched_tokens else sizer.batching_reason,
    )
    notes.decide("max_num_seqs", sizer.seqs, "launch.max_num_seqs" if engine.max_num_seqs else sizer.batching_reason)


def _first_layout_that_starts(sizer, layouts, requested, low: int, model_max: int):
    """(tp, pp, max_model_len), or None when no layout starts.

    The fewest GPUs that start at the context asked for; none asked: that reach the model's maximum, else the
    layout that gives the most context (the fewest GPUs among equals), as the runner's placement does."""
    chosen = None
    for tp, pp in layouts:
        length = requested or sizer.longest(tp, pp, low, model_max)
        if length is None or not sizer.memory(tp, pp, length).fits:
            continue
        if chosen is None or length > chosen[2]:
            chosen = (tp, pp, length)
        if requested or length >= model_max:
            break
    return chosen


def _auto_sessions(sizer, engine, mem, tp: int, pp: int, length: int, fits: bool, notes):
    """policy.sessions=auto: as many sequences as the KV cache holds at max_model_len, up to max_num_seqs; with
    vLLM's default max_num_seqs, that flag becomes those sessions (a smaller sampler profile, so the KV cache only
    grows and they still fit). Returns (sessions, memory as sized then)."""
    sessions = max(1, min(math.floor(mem.max_concurrency), sizer.seqs))
    notes.decide(
        "sessions",
        sessions,
        f"policy.sessions=auto: the KV cache holds {mem.max_concurrency:.2f} sequences of {length} tokens "
        f"(at most max_num_seqs {sizer.seqs})",
    )
    if engine.max_num_seqs is None and fits:
        sizer.seqs = sessions
        mem = sizer.memory(tp, pp, length)
        notes.decide("max_num_seqs", sessions, "the sessions policy.sessions=auto sized (as shardwise serve does)")
    return sessions, mem


def _budget_row(sizer, mem, num_layers: int) -> DeviceBudget:
    """The plan's memory row for one GPU in vLLM's terms (non-torch memory and CUDA graphs as overhead)."""
    kv = max(mem.kv_cache_bytes, 0)
    overhead = mem.non_torch_bytes + mem.cudagraph_bytes
    return DeviceBudget(
        device=str(sizer.device.id),
        weights=mem.weights_bytes,
        kv_cache=kv,
        activations=mem.activation_peak_bytes,
        overhead=overhead,
        planned=mem.weights_bytes + kv + mem.activation_peak_bytes + overhead,
        usable=mem.free_at_start_bytes,
        free_after=mem.free_at_start_bytes - mem.budget_bytes - mem.cudagraph_bytes,
        layers=(0, num_layers - 1),
    )


def plan_vllm(spec, hw, policy, formats, inv, notes, model_info) -> Plan:
    """The Plan of `spec` served by vLLM on `hw` (formats and inventory already decided)."""
    if not hw.devices:
        raise ShardwiseError("launch.engine=vllm needs GPUs: plan it on a GPU tier or a probed GPU machine")
    sizer = _Sizer(inv, formats, hw, policy)
    sizer.eight_bit_math = _eight_bit_math(spec, formats)
    engine = policy.engine
    _decide_engine_knobs(sizer, engine, notes)
    per_node = len([d for d in hw.devices if d.node == 0])
    layouts = _tp_sizes(inv, policy, per_node, hw.nodes)
    model_max = inv.max_context_tokens
    requested = policy.context_tokens
    if requested is not None and requested > model_max and inv.context_limit == "config":
        raise ShardwiseError(
            f"policy.context_tokens={requested} exceeds the model's maximum of {model_max} tokens: "
            f"use at most {model_max} or auto"
        )
    low = min(policy.min_context_tokens, model_max)
    chosen = _first_layout_that_starts(sizer, layouts, requested, low, model_max)
    fits = chosen is not None
    if fits and policy.objective != "auto" and len(layouts) > 1:
        chosen = _by_objective(sizer, layouts, chosen, policy, notes)
    if not fits:
        tp, pp = layouts[-1]
        chosen = (tp, pp, requested or model_max)
    tp, pp, length = chosen
    mem = sizer.memory(tp, pp, length)
    why = (
        "policy.context_tokens"
        if requested
        else ("the model's maximum" if length == model_max else "the longest max_model_len vLLM starts with")
    )
    notes.decide("max_model_len", length, why)
    notes.decide("tensor_parallel_size", tp, _layout_reason(policy, tp, pp, per_node, len(layouts)))
    sessions = policy.sessions
    if sessions is None:
        sessions, mem = _auto_sessions(sizer, engine, mem, tp, pp, length, fits, notes)
    performance = _performance(sizer, mem, tp, pp, sessions, length) if fits else {}
    flags = serve_flags(
        tp=tp,
        pp=pp,
        max_model_len=length,
        max_num_seqs=sizer.seqs,
        max_num_batched_tokens=sizer.mnbt,
        gpu_memory_utilization=sizer.util,
        dtype=formats.dtype,
        kv_cache_dtype=_kv_flag(formats.kv_dtype, formats.dtype),
        expert_parallel=engine.enable_expert_parallel and bool(inv.num_experts),
        revision=spec.revision,
        quantization=_on_load_flag(formats.on_load),
    )
    block = engine_block(engine, sizer, mem, flags, tp, pp, length)
    binding = {}
    if not fits:
        notes.warn(f"vLLM would not start: {mem.refusal}")
        binding = {
            "device": str(sizer.device.id),
            "term": mem.term,
            "needed": mem.weights_bytes + mem.non_torch_bytes + mem.activation_peak_bytes + mem.cudagraph_bytes,
            "usable": mem.free_at_start_bytes,
            "refusal": mem.refusal,
            "fixes": _fixes(sizer, policy, tp, pp, length, requested, low, per_node, hw),
        }
    strategy = "tensor_parallel" if tp > 1 or hw.nodes > 1 else ("pipeline" if pp > 1 else "single_gpu")
    row = _budget_row(sizer, mem, len(inv.layers))
    limits = Limits(
        context_tokens=length,
        sessions=sessions,
        max_new_tokens=length,
        kv_bytes_per_token=kv_bytes_per_token(inv.layers, sizer.kv_bytes),
        state_bytes_per_sequence=state_bytes_per_sequence(inv.layers, sizer.dtype_bytes),
    )
    return Plan(
        model=model_info,
        hardware=hw.to_dict(),
        strategy=strategy,
        nodes=hw.nodes if strategy == "tensor_parallel" else 1,
        tp_size=tp,
        pp_size=pp,
        device_map={"": sizer.device.id} if strategy == "single_gpu" else {},
        max_memory={},
        budget=(row,),
        limits=limits,
        fits=fits,
        decisions=tuple(notes.decisions),
        warnings=tuple(notes.warnings),
        launch=Launch(
            command="shardwise launch plan_file=plan.json launch.engine=vllm", env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        ),
        attn_implementation=formats.attn,
        kv_cache_dtype=formats.kv_dtype,
        binding=binding,
        performance=performance,
        engine=block,
        software=software_block(hw.installed, hw.probed, hw.source),
    )


def _by_objective(sizer, layouts, fewest, policy, notes):
    """policy.objective over the layouts that start at the fewest's max_model_len: latency, the lowest time per
    output token of one request; throughput, the most tokens/s over policy.sessions (ties: fewer GPUs)."""
    length = fewest[2]
    sessions = policy.sessions or sizer.seqs
    priced = []
    for tp, pp in layouts:
        mem = sizer.memory(tp, pp, length)
        if not mem.fits:
            continue
        perf = _performance(sizer, mem, tp, pp, 1 if policy.objective == "latency" else sessions, length)
        if not perf.get("available"):
            return fewest
        score = -perf["tpot_ms"] if policy.objective == "latency" else perf["aggregate_tokens_per_s"]
        priced.append((score, -tp * pp, (tp, pp, length), perf))
    best = max(priced)
    shown = ", ".join(
        f"TP {c[0]}: {p['tpot_ms']:.1f} ms/token, {p['aggregate_tokens_per_s']:,.0f} tok/s" for _, _, c, p in priced
    )
    notes.decide("objective", policy.objective, f"vLLM's predicted speed at {length:,} tokens ({shown})")
    return best[2]


def _eight_bit_math(spec, formats) -> bool:
    """8-bit weights (FP8, ModelOpt FP8, compressed-tensors FP8/INT8 W8A8, FP8 on load) multiply at the 8-bit
    tensor-core peak; 4-bit formats (AWQ, GPTQ, NVFP4, MXFP4) are dequantized into bf16 math on Hopper."""
    if formats.on_load == "fp8":
        return True
    if not (spec.quantization and formats.quant_kept):
        return False
    from planner.model.quant import parse_format, shipped_config

    fmt = parse_format(shipped_config(spec.architecture, spec.model_dir))
    return fmt is not None and fmt.bits == 8 and fmt.method not in ("bitsandbytes", "awq", "gptq")


def _on_load_flag(on_load: str | None) -> str | None:
    """vLLM's --quantization for policy.quantization=fp8 | bnb4 (vLLM has no in-flight 8-bit bitsandbytes)."""
    if on_load is None:
        return None
    if on_load == "bnb8":
        raise ShardwiseError(
            "policy.quantization=bnb8: vLLM quantizes in flight to fp8 or 4-bit bitsandbytes only: "
            "use policy.quantization=fp8 or bnb4 with launch.engine=vllm"
        )
    return {"fp8": "fp8", "bnb4": "bitsandbytes"}[on_load]


def _kv_flag(kv_dtype: str, dtype: str) -> str:
    if kv_dtype.startswith("fp8"):
        return kv_dtype
    return "auto"  # vLLM's cache follows --dtype


def _layout_reason(policy, tp, pp, per_node, tried) -> str:
    if policy.strategy == "tensor_parallel":
        return f"policy.strategy=tensor_parallel: every GPU of the node ({per_node})" + (
            f", {pp} pipeline stages across nodes" if pp > 1 else ""
        )
    if tried > 1:
        return f"the fewest of {per_node} GPUs (dividing the heads) on which vLLM starts at this max_model_len"
    return f"policy.strategy={policy.strategy}"


def engine_block(engine, sizer, mem: vm.VllmMemory, flags, tp, pp, length) -> dict:
    """plan.json's `engine` for vLLM (the keys the issue's contract names, then the details)."""
    return {
        "name": "vllm",
        "version": engine.version,
        "rules": sizer.rules.release,
        "gpu_memory_utilization": round(sizer.util, 4),
        "max_num_batched_tokens": sizer.mnbt,
        "max_num_seqs": sizer.seqs,
        "max_model_len": length,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "kv_cache_dtype": _kv_flag(sizer.formats.kv_dtype, sizer.formats.dtype),
        "block_size": mem.block_size,
        "num_gpu_blocks": mem.num_gpu_blocks,
        "per_gpu": {
            "weights_bytes": mem.weights_bytes,
            "non_torch_bytes": mem.non_torch_bytes,
            "activation_peak_bytes": mem.activation_peak_bytes,
            "cudagraph_bytes": mem.cudagraph_bytes,
            "kv_cache_bytes": mem.kv_cache_bytes,
            "total_bytes": mem.total_bytes,
            "budget_bytes": mem.budget_bytes,
            "free_at_start_bytes": mem.free_at_start_bytes,
        },
        "kv_cache_tokens": mem.kv_cache_tokens,
        "max_concurrency": round(mem.max_concurrency, 2),
        "fits": mem.fits,
        "refusal": mem.refusal,
        "flags": flags,
    }


def runner_engine_block() -> dict:
    """plan.json's `engine` for shardwise's own runner (transformers, the version installed where it was planned)."""
    from planner.decide.stack import installed_version

    return {"name": "transformers", "version": installed_version("transformers") or ""}


def _performance(sizer, mem, tp, pp, sessions, length) -> dict:
    policy = sizer.policy
    device = sizer.device
    if not device.memory_bandwidth_gb_per_s or not (device.bf16_tflops or device.fp16_tflops):
        return {
            "available": False,
            "engine": "vllm",
            "reason": f"{device.name} has no published bandwidth / TFLOPs in the tiers: plan on a tier that has them",
        }
    perf = policy.performance or {}
    prompt = int(perf.get("prompt_tokens", 512))
    output = int(perf.get("output_tokens", 256))
    factors = _factors(policy)
    model = speed_model(
        sizer.inv,
        sizer.shape(tp, pp, length),
        sizer.device,
        sizer.hw,
        fp8_math=sizer.eight_bit_math,
        link_efficiency=float(perf.get("link_efficiency", 0.7)),
    )

    def served(count: int, prompt_len: int, output_len: int):
        at = sizer.memory(tp, pp, min(prompt_len + output_len, length))
        return serve_speed(
            model,
            factors,
            sessions=count,
            prompt_tokens=prompt_len,
            output_tokens=output_len,
            max_concurrency=at.max_concurrency,
            max_num_batched_tokens=sizer.mnbt,
        )

    output = max(1, min(output, length - 1))
    prompt = max(1, min(prompt, length - output))
    now = served(sessions, prompt, output)
    alone = served(1, prompt, output)
    full = served(1, max(length - 1, 1), 1)
    return {
        "available": True,
        "engine": "vllm",
        "tpot_ms": round(now.tpot_ms, 3),
        "ttft_ms": round(now.ttft_ms, 2),
        "sessions": sessions,
        "running": now.running,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "decode_tokens_per_s": round(1000 / alone.tpot_ms, 2),
        "aggregate_tokens_per_s": round(now.running * 1000 / now.tpot_ms, 2),
        "ttft_s": round(alone.ttft_ms / 1000, 4),
        "ttft_full_s": round(full.ttft_ms / 1000, 3),
        "context_tokens": length,
        "binding": f"vLLM: {now.tpot_ms:.1f} ms per token at {sessions} session(s): {now.binding}",
    }


def _fixes(sizer, policy, tp, pp, length, requested, low, per_node, hw) -> list[dict]:
    """Changes that make vLLM start, each re-checked with the same rules."""
    fixes = []
    startable = [u / 100 for u in range(50, 100) if sizer.memory(tp, pp, length, util=u / 100).fits]
    if startable:
        best = max(startable)
        fixes.append(
            _fix(
                f"launch.gpu_memory_utilization={best:.2f} (vLLM starts at {length} tokens)",
                f"launch.gpu_memory_utilization={best:.2f}",
            )
        )
    if requested:
        longest = sizer.longest(tp, pp, low, length)
        if longest:
            fixes.append(
                _fix(
                    f"policy.context_tokens={longest} (the longest max_model_len that starts)",
                    f"policy.context_tokens={longest}",
                )
            )
    if sizer.kv_bytes > 1 and sizer.memory(tp, pp, length, kv_bytes=1).fits:
        fixes.append(
            _fix("policy.kv_cache_dtype=fp8 (--kv-cache-dtype fp8: half the KV bytes)", "policy.kv_cache_dtype=fp8")
        )
    if hw.nodes == 1:
        for more in (2, 4, 8):
            if more <= tp or sizer.inv.num_attention_heads % more:
                continue
            if sizer.memory(more, pp, length).fits:
                fixes.append(
                    _fix(
                        f"hardware.count={more} policy.strategy=tensor_parallel (vLLM TP {more})",
                        f"hardware.count={more}",
                        "policy.strategy=tensor_parallel",
                    )
                )
                break
    return fixes


def _fix(text: str, *overrides: str) -> dict:
    return {"text": text, "overrides": list(overrides)}
