"""`shardwise plan [overrides]`: a dry-run plan; prints the report and writes plan.json.

    shardwise plan model=gpt-oss-120b hardware=h100_80gb
    shardwise plan model=llama-3.1-70b hardware=h100_80gb hardware.count=2 out=plan.json
    shardwise plan -m model=gpt2,gpt-oss-20b hardware=t4,a100_80gb     # summary table at the end

Without json=true the plan also goes to the run directory outputs/plan/<time>_<pid>-<random>/plan.json
(unique per process), which the report's "Run it" line names; json=true prints the plan and writes
nothing unless out= asks. out=DIR (an existing directory) writes DIR/plan.json. Every write is
atomic (a temp file beside it, then a rename); a path that cannot be written is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

from planner.config.overrides import flag, path_option
from planner.errors import ShardwiseError
from planner.jsonfile import dumps_json
from shardwise.verbs.app import run_verb


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def hardware_choice() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("hardware")


def out_path(cfg) -> Path | None:
    """Where `out=` asks for plan.json: a file, or DIR/plan.json for an existing directory."""
    path = path_option(cfg, "out")
    if path is None:
        return None
    return path / "plan.json" if path.is_dir() else path


def save_to(plan, path: Path) -> Path:
    try:
        return plan.save(path)
    except OSError as exc:
        raise ShardwiseError(
            f"cannot write the plan to {str(path)!r} ({exc.strerror or exc}): choose a writable out=FILE"
        ) from None


def task(cfg):
    from hydra.core.hydra_config import HydraConfig

    from planner.config.request import plan_from_config
    from planner.hardware.tiers import resolve_hardware

    as_json = flag(cfg, "json")
    charts = flag(cfg, "charts")
    out = out_path(cfg)
    hardware = resolve_hardware(cfg.hardware, name=hardware_choice())
    plan = plan_from_config(cfg, hardware)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    written = [] if as_json else [save_to(plan, run_dir / "plan.json")]
    if out is not None:
        written.append(save_to(plan, out))
    if charts:
        _draw(cfg, hardware, plan, written)
    if as_json:
        # one plan per line in a -m sweep (JSON Lines), pretty-printed otherwise
        print(dumps_json(plan.to_dict(), "plan", indent=None) if _in_sweep() else plan.to_json(), flush=True)
    else:
        from planner.explain.report import render

        render(plan, plan_path=str(written[-1]))
        print("plan.json: " + ", ".join(str(p) for p in written))
    return {"fits": plan.fits, "strategy": plan.strategy}


def _draw(cfg, hardware, plan, written: list[Path]) -> None:
    """charts=true: the memory and context charts and plan.html beside every plan file written."""
    import sys

    if not written:
        print("charts=true: nothing written (json=true writes files only where out= asks)", file=sys.stderr)
        return
    from planner.charts.build import plan_charts
    from planner.charts.files import write_beside

    charts = plan_charts(cfg, hardware, plan)
    for plan_file in written:
        from planner.files import names_a_descriptor

        if not Path(plan_file).is_file() or names_a_descriptor(plan_file):  # out=/dev/null: no /dev/null.memory.svg
            print(f"charts=true: none beside {str(plan_file)!r}, which is not a regular file", file=sys.stderr)
            continue
        try:
            paths = write_beside(plan_file, plan.to_dict(), charts)
        except OSError as exc:
            raise ShardwiseError(f"cannot write the charts beside {str(plan_file)!r} ({exc.strerror or exc})") from None
        print("charts: " + ", ".join(str(p) for p in paths), file=sys.stderr)


def run(argv: list[str]) -> None:
    run_verb("plan", "plan", task, argv)
