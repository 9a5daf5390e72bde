"""The planning policy as the core reads it: a frozen, fully parsed, validated value.

planner/config builds it once from the composed `policy` node (token counts parsed, the offload
disk measured); the core never sees a DictConfig. Other policies (a fix to try, a fallback model)
are `dataclasses.replace(policy, ...)`, validated again by the same `__post_init__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.errors import ShardwiseError
from planner.memory.terms import Overheads
from planner.vllm.rules import EngineSettings

STRATEGIES = ("auto", "single_gpu", "pipeline", "tensor_parallel")
OBJECTIVES = ("auto", "latency", "throughput")  # how to choose among layouts that fit (planner/place/objective.py)
DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATION_POLICIES = ("auto", "keep", "none", "bnb4", "bnb8", "fp8")  # the last three quantize on load
KV_DTYPES = (*DTYPES, "fp8", "fp8_e4m3", "fp8_e5m2")  # fp8: vLLM's --kv-cache-dtype only
ATTENTION_KERNELS = ("auto", "eager", "sdpa", "flash_attention_2")
# Which layouts the engine that runs the plan batches (what policy.sessions=auto may use):
# any: every layout (vLLM batches pipeline and tensor-parallel plans: the planner sizes what fits);
# runner: shardwise's own runner, which batches only a layout whose `serving` block says batched.
BATCHING = ("any", "runner")


@dataclass(frozen=True)
class Policy:
    """Planning knobs (see conf/policy/default.yaml for each key's meaning and unit)."""

    context_tokens: int | None = None  # per session; None: the largest that fits
    sessions: int | None = 1  # concurrent sequences; None: auto, the most that fit (planner/driver/sessions.py)
    max_sessions: int | None = None  # the most sessions=auto picks; None: auto (planner/driver/sessions.py says why)
    headroom_fraction: float = 0.02
    headroom_mib: int = 0
    host_headroom_fraction: float = 0.2
    allow_cpu_offload: bool = False
    allow_disk_offload: bool = False
    offload_folder: str = "offload"
    offload_disk_bytes: int = 0  # room for disk-offloaded weights (policy.offload_disk_gib, or measured free space)
    strategy: str = "auto"
    objective: str = "auto"
    dtype: str = "auto"
    quantization: str = "auto"
    kv_cache_dtype: str = "auto"
    attn_implementation: str = "auto"
    prefill_chunk_tokens: int = 0  # 0: chunk only when that keeps the peak inside
    min_context_tokens: int = 512
    images_per_request: int = 1  # images each request carries to a vision-language model (0: text only)
    candidates: tuple[str, ...] = ()
    overhead: Overheads = field(default_factory=Overheads)
    # speed-model factors (policy.performance, a plain dict; planner/speed/block.py); None: the model's defaults
    performance: dict | None = field(default=None, compare=False, hash=False)
    engine: EngineSettings = field(default_factory=EngineSettings)  # who runs the plan: the runner or vLLM (launch.*)
    batching: str = "any"  # see BATCHING; `shardwise serve` plans for "runner"
    sessions_origin: str = ""  # who set sessions=auto when the user did not ("serve's default"), said in its reason
    sessions_why: str = ""  # a caller's reason for its session count (serve.models), written as the decision

    def __post_init__(self) -> None:
        checks = [
            (
                self.context_tokens is None or self.context_tokens >= 1,
                f"policy.context_tokens={self.context_tokens} must be positive: "
                "use e.g. policy.context_tokens=8192 or auto",
            ),
            (self.sessions is None or self.sessions >= 1, f"policy.sessions={self.sessions} must be >= 1 (or auto)"),
            (
                self.max_sessions is None or self.max_sessions >= 1,
                f"policy.max_sessions={self.max_sessions} must be >= 1 (or auto)",
            ),
            (
                0 <= self.headroom_fraction < 1,
                f"policy.headroom_fraction={self.headroom_fraction} must be in [0, 1)",
            ),
            (self.headroom_mib >= 0, f"policy.headroom_mib={self.headroom_mib} must be >= 0"),
            (
                0 <= self.host_headroom_fraction < 1,
                f"policy.host_headroom_fraction={self.host_headroom_fraction} must be in [0, 1)",
            ),
            (
                self.images_per_request >= 0,
                f"policy.images_per_request={self.images_per_request} must be >= 0 (0: text only)",
            ),
            (
                self.prefill_chunk_tokens >= 0,
                f"policy.prefill_chunk_tokens={self.prefill_chunk_tokens} must be >= 0 (0: auto)",
            ),
            (
                self.min_context_tokens >= 1,
                f"policy.min_context_tokens={self.min_context_tokens} must be >= 1",
            ),
            (self.offload_disk_bytes >= 0, f"offload disk space {self.offload_disk_bytes} must be >= 0"),
        ]
        choices = [
            ("strategy", STRATEGIES),
            ("objective", OBJECTIVES),
            ("dtype", DTYPES),
            ("quantization", QUANTIZATION_POLICIES),
            ("kv_cache_dtype", KV_DTYPES),
            ("attn_implementation", ATTENTION_KERNELS),
            ("batching", BATCHING),
        ]
        for name, allowed in choices:
            value = getattr(self, name)
            checks.append(
                (value in allowed, f"policy.{name}={value!r} is not one of {', '.join(allowed)}: choose one of them")
            )
        checks.append(
            (
                not self.kv_cache_dtype.startswith("fp8") or self.engine.is_vllm,
                f"policy.kv_cache_dtype={self.kv_cache_dtype} is vLLM's: transformers' cache holds bfloat16/float16/"
                "float32; add launch.engine=vllm or use policy.kv_cache_dtype=auto",
            )
        )
        for ok, message in checks:
            if not ok:
                raise ShardwiseError(message)
