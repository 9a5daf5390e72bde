"""Range checks on a composed config, once, before anything is planned: one line per bad value.

The schemas check types; this module checks what a type cannot say: sizes and budgets are
finite and not negative (a negative overhead would turn DOES NOT FIT into FITS), counts stay
below the bounds in `planner.limits` (so planning stays fast), and keys forced in at the top
level with `+key=...` / `++key=...` are ones the verb knows.
"""

from __future__ import annotations

import math

from planner import limits
from planner.errors import ShardwiseError, did_you_mean


def _number(value, key: str) -> float | None:
    """The value as a float when it is a number, None when it is absent or not a number (the schema judges those)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ShardwiseError(f"{key}={value} is not a finite number: give a real value, e.g. {key}=0")
    return number


def _at_least(cfg, key: str, minimum: float) -> None:
    number = _number(_select(cfg, key), key)
    if number is not None and number < minimum:
        raise ShardwiseError(f"{key}={_select(cfg, key)} must be >= {minimum:g}")


def _at_most(cfg, key: str, maximum: int, fix: str) -> None:
    number = _number(_select(cfg, key), key)
    if number is not None and number > maximum:
        raise ShardwiseError(f"{key}={_select(cfg, key)} is more than shardwise plans for ({maximum:,}): {fix}")


def _select(cfg, key: str):
    node = cfg
    for part in key.split("."):
        try:
            node = node.get(part) if hasattr(node, "get") else None
        except Exception:  # an interpolation that cannot resolve is reported by the schema check
            return None
        if node is None:
            return None
    return node


def known_top_level_keys(config_path) -> set[str]:
    """The top-level keys of a primary config file (`conf/<verb>.yaml`) and the groups its defaults compose."""
    import yaml

    data = yaml.safe_load(config_path.read_text()) or {}
    keys = {k for k in data if k not in ("defaults",)}
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for name in entry:
                name = str(name).split("@")[-1] if "@" in str(name) else str(name)
                if not name.startswith("override ") and not name.startswith("/"):
                    keys.add(name.split("/")[0])
        elif isinstance(entry, str) and entry != "_self_":
            keys.add(entry.split("@")[-1].lstrip("/").split("/")[0])
    return keys | {"hydra"}


def check(cfg, config_path=None) -> None:
    """Refuse, in one line, the first value out of range in a composed verb config."""
    if config_path is not None:
        known = known_top_level_keys(config_path)
        unknown = sorted(str(k) for k in cfg.keys() if str(k) not in known)
        if unknown:
            raise ShardwiseError(
                f"unknown key {unknown[0]}{did_you_mean(unknown[0], known - {'hydra'})}: "
                f"`shardwise {config_path.stem}` knows {', '.join(sorted(known - {'hydra'}))}"
            )
    if "policy" in cfg and cfg.policy is not None:
        for key in ("cuda_context_mib", "workspace_mib", "fragmentation_fraction", "cpu_runtime_mib"):
            _at_least(cfg, f"policy.overhead.{key}", 0)
        _at_least(cfg, "policy.offload_disk_gib", 0)
        _at_least(cfg, "policy.headroom_mib", 0)
        # policy.sessions and max_sessions: planner.sessions.parse_sessions checks type and range (schema.validate)
    if "hardware" in cfg and cfg.hardware is not None:
        for key in ("host_ram_gib", "memory_mib"):
            _number(_select(cfg, f"hardware.{key}"), f"hardware.{key}")
        # whatever the kind (a tier, or auto/cpu/snapshot where the count has no effect): a count below 1 is a typo
        _at_least(cfg, "hardware.count", 1)
        _at_least(cfg, "hardware.nodes", 1)
        _at_most(cfg, "hardware.count", limits.MAX_GPUS_PER_NODE, "give the GPUs of one node")
        _at_most(cfg, "hardware.nodes", limits.MAX_NODES, "plan for fewer nodes")
        _at_most(cfg, "hardware.host_ram_gib", limits.MAX_HOST_RAM_GIB, "give the host RAM of one node in GiB")
    if "launch" in cfg and cfg.launch is not None:
        _at_least(cfg, "launch.node_rank", 0)
        _at_most(cfg, "launch.node_rank", limits.MAX_NODES - 1, "give this node's index in the plan")
