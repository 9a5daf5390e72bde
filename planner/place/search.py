"""Which arrangements to try, in order, and the search for the context (and prefill chunk) each reaches.

An arrangement (Attempt) lays the model out at a given (context, chunk): one GPU, a pipeline over
the n roomiest, tensor parallel inside NVLinked nodes, pipeline stages across nodes, offload. They
are tried fewest GPUs first; the first that reaches the context asked for (or the model's maximum)
wins (DESIGN.md, placement rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.decide.policy import Policy
from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware
from planner.memory.terms import CostModel, headroom
from planner.model.inventory import Inventory
from planner.place.placement import best_chunk, evaluate, largest_context, layout_layers, layout_offload
from planner.planfile.plan import Notes
from planner.units import MIB

ALWAYS_STAGES = 64  # pipeline stages tried whatever the model (planner.place.search.most_stages)


@dataclass(frozen=True)
class Found:
    """What the search settled on; `fewer_reach` is the most context fewer GPUs gave, when they fitted at all."""

    attempt: Attempt
    context: int
    chunk: int
    fewer_reach: int | None = None
    why: str = ""  # set when policy.objective took this layout over the fewest GPUs (planner.place.objective)


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
    room: tuple[int, int] | None = None  # usable bytes of its GPUs (together, the roomiest): unsharded layouts

    def fits_at(self, cost: CostModel, context: int, chunk: int) -> bool:
        if self.room is not None:
            together, one = cost.least_gpu_bytes(context, self.gpus)
            if self.room[0] < together or self.room[1] < one:
                return False  # no split can fit (a necessary condition, never a guess): skip laying it out
        slots = self.build(context, chunk)
        return bool(slots) and all(p.fits for p in evaluate(slots, cost, context, chunk))


# A device entry is (Device or None, key, usable bytes, free bytes), as placement lays out onto.


def gpu_entries(hw: Hardware, policy: Policy, node: int = 0) -> list[tuple]:
    return entries_by_node(hw, policy, node + 1)[node]


def entries_by_node(hw: Hardware, policy: Policy, nodes: int) -> list[list[tuple]]:
    """The device entries of nodes 0..nodes-1, in one pass over the devices (a cluster may list thousands)."""
    found: list[list[tuple]] = [[] for _ in range(nodes)]
    for d in hw.devices:
        if d.node >= nodes:
            continue
        reserve = headroom(d.free_bytes, policy.headroom_fraction, policy.headroom_mib * MIB)
        found[d.node].append((d, d.id, max(d.free_bytes - reserve, 0), d.free_bytes))
    return found


def _room_of(entries: list[tuple]) -> tuple[int, int]:
    return sum(e[2] for e in entries), max(e[2] for e in entries)


def host_entry(hw: Hardware, policy: Policy) -> tuple:
    ram = hw.host_ram_bytes
    return (None, "cpu", int(ram * (1 - policy.host_headroom_fraction)), ram)


def disk_entry(policy: Policy) -> tuple:
    """Room where the offload folder goes (measured when the request was built: re-plan on the target)."""
    return (None, "disk", policy.offload_disk_bytes, policy.offload_disk_bytes)


def attempts(inv: Inventory, cost: CostModel, hw: Hardware, policy: Policy, notes: Notes) -> list[Attempt]:
    """The arrangements policy.strategy allows on `hw`, fewest GPUs first."""
    strategy = policy.strategy
    gpus = gpu_entries(hw, policy, 0)
    found: list[Attempt] = []
    if not gpus:
        if strategy != "auto":
            raise ShardwiseError(
                f"policy.strategy={strategy} needs GPUs, but {hw.source} has none: use policy.strategy=auto"
            )
        host = host_entry(hw, policy)
        found.append(Attempt("cpu", lambda c, k: layout_layers(inv, cost, [host], c, k), gpus=0))
        if policy.allow_disk_offload:
            disk = disk_entry(policy)
            found.append(
                Attempt(
                    "offload",
                    lambda c, k: layout_offload(inv, cost, [host], None, disk, c, k) or None,
                    gpus=0,
                    note="layers beyond host RAM on disk",
                )
            )
        return found
    by_room = sorted(gpus, key=lambda e: (-e[2], e[1]))
    if strategy == "tensor_parallel":
        return _tp_attempts(inv, cost, hw, policy, gpus, notes, explicit=True)
    if strategy in ("auto", "single_gpu"):
        found.append(
            Attempt(
                "single_gpu",
                lambda c, k, e=by_room[0]: layout_layers(inv, cost, [e], c, k),
                gpus=1,
                room=_room_of([by_room[0]]),
            )
        )
    if strategy in ("auto", "pipeline"):
        if strategy == "pipeline" and len(gpus) < 2:
            raise ShardwiseError(
                f"policy.strategy=pipeline needs at least 2 GPUs, {hw.source} has {len(gpus)}: "
                "raise hardware.count or use auto"
            )
        for n in range(2, min(len(gpus), most_stages(inv)) + 1):
            chosen = sorted(by_room[:n], key=lambda e: e[1])
            found.append(
                Attempt(
                    "pipeline",
                    lambda c, k, ch=chosen: layout_layers(inv, cost, ch, c, k),
                    gpus=n,
                    pp_size=n,
                    room=_room_of(chosen),
                )
            )
    if strategy == "auto" and hw.nodes > 1:
        found.extend(_tp_attempts(inv, cost, hw, policy, gpus, notes, explicit=False))
        found.extend(_cross_node_pipeline_attempts(inv, cost, hw, policy, len(gpus)))
    if strategy == "auto" and (policy.allow_cpu_offload or policy.allow_disk_offload):
        host = host_entry(hw, policy) if policy.allow_cpu_offload else None
        disk = disk_entry(policy) if policy.allow_disk_offload else None
        ordered = sorted(gpus, key=lambda e: e[1])
        found.append(
            Attempt(
                "offload",
                lambda c, k: layout_offload(inv, cost, ordered, host, disk, c, k) or None,
                gpus=len(gpus),
                note="layers beyond GPU memory in host RAM / on disk",
            )
        )
    return found


def _in_node_tp(inv, cost, gpus: list) -> list[Attempt]:
    """Tensor parallel over 2..n GPUs of one node, every size the heads divide by."""
    ordered = sorted(gpus, key=lambda e: e[1])
    return [
        Attempt(
            "tensor_parallel",
            lambda c, k, t=t: layout_layers(inv, cost, [ordered[0]], c, k, shard=t),
            gpus=t,
            tp_size=t,
        )
        for t in range(2, len(gpus) + 1)
        if divides(t, inv)
    ]


def speed_alternatives(inv: Inventory, cost: CostModel, hw: Hardware, policy: Policy) -> list[Attempt]:
    """Layouts policy.strategy=auto does not search but policy.objective may take: tensor parallel inside a node.

    The fewest-GPUs search pipelines inside a node (one process); tensor parallel there needs a
    torchrun launch, so it is weighed only by speed (planner.place.objective), where the GPUs are NVLinked.
    """
    gpus = gpu_entries(hw, policy, 0)
    if policy.strategy != "auto" or len(gpus) < 2 or not inv.has_tp_plan or hw.interconnect != "nvlink":
        return []
    return _in_node_tp(inv, cost, gpus)


def _cross_node_pipeline_attempts(inv, cost, hw: Hardware, policy: Policy, per_node: int) -> list[Attempt]:
    """Pipeline stages over GPUs of several nodes (torchrun, one GPU per stage), for when tensor parallel cannot.

    A shape is (GPUs, nodes, stages per node), the same number of stages on every node used; at
    most most_stages(inv) stages. On identical nodes two shapes with the same GPU count hold the
    same memory (the same split, so the same fit) and differ only in hand-offs: k nodes of c/k
    stages make k - 1 network and c - k in-node hand-offs, a cost linear in k, so the fastest of
    them is the fewest or the most nodes; only those two are tried (the fewest first, as before).
    """
    limit = most_stages(inv)
    by_node = entries_by_node(hw, policy, min(hw.nodes, limit))  # once: the shapes ask for each many times
    shapes = sorted(
        (nodes * per_stage_node, nodes, per_stage_node)
        for nodes in range(2, min(hw.nodes, limit) + 1)
        for per_stage_node in range(1, min(per_node, limit // nodes) + 1)
    )
    if _identical(by_node):
        ends: dict[int, list] = {}
        for shape in shapes:  # sorted: the fewest nodes of a count come first, the most last
            ends.setdefault(shape[0], []).append(shape)
        shapes = [shape for same in ends.values() for shape in dict.fromkeys((same[0], same[-1]))]
    found = []
    for count, nodes, per_stage_node in shapes:
        stages = [entry for node in range(nodes) for entry in by_node[node][:per_stage_node]]
        found.append(
            Attempt(
                "pipeline",
                lambda c, k, st=stages: layout_layers(inv, cost, st, c, k),
                gpus=count,
                pp_size=count,
                nodes=nodes,
                room=_room_of(stages),
            )
        )
    return found


def _identical(by_node: list[list[tuple]]) -> bool:
    """Every node has the same GPUs (model, usable and free memory, in order)."""

    def shape(entries):
        return [(e[0].name, e[2], e[3]) for e in entries]

    first = shape(by_node[0])
    return all(shape(entries) == first for entries in by_node[1:])


def most_stages(inv: Inventory) -> int:
    """The most pipeline stages worth laying out: twice one per decoder layer plus the embedding and the head, or 64.

    A stage holds at least one layer, the embedding or the head, or nothing (placement never splits
    a layer). The proportional split (planner.place.placement) may leave a GPU empty before every layer
    has its own, when a layer takes more than a GPU's share (24 layers of gpt-oss-20b at 64
    sessions spread best over 28 GPUs), so twice that many are tried; and never fewer than 64, so
    every machine up to 8 nodes of 8 GPUs is searched in full. This bounds every pipeline search
    by the model, not by how many GPUs a machine claims.
    """
    return max(2 * (len(inv.layers) + 2), ALWAYS_STAGES)


def _tp_attempts(inv, cost, hw: Hardware, policy: Policy, gpus: list, notes: Notes, explicit: bool) -> list[Attempt]:
    per_node = len(gpus)
    problems = []
    if not inv.has_tp_plan:
        problems.append(f"{inv.model_type} has no tensor-parallel plan in transformers")
    if hw.interconnect != "nvlink":
        problems.append(f"GPUs are linked by {hw.interconnect}, tensor parallel needs NVLink")
    if explicit and per_node * hw.nodes < 2:
        problems.append(f"tensor parallel needs at least 2 GPUs, {hw.source} has {per_node * hw.nodes}")
    if problems:
        if explicit:
            raise ShardwiseError(
                f"policy.strategy=tensor_parallel is not possible: {'; '.join(problems)}: use policy.strategy=auto"
            )
        notes.decide("tensor_parallel", "no", "; ".join(problems))
        return []
    found = _in_node_tp(inv, cost, gpus) if explicit else []
    if hw.nodes > 1 and per_node > 1 and divides(per_node, inv):
        first_of_node = [entries[0] for entries in entries_by_node(hw, policy, min(hw.nodes, most_stages(inv)))]
        for nodes in range(2, min(hw.nodes, most_stages(inv)) + 1):  # one pipeline stage per node
            stages = first_of_node[:nodes]
            found.append(
                Attempt(
                    "tensor_parallel",
                    lambda c, k, st=stages: layout_layers(inv, cost, st, c, k, shard=per_node),
                    gpus=per_node * nodes,
                    tp_size=per_node,
                    pp_size=nodes,
                    nodes=nodes,
                )
            )
    elif hw.nodes > 1 and per_node > 1:
        notes.decide(
            "tensor_parallel",
            "no",
            f"head counts ({inv.num_attention_heads}, {inv.num_kv_heads} kv) do not divide by {per_node} GPUs per node",
        )
    if explicit and not found:
        raise ShardwiseError(
            f"policy.strategy=tensor_parallel: no GPU count divides {inv.num_attention_heads} attention and "
            f"{inv.num_kv_heads} KV heads: use policy.strategy=auto"
        )
    return found


def first_fit(
    tried: list[Attempt], cost: CostModel, requested: int | None, low: int, high: int, chunk_req: int
) -> Found | None:
    """The fewest GPUs that reach the context asked for, with that context and its prefill chunk.

    With a context requested, the first arrangement that fits at it. Without one, the first that
    reaches the model's maximum (`high`); when none does, the one that gives the most context (the
    fewest GPUs among equals), so the GPUs given are used before the context is cut. Offload is
    tried only when nothing else fits at `low`: it buys context with a many-fold slowdown.
    """
    best: Found | None = None
    index = 0
    while index < len(tried):
        attempt = tried[index]
        if best is not None and attempt.strategy == "offload":
            break

        def fits(c, k, a=attempt):
            return a.fits_at(cost, c, k)

        floor = requested if requested is not None else (low if best is None else best.context + 1)
        if floor > high and requested is None:
            break  # only more context than the best so far counts
        skip_to = _first_fitting_in_run(tried, index, cost, floor, chunk_req)
        if skip_to > index:
            index = skip_to
            continue
        if requested is None and _run_end(tried, index) - index + 1 > LINEAR_RUN and attempt.strategy != "offload":
            best, index = _most_context_in_run(tried, index, cost, floor, high, chunk_req, best)
            if best is not None and best.context >= high:
                break
            continue
        index += 1
        if requested is not None:
            chunk = best_chunk(fits, requested, chunk_req)
            if chunk is not None:
                return Found(attempt, requested, chunk)
            continue
        found = largest_context(fits, floor, high, chunk_req)
        if found is None:
            continue
        best = Found(attempt, found[0], found[1], best.context if best is not None else None)
        if found[0] >= high:
            break
    return best


LINEAR_RUN = 64  # runs of one kind up to this long are tried one by one (every real machine's are)


def _run_end(tried: list[Attempt], start: int) -> int:
    """Last index of the run from `start`: attempts of one kind (strategy, TP degree, in one node or across)
    on as many GPUs as the one before or more."""
    kind = (tried[start].strategy, tried[start].tp_size, tried[start].nodes > 1)
    end = start
    while end + 1 < len(tried):
        following = tried[end + 1]
        if (following.strategy, following.tp_size, following.nodes > 1) != kind:
            break
        if following.gpus < tried[end].gpus:  # equal: cross-node shapes of one count, the fewest nodes first
            break
        end += 1
    return end


def _most_context_in_run(
    tried: list[Attempt], start: int, cost: CostModel, floor: int, high: int, chunk_req: int, best: Found | None
) -> tuple[Found | None, int]:
    """What the one-by-one search would take from a long run whose first attempt fits at `floor`: the fewest
    GPUs that give the most context the run reaches (monotone in the GPU count, see _first_fitting_in_run),
    by bisection; and the index after the run."""
    end = _run_end(tried, start)

    def largest(i: int):
        return largest_context(lambda c, k: tried[i].fits_at(cost, c, k), floor, high, chunk_req)

    top = largest(end)
    if top is None:  # not monotone after all: take what the first gives, and go on one by one
        first = largest(start)
        if first is None:
            return best, start + 1
        return Found(tried[start], first[0], first[1], best.context if best is not None else None), start + 1
    lo, hi, chunk = start - 1, end, top[1]  # lo does not reach top[0] (or is before the run), hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = best_chunk(lambda c, k, i=mid: tried[i].fits_at(cost, c, k), top[0], chunk_req)
        if found is None:
            lo = mid
        else:
            hi, chunk = mid, found
    return Found(tried[hi], top[0], chunk, best.context if best is not None else None), end + 1


def _first_fitting_in_run(tried: list[Attempt], start: int, cost: CostModel, floor: int, chunk_req: int) -> int:
    """`start`, or, in a run longer than LINEAR_RUN whose first attempt does not fit at `floor`, the first
    that does (or the index after the run when none does), found by bisection.

    Within a run each layout adds GPUs to the one before, so fitting is monotone in the GPU count (a
    GPU added to a pipeline brings more usable memory than the layer share it takes over); bisection
    makes a machine claiming thousands of GPUs cost a logarithmic number of layouts instead of one per
    GPU count. Attempts it skips do not fit at `floor`, so they could not have been taken.
    """
    end = _run_end(tried, start)
    if end - start + 1 <= LINEAR_RUN or tried[start].strategy == "offload":
        return start

    def fits_at_floor(i: int) -> bool:
        return best_chunk(lambda c, k: tried[i].fits_at(cost, c, k), floor, chunk_req) is not None

    if fits_at_floor(start):
        return start
    if not fits_at_floor(end):
        return end + 1
    lo, hi = start, end  # lo does not fit, hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits_at_floor(mid):
            hi = mid
        else:
            lo = mid
    return hi


def divides(t: int, inv: Inventory) -> bool:
    return t >= 1 and inv.num_attention_heads % t == 0 and inv.num_kv_heads % t == 0
