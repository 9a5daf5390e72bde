"""The config zoo, one test per file: every option of every group composes and validates, every
model profile builds on the meta device with its public parameter count, names resolve, fallback
chains end, and hardware tiers carry the GPU facts nvidia-smi prints.

Run: pytest -q tests/test_config.py
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from planner.config import schema
from planner.config.app import conf_dir, resolve_model_name
from planner.errors import ShardwiseError

CONF = conf_dir()
REFERENCE_MODELS = Path(__file__).parent / "data" / "reference_models"

SCHEMAS = {
    "model": schema.ModelConfig,
    "hardware": schema.HardwareConfig,
    "policy": schema.PolicyConfig,
    "generation": schema.GenerationConfig,
    "probe": schema.ProbeSettings,
}
PRIMARY = {"probe": "probe"}  # group -> primary config that lists it; every other group is in plan.yaml

# Public facts: exact parameter counts (tied weights once) of the published checkpoints.
# gpt2 / gpt-oss from the reference README; the rest as the model cards and safetensors indexes give them.
PUBLIC_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "gpt-oss-20b": 20_914_757_184,
    "gpt-oss-120b": 116_829_156_672,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-3.2-1b": 1_235_814_400,
    "mistral-7b": 7_248_023_552,
    "mixtral-8x7b": 46_702_792_704,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-8b": 8_190_735_360,
    "qwen3-30b-a3b": 30_532_122_624,
    "gemma-2-9b": 9_241_705_984,
    "gemma-3-1b": 999_885_952,
    "phi-3-mini": 3_821_079_552,
    "mistral-small-3": 23_572_403_200,
    "phi-4": 14_659_507_200,
    "qwen2.5-7b-awq": 7_615_616_512,  # logical parameters, as qwen2.5-7b (the AWQ packing changes bytes, not counts)
    "qwen3-235b-a22b-fp8": 235_093_634_560,
    # Counts of what the CausalLM loads; the published totals round them (671B; 80B; 109B with the vision
    # tower) and the checkpoints also hold layers transformers does not build (DeepSeek's MTP layer,
    # Qwen3-Next's mtp.*, Llama 4's vision encoder).
    "deepseek-v3": 671_026_404_352,
    "qwen3-next-80b-a3b": 79_674_391_296,
    "llama-4-scout": 107_769_861_120,
}

# Public facts: nvidia-smi name -> (memory.total MiB as nvidia-smi prints it, compute capability).
NVIDIA_SMI = {
    "Tesla T4": (15360, "7.5"),
    "Tesla V100-SXM2-16GB": (16384, "7.0"),
    "Tesla V100-SXM2-32GB": (32768, "7.0"),
    "NVIDIA A10G": (23028, "8.6"),
    "NVIDIA L4": (23034, "8.9"),
    "NVIDIA L40S": (46068, "8.9"),
    "NVIDIA GeForce RTX 3080": (10240, "8.6"),
    "NVIDIA GeForce RTX 3090": (24576, "8.6"),
    "NVIDIA GeForce RTX 4090": (24564, "8.9"),
    "NVIDIA A100-SXM4-40GB": (40960, "8.0"),
    "NVIDIA A100-SXM4-80GB": (81920, "8.0"),
    "NVIDIA H100 80GB HBM3": (81559, "9.0"),
    "NVIDIA H200": (143771, "9.0"),
    "NVIDIA B200": (183359, "10.0"),
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def model_profiles() -> list[str]:
    """Profiles that describe a real model (model=auto is a choice, not a model)."""
    return [name for name in options("model") if raw(CONF / "model" / f"{name}.yaml").get("architecture")]


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def compose_with(overrides: list[str], config_name: str = "plan", config_dir: Path = CONF):
    schema.register()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir), job_name="test_config"):
        cfg = compose(config_name=config_name, overrides=overrides)
    schema.validate(cfg)  # what every verb runs after composing
    return cfg


def error_text(exc: BaseException) -> str:
    """The message of an exception and of every exception it was raised from."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


_profiles: dict[str, dict] = {}


