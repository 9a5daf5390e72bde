"""Load exactly what a Plan says: from_pretrained with its device_map, max_memory, dtype, quantization, attention.

    loaded = load(plan)                 # LoadedModel(model, tokenizer, plan, processor, ...)
    check_fresh(plan, "plan.json")      # refuse a reviewed plan made for other hardware

The model class is the one transformers' auto mappings give for the class named in config.json's
`architectures` (planner/model/auto_class.py: causal LM first, then image-text-to-text and multimodal
LM). A model transformers registers as taking images is loaded with its processor (AutoProcessor:
tokenizer + image processor + chat template), so image parts can reach it; any other model, or one
whose directory has no usable processor (said in one line), gets its tokenizer and chats in text.

The runtime environment (`PYTORCH_CUDA_ALLOC_CONF`, `CUDA_DEVICE_ORDER`, `OMP_WAIT_POLICY`) is set here
before torch loads and creates a CUDA context; the plan carries every other decision, so nothing is re-decided.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from planner.errors import ShardwiseError
from planner.files import expand_user
from planner.units import GIB

DEFAULT_ALLOC_CONF = "expandable_segments:True"

# torch's CPU threads (an OpenMP team) wait for their next parallel region asleep instead of spinning. The runner's
# process has other threads that need a core for every token (the server's event loop and request threads, a chat
# REPL), and a host is often shared: a spinning helper holds a core they need, and when one member of the team is
# descheduled the others spin through their slices waiting for it. Seen on a shared 2-core host: `shardwise serve`
# streamed a ~40M model at 6 tok/s with the default (spinning) policy and 31-37 tok/s with PASSIVE, for one client
# (benchmarks/results/serve_versus_cpu.md). OpenMP reads it once, when torch loads.
OMP_WAIT_POLICY = "PASSIVE"


@dataclass
class LoadedModel:
    """A model and tokenizer in memory, with the plan they came from (and the processor of a model that takes
    images: None for a text model)."""

    model: object
    tokenizer: object
    plan: object
    load_s: float = 0.0
    processor: object = field(default=None, repr=False)
    # One generation at a time per model: sessions sharing this model share the lock.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # runner.engine.batching.BatchingEngine once serving starts batching for this model (None: sequential turns).
    batching: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.plan.model.name if self.plan is not None else type(self.model).__name__

    @property
    def input_device(self):
        """Where prompt ids go: the embedding's device (accelerate hooks move the rest)."""
        import torch

        embedding = self.model.get_input_embeddings()
        device = embedding.weight.device
        return torch.device("cpu") if device.type == "meta" else device


def set_runtime_env(alloc_conf: str | None = DEFAULT_ALLOC_CONF, log: Callable[[str], None] | None = None) -> dict:
    """Set allocator, device-order and OpenMP wait variables before torch loads; returns what was set.

    A value already in the environment wins (the user set it on purpose); a CUDA context that
    already exists cannot see a change, which is said instead of ignored (OpenMP's wait policy,
    read when torch loads, is simply kept as it was: the process runs, only a little slower).
    """
    wanted = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "OMP_WAIT_POLICY": OMP_WAIT_POLICY}
    if alloc_conf:
        wanted["PYTORCH_CUDA_ALLOC_CONF"] = alloc_conf
    set_now = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            set_now[key] = value
    torch = sys.modules.get("torch")
    if set_now and torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() and log:
        log(f"note: CUDA was already initialised, so {', '.join(set_now)} take effect only in a new process")
    return set_now


def _current_fingerprint(hardware_source: str) -> str:
    from planner.config.compose import current_fingerprint

    return current_fingerprint(hardware_source)


def check_fresh(plan, plan_file: str | None = None) -> None:
    """Refuse a plan whose hardware fingerprint differs from this machine's now."""
    source = plan.hardware.get("source", "probe")
    now = _current_fingerprint(source)
    if now != plan.fingerprint:
        where = f"plan file {plan_file!r}" if plan_file else "the plan"
        raise ShardwiseError(
            f"{where} was made for hardware {plan.fingerprint} (source {source}) but this machine is now {now}: "
            f"review a new plan with `shardwise plan`, or run with replan=true"
        )


