"""Check a plan.json's fields against the Plan dataclasses once, on read, with one error naming the field.

A plan file is input like any other: someone may have edited it, or it may come from another
tool. `check_plan_dict` walks the dataclass fields (so fields added to the Plan later are
checked too) and refuses the first value of the wrong type, e.g. `hardware` given as a list or
`limits.context_tokens` as a string, before any of it is used. Written by hand because the Plan
is plain dataclasses and the check must say, in one line, which field of a JSON file is wrong: a
field typed with something JSON has no word for is a TypeError here (a test walks every field),
never a hole any value passes through. The free-form blocks (`hardware`, `performance`, `engine`)
are reports; the values the runner uses from them are range-checked in `check_plan_values`.
"""

from __future__ import annotations

import dataclasses
import math
import re

from planner.errors import ShardwiseError

_SIMPLE = {
    "int": (int,),
    "str": (str,),
    "bool": (bool,),
    "float": (int, float),
    "dict": (dict,),
    "tuple": (list, tuple),
    "list": (list, tuple),
    "None": (type(None),),
}
_WORDS = {int: "an integer", str: "a string", bool: "true or false", dict: "an object", list: "a list"}


def _allowed(annotation: str, classes: dict[str, type]) -> tuple[tuple, type | None]:
    """The JSON types an annotation such as "int | None" admits, and the dataclass it names (if any)."""
    kinds: tuple = ()
    nested = None
    for name in (part.strip() for part in annotation.split("|")):
        base = name.split("[", 1)[0]
        if base in _SIMPLE:
            kinds += _SIMPLE[base]
        elif base in classes:
            kinds += (dict,)
            nested = classes[base]
        else:  # a Plan field typed with something JSON has no word for: a bug in the Plan, not in the file
            raise TypeError(f"plan_check cannot check the annotation {annotation!r}: give the field a JSON type")
    return kinds, nested


def _describe(kinds: tuple) -> str:
    words = [_WORDS[k] for k in kinds if k in _WORDS]
    if type(None) in kinds:
        words.append("null")
    return " or ".join(dict.fromkeys(words)) or "another type"


def _fits(value, kinds: tuple) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON true is not a count
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, kinds)


def check_fields(data, cls, prefix: str, classes: dict[str, type]) -> None:
    """Refuse the first field of `data` whose JSON type does not match dataclass `cls`."""
    if not isinstance(data, dict):
        raise ShardwiseError(f"{prefix.rstrip('.') or 'the plan'} must be an object, not {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ShardwiseError(f"unexpected key {prefix}{key}")
    for name, f in known.items():
        if name not in data:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise ShardwiseError(f"missing key {prefix}{name}")
            continue
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        kinds, nested = _allowed(annotation, classes)
        value = data[name]
        if not _fits(value, kinds):
            raise ShardwiseError(f"{prefix}{name} must be {_describe(kinds)}, not {value!r:.60}")
        if nested is not None and isinstance(value, dict):
            check_fields(value, nested, f"{prefix}{name}.", classes)


def _check_items(items, what: str, kinds: tuple) -> None:
    for key, value in items:
        if not _fits(value, kinds):
            raise ShardwiseError(f"{what}[{key!r}] must be {_describe(kinds)}, not {value!r:.60}")


def check_plan_dict(data: dict, plan_cls, classes: dict[str, type]) -> None:
    """Every field of a plan dict has the JSON type the Plan dataclasses declare; raises ShardwiseError."""
    check_fields(data, plan_cls, "", classes)
    _check_items(data["device_map"].items(), "device_map", (int, str))
    _check_items(data["max_memory"].items(), "max_memory", (int, str))
    budget_cls = classes.get("DeviceBudget")
    for i, entry in enumerate(data["budget"]):
        if budget_cls is not None:
            check_fields(entry, budget_cls, f"budget[{i}].", classes)
    decision_cls = classes.get("Decision")
    for i, entry in enumerate(data.get("decisions", ())):
        if decision_cls is not None:
            check_fields(entry, decision_cls, f"decisions[{i}].", classes)
    hardware = data["hardware"]
    if not isinstance(hardware.get("fingerprint", ""), str):
        raise ShardwiseError("hardware.fingerprint must be a string")
    devices = hardware.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise ShardwiseError("hardware.devices must be a list of objects")
    for i, fallback in enumerate(data.get("fallbacks", ())):
        if not isinstance(fallback, dict):
            raise ShardwiseError(f"fallbacks[{i}] must be an object, not {fallback!r:.60}")
    check_plan_values(data)


# Devices a plan may place weights on, as from_pretrained takes them: a GPU index, "cuda:N", "cpu" or "disk".
# "meta" would load nothing (every later call fails), bare "cuda" means whichever GPU is current.
_NAMED_DEVICES = ("cpu", "disk")
# attention implementations the planner writes (planner.decide.decisions.decide_attention); anything else, such as a hub
# kernel repository, would make transformers fetch and run code the plan's reviewer never saw.
SERVING_MODES = ("batched", "sequential")
MAX_PAGE_TOKENS = 4096
_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)?$", re.IGNORECASE)