def profile(name: str) -> dict:
    """The composed model profile as a fresh plain dict (composed once; transformers mutates what it is given)."""
    if name not in _profiles:
        cfg = compose_with([f"model={name}"])
        _profiles[name] = OmegaConf.to_container(cfg.model, resolve=True)
    return copy.deepcopy(_profiles[name])


_meta_models: dict[str, object] = {}


def meta_model(name: str):
    """The profile's architecture built by transformers on the meta device (built once per session)."""
    if name not in _meta_models:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        arch = dict(profile(name)["architecture"])
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
        with torch.device("meta"):
            _meta_models[name] = AutoModelForCausalLM.from_config(config)
    return _meta_models[name]


# --- composition and validation ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "group,option", [(group, option) for group in SCHEMAS for option in options(group)], ids=lambda v: str(v)
)
def test_every_option_composes_and_validates_against_its_schema(group, option):
    cfg = compose_with([f"{group}={option}"], config_name=PRIMARY.get(group, "plan"))
    validated = OmegaConf.to_object(cfg[group])
    assert isinstance(validated, SCHEMAS[group])
    if group == "model":
        assert validated.name == option, "a profile's name must be its file name"


@pytest.mark.parametrize("group", ["model", "hardware"])
def test_every_option_has_a_one_line_description(group):
    for option in options(group):
        description = raw(CONF / group / f"{option}.yaml").get("description")
        assert description and "\n" not in description, f"{group}/{option}.yaml needs a one-line description"


def config_files() -> list:
    """Every option file of every group."""
    return sorted(p for group in SCHEMAS for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("path", config_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_key_in_an_option_file_has_a_comment(path):
    """Top-level keys everywhere, nested keys too outside model profiles (architecture is config.json verbatim)."""
    key_line = re.compile(r"^\w+:" if path.parent.name == "model" else r"^\s*\w+:")
    missing = [
        line
        for line in path.read_text().splitlines()
        if key_line.match(line) and not line.startswith("defaults:") and "#" not in line
    ]
    assert missing == [], f"{path.name}: keys without a comment: {missing}"


@pytest.mark.parametrize(
    "file,schema_class",
    [("policy/default.yaml", schema.PolicyConfig), ("generation/default.yaml", schema.GenerationConfig)],
)
def test_default_files_list_every_schema_field_with_its_default(file, schema_class):
    listed = raw(CONF / file)
    listed.pop("defaults")
    expected = OmegaConf.to_container(OmegaConf.structured(schema_class), enum_to_str=True)
    assert listed == expected


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.hub_idd=someone/model", "hub_idd"),
        ("+model.hub_idd=someone/model", "hub_idd"),
        ("hardware.memroy_mib=1024", "memroy_mib"),
        ("policy.sesions=4", "sesions"),
        ("policy.overhead.cuda_contxt_mib=1", "cuda_contxt_mib"),
        ("generation.max_token=5", "max_token"),
    ],
)
def test_typod_key_in_an_override_is_rejected_naming_the_key(override, key):
    with pytest.raises((HydraException, OmegaConfBaseException, ShardwiseError)) as caught:
        compose_with([override])
    assert key in error_text(caught.value)


