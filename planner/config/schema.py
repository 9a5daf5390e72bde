"""Typed schemas for every config group, registered in Hydra's ConfigStore under `schema/`.

Each option file in `conf/<group>/` starts with `defaults: [/schema/<group>@_here_, _self_]`,
so a typo'd key in YAML or on the command line is an error that names the key. Enums are
`str` Enums because OmegaConf 2.3 rejects `Literal`. The verb blocks (`serve:`, `launch:`) have
schemas here too, with their range rules (`check_serve`, `check_launch`); `validate()` runs the
key and range checks once, after composition, before any verb runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from planner.errors import ShardwiseError, did_you_mean


class HardwareKind(str, Enum):
    auto = "auto"  # probe this machine through NVML
    cpu = "cpu"  # no GPU: plan for the host
    snapshot = "snapshot"  # replay a recorded probe (hardware.path)
    tier = "tier"  # a named GPU kind scaled by count and nodes


class Interconnect(str, Enum):
    nvlink = "nvlink"
    pcie = "pcie"
    none = "none"


class Strategy(str, Enum):
    auto = "auto"
    single_gpu = "single_gpu"
    pipeline = "pipeline"
    tensor_parallel = "tensor_parallel"


class Objective(str, Enum):
    auto = "auto"  # the fewest GPUs within ~10% of the fastest single-sequence decode
    latency = "latency"  # the fastest single-sequence decode
    throughput = "throughput"  # the most tokens/s over the planned sessions


class DType(str, Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class QuantPolicy(str, Enum):
    auto = "auto"  # keep the shipped quantization where the target can run it, else dequantize
    keep = "keep"  # insist on the shipped quantization: refuse where it cannot be kept
    none = "none"  # dequantize to the plan dtype
    bnb4 = "bnb4"  # quantize an unquantized checkpoint on load: bitsandbytes NF4 with double quantization
    bnb8 = "bnb8"  # quantize an unquantized checkpoint on load: bitsandbytes LLM.int8
    fp8 = "fp8"  # quantize an unquantized checkpoint on load: FP8 with 128x128 block scales (cc >= 8.9)


class KVDType(str, Enum):
    auto = "auto"  # the compute dtype
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"
    fp8 = "fp8"  # vLLM only (--kv-cache-dtype fp8, e4m3): half the bytes of bf16
    fp8_e4m3 = "fp8_e4m3"  # vLLM only
    fp8_e5m2 = "fp8_e5m2"  # vLLM only


class Attention(str, Enum):
    auto = "auto"  # sdpa where available (what transformers picks), eager otherwise
    eager = "eager"
    sdpa = "sdpa"
    flash_attention_2 = "flash_attention_2"


@dataclass
class HardwareConfig:
    kind: HardwareKind = HardwareKind.tier  # where the hardware description comes from
    name: str = ""  # GPU name as nvidia-smi prints it (tiers)
    memory_mib: int = 0  # total memory of one GPU as nvidia-smi prints it, MiB (tiers)
    compute_capability: str = ""  # CUDA compute capability, "major.minor" (tiers)
    interconnect: Interconnect = Interconnect.pcie  # link between GPUs of one node
    count: int = 1  # GPUs per node (tiers)
    nodes: int = 1  # identical nodes (tiers)
    host_ram_gib: float = 64.0  # host RAM per node, GiB (tiers and cpu)
    cpu_count: int = 8  # CPU cores per node (tiers and cpu)
    path: Optional[str] = None  # snapshot file written by `shardwise probe probe.save=FILE`
    description: str = ""  # one line shown in listings
    # published speeds (datasheet, dense not sparse); 0: unknown (probed GPUs are looked up by name in the tiers)
    memory_bandwidth_gb_per_s: float = (
        0.0  # peak memory bandwidth of one GPU, GB/s (10^9 bytes/s); cpu: one thread's copy, 0 measures the host
    )
    all_core_bandwidth_gb_per_s: float = 0.0  # cpu: copy bandwidth with every core at once, GB/s (0: measured)
    bf16_tflops: float = 0.0  # dense bf16 tensor TFLOPs of one GPU (0: no bf16)
    fp16_tflops: float = 0.0  # dense fp16 tensor TFLOPs (fp32 accumulate) of one GPU
    fp8_tflops: float = 0.0  # dense fp8 tensor TFLOPs of one GPU (0: no fp8)
    fp32_tflops: float = 0.0  # fp32 (non-tensor) TFLOPs of one GPU
    nvlink_gb_per_s: float = 0.0  # NVLink bandwidth per GPU, one direction, GB/s (0: no NVLink)
    pcie_gb_per_s: float = 31.5  # host link per GPU, one direction, GB/s (PCIe 4.0 x16 unless the tier says)
    network_gb_per_s: float = 25.0  # between nodes per GPU, GB/s (200 Gb/s InfiniBand assumed unless the tier says)


@dataclass
class ModelConfig:
    name: str = ""  # profile name (the file name in conf/model/)
    hub_id: str = (
        ""  # Hugging Face hub id the weights come from (a profile-less hub model: its config comes from there too)
    )
    revision: Optional[str] = (
        None  # hub branch, tag or commit to plan from (null: main); set, a profile plans from the hub
    )
    aliases: list[str] = field(
        default_factory=list
    )  # other hub ids with the same architecture (base/instruct variants)
    path: Optional[str] = (
        None  # local model directory or config.json (or a hub id ORG/NAME); overrides the profile's architecture
    )
    dtype: str = "bfloat16"  # dtype of the shipped weights (non-quantized tensors)
    quantization: Optional[str] = (
        None  # quantization as shipped: null, mxfp4, fp8, compressed-tensors, modelopt, awq, gptq or bitsandbytes
    )
    fallback: Optional[str] = None  # next smaller profile to fall back to, null for the last one
    trust_remote_code: bool = False  # run code shipped with the model; off unless the profile says so
    chat_template: Optional[str] = None  # Jinja template for models without one (null: model's own or plain fallback)
    description: str = ""  # one line shown in listings
    architecture: dict[str, Any] = field(default_factory=dict)  # the model's config.json content


@dataclass
class OverheadConfig:
    cuda_context_mib: int = 500  # CUDA context + cuBLAS/cuDNN handles per GPU, MiB
    workspace_mib: int = 256  # library workspaces (cuBLAS, attention kernels) per GPU, MiB
    fragmentation_fraction: float = 0.03  # allocator fragmentation, fraction of planned tensors
    cpu_runtime_mib: int = 1024  # Python + torch + tokenizer resident memory for a CPU plan, MiB


@dataclass
class SpeedFactors:
    """Fraction of the published peak each term reaches with shardwise's runner, and its fixed costs."""

    bandwidth_efficiency: float = 0.8  # of peak memory bandwidth reached reading weights and KV
    compute_efficiency: float = 0.5  # of peak dense FLOPs reached by prefill matmuls
    layer_overhead_us: float = 0.0  # fixed cost per decoder layer per forward pass (launches, Python), microseconds
    step_overhead_ms: float = 0.0  # fixed cost per forward pass (generate loop, sampling), milliseconds


