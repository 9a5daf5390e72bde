"""What this machine has, read through NVML only (never `torch.cuda`: it creates a context and moves the numbers).

    from planner.hardware.probe import probe
    hw = probe()                    # Hardware(source="probe", devices=(...), notes=(...))

Per GPU: UUID, PCI bus id, name, total/free/reserved memory (NVML v2 memory info, v1 on old
drivers), compute capability, the processes already on it, MIG slices (each a separate small
device; the parent is then not usable whole), and NVLink between pairs. Devices are ordered by
PCI bus id (CUDA_DEVICE_ORDER=PCI_BUS_ID) and then filtered and renumbered by
CUDA_VISIBLE_DEVICES exactly as CUDA will. No NVML, no driver or no GPU is normal: the result
is a CPU Hardware with a one-line note. Snapshots (`save_snapshot` / `load_snapshot`) record a
probe as JSON so that another machine can plan for this one (planner/snapshot.py, re-exported here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from planner.hardware.devices import Device, Hardware
from planner.hardware.host import HostInfo, host_info, installed_kernels
from planner.hardware.snapshot import load_snapshot, save_snapshot  # noqa: F401  (part of this module's interface)
from planner.hardware.visible_devices import visible_devices

NVLINK_MAX_LINKS = 18  # used only when the NVML module does not say (H100: 18 links per GPU)


@dataclass
class _Gpu:
    """One physical GPU as NVML answered, before CUDA_VISIBLE_DEVICES and renumbering."""

    device: Device
    mig_enabled: bool = False
    slices: list[Device] = field(default_factory=list)
    linked_bus_ids: set[str] = field(default_factory=set)  # peers reached by a direct NVLink
    on_nvswitch: bool = False  # an active NVLink to an NVSwitch: linked to every other such GPU


def _errors(nvml, *names: str) -> tuple[type[BaseException], ...]:
    found = tuple(getattr(nvml, f"NVMLError_{name}", None) for name in names)
    return tuple(cls for cls in found if cls is not None)


def _library_mismatch(nvml) -> tuple[type[BaseException], ...]:
    """pynvml raises this (not an NVMLError) when an unversioned call's newest version is missing from an old driver."""
    cls = getattr(nvml, "NVMLLibraryMismatchError", None)
    return (cls,) if cls is not None else ()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def normalize_pci_bus_id(bus_id: str) -> str:
    """NVML's form, upper case with an 8-digit domain: '0000:18:00.0' -> '00000000:18:00.0'."""
    text = _text(bus_id).strip().upper()
    domain, sep, rest = text.partition(":")
    if sep and rest.count(":") == 1 and len(domain) < 8:
        text = f"{domain.zfill(8)}:{rest}"
    return text


def pci_sort_key(bus_id: str) -> tuple:
    """(domain, bus, device, function) as numbers; unparseable ids sort last, by text."""
    try:
        domain, bus, rest = bus_id.split(":")
        dev, func = rest.split(".")
        return (0, int(domain, 16), int(bus, 16), int(dev, 16), int(func, 16))
    except ValueError:
        return (1, bus_id)


def cuda_version_text(version: int) -> str:
    """NVML's integer CUDA driver version, 12040 -> '12.4'."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def _memory(nvml, handle, notes: set[str], driver: str) -> tuple[int, int, int]:
    """(total, free, reserved) bytes: v2 memory info, v1 (reserved unknown, 0) where the driver lacks v2."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            return int(info.total), int(info.free), int(info.reserved)
        except _errors(nvml, "FunctionNotFound", "NotSupported"):
            pass
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    notes.add(
        f"driver {driver or '?'} has no v2 memory info: reserved memory is unknown (counted in used, not in free)"
    )
    return int(info.total), int(info.free), 0


def _processes(nvml, handle, notes: set[str]) -> tuple[dict, ...]:
    """Compute processes on the device: pid, used bytes (0 where NVML cannot tell), name (best effort)."""
    readers = [
        getattr(nvml, n, None)
        for n in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2")
    ]
    found = None
    for reader in filter(None, readers):
        try:
            found = reader(handle)
            break
        except (*_errors(nvml, "FunctionNotFound"), *_library_mismatch(nvml)):
            continue  # the driver predates this version of the call: try the older one
        except _errors(nvml, "NotSupported", "NoPermission"):
            break
    if found is None:
        notes.add("NVML could not list the processes on the GPUs: other users' memory shows only in free memory")
        return ()
    processes = []
    for proc in found:
        pid = int(proc.pid)
        used = proc.usedGpuMemory
        try:
            name = _text(nvml.nvmlSystemGetProcessName(pid))
        except _errors(nvml, "NotFound", "NoPermission", "NotSupported", "FunctionNotFound", "Unknown"):
            name = ""
        processes.append({"pid": pid, "used_bytes": int(used or 0), "name": name})
    return tuple(processes)


