"""A stand-in for the `pynvml` module, answering from a snapshot dict (tests/data/nvml/*.json).

It raises the real `pynvml.NVMLError_*` classes (and pynvml's `NVMLLibraryMismatchError` for
unversioned calls an old driver lacks), so the probe's error handling is tested against the
exceptions it will meet. Snapshot layout:

    init_error: null | "LibraryNotFound" | "DriverNotLoaded" | ...   (raised by nvmlInit)
    driver_version: "550.90.07";  cuda_driver_version: 12040
    functions_missing: ["nvmlDeviceGetMemoryInfo_v2", ...]            (an old driver)
    gpus: [{uuid, name, pci_bus_id, cc: [9, 0],
            memory: {total, reserved, used, free}   (v2 numbers; v1 "used" adds reserved),
            processes: [{pid, used_bytes, name (null: NoPermission)}],
            mig: null (NotSupported) | {mode, max, slices: [{index, uuid, name, memory, processes}]},
            nvlink: null (NotSupported) | [null (inactive) | {type: gpu|switch, pci_bus_id}, ...],
            lost: true (the GPU does not answer)}]
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pynvml

DATA = Path(__file__).parent / "data" / "nvml"
LINK_TYPES = {"gpu": pynvml.NVML_NVLINK_DEVICE_TYPE_GPU, "switch": pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH}


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


class FakeNVML:
    """Module-like object with the pynvml functions the probe calls; counts init/shutdown."""

    def __init__(self, snapshot: dict):
        self.snapshot = snapshot
        self.missing = set(snapshot.get("functions_missing", ()))
        self.started = 0
        self.shutdowns = 0
        for name in dir(pynvml):  # the real exception classes and constants
            if name.startswith(("NVMLError", "NVML_")) or name in ("nvmlMemory_v2", "NVMLLibraryMismatchError"):
                setattr(self, name, getattr(pynvml, name))

    # --- helpers ---
    def _fail(self, name: str):
        raise getattr(pynvml, f"NVMLError_{name}")()

    def _need(self, function: str):
        if not self.started:
            self._fail("Uninitialized")
        if function in self.missing:
            self._fail("FunctionNotFound")

    def _gpu(self, handle) -> dict:
        return self.snapshot["gpus"][handle[1]]

    def _entry(self, handle) -> dict:
        """The GPU, or the MIG slice a MIG handle names."""
        gpu = self._gpu(handle)
        if handle[0] == "mig":
            return next(s for s in gpu["mig"]["slices"] if s["index"] == handle[2])
        return gpu

    # --- library and system ---
    def nvmlInit(self):
        if self.snapshot.get("init_error"):
            self._fail(self.snapshot["init_error"])
        self.started += 1

    def nvmlShutdown(self):
        self._need("nvmlShutdown")
        self.started -= 1
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self):
        self._need("nvmlSystemGetDriverVersion")
        return self.snapshot["driver_version"]

    def nvmlSystemGetCudaDriverVersion(self):
        self._need("nvmlSystemGetCudaDriverVersion")
        return self.snapshot["cuda_driver_version"]

    def nvmlSystemGetProcessName(self, pid):
        self._need("nvmlSystemGetProcessName")
        for gpu in self.snapshot["gpus"]:
            slices = (gpu.get("mig") or {}).get("slices", [])
            for proc in [p for entry in [gpu, *slices] for p in entry.get("processes", [])]:
                if proc["pid"] == pid:
                    if proc["name"] is None:
                        self._fail("NoPermission")
                    return proc["name"]
        self._fail("NotFound")

    # --- devices ---
    def nvmlDeviceGetCount(self):
        self._need("nvmlDeviceGetCount")
        return len(self.snapshot["gpus"])

    def nvmlDeviceGetHandleByIndex(self, index):
        self._need("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.snapshot["gpus"]):
            self._fail("InvalidArgument")
        if self.snapshot["gpus"][index].get("lost"):
            self._fail("GpuIsLost")
        return ("gpu", index)

    def nvmlDeviceGetName(self, handle):
        self._need("nvmlDeviceGetName")
        return self._entry(handle)["name"]

    def nvmlDeviceGetUUID(self, handle):
        self._need("nvmlDeviceGetUUID")
        return self._entry(handle)["uuid"]

    def nvmlDeviceGetPciInfo(self, handle):
        self._need("nvmlDeviceGetPciInfo")
        bus_id = self._gpu(handle)["pci_bus_id"]
        return SimpleNamespace(busId=bus_id, busIdLegacy=bus_id[4:])

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        self._need("nvmlDeviceGetCudaComputeCapability")
        return tuple(self._gpu(handle)["cc"])

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        memory = self._entry(handle)["memory"]
        reserved = memory.get("reserved", 0)
        if version:
            self._need("nvmlDeviceGetMemoryInfo_v2")
            if version != pynvml.nvmlMemory_v2:
                self._fail("ArgumentVersionMismatch")
            return SimpleNamespace(
                version=version, total=memory["total"], reserved=reserved, free=memory["free"], used=memory["used"]
            )
        self._need("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=memory["total"], free=memory["free"], used=memory["used"] + reserved)

    def _processes(self, handle):
        return [
            SimpleNamespace(
                pid=p["pid"], usedGpuMemory=p["used_bytes"], gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF
            )
            for p in self._entry(handle).get("processes", [])
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if "nvmlDeviceGetComputeRunningProcesses_v3" in self.missing:  # what pynvml's wrapper raises
            raise pynvml.NVMLLibraryMismatchError("Unversioned function called and the pyNVML version does not match")
        self._need("nvmlDeviceGetComputeRunningProcesses_v3")
        return self._processes(handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle):
        self._need("nvmlDeviceGetComputeRunningProcesses_v2")
        return self._processes(handle)

    # --- MIG ---
    def nvmlDeviceGetMigMode(self, handle):
        self._need("nvmlDeviceGetMigMode")
        mig = self._gpu(handle).get("mig")
        if mig is None:
            self._fail("NotSupported")
        return [mig["mode"], mig["mode"]]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        self._need("nvmlDeviceGetMaxMigDeviceCount")
        mig = self._gpu(handle).get("mig")
        if mig is None:
            self._fail("NotSupported")
        return mig.get("max", 7)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        self._need("nvmlDeviceGetMigDeviceHandleByIndex")
        mig = self._gpu(handle).get("mig") or {}
        if not any(s["index"] == index for s in mig.get("slices", [])):
            self._fail("NotFound")
        return ("mig", handle[1], index)

    # --- NVLink ---
    def _link(self, handle, link):
        links = self._gpu(handle).get("nvlink")
        if links is None:
            self._fail("NotSupported")
        if not 0 <= link < len(links):
            self._fail("InvalidArgument")
        return links[link]

    def nvmlDeviceGetNvLinkState(self, handle, link):
        self._need("nvmlDeviceGetNvLinkState")
        return 0 if self._link(handle, link) is None else 1

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle, link):
        self._need("nvmlDeviceGetNvLinkRemoteDeviceType")
        entry = self._link(handle, link)
        if entry is None:
            self._fail("NotSupported")
        return LINK_TYPES[entry["type"]]

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle, link):
        self._need("nvmlDeviceGetNvLinkRemotePciInfo_v2")
        entry = self._link(handle, link)
        if entry is None:
            self._fail("NotSupported")
        return SimpleNamespace(busId=entry["pci_bus_id"], busIdLegacy=entry["pci_bus_id"][4:])


def fake(name: str) -> FakeNVML:
    return FakeNVML(load(name))
