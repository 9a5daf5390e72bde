"""Reading conf/ faster must not read it differently: the C YAML parser and the plain `architecture` block.

planner.config.fastyaml puts OmegaConf's own loader rules on libyaml's parser; planner.config.reader's
`profile_spec` merges a profile onto the schema without its `architecture` block. Each is checked here
against the slow way on every file it applies to, and on the inputs the slow way refuses.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import yaml
from omegaconf import OmegaConf, _utils
from omegaconf.errors import OmegaConfBaseException

from planner.config import fastyaml, reader
from planner.config.reader import conf_dir, load_profile, profile_names, profile_spec
from planner.model.source import spec_from_config

pytestmark = pytest.mark.skipif(not yaml.__with_libyaml__, reason="this PyYAML has no libyaml: nothing is patched")


@pytest.fixture
def loaders():
    """OmegaConf's own loader class (as it was before any install()) and its C twin."""
    python_loader = fastyaml.omegaconf_loader()
    return python_loader, fastyaml.c_loader(python_loader)


def _yaml_files() -> list[Path]:
    hydra_conf = Path(hydra.__file__).parent
    return sorted(conf_dir().rglob("*.yaml")) + sorted(hydra_conf.rglob("*.yaml"))


def test_every_config_file_loads_to_the_same_values(loaders):
    python_loader, c_loader = loaders
    files = _yaml_files()
    assert len(files) > 60  # conf/ and Hydra's own
    for path in files:
        text = path.read_text()
        slow, fast = yaml.load(text, Loader=python_loader), yaml.load(text, Loader=c_loader)
        assert fast == slow and repr(fast) == repr(slow), path  # repr: 1 vs 1.0 vs True are told apart


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\na: 2\n",  # a duplicate key
        "a: [1,\n",  # unclosed flow
        "a: !!python/object/apply:os.system ['true']\n",  # no code from a config file
        "a: b: c\n",
    ],
)
def test_the_c_loader_refuses_what_omegaconf_refuses(loaders, text):
    """The same error class at the same place; libyaml words some syntax errors its own way ("mapping values are not
    allowed in this context" for PyYAML's "... here"), so the wording is not compared."""
    python_loader, c_loader = loaders
    errors = []
    for loader in (python_loader, c_loader):
        with pytest.raises(yaml.YAMLError) as caught:
            yaml.load(text, Loader=loader)
        mark = caught.value.problem_mark
        errors.append((type(caught.value), mark.line, mark.column))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("text", ["x: 1e9\n", "x: 2001-12-14\n", "x: .inf\n", "x: 0x1F\n", "x: yes\n", "x: 1_000\n"])
def test_omegaconf_scalar_rules_hold(loaders, text):
    python_loader, c_loader = loaders
    slow, fast = yaml.load(text, Loader=python_loader), yaml.load(text, Loader=c_loader)
    assert repr(fast) == repr(slow)


def test_install_switches_omegaconf_and_keeps_composition(monkeypatch, loaders):
    from planner.config.compose import compose

    python_loader, c_loader = loaders
    assert fastyaml.install()
    assert _utils.get_yaml_loader().__mro__[1].__name__ == "CParser"
    fast = OmegaConf.to_yaml(compose("plan", ["model=gpt-oss-120b", "hardware=h100_80gb"]))
    monkeypatch.setattr(_utils, "get_yaml_loader", lambda: python_loader)
    slow = OmegaConf.to_yaml(compose("plan", ["model=gpt-oss-120b", "hardware=h100_80gb"]))
    assert fast == slow


def test_profile_spec_equals_the_schema_merged_profile_for_every_profile():
    names = [n for n in profile_names("model") if n != "auto"]
    assert len(names) >= 20
    for name in names:
        assert profile_spec(name) == spec_from_config(load_profile(name)), name


def test_profile_spec_hands_out_its_own_copy():
    first = profile_spec("gpt-oss-20b")
    first.architecture["quantization_config"]["quant_method"] = "edited"
    first.architecture["num_hidden_layers"] = 1
    again = profile_spec("gpt-oss-20b")
    assert again.architecture["quantization_config"]["quant_method"] == "mxfp4"
    assert again.architecture["num_hidden_layers"] == 24


ARCH = (
    "architecture:\n  model_type: gpt2\n  n_layer: 2\n  n_embd: 64\n  n_head: 2\n"
    "  vocab_size: 100\n  n_positions: 128\n"
)


CACHED = (reader._read, reader._profile_fields, reader.model_aliases, reader.load_profile)


@pytest.fixture
def custom_profile(monkeypatch, tmp_path):
    """Write conf/model/custom.yaml into a config tree of its own; the reader's caches are emptied around it."""

    def write(text: str) -> None:
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "custom.yaml").write_text(text)
        monkeypatch.setattr(reader, "conf_dir", lambda: tmp_path)
        for cached in CACHED:
            cached.cache_clear()

    yield write
    for cached in CACHED:
        cached.cache_clear()


def test_a_typo_in_a_profile_is_refused_the_same_way(custom_profile):
    custom_profile("name: custom\ndtype: float32\nfalback: gpt2\n" + ARCH)
    with pytest.raises(OmegaConfBaseException) as fast:
        profile_spec("custom")
    with pytest.raises(OmegaConfBaseException) as slow:
        load_profile("custom")
    assert type(fast.value) is type(slow.value) and "falback" in str(fast.value)


def test_a_profile_with_interpolations_takes_the_resolving_way(custom_profile):
    custom_profile("name: custom\ndtype: float32\nhub_id: ${.name}\n" + ARCH)
    assert reader._profile_fields("custom") is None
    spec = profile_spec("custom")
    assert spec.source == "custom" and spec.architecture["n_layer"] == 2


def test_an_architecture_that_is_no_mapping_is_refused_by_the_schema(custom_profile):
    custom_profile("name: custom\ndtype: float32\narchitecture: [1, 2]\n")
    assert reader._profile_fields("custom") is None
    with pytest.raises(OmegaConfBaseException):
        profile_spec("custom")