def known_attention() -> tuple[str, ...]:
    from planner.decide.decisions import FLASH_ATTN3_HUB
    from planner.decide.policy import ATTENTION_KERNELS

    return tuple(k for k in ATTENTION_KERNELS if k != "auto") + (FLASH_ATTN3_HUB,)


def device_ok(device) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return device >= 0
    text = str(device)
    return text in _NAMED_DEVICES or text.isdigit() or (text.startswith("cuda:") and text[5:].isdigit())


def _count(data: dict, key: str, where: str, minimum: int = 0) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ShardwiseError(f"{where}{key}={value!r:.40} must be an integer >= {minimum}")
    return value


def _check_source(source: str) -> None:
    if any(ord(ch) < 32 for ch in source) or not source.strip():
        raise ShardwiseError(
            f"model.source {source!r:.80} is empty or holds control characters: name a directory or a hub id"
        )
    if source.startswith("~") and not source.startswith("~/"):
        raise ShardwiseError(
            f"model.source {source!r:.80} names another user's home directory (~user): give the path itself"
        )


def _check_devices(data: dict) -> None:
    for module, device in data["device_map"].items():
        if not device_ok(device):
            raise ShardwiseError(
                f"device_map[{module!r:.60}]={device!r:.40} is not a device shardwise loads on: use a GPU index "
                "(0, 1, ...), cpu or disk"
            )
    for device, size in data["max_memory"].items():
        if not device_ok(device if not str(device).isdigit() else int(device)):
            raise ShardwiseError(f"max_memory names {device!r:.40}: use a GPU index (0, 1, ...), cpu or disk")
        ok = size >= 0 if isinstance(size, int) and not isinstance(size, bool) else bool(_SIZE.match(str(size)))
        if not ok:
            raise ShardwiseError(f"max_memory[{device!r:.40}]={size!r:.40} is not a size: use bytes (an integer >= 0)")


def _check_limits(limits: dict) -> None:
    context = _count(limits, "context_tokens", "limits.", 1)
    _count(limits, "sessions", "limits.", 1)
    new_tokens = _count(limits, "max_new_tokens", "limits.", 1)
    if new_tokens > context:
        raise ShardwiseError(
            f"limits.max_new_tokens={new_tokens} is more than limits.context_tokens={context}: a reply cannot outgrow "
            "the context"
        )
    for key in ("kv_bytes_per_token", "prefill_chunk_tokens", "state_bytes_per_sequence"):
        _count(limits, key, "limits.")


