"""The composed config, parsed once into the typed request the planner core takes.

Everything the core needs from `model` and `policy` is read here: token counts are parsed by
`parse_tokens` (the only place that reads them), enum settings become plain strings, MiB and GiB
become bytes, and the offload disk's free space is measured here, at the edge, so the core never
touches files or the environment.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from planner.decide.policy import Policy
from planner.driver.sessions import parse_sessions
from planner.errors import ShardwiseError
from planner.files import expand_user, resolved
from planner.hardware.devices import Hardware
from planner.memory.terms import Overheads
from planner.model.source import ModelSpec, spec_from_config
from planner.planfile.plan import Plan
from planner.units import GIB, MIB
from planner.vllm.rules import DEFAULT_VERSION, EngineSettings

# `k` is 1024 tokens, as context sizes are usually written (8k = 8192, 128k = 131072).
TOKENS_PER_K = 1024


def parse_tokens(value, key: str, *, allow_auto: bool = False) -> int | None:
    """A token count as users write it: 8192, 8e3, 8k / 8K (x1024), or `auto` (None) where allowed."""
    text = str(value).strip().lower()
    if allow_auto and text == "auto":
        return None
    scale = 1
    if text.endswith("k"):
        text, scale = text[:-1], TOKENS_PER_K
    example = f"{key}=8192, {key}=8e3 or {key}=8k" + (f" or {key}=auto" if allow_auto else "")
    try:
        number = float(text) * scale
    except ValueError:
        what = "neither a number nor auto" if allow_auto else "not a number of tokens"
        raise ShardwiseError(f"{key}={value!r} is {what}: use e.g. {example}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise ShardwiseError(f"{key}={value!r} is not a whole number of tokens: use e.g. {example}")
    return int(number)


def _enum_value(setting) -> str:
    """An enum setting as its plain string (OmegaConf hands back the Enum member)."""
    from enum import Enum

    return setting.value if isinstance(setting, Enum) else str(setting)


def offload_disk_bytes(offload_disk_gib: float, offload_folder: str) -> int:
    """Room for disk-offloaded weights: the configured GiB, else the free space where the folder goes (measured)."""
    if offload_disk_gib < 0:
        raise ShardwiseError(f"policy.offload_disk_gib={offload_disk_gib} must be >= 0 (0: measure the free space)")
    if offload_disk_gib > 0:
        return int(offload_disk_gib * GIB)
    try:
        where = resolved(expand_user(offload_folder))
        while not where.exists() and where != where.parent:
            where = where.parent
        return shutil.disk_usage(where).free
    except OSError:  # a symlink loop, a folder we may not read: no room to offload to
        return 0


def policy_from_config(node, engine: EngineSettings | None = None) -> Policy:
    """The typed Policy from a composed `policy` node or a plain dict of the same keys (validated by Policy);
    `engine`: who runs the plan (engine_from_config; None: shardwise's runner)."""
    overhead = node["overhead"]
    return Policy(
        engine=engine or EngineSettings(),
        context_tokens=parse_tokens(node["context_tokens"], "policy.context_tokens", allow_auto=True),
        sessions=parse_sessions(node["sessions"], check_range=False),  # the Policy checks the range
        max_sessions=parse_sessions(node.get("max_sessions", "auto"), check_range=False, key="policy.max_sessions"),
        headroom_fraction=float(node["headroom_fraction"]),
        headroom_mib=int(node["headroom_mib"]),
        host_headroom_fraction=float(node["host_headroom_fraction"]),
        allow_cpu_offload=bool(node["allow_cpu_offload"]),
        allow_disk_offload=bool(node["allow_disk_offload"]),
        offload_folder=str(node["offload_folder"]),
        offload_disk_bytes=offload_disk_bytes(float(node["offload_disk_gib"] or 0), str(node["offload_folder"])),
        strategy=_enum_value(node["strategy"]),
        objective=_enum_value(node.get("objective", "auto")),
        dtype=_enum_value(node["dtype"]),
        quantization=_enum_value(node["quantization"]),
        kv_cache_dtype=_enum_value(node["kv_cache_dtype"]),
        attn_implementation=_enum_value(node["attn_implementation"]),
        prefill_chunk_tokens=parse_tokens(node["prefill_chunk_tokens"], "policy.prefill_chunk_tokens"),
        min_context_tokens=parse_tokens(node["min_context_tokens"], "policy.min_context_tokens"),
        images_per_request=_count(node.get("images_per_request", 1), "policy.images_per_request"),
        candidates=tuple(str(name) for name in node["candidates"] or ()),
        overhead=Overheads(
            cuda_context_bytes=int(overhead["cuda_context_mib"]) * MIB,
            workspace_bytes=int(overhead["workspace_mib"]) * MIB,
            fragmentation_fraction=float(overhead["fragmentation_fraction"]),
            cpu_runtime_bytes=int(overhead["cpu_runtime_mib"]) * MIB,
        ),
        performance=_plain(node.get("performance")),
    )


def _count(value, key: str) -> int:
    """A whole number >= 0 from a composed value (OmegaConf already typed it as int; a plain dict may not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ShardwiseError(f"{key}={value!r} must be a whole number >= 0")
    return value


def _plain(node) -> dict | None:
    """A composed sub-node as plain dicts (the core takes no OmegaConf objects)."""
    if node is None or isinstance(node, dict):
        return node
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


@dataclass(frozen=True)
class PlanRequest:
    """What to plan: the model (None for model=auto: the largest of policy.candidates that fits) and the policy.

    The hardware is resolved beside it (probe, tier or snapshot: planner.hardware.tiers) and
    handed to the core as a Hardware.
    """

    model: ModelSpec | None
    policy: Policy


def plans_for_vllm(launch) -> bool:
    """vLLM sizes the plan: launch.engine=vllm, or launch.target=kubernetes (which deploys vLLM) with engine auto."""
    if launch is None:
        return False
    engine = _enum_value(launch.get("engine", "auto"))
    return engine == "vllm" or (engine == "auto" and _enum_value(launch.get("target", "local")) == "kubernetes")


def engine_from_config(launch) -> EngineSettings:
    """The engine the plan is for, from a composed `launch` node (absent, or not planned for vLLM: the runner)."""
    if not plans_for_vllm(launch):
        return EngineSettings()
    return EngineSettings(
        name="vllm",
        version=str(launch.get("vllm_version") or DEFAULT_VERSION),
        gpu_memory_utilization=launch.get("gpu_memory_utilization"),
        max_num_batched_tokens=launch.get("max_num_batched_tokens"),
        max_num_seqs=launch.get("max_num_seqs"),
        enable_expert_parallel=bool(launch.get("enable_expert_parallel", False)),
    )


def request_from_config(cfg, adjust_policy: Callable[[Policy], Policy] | None = None) -> PlanRequest:
    """The PlanRequest for a composed config with `model` and `policy` nodes (and `launch`: the engine).

    adjust_policy: a verb's changes to the typed policy (serve: its engine's batching, its session default).
    """
    policy = policy_from_config(cfg.policy, engine_from_config(cfg.get("launch")))
    if adjust_policy is not None:
        policy = adjust_policy(policy)
    if cfg.model.name == "auto" and not cfg.model.get("path"):
        return PlanRequest(model=None, policy=policy)
    return PlanRequest(model=spec_from_config(cfg.model), policy=policy)


def plan_from_config(cfg, hardware: Hardware, adjust_policy: Callable[[Policy], Policy] | None = None) -> Plan:
    """The Plan for a composed config on `hardware`: parse once, then hand the core typed values."""
    from planner.config.gpu_speeds import with_published_speeds  # probed GPUs: datasheet speeds by name
    from planner.config.reader import profile_spec
    from planner.driver.planning import plan

    request = request_from_config(cfg, adjust_policy)
    return plan(request, with_published_speeds(hardware), load_profile=profile_spec)