@dataclass
class VllmSpeedConfig:
    """vLLM's step model (planner/vllm/speed.py); fitted by benchmarks/vllm_calibration.py --fit."""

    bandwidth_efficiency: float = 0.88  # of datasheet HBM bandwidth reached reading weights and KV
    compute_efficiency: float = 0.62  # of datasheet dense TFLOPs reached by a step's GEMMs
    step_overhead_ms: float = 1.0  # fixed cost per engine step (scheduler, sampler), ms (assumed, not fitted)
    allreduce_latency_us: float = 36.0  # per tensor-parallel all-reduce (two per layer), microseconds


@dataclass
class PerformanceConfig:
    prompt_tokens: int = 512  # typical prompt: ttft_s and decode tokens/s are predicted at this many tokens
    output_tokens: int = 256  # typical reply: vLLM's tpot_ms / ttft_ms are predicted for prompt_tokens in, this out
    link_efficiency: float = 0.7  # of a link's peak reached by all-reduces, hand-offs and offload streaming
    disk_gb_per_s: float = 2.0  # sequential read of the offload disk, GB/s (a fast NVMe drive)
    gpu: SpeedFactors = field(
        default_factory=lambda: SpeedFactors(0.8, 0.6, 300.0, 3.0)
    )  # factors for GPU stages (assumed: see conf/policy/default.yaml)
    cpu: SpeedFactors = field(
        default_factory=lambda: SpeedFactors(0.546, 0.819, 1193.9, 1.92)
    )  # factors for CPU stages in float32 (fitted: benchmarks/speed_prediction.py --fit)
    cpu_half: SpeedFactors = field(
        default_factory=lambda: SpeedFactors(0.324, 0.866, 1327.7, 0.0)
    )  # factors for CPU stages in bfloat16/float16 (their GEMV kernels stream weights slower than float32's)
    vllm: VllmSpeedConfig = field(default_factory=VllmSpeedConfig)  # vLLM's step model (launch.engine=vllm)


