"""Size and place one request: a model spec, on these devices, under a policy with a fixed session count.

The single planning step, run once per question; the searches that ask it many questions
(policy.sessions=auto, the fixes of a misfit, the fallback chain, model=auto) live in
planner.driver: planning.py (the driver), sessions.py, fixes.py and fallbacks.py, and call
`size_and_place` directly. Order mirrors the design: hardware -> dtype and quantization (decided
before sizing) -> inventory -> cost model -> strategy search (fewest GPUs, then tensor parallel
across nodes, then offload; planner.place.search) -> limits -> why it does or does not fit
(planner.explain.prose) -> launch. Pure: nothing here reads files or touches a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.decide.decisions import Formats, decide_formats
from planner.decide.policy import Policy
from planner.decide.stack import software_block
from planner.errors import ShardwiseError
from planner.explain import prose
from planner.hardware.devices import Hardware
from planner.memory.kv import kv_bytes_per_token, state_bytes_per_sequence
from planner.memory.serving import human_bytes, plan_serving
from planner.memory.terms import CostModel
from planner.model.inventory import DTYPE_BYTES, Inventory, build_inventory
from planner.model.source import ModelSpec
from planner.place import objective, search
from planner.place.placement import Slot, best_chunk, evaluate
from planner.planfile.plan import Decision, DeviceBudget, Launch, Limits, ModelInfo, Notes, Plan, Quantization, Serving
from planner.vllm.driver import runner_engine_block


@dataclass(frozen=True)
class Placed:
    """One request sized and placed: the plan, the devices it used, and what a misfit's fixes start from."""

    plan: Plan
    used: Hardware  # the devices planned on (mixed GPUs: only the stronger ones, when they suffice)
    formats: Formats  # dtype, quantization and attention decided for `used`
    inv: Inventory  # every module's bytes in those formats


def size_and_place(
    spec: ModelSpec,
    hw: Hardware,
    policy: Policy,
    *,
    cap_context: bool = False,
    choose: bool = True,
    speed: bool = True,
    sessions_reason: str = "",
) -> Placed:
    """The plan for exactly this request: `policy.sessions` is a count here (auto is a search: planner.driver.planning).

    cap_context: a context beyond the model's maximum is capped (fallbacks, model=auto), not refused.
    choose=False keeps the fewest GPUs that fit without weighing the others by policy.objective, and
    speed=False leaves out the performance block: for the plans a search asks only whether they fit.
    sessions_reason: why policy.sessions is this count, when a search chose it (else policy.sessions_why,
    else the policy asked for it). A plan that does not
    fit names what binds; what would make it fit is the driver's question (planner.driver.fixes).
    """
    if policy.sessions is None and not policy.engine.is_vllm:  # vLLM sizes sessions=auto itself (planner/vllm)
        raise ValueError(
            "size_and_place plans a session count: policy.sessions=auto is planner.driver.planning's search"
        )
    reason = sessions_reason or policy.sessions_why
    return _place_preferring_stronger(spec, hw, policy, cap_context, speed, choose, reason)


def _place_preferring_stronger(
    spec, hw: Hardware, policy: Policy, cap_context: bool, speed: bool, choose: bool, sessions_reason: str
) -> Placed:
    """Mixed GPUs: first try only those that keep bf16 / MXFP4, so a weaker card never downgrades the plan.

    dtype and quantization follow the weakest GPU a plan uses; a plan that fits on the stronger
    ones alone keeps their formats and leaves the weaker ones out.
    """

    def capability(d) -> tuple[bool, bool]:
        return (d.cc_major_minor >= (8, 0), d.cc_major_minor >= (7, 5))

    if hw.devices and len({capability(d) for d in hw.devices}) > 1:
        best = max(capability(d) for d in hw.devices)
        chosen = tuple(d for d in hw.devices if capability(d) == best)
        ids = {d.id for d in chosen}
        subset = replace(hw, devices=chosen, nvlink_pairs=tuple(p for p in hw.nvlink_pairs if set(p) <= ids))
        placed = _place_on(spec, subset, policy, cap_context, speed, choose, sessions_reason)
        on_subset = placed.plan
        if on_subset.fits:
            left_out = ", ".join(
                f"GPU {d.id} ({d.name}, cc {d.compute_capability})" for d in hw.devices if d.id not in ids
            )
            note = Decision(
                "gpus",
                f"{len(chosen)} of {len(hw.devices)}",
                f"left out {left_out}: the model fits on the GPUs that keep {on_subset.model.dtype}"
                + (" and MXFP4" if on_subset.model.quantization.kept else ""),
            )
            plan = replace(on_subset, hardware=hw.to_dict(), decisions=(note, *on_subset.decisions))
            return replace(placed, plan=plan)
    return _place_on(spec, hw, policy, cap_context, speed, choose, sessions_reason)


