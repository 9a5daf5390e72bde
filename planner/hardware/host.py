"""What the host offers besides GPUs: RAM (within any container limit), usable CPUs, installed kernels,
and how fast its memory and cores are (for the speed model of CPU plans).

Used by the probe; everything is read without importing torch or the kernel packages. The speed
measurement uses numpy when it is installed (it comes with torch) and otherwise falls back to
documented constants, saying so.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from planner.units import GIB

# decide which quantized/attention kernels a plan may keep (planner/decide/decisions.py and quant_support.py)
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
# all-core copy: the buffers are split across the threads, at least 8 MiB each, so that a 128-core server
# copies 1 GiB into 1 GiB, past the largest L3 of today's server parts (~1.1 GB on AMD 3D V-Cache)
ALL_CORE_TOTAL_BYTES = 128 * 1024 * 1024
ALL_CORE_MIN_CHUNK_BYTES = 8 * 1024 * 1024
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # instructions that multiply bf16 at twice the fp32 rate


@dataclass(frozen=True)
class HostSpeed:
    memory_bandwidth_gb_per_s: float  # one thread copying (STREAM-copy convention: bytes read + written per second)
    fp32_tflops: float
    bf16_tflops: float
    note: str  # how the numbers were obtained
    all_core_bandwidth_gb_per_s: float = 0.0  # every usable CPU copying at once (0: not measured)
    all_core_threads: int = 0  # threads that measured it


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def one_thread_copy_gb_per_s(np, repeats: int = 4) -> float:
    """Best of `repeats` copies of a 64 MiB buffer by this thread, timed by its CPU time."""
    source = np.ones(BANDWIDTH_BUFFER_BYTES // 8)
    target = np.empty_like(source)
    np.copyto(target, source)  # first touch: page faults, not bandwidth
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()  # the copy runs on this thread
        np.copyto(target, source)
        best = min(best, time.thread_time() - start)
    return 2 * source.nbytes / max(best, 1e-6) / 1e9


def all_thread_copy_gb_per_s(np, threads: int, repeats: int = 4) -> float:
    """Copy bandwidth of `threads` threads copying their own buffers at once, best of `repeats` rounds.

    numpy releases the GIL while it copies, so the threads' copies overlap and together they load the
    memory system the way a torch run with that many threads does. Each thread allocates and first
    touches its own buffers (on a NUMA server they land on its node, as torch's would). A round is
    timed by the wall clock, from the first thread's start to the last one's end: CPU time cannot
    show whether the copies overlapped. So load from other processes lowers it (never raises it).
    """
    chunk = max(ALL_CORE_MIN_CHUNK_BYTES, ALL_CORE_TOTAL_BYTES // threads) // 8
    barrier = threading.Barrier(threads, timeout=60)
    spans: list[list[tuple[float, float]]] = [[] for _ in range(threads)]

    def work(index: int) -> None:
        try:
            source = np.ones(chunk)
            target = np.empty_like(source)
            np.copyto(target, source)  # first touch
            for _ in range(repeats):
                barrier.wait()
                start = time.perf_counter()
                np.copyto(target, source)
                spans[index].append((start, time.perf_counter()))
        except (MemoryError, threading.BrokenBarrierError):
            barrier.abort()  # release the others: this round cannot be timed

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    try:
        for worker in workers:
            worker.start()
    except RuntimeError:  # the system refused a thread: the started ones must not wait for it
        barrier.abort()
        raise
    finally:
        for worker in workers:
            if worker.ident is not None:
                worker.join()
    if any(len(done) < repeats for done in spans):
        raise RuntimeError("a copy thread failed")
    rounds = [
        max(spans[i][r][1] for i in range(threads)) - min(spans[i][r][0] for i in range(threads))
        for r in range(repeats)
    ]
    return 2 * chunk * 8 * threads / max(min(rounds), 1e-6) / 1e9


@functools.cache
def host_speed(cpus: int = 0) -> HostSpeed:
    """Memory bandwidth and compute of this host, measured once per process (~0.5 s idle) with numpy.

    Bandwidth, twice: one thread (best of 4 copies of a 64 MiB buffer, timed by that thread's CPU
    time, so a machine shared with busy processes still shows what a core of its own streams), and
    every usable CPU at once (`all_thread_copy_gb_per_s`, wall clock; never below the one-thread
    figure, which one of those threads alone reaches). A run with T threads streams at
    min(T x one thread, all threads) (`Hardware.host_bandwidth_gb_per_s`). Compute: best of 3 fp32
    matmuls of 1024 x 1024, as FLOPs per core-second (process CPU time) times `cpus`. bf16 is taken as
    twice fp32 where the CPU has native bf16 dot products (avx512_bf16, amx_bf16), else as fp32.
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
    bandwidth = one_thread_copy_gb_per_s(np)
    threads = usable_cpu_count()
    every = bandwidth  # one CPU: one thread is all of them
    if threads > 1:
        try:
            every = max(bandwidth, all_thread_copy_gb_per_s(np, threads, repeats=3))
        except RuntimeError:  # no threads or no memory for the buffers: unknown, plans use one thread's
            every, threads = 0.0, 0
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
        f"host speed measured: {bandwidth:.1f} GB/s memory copy by one thread, "
        + (f"{every:.1f} GB/s by all {threads} thread(s) at once" if every else "all threads at once not measured")
        + f", {fp32 * 1e3:.0f} GFLOPs fp32"
        + (", bf16 at twice that (native bf16 instructions)" if bf16_factor > 1 else ""),
        all_core_bandwidth_gb_per_s=every,
        all_core_threads=threads,
    )
