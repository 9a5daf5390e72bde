"""Byte units: bytes are `int` inside the planner and the runner; people see GiB at the edges."""

MIB = 1 << 20
GIB = 1 << 30


def gib(nbytes: float) -> str:
    """`12.3 GiB` for a byte count."""
    return f"{nbytes / GIB:.1f} GiB"
