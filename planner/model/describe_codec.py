"""ArchDescription <-> JSON, generically, and its dtype-free form (what planner.model.described stores).

The codec walks `dataclasses.fields` recursively, so a field added to any dataclass of
planner.model.architectures is written and read back without an edit here: a dataclass becomes
an object tagged with its class name (`"@"`) holding the fields that differ from their defaults,
a tuple a JSON array (read back as a tuple), a dict a tagged list of pairs. Only dataclasses
defined in or imported by planner.model.architectures are read back, by name: nothing in a cache
file can name another class. Callers check `decode(encode(x)) == x` before they store anything,
so a field of a type this codec cannot write round-trip is never cached wrongly.

The meta-device build names, per tensor, the dtype it keeps whatever the load dtype
(`TensorSpec.fixed_dtype`, None when it follows the compute dtype). Two builds in two dtypes tell
the two apart exactly: a tensor that follows the load dtype changes with it, a pinned one does
not. `neutral()` keeps the pinned dtype of every tensor (None: follows); `for_dtype()` turns that
back into the description a build in one dtype gives.
"""

from __future__ import annotations

import dataclasses
from functools import cache

_CLASS = "@"  # the key naming a dataclass in the encoded form
_DICT = "@dict"  # a dict, as a list of [key, value] pairs (JSON keys are strings only)


@cache
def _classes() -> dict[str, type]:
    from planner.model import architectures

    return {
        name: value
        for name, value in vars(architectures).items()
        if isinstance(value, type) and dataclasses.is_dataclass(value)
    }


def encode(value):
    """A JSON-writable form of `value` (dataclasses of planner.model.architectures, tuples, dicts, scalars)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _classes().get(name) is not type(value):
            raise TypeError(f"{name} is not a dataclass of planner.model.architectures")
        out = {_CLASS: name}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.default is not dataclasses.MISSING and type(item) is type(f.default) and item == f.default:
                continue  # defaults are left out: most TensorSpec fields hold them
            out[f.name] = encode(item)
        return out
    if isinstance(value, (tuple, list)):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {_DICT: [[encode(k), encode(v)] for k, v in value.items()]}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot encode a {type(value).__name__}")


def decode(value):
    """The value `encode` wrote; TypeError / KeyError / ValueError for anything it cannot have written."""
    if isinstance(value, list):
        return tuple(decode(item) for item in value)
    if isinstance(value, dict):
        if _DICT in value:
            return {decode(k): decode(v) for k, v in value[_DICT]}
        cls = _classes()[value[_CLASS]]
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: decode(v) for k, v in value.items() if k != _CLASS}
        if not fields.keys() <= names:
            raise TypeError(f"{cls.__name__} has no field {sorted(fields.keys() - names)[0]!r}")
        return cls(**fields)
    return value


def _map_tensors(value, change):
    """`value` rebuilt with `change(tensor)` for every TensorSpec inside it, wherever the dataclasses nest it."""
    from planner.model.architectures import TensorSpec

    if isinstance(value, TensorSpec):
        return change(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        updates = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            new = _map_tensors(item, change)
            if new is not item:
                updates[f.name] = new
        return dataclasses.replace(value, **updates) if updates else value
    if isinstance(value, tuple):
        items = tuple(_map_tensors(item, change) for item in value)
        return value if all(a is b for a, b in zip(items, value)) else items
    return value


def _tensors(value) -> list:
    found = []
    _map_tensors(value, lambda t: found.append(t) or t)
    return found


def _unpinned(tensor):
    return dataclasses.replace(tensor, fixed_dtype=None)


def neutral(desc, dtype: str, twin, twin_dtype: str):
    """The description with each tensor's pinned dtype (None: follows the load dtype), or None when it depends
    on the dtype in any other way. `desc` was built in `dtype`, `twin` in `twin_dtype` (another dtype)."""
    if _map_tensors(desc, _unpinned) != _map_tensors(twin, _unpinned):
        return None
    pinned = []
    for a, b in zip(_tensors(desc), _tensors(twin)):
        held_a, held_b = a.fixed_dtype or dtype, b.fixed_dtype or twin_dtype
        if held_a == held_b:
            pinned.append(held_a)
        elif (held_a, held_b) == (dtype, twin_dtype):
            pinned.append(None)
        else:
            return None
    order = iter(pinned)
    return _map_tensors(desc, lambda t: dataclasses.replace(t, fixed_dtype=next(order)))


def for_dtype(desc, dtype: str):
    """A neutral description as a build in `dtype` gives it: a tensor pinned to that very dtype follows it."""
    return _map_tensors(desc, lambda t: dataclasses.replace(t, fixed_dtype=None) if t.fixed_dtype == dtype else t)
