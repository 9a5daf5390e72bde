"""What the host offers besides GPUs: RAM (within any container limit), usable CPUs, installed kernels,
and how fast its memory and cores are (for the speed model of CPU plans).

Used by the probe; everything is read without importing torch or the kernel packages. The speed
measurement uses numpy when it is installed (it comes with torch) and otherwise falls back to
documented constants, saying so.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from planner.units import GIB

# decide which quantized/attention kernels a plan may keep (planner/decisions.py, planner/quant_support.py)
KERNEL_PACKAGES = ("triton", "kernels", "compressed-tensors", "gptqmodel", "optimum", "bitsandbytes")
CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


@dataclass(frozen=True)
class HostInfo:
    ram_bytes: int  # RAM this process may use: physical RAM, or the container limit when lower
    cpu_count: int  # CPUs this process may run on
    notes: tuple[str, ...] = ()


def meminfo_total_bytes(path: Path = Path("/proc/meminfo")) -> int:
    """`MemTotal` from /proc/meminfo in bytes; 0 when unreadable."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def physical_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return meminfo_total_bytes()


def cgroup_memory_limit_bytes(paths: tuple[Path, ...] = CGROUP_MEMORY_LIMITS) -> int | None:
    """The container's memory limit in bytes, None when there is none ("max", absent, or absurdly large)."""
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):  # cgroup v1 writes ~2^63 for "no limit"
            return int(text)
        return None
    return None


def usable_cpu_count() -> int:
    """CPUs this process may run on (affinity, as taskset/SLURM restrict it), else all CPUs."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def host_info(limit_paths: tuple[Path, ...] = CGROUP_MEMORY_LIMITS) -> HostInfo:
    physical = physical_ram_bytes()
    limit = cgroup_memory_limit_bytes(limit_paths)
    notes: tuple[str, ...] = ()
    ram = physical
    if limit is not None and (physical == 0 or limit < physical):
        ram = limit
        notes = (
            f"container memory limit {limit / GIB:.1f} GiB is below host RAM {physical / GIB:.1f} GiB: planning with "
            "the limit",
        )
    return HostInfo(ram_bytes=ram, cpu_count=usable_cpu_count(), notes=notes)


def installed_kernels(names: tuple[str, ...] = KERNEL_PACKAGES) -> dict[str, str]:
    """Versions of installed kernel packages, read from their metadata (nothing is imported)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


# Used when numpy is missing: a DDR4-3200 dual-channel desktop streams ~25 GB/s (STREAM copy) and
# two AVX2 cores at ~3 GHz do ~2 x 3e9 x 32 = ~190 GFLOPs fp32 peak; both are rough, and said so.
FALLBACK_BANDWIDTH_GB_PER_S = 25.0
FALLBACK_FP32_GFLOPS_PER_CORE = 96.0
BANDWIDTH_BUFFER_BYTES = 64 * 1024 * 1024  # two of these are well past a 32 MiB L3, so the copy streams from DRAM
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # instructions that multiply bf16 at twice the fp32 rate


@dataclass(frozen=True)
class HostSpeed:
    memory_bandwidth_gb_per_s: float  # STREAM-copy convention: bytes read + bytes written per second
    fp32_tflops: float
    bf16_tflops: float
    note: str  # how the numbers were obtained


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def host_speed(cpus: int = 0) -> HostSpeed:
    """Memory bandwidth and compute of this host, measured once per process (~0.3 s) with numpy.

    Timed by CPU time, not the wall clock: on a machine shared with other busy processes the wall
    clock also counts their turns, and the plan describes the hardware, not today's load.
    Bandwidth: best of 4 copies of a 64 MiB buffer by one core (first touch excluded; a many-core
    server streams more with all cores). Compute: best of 3 fp32 matmuls of 1024 x 1024, as FLOPs
    per core-second times `cpus`. bf16 is taken as twice fp32 where the CPU has native bf16 dot
    products (avx512_bf16, amx_bf16), else as fp32 (the kernels convert).
    """
    cpus = cpus or usable_cpu_count()
    bf16_factor = 2.0 if cpu_flags() & set(NATIVE_BF16_FLAGS) else 1.0
    try:
        import numpy as np
    except ImportError:
        fp32 = FALLBACK_FP32_GFLOPS_PER_CORE * cpus / 1e3
        return HostSpeed(
            FALLBACK_BANDWIDTH_GB_PER_S,
            fp32,
            fp32 * bf16_factor,
            f"numpy is not installed: host speed assumed ({FALLBACK_BANDWIDTH_GB_PER_S:.0f} GB/s, "
            f"{fp32 * 1e3:.0f} GFLOPs fp32), not measured",
        )
    source = np.ones(BANDWIDTH_BUFFER_BYTES // 8)
    target = np.empty_like(source)
    np.copyto(target, source)  # first touch: page faults, not bandwidth
    best = float("inf")
    for _ in range(4):
        start = time.thread_time()  # the copy runs on this thread
        np.copyto(target, source)
        best = min(best, time.thread_time() - start)
    bandwidth = 2 * source.nbytes / max(best, 1e-6) / 1e9
    del source, target
    size = 1024
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    a @ a
    best = float("inf")
    for _ in range(3):
        start = time.process_time()  # every BLAS thread's CPU time: core-seconds
        a @ a
        best = min(best, time.process_time() - start)
    fp32 = 2 * size**3 / max(best, 1e-6) / 1e12 * cpus
    return HostSpeed(
        bandwidth,
        fp32,
        fp32 * bf16_factor,
        f"host speed measured: {bandwidth:.1f} GB/s memory copy, {fp32 * 1e3:.0f} GFLOPs fp32"
        + (", bf16 at twice that (native bf16 instructions)" if bf16_factor > 1 else ""),
    )
