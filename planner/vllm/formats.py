"""Which shipped quantizations vLLM keeps (it brings its own kernels: nothing to install beside it).

vLLM loads ModelOpt FP8 / NVFP4, compressed-tensors, AWQ and GPTQ (Marlin kernels), FP8 and MXFP4
checkpoints that transformers may refuse or dequantize. Its kernels need compute capability 8.0
(Marlin, FP8 weight-only on Ampere; native FP8 from 8.9, native FP4 from 10.0); below that the plan
refuses rather than guess a path. bitsandbytes checkpoints load in vLLM too.
"""

from __future__ import annotations

from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware

MIN_CC = (8, 0)


def vllm_quantization(method: str, policy: str, hw: Hardware) -> tuple[bool, str]:
    """(kept, reason) for a shipped format under vLLM; ShardwiseError where vLLM cannot run it."""
    if policy == "none":
        raise ShardwiseError(
            f"policy.quantization=none: vLLM runs {method} checkpoints as shipped, it does not dequantize them; "
            "use policy.quantization=auto or pick the unquantized model"
        )
    if not hw.devices:
        raise ShardwiseError("launch.engine=vllm needs GPUs: plan it on a GPU tier or a probed GPU machine")
    lowest = min(hw.devices, key=lambda d: d.cc_major_minor)
    cc = lowest.cc_major_minor
    if cc < MIN_CC:
        raise ShardwiseError(
            f"vLLM's {method} kernels need compute capability >= 8.0, {lowest.name} has {cc[0]}.{cc[1]}: "
            "use launch.engine=auto (transformers) or a newer GPU"
        )
    native = {"fp8": (8, 9), "mxfp4": (9, 0)}.get(method)
    path = "native kernels" if native and cc >= native else "vLLM's own kernels (Marlin / Triton)"
    return True, f"{method} kept as shipped: vLLM loads it with {path} on compute capability {cc[0]}.{cc[1]}"
