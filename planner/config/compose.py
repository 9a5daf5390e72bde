"""Planning from Python: compose the same configs as the CLI and get a Plan.

from planner.config.compose import make_plan
plan = make_plan("gpt-oss-120b", "h100_80gb", ["hardware.count=2", "policy.context_tokens=32768"])
"""

from __future__ import annotations

from planner.config import bounds
from planner.config.overrides import composition_error, normalize_overrides, resolve_or_refuse
from planner.config.reader import conf_dir
from planner.hardware.devices import Hardware
from planner.planfile.plan import Plan


def compose(config_name: str = "plan", overrides: list[str] = ()):
    """The composed config for `conf/<config_name>.yaml` with CLI-style overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from planner.config import schema
    from planner.config.fastyaml import install
    from planner.config.rundir import register_resolvers

    schema.register()
    register_resolvers()
    install()  # OmegaConf's YAML rules on libyaml's parser
    args = normalize_overrides(list(overrides))
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=args, return_hydra_config=False)
        except Exception as exc:  # what Hydra refuses (a bad override, an unknown key or option): one line
            error = composition_error(exc, config_name)
            if error is None:
                raise
            raise error from None
    resolve_or_refuse(cfg)
    schema.validate(cfg)
    bounds.check(cfg, conf_dir() / f"{config_name}.yaml")
    return cfg


def _choice(overrides: list[str], group: str, default: str) -> str:
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == group:
            return value
    return default


def make_plan(
    model: str = "gpt2", hardware: str = "auto", overrides: list[str] = (), model_path: str | None = None
) -> Plan:
    """Plan `model` (profile name or hub id) on `hardware` (tier name, cpu, auto, snapshot)."""
    from planner.config.quoting import override
    from planner.config.request import plan_from_config
    from planner.hardware.tiers import resolve_hardware

    args = [override("model", model), override("hardware", hardware), *overrides]
    if model_path:
        args.append(override("model.path", str(model_path)))
    cfg = compose("plan", args)
    hw = resolve_hardware(cfg.hardware, name=_choice(normalize_overrides(args), "hardware", hardware))
    return plan_from_config(cfg, hw)


def current_hardware(hardware_source: str) -> Hardware:
    """This machine now, seen the way a plan with `hardware_source` was made.

    A CPU plan is compared with this host measured as `hardware=cpu` does; every other plan (probe,
    snapshot, tier) with what NVML sees here, so a dry-run plan for a tier is stale on a real box.
    """
    from planner.hardware.probe import probe
    from planner.hardware.tiers import resolve_hardware

    if hardware_source in ("cpu",):
        return resolve_hardware({"kind": "cpu", "host_ram_gib": 0, "cpu_count": 0}, name="cpu")
    return probe()


def current_fingerprint(hardware_source: str) -> str:
    """Fingerprint of this machine now; a plan whose fingerprint differs is stale here."""
    return current_hardware(hardware_source).fingerprint()
