"""Check a plan.json's fields against the Plan dataclasses once, on read, with one error naming the field.

A plan file is input like any other: someone may have edited it, or it may come from another
tool. `check_plan_dict` walks the dataclass fields (so fields added to the Plan later are
checked too) and refuses the first value of the wrong type, e.g. `hardware` given as a list or
`limits.context_tokens` as a string, before any of it is used.
"""

from __future__ import annotations

import dataclasses
import math

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
        else:  # a type this checker does not know: accept anything rather than refuse a valid plan
            return (object,), None
    return kinds, nested


def _describe(kinds: tuple) -> str:
    words = [_WORDS[k] for k in kinds if k in _WORDS]
    if type(None) in kinds:
        words.append("null")
    return " or ".join(dict.fromkeys(words)) or "another type"


def _fits(value, kinds: tuple) -> bool:
    if object in kinds:
        return True
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


def dataclasses_of(module) -> dict[str, type]:
    """Name -> dataclass for the dataclasses defined in `module` (the Plan's parts)."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
    }