def _check_serving(serving: dict, limits: dict) -> None:
    """A batched serving block must be what the plan's limits allow: no more sequences than limits.sessions, no
    more cache than those sessions' contexts need (the planner's own sizing, with its rounding to sectors)."""
    mode = serving.get("mode")
    if mode not in SERVING_MODES:
        raise ShardwiseError(f"serving.mode={mode!r:.40} must be one of {', '.join(SERVING_MODES)}")
    for key in ("page_size_tokens", "num_blocks", "max_batch_tokens", "max_concurrent", "cache_bytes"):
        _count(serving, key, "serving.")
    attn = serving.get("attn_implementation", "")
    if attn and attn not in known_attention():
        raise ShardwiseError(
            f"serving.attn_implementation={attn!r:.60} is not one shardwise plans ({', '.join(known_attention())})"
        )
    if mode != "batched":
        return
    page, blocks, concurrent = serving["page_size_tokens"], serving["num_blocks"], serving["max_concurrent"]
    if not 1 <= page <= MAX_PAGE_TOKENS or blocks < 1 or concurrent < 1 or serving["max_batch_tokens"] < 1:
        raise ShardwiseError(
            "a batched serving block needs page_size_tokens (1-4096), num_blocks, max_batch_tokens and max_concurrent "
            "of at least 1: re-create the plan with `shardwise plan`"
        )
    sessions, context = limits["sessions"], limits["context_tokens"]
    if concurrent > sessions:
        raise ShardwiseError(
            f"serving.max_concurrent={concurrent} is more than the plan's limits.sessions={sessions}, the sequences "
            "its memory budget holds: re-create the plan with policy.sessions=N"
        )
    # every sequence's context in whole pages, plus the planner's rounding up to whole sectors (at most a few pages)
    most_blocks = sessions * (-(-context // page) + 2) * 2
    if blocks > most_blocks:
        raise ShardwiseError(
            f"serving.num_blocks={blocks} blocks of {page} tokens is more than {sessions} session(s) of {context} "
            f"tokens need (at most {most_blocks}): re-create the plan with `shardwise plan`"
        )


def _check_quantization(quant: dict) -> None:
    """The quantization the runner asks transformers for: a format shardwise reads, a load-time policy it plans."""
    from planner.decide.quant_support import ON_LOAD
    from planner.model.quant import METHODS

    method, on_load = quant.get("method"), quant.get("on_load")
    if method is not None and method not in METHODS:
        raise ShardwiseError(
            f"model.quantization.method={method!r:.40} is not a format shardwise reads: use null or one of "
            f"{', '.join(METHODS)}"
        )
    if on_load is not None and on_load not in ON_LOAD:
        raise ShardwiseError(
            f"model.quantization.on_load={on_load!r:.40} is not a load-time quantization shardwise plans: use null "
            f"or one of {', '.join(ON_LOAD)}"
        )


def check_plan_values(data: dict) -> None:
    """Every value the runner hands to transformers or sizes threads and caches with is in range."""
    model = data["model"]
    _check_source(str(model.get("source", "")))
    _check_quantization(model["quantization"])
    _check_devices(data)
    attn = data.get("attn_implementation", "sdpa")
    if attn not in known_attention():
        raise ShardwiseError(
            f"attn_implementation={attn!r:.60} is not one shardwise plans: use one of {', '.join(known_attention())}"
        )
    _check_limits(data["limits"])
    for key in ("tp_size", "pp_size", "nodes"):
        _count(data, key, "", 1)
    if data.get("serving"):
        _check_serving(data["serving"], data["limits"])
    for i, fallback in enumerate(data.get("fallbacks", ())):
        if not isinstance(fallback.get("model"), str) or not fallback["model"].strip():
            raise ShardwiseError(f'fallbacks[{i}] names no model: each fallback needs a "model" (a profile or path)')
        for key in ("hardware", "reason"):
            if not isinstance(fallback.get(key, ""), (str, type(None))):
                raise ShardwiseError(f"fallbacks[{i}].{key} must be a string, not {fallback[key]!r:.40}")
    fixes = data.get("binding", {}).get("fixes", [])
    if not isinstance(fixes, list) or not all(isinstance(f, (str, dict)) for f in fixes):
        raise ShardwiseError(f"binding.fixes must be a list of strings, not {fixes!r:.60}")


def dataclasses_of(module) -> dict[str, type]:
    """Name -> dataclass for the dataclasses defined in `module` (the Plan's parts)."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
    }