def test_typod_key_in_a_profile_file_is_rejected_naming_the_key(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    text = (conf / "model" / "gpt2.yaml").read_text().replace("fallback: null", "falback: null")
    (conf / "model" / "gpt2_typo.yaml").write_text(text)
    with pytest.raises((HydraException, OmegaConfBaseException)) as caught:
        compose_with(["model=gpt2_typo"], config_dir=conf)
    assert "falback" in error_text(caught.value)


@pytest.mark.parametrize(
    "override",
    [
        "hardware.memory_mib=lots",
        "hardware.count=two",
        "hardware.interconnect=infiniband",
        "policy.sessions=1.5",
        "policy.allow_cpu_offload=maybe",
        "policy.strategy=diagonal",
        "policy.dtype=int3",
        "policy.overhead.fragmentation_fraction=some",
        "generation.temperature=hot",
        "model.trust_remote_code=perhaps",
    ],
)
def test_wrong_typed_value_is_rejected(override):
    key = override.split("=")[0].rsplit(".", 1)[-1]
    with pytest.raises((HydraException, OmegaConfBaseException, ShardwiseError)) as caught:
        compose_with([override])
    assert key in error_text(caught.value)


# --- model profiles ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", model_profiles())
def test_profile_builds_on_meta_device_with_the_public_parameter_count(name):
    assert name in PUBLIC_PARAMS, f"add the public parameter count of {name} to PUBLIC_PARAMS"
    params = sum(p.numel() for p in meta_model(name).parameters())  # tied weights are yielded once
    assert params == PUBLIC_PARAMS[name]


@pytest.mark.parametrize("name", model_profiles())
def test_profile_class_and_dtype_match_what_transformers_builds(name):
    arch = profile(name)["architecture"]
    model = meta_model(name)
    assert type(model).__name__ == arch["architectures"][0]
    assert profile(name)["dtype"] in {"float32", "bfloat16", "float16"}
    assert profile(name)["trust_remote_code"] is False


@pytest.mark.parametrize(
    "name", [n for n in model_profiles() if "layer_types" in raw(CONF / "model" / f"{n}.yaml")["architecture"]]
)
def test_written_out_layer_types_equal_what_transformers_derives(name):
    """A profile may list layer_types for the planner, but never a pattern transformers would not build."""
    from transformers import AutoConfig

    arch = dict(profile(name)["architecture"])
    listed = arch.pop("layer_types")
    derived = AutoConfig.for_model(arch.pop("model_type"), **arch).layer_types
    assert listed == derived
    assert len(listed) == arch["num_hidden_layers"]


def reference_files() -> list[Path]:
    return sorted(REFERENCE_MODELS.glob("*.json"))


@pytest.mark.parametrize("path", reference_files(), ids=lambda p: p.stem)
def test_profile_carries_the_published_config_values(path):
    published = json.loads(path.read_text())
    hub_id = path.stem.replace("__", "/")
    arch = profile(resolve_model_name(hub_id))["architecture"]
    dropped = {"initializer_range", "transformers_version", "task_specific_params", "torch_dtype"}
    differing = {k: (v, arch.get(k)) for k, v in published.items() if k not in dropped and arch.get(k) != v}
    assert differing == {}


def test_public_counts_cover_exactly_the_shipped_profiles():
    assert set(model_profiles()) == set(PUBLIC_PARAMS)


@pytest.mark.parametrize("name", model_profiles())
def test_hub_id_and_aliases_resolve_to_the_profile(name):
    data = profile(name)
    hub_ids = [data["hub_id"], *data["aliases"]]
    assert data["hub_id"], f"{name} needs a hub_id"
    for hub_id in hub_ids:
        assert resolve_model_name(hub_id) == name
        assert resolve_model_name(hub_id.upper()) == name  # hub ids are case-insensitive


def test_no_hub_id_is_claimed_by_two_profiles():
    owners: dict[str, list[str]] = {}
    for name in model_profiles():
        data = raw(CONF / "model" / f"{name}.yaml")
        for hub_id in [data["hub_id"], *(data.get("aliases") or [])]:
            owners.setdefault(hub_id.lower(), []).append(name)
    assert {h: o for h, o in owners.items() if len(o) > 1} == {}


@pytest.mark.slow
@pytest.mark.parametrize("name", model_profiles())
def test_fallback_chain_names_smaller_existing_profiles_and_ends(name):
    seen = [name]
    current = name
    while (fallback := profile(current)["fallback"]) is not None:
        assert fallback in model_profiles(), f"{current}: fallback {fallback!r} is not a profile"
        assert fallback not in seen, f"fallback cycle: {seen + [fallback]}"
        assert PUBLIC_PARAMS[fallback] < PUBLIC_PARAMS[current], f"{current} falls back to a larger {fallback}"
        seen.append(fallback)
        current = fallback
    assert len(seen) <= len(model_profiles())


def test_quantized_profiles_say_so_in_their_architecture():
    for name in model_profiles():
        data = profile(name)
        shipped = (data["architecture"].get("quantization_config") or {}).get("quant_method")
        assert data["quantization"] == shipped, (
            f"{name}: quantization {data['quantization']!r} vs config.json {shipped!r}"
        )


# --- hardware tiers ---------------------------------------------------------------------------


def tiers() -> list[str]:
    return [name for name in options("hardware") if raw(CONF / "hardware" / f"{name}.yaml").get("kind") == "tier"]


@pytest.mark.slow
@pytest.mark.parametrize("name", tiers())
def test_tier_memory_and_compute_capability_are_the_public_nvidia_smi_facts(name):
    hw = OmegaConf.to_object(compose_with([f"hardware={name}"]).hardware)
    assert hw.name in NVIDIA_SMI, f"{name}: unknown nvidia-smi name {hw.name!r}"
    assert (hw.memory_mib, hw.compute_capability) == NVIDIA_SMI[hw.name]
    assert 8 * 1024 <= hw.memory_mib <= 256 * 1024
    assert re.fullmatch(r"\d+\.\d", hw.compute_capability) and 7.0 <= float(hw.compute_capability) <= 12.0
    assert hw.count >= 1 and hw.nodes >= 1
    assert 16 <= hw.host_ram_gib <= 4096 and 4 <= hw.cpu_count <= 512
    # host RAM holds every GPU's worth of weights, so a checkpoint can be staged through it
    assert hw.host_ram_gib * 1024 >= hw.memory_mib * hw.count


@pytest.mark.slow
@pytest.mark.parametrize("name", tiers())
def test_nvlink_only_on_sxm_data_center_parts(name):
    hw = OmegaConf.to_object(compose_with([f"hardware={name}"]).hardware)
    consumer_or_pcie = "GeForce" in hw.name or hw.name in {"Tesla T4", "NVIDIA A10G", "NVIDIA L4", "NVIDIA L40S"}
    assert hw.interconnect == (schema.Interconnect.pcie if consumer_or_pcie else schema.Interconnect.nvlink)


def test_use_case_tiers_of_the_seed_exist_with_their_shapes():
    shapes = {}
    for name in ["development", "production_small", "production_large", "cpu_only"]:
        hw = OmegaConf.to_object(compose_with([f"hardware={name}"]).hardware)
        shapes[name] = (hw.kind.value, hw.name, hw.count, hw.interconnect.value if hw.kind.value == "tier" else None)
    assert shapes == {
        "development": ("tier", "Tesla T4", 1, "pcie"),
        "production_small": ("tier", "NVIDIA A100-SXM4-40GB", 1, "nvlink"),
        "production_large": ("tier", "NVIDIA A100-SXM4-80GB", 4, "nvlink"),
        "cpu_only": ("cpu", "", 1, None),
    }


def test_snapshot_tier_composes_without_a_path_and_takes_one_on_the_command_line():
    assert compose_with(["hardware=snapshot"]).hardware.path is None
    assert compose_with(["hardware=snapshot", "hardware.path=box.json"]).hardware.path == "box.json"


def test_a_typod_serve_key_is_refused_by_the_registered_serve_schema():
    with pytest.raises(HydraException) as caught:
        compose_with(["hardware=cpu", "serve.prot=8000"], config_name="serve")
    assert "prot" in str(caught.value.__cause__ or caught.value)


@pytest.mark.parametrize(
    "config_name,override,needle",
    [
        ("serve", "serve.port=70000", "serve.port=70000 is out of range"),
        ("serve", "serve.max_queue=-1", "serve.max_queue=-1 is out of range"),
        ("launch", "launch.master_port=0", "launch.master_port=0 is out of range"),
        ("launch", "launch.slurm.timeout_min=0", "launch.slurm.timeout_min=0 is out of range"),
    ],
)
def test_verb_blocks_are_range_checked_once_after_composition(config_name, override, needle):
    with pytest.raises(ShardwiseError, match=re.escape(needle)):
        compose_with(["hardware=cpu", override], config_name=config_name)