def _mig_slices(nvml, handle, parent: Device, notes: set[str], driver: str) -> tuple[bool, list[Device]]:
    """(MIG enabled?, its slices as Devices). MIG slices share the parent's silicon, so its compute capability."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except _errors(nvml, "NotSupported", "FunctionNotFound", "InvalidArgument"):
        return False, []
    if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
        return False, []
    slices = []
    for index in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
        except _errors(nvml, "NotFound", "InvalidArgument"):
            continue  # no slice configured at this index
        total, free, reserved = _memory(nvml, mig, notes, driver)
        slices.append(
            Device(
                id=-1,
                name=_text(nvml.nvmlDeviceGetName(mig)),
                total_bytes=total,
                free_bytes=free,
                reserved_bytes=reserved,
                compute_capability=parent.compute_capability,
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                pci_bus_id=parent.pci_bus_id,
                mig=True,
                processes=_processes(nvml, mig, notes),
            )
        )
    if not slices:
        notes.add(
            f"{parent.name} at {parent.pci_bus_id} is in MIG mode with no slices: unusable until slices are created "
            "or MIG is disabled"
        )
    return True, slices


def _nvlinks(nvml, handle, gpu: _Gpu) -> None:
    """Fill the GPU's direct NVLink peers (by remote PCI bus id) and whether it sits on an NVSwitch."""
    switch = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2)
    skip = _errors(nvml, "NotSupported", "InvalidArgument", "NotFound")
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", NVLINK_MAX_LINKS)):
        try:
            if not nvml.nvmlDeviceGetNvLinkState(handle, link):
                continue
        except _errors(nvml, "FunctionNotFound"):
            return
        except skip:
            continue  # no NVLink on this GPU, or fewer links than the maximum
        try:
            remote_type = nvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link)
        except (*_errors(nvml, "FunctionNotFound"), *skip):
            remote_type = None  # older drivers: judge by the remote PCI bus id alone
        if remote_type == switch:
            gpu.on_nvswitch = True
            continue
        try:
            gpu.linked_bus_ids.add(normalize_pci_bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
        except (*_errors(nvml, "FunctionNotFound"), *skip):
            continue


def _read_gpu(nvml, index: int, notes: set[str], driver: str) -> _Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    total, free, reserved = _memory(nvml, handle, notes, driver)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    device = Device(
        id=-1,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        total_bytes=total,
        free_bytes=free,
        reserved_bytes=reserved,
        compute_capability=f"{major}.{minor}",
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=normalize_pci_bus_id(nvml.nvmlDeviceGetPciInfo(handle).busId),
    )
    gpu = _Gpu(device=device)
    gpu.mig_enabled, gpu.slices = _mig_slices(nvml, handle, device, notes, driver)
    if not gpu.mig_enabled:
        gpu.device = replace(device, processes=_processes(nvml, handle, notes))
        _nvlinks(nvml, handle, gpu)
    return gpu


def _linked(a: _Gpu, b: _Gpu) -> bool:
    return (
        b.device.pci_bus_id in a.linked_bus_ids
        or a.device.pci_bus_id in b.linked_bus_ids
        or (a.on_nvswitch and b.on_nvswitch)
    )


def _cpu_hardware(host: HostInfo, installed: dict, note: str, **extra) -> Hardware:
    return Hardware(
        probed=True,
        source="probe",
        devices=(),
        host_ram_bytes=host.ram_bytes,
        cpu_count=host.cpu_count,
        interconnect="none",
        installed=installed,
        notes=(note, *extra.pop("notes", ()), *host.notes),
        **extra,
    )


def probe(nvml=None, environ: Mapping[str, str] | None = None, *, host: HostInfo | None = None) -> Hardware:
    """This machine's GPUs as CUDA will number them, plus host RAM and CPUs; a CPU Hardware when NVML is absent."""
    environ = os.environ if environ is None else environ
    host = host_info() if host is None else host
    installed = installed_kernels()
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return _cpu_hardware(
                host, installed, "nvidia-ml-py is not installed: planning for CPU (pip install nvidia-ml-py)"
            )
    try:
        nvml.nvmlInit()
    except _errors(nvml, "LibraryNotFound"):
        return _cpu_hardware(host, installed, "NVML not available (no NVIDIA driver): planning for CPU")
    except _errors(nvml, "DriverNotLoaded"):
        return _cpu_hardware(host, installed, "NVIDIA driver not loaded (NVML: Driver Not Loaded): planning for CPU")
    except nvml.NVMLError as exc:
        return _cpu_hardware(host, installed, f"NVML failed to start ({exc}): planning for CPU")
    try:
        return _probe_started(nvml, environ, host, installed)
    except nvml.NVMLError as exc:
        return _cpu_hardware(host, installed, f"NVML failed while listing GPUs ({exc}): planning for CPU")
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _probe_started(nvml, environ: Mapping[str, str], host: HostInfo, installed: dict) -> Hardware:
    notes: set[str] = set()
    ordered_notes: list[str] = []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
    except nvml.NVMLError:
        driver = ""
    try:
        cuda = cuda_version_text(int(nvml.nvmlSystemGetCudaDriverVersion()))
    except nvml.NVMLError:
        cuda = ""
    gpus = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            gpus.append(_read_gpu(nvml, index, notes, driver))
        except nvml.NVMLError as exc:
            ordered_notes.append(f"GPU at NVML index {index} did not answer ({exc}): left out")
    gpus.sort(key=lambda g: pci_sort_key(g.device.pci_bus_id))
    versions = {"driver_version": driver, "cuda_driver_version": cuda}
    if not gpus:
        return _cpu_hardware(
            host, installed, "NVML found no GPU: planning for CPU", notes=(*ordered_notes, *sorted(notes)), **versions
        )

    # CUDA enumerates a MIG-enabled GPU as its slices, each under its own MIG- UUID.
    units: list[tuple[Device, _Gpu | None]] = []
    for gpu in gpus:
        units += [(s, None) for s in gpu.slices] if gpu.mig_enabled else [(gpu.device, gpu)]
    visibility = visible_devices(environ.get("CUDA_VISIBLE_DEVICES"), [d.uuid for d, _ in units])
    if visibility.note:
        ordered_notes.append(visibility.note)
    order = environ.get("CUDA_DEVICE_ORDER", "")
    if order and order != "PCI_BUS_ID":
        ordered_notes.append(
            f"CUDA_DEVICE_ORDER={order}: CUDA may number GPUs differently from this probe (PCI bus order); set "
            "PCI_BUS_ID"
        )
    shown = [units[i] for i in visibility.indices]
    devices = tuple(replace(device, id=new_id) for new_id, (device, _) in enumerate(shown))
    if not devices:
        return _cpu_hardware(
            host,
            installed,
            "no GPU is visible to CUDA: planning for CPU",
            notes=(*ordered_notes, *sorted(notes)),
            **versions,
        )

    whole = [(i, gpu) for i, (_, gpu) in enumerate(shown) if gpu is not None]
    pairs = tuple((i, j) for n, (i, a) in enumerate(whole) for j, b in whole[n + 1 :] if _linked(a, b))
    possible = len(whole) * (len(whole) - 1) // 2
    interconnect = "nvlink" if possible and len(pairs) == possible else ("pcie" if whole else "none")
    if pairs and len(pairs) < possible:
        linked = ", ".join(f"{i}-{j}" for i, j in pairs)
        ordered_notes.append(f"NVLink joins only some GPU pairs ({linked}): interconnect counted as pcie")
    if any(d.mig for d in devices):
        ordered_notes.append(
            "MIG slices are separate GPUs: a CUDA process uses one slice, a model is never split across slices"
        )
    return Hardware(
        probed=True,
        source="probe",
        devices=devices,
        host_ram_bytes=host.ram_bytes,
        cpu_count=host.cpu_count,
        interconnect=interconnect,
        nvlink_pairs=pairs,
        installed=installed,
        notes=(*ordered_notes, *sorted(notes), *host.notes),
        **versions,
    )