@dataclass(frozen=True)
class _Sizing:
    """What one planning run sizes with: the request, the formats decided, the inventory and its cost model."""

    spec: ModelSpec
    hw: Hardware
    policy: Policy
    formats: Formats
    inv: Inventory
    cost: CostModel
    notes: Notes
    speed: bool = True  # the plan gets its performance block


def _place_on(
    spec: ModelSpec, hw: Hardware, policy: Policy, cap_context: bool, speed: bool, choose: bool, sessions_reason: str
) -> Placed:
    """One planning run on exactly these devices."""
    notes = Notes(warnings=list(hw.notes))
    for entry in spec.provenance:  # where the model's numbers came from, first
        notes.decide(*entry)
    formats = decide_formats(spec, hw, policy, notes)
    inv = build_inventory(
        spec.architecture,
        dtype=formats.dtype,
        quantization=spec.quantization,
        keep_quantized=formats.quant_kept,
        checkpoint_dtype=spec.shipped_dtype,
        model_dir=spec.model_dir,
        load_quantization=formats.load_quant,
    )
    for entry in inv.provenance:  # a meta-path description: shipped, cached or built now
        notes.decide(*entry)
    for warning in inv.warnings:  # context limits, checkpoint names
        if warning not in notes.warnings:
            notes.warn(warning)
    if policy.engine.is_vllm:  # vLLM sizes, lays out and refuses by its own rules (planner/vllm)
        from planner.vllm.driver import plan_vllm

        return Placed(
            plan_vllm(spec, hw, policy, formats, inv, notes, _model_info(spec, inv, formats)), hw, formats, inv
        )
    images = policy.images_per_request if inv.image_tokens else 0
    cost = CostModel(inv, formats.dtype, formats.kv_dtype, formats.attn, policy.sessions, policy.overhead, images)
    if inv.image_tokens:
        notes.decide(
            "images_per_request",
            images,
            f"{inv.model_class} takes images: {inv.image_tokens_reason}; the encoder's pass over {images} image(s) "
            "per request is in the first device's activations (policy.images_per_request)",
        )
    max_ctx = inv.max_context_tokens
    requested = policy.context_tokens
    if inv.context_limit != "config" and requested is not None:
        max_ctx = max(max_ctx, requested)  # no position limit in config.json: the policy decides
    if requested is not None and requested > max_ctx:
        if not cap_context:
            raise ShardwiseError(
                f"policy.context_tokens={requested} exceeds the model's maximum of {max_ctx} tokens: "
                f"use at most {max_ctx} or auto"
            )
        notes.decide("context_cap", max_ctx, f"policy.context_tokens={requested} exceeds {spec.name}'s maximum: capped")
        requested = max_ctx
    low = min(policy.min_context_tokens, max_ctx)
    tried = search.attempts(inv, cost, hw, policy, notes)
    found = search.first_fit(tried, cost, requested, low, max_ctx, policy.prefill_chunk_tokens)
    run = _Sizing(spec, hw, policy, formats, inv, cost, notes, speed)
    if found is None:
        return Placed(_does_not_fit(run, tried, requested or low), hw, formats, inv)
    found, chosen_because = _by_objective(run, tried, found) if choose else (found, "")
    attempt, context, chunk = found.attempt, found.context, found.chunk
    slots = attempt.build(context, chunk)
    priced = evaluate(slots, cost, context, chunk)
    strategy = prose.executed_strategy(attempt, slots)
    prose.explain_strategy(notes, strategy, found, slots, priced, hw, inv, policy)
    if chosen_because:
        notes.decide("objective", policy.objective, chosen_because)
    binding = prose.explain_context(notes, inv, cost, attempt, context, chunk, requested)
    prose.explain_chunk(notes, context, chunk, formats.attn)
    notes.decide(
        "sessions",
        policy.sessions,
        sessions_reason or f"KV cache sized for {policy.sessions} concurrent sequence(s) (policy.sessions)",
    )
    return Placed(_make_plan(run, strategy, attempt, slots, priced, context, chunk, True, binding), hw, formats, inv)


