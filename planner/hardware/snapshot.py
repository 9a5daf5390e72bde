"""Hardware snapshots: a probe recorded as JSON on one machine, replayed by the planner on another.

    shardwise probe probe.save=box.json                        # record (Hardware.to_dict() + version, time)
    shardwise plan hardware=snapshot hardware.path=box.json    # replay: Hardware with source = the path

A bad file is a one-line ShardwiseError that names the path, what is wrong and how to record it again.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from planner.errors import ShardwiseError
from planner.files import expand_user
from planner.hardware.devices import DEVICE_SPEEDS, LINK_SPEEDS, Device, Hardware
from planner.jsonfile import dumps_json, finite_number, read_json, write_text_atomic
from planner.limits import MAX_GPUS, MAX_HOST_RAM_GIB, MAX_NODES

SNAPSHOT_VERSION = 1
MAX_GPU_BYTES = 1 << 50  # 1 PiB on one GPU: far above any made (B200: 192 GB); 10**400 would overflow a float
MAX_CPUS = 1 << 20  # logical CPUs of one node
MAX_SPEED = 1e9  # GB/s or TFLOPs: a million times today's fastest GPU; anything above is a typo or hostile
HOST_SPEEDS = (
    *LINK_SPEEDS,
    "host_memory_bandwidth_gb_per_s",
    "host_memory_bandwidth_all_cores_gb_per_s",
    "host_fp32_tflops",
    "host_bf16_tflops",
)

_DEVICE_REQUIRED = ("id", "name", "total_bytes", "free_bytes", "compute_capability")
_DEVICE_KEYS = set(Device.__dataclass_fields__)
_HARDWARE_KEYS = set(Hardware.__dataclass_fields__) | {"fingerprint"}
_SNAPSHOT_REQUIRED = ("snapshot_version", "devices", "host_ram_bytes")
_INTERCONNECTS = ("nvlink", "pcie", "none")


def save_snapshot(hw: Hardware, path: str | os.PathLike) -> Path:
    """Write `hw` as a JSON snapshot that `hardware=snapshot hardware.path=FILE` replays; returns the path."""
    target = expand_user(path)
    data = {
        "snapshot_version": SNAPSHOT_VERSION,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **hw.to_dict(),
    }
    try:
        # the name as typed, `~` expanded: a trailing "/" (a directory meant) must reach the writer
        write_text_atomic(os.path.expanduser(os.fspath(path)), dumps_json(data, "hardware snapshot") + "\n", False)
    except OSError as exc:
        raise ShardwiseError(
            f"cannot write the hardware snapshot to {str(path)!r} ({exc.strerror}): choose a writable path with "
            "probe.save=FILE"
        ) from None
    return target


def _snapshot_error(path, what: str) -> ShardwiseError:
    return ShardwiseError(
        f"hardware snapshot {str(path)!r} {what}: record it again with `shardwise probe probe.save=FILE`"
    )


def _check_device(path, index: int, device) -> dict:
    if not isinstance(device, dict):
        raise _snapshot_error(path, f"has devices[{index}] = {device!r}, not an object")
    missing = [k for k in _DEVICE_REQUIRED if k not in device]
    unknown = sorted(set(device) - _DEVICE_KEYS)
    if missing or unknown:
        raise _snapshot_error(path, f"has devices[{index}] with missing keys {missing} / unknown keys {unknown}")
    for key, most in (
        ("id", MAX_GPUS),
        ("total_bytes", MAX_GPU_BYTES),
        ("free_bytes", MAX_GPU_BYTES),
        ("reserved_bytes", MAX_GPU_BYTES),
        ("node", MAX_NODES),
    ):
        value = device.get(key, 0)
        if not _count(value) or value > most:
            raise _snapshot_error(
                path, f"has devices[{index}].{key} = {value!r:.40}, not a byte count or index from 0 to {most}"
            )
    for key in ("free_bytes", "reserved_bytes"):
        if device.get(key, 0) > device["total_bytes"]:
            raise _snapshot_error(
                path, f"has devices[{index}].{key} = {device[key]} above its total_bytes = {device['total_bytes']}"
            )
    for key in DEVICE_SPEEDS:
        if key in device:
            device[key] = _speed(path, f"devices[{index}].{key}", device[key])
    capability = device["compute_capability"]
    major, dot, minor = str(capability).partition(".")
    if not (isinstance(capability, str) and major.isdigit() and dot and minor.isdigit()):
        raise _snapshot_error(
            path, f"has devices[{index}].compute_capability = {device['compute_capability']!r}, not like '8.0'"
        )
    for key, kind, what in (
        ("name", str, "a string"),
        ("uuid", str, "a string"),
        ("pci_bus_id", str, "a string"),
        ("mig", bool, "true or false"),
        ("processes", list, "a list"),
    ):
        if key in device and not isinstance(device[key], kind):
            raise _snapshot_error(path, f"has devices[{index}].{key} = {device[key]!r}, not {what}")
    for process in device.get("processes", []):
        if not (isinstance(process, dict) and _count(process.get("pid")) and _count(process.get("used_bytes"))):
            raise _snapshot_error(
                path, f"has devices[{index}].processes entry {process!r}, not {{pid, used_bytes, name}}"
            )
    return device


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _speed(path, key: str, value) -> float:
    """A published or measured speed (GB/s, TFLOPs, an efficiency factor): a finite number from 0 to MAX_SPEED."""
    try:
        number = finite_number(value, key)
    except ShardwiseError as exc:
        raise _snapshot_error(path, f"has {exc}") from None
    if not 0 <= number <= MAX_SPEED:
        raise _snapshot_error(path, f"has {key} = {value!r}, not a speed from 0 to {MAX_SPEED:g}")
    return number


def _check_host(path, data: dict) -> None:
    """Host-level fields: counts are integers, texts are strings, pairs are pairs of device ids."""
    for key, most in (("host_ram_bytes", MAX_HOST_RAM_GIB << 30), ("cpu_count", MAX_CPUS)):
        if key in data and (not _count(data[key]) or data[key] > most):
            raise _snapshot_error(path, f"has {key} = {data[key]!r:.40}, not an integer from 0 to {most}")
    for key in HOST_SPEEDS:
        if key in data:
            data[key] = _speed(path, key, data[key])
    factors = data.get("speed_factors", {})
    if not isinstance(factors, dict) or not all(isinstance(v, dict) for v in factors.values()):
        raise _snapshot_error(path, f"has speed_factors = {factors!r:.60}, not an object of objects of numbers")
    for kind, values in factors.items():
        for name, value in values.items():
            values[name] = _speed(path, f"speed_factors.{kind}.{name}", value)
    installed = data.get("installed", {})
    if not isinstance(installed, dict) or not all(isinstance(v, str) for v in installed.values()):
        raise _snapshot_error(path, f"has installed = {installed!r:.60}, not an object of package versions")
    nodes = data.get("nodes", 1)
    if not _count(nodes) or nodes < 1:
        raise _snapshot_error(path, f"has nodes = {nodes!r:.40}, not an integer >= 1")
    if nodes > MAX_NODES:
        raise _snapshot_error(path, f"has nodes = {nodes}, more than the {MAX_NODES} nodes shardwise plans for")
    if len(data["devices"]) > MAX_GPUS:
        raise _snapshot_error(
            path, f"lists {len(data['devices'])} devices, more than the {MAX_GPUS} shardwise plans for"
        )
    for key in ("source", "interconnect", "driver_version", "cuda_driver_version"):
        if key in data and not isinstance(data[key], str):
            raise _snapshot_error(path, f"has {key} = {data[key]!r}, not a string")
    if data.get("interconnect", "pcie") not in _INTERCONNECTS:
        raise _snapshot_error(
            path, f"has interconnect = {data['interconnect']!r}, not one of {', '.join(_INTERCONNECTS)}"
        )
    pairs = data.get("nvlink_pairs", [])
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_count(i) for i in p) for p in pairs
    ):
        raise _snapshot_error(path, f"has nvlink_pairs = {pairs!r}, not a list of [i, j] device id pairs")
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise _snapshot_error(path, f"has notes = {notes!r}, not a list of strings")
    seen, uuids = set(), {}
    for index, device in enumerate(data["devices"]):
        uuid = device.get("uuid", "")
        if uuid and uuid in uuids:
            raise _snapshot_error(path, f"has devices[{uuids[uuid]}] and devices[{index}] with the same uuid {uuid!r}")
        uuids[uuid] = index
        where = (device.get("node", 0), device["id"])
        if device.get("node", 0) >= nodes:
            raise _snapshot_error(path, f"has devices[{index}].node = {where[0]} but nodes = {nodes}")
        if where in seen:
            raise _snapshot_error(path, f"has two devices with id {where[1]} on node {where[0]}")
        seen.add(where)


def load_snapshot(path: str | os.PathLike) -> Hardware:
    """The Hardware recorded in a snapshot file; its source is the path. Bad files raise a one-line ShardwiseError."""
    file = expand_user(path)
    if file.is_dir():
        raise ShardwiseError(
            f"hardware snapshot {str(path)!r} is a directory: give the JSON file written by `shardwise probe "
            "probe.save=FILE`"
        )
    if not file.exists():  # a FIFO or device is refused by read_json, not taken for a missing file
        raise ShardwiseError(
            f"hardware snapshot {str(path)!r} does not exist: record one with `shardwise probe probe.save={path}`"
        )
    data = read_json(file, "hardware snapshot", dict, "record it again with `shardwise probe probe.save=FILE`")
    missing = [k for k in _SNAPSHOT_REQUIRED if k not in data]
    if missing:
        raise _snapshot_error(path, f"lacks the keys {missing}")
    version = data.pop("snapshot_version")
    data.pop("recorded_at", None)
    if version != SNAPSHOT_VERSION:
        raise _snapshot_error(
            path, f"has snapshot_version {version!r}; this shardwise reads version {SNAPSHOT_VERSION}"
        )
    unknown = sorted(set(data) - _HARDWARE_KEYS)
    if unknown:
        raise _snapshot_error(path, f"has unknown keys {unknown}")
    if not isinstance(data["devices"], list):
        raise _snapshot_error(path, "has 'devices' that is not a list")
    data["devices"] = [_check_device(path, i, d) for i, d in enumerate(data["devices"])]
    _check_host(path, data)
    data["source"] = str(path)
    try:
        return Hardware.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise _snapshot_error(path, f"does not describe hardware ({exc})") from None
