"""Helpers shared by the benchmark scripts: profiles, tiers and plans without Hydra.

conf/ is read through planner.config.reader (OmegaConf), the one reader of conf/. A machine
without OmegaConf (the lent GPU box may have torch and transformers only) reads the JSON export
in benchmarks/data/profiles.json instead, written by `gpu_memory_check.py --export`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` from anywhere finds `planner`
    sys.path.insert(0, str(REPO))

EXPORT_PATH = REPO / "benchmarks" / "data" / "profiles.json"
from planner.units import GIB  # noqa: E402  (after the sys.path line above)


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """Median and range of repeated measurements, as printed beside every benchmark figure."""
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def _have_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


def read_option(group: str, name: str) -> dict:
    """One option file of conf/<group>/ as a dict (planner.config.reader), its `defaults:` list dropped."""
    if not _have_omegaconf():
        raise RuntimeError(f"OmegaConf is not installed, cannot read conf/{group}/{name}: use {EXPORT_PATH}")
    from planner.config.reader import read_option as read

    return read(group, name)


def model_profile_names() -> list[str]:
    """Every shipped model profile except `auto` (a chooser, not a model)."""
    from planner.config.reader import profile_names

    return [name for name in profile_names("model") if name != "auto"]


def gpu_tier_names() -> list[str]:
    """Every hardware option whose kind is `tier` (named GPU kinds)."""
    from planner.config.reader import profile_names

    return [n for n in profile_names("hardware") if str(read_option("hardware", n).get("kind", "tier")) == "tier"]


def _read_conf() -> dict:
    return {
        "policy": read_option("policy", "default"),
        "generation": read_option("generation", "default"),
        "models": {name: read_option("model", name) for name in model_profile_names()},
        "hardware": {name: read_option("hardware", name) for name in gpu_tier_names()},
    }


def export_configs(path: Path = EXPORT_PATH) -> Path:
    """Write profiles, GPU tiers, policy and generation defaults as one JSON file (read by OmegaConf-less machines)."""
    data = {
        "note": "exported from conf/ by benchmarks/gpu_memory_check.py --export; regenerate after editing conf/",
        **_read_conf(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def load_configs(prefer: str = "repo", path: Path = EXPORT_PATH) -> tuple[dict, str]:
    """(configs, where they came from): conf/ through planner.config when OmegaConf is here, else the JSON export."""
    if prefer == "repo" and _have_omegaconf():
        return _read_conf(), "the config tree, through planner.config.reader"
    if not path.is_file():
        raise SystemExit(
            f"no OmegaConf and no export at {path}: "
            "run `python benchmarks/gpu_memory_check.py --export` on a machine with the repo's venv"
        )
    return json.loads(path.read_text()), str(path)


def policy_from(configs: dict, **overrides):
    """The typed Policy of the default policy (conf/policy/default.yaml) with overrides, parsed as the CLI does."""
    from planner.config.request import policy_from_config

    policy = dict(configs["policy"])
    policy["overhead"] = dict(policy.get("overhead") or {})
    for key, value in overrides.items():
        if key.startswith("overhead__"):
            policy["overhead"][key.removeprefix("overhead__")] = value
        else:
            policy[key] = value
    return policy_from_config(policy)


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
    """A Plan through planner.driver.planning.plan_model with the typed Policy (no Hydra, no OmegaConf)."""
    from planner.driver.planning import plan_model

    policy = policy_from(configs, **(policy_overrides or {}))
    load_profile = (lambda name: model_spec(configs["models"][name])) if fallbacks else None
    return plan_model(model_spec(configs["models"][model]), hardware, policy, load_profile=load_profile)


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
