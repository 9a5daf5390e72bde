"""The vLLM rules a plan follows, per release, and the engine settings a request carries.

Constants here are vLLM's own defaults or were read off public startup logs (the 0.19 H100 records
in benchmarks/data/vllm/startup_memory_calibration.json; the 0.10 ones from A100 logs). Where a
constant was fitted rather than read, the comment says on what. `rules_for(version)` picks the
release family: 0.19 (the default, the release the rules were taken from) or 0.10.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import ShardwiseError
from planner.units import GIB, MIB

DEFAULT_VERSION = "0.19.0"  # the vLLM release whose startup logs the rules below reproduce
ENGINES = ("transformers", "vllm")


@dataclass(frozen=True)
class EngineSettings:
    """Which engine runs the plan, and the vLLM knobs that change its numbers (launch.* on the command line)."""

    name: str = "transformers"  # "transformers" (shardwise's runner) | "vllm"
    version: str = DEFAULT_VERSION  # the vLLM release whose rules the plan follows
    gpu_memory_utilization: float | None = None  # None: vLLM's default (0.9)
    max_num_batched_tokens: int | None = None  # None: vLLM's default for the GPU (rules.default_batching)
    max_num_seqs: int | None = None  # None: vLLM's default for the GPU
    enable_expert_parallel: bool = False  # --enable-expert-parallel: MoE experts split whole across the TP ranks

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ShardwiseError(f"engine {self.name!r} is not one of {', '.join(ENGINES)}")
        util = self.gpu_memory_utilization
        if util is not None and not 0 < util <= 1:
            raise ShardwiseError(f"launch.gpu_memory_utilization={util} must be above 0 and at most 1")
        for key in ("max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ShardwiseError(f"launch.{key}={value} must be >= 1 (or null: vLLM's default)")
        version_tuple(self.version)  # a malformed version is an error now, not in the middle of planning

    @property
    def is_vllm(self) -> bool:
        return self.name == "vllm"


def version_tuple(text: str) -> tuple[int, int]:
    """(major, minor) of a vLLM version such as 0.19.0 or 0.10.1.1."""
    parts = str(text).split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ShardwiseError(f"launch.vllm_version={text!r} is not a version like 0.19.0") from None


@dataclass(frozen=True)
class VllmRules:
    """What one vLLM release does at startup, in bytes per GPU unless named otherwise."""

    release: str  # the family the numbers were read from
    default_utilization: float  # --gpu-memory-utilization when not given
    block_size_tokens: int  # KV-cache block (page) size
    non_torch_single_bytes: int  # CUDA context share + cuBLAS etc. outside torch, one GPU (0.19 logs: 0.25-0.27 GiB)
    non_torch_multi_bytes: int  # the same with NCCL / custom all-reduce buffers, TP or PP >= 2 (0.19 logs: 2.07 GiB)
    startup_used_single_bytes: int  # memory already taken when the worker measures "free on startup", one GPU
    startup_used_multi_bytes: int  # the same with TP/PP >= 2 (NCCL initialised first)
    sampler_peak_per_logit: float  # profile peak of the dummy sampler run, bytes per (sequence x vocab entry)
    graphs_outside_budget: bool  # CUDA graphs captured after the KV cache is sized (True before v0.21)
    warmup_logit_bytes: float  # what the sampler warm-up needs beyond the graphs, bytes per (sequence x vocab)


# vLLM 0.19 (H100 logs). sampler_peak_per_logit: the profile's activation peak minus the hidden states
# (and, for MoE, the fused-MoE caches) divided by max_num_seqs x vocab gives 14.4, 14.2, 14.4, 14.4
# bytes on the four one-GPU records (Llama-3.1-8B, phi-4, gemma-2-27b, Qwen3-30B-A3B): 3.6 fp32 copies
# of the logits (logits, probabilities, sort values and indices of top-k/top-p). warmup_logit_bytes:
# 8.8 (2.2 fp32 copies) is the bracket (8.4, 9.1] that separates the gpt-oss-20b failure at 0.95 in
# the issue (1.61 GiB left after its graphs) from the records that started (gemma-2-27b: 2.22 GiB left).
V0_19 = VllmRules(
    release="0.19",
    default_utilization=0.9,
    block_size_tokens=16,
    non_torch_single_bytes=int(0.26 * GIB),
    non_torch_multi_bytes=int(2.07 * GIB),
    startup_used_single_bytes=int(0.51 * GIB),
    startup_used_multi_bytes=int(1.53 * GIB),
    sampler_peak_per_logit=14.4,
    graphs_outside_budget=True,
    warmup_logit_bytes=8.8,
)
# vLLM 0.10 (two A100 logs, Qwen2-7B at utilization 0.25, TP 1 and 2): the log prints no breakdown, only
# weights and KV; non-torch + activation came to 0.53 GiB (TP 1) and 0.65 GiB (TP 2). The split below
# (a 2-copy sampler, 0.2 / 0.33 GiB non-torch) is one reading of those two sums, not a measurement.
V0_10 = VllmRules(
    release="0.10",
    default_utilization=0.9,
    block_size_tokens=16,
    non_torch_single_bytes=int(0.2 * GIB),
    non_torch_multi_bytes=int(0.33 * GIB),
    startup_used_single_bytes=int(0.51 * GIB),
    startup_used_multi_bytes=int(1.0 * GIB),
    sampler_peak_per_logit=8.0,
    graphs_outside_budget=True,
    warmup_logit_bytes=8.8,
)

# CUDA reports less total memory than NVML (torch.cuda.mem_get_info vs nvidia-smi): 79.19 GiB on an
# H100 whose NVML total is 81,559 MiB, 470 MiB less. Other GPUs lose 250-850 MiB; the H100's is used.
CUDA_RESERVED_BYTES = 470 * MIB

# CUDA-graph memory (outside the budget before v0.21), fitted on the 0.19 one-GPU dense records
# (Llama-3.1-8B 0.91, phi-4 1.07, gemma-2-27b 1.23 GiB over 32, 40, 46 layers): the pool grows with the
# layers captured. MoE layers with quantized experts (MXFP4 / NVFP4 / FP8 kernels) keep larger
# per-graph workspaces: the gpt-oss-20b example (1.84 GiB, 24 layers) gives the extra.
GRAPH_BASE_BYTES = int(0.18 * GIB)
GRAPH_PER_LAYER_BYTES = int(0.0229 * GIB)
GRAPH_PER_QUANTIZED_MOE_LAYER_BYTES = int(0.046 * GIB)


def rules_for(version: str) -> VllmRules:
    """The rules of the release family `version` belongs to; older than 0.10 is refused (V0 engine)."""
    major_minor = version_tuple(version)
    if major_minor >= (0, 11):
        return V0_19
    if major_minor >= (0, 10):
        return V0_10
    raise ShardwiseError(
        f"launch.vllm_version={version}: shardwise follows vLLM's V1 engine (0.10 and later): use e.g. 0.19.0"
    )


def default_batching(total_bytes: int, gpu_name: str) -> tuple[int, int, str]:
    """vLLM's defaults for the OpenAI server: (max_num_batched_tokens, max_num_seqs, why).

    vLLM (engine/arg_utils.py) gives GPUs with at least 70 GiB that are not A100s 8192 tokens and
    1024 sequences; other GPUs 2048 and 256.
    """
    if total_bytes >= 70 * GIB and "a100" not in gpu_name.lower():
        return 8192, 1024, f"vLLM's default for {gpu_name} (>= 70 GiB, not an A100)"
    return 2048, 256, f"vLLM's default for {gpu_name} (< 70 GiB or an A100)"
