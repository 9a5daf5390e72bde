"""Kept, dequantized or cannot run: what transformers 5.25 does with each shipped quantization on a target.

Mirrors each quantizer's `validate_environment` (transformers/quantizers/quantizer_*.py):
- fp8 (fine-grained): kept on GPUs with compute capability >= 8.9; below that, and on CPU,
  transformers dequantizes it to bf16 with nothing but a warning.
- compressed-tensors: needs the `compressed-tensors` package (>= 0.15.0); kept packed on any device.
- awq: needs `gptqmodel`; gptq: needs `gptqmodel` >= 1.4.3 and `optimum` >= 1.24.0.
- bitsandbytes: needs `bitsandbytes` and a device its build supports (CUDA; CPU in recent builds).
- modelopt: transformers has no loader for ModelOpt checkpoints (serve them with vLLM / TensorRT-LLM).
Packages are read from the probed machine's metadata (planner/hardware/host.py, nothing imported);
a tier that was not probed states what the target must have installed.
"""

from __future__ import annotations

from planner.decide.stack import parse_version
from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware

FP8_MIN_CC = (8, 9)
# package -> minimum version transformers checks (None: any)
PACKAGES = {
    "compressed-tensors": {"compressed-tensors": (0, 15, 0)},
    "awq": {"gptqmodel": None},
    "gptq": {"gptqmodel": (1, 4, 3), "optimum": (1, 24, 0)},
    "bitsandbytes": {"bitsandbytes": None},
}


def version_tuple(text: str) -> tuple[int, ...]:
    """An installed package's release as (major, minor, micro), parsed by `packaging` (decide.stack.parse_version).

    "3.4" is (3, 4, 0), "3.5.0+cu128" and "0.18.2.dev1" keep their release numbers; a version string
    packaging cannot read counts as (0, 0, 0): too old for any minimum, so the plan says it is missing.
    """
    version = parse_version(text)
    return ((version.release if version else ()) + (0, 0, 0))[:3]


def _requirement(name: str, minimum) -> str:
    return f"{name} >= {'.'.join(map(str, minimum))}" if minimum else name


def missing_packages(method: str, hw: Hardware) -> list[str]:
    """Packages (with versions) the format needs that the probed machine lacks; [] when not probed."""
    if not hw.probed:
        return []
    missing = []
    for name, minimum in PACKAGES.get(method, {}).items():
        found = hw.installed.get(name)
        if found is None or (minimum and version_tuple(found) < minimum):
            missing.append(f"{_requirement(name, minimum)} (found {found or 'none'})")
    return missing


def _needs(method: str) -> str:
    return " and ".join(_requirement(n, m) for n, m in PACKAGES.get(method, {}).items())


def decide_format(method: str, policy: str, hw: Hardware, dtype: str) -> tuple[bool, str]:
    """(kept, reason) for a shipped quantization other than MXFP4; ShardwiseError where it cannot run."""
    where = "CPU" if not hw.devices else min(hw.devices, key=lambda d: d.cc_major_minor).name
    if method == "modelopt":
        raise ShardwiseError(
            "this checkpoint is quantized by NVIDIA ModelOpt (hf_quant_config.json), which transformers cannot load: "
            "serve it with vLLM (shardwise launch launch.engine=vllm) or TensorRT-LLM, or pick the unquantized model"
        )
    missing = missing_packages(method, hw)
    if missing:
        raise ShardwiseError(
            f"{method} checkpoints need {' and '.join(missing)} to load in transformers, and this machine lacks it: "
            f"pip install {' '.join(m.split(' ')[0] for m in missing)}"
        )
    needs = _needs(method)
    condition = f"; the target needs {needs} installed" if needs and not hw.probed else ""
    if policy == "none":
        return False, f"{method} dequantized to {dtype} (policy.quantization=none){condition}"
    if method == "fp8":
        if not hw.devices:
            blocker = f"on CPU transformers dequantizes FP8 to {dtype}"
        else:
            cc = min(d.cc_major_minor for d in hw.devices)
            blocker = (
                f"{where} has compute capability {cc[0]}.{cc[1]} < 8.9: transformers dequantizes FP8 to {dtype}"
                if cc < FP8_MIN_CC
                else None
            )
        if blocker:
            if policy == "keep":
                raise ShardwiseError(f"policy.quantization=keep cannot be honoured: {blocker}")
            return False, blocker
        cc = min(d.cc_major_minor for d in hw.devices)
        return True, f"fp8 kept: compute capability {cc[0]}.{cc[1]} >= 8.9 runs FP8 matmuls"
    installed = f", {needs} installed" if needs and hw.probed else ""
    return True, f"{method} kept packed on {where}{installed}{condition}"


# policy.quantization values that quantize an unquantized checkpoint while transformers loads it,
# as the quantization_config the runner passes (BitsAndBytesConfig / FineGrainedFP8Config)
ON_LOAD = {
    "bnb4": {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
    },
    "bnb8": {"quant_method": "bitsandbytes", "load_in_8bit": True},
    "fp8": {"quant_method": "fp8", "weight_block_size": [128, 128]},
}


def decide_on_load(policy: str, shipped: str | None, hw: Hardware, dtype: str) -> tuple[dict, str]:
    """(quantization_config, reason) for policy.quantization=bnb4|bnb8|fp8; ShardwiseError where it cannot run."""
    if shipped:
        raise ShardwiseError(
            f"policy.quantization={policy} quantizes unquantized checkpoints while loading, and this one ships "
            f"{shipped}: use policy.quantization=auto, keep or none"
        )
    if not hw.devices:
        raise ShardwiseError(
            f"policy.quantization={policy} needs a CUDA GPU (transformers quantizes on load only there): "
            "use policy.quantization=auto on CPU"
        )
    lowest = min(hw.devices, key=lambda d: d.cc_major_minor)
    cc = lowest.cc_major_minor
    if policy == "fp8":
        if cc < FP8_MIN_CC:
            raise ShardwiseError(
                f"policy.quantization=fp8 needs compute capability >= 8.9, {lowest.name} has {cc[0]}.{cc[1]}: "
                "use policy.quantization=bnb8 or bnb4"
            )
        return ON_LOAD[policy], (
            f"quantized to FP8 (128x128 block scales) while loading: compute capability {cc[0]}.{cc[1]} >= 8.9; "
            f"norms, embeddings and lm_head stay {dtype}"
        )
    missing = missing_packages("bitsandbytes", hw)
    if missing:
        raise ShardwiseError(
            f"policy.quantization={policy} needs {' and '.join(missing)} on this machine: pip install bitsandbytes"
        )
    kind = "NF4 with double quantization" if policy == "bnb4" else "LLM.int8 (int8 weights, float32 row scales)"
    condition = "" if hw.probed else "; the target needs bitsandbytes installed"
    return ON_LOAD[policy], (
        f"quantized to bitsandbytes {kind} while loading (Linear layers only; norms, embeddings, lm_head and "
        f"fused MoE experts stay {dtype}){condition}"
    )