def _by_objective(run: _Sizing, tried: list, found: search.Found) -> tuple[search.Found, str]:
    """The layout policy.objective takes among those that fit at the found context, and why (place/objective.py)."""
    context, chunk_req = found.context, run.policy.prefill_chunk_tokens

    def chunk_at(attempt) -> int | None:
        return best_chunk(lambda c, k: attempt.fits_at(run.cost, c, k), context, chunk_req)

    def price(attempt, chunk: int) -> dict:
        from planner.speed.block import decode_speeds

        return decode_speeds(
            run.inv,
            run.hw,
            attempt.build(context, chunk),
            tp_size=attempt.tp_size,
            dtype=run.formats.dtype,
            kv_elem_bytes=run.cost.kv_elem_bytes,
            context_tokens=context,
            sessions=run.policy.sessions,
            config=run.policy.performance,
        )

    extra = search.speed_alternatives(run.inv, run.cost, run.hw, run.policy)
    return objective.take(found, tried, extra, run.policy, chunk_at=chunk_at, price=price)


def _does_not_fit(run: _Sizing, tried: list, context: int) -> Plan:
    """Report against the largest arrangement tried (all GPUs of one node, or the CPU); fixes come later."""
    candidates = [a for a in tried if a.strategy != "offload"] or tried
    if not candidates:
        raise ShardwiseError("nothing to plan on: no devices")
    attempt = max(candidates, key=lambda a: a.gpus)
    chunk = min(context, 512)
    slots = attempt.build(context, chunk) or []
    priced = evaluate(slots, run.cost, context, chunk) if slots else []
    tried_text = prose.tried(attempt, run.hw, run.inv, run.policy)
    if attempt.strategy != "offload" and any(a.strategy == "offload" for a in tried):  # tried too, not shown
        offload = next(a for a in tried if a.strategy == "offload")
        tried_text += f"; {prose.tried(offload, run.hw, run.inv, run.policy)} did not fit either"
    run.notes.decide("strategy", objective.label(attempt), f"does not fit on the largest layout tried: {tried_text}")
    binding = prose.does_not_fit_binding(run.notes, run.cost, priced, context, fixes=[])
    if binding:
        shards = max(attempt.tp_size, 1)  # a tensor-parallel row stands for each GPU of its stage
        binding = {
            **binding,
            "tried": tried_text,
            "needed_total": shards * sum(p.planned for p in priced if p.device != "disk"),
            "usable_total": shards * sum(p.usable for p in priced if p.device != "disk"),
        }
    return _make_plan(run, attempt.strategy, attempt, slots, priced, context, chunk, False, binding)


def _make_plan(run: _Sizing, strategy, attempt, slots, priced, context, chunk, fits, binding) -> Plan:
    spec, hw, policy, formats, inv, cost, notes = (
        run.spec,
        run.hw,
        run.policy,
        run.formats,
        run.inv,
        run.cost,
        run.notes,
    )
    model = _model_info(spec, inv, formats)
    limits = Limits(
        context_tokens=context,
        sessions=policy.sessions,
        # a reply may use whatever context the prompt leaves; generation.max_tokens is only the default
        max_new_tokens=context,
        kv_bytes_per_token=kv_bytes_per_token(inv.layers, cost.kv_elem_bytes),
        state_bytes_per_sequence=state_bytes_per_sequence(inv.layers, cost.dtype_bytes),
        prefill_chunk_tokens=chunk if chunk < context else 0,
    )
    if not fits:
        notes.warn("the plan does not fit: see the binding device and the fixes")
    serving = _serving(notes, inv, formats, strategy, context, policy.sessions, hw, priced) if fits else None
    offload_folder = policy.offload_folder if any(p.device == "disk" for p in priced) else None
    return Plan(
        model=model,
        hardware=hw.to_dict(),
        strategy=strategy,
        nodes=attempt.nodes,
        tp_size=attempt.tp_size,
        pp_size=attempt.pp_size,
        device_map=_device_map(slots, strategy, attempt.nodes) if slots else {},
        max_memory=_max_memory(slots, priced, strategy, attempt.nodes),
        budget=tuple(priced),
        limits=limits,
        fits=fits,
        decisions=tuple(notes.decisions),
        warnings=tuple(notes.warnings),
        launch=_launch(strategy),
        attn_implementation=formats.attn,
        kv_cache_dtype=formats.kv_dtype,
        offload_folder=offload_folder,
        binding=binding,
        serving=serving,
        performance=_performance(run, slots, attempt, limits) if fits and slots and run.speed else {},
        engine=runner_engine_block(),
        software=software_block(hw.installed, hw.probed, hw.source),
    )


