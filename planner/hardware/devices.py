"""What a machine (or a cluster of identical nodes) offers: the planner's view of hardware.

`Hardware` is produced by the NVML probe (`planner.hardware.probe`), by a tier from `conf/hardware/`,
or by replaying a recorded snapshot. Everything is in bytes; humans see GiB at the edges.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, fields
from functools import cached_property

from planner.units import GIB

DEVICE_SPEEDS = ("memory_bandwidth_gb_per_s", "bf16_tflops", "fp16_tflops", "fp8_tflops", "fp32_tflops")
LINK_SPEEDS = ("nvlink_gb_per_s", "pcie_gb_per_s", "network_gb_per_s")


@dataclass(frozen=True)
class Device:
    """One GPU (or one MIG slice) as the planner sees it."""

    id: int  # index in CUDA order (after CUDA_VISIBLE_DEVICES), per node
    name: str  # as nvidia-smi prints it, e.g. "NVIDIA H100 80GB HBM3"
    total_bytes: int  # NVML total memory
    free_bytes: int  # NVML free memory at probe time (total for a tier)
    compute_capability: str  # "9.0"
    uuid: str = ""  # "GPU-..." or "MIG-..."
    pci_bus_id: str = ""
    reserved_bytes: int = 0  # driver/firmware reserved (NVML v2)
    node: int = 0  # node index for multi-node tiers
    mig: bool = False  # a MIG slice: a separate small GPU, never sharded across
    processes: tuple = ()  # other processes on it: ({"pid": int, "used_bytes": int, "name": str}, ...)
    # published peaks (datasheet, dense); 0: unknown
    memory_bandwidth_gb_per_s: float = 0.0  # GB/s (10^9 bytes/s)
    bf16_tflops: float = 0.0
    fp16_tflops: float = 0.0
    fp8_tflops: float = 0.0
    fp32_tflops: float = 0.0

    @cached_property  # asked for every device of every plan: thousands of times on a large cluster
    def cc_major_minor(self) -> tuple[int, int]:
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)

    @property
    def supports_bf16(self) -> bool:
        return self.cc_major_minor >= (8, 0)

    def tflops(self, dtype: str) -> float:
        """Published dense TFLOPs at a compute dtype ("bfloat16", "float16", "float32"); 0 when unknown."""
        return {"bfloat16": self.bf16_tflops, "float16": self.fp16_tflops, "float32": self.fp32_tflops}.get(dtype, 0.0)


@dataclass(frozen=True)
class Hardware:
    """GPUs of one or more identical nodes, plus the host."""

    source: str  # "probe" | tier name | snapshot path | "cpu"
    devices: tuple[Device, ...] = ()
    nodes: int = 1
    host_ram_bytes: int = 0  # per node
    cpu_count: int = 0
    interconnect: str = "pcie"  # "nvlink" | "pcie" | "none"
    nvlink_pairs: tuple = ()  # ((i, j), ...) where NVML reports NVLink between devices i and j
    driver_version: str = ""
    cuda_driver_version: str = ""
    installed: dict = field(
        default_factory=dict
    )  # kernel packages seen on a probed machine: {"triton": "3.4.0", "kernels": "0.19.1"}
    probed: bool = (
        False  # read off a real machine (probe, or a snapshot of one): `installed` is a fact, not an assumption
    )
    notes: tuple = ()  # one-line notes from probing ("no NVIDIA driver found: planning for CPU")
    nvlink_gb_per_s: float = 0.0  # NVLink per GPU, one direction, GB/s (0: none or unknown)
    pcie_gb_per_s: float = 0.0  # host link per GPU, one direction, GB/s (0: unknown)
    network_gb_per_s: float = 0.0  # between nodes per GPU, GB/s (0: unknown)
    host_memory_bandwidth_gb_per_s: float = 0.0  # host RAM copied by one thread, GB/s (measured for CPU plans)
    host_memory_bandwidth_all_cores_gb_per_s: float = 0.0  # every CPU copying at once, GB/s (0: unknown, one thread's)
    host_fp32_tflops: float = 0.0  # all usable cores, fp32 (0: unknown)
    host_bf16_tflops: float = 0.0  # all usable cores, bf16 (0: unknown)
    speed_factors: dict = field(
        default_factory=dict
    )  # measured efficiency factors, {"gpu"|"cpu"|"cpu_half": {bandwidth_efficiency, ...}}: win over policy's

    def host_tflops(self, dtype: str) -> float:
        return self.host_fp32_tflops if dtype == "float32" else self.host_bf16_tflops

    def host_bandwidth_gb_per_s(self, threads: int = 0) -> float:
        """Host RAM bandwidth a run with `threads` threads (0: cpu_count) streams at, GB/s; 0 when unknown.

        min(threads x one thread's, all cores'): each thread streams about what one thread alone does
        until together they reach what the memory system gives every core. Without an all-core figure
        (old snapshots, a given hardware.memory_bandwidth_gb_per_s) it is one thread's, as before.
        """
        one = self.host_memory_bandwidth_gb_per_s
        every = max(self.host_memory_bandwidth_all_cores_gb_per_s, one)
        return min(max(threads or self.cpu_count, 1) * one, every)

    @property
    def gpus_per_node(self) -> int:
        return sum(1 for d in self.devices if d.node == 0)

    def fingerprint(self) -> str:
        """Stable id of what matters for a plan: GPU kinds, totals and ids, node count, host RAM (GiB).

        Free memory is deliberately left out: it moves between runs; the runner re-checks it.
        """
        key = {
            "nodes": self.nodes,
            "host_ram_gib": self.host_ram_bytes // GIB,
            "devices": [(d.node, d.id, d.name, d.total_bytes, d.compute_capability, d.uuid) for d in self.devices],
        }
        return "hw-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        # field by field, not asdict(self): asdict deep-copies every device and NVLink pair, seconds for
        # the thousands a large cluster holds, and every plan (fallbacks, re-plans) writes this block
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("devices", "nvlink_pairs")}
        data = {k: (copy.deepcopy(v) if isinstance(v, dict) else v) for k, v in data.items()}  # speed_factors nests
        data["devices"] = [_device_dict(d) for d in self.devices]
        data["nvlink_pairs"] = tuple(tuple(p) for p in self.nvlink_pairs)
        data = {f.name: data[f.name] for f in fields(self)}  # the dataclass's field order, as asdict gave it
        data["fingerprint"] = self.fingerprint()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Hardware:
        data = dict(data)
        data.pop("fingerprint", None)
        devices = tuple(Device(**{**d, "processes": tuple(d.get("processes", ()))}) for d in data.pop("devices", ()))
        nvlink = tuple(tuple(p) for p in data.pop("nvlink_pairs", ()))
        notes = tuple(data.pop("notes", ()))
        return cls(devices=devices, nvlink_pairs=nvlink, notes=notes, **data)


def _device_dict(device: Device) -> dict:
    """asdict(device) without its deep copy: every field is a str or a number but `processes`, a tuple of dicts."""
    data = {name: getattr(device, name) for name in _DEVICE_FIELDS}
    data["processes"] = tuple(dict(p) for p in device.processes)
    return data


_DEVICE_FIELDS = tuple(f.name for f in fields(Device))
