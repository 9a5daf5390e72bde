"""Run one shardwise verb as a Hydra app: find `conf/`, resolve model names, turn bad input into one line.

Every verb (plan, probe, chat, serve, launch) goes through `run_verb`, so they share the config
groups, the model names (profiles and their hub-id aliases, local directories, any hub id) and the error contract: a
`ShardwiseError` prints `shardwise <verb>: error: <message>` and exits 2, never a traceback.
What Hydra refuses before the verb runs (a typo'd key, a value of the wrong type, an option file
that does not exist, an override it cannot parse, a run directory it cannot create) follows the
same contract. In a `shardwise plan -m` sweep a refused combination is reported and the other
jobs still run; the sweep then exits 2.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from planner.config.reader import conf_dir, model_aliases, option_exists, profile_for, profile_names
from planner.errors import ShardwiseError, did_you_mean
from planner.files import names_existing


def resolve_model_name(name: str) -> str:
    """Profile name for a profile name or alias (case-insensitive); `auto` and unprofiled hub ids stay as they are."""
    from planner.model.hub import is_hub_id

    if name == "auto":
        return name
    found = profile_for(name)
    if found is None:
        if is_hub_id(name):
            return name
        raise _unknown_model(name)
    return found


def _unknown_model(name: str) -> ShardwiseError:
    choices = ", ".join(profile_names("model"))
    hint = did_you_mean(name, [*profile_names("model"), *model_aliases()])
    return ShardwiseError(
        f"unknown model {name!r}{hint}: not a profile ({choices}), model=auto, a local model directory or config.json, "
        "or a hub id ORG/NAME"
    )


def model_option(name: str) -> str:
    """The `model` group option for any model name, in this order: a profile name or alias (any case), auto,
    an existing local directory or config.json, a hub id `ORG/NAME`.

    Directories and hub ids are not files in conf/model: each becomes an option registered in Hydra's
    ConfigStore (`model=ORG/NAME` keeps its name; a directory is `dir/<name>-<hash>`), so `model=` works
    in sweeps (`-m model=gpt2,ORG/NAME,./dir`) like any profile, and `model.*` overrides still apply.
    """
    from planner.model.hub import is_hub_id

    if name == "auto" or profile_for(name) is not None:
        return resolve_model_name(name)
    path = Path(name).expanduser()
    if names_existing(path):
        import hashlib

        full = path.resolve()
        dir_name = (full.parent if full.is_file() else full).name or "model"
        # the option id must lex as a Hydra override: ASCII letters, digits, `_.-` only (the name shown is the real one)
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", dir_name)
        option = f"dir/{label}-{hashlib.sha1(str(full).encode()).hexdigest()[:8]}"
        return _register_model(option, name=dir_name, path=str(full))
    if is_hub_id(name):
        return _register_model(name, name=name, hub_id=name, description=f"{name} from the Hugging Face hub")
    raise _unknown_model(name)


def _register_model(option: str, **fields) -> str:
    from hydra.core.config_store import ConfigStore

    from planner.config.schema import ModelConfig

    group, _, leaf = f"model/{option}".rpartition("/")
    ConfigStore.instance().store(group=group, name=leaf, node=ModelConfig(**fields), package="model")
    return option


def resolve_hardware_name(name: str) -> str:
    if option_exists("hardware", name):
        return name
    choices = ", ".join(profile_names("hardware"))
    raise ShardwiseError(
        f"unknown hardware {name!r}{did_you_mean(name, profile_names('hardware'))}: choose one of {choices}"
    )


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
    if group == "model" and not wrapper and names_existing(value):
        names = [resolve(value)]  # one directory whose name holds a comma, not a sweep
    else:
        names = [resolve(v.strip()) for v in inner.split(",")]
    joined = ",".join(names)
    return f"{key}={wrapper.group(1)}({joined})" if wrapper else f"{key}={joined}"


_GROUPS = ("model", "hardware", "policy", "generation", "probe", "launch")


def refuse_rerun(argv: list[str]) -> None:
    """Hydra's `--experimental-rerun FILE` unpickles FILE, which runs any code a crafted pickle holds: refused.
    A run is repeated from its plan.json (`plan_file=`) or its `.hydra/overrides.yaml`, both data."""
    if any(a == "--experimental-rerun" or a.startswith("--experimental-rerun=") for a in argv):
        raise ShardwiseError(
            "--experimental-rerun unpickles its file, which can run any code: not accepted; repeat a run with "
            "plan_file=PLAN.json or the overrides in its .hydra/overrides.yaml"
        )


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
        key, _, value = arg.partition("=")
        if not key.lstrip("+~"):
            raise ShardwiseError(f"{arg!r} has no key before '=': write KEY=VALUE, e.g. policy.context_tokens=8192")
        if key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") and value.strip().strip("'\"") in ("", "???"):
            # Hydra would make a directory named "None" for ???, and use the working directory for ''
            raise ShardwiseError(f"{arg} names no directory: give one, e.g. {key}=outputs/mine (or leave it out)")
        arg = _rewrite_group_choice(arg, "model", model_option)
        arg = _rewrite_group_choice(arg, "hardware", resolve_hardware_name)
        out.append(arg)
    return out


def writable_run_dirs(args: list[str], config_name: str, cwd: str | None = None) -> list[str]:
    """`args`, with Hydra's run and sweep directories moved under the temp directory when the working directory
    is read-only: Hydra creates its run directory before any verb starts, and `plan json=true` or `probe`, which
    write nothing there, must not fail for it (a run directory left unused is removed again)."""
    import tempfile

    cwd = cwd or os.getcwd()
    given = {a.lstrip("+").partition("=")[0] for a in args}
    if os.access(cwd, os.W_OK) or {"hydra.run.dir", "hydra.sweep.dir"} & given:
        return args
    base = Path(tempfile.gettempdir()) / "shardwise-outputs" / config_name
    if not str(base).isascii() or set("'\\") & set(str(base)):
        return args  # a temp path Hydra cannot take quoted as it is: Hydra's own one-line refusal stands
    stamp = "${now:%Y-%m-%d_%H-%M-%S}_${run_id:}"
    return [*args, f"hydra.run.dir='{base}/run/{stamp}'", f"hydra.sweep.dir='{base}/multirun/{stamp}'"]


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


def _nearest_key(cause) -> str:
    """The did-you-mean for a key OmegaConf refused: the closest key of the node it was looked up in."""
    from omegaconf import DictConfig

    parent = getattr(cause, "parent_node", None)
    leaf = str(getattr(cause, "key", None) or "")
    if not leaf or not isinstance(parent, DictConfig):
        return ""
    full = str(getattr(cause, "full_key", None) or leaf)
    prefix = full[: -len(leaf)] if full.endswith(leaf) else ""
    return did_you_mean(leaf, [str(k) for k in parent.keys()]).replace("mean '", f"mean '{prefix}", 1)


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
                from planner.model.hub import is_hub_id

                group = (
                    "model"
                    if profile_for(override) is not None or is_hub_id(override)
                    else "hardware"
                    if override in profile_names("hardware")
                    else "KEY"
                )
                example = f"{group}={override}"
            return ShardwiseError(f"{override!r} is not an override: write KEY=VALUE, e.g. {example}")
        return ShardwiseError(
            f"cannot parse the override {override!r} ({_first_line(exc.message)}): quote a value with special "
            "characters, e.g. 'key=\"a value\"'"
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
                return ShardwiseError(f"unknown key {key}{_nearest_key(cause)}: {known or help_hint}")
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
        # a resolved copy, thrown away: OmegaConf.resolve(cfg) would store an escaped `\${x}` as the text `${x}`,
        # which the next read resolves a second time (a traceback, or the variable's value in a prompt or a key)
        OmegaConf.to_container(cfg, resolve=True)
    except failures as exc:
        key = getattr(exc, "full_key", None) or failing_key(cfg, "")
        where = f" of {key}" if key else ""
        raise ShardwiseError(
            f"cannot resolve the value{where} ({_first_line(getattr(exc, 'msg', None) or exc)[:200]}): "
            "check the ${...} interpolation (an environment variable it names may be unset)"
        ) from None
    # after resolving: missing_keys resolves too, and a bad ${...} has its own line above
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ShardwiseError(
            f"{missing[0]} has no value ({missing[0]}=??? marks a value that must be given): set {missing[0]}=VALUE"
        )


def _refusal(exc: BaseException, verb: str, task_started: bool) -> ShardwiseError | None:
    """One line for what Hydra refused before the task ran (composition, unwritable run directory), else None."""
    error = composition_error(exc, verb)
    if error is None and 'Could not detect "srun"' in str(exc):
        error = ShardwiseError(
            "a hydra/launcher=slurm_* or submitit_slurm launch needs a SLURM cluster and this machine has no "
            "`srun`: run it on a SLURM login node, or add launch.dry_run=true (without -m) to print the commands"
        )
    from hydra.errors import SearchPathException

    if error is None and isinstance(exc, SearchPathException):  # --config-dir naming no directory
        error = ShardwiseError(f"{_first_line(exc).rstrip('.')}: give --config-dir an existing directory of configs")
    if error is None and isinstance(exc, OSError) and not task_started:
        where = exc.filename if exc.filename is not None else "the run directory"
        error = ShardwiseError(
            f"cannot create {str(where)!r} ({exc.strerror or exc}): "
            "run shardwise from a writable directory or set hydra.run.dir=DIR"
        )
    return error


@contextmanager
def _hydra_raises():
    """Have Hydra raise what it would otherwise print as a multi-line report and exit 1 with.

    HYDRA_FULL_ERROR=1 is Hydra's documented switch for that; run_verb then turns composition
    errors into one line (exit 2) and lets anything else, a bug, raise with its traceback. The
    user's own setting is restored afterwards.
    """
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


@contextmanager
def _compose_once(args: list[str]):
    """Have Hydra compose the config once per run, not twice.

    hydra.main composes the whole config a first time only to read `hydra.mode` (Hydra.get_mode),
    then again to run: half of a cold `shardwise plan`. No file in conf/ sets `hydra.mode`, so it
    comes from the command line alone (`-m`, or a `hydra.mode=` override); without such an override
    get_mode answers None ("decide from -m") without composing. With one, Hydra's own get_mode runs.
    """
    from hydra._internal.hydra import Hydra

    if any(arg.lstrip("+~").startswith("hydra.mode=") for arg in args):
        yield
        return
    original = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = original


_FAILED_JOBS: list[str] = []


def run_verb(verb: str, config_name: str, task: Callable, argv: list[str]) -> None:
    """Run `task(cfg)` as the Hydra app `conf/<config_name>.yaml` with `argv` as overrides."""
    import hydra

    from planner.config import bounds, schema
    from planner.config.rundir import register_resolvers

    schema.register()
    register_resolvers()
    try:
        refuse_rerun(argv)
        args = writable_run_dirs(normalize_overrides(argv), config_name)
    except ShardwiseError as exc:
        fail(verb, str(exc))
    args = _with_run_dir_record(args)
    task_started: list[bool] = []

    def guarded(cfg):
        task_started.append(True)
        try:
            resolve_or_refuse(cfg)  # first: the range rules below read values, and a failing ${...} is one line
            schema.validate(cfg)
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
    _FAILED_JOBS.clear()
    try:
        with _hydra_raises(), _compose_once(args):
            app()
    except Exception as exc:
        error = exc if isinstance(exc, ShardwiseError) else _refusal(exc, verb, bool(task_started))
        if error is None:
            raise
        fail(verb, str(error))
    finally:
        sys.argv = saved
    if _FAILED_JOBS:
        fail(verb, f"{len(_FAILED_JOBS)} job(s) of the sweep failed (see the errors above)")


_RECORD_RUN_DIR = "+hydra.callbacks.shardwise_run_dir._target_=planner.config.rundir.RecordRunDir"


def _with_run_dir_record(args: list[str]) -> list[str]:
    """`args` with the callback that records what was at hydra.run.dir before Hydra created it (the clean-up
    removes only what the run made). Placed next to the first override: Hydra's parser takes overrides as one
    block, and `--info` takes the word after it as its value."""
    first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), 0)
    return [*args[:first], _RECORD_RUN_DIR, *args[first:]]


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
