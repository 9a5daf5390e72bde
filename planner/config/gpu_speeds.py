"""Published GPU speeds by name, read from the tiers in conf/hardware/, for GPUs the probe found.

NVML gives a GPU's name and memory but not its bandwidth or TFLOPs; every tier file names its GPU
as nvidia-smi prints it and carries the datasheet numbers, so the tiers are the table. A probed GPU
whose name no tier carries gets no numbers and the plan says so (add a tier for it).
"""

from __future__ import annotations

import functools
from dataclasses import replace

from planner.hardware.devices import DEVICE_SPEEDS, LINK_SPEEDS, Hardware


@functools.cache
def published_speeds() -> dict[str, dict]:
    """Lower-cased GPU name -> {speed field: value} from every tier in conf/hardware/ that gives a bandwidth."""
    from planner.config.reader import profile_names, read_option

    table = {}
    for name in profile_names("hardware"):
        node = read_option("hardware", name)
        if node.get("kind") != "tier" or not node.get("name") or not node.get("memory_bandwidth_gb_per_s"):
            continue
        table.setdefault(
            str(node["name"]).lower(),
            {key: float(node[key]) for key in (*DEVICE_SPEEDS, *LINK_SPEEDS) if node.get(key) is not None},
        )
    return table


def with_published_speeds(hw: Hardware) -> Hardware:
    """`hw` with each GPU's published speeds looked up by name (numbers already present are kept)."""
    if all(d.memory_bandwidth_gb_per_s for d in hw.devices):
        return hw  # a tier, or a snapshot that recorded them: nothing to look up
    table = published_speeds()
    devices, links, unknown = [], {}, set()
    for device in hw.devices:
        found = table.get(device.name.lower())
        if found is None:
            if not device.memory_bandwidth_gb_per_s:
                unknown.add(device.name)
            devices.append(device)
            continue
        filled = {key: found[key] for key in DEVICE_SPEEDS if key in found and not getattr(device, key)}
        devices.append(replace(device, **filled))
        for key in LINK_SPEEDS:
            if key in found and not getattr(hw, key):
                links[key] = min(links.get(key, found[key]), found[key])
    notes = tuple(
        f"no published speeds for {name!r} in conf/hardware/: no speed prediction "
        "(add a tier with its datasheet numbers)"
        for name in sorted(unknown)
    )
    if hw.interconnect != "nvlink":
        links.pop("nvlink_gb_per_s", None)  # the probe saw no NVLink between these GPUs
    return replace(hw, devices=tuple(devices), notes=(*hw.notes, *notes), **links)
