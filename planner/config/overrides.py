"""What the verbs' overrides mean before and after Hydra composes them: names resolved, refusals in one line.

`normalize_overrides` resolves model names (profiles and their hub-id aliases, local directories, any hub id)
and hardware names before Hydra sees them; `composition_error` turns what Hydra refuses (a typo'd key, a value
of the wrong type, an option file that does not exist, an override it cannot parse) into one ShardwiseError;
`check_composed` checks a composed config (interpolations, schema, bounds); `hydra_app` wraps a task as the
Hydra app of `conf/<name>.yaml`. The verbs' Hydra app framework (shardwise/verbs/app.py) and
`make_plan` (planner/config/compose.py) both use them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from planner.config.reader import conf_dir, model_aliases, option_exists, profile_for, profile_names
from planner.errors import ShardwiseError, did_you_mean
from planner.files import expand_user, names_existing, resolved


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
    path = expand_user(name)
    if names_existing(path):
        import hashlib

        full = resolved(path)
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


def _quoted_names(key: str, value: str) -> list[str] | None:
    """The names in a group choice that uses Hydra's quotes (`'./a b'`, `'a,b',gpt2`, `choice('x y',z)`), read by
    Hydra's own override parser; None when it does not parse as plain names (Hydra then reports it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, QuotedString
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(f"{key}={value}").value()
    except HydraException:
        return None
    names = parsed.list if isinstance(parsed, ChoiceSweep) else [parsed]
    names = [name.text if isinstance(name, QuotedString) else name for name in names]  # a sweep keeps the quotes
    return names if all(isinstance(name, str) for name in names) else None


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
    quoted = _quoted_names(key, value) if "'" in value or '"' in value else None
    if quoted is not None:
        names = [resolve(v) for v in quoted]  # `model='./my model'`: Hydra's quoting, as any other value takes
    elif group == "model" and not wrapper and names_existing(value):
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


def flag(cfg, key: str) -> bool:
    """A top-level true/false option (json, replan, stream, ...); anything else is a one-line error."""
    value = cfg.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ShardwiseError(f"{key}={value!r} is not true or false: set {key}=true or {key}=false")


def path_option(cfg, key: str):
    """A top-level file path option (out=...) as a Path, None when unset; a list, number or true/false is a one-line
    error (`out=[a,b]` or `out=true` would otherwise name a file "['a', 'b']" or "True")."""
    value = cfg.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ShardwiseError(
            f"{key}={value!r} is not a file path: give {key}=FILE (quote a name Hydra would read as a value: "
            f"{key}='5.json', {key}='a,b.json')"
        )
    path = expand_user(value)
    if value.endswith(("/", os.sep)) and not path.is_dir():
        # `out=nd/` names a directory; writing a file called "nd" instead would surprise whoever typed it
        raise ShardwiseError(f"{key}={value} names a directory that does not exist: create it, or give {key}=FILE")
    return path


def first_line(value) -> str:
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
            f"cannot parse the override {override!r} ({first_line(exc.message)}): quote a value with special "
            "characters, e.g. 'key=\"a value\"'"
        )
    if isinstance(exc, MissingConfigException):
        what = first_line(exc)
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
            reason = first_line(getattr(cause, "msg", None) or cause)
            fix = f"write a list, e.g. {key}='[a, b]'" if "ListConfig" in reason else help_hint
            return ShardwiseError(f"bad value for {key} ({reason}): {fix}")
        return ShardwiseError(f"{first_line(exc).rstrip('.')}: {help_hint}")
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
            f"cannot resolve the value{where} ({first_line(getattr(exc, 'msg', None) or exc)[:200]}): "
            "check the ${...} interpolation (an environment variable it names may be unset)"
        ) from None
    # after resolving: missing_keys resolves too, and a bad ${...} has its own line above
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ShardwiseError(
            f"{missing[0]} has no value ({missing[0]}=??? marks a value that must be given): set {missing[0]}=VALUE"
        )


def check_composed(cfg, config_name: str) -> None:
    """A composed config checked before any verb reads it: interpolations, then the schema, then the bounds."""
    from planner.config import bounds, schema

    resolve_or_refuse(cfg)  # first: the range rules read values, and a failing ${...} is one line
    schema.validate(cfg)
    bounds.check(cfg, conf_dir() / f"{config_name}.yaml")


def hydra_app(config_name: str, task: Callable):
    """`task` as the Hydra app whose primary config is conf/<config_name>.yaml (schemas and resolvers registered)."""
    import hydra

    from planner.config import schema
    from planner.config.fastyaml import install
    from planner.config.rundir import register_resolvers

    schema.register()
    register_resolvers()
    install()  # OmegaConf's YAML rules on libyaml's parser
    return hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(task)
