"""Run one shardwise verb as a Hydra app: find `conf/`, resolve model names, turn bad input into one line.

Every verb (plan, probe, chat, serve, launch) goes through `run_verb`, so they share the config
groups, the alias rules (hub ids name the same profiles) and the error contract: a
`ShardwiseError` prints `shardwise <verb>: error: <message>` and exits 2, never a traceback.
What Hydra refuses before the verb runs (a typo'd key, a value of the wrong type, an option file
that does not exist, an override it cannot parse, a run directory it cannot create) follows the
same contract. In a `shardwise plan -m` sweep a refused combination is reported and the other
jobs still run; the sweep then exits 2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path

from planner.errors import ShardwiseError


@cache
def conf_dir() -> Path:
    """The config tree: `conf/` beside the packages in a checkout, `planner/conf` in a wheel."""
    here = Path(__file__).resolve().parents[1]
    checkout = here.parent / "conf"
    if (checkout / "plan.yaml").is_file():
        return checkout
    installed = Path(str(resources.files("planner.conf")))
    if (installed / "plan.yaml").is_file():
        return installed
    raise ShardwiseError(
        f"shardwise's config tree is missing (looked in {checkout} and {installed}): reinstall shardwise"
    )


@cache
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
    if key.lstrip("+~") != group:
        return arg
    if not value.strip():
        choices = ", ".join(profile_names(group))
        raise ShardwiseError(f"{group}= is empty: choose one of {choices}")
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


_GROUPS = ("model", "hardware", "policy", "generation", "probe", "launch")


def normalize_overrides(args: list[str]) -> list[str]:
    """Resolve model and hardware names in CLI overrides before Hydra sees them."""
    out = []
    for arg in args:
        if arg.startswith("~") and arg[1:].partition("=")[0] in _GROUPS:
            group = arg[1:].partition("=")[0]
            raise ShardwiseError(
                f"{arg} would remove the {group} settings every run needs: choose another with {group}=NAME instead"
            )
        if arg.startswith("-") or "=" not in arg:
            out.append(arg)
            continue
        arg = _rewrite_group_choice(arg, "model", resolve_model_name)
        arg = _rewrite_group_choice(arg, "hardware", resolve_hardware_name)
        out.append(arg)
    return out


def flag(cfg, key: str) -> bool:
    """A top-level true/false option (json, replan, stream, ...); anything else is a one-line error."""
    value = cfg.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ShardwiseError(f"{key}={value!r} is not true or false: set {key}=true or {key}=false")


def fail(verb: str, message: str, code: int = 2) -> None:
    print(f"shardwise {verb}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _first_line(value) -> str:
    return next((line.strip() for line in str(value).splitlines() if line.strip()), "")


def _known_keys(object_type) -> str:
    from dataclasses import fields, is_dataclass

    if isinstance(object_type, type) and is_dataclass(object_type):
        return f"{object_type.__name__} has {', '.join(sorted(f.name for f in fields(object_type)))}"
    return ""


def composition_error(exc: BaseException, verb: str) -> ShardwiseError | None:
    """One line for what Hydra refuses before a verb runs (bad override, unknown key or option); None otherwise."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    help_hint = f"see `shardwise {verb} --cfg job` for the keys and their values"
    if isinstance(exc, OverrideParseException):
        override = getattr(exc, "override", "") or ""
        if override and "=" not in override and not override.startswith("~"):
            if override in _GROUPS:
                example = f"{override}=NAME"
            else:
                group = (
                    "model"
                    if override.lower() in model_aliases()
                    else "hardware"
                    if override in profile_names("hardware")
                    else "KEY"
                )
                example = f"{group}={override}"
            return ShardwiseError(f"{override!r} is not an override: write KEY=VALUE, e.g. {example}")
        return ShardwiseError(
            f"cannot parse the override {override!r} ({_first_line(exc.message)}): quote a value with special characters, e.g. 'key=\"a value\"'"
        )
    if isinstance(exc, MissingConfigException):
        what = _first_line(exc)
        if what.startswith("In '") and "': " in what:
            what = what.split("': ", 1)[1]
        options = ", ".join(str(o) for o in (exc.options or []))
        return ShardwiseError(
            f"{what[:1].lower()}{what[1:]}: choose one of {options}" if options else f"{what}: {help_hint}"
        )
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        if isinstance(cause, OmegaConfBaseException):
            key = getattr(cause, "full_key", None) or "?"
            if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
                known = _known_keys(getattr(cause, "object_type", None))
                return ShardwiseError(f"unknown key {key}: {known or help_hint}")
            reason = _first_line(getattr(cause, "msg", None) or cause)
            fix = f"write a list, e.g. {key}='[a, b]'" if "ListConfig" in reason else help_hint
            return ShardwiseError(f"bad value for {key} ({reason}): {fix}")
        return ShardwiseError(f"{_first_line(exc).rstrip('.')}: {help_hint}")
    return None