@dataclass
class PolicyConfig:
    # Token counts are parsed once, by planner.config.request.parse_tokens: 8192, 8e3 or 8k (k = 1024
    # tokens, as context sizes are usually written: 8k = 8192); hence str / Any here, not int.
    context_tokens: str = "auto"  # tokens of context per session (prompt + reply), or "auto": the largest that fits
    sessions: str = "1"  # concurrent sequences the KV cache must hold, or "auto": the most that fit at the context
    max_sessions: str = "auto"  # the most sessions=auto picks, or "auto": 64 with GPUs, 16 on the CPU
    headroom_fraction: float = (
        0.02  # per-GPU memory kept free, fraction of free memory (covers NVML total vs CUDA-allocatable)
    )
    headroom_mib: int = 0  # per-GPU memory kept free in addition, MiB
    host_headroom_fraction: float = 0.2  # host RAM kept free when planning on CPU, fraction
    allow_cpu_offload: bool = False  # let layers that do not fit on GPUs live in host RAM
    allow_disk_offload: bool = False  # let layers that do not fit anywhere live on disk
    offload_folder: str = "offload"  # directory for disk-offloaded weights
    offload_disk_gib: float = (
        0.0  # disk space for offloaded weights, GiB (0: the free space where offload_folder is, measured here)
    )
    strategy: Strategy = Strategy.auto  # how to split the model over GPUs
    objective: Objective = Objective.auto  # which fitting layout to take: auto | latency | throughput (by speed)
    dtype: DType = DType.auto  # compute dtype; auto: bf16 where cc >= 8.0, fp16 on older GPUs, the shipped dtype on CPU
    quantization: QuantPolicy = QuantPolicy.auto  # what to do with shipped quantization
    kv_cache_dtype: KVDType = KVDType.auto  # KV cache dtype; auto: the compute dtype; fp8*: vLLM only
    attn_implementation: Attention = Attention.auto  # attention kernel the runner will use
    prefill_chunk_tokens: Any = 0  # prefill in chunks of this many tokens (0: auto, only when it keeps the peak inside)
    min_context_tokens: Any = 512  # a plan with less context than this does not fit
    images_per_request: int = 1  # images (or audio clips) each request carries to a model that takes them; 0: text only
    candidates: list[str] = field(
        default_factory=lambda: ["gpt-oss-120b", "gpt-oss-20b", "gpt2-medium", "gpt2"]
    )  # model=auto picks the largest that fits
    overhead: OverheadConfig = field(default_factory=OverheadConfig)  # runtime overhead constants
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)  # speed model factors


@dataclass
class GenerationConfig:
    max_tokens: int = 256  # tokens to generate per reply at most
    temperature: float = 0.7  # sampling temperature; 0 is greedy
    top_p: float = 1.0  # nucleus sampling mass
    seed: Optional[int] = None  # sampling seed; null: random
    stop: list[str] = field(default_factory=list)  # stop strings, matched on generated text only
    system_prompt: Optional[str] = None  # system message prepended to every conversation


@dataclass
class ProbeSettings:
    save: Optional[str] = None  # write the probe as a JSON snapshot to this file
    json: bool = False  # print the probe as JSON instead of a table


class LaunchTask(str, Enum):
    chat = "chat"  # a conversation on the terminal (prompts from launch.prompt or stdin)
    serve = "serve"  # the OpenAI-compatible HTTP server


class Engine(str, Enum):
    auto = "auto"  # torchrun for tensor-parallel or multi-node plans, one process otherwise
    accelerate = "accelerate"  # one process, accelerate device_map (single_gpu, pipeline, offload, cpu)
    torchrun = "torchrun"  # torch.distributed ranks with transformers' tensor (and pipeline) parallelism
    vllm = "vllm"  # the equivalent `vllm serve` command line


