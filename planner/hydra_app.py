"""Run one shardwise verb as a Hydra app: find `conf/`, resolve model names, turn bad input into one line.

Every verb (plan, probe, chat, serve, launch) goes through `run_verb`, so they share the config
groups, the alias rules (hub ids name the same profiles) and the error contract: a
`ShardwiseError` prints `shardwise <verb>: error: <message>` and exits 2, never a traceback.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

from planner.errors import ShardwiseError


@lru_cache(maxsize=None)
def conf_dir() -> Path:
    """The config tree: `conf/` beside the packages in a checkout, `planner/conf` in a wheel."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "conf"
    if (checkout / "plan.yaml").is_file():
        return checkout
    installed = Path(str(resources.files("planner.conf")))
    if (installed / "plan.yaml").is_file():
        return installed
    raise ShardwiseError(f"shardwise's config tree is missing (looked in {checkout} and {installed}): reinstall shardwise")


@lru_cache(maxsize=None)
def model_aliases() -> dict[str, str]:
    """Lower-cased hub id (and profile name) -> profile name, read from conf/model/*.yaml."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    aliases: dict[str, str] = {}
    for path in sorted((conf_dir() / "model").glob("*.yaml")):
        aliases[path.stem.lower()] = path.stem
        data = yaml.load(path.read_text(), Loader=loader) or {}
        for hub_id in [data.get("hub_id"), *(data.get("aliases") or [])]:
            if hub_id:
                aliases[str(hub_id).lower()] = path.stem
    return aliases


def profile_names(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def resolve_model_name(name: str) -> str:
    """Profile name for a profile name or hub id (case-insensitive); `auto` stays `auto`."""
    if name == "auto":
        return name
    found = model_aliases().get(name.lower())
    if found is None:
        choices = ", ".join(profile_names("model"))
        raise ShardwiseError(
            f"unknown model {name!r}: choose one of {choices}, model=auto, or plan any other model with model.path=DIR_OR_CONFIG_JSON"
        )
    return found


def resolve_hardware_name(name: str) -> str:
    if (conf_dir() / "hardware" / f"{name}.yaml").is_file():
        return name
    choices = ", ".join(profile_names("hardware"))
    raise ShardwiseError(f"unknown hardware {name!r}: choose one of {choices}")


def _rewrite_group_choice(arg: str, group: str, resolve: Callable[[str], str]) -> str:
    """`model=openai/gpt-oss-120b` -> `model=gpt-oss-120b`; also sweeps `model=a,b` and Hydra's `model=choice(a,b)`."""
    key, _, value = arg.partition("=")
    if key.lstrip("+~") != group or not value:
        return arg
    inner = value
    wrapper = re.fullmatch(r"(choice)\((.*)\)", value)
    if wrapper:
        inner = wrapper.group(2)
    names = [resolve(v.strip()) for v in inner.split(",")]
    if group == "model":
        # model=auto is a profile-less choice handled by the planner: keep it as a group option file.
        pass
    joined = ",".join(names)
    return f"{key}={wrapper.group(1)}({joined})" if wrapper else f"{key}={joined}"


def normalize_overrides(args: list[str]) -> list[str]:
    """Resolve model and hardware names in CLI overrides before Hydra sees them."""
    out = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            out.append(arg)
            continue
        arg = _rewrite_group_choice(arg, "model", resolve_model_name)
        arg = _rewrite_group_choice(arg, "hardware", resolve_hardware_name)
        out.append(arg)
    return out


def fail(verb: str, message: str, code: int = 2) -> None:
    print(f"shardwise {verb}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_verb(verb: str, config_name: str, task: Callable, argv: list[str]) -> None:
    """Run `task(cfg)` as the Hydra app `conf/<config_name>.yaml` with `argv` as overrides."""
    import hydra

    from planner import schema

    schema.register()
    try:
        args = normalize_overrides(argv)
    except ShardwiseError as exc:
        fail(verb, str(exc))

    def guarded(cfg):
        try:
            schema.validate(cfg)
            return task(cfg)
        except ShardwiseError as exc:
            fail(verb, str(exc), exc.exit_code)

    guarded.__name__ = f"shardwise_{verb}"
    guarded.__module__ = task.__module__
    app = hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(guarded)
    saved = sys.argv
    sys.argv = [f"shardwise {verb}", *args]
    try:
        app()
    finally:
        sys.argv = saved
