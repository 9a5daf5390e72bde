"""Pure placement: which module goes on which device, and whether it fits at a context.

No tensors move here. A `Layout` assigns the inventory's modules to devices; `evaluate` prices
every device with the cost model; the search functions pick the fewest GPUs, split layers in
contiguous ranges proportional to each GPU's usable memory, and find the largest context and
the prefill chunk that keep every device inside its budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.hardware import Device
from planner.inventory import Inventory, ModuleEntry
from planner.memory import CostModel

CHUNK_CANDIDATES = (8192, 4096, 2048, 1024, 512, 256, 128)


@dataclass
class Slot:
    """One device and what it holds. key: GPU index, "cpu" or "disk"."""

    key: object
    device: Device | None
    usable: int
    free: int
    modules: list = field(default_factory=list)  # ModuleEntry
    layer_ids: list = field(default_factory=list)  # decoder layer indices
    has_head: bool = False
    shard: int = 1  # tensor-parallel degree: this slot holds 1/shard of its layers' weights and KV
    extra_weights: int = 0  # streaming buffer for offloaded layers (on the execution GPU)
    extra_kv_layers: list = field(default_factory=list)  # offloaded layers whose KV lives here


@dataclass
class Priced:
    key: object
    weights: int
    kv: int
    activations: int
    overhead: int
    planned: int
    usable: int
    free: int

    @property
    def fits(self) -> bool:
        return self.planned <= self.usable


def split_modules(inv: Inventory) -> tuple[list[ModuleEntry], list[ModuleEntry], list[ModuleEntry]]:
    """(modules before the first layer, layer modules, modules after the last layer)."""
    layer_positions = [i for i, m in enumerate(inv.modules) if m.kind == "layer"]
    first, last = layer_positions[0], layer_positions[-1]
    return list(inv.modules[:first]), list(inv.modules[first : last + 1]), list(inv.modules[last + 1 :])


def price(slot: Slot, cost: CostModel, context: int, chunk: int) -> Priced:
    inv = cost.inv
    layers = [inv.layers[i] for i in slot.layer_ids]
    shard = slot.shard
    if shard == 1:
        weights = sum(m.bytes for m in slot.modules)
    else:
        weights = sum(m.bytes if m.kind in ("embed", "norm", "other") else -(-m.bytes // shard) for m in slot.modules)
    weights += slot.extra_weights
    kv_all = cost.kv_by_layer(context)
    kv = sum(kv_all[i] for i in slot.layer_ids) + sum(kv_all[i] for i in slot.extra_kv_layers)
    kv = -(-kv // shard)
    run_layers = layers + [inv.layers[i] for i in slot.extra_kv_layers]
    activations = cost.activations(run_layers, slot.has_head, chunk, context)
    if shard > 1:
        activations = -(-activations // shard) + chunk * inv.hidden_size * cost.dtype_bytes
    tensors = weights + kv + activations
    overhead = cost.overhead(slot.device, tensors)
    if slot.key == "disk":
        kv = activations = overhead = 0
        tensors = weights
    return Priced(slot.key, weights, kv, activations, overhead, tensors + overhead, slot.usable, slot.free)


def evaluate(slots: list[Slot], cost: CostModel, context: int, chunk: int) -> list[Priced]:
    return [price(s, cost, context, chunk) for s in slots]


def _fresh(devices: list[tuple[Device | None, object, int, int]], shard: int = 1) -> list[Slot]:
    return [Slot(key=key, device=dev, usable=usable, free=free, shard=shard) for dev, key, usable, free in devices]


def _attach_edges(slots: list[Slot], inv: Inventory, pre, post) -> None:
    first, last = slots[0], slots[-1]
    first.modules.extend(pre)
    names_on_first = {m.name for m in pre}
    for module in post:
        target = first if (module.tied_to and module.tied_to in names_on_first) else last
        target.modules.append(module)
        if module.kind == "head":
            target.has_head = True


def layout_layers(
    inv: Inventory, cost: CostModel, devices: list, context: int, chunk: int, shard: int = 1
) -> list[Slot]:
    """Contiguous layer ranges over `devices`, proportional to what each can hold at `context`."""
    pre, layer_modules, post = split_modules(inv)
    slots = _fresh(devices, shard)
    _attach_edges(slots, inv, pre, post)
    if len(slots) == 1:
        slots[0].modules[len(pre) : len(pre)] = layer_modules
        slots[0].layer_ids = [m.layer_index for m in layer_modules]
        return slots

    kv_all = cost.kv_by_layer(context)
    costs = [-(-(m.bytes + kv_all[m.layer_index]) // shard) for m in layer_modules]
    capacities = []
    for slot in slots:
        edge = price(slot, cost, context, chunk)
        layer_act = cost.activations([inv.layers[0]], False, chunk, context) // shard
        frac = cost.overheads.fragmentation_fraction if slot.device is not None else 0.0
        fixed = cost.gpu_fixed_overhead() if slot.device is not None else cost.overheads.cpu_runtime_bytes
        room = int((slot.usable - fixed) / (1 + frac)) - (edge.weights + edge.activations) - layer_act
        capacities.append(max(room, 0))
    total_cap = sum(capacities) or 1
    total_cost = sum(costs)
    assignment = []
    cumulative_target = 0.0
    device_index = 0
    running = 0
    for position, c in enumerate(costs):
        while device_index < len(slots) - 1:
            boundary = cumulative_target + total_cost * capacities[device_index] / total_cap
            if running + c / 2 <= boundary:
                break
            cumulative_target = boundary
            device_index += 1
        assignment.append(device_index)
        running += c
    return _apply(slots, layer_modules, assignment, len(pre))


def _apply(slots: list[Slot], layer_modules, assignment, pre_count: int) -> list[Slot]:
    for module, index in zip(layer_modules, assignment):
        slots[index].layer_ids.append(module.layer_index)
    # keep forward order inside each slot: pre modules, layers, post modules
    for i, slot in enumerate(slots):
        own_layers = [m for m, a in zip(layer_modules, assignment) if a == i]
        head = slot.modules[:pre_count] if i == 0 else []
        tail = slot.modules[pre_count:] if i == 0 else slot.modules
        slot.modules = head + own_layers + tail
    return slots


def layout_offload(
    inv: Inventory, cost: CostModel, gpus: list, host: tuple | None, disk: tuple | None, context: int, chunk: int
) -> list[Slot] | None:
    """Fill GPUs in order, spill the remaining layers to CPU, then disk. None if kept-quantized layers would spill."""
    pre, layer_modules, post = split_modules(inv)
    slots = _fresh(gpus)
    _attach_edges(slots, inv, pre, post)
    spill_slots = _fresh([d for d in (host, disk) if d is not None])
    main = slots[0]
    index = 0
    for slot in slots:
        while index < len(layer_modules):
            module = layer_modules[index]
            slot.layer_ids.append(module.layer_index)
            slot.modules.append(module)
            if not price(slot, cost, context, chunk).fits:
                slot.layer_ids.pop()
                slot.modules.pop()
                break
            index += 1
    rest = layer_modules[index:]
    if not rest:
        return None  # everything fits on GPUs: no offload needed
    if any(m.quantized_bytes for m in rest):
        return []  # kept-MXFP4 experts must never be offloaded
    main.extra_weights = max(m.bytes for m in rest)
    main.extra_kv_layers = [m.layer_index for m in rest]
    for slot in spill_slots:
        while rest:
            slot.modules.append(rest[0])
            if price(slot, cost, context, chunk).planned > slot.usable:
                slot.modules.pop()
                break
            rest.pop(0)
    if rest:
        spill_slots[-1].modules.extend(rest)
    # the main GPU must still fit with the streaming buffer and the offloaded layers' KV
    while main.layer_ids and not price(main, cost, context, chunk).fits:
        module = next(m for m in reversed(main.modules) if m.kind == "layer")
        main.modules.remove(module)
        main.layer_ids.remove(module.layer_index)
        main.extra_kv_layers.insert(0, module.layer_index)
        main.extra_weights = max(main.extra_weights, module.bytes)
        spill_slots[0].modules.insert(0, module)
    return slots + [s for s in spill_slots if s.modules]


def best_chunk(fits_at, context: int, requested_chunk: int, candidates=CHUNK_CANDIDATES) -> int | None:
    """The prefill chunk that fits: the whole prompt if it can, else the largest candidate."""
    if requested_chunk:
        chunk = min(requested_chunk, context)
        return chunk if fits_at(context, chunk) else None
    if fits_at(context, context):
        return context
    for chunk in candidates:
        if chunk < context and fits_at(context, chunk):
            return chunk
    return None


def _largest(fits_at, low: int, high: int, requested_chunk: int, candidates) -> tuple[int, int] | None:
    chunk = best_chunk(fits_at, low, requested_chunk, candidates)
    if chunk is None:
        return None
    top = best_chunk(fits_at, high, requested_chunk, candidates)
    if top is not None:
        return high, top
    lo, hi, best = low, high, (low, chunk)  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        chunk = best_chunk(fits_at, mid, requested_chunk, candidates)
        if chunk is None:
            hi = mid
        else:
            lo, best = mid, (mid, chunk)
    return best


def largest_context(fits_at, low: int, high: int, requested_chunk: int) -> tuple[int, int] | None:
    """Largest context in [low, high], then the largest prefill chunk for it; None when even `low` does not fit.

    Context comes first so that more memory never gives a shorter context.
    """
    return _largest(fits_at, low, high, requested_chunk, CHUNK_CANDIDATES)
