"""From a placed plan to the speed model's inputs, and the plan's `performance` block.

    block = performance_block(inv, hw, slots, strategy=..., tp_size=..., dtype=..., kv_elem_bytes=...,
                              context_tokens=..., sessions=..., prefill_chunk_tokens=..., config=policy.performance)

Each executing slot becomes a `Stage` with the bytes it reads per decode step (active weights only:
embeddings are a lookup unless the head is tied to them; MoE reads experts_per_token of num_experts),
its layers' KV, and the published peaks of its device. Weights held in host RAM or on disk for an
offloaded plan are streams over PCIe or from disk. Pure: everything comes in as arguments.
"""

from __future__ import annotations

from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware
from planner.memory.kv import layer_bytes_per_token
from planner.model.inventory import DTYPE_BYTES, REPLICATED_KINDS, Inventory
from planner.speed.roofline import (
    AttentionLayer,
    Efficiency,
    Link,
    SpeedInputs,
    Stage,
    Stream,
    predict,
    prefill_binding,
    step_time,
)

# per-message latency of each link: NVLink and PCIe transfers ~10 us through NCCL / cudaMemcpy,
# an InfiniBand hop ~20 us; rough, and small beside the bandwidth terms except for tiny models
LATENCY_S = {"nvlink": 10e-6, "pcie": 10e-6, "network": 20e-6}


class Unknown(Exception):
    """A number the model needs is missing: the message says which and how to supply it."""


def _value(config, key: str, default):
    if config is None:
        return default
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def efficiency(config, kind: str, measured: dict | None = None) -> Efficiency:
    """Efficiency factors for "gpu", "cpu" (float32) or "cpu_half" stages.

    Factors measured on this hardware (a calibrated snapshot's `speed_factors`) win over
    `policy.performance` (None: the built-in defaults).
    """
    where = f"the snapshot's speed_factors.{kind}" if (measured or {}).get(kind) else f"policy.performance.{kind}"
    factors = (measured or {}).get(kind) or _value(config, kind, None)
    link = _checked("policy.performance", "link_efficiency", _value(config, "link_efficiency", 0.7), fraction=True)
    if factors is None:
        return Efficiency(link=link)

    def read(key: str, default: float, fraction: bool) -> float:
        return _checked(where, key, _value(factors, key, default), fraction)

    return Efficiency(
        bandwidth=read("bandwidth_efficiency", 0.8, True),
        compute=read("compute_efficiency", 0.5, True),
        link=link,
        layer_overhead_s=read("layer_overhead_us", 0.0, False) * 1e-6,
        step_overhead_s=read("step_overhead_ms", 0.0, False) * 1e-3,
    )