class Target(str, Enum):
    local = "local"  # start the engine here (or print its command lines with launch.dry_run=true)
    kubernetes = "kubernetes"  # render manifests for a cluster (vLLM): a LeaderWorkerSet or a Deployment, a Service


class MultiNodeBackend(str, Enum):
    mp = "mp"  # every pod runs `vllm serve` (--nnodes/--node-rank/--master-addr, workers --headless): vLLM's LWS guide
    ray = "ray"  # the leader starts a Ray head and serves, workers join it (`ray start --block`): older vLLM images


@dataclass
class KubernetesSettings:
    name: Optional[str] = None  # name of every object (DNS label); null: vllm-<model name>
    namespace: str = "default"  # namespace the objects go to
    replicas: int = 1  # copies of the whole plan (LeaderWorkerSet groups or Deployment pods), >= 1
    image: Optional[str] = None  # container image; null: vllm/vllm-openai:v<the vLLM version the plan assumes>
    hf_token_secret: Optional[str] = "hf-token"  # Secret holding the Hugging Face token (HF_TOKEN); null: no token
    hf_token_key: str = "token"  # key of that Secret holding the token
    shm_size_gib: int = 16  # size of the memory-backed /dev/shm for NCCL and vLLM's workers, GiB >= 1
    gpu_product: Optional[str] = None  # nvidia.com/gpu.product node label to select; null: from the plan's GPU name
    multinode_backend: MultiNodeBackend = MultiNodeBackend.mp  # how the pods of a multi-node plan form one vLLM


@dataclass
class SlurmSettings:
    partition: Optional[str] = None  # SLURM partition (null: the cluster's default)
    account: Optional[str] = None  # SLURM account to charge (null: your default)
    timeout_min: int = 240  # wall-clock limit of the job, minutes
    cpus_per_gpu: int = 8  # CPU cores requested per GPU the plan uses (capped at the node's cores)
    mem_gib_per_gpu: int = 64  # host RAM requested per GPU the plan uses, GiB (capped at the node's RAM)


@dataclass
class LaunchSettings:
    task: LaunchTask = LaunchTask.chat  # what rank 0 (or the single process) runs: chat or serve
    engine: Engine = Engine.auto  # which engine starts the plan
    target: Target = Target.local  # where: this machine, or manifests for a Kubernetes cluster
    dry_run: Optional[bool] = None  # print what would run instead of running it; null: true for kubernetes only
    node_rank: Optional[int] = None  # this node's index for multi-node plans (null: SLURM_NODEID under SLURM)
    master_addr: Optional[str] = None  # host name or IP of node 0 (static rendezvous for multi-node plans)
    master_port: int = 29500  # TCP port on node 0 for torch.distributed's store
    rdzv_endpoint: Optional[str] = None  # HOST:PORT of a c10d rendezvous (replaces master_addr/master_port)
    rdzv_id: str = "shardwise"  # job id shared by all nodes of one c10d rendezvous
    prompt: list[str] = field(default_factory=list)  # user turns sent one after another (empty: read stdin)
    record_dir: Optional[str] = None  # each rank writes rank<N>.jsonl with the token ids it generated
    cpu_tp_size: int = 0  # rehearse tensor parallel on a CPU plan with this many local gloo ranks (0: off)
    check_hardware: bool = True  # refuse a plan_file made for other hardware (false: run it anyway, with a warning)
    host: str = "127.0.0.1"  # address the HTTP server (serve, vllm) binds
    port: int = 8000  # TCP port the HTTP server (serve, vllm) listens on
    gpu_memory_utilization: Optional[float] = None  # vLLM's share of each GPU, 0-1 (null: vLLM's default 0.9)
    max_num_batched_tokens: Optional[int] = None  # vLLM's tokens per step (null: its default, 8192 on H100-class)
    max_num_seqs: Optional[int] = None  # vLLM's concurrent sequences (null: its default, 1024 on H100-class)
    vllm_version: str = "0.19.0"  # the vLLM release whose memory rules the plan follows (planner/vllm/rules.py)
    enable_expert_parallel: bool = False  # vLLM: split MoE experts whole over the TP ranks (--enable-expert-parallel)
    ray_port: int = 6379  # port of the Ray head for multi-node vLLM
    vllm_args: list[str] = field(default_factory=list)  # extra arguments appended to `vllm serve`
    slurm: SlurmSettings = field(default_factory=SlurmSettings)  # what the SLURM preset asks for
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)  # launch.target=kubernetes


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@dataclass
class ServeConfig:
    """The `serve:` block of conf/serve.yaml (`shardwise serve`)."""

    host: str = "127.0.0.1"  # address to bind; loopback by default, 0.0.0.0 exposes the server to the network
    port: int = 8000  # TCP port to listen on, 1-65535
    api_key: Optional[str] = None  # bearer token clients must send; null: env SHARDWISE_API_KEY, else none
    max_queue: int = 8  # requests waiting per model behind those generating, count >= 0; one more answers 429
    batching: bool = True  # continuous batching when the plan's serving block allows; false: one request at a time
    max_body_bytes: int = 1 << 20  # largest request body accepted, bytes >= 1024; a larger one answers 413
    max_n: int = 8  # most completions (choices) one request may ask for with `n`, count >= 1
    request_timeout_s: float = 600.0  # wall-clock limit per request (queue wait + generation), seconds; 0: none
    stream_stall_timeout_s: float = 30.0  # a stream whose client accepts no data this long is cancelled, s; 0: never
    max_messages: int = 4096  # most messages one request may hold, count >= 1; more answers 400
    max_images: int = 16  # most inline images (image_url parts) one request may hold, count >= 0; more answers 400
    max_image_bytes: int = 20_000_000  # largest inline image, bytes of the file >= 1024; a larger one answers 400
    max_image_pixels: int = 7680 * 4320  # most pixels (width x height) of one inline image, >= 1; more answers 400
    request_read_timeout_s: float = 30.0  # a request (headers and body) must arrive whole within this, s; else closed
    max_connections: int = 512  # client sockets open at once, count >= 1 (lowered to fit `ulimit -n`)
    models: list[str] = field(default_factory=list)  # more models to serve: profile names, hub ids or directories
    log_level: str = "info"  # server log level: debug, info, warning or error


