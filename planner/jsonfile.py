"""Read JSON files people hand us, and write the ones we make, without surprises.

Every JSON file shardwise reads (config.json, safetensors index files, hardware snapshots,
plan files, saved chats) goes through `read_json`: a size cap, a nesting cap, no 5,000-digit
numbers, UTF-8 only, and the top-level type checked, each failure one `ShardwiseError` that
names the file; only regular files are opened (planner.files). Files we write (plan.json, snapshots)
go through `write_text_atomic`, so a full disk or a concurrent reader never sees half a file, an old
file survives a failed write, a symlink is written through and /dev/null stays a device.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from planner.errors import ShardwiseError
from planner.files import read_regular, write_text

MAX_JSON_BYTES = 64 * 1024 * 1024  # a plan or config.json is kilobytes; 64 MiB leaves room for huge index files
MAX_JSON_DEPTH = 64  # real files nest a handful of levels; deeper is hostile (and Python's parser recurses)


def _depth_exceeds(value, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` containers (iterative: a deep value must not recurse here)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list) -> dict:
    """A JSON object whose keys are all different: json.loads keeps the last of two equal keys without a word,
    where a person reviewing the file may have read the first."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(f"the key {key!r:.60} appears twice in one object")
        seen[key] = value
    return seen


def loads_json(
    raw: bytes | str,
    what: str,
    expect: type | tuple[type, ...] | None = dict,
    hint: str = "",
    unique_keys: bool = False,
):
    """Parse `raw` (the contents of `what`, e.g. "config.json '/m/config.json'") or raise one ShardwiseError;
    `unique_keys`: refuse an object that names a key twice (files a person reviews, such as plan.json)."""
    tail = f": {hint}" if hint else ""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ShardwiseError(f"{what} is not UTF-8 text (byte {exc.start}){tail}") from None
    try:
        value = json.loads(raw, object_pairs_hook=_unique_pairs if unique_keys else None)
    except _DuplicateKey as exc:
        raise ShardwiseError(f"{what} is ambiguous: {exc}{tail}") from None
    except RecursionError:
        raise ShardwiseError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels{tail}") from None
    except ValueError as exc:  # JSONDecodeError, and the int-digits limit of Python >= 3.11
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ShardwiseError(f"{what} is not valid JSON ({reason[:200]}){tail}") from None
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise ShardwiseError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels{tail}")
    if expect is not None and not isinstance(value, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        wanted = {"dict": "a JSON object {...}", "list": "a JSON array [...]"}.get(names, names)
        found = type(value).__name__
        article = "an" if found[0] in "aeiou" else "a"
        raise ShardwiseError(f"{what} holds {article} {found} at the top, not {wanted}{tail}")
    return value


def read_json(
    path: str | Path,
    what: str = "JSON file",
    expect: type | tuple[type, ...] | None = dict,
    hint: str = "",
    max_bytes: int = MAX_JSON_BYTES,
    unique_keys: bool = False,
):
    """The JSON value in `path`, or one ShardwiseError naming `what` and the file (missing, too big, bad JSON...)."""
    path = Path(path)
    label = f"{what} {str(path)!r}"
    tail = f": {hint}" if hint else ""
    try:
        raw = read_regular(path, what, max_bytes, hint)  # a FIFO or a device is refused, never waited on
    except FileNotFoundError:
        raise ShardwiseError(f"{label} does not exist{tail}") from None
    except OSError as exc:  # a directory, no permission, a name too long for the file system
        raise ShardwiseError(f"cannot read {label} ({exc.strerror or exc}){tail}") from None
    if len(raw) > max_bytes:
        raise ShardwiseError(
            f"{label} is larger than {max_bytes // (1024 * 1024)} MiB: not a file shardwise reads{tail}"
        )
    return loads_json(raw, label, expect, hint, unique_keys)


def _first_non_finite(value, where: str) -> str | None:
    """The path of the first NaN or infinity in `value` ("hardware.devices[0].bf16_tflops"), None when none."""
    stack = [(value, where)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return f"{at} = {node}"
        if isinstance(node, dict):
            stack.extend((v, f"{at}.{k}") for k, v in reversed(list(node.items())))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in reversed(list(enumerate(node))))
    return None


def dumps_json(value, what: str, indent: int | None = 2) -> str:
    """`value` as strict JSON (no NaN or Infinity, which strict readers reject); one ShardwiseError naming the
    first such value otherwise, so a bad number that slipped past the input checks never reaches a file."""
    try:
        return json.dumps(value, indent=indent, allow_nan=False)
    except ValueError:
        where = _first_non_finite(value, what) or what
        raise ShardwiseError(f"{where} is not a finite number: strict JSON cannot hold it; check the inputs") from None


def finite_number(value, name: str) -> float:
    """`value` as a float if it is a finite real number (bool excluded), else one ShardwiseError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShardwiseError(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ShardwiseError(f"{name}={value} is too large") from None
    if not math.isfinite(number):
        raise ShardwiseError(f"{name} must be a finite number, not {value!r}")
    return number


def write_text_atomic(path: str | Path, text: str, make_parents: bool = True) -> Path:
    """Write `text` to `path`, all of it or none of it (see planner.files.write_text: links, devices)."""
    return write_text(path, text, make_parents)
