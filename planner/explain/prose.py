"""The prose of a plan: why this strategy, why this context, what binds, and what more GPUs would give.

Pure functions over what the search found; each records its decision in `notes` and returns
the binding (device and term) where one applies.
"""

from __future__ import annotations

from planner.decide.policy import Policy
from planner.hardware.devices import Hardware
from planner.memory.terms import CostModel
from planner.model.inventory import Inventory
from planner.place.objective import label
from planner.place.placement import evaluate
from planner.place.search import Attempt, Found, most_stages
from planner.planfile.plan import Notes
from planner.units import gib

PCIE_BYTES_PER_S = 25e9  # PCIe 4.0 x16, effective
DISK_BYTES_PER_S = 2e9  # a fast NVMe drive, sequential reads


def executed_strategy(attempt: Attempt, slots: list) -> str:
    """The strategy name of what was laid out: an offload attempt that offloaded nothing is named for where it runs."""
    if attempt.strategy == "offload" and all(s.executes for s in slots):
        return "cpu" if slots[0].device is None else ("single_gpu" if len(slots) == 1 else "pipeline")
    return attempt.strategy


def explain_strategy(
    notes: Notes, strategy: str, found: Found, slots: list, priced: list, hw: Hardware, inv, policy: Policy
) -> None:
    attempt = found.attempt
    total_gpus = len(hw.devices)
    if strategy == "single_gpu":
        notes.decide(
            "strategy",
            "single_gpu",
            f"fits on one GPU (GPU {slots[0].key}, {gib(slots[0].usable)} usable) of {total_gpus}: "
            + (found.why or "never spread a model that fits on one"),
        )
    elif strategy == "pipeline":
        ranges = ", ".join(
            f"layers {min(s.layer_ids)}-{max(s.layer_ids)} on GPU {s.key}"
            + (f" of node {s.device.node}" if attempt.nodes > 1 else "")
            for s in slots
            if s.layer_ids
        )
        if found.why:
            why = found.why
        elif found.fewer_reach is not None:
            why = f"the fewest GPUs that reach {found.context:,} tokens (fewer give at most {found.fewer_reach:,})"
        elif policy.strategy == "pipeline":
            why = "policy.strategy=pipeline: the fewest GPUs (at least 2) that fit"
        else:
            why = "does not fit on fewer"
        if attempt.nodes > 1:
            why += f"; across {attempt.nodes} nodes: torchrun pipeline stages, one GPU each (no tensor parallel here)"
        notes.decide(
            "strategy",
            f"pipeline over {attempt.gpus} GPUs",
            f"{why}; contiguous layer ranges proportional to usable memory: {ranges}",
        )
    elif strategy == "tensor_parallel":
        where = f"tensor parallel {attempt.tp_size} inside each node" + (
            f", pipeline over {attempt.nodes} nodes" if attempt.nodes > 1 else ""
        )
        notes.decide(
            "strategy",
            f"tensor_parallel tp={attempt.tp_size} pp={attempt.pp_size}",
            f"{where}; {inv.model_type} has a tensor-parallel plan and heads divide"
            + (f"; {found.why}" if found.why else ""),
        )
    elif strategy == "offload":
        in_ram = sum(p.weights for p in priced if p.device == "cpu" and slots[0].device is not None)
        on_disk = sum(p.weights for p in priced if p.device == "disk")
        where = "GPU" if slots[0].device is not None else "CPU"
        # per generated token every offloaded layer is read again: host RAM over PCIe, disk at NVMe speed
        seconds = in_ram / PCIE_BYTES_PER_S + on_disk / DISK_BYTES_PER_S
        parts = [f"{gib(in_ram)} from host RAM over PCIe"] if in_ram else []
        parts += [f"{gib(on_disk)} from disk"] if on_disk else []
        notes.decide(
            "strategy",
            "offload",
            f"does not fit in {where} memory; offloaded layers run on the {where}, "
            "their weights streamed in every token",
        )
        notes.warn(
            f"offload: every generated token reads {' and '.join(parts)}: "
            f"expect at most ~{1 / max(seconds, 1e-9):.2f} tokens/s"
        )
    else:
        notes.decide(
            "strategy",
            "cpu",
            f"no GPU on {hw.source}: running on the CPU with {gib(hw.host_ram_bytes)} of host RAM",
        )


