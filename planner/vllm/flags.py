"""The exact `vllm serve` arguments after the model that make vLLM run what the plan sized.

One `--flag=value` string per argument (shlex-safe, the form `vllm serve --help` documents), in a
fixed order; runner/launch/render.py and the Kubernetes renderer add the model, host, port and the
user's extra arguments around them.
"""

from __future__ import annotations


def serve_flags(
    *,
    tp: int,
    pp: int,
    max_model_len: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    gpu_memory_utilization: float,
    dtype: str,
    kv_cache_dtype: str,
    expert_parallel: bool,
    revision: str | None,
    quantization: str | None = None,
) -> list[str]:
    flags = [
        f"--tensor-parallel-size={tp}",
        f"--pipeline-parallel-size={pp}",
        f"--max-model-len={max_model_len}",
        f"--max-num-seqs={max_num_seqs}",
        f"--max-num-batched-tokens={max_num_batched_tokens}",
        f"--gpu-memory-utilization={gpu_memory_utilization:.2f}",
        f"--dtype={dtype}",
        f"--kv-cache-dtype={kv_cache_dtype}",
    ]
    if quantization:  # quantized while loading (policy.quantization=fp8 | bnb4): vLLM's in-flight methods
        flags.append(f"--quantization={quantization}")
    if expert_parallel:
        flags.append("--enable-expert-parallel")
    if revision:  # the commit the plan was sized from, not whatever main is by then
        flags.append(f"--revision={revision}")
    return flags