def _checked(where: str, key: str, value, fraction: bool) -> float:
    """A factor as a float: a fraction of a peak in (0, 1], or a fixed cost >= 0; else a one-line error."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    ok = 0 < number <= 1 if fraction else number >= 0
    if not ok:
        rule = "a fraction of the peak in (0, 1]" if fraction else "a cost >= 0"
        raise ShardwiseError(f"{where}.{key}={value!r} must be {rule}: e.g. {where}.{key}={0.8 if fraction else 0}")
    return number


def _read_bytes(modules, inv: Inventory, shard: int) -> tuple[int, int, int, int]:
    """(dense bytes, dense params, expert bytes, expert params) a decode step reads from `modules`, per rank."""
    tied_owners = {m.tied_to for m in inv.modules if m.tied_to}
    dense_bytes = dense_params = expert_bytes = expert_params = 0
    for m in modules:
        if m.kind == "embed" and m.name not in tied_owners:
            continue  # a lookup reads one row per token
        split = shard if m.kind not in REPLICATED_KINDS else 1
        dense_bytes += -(-(m.bytes - m.expert_bytes) // split)
        dense_params += (m.params - m.expert_params) // split
        expert_bytes += -(-m.expert_bytes // split)
        expert_params += m.expert_params // split
    return dense_bytes, dense_params, expert_bytes, expert_params


def _device_peaks(slot, hw: Hardware, dtype: str) -> tuple[float, float, str]:
    if slot.device is None:
        # the run's threads (one per usable CPU) stream at min(threads x one thread's, all cores')
        bandwidth, flops = hw.host_bandwidth_gb_per_s(), hw.host_tflops(dtype)
        if not bandwidth or not flops:
            raise Unknown(
                "no host memory bandwidth or compute: use hardware=cpu (measured here) "
                "or set hardware.memory_bandwidth_gb_per_s and hardware.fp32_tflops"
            )
        return bandwidth * 1e9, flops * 1e12, "cpu" if dtype == "float32" else "cpu_half"
    device = slot.device
    flops = device.tflops(dtype)
    if not device.memory_bandwidth_gb_per_s or not flops:
        raise Unknown(
            f"no published bandwidth or {dtype} TFLOPs for {device.name!r}: add them to its tier in conf/hardware/"
        )
    return device.memory_bandwidth_gb_per_s * 1e9, flops * 1e12, "gpu"


def _link_between(a, b, hw: Hardware) -> Link:
    if a.device is not None and b.device is not None and a.device.node != b.device.node:
        return Link("network", hw.network_gb_per_s * 1e9 or 25e9, LATENCY_S["network"])
    linked = hw.interconnect == "nvlink" and hw.nvlink_gb_per_s > 0
    if linked:
        return Link("NVLink", hw.nvlink_gb_per_s * 1e9, LATENCY_S["nvlink"])
    return Link("PCIe", (hw.pcie_gb_per_s or 31.5) * 1e9, LATENCY_S["pcie"])


def speed_inputs(
    inv: Inventory, hw: Hardware, slots, *, tp_size: int, dtype: str, kv_elem_bytes: int, config=None
) -> SpeedInputs:
    """The speed model's inputs for `slots` (placement's Slot list) of a plan."""
    layer_by_index = {layer.index: layer for layer in inv.layers}
    width = inv.num_attention_heads * inv.head_dim
    running = [s for s in slots if s.executes]
    parked = [s for s in slots if not s.executes]
    stages = []
    for position, slot in enumerate(running):
        shard = slot.shard
        dense_b, dense_p, expert_b, expert_p = _read_bytes(slot.modules, inv, shard)
        ids = list(slot.layer_ids) + list(slot.extra_kv_layers)
        streams = ()
        if position == 0 and parked:
            # offloaded layers run here: their compute and KV belong to this stage; their weights stream in
            # whole (accelerate's hooks move every expert too), counted once as the stream
            _, offloaded_dense, _, offloaded_experts = _read_bytes([m for p in parked for m in p.modules], inv, 1)
            dense_p += offloaded_dense
            expert_p += offloaded_experts
            streams = tuple(_stream(p, hw, slot, config) for p in parked)
        bandwidth, flops, kind = _device_peaks(slot, hw, dtype)
        label = "cpu" if slot.device is None else f"GPU {slot.key}"
        if shard > 1:
            label = f"each of {shard} GPUs"
        stages.append(
            Stage(
                label=label,
                memory_bytes_per_s=bandwidth,
                flops_per_s=flops,
                dense_weight_bytes=dense_b,
                dense_params=dense_p,
                expert_weight_bytes=expert_b,
                expert_params=expert_p,
                layers=tuple(
                    AttentionLayer(
                        kv_bytes_per_token=-(-layer_bytes_per_token(layer_by_index[i], kv_elem_bytes) // shard),
                        window=layer_by_index[i].window if layer_by_index[i].attention == "sliding" else None,
                        qk_width=width // shard,
                    )
                    for i in ids
                ),
                streams=streams,
                efficiency=efficiency(config, kind, hw.speed_factors),
            )
        )
    hops = tuple(_link_between(a, b, hw) for a, b in zip(running, running[1:]))
    tp_link = None
    if tp_size > 1:
        tp_link = Link("NVLink", (hw.nvlink_gb_per_s or hw.pcie_gb_per_s or 31.5) * 1e9, LATENCY_S["nvlink"])
        if not hw.nvlink_gb_per_s:
            tp_link = Link("PCIe", (hw.pcie_gb_per_s or 31.5) * 1e9, LATENCY_S["pcie"])
    return SpeedInputs(
        stages=tuple(stages),
        hidden_bytes=inv.hidden_size * DTYPE_BYTES.get(dtype, 2),
        num_experts=inv.num_experts,
        experts_per_token=inv.experts_per_token,
        tp_size=tp_size,
        tp_link=tp_link,
        hops=hops,
    )


def _stream(parked, hw: Hardware, runner, config) -> Stream:
    size = sum(m.bytes for m in parked.modules)
    if parked.key == "disk":
        disk = _value(config, "disk_gb_per_s", 2.0)
        if not float(disk) > 0:
            raise ShardwiseError(f"policy.performance.disk_gb_per_s={disk!r} must be > 0 GB/s: e.g. 2.0")
        return Stream(size, float(disk) * 1e9, "disk")
    if runner.device is None:
        return Stream(size, hw.host_bandwidth_gb_per_s() * 1e9, "host RAM")
    return Stream(size, (hw.pcie_gb_per_s or 31.5) * 1e9, "host RAM over PCIe")


def _inputs_and_prompt(inv, hw, slots, tp_size: int, dtype: str, kv_elem_bytes: int, config):
    """(speed inputs, typical prompt tokens), or (None, why a number is missing)."""
    try:
        inputs = speed_inputs(inv, hw, slots, tp_size=tp_size, dtype=dtype, kv_elem_bytes=kv_elem_bytes, config=config)
    except Unknown as exc:
        return None, str(exc)
    prompt = int(_value(config, "prompt_tokens", 512))
    if prompt < 1:
        raise ShardwiseError(f"policy.performance.prompt_tokens={prompt} must be >= 1: e.g. 512")
    return inputs, prompt


def performance_block(
    inv: Inventory,
    hw: Hardware,
    slots,
    *,
    tp_size: int,
    dtype: str,
    kv_elem_bytes: int,
    context_tokens: int,
    sessions: int,
    prefill_chunk_tokens: int = 0,
    config=None,
) -> dict:
    """The plan's `performance` block; {"available": False, "reason": ...} when a number is missing."""
    inputs, prompt = _inputs_and_prompt(inv, hw, slots, tp_size, dtype, kv_elem_bytes, config)
    if inputs is None:
        return {"available": False, "reason": prompt}
    prediction = predict(
        inputs,
        context_tokens=context_tokens,
        sessions=sessions,
        prompt_tokens=prompt,
        prefill_chunk_tokens=prefill_chunk_tokens,
    )
    return {
        "available": True,
        **prediction.to_dict(),
        "ttft_binding": prefill_binding(inputs, prediction.prompt_tokens),
        "model": "roofline: max(bytes / bandwidth, FLOPs / compute) per stage + streams + links + fixed costs",
    }


def decode_speeds(
    inv: Inventory,
    hw: Hardware,
    slots,
    *,
    tp_size: int,
    dtype: str,
    kv_elem_bytes: int,
    context_tokens: int,
    sessions: int,
    config=None,
) -> dict:
    """Only the decode rates of performance_block (the same numbers): what planner.place.objective weighs layouts by.

    The time to first token prefills the whole context chunk by chunk (thousands of forward passes
    at long contexts); the objective never looks at it, so weighing many layouts skips it.
    """
    inputs, prompt = _inputs_and_prompt(inv, hw, slots, tp_size, dtype, kv_elem_bytes, config)
    if inputs is None:
        return {"available": False, "reason": prompt}
    at = max(1, min(prompt, context_tokens))  # as predict(): decode priced with the typical prompt cached
    return {  # rounded as Prediction.to_dict rounds them, so layouts compare exactly as their blocks would
        "available": True,
        "decode_tokens_per_s": round(1.0 / step_time(inputs, 1, 1, at, "decode").seconds, 3),
        "aggregate_tokens_per_s": round(sessions / step_time(inputs, sessions, 1, at, "decode").seconds, 3),
    }
