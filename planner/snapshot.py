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
from planner.hardware import Device, Hardware

SNAPSHOT_VERSION = 1

_DEVICE_REQUIRED = ("id", "name", "total_bytes", "free_bytes", "compute_capability")
_DEVICE_KEYS = set(Device.__dataclass_fields__)
_HARDWARE_KEYS = set(Hardware.__dataclass_fields__) | {"fingerprint"}
_SNAPSHOT_REQUIRED = ("snapshot_version", "devices", "host_ram_bytes")


def save_snapshot(hw: Hardware, path: str | os.PathLike) -> Path:
    """Write `hw` as a JSON snapshot that `hardware=snapshot hardware.path=FILE` replays; returns the path."""
    target = Path(path).expanduser()
    data = {
        "snapshot_version": SNAPSHOT_VERSION,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **hw.to_dict(),
    }
    try:
        target.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise ShardwiseError(f"cannot write the hardware snapshot to {str(path)!r} ({exc.strerror}): choose a writable path with probe.save=FILE") from None
    return target


def _snapshot_error(path, what: str) -> ShardwiseError:
    return ShardwiseError(f"hardware snapshot {str(path)!r} {what}: record it again with `shardwise probe probe.save=FILE`")


def _check_device(path, index: int, device) -> dict:
    if not isinstance(device, dict):
        raise _snapshot_error(path, f"has devices[{index}] = {device!r}, not an object")
    missing = [k for k in _DEVICE_REQUIRED if k not in device]
    unknown = sorted(set(device) - _DEVICE_KEYS)
    if missing or unknown:
        raise _snapshot_error(path, f"has devices[{index}] with missing keys {missing} / unknown keys {unknown}")
    for key in ("id", "total_bytes", "free_bytes", "reserved_bytes", "node"):
        value = device.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _snapshot_error(path, f"has devices[{index}].{key} = {value!r}, not a byte count or index >= 0")
    major, dot, minor = str(device["compute_capability"]).partition(".")
    if not (major.isdigit() and dot and minor.isdigit()):
        raise _snapshot_error(path, f"has devices[{index}].compute_capability = {device['compute_capability']!r}, not like '8.0'")
    return device


def load_snapshot(path: str | os.PathLike) -> Hardware:
    """The Hardware recorded in a snapshot file; its source is the path. Bad files raise a one-line ShardwiseError."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ShardwiseError(f"hardware snapshot {str(path)!r} does not exist: record one with `shardwise probe probe.save={path}`")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise _snapshot_error(path, f"cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise _snapshot_error(path, f"is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise _snapshot_error(path, f"holds a {type(data).__name__}, not a snapshot object")
    missing = [k for k in _SNAPSHOT_REQUIRED if k not in data]
    if missing:
        raise _snapshot_error(path, f"lacks the keys {missing}")
    version = data.pop("snapshot_version")
    data.pop("recorded_at", None)
    if version != SNAPSHOT_VERSION:
        raise _snapshot_error(path, f"has snapshot_version {version!r}; this shardwise reads version {SNAPSHOT_VERSION}")
    unknown = sorted(set(data) - _HARDWARE_KEYS)
    if unknown:
        raise _snapshot_error(path, f"has unknown keys {unknown}")
    if not isinstance(data["devices"], list):
        raise _snapshot_error(path, "has 'devices' that is not a list")
    data["devices"] = [_check_device(path, i, d) for i, d in enumerate(data["devices"])]
    data["source"] = str(path)
    try:
        return Hardware.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise _snapshot_error(path, f"does not describe hardware ({exc})") from None