PORT_FIX = "use a TCP port from 1 to 65535"


def _port_ok(port) -> bool:
    return isinstance(port, int) and 1 <= port <= 65535


def _check_ranges(checks) -> None:
    for ok, key, value, fix in checks:
        if not ok:
            raise ShardwiseError(f"{key}={value!r} is out of range: {fix}")


def check_serve(block: ServeConfig) -> ServeConfig:
    """Range rules of the serve block; the block back when every value is usable."""
    levels = [level.value for level in LogLevel]
    _check_ranges(
        [
            (block.port == 0 or _port_ok(block.port), "serve.port", block.port, PORT_FIX + " (0: any free one)"),
            (block.max_queue >= 0, "serve.max_queue", block.max_queue, "use 0 (only the running request) or more"),
            (block.max_body_bytes >= 1024, "serve.max_body_bytes", block.max_body_bytes, "use at least 1024 bytes"),
            (block.max_n >= 1, "serve.max_n", block.max_n, "use 1 or more"),
            (
                block.request_timeout_s >= 0,
                "serve.request_timeout_s",
                block.request_timeout_s,
                "use seconds >= 0 (0: no limit)",
            ),
            (
                block.stream_stall_timeout_s >= 0,
                "serve.stream_stall_timeout_s",
                block.stream_stall_timeout_s,
                "use seconds >= 0 (0: never)",
            ),
            (block.max_messages >= 1, "serve.max_messages", block.max_messages, "use 1 or more"),
            (block.max_images >= 0, "serve.max_images", block.max_images, "use 0 (no images) or more"),
            (block.max_image_bytes >= 1024, "serve.max_image_bytes", block.max_image_bytes, "use at least 1024 bytes"),
            (block.max_image_pixels >= 1, "serve.max_image_pixels", block.max_image_pixels, "use 1 or more"),
            (
                0 < block.request_read_timeout_s <= 3600,
                "serve.request_read_timeout_s",
                block.request_read_timeout_s,
                "use seconds above 0 and at most 3600 (a slow or stalled client holds a socket this long)",
            ),
            (block.max_connections >= 1, "serve.max_connections", block.max_connections, "use 1 or more"),
            (block.log_level in levels, "serve.log_level", block.log_level, f"use one of {', '.join(levels)}"),
        ]
    )
    return block


