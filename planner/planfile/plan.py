"""The Plan: the contract between planner, runner, launchers and scripts.

A frozen dataclass; `plan.json` is its serialized form (stable keys, `schema_version`).
Bytes are ints everywhere in here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from planner.errors import ShardwiseError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Quantization:
    method: str | None  # "mxfp4" or None
    kept: bool  # True: weights stay quantized in memory; False: dequantized (or never quantized)
    reason: str
    on_load: str | None = None  # "bnb4" | "bnb8" | "fp8": an unquantized checkpoint quantized while loading


@dataclass(frozen=True)
class ModelInfo:
    name: str  # profile name, or the directory name for model.path
    source: str  # hub id or local path
    model_type: str
    params_total: int  # exact parameter count (tied weights once)
    weight_bytes: int  # bytes resident in memory as loaded
    checkpoint_bytes: int | None  # bytes as shipped, when known
    dtype: str  # compute dtype
    quantization: Quantization
    max_context_tokens: int = 0  # the model's own maximum (max_position_embeddings / n_positions)
    num_layers: int = 0
    trust_remote_code: bool = False
    chat_template: str | None = None  # profile template for models without one
    revision: str | None = None  # hub commit the plan was made from (hub ids), for from_pretrained(revision=)


@dataclass(frozen=True)
class DeviceBudget:
    device: str  # "cuda:0" / "0" ... key as in max_memory: "0", "1", "cpu", "disk"
    weights: int
    kv_cache: int
    activations: int
    overhead: int
    planned: int
    usable: int
    free_after: int
    node: int = 0
    layers: tuple = ()  # (first, last) layer indices placed here, () when none
    state: int = 0  # fixed Mamba / linear-attention cache state of the sessions (part of planned, not of kv_cache)

    @property
    def fits(self) -> bool:
        return self.planned <= self.usable


@dataclass(frozen=True)
class Limits:
    context_tokens: int  # per session, prompt + reply
    sessions: int  # concurrent sequences
    max_new_tokens: int
    kv_bytes_per_token: int  # one sequence, all attention layers, while shorter than every window
    prefill_chunk_tokens: int = 0  # 0: prefill in one pass
    state_bytes_per_sequence: int = 0  # fixed Mamba / linear-attention cache state of one sequence, any context


@dataclass(frozen=True)
class Serving:
    """How `shardwise serve` runs concurrent requests: transformers' continuous batching, or one at a time.

    A paged-cache block holds `page_size_tokens` tokens of K and V for every layer; `num_blocks` and
    `max_batch_tokens` are passed to transformers' ContinuousBatchingConfig as they are, so the runner
    never probes memory on its own. `footprint_bytes` is what transformers' own sizing
    (PagedAttentionMemoryHandler.compute_memory_footprint) reserves for these settings.
    """

    mode: str  # "batched" | "sequential"
    reason: str
    page_size_tokens: int = 0
    num_blocks: int = 0  # whole-model blocks of page_size_tokens tokens
    max_batch_tokens: int = 0  # tokens per forward pass (prefill chunks + one per decoding sequence)
    max_concurrent: int = 0  # sequences generating at once; more requests wait in the queue
    cache_bytes: int = 0  # the paged cache tensor (its two unused leading sectors included)
    footprint_bytes: int = 0  # cache + batch buffers + attention masks, as transformers sizes them
    attn_implementation: str = ""  # what continuous batching runs with


@dataclass(frozen=True)
class Decision:
    what: str
    value: str
    reason: str


@dataclass
class Notes:
    """The decisions and warnings of one planning run, in the order they were made."""

    decisions: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def decide(self, what: str, value, reason: str) -> None:
        self.decisions.append(Decision(what, str(value), reason))

    def warn(self, text: str) -> None:
        self.warnings.append(text)


# The only variables shardwise writes into a plan's launch.env (planner.driver.planning._launch). A plan file is
# data: PYTHONPATH (with a sitecustomize.py), LD_PRELOAD, PYTHONSTARTUP and the like would run code in
# every launched process, so any other key is dropped, and said, when the plan is launched.
LAUNCH_ENV_KEYS = ("CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF")


@dataclass(frozen=True)
class Launch:
    command: str
    env: dict = field(default_factory=dict)

    def safe_env(self) -> tuple[dict[str, str], list[str]]:
        """(the variables of `env` shardwise passes on, the names it drops): only LAUNCH_ENV_KEYS with text values."""
        kept, dropped = {}, []
        for key, value in (self.env or {}).items():
            text = str(value)
            if key in LAUNCH_ENV_KEYS and isinstance(value, str) and "\0" not in text and "\n" not in text:
                kept[key] = text
            else:
                dropped.append(str(key)[:60])
        return kept, dropped


def plan_file_path(value) -> Path:
    """A `plan_file=` value as a path: plan_file=5 is a file named "5"; a list or mapping (Hydra parses `[a]` and
    `{a: 1}`) or true names no file, in one line."""
    import os

    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike, int, float)):
        raise ShardwiseError(f"plan_file={value!r:.60} is not a path: name a plan file, e.g. plan_file=plan.json")
    return Path(str(value) if isinstance(value, (int, float)) else value)


@dataclass(frozen=True)
class Plan:
    model: ModelInfo
    hardware: dict  # Hardware.to_dict(): source, fingerprint, devices[], host_ram_bytes, ...
    strategy: str  # cpu | single_gpu | pipeline | tensor_parallel | offload
    nodes: int
    tp_size: int
    pp_size: int
    device_map: dict  # module name -> device (int GPU index, "cpu" or "disk"), as from_pretrained takes it
    max_memory: dict  # device -> bytes, as from_pretrained takes it
    budget: tuple  # DeviceBudget per device used
    limits: Limits
    fits: bool
    decisions: tuple = ()  # Decision, in the order they were made
    warnings: tuple = ()
    fallbacks: tuple = ()  # ({"model": name, "hardware": "cpu"|..., "reason": ...}, ...) the runner's chain
    launch: Launch = Launch(command="")
    attn_implementation: str = "sdpa"
    kv_cache_dtype: str = "bfloat16"
    offload_folder: str | None = None
    binding: dict = field(
        default_factory=dict
    )  # when it does not fit: {"device", "term", "needed", "usable", "fixes": [...]}
    serving: Serving | None = None  # None in plans written before batching existed: served sequentially
    # predicted speed (planner/speed/block.py): decode_tokens_per_s, aggregate_tokens_per_s, ttft_s, ttft_full_s,
    # binding
    performance: dict = field(default_factory=dict)
    # the engine that runs the plan: {"name": "transformers", "version"} for shardwise's runner; for vLLM its own
    # budget per GPU, KV capacity, verdict and `vllm serve` flags (planner/vllm/driver.py, engine_block)
    engine: dict = field(default_factory=dict)
    # the software stack the plan assumed (planner/decide/stack.py): transformers, torch, accelerate, kernels, triton
    software: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def fingerprint(self) -> str:
        return self.hardware.get("fingerprint", "")

    def to_dict(self) -> dict:
        data = asdict(self)
        # JSON object keys are strings: keep GPU indices as ints in values, stringify keys.
        data["max_memory"] = {str(k): v for k, v in self.max_memory.items()}
        return data

    def to_json(self) -> str:
        from planner.jsonfile import dumps_json

        return dumps_json(self.to_dict(), "plan")  # strict: NaN or Infinity never reaches plan.json

    def save(self, path: str | Path) -> Path:
        from planner.jsonfile import write_text_atomic

        return write_text_atomic(path, self.to_json() + "\n")  # a failed write leaves the old plan whole

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        if not isinstance(data, dict) or "schema_version" not in data or "model" not in data:
            raise ShardwiseError(
                "this is not a plan file (no schema_version/model): write one with `shardwise plan out=plan.json`"
            )
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ShardwiseError(
                f"plan schema_version {version!r} is not {SCHEMA_VERSION}: re-create it with `shardwise plan`"
            )
        import sys

        from planner.planfile.plan_check import check_plan_dict, dataclasses_of

        check_plan_dict(data, cls, dataclasses_of(sys.modules[__name__]))
        data = dict(data)
        model = dict(data.pop("model"))
        model["quantization"] = Quantization(**model["quantization"])
        max_memory = {(int(k) if str(k).isdigit() else k): v for k, v in data.pop("max_memory").items()}
        serving = data.pop("serving", None)
        return cls(
            serving=Serving(**serving) if serving else None,
            model=ModelInfo(**model),
            budget=tuple(DeviceBudget(**{**b, "layers": tuple(b.get("layers", ()))}) for b in data.pop("budget")),
            limits=Limits(**data.pop("limits")),
            decisions=tuple(Decision(**d) for d in data.pop("decisions", ())),
            warnings=tuple(data.pop("warnings", ())),
            fallbacks=tuple(data.pop("fallbacks", ())),
            launch=Launch(**data.pop("launch", {"command": ""})),
            max_memory=max_memory,
            **data,
        )

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        from planner.jsonfile import read_json

        path = plan_file_path(path)
        hint = "re-create it with `shardwise plan out=plan.json`"
        data = read_json(path, "plan file", hint=hint, unique_keys=True)  # a reviewer reads every key once
        try:
            return cls.from_dict(data)
        except ShardwiseError as exc:
            fix = "" if "shardwise plan" in str(exc) else f": {hint}"
            raise ShardwiseError(f"plan file {str(path)!r}: {exc}{fix}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardwiseError(
                f"plan file {str(path)!r} is missing or has unexpected keys ({exc}): re-create it with `shardwise plan`"
            ) from None
