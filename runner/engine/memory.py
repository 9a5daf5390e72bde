"""Freeing memory between generations and recognising out-of-memory failures (GPU and CPU).

`clear_memory()` is what the seed's guide calls "clear memory between generations": collect
Python garbage, then hand cached CUDA blocks back to the driver. `is_out_of_memory(exc)` says
whether an exception means memory ran out, so the recovery ladder can act on it.
"""

from __future__ import annotations

import gc
import sys

# Messages torch raises for host allocations (no dedicated exception type on CPU).
_CPU_OOM_MARKERS = (
    "defaultcpuallocator: can't allocate memory",
    "not enough memory",
    "out of memory",
)


def clear_memory() -> None:
    """gc, then release cached CUDA blocks and IPC handles when CUDA is in use."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch.OutOfMemoryError, MemoryError and CPU allocator failures."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(marker in text for marker in _CPU_OOM_MARKERS)
    return False