def _torch_dtype(name: str):
    import torch

    if name in (None, "", "auto"):
        return "auto"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ShardwiseError(f"plan dtype {name!r} is not a torch dtype: re-create the plan with `shardwise plan`")
    return dtype


def from_pretrained_kwargs(plan, offload_folder: str | None = None) -> dict:
    """The exact keyword arguments the model's auto class (`auto_model_class`) `from_pretrained` gets for this plan."""
    kwargs = {
        "dtype": _torch_dtype(plan.model.dtype),
        "device_map": plan.device_map or None,
        "attn_implementation": plan.attn_implementation,
        "trust_remote_code": bool(plan.model.trust_remote_code),
    }
    # max_memory only steers device_map="auto"/"balanced"; an explicit map is already placed.
    if isinstance(plan.device_map, str) and plan.max_memory:
        kwargs["max_memory"] = dict(plan.max_memory)
    if offload_folder:
        kwargs["offload_folder"] = offload_folder
    if plan.model.revision:  # a hub model loads the commit it was planned from, not whatever main is by now
        kwargs["revision"] = plan.model.revision
    quant = plan.model.quantization
    if quant.method == "mxfp4" and not quant.kept:
        # The plan sized dequantized weights: ask transformers for exactly that.
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    elif quant.method == "fp8" and not quant.kept:
        from transformers import FineGrainedFP8Config

        kwargs["quantization_config"] = FineGrainedFP8Config(dequantize=True)
    elif quant.on_load:
        kwargs["quantization_config"] = _on_load_config(quant.on_load, plan.model.dtype)
    return kwargs


def check_device_map_names(model, device_map) -> None:
    """The plan's device_map names modules of this model and places every parameter: transformers loads a map that
    names a module the model lacks, or leaves some out, without a word, and puts what the map misses on the CPU,
    so a hand-edited plan would run somewhere its budget never priced."""
    if not isinstance(device_map, dict) or not device_map:
        return
    parameters = [name for name, _ in model.named_parameters()]
    known = {name for name, _ in model.named_modules()} | set(parameters)  # "" is the model itself
    unknown = sorted(str(k) for k in device_map if k not in known)
    if unknown:
        raise ShardwiseError(
            f"the plan's device_map names {', '.join(repr(k[:60]) for k in unknown[:3])}, which "
            f"{type(model).__name__} does not have: re-create the plan with `shardwise plan`"
        )

    def placed(name: str) -> bool:  # the parameter or a module holding it is a key
        parts = name.split(".")
        return "" in device_map or any(".".join(parts[:i]) in device_map for i in range(1, len(parts) + 1))

    unplaced = [name for name in parameters if not placed(name)]
    if unplaced:
        raise ShardwiseError(
            f"the plan's device_map places no device for {len(unplaced)} parameter(s) of the model, such as "
            f"{unplaced[0]!r}: re-create the plan with `shardwise plan`"
        )


def _on_load_config(policy: str, dtype: str):
    """The quantization_config the plan sized for policy.quantization=bnb4|bnb8|fp8 (decide/quant_support.py)."""
    from planner.decide.quant_support import ON_LOAD

    settings = {k: v for k, v in ON_LOAD[policy].items() if k != "quant_method"}
    if policy == "fp8":
        from transformers import FineGrainedFP8Config

        return FineGrainedFP8Config(**settings)
    from transformers import BitsAndBytesConfig

    if policy == "bnb4":
        settings["bnb_4bit_compute_dtype"] = _torch_dtype(dtype)
    return BitsAndBytesConfig(**settings)


