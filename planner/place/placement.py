"""Pure placement: which module goes on which device, and whether it fits at a context.

No tensors move here. A `Layout` assigns the inventory's modules to devices; `evaluate` prices
every device with the cost model; the search functions pick the fewest GPUs, split layers in
contiguous ranges proportional to each GPU's usable memory, and find the largest context and
the prefill chunk that keep every device inside its budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.hardware.devices import Device
from planner.memory.terms import CostModel
from planner.model.inventory import REPLICATED_KINDS, Inventory, ModuleEntry
from planner.planfile.plan import DeviceBudget

CHUNK_CANDIDATES = (8192, 4096, 2048, 1024, 512, 256, 128)
REPAIR_MOVES = 3  # boundary layers moved at most when a proportional split overflows a device


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
    has_encoder: bool = False  # holds the vision / audio encoder, which runs here once per image in the prefill
    shard: int = 1  # tensor-parallel degree: this slot holds 1/shard of its layers' weights and KV
    extra_weights: int = 0  # streaming buffer for offloaded layers (on the execution GPU)
    extra_kv_layers: list = field(default_factory=list)  # offloaded layers whose KV lives here
    executes: bool = True  # False for host RAM / disk holding offloaded weights that run on the first device


def split_modules(inv: Inventory) -> tuple[list[ModuleEntry], list[ModuleEntry], list[ModuleEntry]]:
    """(modules before the first layer, layer modules, modules after the last layer)."""
    layer_positions = [i for i, m in enumerate(inv.modules) if m.kind == "layer"]
    first, last = layer_positions[0], layer_positions[-1]
    return list(inv.modules[:first]), list(inv.modules[first : last + 1]), list(inv.modules[last + 1 :])


def price(slot: Slot, cost: CostModel, context: int, chunk: int) -> DeviceBudget:
    """The slot's memory terms at (context, chunk): the plan's budget row for its device."""
    shard = slot.shard
    if shard == 1:
        weights = sum(m.bytes for m in slot.modules)
    else:
        # tensor parallelism shards the decoder and the head; embeddings, norms and encoders stay whole on each rank
        weights = sum(m.bytes if m.kind in REPLICATED_KINDS else -(-m.bytes // shard) for m in slot.modules)
    weights += slot.extra_weights
    if slot.executes:
        ids = tuple(slot.layer_ids) + tuple(slot.extra_kv_layers)
        kv = -(-cost.group_kv(ids, context) // shard)
        state = -(-cost.group_state(ids) // shard)
        activations = cost.group_activations(ids, slot.has_head, chunk, context, shard, slot.has_encoder)
    else:
        kv = state = activations = 0  # offloaded layers run (and keep their KV) on the first device
    tensors = weights + kv + state + activations
    overhead = cost.overhead(slot.device, tensors)
    if slot.key == "disk":
        overhead = 0
    planned = tensors + overhead
    return DeviceBudget(
        device=str(slot.key),
        weights=weights,
        kv_cache=kv,
        activations=activations,
        overhead=overhead,
        planned=planned,
        usable=slot.usable,
        free_after=slot.usable - planned if slot.key != "disk" else 0,
        node=slot.device.node if slot.device is not None else 0,
        layers=(min(slot.layer_ids), max(slot.layer_ids)) if slot.layer_ids else (),
        state=state,
    )


def evaluate(slots: list[Slot], cost: CostModel, context: int, chunk: int) -> list[DeviceBudget]:
    return [price(s, cost, context, chunk) for s in slots]


def _fresh(devices: list[tuple[Device | None, object, int, int]], shard: int = 1) -> list[Slot]:
    return [Slot(key=key, device=dev, usable=usable, free=free, shard=shard) for dev, key, usable, free in devices]


def _attach_edges(slots: list[Slot], inv: Inventory, pre, post) -> None:
    first, last = slots[0], slots[-1]
    first.modules.extend(pre)
    # the encoders' output is merged into the first layer's input: they run (and are placed) with the first stage
    first.has_encoder = any(m.kind == "encoder" for m in pre)
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

    kv_all = cost.cache_by_layer(context)
    costs = [-(-(m.bytes + kv_all[m.layer_index]) // shard) for m in layer_modules]
    capacities = [_room(slot, cost, context, chunk) for slot in slots]
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
    layout = _apply(slots, layer_modules, assignment, len(pre))
    return _repair(
        layout,
        assignment,
        lambda: _fresh_with_edges(devices, shard, inv, pre, post),
        layer_modules,
        len(pre),
        cost,
        context,
        chunk,
    )


def _fresh_with_edges(devices: list, shard: int, inv: Inventory, pre, post) -> list[Slot]:
    slots = _fresh(devices, shard)
    _attach_edges(slots, inv, pre, post)
    return slots


def _repair(
    slots, assignment, fresh, layer_modules, pre_count: int, cost: CostModel, context: int, chunk: int
) -> list[Slot]:
    """Move boundary layers off a device over its budget onto a neighbour with room, keeping ranges contiguous.

    The proportional split works on estimates; near the limit one layer across a boundary decides
    whether a split fits. Each move goes to the roomier neighbour; it stops when everything fits,
    when no move is possible, when the devices together cannot hold the layers anyway, or when
    the overflow is more than a couple of layers (then the split was not the problem).
    """
    largest = max(m.bytes for m in layer_modules)
    for _ in range(REPAIR_MOVES):
        priced = evaluate(slots, cost, context, chunk)
        over = [i for i, p in enumerate(priced) if not p.fits]
        if not over or sum(p.planned for p in priced) > sum(p.usable for p in priced):
            return slots
        if priced[over[0]].planned - priced[over[0]].usable > REPAIR_MOVES * largest:
            return slots
        i = over[0]
        moves = []
        if assignment.count(i) > 1:
            if i > 0:
                moves.append((priced[i - 1].usable - priced[i - 1].planned, i - 1, assignment.index(i)))
            if i < len(slots) - 1:
                moves.append(
                    (
                        priced[i + 1].usable - priced[i + 1].planned,
                        i + 1,
                        len(assignment) - 1 - assignment[::-1].index(i),
                    )
                )
        moves = [m for m in moves if m[0] > 0]
        if not moves:
            return slots
        _, target, position = max(moves)
        assignment = list(assignment)
        assignment[position] = target
        slots = _apply(fresh(), layer_modules, assignment, pre_count)
    return slots


def _room(slot: Slot, cost: CostModel, context: int, chunk: int) -> int:
    """Bytes of layer weights + KV the slot can still take, after its fixed overhead, edge modules and activations."""
    edge = price(slot, cost, context, chunk)
    layer_act = cost.activations([cost.inv.layers[0]], False, chunk, context, slot.shard)
    frac = cost.overheads.fragmentation_fraction if slot.device is not None else 0.0
    fixed = cost.gpu_fixed_overhead() if slot.device is not None else cost.overheads.cpu_runtime_bytes
    room = (
        int((slot.usable - fixed) / (1 + frac))
        - (edge.weights + edge.kv_cache + edge.state + edge.activations)
        - layer_act
    )
    return max(room, 0)


def _apply(slots: list[Slot], layer_modules, assignment, pre_count: int) -> list[Slot]:
    own: list[list] = [[] for _ in slots]  # one pass, not one per slot: thousands of stages x layers add up
    for module, index in zip(layer_modules, assignment):
        slots[index].layer_ids.append(module.layer_index)
        own[index].append(module)
    # keep forward order inside each slot: pre modules, layers, post modules
    for i, slot in enumerate(slots):
        own_layers = own[i]
        head = slot.modules[:pre_count] if i == 0 else []
        tail = slot.modules[pre_count:] if i == 0 else slot.modules
        slot.modules = head + own_layers + tail
    return slots


def layout_offload(
    inv: Inventory, cost: CostModel, runners: list, host: tuple | None, disk: tuple | None, context: int, chunk: int
) -> list[Slot] | None:
    """Layers 0..k-1 in order on the devices that run them, the tail of offloaded layers in host RAM, then on disk.

    Offloaded layers execute on the first running device (accelerate streams their weights in),
    so that device also holds their KV cache and a buffer for the largest of them. Returns []
    when the tail would hold kept-quantized (MXFP4) weights, which must never be offloaded.
    """
    pre, layer_modules, post = split_modules(inv)
    total = len(layer_modules)
    kv_all = cost.cache_by_layer(context)
    slots: list[Slot] = []
    for offloaded in range(0, total + 1):
        kept, tail = layer_modules[: total - offloaded], layer_modules[total - offloaded :]
        if any(m.quantized_bytes for m in tail):
            return []
        slots = _fresh(runners)
        _attach_edges(slots, inv, pre, post)
        if tail:
            slots[0].extra_weights = max(m.bytes for m in tail)
            slots[0].extra_kv_layers = [m.layer_index for m in tail]
        if not _fill_in_order(slots, kept, cost, context, chunk, kv_all, len(pre)):
            continue
        return slots + _spill(tail, host, disk, cost, context, chunk)
    return slots


def _fill_in_order(
    slots: list[Slot], layers, cost: CostModel, context: int, chunk: int, kv_all, pre_count: int
) -> bool:
    """Put `layers` on `slots` in order, each slot up to what it can hold; False when they do not all fit."""
    assignment, index = [], 0
    for slot_index, slot in enumerate(slots):
        room = _room(slot, cost, context, chunk)
        used = 0
        while index < len(layers) and used + layers[index].bytes + kv_all[layers[index].layer_index] <= room:
            used += layers[index].bytes + kv_all[layers[index].layer_index]
            assignment.append(slot_index)
            index += 1
    if index < len(layers):
        return False
    _apply(slots, layers, assignment, pre_count)
    return all(price(slot, cost, context, chunk).fits for slot in slots)


def _spill(tail, host: tuple | None, disk: tuple | None, cost: CostModel, context: int, chunk: int) -> list[Slot]:
    """Offloaded layers into host RAM while it has room, the rest on disk.

    Without disk, the rest goes over the host's budget (and the plan does not fit).
    """
    if not tail:
        return []
    places = [entry for entry in (host, disk) if entry is not None]
    spill = [Slot(key=key, device=dev, usable=usable, free=free, executes=False) for dev, key, usable, free in places]
    rest = list(tail)
    for position, slot in enumerate(spill):
        last = position == len(spill) - 1
        while rest:
            slot.modules.append(rest[0])
            if not last and price(slot, cost, context, chunk).planned > slot.usable:
                slot.modules.pop()
                break
            rest.pop(0)
        slot.layer_ids = [m.layer_index for m in slot.modules]
    return [slot for slot in spill if slot.modules]


def best_chunk(fits_at, context: int, requested_chunk: int, candidates=CHUNK_CANDIDATES) -> int | None:
    """The prefill chunk: the whole prompt up to the largest candidate, longer prompts in chunks of that size.

    The same chunk at every context (a smaller one only where that one does not fit) keeps planned
    memory growing with the context: a one-pass prefill of a long prompt would plan more memory at
    a shorter context than the chunked prefill of a longer one.
    """
    if requested_chunk:
        chunk = min(requested_chunk, context)
        return chunk if fits_at(context, chunk) else None
    smallest = min([context, *candidates])
    if not fits_at(context, smallest):
        return None  # a smaller prefill chunk never needs more memory: nothing larger can fit either
    for chunk in sorted({min(context, c) for c in candidates}, reverse=True):
        if fits_at(context, chunk):
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
