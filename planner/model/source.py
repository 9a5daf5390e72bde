"""Where a model's architecture comes from: a shipped profile, or a local config.json / model directory."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from planner.errors import ShardwiseError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # hub id or local path
    architecture: dict
    shipped_dtype: str
    quantization: str | None
    fallback: str | None
    trust_remote_code: bool
    chat_template: str | None
    model_dir: str | None  # local directory (safetensors headers, tokenizer)


_DTYPE_NAMES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
}


def _read_config(path: Path) -> tuple[dict, Path | None]:
    if path.is_dir():
        config_path, model_dir = path / "config.json", path
    else:
        config_path, model_dir = path, path.parent
    if not path.exists():
        raise ShardwiseError(f"model.path {str(path)!r} does not exist: give a model directory or its config.json")
    if not config_path.is_file():
        raise ShardwiseError(
            f"model.path {str(path)!r} has no config.json: give a directory holding config.json, or the file itself"
        )
    from planner.jsonfile import read_json

    data = read_json(config_path, "config.json", dict, "fix or re-download it")
    from planner.model.config_check import check_config

    check_config(data, config_path)
    if "model_type" not in data:
        raise ShardwiseError(f"{config_path} has no model_type: it is not a transformers config.json")
    return data, model_dir


def spec_from_config(model_cfg) -> ModelSpec:
    """ModelSpec from the composed `model` config node (a profile, or model.path)."""
    path = model_cfg.get("path")
    if path:
        arch, model_dir = _read_config(Path(path).expanduser())
        shipped = _DTYPE_NAMES.get(str(arch.get("torch_dtype") or arch.get("dtype") or "float32"), "float32")
        quant_config = arch.get("quantization_config") or {}
        if not isinstance(quant_config, dict):
            raise ShardwiseError(
                f"model.path {str(path)!r}: quantization_config in config.json is {quant_config!r}, not an object: fix or re-download config.json"
            )
        quant = quant_config.get("quant_method")
        name = Path(path).name if Path(path).is_dir() else Path(path).parent.name
        return ModelSpec(
            name=name or str(path),
            source=str(Path(path).expanduser().resolve() if Path(path).is_dir() else model_dir.resolve()),
            architecture=arch,
            shipped_dtype=shipped,
            quantization=quant,
            fallback=model_cfg.get("fallback"),
            trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
            chat_template=model_cfg.get("chat_template"),
            model_dir=str(model_dir.resolve()),
        )
    if not model_cfg.get("architecture"):
        raise ShardwiseError(
            f"model profile {model_cfg.get('name')!r} has no architecture: add its config.json under `architecture:` or give model.path"
        )
    from omegaconf import OmegaConf

    arch = (
        OmegaConf.to_container(model_cfg.architecture, resolve=True)
        if not isinstance(model_cfg.architecture, dict)
        else dict(model_cfg.architecture)
    )
    return ModelSpec(
        name=model_cfg.name,
        source=model_cfg.hub_id or model_cfg.name,
        architecture=arch,
        shipped_dtype=model_cfg.dtype,
        quantization=model_cfg.get("quantization"),
        fallback=model_cfg.get("fallback"),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        chat_template=model_cfg.get("chat_template"),
        model_dir=None,
    )


@cache
def load_profile(name: str):
    """A model profile by name or hub id (policy.candidates, a profile's fallback), validated against the schema."""
    from omegaconf import OmegaConf

    from planner.config.app import conf_dir, model_aliases, profile_names
    from planner.config.schema import ModelConfig

    profile = model_aliases().get(str(name).lower())
    path = conf_dir() / "model" / f"{profile}.yaml"
    if profile in (None, "auto") or not path.is_file():
        choices = ", ".join(p for p in profile_names("model") if p != "auto")
        raise ShardwiseError(
            f"model profile {name!r} (in policy.candidates or a profile's fallback) does not exist: choose from {choices}"
        )
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), raw)
