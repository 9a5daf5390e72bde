"""Helpers shared by the benchmark scripts: find conf/, read profiles and tiers without Hydra.

Everything here works with the standard library plus PyYAML (or, without PyYAML, the JSON
export in benchmarks/data/profiles.json written by `gpu_memory_check.py --export`), so the GPU
check can plan on a machine that has torch and transformers but neither Hydra nor OmegaConf.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` from anywhere finds `planner`
    sys.path.insert(0, str(REPO))

CONF = REPO / "conf"
EXPORT_PATH = REPO / "benchmarks" / "data" / "profiles.json"
from planner.units import GIB  # noqa: E402  (after the sys.path line above)


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


def median(values) -> float:
    return statistics.median(values)


def _yaml():
    try:
        import yaml
    except ImportError:
        return None
    return yaml


def read_yaml(path: Path) -> dict:
    """One config file as a dict, its Hydra `defaults:` list dropped."""
    yaml = _yaml()
    if yaml is None:
        raise RuntimeError(f"PyYAML is not installed, cannot read {path}: use the JSON export ({EXPORT_PATH})")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(path.read_text(), Loader=loader) or {}
    data.pop("defaults", None)
    return data


def model_profile_names() -> list[str]:
    """Every shipped model profile except `auto` (a chooser, not a model)."""
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "auto")


def gpu_tier_names() -> list[str]:
    """Every hardware option whose kind is `tier` (named GPU kinds)."""
    return sorted(p.stem for p in (CONF / "hardware").glob("*.yaml") if str(read_yaml(p).get("kind", "tier")) == "tier")


def export_configs(path: Path = EXPORT_PATH) -> Path:
    """Write profiles, GPU tiers, policy and generation defaults as one JSON file (read by Hydra-less machines)."""
    data = {
        "note": "exported from conf/ by benchmarks/gpu_memory_check.py --export; regenerate after editing conf/",
        "policy": read_yaml(CONF / "policy" / "default.yaml"),
        "generation": read_yaml(CONF / "generation" / "default.yaml"),
        "models": {name: read_yaml(CONF / "model" / f"{name}.yaml") for name in model_profile_names()},
        "hardware": {name: read_yaml(CONF / "hardware" / f"{name}.yaml") for name in gpu_tier_names()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def load_configs(prefer: str = "yaml", path: Path = EXPORT_PATH) -> tuple[dict, str]:
    """(configs, where they came from): conf/ through PyYAML when present, else the JSON export."""
    if prefer == "yaml" and _yaml() is not None and CONF.is_dir():
        data = {
            "policy": read_yaml(CONF / "policy" / "default.yaml"),
            "generation": read_yaml(CONF / "generation" / "default.yaml"),
            "models": {name: read_yaml(CONF / "model" / f"{name}.yaml") for name in model_profile_names()},
            "hardware": {name: read_yaml(CONF / "hardware" / f"{name}.yaml") for name in gpu_tier_names()},
        }
        return data, f"{CONF} (PyYAML)"
    if not path.is_file():
        raise SystemExit(
            f"no PyYAML and no export at {path}: run `python benchmarks/gpu_memory_check.py --export` on a machine with the repo's venv"
        )
    return json.loads(path.read_text()), str(path)


def namespace(data):
    """Nested dicts as attribute namespaces (what the planner reads from a composed config)."""
    if isinstance(data, dict):
        return SimpleNamespace(**{k: namespace(v) for k, v in data.items()})
    return data


def policy_namespace(configs: dict, **overrides):
    """The default policy (conf/policy/default.yaml) with overrides, as the Planner reads it."""
    policy = dict(configs["policy"])
    policy["overhead"] = dict(policy.get("overhead") or {})
    for key, value in overrides.items():
        if key.startswith("overhead__"):
            policy["overhead"][key.removeprefix("overhead__")] = value
        else:
            policy[key] = value
    return namespace(policy)


def model_spec(profile: dict):
    """planner.model.source.ModelSpec from a profile dict (what spec_from_config builds, minus OmegaConf)."""
    from planner.model.source import ModelSpec

    return ModelSpec(
        name=profile["name"],
        source=profile.get("hub_id") or profile["name"],
        architecture=dict(profile["architecture"]),
        shipped_dtype=profile.get("dtype", "bfloat16"),
        quantization=profile.get("quantization"),
        fallback=profile.get("fallback"),
        trust_remote_code=bool(profile.get("trust_remote_code", False)),
        chat_template=profile.get("chat_template"),
        model_dir=None,
    )


def tier_hardware(configs: dict, tier: str, count: int = 1):
    """planner Hardware for `count` GPUs of a tier, through the planner's own resolver."""
    from planner.hardware.tiers import resolve_hardware

    return resolve_hardware({**configs["hardware"][tier], "count": count}, name=tier)


def plan_without_hydra(
    configs: dict, model: str, hardware, policy_overrides: dict | None = None, fallbacks: bool = False
):
    """A Plan through planner.planning.Planner with plain namespaces (no Hydra, no OmegaConf)."""
    from planner.planning import Planner

    policy = policy_namespace(configs, **(policy_overrides or {}))
    generation = namespace(configs["generation"])
    return Planner(model_spec(configs["models"][model]), hardware, policy, generation, with_fallbacks=fallbacks).plan()


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