def _performance(run: _Sizing, slots: list[Slot], attempt, limits: Limits) -> dict:
    """The plan's predicted speed (planner/speed/block.py) on its layout, with tpot_ms / ttft_ms as every engine has."""
    block = _speed(run, slots, attempt, limits.context_tokens, limits.prefill_chunk_tokens, limits.sessions)
    if block.get("available") and block.get("aggregate_tokens_per_s"):
        per_sequence = block["aggregate_tokens_per_s"] / max(limits.sessions, 1)
        block = {
            **block,
            "engine": "transformers",
            "tpot_ms": round(1000 / per_sequence, 3),
            "ttft_ms": round(block["ttft_s"] * 1000, 2),
        }
    return block


def _speed(run: _Sizing, slots: list[Slot], attempt, context: int, chunk: int, sessions: int) -> dict:
    """The performance block of `slots` laid out by `attempt` at (context, prefill chunk; 0 or >= context: none)."""
    from planner.speed.block import performance_block

    return performance_block(
        run.inv,
        run.hw,
        slots,
        tp_size=attempt.tp_size,
        dtype=run.formats.dtype,
        kv_elem_bytes=run.cost.kv_elem_bytes,
        context_tokens=context,
        sessions=sessions,
        prefill_chunk_tokens=chunk if 0 < chunk < context else 0,
        config=run.policy.performance,
    )


def _serving(notes: Notes, inv, formats: Formats, strategy, context, sessions, hw, priced) -> Serving:
    """Continuous batching sized for policy.sessions at the planned context (planner/memory/serving.py)."""
    serving = plan_serving(
        inv,
        dtype_bytes=DTYPE_BYTES[formats.dtype],
        attn=formats.attn,
        strategy=strategy,
        context=context,
        sessions=sessions,
        on_gpu=bool(hw.devices),
    )
    notes.decide("serving", serving.mode, serving.reason)
    planned = sum(b.kv_cache + b.activations for b in priced)
    if serving.mode == "batched" and serving.footprint_bytes > planned:
        notes.warn(
            f"continuous batching reserves {human_bytes(serving.footprint_bytes)} (paged cache, batch buffers, "
            f"masks) where the plan's KV cache and activations hold {human_bytes(planned)}: "
            f"the difference comes out of headroom"
        )
    return serving


def _model_info(spec: ModelSpec, inv: Inventory, formats: Formats) -> ModelInfo:
    return ModelInfo(
        name=spec.name,
        source=spec.source,
        model_type=inv.model_type,
        params_total=inv.params_total,
        weight_bytes=inv.weight_bytes,
        checkpoint_bytes=inv.checkpoint_bytes,
        dtype=formats.dtype,
        quantization=Quantization(spec.quantization, formats.quant_kept, formats.quant_reason, on_load=formats.on_load),
        max_context_tokens=inv.max_context_tokens,
        num_layers=len(inv.layers),
        trust_remote_code=spec.trust_remote_code,
        chat_template=spec.chat_template,
        revision=spec.revision,
    )


def _device_map(slots: list[Slot], strategy: str, nodes: int = 1) -> dict:
    if strategy == "tensor_parallel" or nodes > 1:
        return {}  # distributed ranks load their own share: no single-process device_map
    if len(slots) == 1:
        return {"": slots[0].key}
    return {m.name: s.key for s in slots for m in s.modules}


def _max_memory(slots: list[Slot], priced: list[DeviceBudget], strategy: str, nodes: int = 1) -> dict:
    if strategy == "tensor_parallel" or nodes > 1:
        return {}
    return {
        slot.key: max(p.usable - p.kv_cache - p.state - p.activations - p.overhead, p.weights)
        for slot, p in zip(slots, priced)
        if p.device != "disk"
    }


def _launch(strategy: str) -> Launch:
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    if strategy == "tensor_parallel":
        return Launch(command="shardwise launch plan_file=plan.json", env=env)
    if strategy == "cpu":
        return Launch(command="shardwise chat plan_file=plan.json", env={})
    return Launch(command="shardwise chat plan_file=plan.json", env=env)
