"""Hardware snapshots: a probe recorded as JSON on one machine, replayed by the planner on another.

    shardwise probe probe.save=box.json                        # record (Hardware.to_dict() + version, time)
    shardwise plan hardware=snapshot hardware.path=box.json    # replay: Hardware with source = the path

A bad file is a one-line ShardwiseError that names the path, what is wrong and how to record it again.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from planner.errors import ShardwiseError
from planner.hardware.devices import Device, Hardware
from planner.jsonfile import read_json, write_text_atomic
from planner.limits import MAX_GPUS, MAX_NODES

SNAPSHOT_VERSION = 1

_DEVICE_REQUIRED = ("id", "name", "total_bytes", "free_bytes", "compute_capability")
_DEVICE_KEYS = set(Device.__dataclass_fields__)
_HARDWARE_KEYS = set(Hardware.__dataclass_fields__) | {"fingerprint"}
_SNAPSHOT_REQUIRED = ("snapshot_version", "devices", "host_ram_bytes")
_INTERCONNECTS = ("nvlink", "pcie", "none")


def save_snapshot(hw: Hardware, path: str | os.PathLike) -> Path:
    """Write `hw` as a JSON snapshot that `hardware=snapshot hardware.path=FILE` replays; returns the path."""
    target = Path(path).expanduser()
    data = {
        "snapshot_version": SNAPSHOT_VERSION,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **hw.to_dict(),
    }
    try:
        write_text_atomic(target, json.dumps(data, indent=2) + "\n", make_parents=False)
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
    for key in ("id", "total_bytes", "free_bytes", "reserved_bytes", "node"):
        value = device.get(key, 0)
        if not _count(value):
            raise _snapshot_error(path, f"has devices[{index}].{key} = {value!r}, not a byte count or index >= 0")
    if device["free_bytes"] > device["total_bytes"]:
        raise _snapshot_error(
            path,
            f"has devices[{index}].free_bytes = {device['free_bytes']} above its total_bytes = {device['total_bytes']}",
        )
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


def _check_host(path, data: dict) -> None:
    """Host-level fields: counts are integers, texts are strings, pairs are pairs of device ids."""
    for key in ("host_ram_bytes", "cpu_count"):
        if key in data and not _count(data[key]):
            raise _snapshot_error(path, f"has {key} = {data[key]!r}, not an integer >= 0")
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
    if not isinstance(data.get("installed", {}), dict):
        raise _snapshot_error(path, f"has installed = {data['installed']!r}, not an object of package versions")
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise _snapshot_error(path, f"has notes = {notes!r}, not a list of strings")
    seen = set()
    for index, device in enumerate(data["devices"]):
        where = (device.get("node", 0), device["id"])
        if device.get("node", 0) >= nodes:
            raise _snapshot_error(path, f"has devices[{index}].node = {where[0]} but nodes = {nodes}")
        if where in seen:
            raise _snapshot_error(path, f"has two devices with id {where[1]} on node {where[0]}")
        seen.add(where)


def load_snapshot(path: str | os.PathLike) -> Hardware:
    """The Hardware recorded in a snapshot file; its source is the path. Bad files raise a one-line ShardwiseError."""
    file = Path(path).expanduser()
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