def _offload_folder(plan, log) -> str | None:
    devices = set(plan.device_map.values()) if isinstance(plan.device_map, dict) else set()
    if "disk" not in devices:
        return plan.offload_folder
    if plan.offload_folder:
        try:
            os.makedirs(plan.offload_folder, exist_ok=True)
        except OSError as exc:  # a file of that name, no permission: the plan's folder, not memory, is wrong
            raise ShardwiseError(
                f"the plan offloads to disk in offload_folder {plan.offload_folder!r:.120}, which cannot be a "
                f"directory here ({exc.strerror or exc}): re-plan with policy.offload_folder=DIR"
            ) from None
        return plan.offload_folder
    folder = tempfile.mkdtemp(prefix="shardwise-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # ours alone: removed when the process ends
    log(f"note: the plan offloads to disk but names no folder: using {folder} (removed at exit)")
    return folder


def _human_bytes(count: int) -> str:
    return f"{count / GIB:.1f} GiB" if count >= GIB // 10 else f"{count / (1 << 20):.1f} MiB"


def _describe_placement(plan) -> str:
    if isinstance(plan.device_map, dict):
        devices = sorted({str(v) for v in plan.device_map.values()})
        return f"{plan.strategy} ({', '.join(devices)})"
    return f"{plan.strategy} ({plan.device_map})"


def local_source(plan) -> str | None:
    """The HF cache snapshot to load a hub model from when it holds every file a load reads (config, weights, a
    tokenizer) at the commit the plan was made from; None: load by the plan's source as it is.

    transformers and huggingface_hub ask the hub about a cached file before using it and retry for a minute
    when the network is down (unless HF_HUB_OFFLINE is set); loading the snapshot directory asks nothing."""

    from planner.model.hub import cached_snapshot, is_hub_id
    from runner.engine.preflight import TOKENIZER_FILES

    source = str(plan.model.source)
    if not plan.model.revision or not is_hub_id(source) or expand_user(source).exists():
        return None
    snapshot = cached_snapshot(source, plan.model.revision)
    if snapshot is None or not any((snapshot / name).is_file() for name in TOKENIZER_FILES):
        return None
    return str(snapshot)


def load_preprocessing(source: str, config, *, trust_remote_code: bool, revision: str | None, log) -> tuple:
    """(tokenizer, processor or None): the processor when transformers says the model takes images and the
    directory has an image processor for it; else the tokenizer alone, and text chat."""
    from transformers import AutoProcessor, AutoTokenizer

    from planner.model.auto_class import takes_images

    settings = {"trust_remote_code": trust_remote_code, "revision": revision}
    if takes_images(config):
        try:
            processor = AutoProcessor.from_pretrained(source, **settings)
        except Exception as exc:  # no processor files, or a class this install cannot build: text still works
            first_line = (str(exc).splitlines() or [""])[0][:160]
            processor, why = None, f"its processor did not load ({type(exc).__name__}: {first_line})"
        else:
            why = "its directory has no image processor"
        if getattr(processor, "image_processor", None) is not None and getattr(processor, "tokenizer", None):
            return processor.tokenizer, processor
        log(f"note: {config.model_type} takes images but {why}: text chat only, image parts are refused")
    return AutoTokenizer.from_pretrained(source, **settings), None


def load(plan, *, alloc_conf: str | None = DEFAULT_ALLOC_CONF, log: Callable[[str], None] | None = None) -> LoadedModel:
    """Load the plan's model and tokenizer (and processor); transformers shows its own weight-loading progress bar."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    set_runtime_env(alloc_conf, log)
    from planner.decide.stack import drift

    kept = plan.model.quantization.method if plan.model.quantization.kept else None
    for line in drift(plan.software, kept):
        log(f"note: {line}")

    from transformers import AutoConfig

    from planner.model.auto_class import auto_model_class

    source = plan.model.source
    offload = _offload_folder(plan, log)
    kwargs = from_pretrained_kwargs(plan, offload)
    snapshot = local_source(plan)
    if snapshot is not None:
        source, where = snapshot, f"from the HF cache, {snapshot}"
        kwargs.pop("revision", None)  # the directory is that revision
    else:
        where = source
    size = _human_bytes(plan.model.weight_bytes) if plan.model.weight_bytes else "size unknown"
    start = time.perf_counter()
    remote, revision = kwargs["trust_remote_code"], kwargs.get("revision")
    config = AutoConfig.from_pretrained(source, trust_remote_code=remote, revision=revision)
    auto, why = auto_model_class(config)
    log(f"loading {plan.model.name} ({where}) as {plan.model.dtype} on {_describe_placement(plan)}, {size}: {why}")
    tokenizer, processor = load_preprocessing(source, config, trust_remote_code=remote, revision=revision, log=log)
    model = auto.from_pretrained(source, **kwargs)
    check_device_map_names(model, plan.device_map)
    model.eval()
    return LoadedModel(
        model=model, tokenizer=tokenizer, plan=plan, load_s=time.perf_counter() - start, processor=processor
    )
