"""Read `CUDA_VISIBLE_DEVICES` the way the CUDA driver does, so the plan numbers GPUs as CUDA will.

The rules, from NVIDIA's documentation and checked against the CUDA driver itself (driver
580.159.04 on an H200: `cuDeviceGetCount` under 42 values, all agreeing; the table in
tests/test_visible_devices.py marks those cases):
- unset: every device, in enumeration order; set but empty (or blanks): no device;
- a comma-separated sequence; its FIRST entry decides how all entries are read:
  - starting with `GPU-` or `MIG-`: UUIDs. An entry must start with one of those prefixes and
    hex digits after it (any case, dashes ignored; the prefix itself is not checked against
    the device kind) must begin exactly one device's UUID. Blanks are not stripped here:
    ` GPU-1140` and `GPU-1140 ` name nothing;
  - otherwise: indices read like C's `strtoul` (leading blanks skipped, `+` allowed, leading
    digits count, `0abc` is 0); no digits or a minus sign is invalid;
- the first entry that names no device (bad or out-of-range index, unknown or ambiguous UUID,
  an entry of the other kind, garbage, an empty entry) ends the sequence: the entries before
  it stay visible;
- a device named twice (before the sequence ends) hides every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

UUID_PREFIXES = ("GPU-", "MIG-")


@dataclass(frozen=True)
class Visibility:
    """Which enumerated devices CUDA will show, in CUDA's order, and why (a note when not all)."""

    indices: tuple[int, ...]  # positions in the enumeration, in visible order
    note: str = ""  # one line when the variable hid devices unexpectedly ("" when nothing to say)


def _leading_index(entry: str) -> int | None:
    """`strtoul`-like: the non-negative integer the entry starts with, None when it does not start with one."""
    text = entry.lstrip()
    if text.startswith("+"):
        text = text[1:]
    digits = ""
    for char in text:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else None


def _uuid_body(uuid: str) -> str:
    """The hex digits after `GPU-`/`MIG-`, lower case, without dashes.

    CUDA matches them whatever the prefix, case or dashes.
    """
    return (uuid[4:] if uuid.startswith(UUID_PREFIXES) else uuid).replace("-", "").lower()


def _aliases(device: str | Sequence[str]) -> tuple[str, ...]:
    return (device,) if isinstance(device, str) else tuple(device)


def _match_uuid(entry: str, devices: Sequence[str | Sequence[str]]) -> int | None:
    """Index of the one device whose UUID (any alias) begins with the entry's hex; None if none or several."""
    if not entry.startswith(UUID_PREFIXES) or len(entry) == len("GPU-"):
        return None
    wanted = _uuid_body(entry)
    matches = [i for i, dev in enumerate(devices) if any(_uuid_body(u).startswith(wanted) for u in _aliases(dev))]
    return matches[0] if len(matches) == 1 else None


def visible_devices(value: str | None, devices: Sequence[str | Sequence[str]]) -> Visibility:
    """Apply `CUDA_VISIBLE_DEVICES=value` to `devices` (each one UUID, or a tuple of UUIDs it answers to)."""
    count = len(devices)
    if value is None:
        return Visibility(tuple(range(count)))
    if not value.strip():
        return Visibility((), f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU")
    by_uuid = value.startswith(UUID_PREFIXES)
    chosen: list[int] = []
    for entry in value.split(","):
        if by_uuid:
            index = _match_uuid(entry, devices)
            problem = "is not a UUID prefix of exactly one GPU"
        else:
            index = _leading_index(entry)
            if index is not None and index >= count:
                index = None
            problem = f"is not a device index (0..{count - 1})" if count else "names a GPU but there is none"
        if index is None:
            kept = ",".join(str(i) for i in chosen) or "none"
            return Visibility(
                tuple(chosen),
                f"CUDA_VISIBLE_DEVICES={value!r}: entry {entry!r} {problem}, so CUDA stops there (visible: {kept})",
            )
        if index in chosen:
            return Visibility(
                (), f"CUDA_VISIBLE_DEVICES={value!r} names device {index} twice, so CUDA shows no GPU at all"
            )
        chosen.append(index)
    return Visibility(tuple(chosen))


def parse_cuda_visible_devices(value: str | None, devices: Sequence[str | Sequence[str]]) -> list[int]:
    """Positions in `devices` that CUDA will show for `CUDA_VISIBLE_DEVICES=value`, in CUDA's order."""
    return list(visible_devices(value, devices).indices)
