"""Checks on a plan before its model loads: what is wrong with the input is exit 2, never out-of-memory advice.

A plan file may name a GPU this machine lacks, a model directory that is gone, a dtype no model
computes in, or a directory without a tokenizer. Loading would fail deep inside torch or
transformers (or start and produce garbage), and the recovery ladder would then offer smaller
models as if memory were the problem. `check_runnable` says what is wrong, in one line, first.
"""

from __future__ import annotations

from pathlib import Path

from planner.errors import ShardwiseError
from planner.files import expand_user

COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
# any one of these in a model directory gives transformers a tokenizer to load
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _gpu_index(device) -> int | None:
    """The CUDA index a device_map / max_memory entry names (0, "0", "cuda:0"); None for cpu, disk and the like."""
    if isinstance(device, bool):
        return None
    if isinstance(device, int):
        return device
    text = str(device)
    if text.startswith("cuda:"):
        text = text[len("cuda:") :]
    return int(text) if text.isdigit() else None


def _check_devices(plan) -> None:
    import torch

    named = {d for d in plan.device_map.values()} | set(plan.max_memory)
    for device in sorted(named, key=str):
        text = str(device)
        if text in ("cpu", "disk", "meta", "cuda") or _gpu_index(device) is not None:
            continue
        raise ShardwiseError(
            f"the plan places weights on {text!r}, which is not a device shardwise runs on (GPU index, cpu or disk): "
            "re-create the plan with `shardwise plan`"
        )
    wanted = sorted({i for i in map(_gpu_index, named) if i is not None})
    if not wanted:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in wanted if i >= available]
    if missing:
        raise ShardwiseError(
            f"the plan places weights on GPU {', '.join(map(str, missing))} but this machine has {available} GPU(s) "
            "visible to torch: re-plan here with `shardwise plan`, or check CUDA_VISIBLE_DEVICES"
        )


def _check_dtypes(plan) -> None:
    for what, value in (("model.dtype", plan.model.dtype), ("kv_cache_dtype", plan.kv_cache_dtype)):
        if what == "model.dtype" and value not in COMPUTE_DTYPES:
            raise ShardwiseError(
                f"the plan's {what} is {value!r}: a model computes in {', '.join(COMPUTE_DTYPES)}; re-create the plan"
            )
        if what == "kv_cache_dtype" and value not in ("auto", None):
            import torch

            found = getattr(torch, str(value), None)
            if not isinstance(found, torch.dtype) or not found.is_floating_point:
                raise ShardwiseError(f"the plan's {what} is {value!r}, not a floating-point dtype; re-create the plan")


def _looks_like_a_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or "\\" in source or source.count("/") > 1


def _special_entries(directory: Path) -> list[str]:
    """Names in `directory` that are FIFOs, devices or sockets (through symlinks): transformers would open them
    blocking (a FIFO named tokenizer.json waits forever for a writer), so a model directory holds none."""
    import os
    import stat

    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return found
    for entry in entries:
        try:
            mode = entry.stat().st_mode  # follows links, as transformers' open would
        except OSError:  # a dangling link cannot block anything
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            found.append(entry.name)
    return sorted(found)


def _check_source(plan) -> None:
    source = str(plan.model.source)
    where = expand_user(source)
    if where.is_dir():
        special = _special_entries(where)
        if special:
            raise ShardwiseError(
                f"model directory {source!r} holds {', '.join(repr(n) for n in special[:4])}, which "
                f"{'is not a regular file' if len(special) == 1 else 'are not regular files'} (a FIFO, device or "
                "socket): a model directory holds regular files only; remove them"
            )
    if where.exists():
        if not where.is_dir():  # the planner writes a model's directory, never its config.json or another file
            raise ShardwiseError(
                f"the plan's model source {source!r} is a file, not a model directory: name the directory that holds "
                "config.json, or re-plan with model.path=DIR"
            )
        if not any((where / name).is_file() for name in TOKENIZER_FILES):
            raise ShardwiseError(
                f"model directory {source!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])}, ...): "
                "copy the tokenizer files of the model into it"
            )
        return
    _check_missing_source(source)