def resolve_or_refuse(cfg) -> None:
    """Resolve every interpolation now (`${oc.env:MISSING}`, a self reference): one line naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    failures = (OmegaConfBaseException, RecursionError, ValueError, TypeError)

    def failing_key(node, prefix: str) -> str:
        keys = range(len(node)) if OmegaConf.is_list(node) else node.keys()
        for key in keys:
            try:
                value = node._get_node(key)._dereference_node()
            except failures:
                return f"{prefix}{key}"
            if OmegaConf.is_config(value):
                found = failing_key(value, f"{prefix}{key}.")
                if found:
                    return found
        return ""

    try:
        OmegaConf.resolve(cfg)
    except failures as exc:
        key = getattr(exc, "full_key", None) or failing_key(cfg, "")
        where = f" of {key}" if key else ""
        raise ShardwiseError(
            f"cannot resolve the value{where} ({_first_line(getattr(exc, 'msg', None) or exc)[:200]}): "
            "check the ${...} interpolation (an environment variable it names may be unset)"
        ) from None


def _reporting(verb: str, task_started: list, original: Callable) -> Callable:
    """A stand-in for Hydra's run_and_report: composition errors and an unwritable run directory become one line, exit 2."""

    def run_and_report(func):
        try:
            return func()
        except Exception as exc:
            error = composition_error(exc, verb)
            if error is None and 'Could not detect "srun"' in str(exc):
                error = ShardwiseError(
                    "a hydra/launcher=slurm_* or submitit_slurm launch needs a SLURM cluster and this machine has no "
                    "`srun`: run it on a SLURM login node, or add launch.dry_run=true (without -m) "
                    "to print the commands"
                )
            if error is None and isinstance(exc, OSError) and not task_started:
                where = exc.filename if exc.filename is not None else "the run directory"
                error = ShardwiseError(
                    f"cannot create {str(where)!r} ({exc.strerror or exc}): run shardwise from a writable directory or set hydra.run.dir=DIR"
                )
            if error is None:
                caught = exc
                return original(lambda: _reraise(caught))  # Hydra's own report for everything else
            fail(verb, str(error))

    return run_and_report


def _reraise(exc: BaseException):
    raise exc


_FAILED_JOBS: list[str] = []


def run_verb(verb: str, config_name: str, task: Callable, argv: list[str]) -> None:
    """Run `task(cfg)` as the Hydra app `conf/<config_name>.yaml` with `argv` as overrides."""
    import hydra
    from hydra._internal import utils as hydra_utils

    from planner.config import bounds, schema
    from planner.config.rundir import register_resolvers

    schema.register()
    register_resolvers()
    try:
        args = normalize_overrides(argv)
    except ShardwiseError as exc:
        fail(verb, str(exc))
    task_started: list[bool] = []

    def guarded(cfg):
        task_started.append(True)
        try:
            schema.validate(cfg)
            resolve_or_refuse(cfg)
            bounds.check(cfg, conf_dir() / f"{config_name}.yaml")
            try:
                return task(cfg)
            except OSError as exc:
                if exc.filename is None:
                    raise
                # a path the user gave that the system refuses (name too long, no permission, a directory...)
                raise ShardwiseError(
                    f"cannot use {str(exc.filename)[:120]!r} ({exc.strerror or exc}): "
                    "give a path that exists and is readable"
                ) from None
        except ShardwiseError as exc:
            if verb == "plan" and _in_sweep():
                # One bad combination of a sweep must not cost the others: report it, go on, exit 2 at the end.
                print(f"shardwise {verb}: error: [{_job_overrides()}] {exc}", file=sys.stderr)
                _FAILED_JOBS.append(str(exc))
                return None
            fail(verb, str(exc), exc.exit_code)
        finally:
            _discard_unused_run_dir()

    guarded.__name__ = f"shardwise_{verb}"
    guarded.__module__ = task.__module__
    app = hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(guarded)
    saved = sys.argv
    sys.argv = [f"shardwise {verb}", *args]
    original = hydra_utils.run_and_report
    hydra_utils.run_and_report = _reporting(verb, task_started, original)
    _FAILED_JOBS.clear()
    try:
        app()
    finally:
        sys.argv = saved
        hydra_utils.run_and_report = original
    if _FAILED_JOBS:
        fail(verb, f"{len(_FAILED_JOBS)} job(s) of the sweep failed (see the errors above)")


def _discard_unused_run_dir() -> None:
    """A run that wrote nothing into its run directory leaves none behind (sweeps keep theirs)."""
    import os

    from hydra.core.hydra_config import HydraConfig

    from planner.config.rundir import discard_if_unused

    if not _in_sweep():
        discard_if_unused(Path(HydraConfig.get().runtime.output_dir), Path(os.getcwd()))


def _job_overrides() -> str:
    from hydra.core.hydra_config import HydraConfig

    return " ".join(HydraConfig.get().overrides.task)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False
