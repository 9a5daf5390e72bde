"""Record what the real NVML answers on this machine, in the snapshot layout `tests/fake_nvml.py` replays.

    python tests/record_nvml.py tests/data/nvml/<machine>.json "one line saying what the machine is"

Run it on a machine with NVIDIA GPUs; the file then replays that machine's answers in tests.
Free memory and processes are whatever they were at the moment of recording.
"""

from __future__ import annotations

import json
import sys

import pynvml as nv

LINK_TYPES = {nv.NVML_NVLINK_DEVICE_TYPE_GPU: "gpu", nv.NVML_NVLINK_DEVICE_TYPE_SWITCH: "switch"}


def _memory(handle, missing: set[str]) -> dict:
    try:
        m = nv.nvmlDeviceGetMemoryInfo(handle, version=nv.nvmlMemory_v2)
        return {"total": m.total, "reserved": m.reserved, "used": m.used, "free": m.free}
    except (nv.NVMLError_FunctionNotFound, nv.NVMLError_NotSupported):
        missing.add("nvmlDeviceGetMemoryInfo_v2")
        m = nv.nvmlDeviceGetMemoryInfo(handle)
        return {"total": m.total, "reserved": 0, "used": m.used, "free": m.free}


def _processes(handle, missing: set[str]) -> list[dict]:
    try:
        found = nv.nvmlDeviceGetComputeRunningProcesses(handle)
    except nv.NVMLLibraryMismatchError:
        missing.add("nvmlDeviceGetComputeRunningProcesses_v3")
        found = nv.nvmlDeviceGetComputeRunningProcesses_v2(handle)
    except nv.NVMLError_NotSupported:
        return []
    out = []
    for p in found:
        try:
            name = nv.nvmlSystemGetProcessName(p.pid)
        except nv.NVMLError:
            name = None
        out.append({"pid": p.pid, "used_bytes": p.usedGpuMemory or 0, "name": name})
    return out


def _nvlink(handle, missing: set[str]) -> list | None:
    links: list = []
    for link in range(nv.NVML_NVLINK_MAX_LINKS):
        try:
            active = nv.nvmlDeviceGetNvLinkState(handle, link)
        except nv.NVMLError_NotSupported:
            if link == 0:
                return None
            links.append(None)
            continue
        except nv.NVMLError_InvalidArgument:
            break
        if not active:
            links.append(None)
            continue
        try:
            kind = LINK_TYPES.get(nv.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link), "gpu")
        except nv.NVMLError_FunctionNotFound:
            missing.add("nvmlDeviceGetNvLinkRemoteDeviceType")
            kind = "gpu"
        links.append({"type": kind, "pci_bus_id": nv.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId})
    return links


def _mig(handle, missing: set[str]) -> dict | None:
    try:
        mode, _ = nv.nvmlDeviceGetMigMode(handle)
    except nv.NVMLError_NotSupported:
        return None
    top = nv.nvmlDeviceGetMaxMigDeviceCount(handle)
    slices = []
    for index in range(top if mode == nv.NVML_DEVICE_MIG_ENABLE else 0):
        try:
            mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
        except nv.NVMLError_NotFound:
            continue
        slices.append({
            "index": index, "uuid": nv.nvmlDeviceGetUUID(mig), "name": nv.nvmlDeviceGetName(mig),
            "memory": _memory(mig, missing), "processes": _processes(mig, missing),
        })  # fmt: skip
    return {"mode": mode, "max": top, "slices": slices}


def record(description: str) -> dict:
    nv.nvmlInit()
    try:
        missing: set[str] = set()
        gpus = []
        for index in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(index)
            mig = _mig(h, missing)
            gpus.append({
                "uuid": nv.nvmlDeviceGetUUID(h), "name": nv.nvmlDeviceGetName(h),
                "pci_bus_id": nv.nvmlDeviceGetPciInfo(h).busId, "cc": list(nv.nvmlDeviceGetCudaComputeCapability(h)),
                "memory": _memory(h, missing),
                "processes": [] if mig and mig["mode"] else _processes(h, missing),
                "mig": mig, "nvlink": _nvlink(h, missing),
            })  # fmt: skip
        return {
            "description": description,
            "authored": "recorded with tests/record_nvml.py",
            "init_error": None,
            "driver_version": nv.nvmlSystemGetDriverVersion(),
            "cuda_driver_version": nv.nvmlSystemGetCudaDriverVersion(),
            "functions_missing": sorted(missing),
            "gpus": gpus,
        }
    finally:
        nv.nvmlShutdown()


if __name__ == "__main__":
    out, description = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "recorded machine"
    with open(out, "w") as f:
        f.write(json.dumps(record(description), indent=1) + "\n")
    print(f"recorded NVML answers to {out}")
