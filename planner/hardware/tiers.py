"""Turn the `hardware` config node into a `Hardware`: probe, CPU, a recorded snapshot, or a named tier.

    hw = resolve_hardware(cfg.hardware, name=HydraConfig.get().runtime.choices["hardware"])

- kind=auto: probe this machine through NVML (no driver or no GPU gives a CPU Hardware with a note).
- kind=cpu: no GPU; host RAM and CPUs from the config, or measured on this host where the
  config gives 0 (`host_ram_gib: 0`, `cpu_count: 0`), so one cpu option can mean "this machine".
- kind=snapshot: replay `hardware.path` (written by `shardwise probe probe.save=FILE`).
- kind=tier: `count` GPUs per node x `nodes` nodes of one kind, all memory free; source = tier name.

Tier fields given to auto, snapshot or cpu have no effect; the result carries a note saying so.
Speeds: a tier carries its published bandwidth, TFLOPs and link speeds; probed and recorded GPUs
get them by name from the tiers when planned (planner/config/gpu_speeds.py, applied by
`plan_from_config`); a CPU host is measured (host.py: one thread's and all cores' copy bandwidth)
unless `hardware.memory_bandwidth_gb_per_s` (one thread) and `hardware.all_core_bandwidth_gb_per_s`
give them.
Bad values raise a one-line ShardwiseError naming the key, the value and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from enum import Enum

from planner.errors import ShardwiseError
from planner.hardware.devices import DEVICE_SPEEDS, LINK_SPEEDS, Device, Hardware
from planner.limits import MAX_GPUS, MAX_GPUS_PER_NODE, MAX_NODES
from planner.units import GIB, MIB

_TIER_ONLY = {"name": "", "memory_mib": 0, "compute_capability": "", "count": 1, "nodes": 1}  # schema defaults
_INTERCONNECTS = ("nvlink", "pcie", "none")


def _get(cfg, key: str, default=None):
    value = cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)
    return value.value if isinstance(value, Enum) else value


def _number(cfg, key: str, kind: type, default):
    value = _get(cfg, key, default)
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if not math.isfinite(number):  # nan would pass every `<= 0` check below
            raise ValueError
        return number
    except (TypeError, ValueError, OverflowError):
        raise ShardwiseError(f"hardware.{key} must be a number, got {value!r}: set hardware.{key}=N") from None


def _ignored_knobs(cfg, kind: str) -> tuple[str, ...]:
    changed = [
        f"hardware.{k}={_get(cfg, k)!r}" for k, default in _TIER_ONLY.items() if _get(cfg, k, default) != default
    ]
    if not changed:
        return ()
    return (
        f"{', '.join(changed)} has no effect with hardware kind {kind}: use a tier such as hardware=h100_80gb to "
        "size GPUs",
    )


def _tier(cfg, name: str | None) -> Hardware:
    count = _number(cfg, "count", int, 1)
    nodes = _number(cfg, "nodes", int, 1)
    memory_mib = _number(cfg, "memory_mib", int, 0)
    host_ram_gib = _number(cfg, "host_ram_gib", float, 0)
    cpu_count = _number(cfg, "cpu_count", int, 0)
    cc = str(_get(cfg, "compute_capability", "") or "")
    interconnect = str(_get(cfg, "interconnect", "pcie"))
    label = name or "tier"
    if count > MAX_GPUS_PER_NODE or nodes > MAX_NODES or count * nodes > MAX_GPUS:
        raise ShardwiseError(
            f"hardware.count={count} x hardware.nodes={nodes} is more than shardwise plans for "
            f"(at most {MAX_GPUS_PER_NODE} GPUs per node, {MAX_NODES} nodes, {MAX_GPUS} GPUs in all)"
        )
    if count < 1:
        raise ShardwiseError(f"hardware.count must be >= 1 GPU per node, got {count}: set hardware.count=1 or more")
    if nodes < 1:
        raise ShardwiseError(f"hardware.nodes must be >= 1, got {nodes}: set hardware.nodes=1 or more")
    if memory_mib <= 0:
        raise ShardwiseError(
            f"hardware.memory_mib must be > 0 for tier {label!r}, got {memory_mib}: set the GPU's total as "
            "nvidia-smi prints it, in MiB"
        )
    if not re.fullmatch(r"\d+\.\d+", cc):
        raise ShardwiseError(
            f"hardware.compute_capability must look like '8.0', got {cc!r}: set hardware.compute_capability=MAJOR.MINOR"
        )
    if host_ram_gib <= 0:
        raise ShardwiseError(f"hardware.host_ram_gib must be > 0 GiB, got {host_ram_gib}: set the host RAM per node")
    if cpu_count < 1:
        raise ShardwiseError(f"hardware.cpu_count must be >= 1, got {cpu_count}: set the CPU cores per node")
    if interconnect not in _INTERCONNECTS:
        raise ShardwiseError(f"hardware.interconnect must be one of {', '.join(_INTERCONNECTS)}, got {interconnect!r}")
    gpu_name = str(_get(cfg, "name", "") or label)
    total = memory_mib * MIB
    speeds = {key: _number(cfg, key, float, 0.0) for key in DEVICE_SPEEDS}
    links = {key: _number(cfg, key, float, 0.0) for key in LINK_SPEEDS}
    if any(value < 0 for value in (*speeds.values(), *links.values())):
        raise ShardwiseError(f"hardware speeds must be >= 0 (0: unknown) for tier {label!r}: got {speeds | links}")
    devices = tuple(
        Device(id=i, name=gpu_name, total_bytes=total, free_bytes=total, compute_capability=cc, node=node, **speeds)
        for node in range(nodes)
        for i in range(count)
    )
    # NVLink pairs are per node (device ids repeat on every node).
    pairs = tuple((i, j) for i in range(count) for j in range(i + 1, count)) if interconnect == "nvlink" else ()
    return Hardware(
        source=label,
        devices=devices,
        nodes=nodes,
        host_ram_bytes=int(host_ram_gib * GIB),
        cpu_count=cpu_count,
        interconnect=interconnect,
        nvlink_pairs=pairs,
        **links,
    )


def _cpu(cfg, name: str | None) -> Hardware:
    host_ram_gib = _number(cfg, "host_ram_gib", float, 0)
    cpu_count = _number(cfg, "cpu_count", int, 0)
    if host_ram_gib < 0 or cpu_count < 0:
        raise ShardwiseError(
            f"hardware.host_ram_gib and hardware.cpu_count must be >= 0 (0: this machine's), got {host_ram_gib} and "
            f"{cpu_count}"
        )
    notes: tuple[str, ...] = ()
    ram_bytes = int(host_ram_gib * GIB)
    if host_ram_gib == 0 or cpu_count == 0:
        from planner.hardware.host import host_info

        host = host_info()
        ram_bytes = ram_bytes or host.ram_bytes
        cpu_count = cpu_count or host.cpu_count
        notes = (
            f"hardware=cpu: {ram_bytes / GIB:.1f} GiB RAM and {cpu_count} CPUs measured on this machine",
            *host.notes,
        )
    hw = Hardware(source=name or "cpu", host_ram_bytes=ram_bytes, cpu_count=cpu_count, interconnect="none", notes=notes)
    all_cores = _number(cfg, "all_core_bandwidth_gb_per_s", float, 0.0)
    if all_cores < 0:
        raise ShardwiseError(
            f"hardware.all_core_bandwidth_gb_per_s must be >= 0 GB/s (0: measure it, or one thread's), got {all_cores}"
        )
    return with_host_speed(
        hw,
        _number(cfg, "memory_bandwidth_gb_per_s", float, 0.0),
        _number(cfg, "fp32_tflops", float, 0.0),
        _number(cfg, "bf16_tflops", float, 0.0),
        all_cores,
    )


def with_host_speed(
    hw: Hardware,
    bandwidth_gb_per_s: float = 0.0,
    fp32_tflops: float = 0.0,
    bf16_tflops: float = 0.0,
    all_core_gb_per_s: float = 0.0,
) -> Hardware:
    """`hw` with the host's memory bandwidth and compute: as given, else measured on this machine (with a note).

    `bandwidth_gb_per_s` is one thread's copy bandwidth, `all_core_gb_per_s` every core's at once; given
    numbers without an all-core one keep it unknown (0: plans stream at one thread's, the safe side).
    """
    if bandwidth_gb_per_s > 0 and fp32_tflops > 0:
        return replace(
            hw,
            host_memory_bandwidth_gb_per_s=bandwidth_gb_per_s,
            host_memory_bandwidth_all_cores_gb_per_s=all_core_gb_per_s,
            host_fp32_tflops=fp32_tflops,
            host_bf16_tflops=bf16_tflops or fp32_tflops,
        )
    from planner.hardware.host import host_speed

    speed = host_speed(hw.cpu_count)
    return replace(
        hw,
        host_memory_bandwidth_gb_per_s=bandwidth_gb_per_s or speed.memory_bandwidth_gb_per_s,
        host_memory_bandwidth_all_cores_gb_per_s=all_core_gb_per_s
        or (0.0 if bandwidth_gb_per_s else speed.all_core_bandwidth_gb_per_s),
        host_fp32_tflops=fp32_tflops or speed.fp32_tflops,
        host_bf16_tflops=bf16_tflops or (speed.bf16_tflops if not fp32_tflops else fp32_tflops),
        notes=(*hw.notes, speed.note),
    )


def resolve_hardware(hw_cfg, name: str | None = None) -> Hardware:
    """The Hardware a `hardware` config node describes; `name` is the chosen option (e.g. "h100_80gb")."""
    kind = str(_get(hw_cfg, "kind", "tier"))
    if kind == "auto":
        from planner.hardware.probe import probe

        hw = probe()
    elif kind == "snapshot":
        path = _get(hw_cfg, "path")
        if not path:
            raise ShardwiseError(
                "hardware=snapshot needs hardware.path=FILE (write one with `shardwise probe probe.save=FILE`)"
            )
        from planner.hardware.snapshot import load_snapshot

        hw = load_snapshot(str(path))
        if not hw.devices and not hw.host_memory_bandwidth_gb_per_s:
            hw = replace(
                hw, notes=(*hw.notes, "the snapshot records no host speed: no speed prediction for a CPU plan")
            )
    elif kind == "cpu":
        hw = _cpu(hw_cfg, name)
    elif kind == "tier":
        return _tier(hw_cfg, name)
    else:
        raise ShardwiseError(f"hardware.kind must be one of auto, cpu, snapshot, tier, got {kind!r}")
    if kind == "auto" and not hw.devices:
        hw = with_host_speed(hw)
    extra = _ignored_knobs(hw_cfg, kind)
    return replace(hw, notes=(*hw.notes, *extra)) if extra else hw
