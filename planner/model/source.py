"""Where a model's architecture comes from: a shipped profile, a local config.json / model directory, or a hub id.

A hub id (`model=ORG/NAME`, `model.path=ORG/NAME` when no such local path exists, or a profile with
`model.revision=`) is fetched through planner.model.hub, which uses the HF cache and works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.errors import ShardwiseError
from planner.files import expand_user


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
    model_dir: str | None  # directory whose safetensors headers (or cached hub header table) give exact bytes
    revision: str | None = None  # hub commit the config and headers came from (hub ids only)
    hf_quant_config: dict | None = None  # hf_quant_config.json beside config.json (modelopt checkpoints)
    generation_config: dict | None = None  # generation_config.json beside config.json
    provenance: tuple = ()  # (what, value, reason) triples: where the inputs came from, for decisions[]


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
    if not config_path.exists():  # a FIFO or device named config.json is refused by read_json, never opened blocking
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


def _shipped_dtype(arch: dict) -> str:
    """dtype of the checkpoint's unquantized tensors: config.json's, else what its quantization format implies,
    else float32 (transformers' default dtype, which save_pretrained writes when none was set)."""
    named = arch.get("torch_dtype") or arch.get("dtype")
    if named:
        return _DTYPE_NAMES.get(str(named), "float32")
    from planner.model.quant import parse_format

    quant = arch.get("quantization_config")
    fmt = parse_format(quant) if isinstance(quant, dict) else None
    return (fmt.unquantized_dtype if fmt else None) or "float32"


def _with_side_quantization(arch: dict, hf_quant: dict | None) -> dict:
    """config.json with ModelOpt's hf_quant_config.json folded in as its quantization_config, when it has none."""
    from planner.model.quant import modelopt_quantization_config
    from planner.model.quant_fields import QuantFields

    if arch.get("quantization_config") or hf_quant is None:
        return arch
    # the side file is input: a `quantization` that is a string or a list is refused in one line, not indexed
    section = QuantFields(hf_quant, "hf_quant_config.json").section("quantization")
    if section is None or not section.cfg.get("quant_algo"):
        return arch  # a side file that names no algorithm: the checkpoint is not quantized

    return {**arch, "quantization_config": modelopt_quantization_config(hf_quant)}


def _quant_method(arch: dict, where: str) -> str | None:
    from planner.model.quant_fields import QuantFields

    quant_config = arch.get("quantization_config") or {}
    if not isinstance(quant_config, dict):
        raise ShardwiseError(
            f"{where}: quantization_config in config.json is {quant_config!r:.60}, not an object: "
            "fix or re-download config.json"
        )
    return QuantFields(quant_config, f"{where}: quantization_config").text("quant_method") or None


def _optional_json(path: Path) -> dict | None:
    """A side file (hf_quant_config.json, generation_config.json) beside config.json, or None when absent."""
    if not path.exists():  # exists(), not is_file(): a FIFO here is refused by read_json rather than skipped
        return None
    from planner.jsonfile import read_json

    return read_json(path, path.name, dict, "fix or re-download it")


def _spec_from_dir(path: str, model_cfg) -> ModelSpec:
    if model_cfg.get("revision"):
        raise ShardwiseError(
            f"model.revision={model_cfg.get('revision')} pins a hub revision, but {str(path)!r} is a local directory: "
            "drop model.revision"
        )
    arch, model_dir = _read_config(expand_user(path))
    name = Path(path).name if Path(path).is_dir() else Path(path).parent.name
    hf_quant = _optional_json(model_dir / "hf_quant_config.json")
    arch = _with_side_quantization(arch, hf_quant)
    return ModelSpec(
        name=name or str(path),
        source=str(expand_user(path).resolve() if Path(path).is_dir() else model_dir.resolve()),
        architecture=arch,
        shipped_dtype=_shipped_dtype(arch),
        quantization=_quant_method(arch, f"model.path {str(path)!r}"),
        fallback=model_cfg.get("fallback"),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        chat_template=model_cfg.get("chat_template"),
        model_dir=str(model_dir.resolve()),
        hf_quant_config=hf_quant,
        generation_config=_optional_json(model_dir / "generation_config.json"),
        provenance=(("model source", str(model_dir.resolve()), f"config.json from the local directory {model_dir}"),),
    )


def _spec_from_hub(repo_id: str, model_cfg) -> ModelSpec:
    from planner.model import hub

    found = hub.fetch(repo_id, model_cfg.get("revision") or None)
    from planner.model.config_check import check_config

    check_config(found.config, f"config.json of {repo_id}")  # the same checks as a local config.json
    arch = _with_side_quantization(found.config, found.hf_quant_config)
    if "model_type" not in arch:
        raise ShardwiseError(f"config.json of {repo_id} has no model_type: it is not a transformers model")
    profile = bool(model_cfg.get("architecture"))  # a profile pinned to a revision keeps its name and fallback
    return ModelSpec(
        name=model_cfg.get("name") if profile else repo_id,
        source=repo_id,
        architecture=arch,
        shipped_dtype=_shipped_dtype(arch),
        quantization=_quant_method(arch, repo_id),
        fallback=model_cfg.get("fallback"),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        chat_template=model_cfg.get("chat_template"),
        model_dir=found.tensor_dir,
        revision=found.revision,
        hf_quant_config=found.hf_quant_config,
        generation_config=found.generation_config,
        provenance=found.provenance,
    )


def spec_from_config(model_cfg) -> ModelSpec:
    """ModelSpec from the composed `model` config node (or the same as a plain dict): model.path, a hub id, or a
    profile."""
    from planner.model.hub import is_hub_id

    path = model_cfg.get("path")
    if path:
        if not expand_user(path).exists() and is_hub_id(path):
            return _spec_from_hub(str(path), model_cfg)
        return _spec_from_dir(path, model_cfg)
    hub_id = model_cfg.get("hub_id")
    if hub_id and (model_cfg.get("revision") or not model_cfg.get("architecture")):
        return _spec_from_hub(str(hub_id), model_cfg)
    if not model_cfg.get("architecture"):
        raise ShardwiseError(
            f"model profile {model_cfg.get('name')!r} has no architecture: add its config.json under `architecture:` "
            "or give model.path"
        )
    from omegaconf import OmegaConf

    arch = model_cfg.get("architecture")
    arch = dict(arch) if isinstance(arch, dict) else OmegaConf.to_container(arch, resolve=True)
    from planner.model.config_check import check_config

    check_config(arch, f"model profile {model_cfg.get('name')} (architecture)")  # an override may have edited it
    return ModelSpec(
        name=model_cfg.get("name"),
        source=model_cfg.get("hub_id") or model_cfg.get("name"),
        architecture=arch,
        shipped_dtype=model_cfg.get("dtype"),
        quantization=model_cfg.get("quantization"),
        fallback=model_cfg.get("fallback"),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        chat_template=model_cfg.get("chat_template"),
        model_dir=None,
    )
