"""OmegaConf's YAML rules on libyaml's C parser: the config files of a run parsed ~7x faster.

Hydra reads every option file through `OmegaConf.load`, which parses with PyYAML's pure-Python
loader: about a third of composing a `shardwise plan` config. PyYAML ships libyaml's C parser
(`yaml.cyaml.CParser`) in its wheels, and its constructor and resolvers stay Python, so OmegaConf's own
loader class (its float rule, no timestamps, its duplicate-key check, its Path tags) can keep all
of that and take the C parser underneath. `install()` makes OmegaConf's `get_yaml_loader` return
that class; nothing is re-typed from OmegaConf. Without libyaml (a PyYAML built without it) or with
an OmegaConf that no longer has `get_yaml_loader`, nothing changes.

Why a patch: neither OmegaConf nor Hydra has a setting for the loader. tests/test_config_reading.py
checks that both loaders give the same values (every file in conf/ and Hydra's own) and the same
refusals.
"""

from __future__ import annotations

from functools import cache


def c_loader(python_loader: type) -> type | None:
    """`python_loader` (a SafeLoader subclass) with libyaml's parser underneath; None without libyaml."""
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return None
    from yaml.cyaml import CParser

    class CLoader(CParser, python_loader):
        def __init__(self, stream):
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    CLoader.__name__ = CLoader.__qualname__ = f"C{python_loader.__name__}"
    return CLoader


@cache
def omegaconf_loader() -> type | None:
    """OmegaConf's own (pure-Python) loader class, as its `get_yaml_loader` gave it before `install()`."""
    from omegaconf import _utils

    original = getattr(_utils, "get_yaml_loader", None)
    return original() if original is not None else None


@cache
def install() -> bool:
    """Have OmegaConf (and so Hydra) load YAML through the C parser; True when it now does. Idempotent."""
    from omegaconf import _utils

    python_loader = omegaconf_loader()
    fast = c_loader(python_loader) if python_loader is not None else None
    if fast is None:
        return False
    _utils.get_yaml_loader = lambda: fast
    return True
