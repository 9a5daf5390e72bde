"""Decide compute dtype, quantization, KV dtype and attention kernel before anything is sized.

Each function returns its choice with the reason the plan shows the user; a forced choice the
target cannot run is refused with a ShardwiseError that says why and what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.decide import stack
from planner.decide.quant_support import ON_LOAD, decide_on_load
from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware

# Attention kernels transformers uses by default per model_type when sdpa is unsupported
# (from each modeling file's `_supports_sdpa`): these run eager attention.
EAGER_ONLY = {"gpt_oss", "gemma2"}

MXFP4_MIN_CC = (7, 5)
# What transformers' MXFP4 quantizer checks of triton before it keeps the packed weights (quantizer_mxfp4.py
# in transformers 5.25; tests/test_dtypes.py compares them with the installed source). The `kernels` range
# is not copied here: planner/decide/stack.py reads it from the installed transformers' own metadata.
TRITON_MIN_CUDA = (3, 4)
TRITON_MIN_CPU = (3, 5)


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str


def _gpu_cc_summary(hw: Hardware) -> tuple[tuple[int, int], str]:
    """Lowest compute capability among the GPUs and the name of a GPU that has it."""
    lowest = min(hw.devices, key=lambda d: d.cc_major_minor)
    return lowest.cc_major_minor, lowest.name


def decide_dtype(requested: str, shipped: str, hw: Hardware) -> Choice:
    if not hw.devices:
        if requested != "auto":
            if requested == "float16":
                return Choice(
                    "float16", "policy.dtype=float16 on CPU: honoured, but most CPU kernels are slow in float16"
                )
            return Choice(requested, f"policy.dtype={requested}")
        if shipped == "float32":
            return Choice("float32", "CPU: keeping the shipped float32 weights")
        return Choice(
            "bfloat16", f"CPU: keeping the shipped {shipped} as bfloat16 (float32 would double the weight memory)"
        )
    cc, name = _gpu_cc_summary(hw)
    cc_text = f"{cc[0]}.{cc[1]}"
    if requested == "bfloat16" and cc < (8, 0):
        raise ShardwiseError(
            f"bfloat16 needs compute capability >= 8.0, {name} has {cc_text}: use policy.dtype=float16 (or auto)"
        )
    if requested != "auto":
        return Choice(requested, f"policy.dtype={requested}")
    if cc >= (8, 0):
        return Choice("bfloat16", f"GPU compute capability {cc_text} >= 8.0 ({name}): bfloat16")
    return Choice("float16", f"{name} has compute capability {cc_text} (pre-Ampere, no bfloat16): float16")


def decide_quantization(method: str | None, policy: str, hw: Hardware, dtype: str) -> tuple[bool, str]:
    """Whether shipped quantization stays packed in memory, and why."""
    if not method:
        if policy == "keep":
            raise ShardwiseError(
                "policy.quantization=keep but this model ships unquantized: use policy.quantization=auto"
            )
        return False, "shipped unquantized"
    if method != "mxfp4":
        from planner.decide.quant_support import decide_format

        return decide_format(method, policy, hw, dtype)
    if policy == "none":
        return False, f"MXFP4 dequantized to {dtype} (policy.quantization=none)"

    blocker = _mxfp4_blocker(hw, dtype)
    if blocker:
        if policy == "keep":
            raise ShardwiseError(f"policy.quantization=keep cannot be honoured: {blocker}")
        return False, blocker
    if not hw.devices:
        return True, "MXFP4 kept on CPU: triton >= 3.5 and kernels are installed here"
    cc, name = _gpu_cc_summary(hw)
    if hw.probed:
        return True, f"MXFP4 kept: compute capability {cc[0]}.{cc[1]} >= 7.5, triton and kernels installed"
    return True, (
        f"MXFP4 kept: compute capability {cc[0]}.{cc[1]} >= 7.5; the target needs triton >= 3.4 and "
        f"{stack.requirement_text('kernels')} installed (what this transformers requires), otherwise transformers "
        f"dequantizes to {dtype}"
    )


def _missing_kernels(installed: dict, triton_min: tuple) -> list[str]:
    triton, kernels = installed.get("triton"), installed.get("kernels")
    missing = []
    triton_version = stack.parse_version(triton)
    if triton_version is None or triton_version.release[:2] < triton_min:
        missing.append(f"triton >= {triton_min[0]}.{triton_min[1]} (found {triton or 'none'})")
    if not stack.satisfies("kernels", kernels):
        missing.append(f"{stack.requirement_text('kernels')} (found {kernels or 'none'})")
    return missing


def _mxfp4_blocker(hw: Hardware, dtype: str) -> str | None:
    """Why transformers would dequantize MXFP4 on this hardware, or None when it keeps it."""
    if not hw.devices:
        missing = (
            _missing_kernels(hw.installed, TRITON_MIN_CPU)
            if hw.probed
            else ["triton >= 3.5 and kernels (not known for a CPU tier)"]
        )
        if missing:
            return f"on CPU transformers keeps MXFP4 only with {' and '.join(missing)}: dequantized to {dtype}"
        return None
    cc, name = _gpu_cc_summary(hw)
    if cc < MXFP4_MIN_CC:
        return f"{name} has compute capability {cc[0]}.{cc[1]} < 7.5: transformers dequantizes MXFP4 to {dtype}"
    if hw.probed:
        missing = _missing_kernels(hw.installed, TRITON_MIN_CUDA)
        if missing:
            return (
                f"this machine lacks {' and '.join(missing)}: transformers would dequantize MXFP4 to {dtype} "
                f"(pip install 'triton>=3.4' '{stack.requirement_text('kernels')}' to keep it)"
            )
    return None


def mxfp4_blocked_by_hardware(hw: Hardware) -> bool:
    """True when no package install would let MXFP4 stay packed (old GPU, or an unprobed CPU)."""
    if not hw.devices:
        return not hw.probed
    return _gpu_cc_summary(hw)[0] < MXFP4_MIN_CC


def decide_kv_dtype(requested: str, dtype: str) -> Choice:
    if requested == "auto":
        return Choice(dtype, f"KV cache in the compute dtype ({dtype})")
    return Choice(requested, f"policy.kv_cache_dtype={requested}")


FLASH_ATTN3_HUB = "kernels-community/vllm-flash-attn3"


def decide_attention(requested: str, model_type: str, hw: Hardware, quant_kept: bool) -> Choice:
    on_gpu = bool(hw.devices)
    if requested == "flash_attention_2" and on_gpu and _gpu_cc_summary(hw)[0] < (8, 0):
        cc, name = _gpu_cc_summary(hw)
        raise ShardwiseError(
            f"flash_attention_2 needs compute capability >= 8.0, {name} has {cc[0]}.{cc[1]}: use "
            "policy.attn_implementation=sdpa or auto"
        )
    if requested == "flash_attention_2" and not on_gpu:
        raise ShardwiseError(
            "attn_implementation=flash_attention_2 needs a CUDA GPU: use policy.attn_implementation=sdpa or auto"
        )
    if requested == "sdpa" and model_type in EAGER_ONLY:
        raise ShardwiseError(
            f"{model_type} does not support sdpa attention in transformers: use policy.attn_implementation=eager or "
            "auto"
        )
    if requested != "auto":
        return Choice(requested, f"policy.attn_implementation={requested}")
    if (
        model_type == "gpt_oss"
        and on_gpu
        and quant_kept
        and _gpu_cc_summary(hw)[0] >= (9, 0)
        and not (hw.probed and _missing_kernels(hw.installed, TRITON_MIN_CUDA))
    ):
        return Choice(
            FLASH_ATTN3_HUB,
            "gpt-oss on Hopper or newer with the kernels package: FlashAttention-3 kernel (with sinks), no T x T "
            "scores",
        )
    if model_type in EAGER_ONLY:
        return Choice(
            "eager",
            f"{model_type} has no sdpa support in transformers: eager attention, which materializes heads x T x T "
            "scores",
        )
    return Choice("sdpa", "sdpa (transformers' default): no T x T score matrix in memory")


@dataclass(frozen=True)
class Formats:
    """The formats every size is computed in: compute dtype, quantization kept or not, KV dtype, attention."""

    dtype: str
    quant_kept: bool
    quant_reason: str
    kv_dtype: str
    attn: str
    load_quant: dict | None = None  # quantization_config transformers applies while loading (policy bnb4/bnb8/fp8)
    on_load: str | None = None  # the policy value that asked for it


def decide_formats(spec, hw: Hardware, policy, notes) -> Formats:
    """Decide dtype, quantization, KV dtype and attention for `spec` on `hw`, recording each in `notes`."""
    dtype = decide_dtype(policy.dtype, spec.shipped_dtype, hw)
    notes.decide("dtype", dtype.value, dtype.reason)
    if policy.engine.is_vllm and spec.quantization:
        from planner.vllm.formats import vllm_quantization

        kept, quant_reason = vllm_quantization(spec.quantization, policy.quantization, hw)
    else:
        kept, quant_reason = decide_quantization(spec.quantization, policy.quantization, hw, dtype.value)
    load_quant = on_load = None
    if policy.quantization in ON_LOAD:
        load_quant, quant_reason = decide_on_load(policy.quantization, spec.quantization, hw, dtype.value)
        kept, on_load = True, policy.quantization
        notes.decide("quantization", f"{policy.quantization} on load", quant_reason)
    if spec.quantization:
        notes.decide("quantization", f"{spec.quantization} {'kept' if kept else 'dequantized'}", quant_reason)
        if not kept:
            notes.warn(f"{spec.quantization} weights are dequantized to {dtype.value}: {quant_reason}")
    kv = decide_kv_dtype(policy.kv_cache_dtype, dtype.value)
    notes.decide("kv_cache_dtype", kv.value, kv.reason)
    attn = decide_attention(policy.attn_implementation, spec.architecture.get("model_type", ""), hw, kept)
    notes.decide("attn_implementation", attn.value, attn.reason)
    return Formats(dtype.value, kept, quant_reason, kv.value, attn.value, load_quant, on_load)
