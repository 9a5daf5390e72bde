"""Turn a composed config (model, hardware, policy, generation) into a Plan.

Order matters and mirrors the design: hardware -> dtype and quantization (decided before
sizing) -> inventory -> cost model -> strategy search (fewest GPUs, then tensor parallel across
nodes, then offload) -> limits -> why it does or does not fit -> fallbacks -> launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from planner.decisions import decide_attention, decide_dtype, decide_kv_dtype, decide_quantization
from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware
from planner.kv import kv_bytes_per_token
from planner.memory import CostModel, Overheads, headroom
from planner.model.inventory import Inventory, build_inventory
from planner.model.source import ModelSpec, load_profile, spec_from_config
from planner.placement import Priced, Slot, evaluate, largest_context, layout_layers, layout_offload
from planner.plan import Decision, DeviceBudget, Launch, Limits, ModelInfo, Plan, Quantization
from planner.units import GIB, gib

PCIE_BYTES_PER_S = 25e9  # PCIe 4.0 x16, effective
DISK_BYTES_PER_S = 2e9  # a fast NVMe drive, sequential reads


@dataclass
class Attempt:
    """One candidate arrangement: how to lay it out at (context, chunk), and what it is called."""

    strategy: str
    build: object  # callable (context, chunk) -> list[Slot] | None
    gpus: int
    tp_size: int = 1
    pp_size: int = 1
    nodes: int = 1
    note: str = ""
    slots: list = field(default_factory=list)

    def fits_at(self, cost: CostModel, context: int, chunk: int) -> bool:
        slots = self.build(context, chunk)
        return bool(slots) and all(p.fits for p in evaluate(slots, cost, context, chunk))


def _parse_context(value, max_ctx: int) -> int | None:
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        number = float(text)
    except ValueError:
        raise ShardwiseError(
            f"policy.context_tokens={value!r} is neither a number nor auto: use e.g. policy.context_tokens=8192"
        ) from None
    if not number.is_integer():
        raise ShardwiseError(
            f"policy.context_tokens={value!r} is not a whole number of tokens: use e.g. policy.context_tokens=8192"
        )
    tokens = int(number)
    if tokens <= 0:
        raise ShardwiseError(
            f"policy.context_tokens={tokens} must be positive: use e.g. policy.context_tokens=8192 or auto"
        )
    if tokens > max_ctx:
        raise ShardwiseError(
            f"policy.context_tokens={tokens} exceeds the model's maximum of {max_ctx} tokens: use at most {max_ctx} or auto"
        )
    return tokens


def _validate_policy(policy) -> None:
    checks = [
        (policy.sessions >= 1, f"policy.sessions={policy.sessions} must be >= 1"),
        (0 <= policy.headroom_fraction < 1, f"policy.headroom_fraction={policy.headroom_fraction} must be in [0, 1)"),
        (policy.headroom_mib >= 0, f"policy.headroom_mib={policy.headroom_mib} must be >= 0"),
        (
            0 <= policy.host_headroom_fraction < 1,
            f"policy.host_headroom_fraction={policy.host_headroom_fraction} must be in [0, 1)",
        ),
        (
            policy.prefill_chunk_tokens >= 0,
            f"policy.prefill_chunk_tokens={policy.prefill_chunk_tokens} must be >= 0 (0: auto)",
        ),
        (policy.min_context_tokens >= 1, f"policy.min_context_tokens={policy.min_context_tokens} must be >= 1"),
        (policy.overhead.fragmentation_fraction >= 0, "policy.overhead.fragmentation_fraction must be >= 0"),
        (
            policy.overhead.cuda_context_mib >= 0 and policy.overhead.workspace_mib >= 0,
            "policy.overhead sizes must be >= 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ShardwiseError(message)


class Planner:
    """One planning run. `plan()` returns the Plan; nothing here touches a GPU."""

    def __init__(
        self,
        spec: ModelSpec,
        hw: Hardware,
        policy,
        generation,
        with_fallbacks: bool = True,
        cap_context: bool = False,
        explain: bool = True,
    ):
        _validate_policy(policy)
        self.spec, self.hw, self.policy, self.generation = spec, hw, policy, generation
        self.with_fallbacks = with_fallbacks
        self.explain = explain  # work out (by re-planning) what would make a does-not-fit plan fit
        self.cap_context = (
            cap_context  # fallbacks and model=auto candidates: a context beyond the model's maximum is capped
        )
        self.decisions: list[Decision] = []
        self.warnings: list[str] = list(hw.notes)

    def decide(self, what: str, value, reason: str) -> None:
        self.decisions.append(Decision(what, str(value), reason))

    # ---- sizing inputs -------------------------------------------------------------------
    def _decide_formats(self) -> None:
        spec, hw, policy = self.spec, self.hw, self.policy
        dtype = decide_dtype(
            str(policy.dtype.value if hasattr(policy.dtype, "value") else policy.dtype), spec.shipped_dtype, hw
        )
        self.dtype = dtype.value
        self.decide("dtype", dtype.value, dtype.reason)
        quant_policy = str(getattr(policy.quantization, "value", policy.quantization))
        self.quant_kept, quant_reason = decide_quantization(spec.quantization, quant_policy, hw, self.dtype)
        self.quant_reason = quant_reason
        if spec.quantization:
            self.decide(
                "quantization", f"{spec.quantization} {'kept' if self.quant_kept else 'dequantized'}", quant_reason
            )
            if not self.quant_kept:
                self.warnings.append(f"{spec.quantization} weights are dequantized to {self.dtype}: {quant_reason}")
        kv = decide_kv_dtype(str(getattr(policy.kv_cache_dtype, "value", policy.kv_cache_dtype)), self.dtype)
        self.kv_dtype = kv.value
        self.decide("kv_cache_dtype", kv.value, kv.reason)
        attn = decide_attention(
            str(getattr(policy.attn_implementation, "value", policy.attn_implementation)),
            spec.architecture.get("model_type", ""),
            hw,
            self.quant_kept,
        )
        self.attn = attn.value
        self.decide("attn_implementation", attn.value, attn.reason)

    def _inventory(self) -> Inventory:
        return build_inventory(
            self.spec.architecture,
            dtype=self.dtype,
            quantization=self.spec.quantization,
            keep_quantized=self.quant_kept,
            checkpoint_dtype=self.spec.shipped_dtype,
            model_dir=self.spec.model_dir,
        )

    # ---- devices -------------------------------------------------------------------------
    def _gpu_entries(self, node: int = 0) -> list[tuple]:
        entries = []
        for d in self.hw.devices:
            if d.node != node:
                continue
            reserve = headroom(d.free_bytes, self.policy.headroom_fraction, self.policy.headroom_mib * (1 << 20))
            entries.append((d, d.id, max(d.free_bytes - reserve, 0), d.free_bytes))
        return entries

    def _host_entry(self):
        ram = self.hw.host_ram_bytes
        return (None, "cpu", int(ram * (1 - self.policy.host_headroom_fraction)), ram)

    def _disk_entry(self):
        """Free space where the offload folder goes (on the machine that plans: re-plan on the target)."""
        import shutil
        from pathlib import Path

        budget_gib = float(getattr(self.policy, "offload_disk_gib", 0) or 0)
        if budget_gib > 0:
            free = int(budget_gib * GIB)
            return (None, "disk", free, free)
        where = Path(str(self.policy.offload_folder)).expanduser().resolve()
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        return (None, "disk", free, free)

    def _attempts(self, inv: Inventory, cost: CostModel) -> list[Attempt]:
        strategy = str(getattr(self.policy.strategy, "value", self.policy.strategy))
        gpus = self._gpu_entries(0)
        attempts: list[Attempt] = []
        if not gpus:
            if strategy not in ("auto",):
                raise ShardwiseError(
                    f"policy.strategy={strategy} needs GPUs, but {self.hw.source} has none: use policy.strategy=auto"
                )
            attempts.append(Attempt("cpu", lambda c, k: layout_layers(inv, cost, [self._host_entry()], c, k), gpus=0))
            if self.policy.allow_disk_offload:
                attempts.append(
                    Attempt(
                        "offload",
                        lambda c, k: _nonempty(
                            layout_offload(inv, cost, [self._host_entry()], None, self._disk_entry(), c, k)
                        ),
                        gpus=0,
                        note="layers beyond host RAM on disk",
                    )
                )
            return attempts
        by_room = sorted(gpus, key=lambda e: (-e[2], e[1]))
        if strategy == "tensor_parallel":
            return self._tp_attempts(inv, cost, gpus, explicit=True)
        if strategy in ("auto", "single_gpu"):
            attempts.append(
                Attempt("single_gpu", lambda c, k, e=by_room[0]: layout_layers(inv, cost, [e], c, k), gpus=1)
            )
        if strategy in ("auto", "pipeline"):
            if strategy == "pipeline" and len(gpus) < 2:
                raise ShardwiseError(
                    f"policy.strategy=pipeline needs at least 2 GPUs, {self.hw.source} has {len(gpus)}: raise hardware.count or use auto"
                )
            for n in range(2, len(gpus) + 1):
                chosen = sorted(by_room[:n], key=lambda e: e[1])
                attempts.append(
                    Attempt("pipeline", lambda c, k, ch=chosen: layout_layers(inv, cost, ch, c, k), gpus=n, pp_size=n)
                )
        if strategy == "auto" and self.hw.nodes > 1:
            attempts.extend(self._tp_attempts(inv, cost, gpus, explicit=False))
            attempts.extend(self._cross_node_pipeline_attempts(inv, cost, len(gpus)))
        if strategy == "auto" and (self.policy.allow_cpu_offload or self.policy.allow_disk_offload):
            host = self._host_entry() if self.policy.allow_cpu_offload else None
            disk = self._disk_entry() if self.policy.allow_disk_offload else None
            ordered = sorted(gpus, key=lambda e: e[1])
            attempts.append(
                Attempt(
                    "offload",
                    lambda c, k: _nonempty(layout_offload(inv, cost, ordered, host, disk, c, k)),
                    gpus=len(gpus),
                    note="layers beyond GPU memory in host RAM / on disk",
                )
            )
        return attempts

    def _cross_node_pipeline_attempts(self, inv: Inventory, cost: CostModel, per_node: int) -> list[Attempt]:
        """Pipeline stages over GPUs of several nodes (torchrun, one GPU per stage), for when tensor parallel cannot be used."""
        shapes = sorted(
            {
                (nodes * per_stage_node, nodes, per_stage_node)
                for nodes in range(2, self.hw.nodes + 1)
                for per_stage_node in range(1, per_node + 1)
            }
        )
        attempts = []
        for count, nodes, per_stage_node in shapes:  # the same number of stages on every node used
            stages = [entry for node in range(nodes) for entry in self._gpu_entries(node)[:per_stage_node]]
            attempts.append(
                Attempt(
                    "pipeline",
                    lambda c, k, st=stages: layout_layers(inv, cost, st, c, k),
                    gpus=count,
                    pp_size=count,
                    nodes=nodes,
                )
            )
        return attempts

    def _tp_attempts(self, inv: Inventory, cost: CostModel, gpus: list, explicit: bool) -> list[Attempt]:
        per_node = len(gpus)
        problems = []
        if not inv.has_tp_plan:
            problems.append(f"{inv.model_type} has no tensor-parallel plan in transformers")
        if self.hw.interconnect != "nvlink":
            problems.append(f"GPUs are linked by {self.hw.interconnect}, tensor parallel needs NVLink")
        if explicit and per_node * self.hw.nodes < 2:
            problems.append(f"tensor parallel needs at least 2 GPUs, {self.hw.source} has {per_node * self.hw.nodes}")
        if problems:
            if explicit:
                raise ShardwiseError(
                    f"policy.strategy=tensor_parallel is not possible: {'; '.join(problems)}: use policy.strategy=auto"
                )
            self.decide("tensor_parallel", "no", "; ".join(problems))
            return []
        attempts = []
        ordered = sorted(gpus, key=lambda e: e[1])
        sizes = [t for t in range(2, per_node + 1) if _divides(t, inv)] if explicit else []
        for t in sizes:
            attempts.append(
                Attempt(
                    "tensor_parallel",
                    lambda c, k, t=t: layout_layers(inv, cost, [ordered[0]], c, k, shard=t),
                    gpus=t,
                    tp_size=t,
                )
            )
        if self.hw.nodes > 1 and per_node > 1 and _divides(per_node, inv):
            for nodes in range(2, self.hw.nodes + 1):
                stages = [self._gpu_entries(n)[0] for n in range(nodes)]
                attempts.append(
                    Attempt(
                        "tensor_parallel",
                        lambda c, k, st=stages: layout_layers(inv, cost, st, c, k, shard=per_node),
                        gpus=per_node * nodes,
                        tp_size=per_node,
                        pp_size=nodes,
                        nodes=nodes,
                    )
                )
        elif self.hw.nodes > 1 and per_node > 1:
            self.decide(
                "tensor_parallel",
                "no",
                f"head counts ({inv.num_attention_heads}, {inv.num_kv_heads} kv) do not divide by {per_node} GPUs per node",
            )
        if explicit and not attempts:
            raise ShardwiseError(
                f"policy.strategy=tensor_parallel: no GPU count divides {inv.num_attention_heads} attention and {inv.num_kv_heads} KV heads: use policy.strategy=auto"
            )
        return attempts

    # ---- the search ----------------------------------------------------------------------
    def plan(self) -> Plan:
        stronger = self._on_stronger_gpus()
        if stronger is not None:
            return stronger
        self._decide_formats()
        inv = self._inventory()
        self.inv = inv
        sessions = int(self.policy.sessions)
        cost = CostModel(
            inv, self.dtype, self.kv_dtype, self.attn, sessions, Overheads.from_config(self.policy.overhead)
        )
        self.cost = cost
        max_ctx = inv.max_context_tokens
        context_setting = self.policy.context_tokens
        if self.cap_context and str(context_setting).isdigit() and int(context_setting) > max_ctx:
            self.decide(
                "context_cap",
                max_ctx,
                f"policy.context_tokens={context_setting} exceeds {self.spec.name}'s maximum: capped",
            )
            context_setting = max_ctx
        requested = _parse_context(context_setting, max_ctx)
        low = min(int(self.policy.min_context_tokens), max_ctx)
        chunk_req = int(self.policy.prefill_chunk_tokens)
        attempts = self._attempts(inv, cost)

        chosen, context, chunk = None, requested or low, None
        for attempt in attempts:
            fits = lambda c, k, a=attempt: a.fits_at(cost, c, k)
            if requested is not None:
                from planner.placement import best_chunk

                found = best_chunk(fits, requested, chunk_req)
                if found is not None:
                    chosen, context, chunk = attempt, requested, found
                    break
            else:
                found = largest_context(fits, low, max_ctx, chunk_req)
                if found is not None:
                    chosen, (context, chunk) = attempt, found
                    break
        if chosen is None:
            return self._does_not_fit(inv, cost, attempts, context)
        return self._assemble(inv, cost, chosen, context, chunk, requested)

    def _on_stronger_gpus(self) -> Plan | None:
        """Mixed GPUs: first try only those that keep bf16 / MXFP4, so a weaker card never downgrades the plan.

        dtype and quantization follow the weakest GPU a plan uses; a plan that fits on the stronger
        ones alone keeps their formats and leaves the weaker ones out.
        """

        def capability(d) -> tuple[bool, bool]:
            return (d.cc_major_minor >= (8, 0), d.cc_major_minor >= (7, 5))

        if not self.hw.devices or len({capability(d) for d in self.hw.devices}) == 1:
            return None
        best = max(capability(d) for d in self.hw.devices)
        chosen = tuple(d for d in self.hw.devices if capability(d) == best)
        ids = {d.id for d in chosen}
        subset = replace(self.hw, devices=chosen, nvlink_pairs=tuple(p for p in self.hw.nvlink_pairs if set(p) <= ids))
        plan = Planner(
            self.spec, subset, self.policy, self.generation, self.with_fallbacks, self.cap_context, self.explain
        ).plan()
        if not plan.fits:
            return None
        left_out = ", ".join(
            f"GPU {d.id} ({d.name}, cc {d.compute_capability})" for d in self.hw.devices if d.id not in ids
        )
        note = Decision(
            "gpus",
            f"{len(chosen)} of {len(self.hw.devices)}",
            f"left out {left_out}: the model fits on the GPUs that keep {plan.model.dtype}"
            + (" and MXFP4" if plan.model.quantization.kept else ""),
        )
        return replace(plan, hardware=self.hw.to_dict(), decisions=(note, *plan.decisions))

    # ---- results -------------------------------------------------------------------------
    def _budget(self, priced: list[Priced], slots: list[Slot]) -> tuple:
        rows = []
        for p, slot in zip(priced, slots):
            layers = (min(slot.layer_ids), max(slot.layer_ids)) if slot.layer_ids else ()
            node = slot.device.node if slot.device is not None else 0
            rows.append(
                DeviceBudget(
                    str(p.key),
                    p.weights,
                    p.kv,
                    p.activations,
                    p.overhead,
                    p.planned,
                    p.usable,
                    p.usable - p.planned if p.key != "disk" else 0,
                    node=node,
                    layers=layers,
                )
            )
        return tuple(rows)

    def _device_map(self, slots: list[Slot], strategy: str, nodes: int = 1) -> dict:
        if strategy == "tensor_parallel" or nodes > 1:
            return {}  # distributed ranks load their own share: no single-process device_map
        if len(slots) == 1:
            return {"": slots[0].key}
        return {m.name: s.key for s in slots for m in s.modules}

    def _max_memory(self, priced: list[Priced], strategy: str, nodes: int = 1) -> dict:
        if strategy == "tensor_parallel" or nodes > 1:
            return {}
        out = {}
        for p in priced:
            if p.key == "disk":
                continue
            out[p.key] = max(p.usable - p.kv - p.activations - p.overhead, p.weights)
        return out

    def _assemble(self, inv, cost, attempt: Attempt, context: int, chunk: int, requested) -> Plan:
        slots = attempt.build(context, chunk)
        priced = evaluate(slots, cost, context, chunk)
        strategy = attempt.strategy
        if strategy == "offload" and all(s.executes for s in slots):
            # filling devices in order fitted without offloading anything
            strategy = "cpu" if slots[0].device is None else ("single_gpu" if len(slots) == 1 else "pipeline")
        total_gpus = len(self.hw.devices)
        if strategy == "single_gpu":
            self.decide(
                "strategy",
                "single_gpu",
                f"fits on one GPU (GPU {slots[0].key}, {gib(slots[0].usable)} usable) of {total_gpus}: never spread a model that fits on one",
            )
        elif strategy == "pipeline":
            ranges = ", ".join(
                f"layers {min(s.layer_ids)}-{max(s.layer_ids)} on GPU {s.key}"
                + (f" of node {s.device.node}" if attempt.nodes > 1 else "")
                for s in slots
                if s.layer_ids
            )
            why = (
                "policy.strategy=pipeline: the fewest GPUs (at least 2) that fit"
                if _value(self.policy.strategy) == "pipeline"
                else "does not fit on fewer"
            )
            if attempt.nodes > 1:
                why += (
                    f"; across {attempt.nodes} nodes: torchrun pipeline stages, one GPU each (no tensor parallel here)"
                )
            self.decide(
                "strategy",
                f"pipeline over {attempt.gpus} GPUs",
                f"{why}; contiguous layer ranges proportional to usable memory: {ranges}",
            )
        elif strategy == "tensor_parallel":
            where = f"tensor parallel {attempt.tp_size} inside each node" + (
                f", pipeline over {attempt.nodes} nodes" if attempt.nodes > 1 else ""
            )
            self.decide(
                "strategy",
                f"tensor_parallel tp={attempt.tp_size} pp={attempt.pp_size}",
                f"{where}; {inv.model_type} has a tensor-parallel plan and heads divide",
            )
        elif strategy == "offload":
            in_ram = sum(p.weights for p in priced if p.key == "cpu" and slots[0].device is not None)
            on_disk = sum(p.weights for p in priced if p.key == "disk")
            where = "GPU" if slots[0].device is not None else "CPU"
            # per generated token every offloaded layer is read again: host RAM over PCIe (~25 GB/s), disk (~2 GB/s NVMe)
            seconds = in_ram / PCIE_BYTES_PER_S + on_disk / DISK_BYTES_PER_S
            parts = [f"{gib(in_ram)} from host RAM over PCIe"] if in_ram else []
            parts += [f"{gib(on_disk)} from disk"] if on_disk else []
            self.decide(
                "strategy",
                "offload",
                f"does not fit in {where} memory; offloaded layers run on the {where}, their weights streamed in every token",
            )
            self.warnings.append(
                f"offload: every generated token reads {' and '.join(parts)}: expect at most ~{1 / max(seconds, 1e-9):.2f} tokens/s"
            )
        else:
            self.decide(
                "strategy",
                "cpu",
                f"no GPU on {self.hw.source}: running on the CPU with {gib(self.hw.host_ram_bytes)} of host RAM",
            )
        binding = {}
        if requested is None:
            if context >= inv.max_context_tokens:
                self.decide("context_tokens", context, "the model's maximum context: memory allows it")
            else:
                over = evaluate(
                    attempt.build(context + 1, min(chunk, context + 1)), cost, context + 1, min(chunk, context + 1)
                )
                worst = max(over, key=lambda p: p.planned - p.usable)
                term = "kv_cache" if worst.kv >= worst.activations else "activations"
                self.decide(
                    "context_tokens",
                    context,
                    f"largest that fits: one more token overflows device {worst.key} ({term})",
                )
                binding = {"device": str(worst.key), "term": term}
        else:
            self.decide("context_tokens", context, f"policy.context_tokens={requested}")
        self._more_context_hint(inv, cost, attempt, context, requested)
        if chunk < context:
            self.decide(
                "prefill_chunk_tokens",
                chunk,
                f"a one-pass prefill of {context} tokens would overflow memory ({self.attn} attention): prefill in chunks of {chunk}",
            )
        sessions = int(self.policy.sessions)
        self.decide("sessions", sessions, f"KV cache sized for {sessions} concurrent sequence(s) (policy.sessions)")
        return self._make_plan(inv, cost, strategy, attempt, slots, priced, context, chunk, True, binding)

    def _more_context_hint(self, inv, cost, attempt: Attempt, context: int, requested) -> None:
        """When fewer GPUs than available were used and memory capped the context, say what all of them give."""
        gpus = self._gpu_entries(0)
        if requested is not None or attempt.strategy not in ("single_gpu", "pipeline") or attempt.gpus >= len(gpus):
            return
        if context >= inv.max_context_tokens:
            return
        entries = sorted(gpus, key=lambda e: e[1])
        best = largest_context(lambda c, k: _fits_on(inv, cost, entries, c, k), context, inv.max_context_tokens, 0)
        if best and best[0] > context:
            self.decide(
                "more_context",
                f"{best[0]} tokens on {len(gpus)} GPUs",
                f"the fewest GPUs were used; spreading over all {len(gpus)} gives {best[0]:,} tokens: set policy.context_tokens={best[0]}",
            )

    def _does_not_fit(self, inv, cost, attempts: list[Attempt], context: int) -> Plan:
        # Report against the largest arrangement we tried (all GPUs of one node, or the CPU).
        candidates = [a for a in attempts if a.strategy != "offload"] or attempts
        attempt = max(candidates, key=lambda a: a.gpus) if candidates else None
        if attempt is None:
            raise ShardwiseError("nothing to plan on: no devices")
        chunk = min(context, 512)
        slots = attempt.build(context, chunk) or []
        priced = evaluate(slots, cost, context, chunk) if slots else []
        worst = max(priced, key=lambda p: p.planned - p.usable) if priced else None
        fixes = self._fixes()
        binding = {}
        if worst is not None:
            fixed_overhead = (
                cost.gpu_fixed_overhead() if worst.key not in ("cpu", "disk") else cost.overheads.cpu_runtime_bytes
            )
            term = (
                "weights"
                if worst.weights + fixed_overhead > worst.usable
                else ("kv_cache" if worst.kv >= worst.activations else "activations")
            )
            binding = {
                "device": str(worst.key),
                "term": term,
                "needed": worst.planned,
                "usable": worst.usable,
                "fixes": fixes,
            }
            where = "GPU " + str(worst.key) if worst.key not in ("cpu", "disk") else str(worst.key)
            self.decide(
                "fits",
                "no",
                f"{where} needs {gib(worst.planned)} but has {gib(worst.usable)} usable; {term} binds at {context} tokens",
            )
        return self._make_plan(inv, cost, attempt.strategy, attempt, slots, priced, context, chunk, False, binding)

    def _fixes(self) -> list[dict]:
        if not self.explain:
            return []
        from planner.fixes import what_would_fit

        return what_would_fit(self)

    def _make_plan(self, inv, cost, strategy, attempt, slots, priced, context, chunk, fits, binding) -> Plan:
        spec = self.spec
        model = ModelInfo(
            name=spec.name,
            source=spec.source,
            model_type=inv.model_type,
            params_total=inv.params_total,
            weight_bytes=inv.weight_bytes,
            checkpoint_bytes=inv.checkpoint_bytes,
            dtype=self.dtype,
            quantization=Quantization(spec.quantization, self.quant_kept, self.quant_reason),
            max_context_tokens=inv.max_context_tokens,
            num_layers=len(inv.layers),
            trust_remote_code=spec.trust_remote_code,
            chat_template=spec.chat_template,
        )
        limits = Limits(
            context_tokens=context,
            sessions=int(self.policy.sessions),
            max_new_tokens=context,  # a reply may use whatever context the prompt leaves; generation.max_tokens is the default
            kv_bytes_per_token=kv_bytes_per_token(inv.layers, cost.kv_elem_bytes),
            prefill_chunk_tokens=chunk if chunk < context else 0,
        )
        if not fits:
            self.warnings.append("the plan does not fit: see the binding device and the fixes")
        offload_folder = str(self.policy.offload_folder) if any(p.key == "disk" for p in priced) else None
        return Plan(
            model=model,
            hardware=self.hw.to_dict(),
            strategy=strategy,
            nodes=attempt.nodes,
            tp_size=attempt.tp_size,
            pp_size=attempt.pp_size,
            device_map=self._device_map(slots, strategy, attempt.nodes) if slots else {},
            max_memory=self._max_memory(priced, strategy, attempt.nodes),
            budget=self._budget(priced, slots),
            limits=limits,
            fits=fits,
            decisions=tuple(self.decisions),
            warnings=tuple(self.warnings),
            fallbacks=tuple(self._fallbacks()) if self.with_fallbacks else (),
            launch=_launch(strategy),
            attn_implementation=self.attn,
            kv_cache_dtype=self.kv_dtype,
            offload_folder=offload_folder,
            binding=binding,
            performance=_performance(self, inv, cost, slots, attempt, limits) if fits and slots else {},
        )

    def _fallbacks(self) -> list[dict]:
        chain, seen, name = [], {self.spec.name}, self.spec.fallback
        while name and name not in seen:
            seen.add(name)
            profile = load_profile(name)
            sub = Planner(
                spec_from_config(profile),
                self.hw,
                _lenient(self.policy),
                self.generation,
                with_fallbacks=False,
                cap_context=True,
            ).plan()
            chain.append(
                {
                    "model": name,
                    "hardware": "same",
                    "fits": sub.fits,
                    "reason": f"smaller model: {'fits' if sub.fits else 'does not fit either'} here ({sub.strategy}, {sub.limits.context_tokens} tokens)",
                }
            )
            name = profile.fallback
        if self.hw.devices:
            last = chain[-1]["model"] if chain else self.spec.name
            chain.append(
                {
                    "model": last,
                    "hardware": "cpu",
                    "fits": None,
                    "reason": "no GPU memory needed: run on the CPU (slow)",
                }
            )
        return chain


def _performance(planner: Planner, inv, cost, slots, attempt: Attempt, limits: Limits) -> dict:
    from planner.speed import performance_block

    return performance_block(
        inv,
        planner.hw,
        slots,
        tp_size=attempt.tp_size,
        dtype=planner.dtype,
        kv_elem_bytes=cost.kv_elem_bytes,
        context_tokens=limits.context_tokens,
        sessions=limits.sessions,
        prefill_chunk_tokens=limits.prefill_chunk_tokens,
        config=getattr(planner.policy, "performance", None),
    )


def _lenient(policy):
    """The policy for other models than the one asked for: quantization=keep applies to that model only."""
    if _value(policy.quantization) != "keep":
        return policy
    from planner.fixes import PolicyOverride

    return PolicyOverride(policy, quantization="auto")


def _value(setting) -> str:
    return str(getattr(setting, "value", setting))


def _nonempty(slots):
    return slots or None


def _divides(t: int, inv: Inventory) -> bool:
    return t >= 1 and inv.num_attention_heads % t == 0 and inv.num_kv_heads % t == 0


def _fits_on(inv, cost, entries, context: int, chunk: int) -> bool:
    return all(p.fits for p in evaluate(layout_layers(inv, cost, entries, context, chunk), cost, context, chunk))


def _launch(strategy: str) -> Launch:
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    if strategy == "tensor_parallel":
        return Launch(command="shardwise launch plan_file=plan.json", env=env)
    if strategy == "cpu":
        return Launch(command="shardwise chat plan_file=plan.json", env={})
    return Launch(command="shardwise chat plan_file=plan.json", env=env)


def plan_from_config(cfg, hardware: Hardware) -> Plan:
    """The Plan for a composed config (`model`, `policy`, `generation` nodes) on `hardware`."""
    from planner.config.gpu_speeds import with_published_speeds  # probed GPUs: datasheet speeds by name

    hardware = with_published_speeds(hardware)
    if cfg.model.name == "auto" and not cfg.model.get("path"):
        return plan_auto_model(cfg, hardware)
    return Planner(spec_from_config(cfg.model), hardware, cfg.policy, cfg.generation).plan()


def plan_auto_model(cfg, hardware: Hardware) -> Plan:
    """model=auto: the largest candidate that fits (at the requested context, if any), decided by the memory model."""
    tried = []
    candidates = list(cfg.policy.candidates)
    if not candidates:
        raise ShardwiseError("model=auto needs policy.candidates, a list of profiles from largest to smallest")
    requested = str(cfg.policy.context_tokens)
    for name in candidates:
        profile = load_profile(name)
        plan = Planner(
            spec_from_config(profile), hardware, _lenient(cfg.policy), cfg.generation, cap_context=True
        ).plan()
        short = requested.isdigit() and plan.limits.context_tokens < int(requested)
        if (plan.fits and not short) or name == candidates[-1]:
            if plan.fits and not short:
                reason = (
                    f"largest of policy.candidates that fits this hardware; did not fit: {', '.join(tried)}"
                    if tried
                    else "largest of policy.candidates, and it fits"
                )
            else:
                reason = f"no candidate fits{' at ' + requested + ' tokens' if short else ''}; showing the smallest ({', '.join(tried) or 'none other'} did not fit)"
                if short and plan.fits:
                    plan = replace(
                        plan,
                        fits=False,
                        binding={
                            "device": "-",
                            "term": "context",
                            "needed": 0,
                            "usable": 0,
                            "fixes": [f"policy.context_tokens={plan.limits.context_tokens} or less"],
                        },
                    )
            return replace(plan, decisions=(Decision("model", name, reason), *plan.decisions))
        why = (
            f"its maximum context {plan.limits.context_tokens} < {requested}"
            if short
            else f"{plan.binding.get('term', 'memory')} on {plan.binding.get('device', '?')}"
        )
        tried.append(f"{name} ({why})")
    raise AssertionError("unreachable")
