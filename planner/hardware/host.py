"""What the host offers besides GPUs: RAM (within any container limit), usable CPUs, installed kernels.

Used by the probe; everything is read without importing torch or the kernel packages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from planner.units import GIB

KERNEL_PACKAGES = ("triton", "kernels")  # decide which quantized/attention kernels a plan may keep
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