def literal(value):
    """`value` (a plain container) with every string's `${` escaped, so OmegaConf keeps it as typed."""
    import re

    if isinstance(value, str):
        # n backslashes before `${` become 2n + 1: the backslashes themselves, then an escaped `${`
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    return value


def typed_block(cls, node):
    r"""A config block as dataclass `cls`, its interpolations resolved exactly once.

    The node is resolved where it sits (`${oc.env:KEY}`, `${..}` paths see the whole config), then type-checked by
    merging into the schema; the resolved text is escaped first, so an escaped `\${x}` the user typed stays `${x}`
    instead of being resolved a second time by the merge."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else (node or {})
    merged = OmegaConf.merge(OmegaConf.structured(cls), literal(data))
    return OmegaConf.to_object(merged)  # resolves (the escapes back to `${`) and builds `cls`, nested blocks too


def read_serve_config(node) -> ServeConfig:
    """The `serve:` block (a config node or a dict), type-checked (a typo'd key is an error) and range-checked."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        block = typed_block(ServeConfig, node)
    except OmegaConfBaseException as exc:
        first = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        where = f"serve.{key}" if key else "the serve block"
        raise ShardwiseError(
            f"bad value in {where} ({first}): see the keys and their types in conf/serve.yaml"
        ) from None
    return check_serve(block)


def check_launch(settings: LaunchSettings) -> None:
    """Range rules of launch.*: values no engine could use are one-line errors before anything starts."""
    slurm = settings.slurm
    _check_ranges(
        [
            (_port_ok(settings.port), "launch.port", settings.port, PORT_FIX),
            (_port_ok(settings.master_port), "launch.master_port", settings.master_port, PORT_FIX),
            (_port_ok(settings.ray_port), "launch.ray_port", settings.ray_port, PORT_FIX),
            (
                settings.node_rank is None or settings.node_rank >= 0,
                "launch.node_rank",
                settings.node_rank,
                "use 0 for the first node, 1 for the next, ...",
            ),
            (settings.cpu_tp_size >= 0, "launch.cpu_tp_size", settings.cpu_tp_size, "use 0 (off) or 2 or more ranks"),
            (
                settings.gpu_memory_utilization is None or 0 < settings.gpu_memory_utilization <= 1,
                "launch.gpu_memory_utilization",
                settings.gpu_memory_utilization,
                "use a fraction above 0 and at most 1, or null for vLLM's default",
            ),
            (
                settings.max_num_batched_tokens is None or settings.max_num_batched_tokens >= 1,
                "launch.max_num_batched_tokens",
                settings.max_num_batched_tokens,
                "use a token count >= 1, or null for vLLM's default",
            ),
            (
                settings.max_num_seqs is None or settings.max_num_seqs >= 1,
                "launch.max_num_seqs",
                settings.max_num_seqs,
                "use a count >= 1, or null for vLLM's default",
            ),
            (slurm.timeout_min >= 1, "launch.slurm.timeout_min", slurm.timeout_min, "use minutes >= 1"),
            (slurm.cpus_per_gpu >= 1, "launch.slurm.cpus_per_gpu", slurm.cpus_per_gpu, "use 1 or more"),
            (slurm.mem_gib_per_gpu >= 1, "launch.slurm.mem_gib_per_gpu", slurm.mem_gib_per_gpu, "use GiB >= 1"),
        ]
    )
    if settings.rdzv_endpoint:
        host, _, port = str(settings.rdzv_endpoint).rpartition(":")
        if not host or not port.isdigit() or not _port_ok(int(port)):
            raise ShardwiseError(
                f"launch.rdzv_endpoint={settings.rdzv_endpoint!r} is not HOST:PORT: "
                "write e.g. launch.rdzv_endpoint=node0.cluster:29400"
            )
    check_kubernetes(settings.kubernetes)
    if any(not str(p).strip() for p in settings.prompt):
        raise ShardwiseError(
            f"launch.prompt={list(settings.prompt)!r} has an empty turn: remove it or write text for it"
        )


# Kubernetes' own rules for object names (RFC 1123 labels: namespaces, Services) and label values,
# written out because no installed library states them; the API server would refuse the objects otherwise.
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"


def check_kubernetes(k8s: KubernetesSettings) -> None:
    """Range rules of launch.kubernetes.*: values the API server would refuse, as one line now."""
    import re

    _check_ranges(
        [
            (k8s.replicas >= 1, "launch.kubernetes.replicas", k8s.replicas, "use 1 or more copies of the plan"),
            (k8s.shm_size_gib >= 1, "launch.kubernetes.shm_size_gib", k8s.shm_size_gib, "use GiB >= 1"),
        ]
    )
    # names end up in pod names and labels: LeaderWorkerSet adds "-<group>-<worker>", so stay well under 63
    for key, value, most in (("name", k8s.name, 40), ("namespace", k8s.namespace, 63)):
        if value is not None and (len(str(value)) > most or not re.fullmatch(DNS_LABEL, str(value))):
            raise ShardwiseError(
                f"launch.kubernetes.{key}={value!r} is not a Kubernetes name: use lower-case letters, digits and "
                f"'-', starting and ending with a letter or digit, at most {most} characters"
            )
    secret = k8s.hf_token_secret
    subdomain = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
    if secret is not None and (len(str(secret)) > 253 or not re.fullmatch(subdomain, str(secret))):
        raise ShardwiseError(
            f"launch.kubernetes.hf_token_secret={secret!r} is not a Secret name: use lower-case letters, digits, "
            "'-' and '.' (or null for no token)"
        )
    if not re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", str(k8s.hf_token_key)):
        raise ShardwiseError(
            f"launch.kubernetes.hf_token_key={k8s.hf_token_key!r} is not a Secret key: use letters, digits, '-', "
            "'_' and '.'"
        )
    product = k8s.gpu_product
    if product is not None and (len(str(product)) > 63 or not re.fullmatch(LABEL_VALUE, str(product))):
        raise ShardwiseError(
            f"launch.kubernetes.gpu_product={product!r} is not a label value: copy it from "
            "`kubectl get nodes -L nvidia.com/gpu.product`"
        )


def register() -> None:
    """Register every schema; idempotent."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="hardware", node=HardwareConfig)
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="policy", node=PolicyConfig)
    cs.store(group="schema", name="generation", node=GenerationConfig)
    cs.store(group="schema", name="probe", node=ProbeSettings)
    cs.store(group="schema", name="launch", node=LaunchSettings)
    cs.store(group="schema", name="serve", node=ServeConfig)


GROUP_SCHEMAS = {
    "hardware": HardwareConfig,
    "model": ModelConfig,
    "policy": PolicyConfig,
    "generation": GenerationConfig,
    "probe": ProbeSettings,
}


def validate(cfg) -> None:
    """Reject keys no schema knows, even ones forced in with `+key=value`, naming the key."""
    from dataclasses import fields

    def check(node, cls, prefix: str) -> None:
        known = {f.name: f for f in fields(cls)}
        for key in node.keys():
            if key not in known:
                hint = did_you_mean(key, known).replace("mean '", f"mean '{prefix}", 1)
                raise ShardwiseError(f"unknown key {prefix}{key}{hint}: {cls.__name__} has {', '.join(sorted(known))}")
        if cls is PolicyConfig and "overhead" in node:
            check(node.overhead, OverheadConfig, f"{prefix}overhead.")
        if cls is PolicyConfig and "performance" in node:
            check(node.performance, PerformanceConfig, f"{prefix}performance.")
        if cls is PerformanceConfig:
            for kind in ("gpu", "cpu", "cpu_half"):
                if kind in node:
                    check(node[kind], SpeedFactors, f"{prefix}{kind}.")
            if "vllm" in node:
                check(node["vllm"], VllmSpeedConfig, f"{prefix}vllm.")

    for group, cls in GROUP_SCHEMAS.items():
        if group in cfg and cfg[group] is not None:
            check(cfg[group], cls, f"{group}.")
    if cfg.get("policy") is not None:
        from planner.sessions import parse_sessions

        for key in ("sessions", "max_sessions"):  # string fields (to allow auto): check the type here
            if key in cfg.policy:
                parse_sessions(cfg.policy[key], check_range=False, key=f"policy.{key}")
    # range rules of the verb blocks, once, before the verb runs
    if cfg.get("serve") is not None:
        read_serve_config(cfg.serve)
    if cfg.get("launch") is not None:
        check_launch(typed_block(LaunchSettings, cfg.launch))
