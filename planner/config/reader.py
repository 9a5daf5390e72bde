"""The one reader of conf/ outside Hydra's own composition: option files through OmegaConf, cached.

Model aliases, profiles loaded by name (policy.candidates, a profile's fallback, `serve.models`),
the benchmarks' tables and the launcher's architecture look-up all come through here, so a
profile is read the same way everywhere: its `defaults:` list dropped, merged onto the schema.
"""

from __future__ import annotations

import copy
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


def profile_names(group: str) -> list[str]:
    """Option names of a config group (the file names in conf/<group>/)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def option_exists(group: str, name: str) -> bool:
    return (conf_dir() / group / f"{name}.yaml").is_file()


@cache
def _read(group: str, name: str):
    from omegaconf import OmegaConf

    from planner.config.fastyaml import install

    install()
    node = OmegaConf.load(conf_dir() / group / f"{name}.yaml")
    node.pop("defaults", None)
    OmegaConf.set_readonly(node, True)  # shared by every caller through the cache
    return node


def read_option(group: str, name: str) -> dict:
    """One option file of a group as plain data, its Hydra `defaults:` list dropped."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(_read(group, name), resolve=True)


def _top_level_entries(text: str, keys: tuple[str, ...]) -> str:
    """The lines of `keys` (a top-level key and its indented continuation) from one YAML file's text.

    Why by hand: aliasing one `model=` name must not parse all 25 profiles (their `architecture`
    blocks are most of the bytes, and OmegaConf nodes cost ~50 ms each); only these lines are
    handed to the YAML parser.
    """
    kept: list[str] = []
    keeping = False
    for line in text.splitlines():
        if line[:1] not in (" ", "\t", "#", ""):  # a new top-level key (or document marker)
            keeping = line.split(":", 1)[0].strip() in keys
        if keeping:
            kept.append(line)
    return "\n".join(kept)


@cache
def model_aliases() -> dict[str, str]:
    """Lower-cased hub id (and profile name) -> profile name, from conf/model/*.yaml (`hub_id`, `aliases`)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    aliases: dict[str, str] = {}
    for name in profile_names("model"):
        aliases[name.lower()] = name
        text = (conf_dir() / "model" / f"{name}.yaml").read_text()
        entries = yaml.load(_top_level_entries(text, ("hub_id", "aliases")), Loader=loader) or {}
        for hub_id in [entries.get("hub_id"), *(entries.get("aliases") or [])]:
            if hub_id:
                aliases[str(hub_id).lower()] = name
    return aliases


def profile_for(name: str) -> str | None:
    """The profile a model name means (a profile name or hub id, any case), or None.

    A profile's own file name is found without reading any profile; only other names scan the hub ids.
    """
    lowered = str(name).lower()
    for profile in profile_names("model"):
        if profile.lower() == lowered:
            return profile
    return model_aliases().get(lowered)


@cache
def load_profile(name: str):
    """A model profile by name or hub id (policy.candidates, a profile's fallback), validated against the schema.

    A hub id that no profile names gives a profile-less node that plans from the hub (planner.model.hub).
    """
    from omegaconf import OmegaConf

    from planner.config.schema import ModelConfig
    from planner.model.hub import is_hub_id

    profile = profile_for(name)
    if profile is None and is_hub_id(str(name)):
        return OmegaConf.structured(ModelConfig(name=str(name), hub_id=str(name)))
    if profile in (None, "auto") or not option_exists("model", profile):
        choices = ", ".join(p for p in profile_names("model") if p != "auto")
        raise ShardwiseError(
            f"model profile {name!r} (in policy.candidates or a profile's fallback) does not exist: "
            f"choose from {choices}"
        )
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), _read("model", profile))


def profile_spec(name: str):
    """The ModelSpec of a shipped profile: what the planner core is handed to load fallbacks and candidates."""
    from planner.model.source import spec_from_config

    profile = profile_for(name)
    fields = _profile_fields(profile) if profile not in (None, "auto") and option_exists("model", profile) else None
    if fields is None:
        return spec_from_config(load_profile(name))
    return spec_from_config(copy.deepcopy(fields))  # each caller its own: the cached dict is never handed out


@cache
def _profile_fields(profile: str) -> dict | None:
    """A profile checked against the schema as `load_profile` does, but with its `architecture` block left plain
    (None for a file with `${...}` interpolations, which take `load_profile`'s way).

    Why: `architecture` is config.json, hundreds of values typed only as a dict in the schema; as OmegaConf nodes
    it is most of the ~25 ms a profile costs, and the planner turns it straight back into a dict (a plan of
    gpt-oss-120b loads three fallback profiles). The other fields are merged onto the schema as before, so a
    typo'd key or a wrong type is the same error; the architecture is checked by planner.model.config_check.
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf._utils import get_yaml_loader

    from planner.config.fastyaml import install
    from planner.config.schema import ModelConfig

    text = (conf_dir() / "model" / f"{profile}.yaml").read_text()
    if "${" in text:
        return None
    install()
    data = yaml.load(text, Loader=get_yaml_loader()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("architecture", {}), dict | None):
        return None  # not a mapping: the schema's own refusal, through load_profile
    data.pop("defaults", None)
    architecture = data.pop("architecture", None)
    checked = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ModelConfig), data), resolve=True)
    return {**checked, "architecture": architecture if architecture is not None else {}}


def profile_architecture(name: str) -> dict | None:
    """A shipped profile's config.json numbers, or None when no profile has that name."""
    if not option_exists("model", name):
        return None
    return read_option("model", name).get("architecture") or None


def write_option(group: str, name: str, text: str) -> Path:
    """Write a generated option file, conf/<group>/<name>.yaml (the SLURM launcher presets); its path back."""
    folder = conf_dir() / group
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    _read.cache_clear()
    return path