def _check_missing_source(source: str) -> None:
    """A source that is not on this machine must be a hub id ORG/NAME, the only other kind the planner writes; any
    other name ("gpt2", "x") would reach transformers, which asks the hub for it and retries for a minute offline."""
    from planner.model.hub import is_hub_id

    if _looks_like_a_path(source):
        raise ShardwiseError(
            f"the plan's model source {source!r} does not exist on this machine: copy the model there, "
            "or re-plan with model.path=DIR"
        )
    if not is_hub_id(source):
        raise ShardwiseError(
            f"the plan's model source {source!r:.80} is neither a directory on this machine nor a hub id ORG/NAME: "
            "re-plan with model.path=DIR or model=ORG/NAME"
        )


def _check_attention(plan) -> None:
    """Flash kernels run on CUDA GPUs only; a plan file moved to a machine without one would fail inside the load."""
    import torch

    attn = plan.attn_implementation
    if "flash" in attn and not torch.cuda.is_available():
        raise ShardwiseError(
            f"the plan's attn_implementation={attn} needs a CUDA GPU and torch sees none here: re-plan here with "
            "`shardwise plan` (sdpa runs everywhere)"
        )


def check_weights_reachable(plan) -> None:
    """A hub model's weights are in the HF cache or the hub answers now: one line in seconds, not minutes of
    transformers' retries. Call it before torch is imported (it imports only huggingface_hub)."""
    from planner.model.hub import check_weights_reachable as check_hub

    source = str(plan.model.source)
    if expand_user(source).exists():
        return
    _check_missing_source(source)
    check_hub(source, plan.model.revision, plan.model.name)


def check_model_reachable(model_cfg) -> bool:
    """check_weights_reachable from the composed `model` config, before planning (a profile names its hub id):
    True when a hub model was checked, False when there was nothing to check (a local path, no hub id)."""
    from planner.model.hub import check_weights_reachable as check_hub
    from planner.model.hub import is_hub_id

    hub_id = str(model_cfg.get("hub_id") or "")
    if model_cfg.get("path") or not is_hub_id(hub_id) or expand_user(hub_id).exists():
        return False
    check_hub(hub_id, model_cfg.get("revision"), str(model_cfg.get("name") or ""))
    return True


def check_runnable(plan) -> None:
    """Refuse, in one line, a plan this machine cannot load for reasons that are not memory (the plan's values
    themselves were range-checked when it was read: planner.planfile.plan_check)."""
    _check_dtypes(plan)
    _check_source(plan)
    _check_devices(plan)
    _check_attention(plan)


def consents_to_remote_code(trust_remote_code: bool, overrides, *, fresh_plan: bool) -> bool:
    """The one consent rule, for the CLI and the Python API: the run's own `trust_remote_code` says yes, or,
    for a plan made now, the caller's own overrides set `model.trust_remote_code=true`. A plan file, a
    `plan=` object or a profile asking for remote code is never consent by itself."""
    if trust_remote_code is True:
        return True
    if not fresh_plan:
        return False
    typed = [str(o).replace(" ", "").lower().lstrip("+") for o in overrides]
    return any(o in ("model.trust_remote_code=true", "model.trust_remote_code=yes") for o in typed)


def check_remote_code(plan, consent: bool, how: str = "add trust_remote_code=true to this command line") -> None:
    """A plan that runs Python shipped with the model (auto_map) needs consent from this run (`how` gives it)."""
    if plan.model.trust_remote_code and not consent:
        raise ShardwiseError(
            f"the plan for {plan.model.name} runs Python code shipped in {plan.model.source} "
            f"(model.trust_remote_code=true): read that code, then {how}"
        )