def explain_context(
    notes: Notes, inv: Inventory, cost: CostModel, attempt: Attempt, context: int, chunk: int, requested
) -> dict:
    """Record why the context is what it is; the binding (device, term) when memory capped it."""
    if requested is not None:
        notes.decide("context_tokens", context, f"policy.context_tokens={requested}")
        return {}
    if context >= inv.max_context_tokens:
        notes.decide("context_tokens", context, "the model's maximum context: memory allows it")
        return {}
    over_chunk = min(chunk, context + 1)
    over = evaluate(attempt.build(context + 1, over_chunk), cost, context + 1, over_chunk)
    worst = max(over, key=lambda p: p.planned - p.usable)
    term = "kv_cache" if worst.kv_cache >= worst.activations else "activations"
    notes.decide(
        "context_tokens",
        context,
        f"largest that fits: one more token overflows device {worst.device} ({term})",
    )
    return {"device": worst.device, "term": term}


def explain_chunk(notes: Notes, context: int, chunk: int, attn: str) -> None:
    if chunk < context:
        notes.decide(
            "prefill_chunk_tokens",
            chunk,
            f"a one-pass prefill of {context} tokens would overflow memory ({attn} attention): "
            f"prefill in chunks of {chunk}",
        )


def tried(attempt: Attempt, hw: Hardware, inv, policy: Policy) -> str:
    """What a does-not-fit plan tried, in words: the layout, how many of the machine's GPUs, and why not more."""
    total = len(hw.devices)
    if attempt.strategy == "cpu":
        return "the CPU (host RAM)" + (", then disk" if policy.allow_disk_offload else "")
    name = label(attempt)
    if attempt.strategy == "offload":
        places = ["GPU memory", *(["host RAM"] if policy.allow_cpu_offload else []), "disk"]
        name = "offload to " + ", then ".join(places if policy.allow_disk_offload else places[:-1])
    used = attempt.gpus
    if total <= 1:
        return f"{name} (the machine's only GPU)"
    text = f"{name} ({'all' if used >= total else f'{used} of'} {total} GPUs)"
    if used < total and attempt.strategy == "single_gpu":
        text += f", policy.strategy={policy.strategy} keeps it on one"
    elif used < total and attempt.strategy == "pipeline" and used >= most_stages(inv):
        text += f", no longer pipeline tried: {len(inv.layers)} layers fill at most {used} stages"
    elif used < total and attempt.strategy == "tensor_parallel" and attempt.nodes == 1:
        text += ", the most GPUs of one node the heads divide by"
    return text


def does_not_fit_binding(notes: Notes, cost: CostModel, priced: list, context: int, fixes: list) -> dict:
    """The device and term that bind in a plan that does not fit, with the fixes that were re-planned."""
    worst = max(priced, key=lambda p: p.planned - p.usable) if priced else None
    if worst is None:
        return {}
    fixed_overhead = (
        cost.gpu_fixed_overhead() if worst.device not in ("cpu", "disk") else cost.overheads.cpu_runtime_bytes
    )
    term = (
        "weights"
        if worst.weights + fixed_overhead > worst.usable
        else ("kv_cache" if worst.kv_cache >= worst.activations else "activations")
    )
    where = "GPU " + worst.device if worst.device not in ("cpu", "disk") else worst.device
    notes.decide(
        "fits",
        "no",
        f"{where} needs {gib(worst.planned)} but has {gib(worst.usable)} usable; {term} binds at {context} tokens",
    )
    return {"device": worst.device, "term": term, "needed": worst.planned, "usable": worst.usable, "fixes": fixes}
