"""The plan's `serving` block: transformers' continuous batching sized from the planner's KV budget.

transformers 5.25's paged cache (`generation/continuous_batching/cache.py`) stores K and V in pages of
`page_size` tokens, one page per layer; a block is one page for every layer of an attention group
(full attention layers, sliding window layers). All groups draw from one pool of sectors whose size is
the least common multiple of the groups' block sizes and 128 bytes, and two sectors at the front are
never used. Besides the cache, its memory handler reserves per batch token (activation peak and input
buffers), per cache token (K and V read back at the attention peak, read indices) and the attention
masks [M, N + M] of sdpa/eager. `paged_footprint` mirrors `PagedAttentionMemoryHandler
.compute_memory_footprint` term for term (tests/test_serving.py checks it against transformers itself).

`plan_serving` turns `sessions` sequences of `context` tokens into the number of blocks, picks the
batch token budget, and says why a layout must serve one request at a time instead. Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, lcm

from planner.planfile.plan import Serving
from planner.units import GIB, MIB

FLASH_PAGE_TOKENS = 256  # transformers' default; flash's paged decode kernel wants pages of 256
PAGE_TOKENS = 64  # sdpa/eager read through token indices: small pages waste less (two pages are never used)
MIN_PAGE_TOKENS = 16
MAX_BATCH_TOKENS = 2048  # enough to prefill a long prompt in a few passes; the masks grow with it
TRASH_SECTORS = 2
INT32, INT64, FP32 = 4, 8, 4


@dataclass(frozen=True)
class PagedGeometry:
    """Page, block and sector sizes of the paged cache for one model and page size."""

    page_size: int
    group_layers: dict  # "full" / "sliding" -> number of layers
    group_block_bytes: dict  # group -> bytes of one block (one page per layer of the group)
    bytes_per_sector: int
    tokens_per_sector: int
    bytes_per_block: int  # one page for every layer of the model: how `num_blocks` converts to bytes

    @property
    def num_groups(self) -> int:
        return len(self.group_layers)

    def sectors_for(self, num_blocks: int) -> int:
        """transformers' num_sectors_from_config: `num_blocks` whole-model blocks, rounded up to sectors."""
        return max(1, ceil(num_blocks * self.bytes_per_block / self.bytes_per_sector))


def human_bytes(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB else f"{count / MIB:.1f} MiB"


def page_bytes(inv, dtype_bytes: int, page_size: int) -> int:
    """K and V of `page_size` tokens in one layer."""
    return 2 * inv.num_kv_heads * inv.head_dim * dtype_bytes * page_size


def geometry(inv, dtype_bytes: int, page_size: int) -> PagedGeometry:
    groups: dict[str, int] = {}
    for layer in inv.layers:
        groups[layer.attention] = groups.get(layer.attention, 0) + 1
    page = page_bytes(inv, dtype_bytes, page_size)
    block_bytes = {name: page * count for name, count in groups.items()}
    sector = lcm(*block_bytes.values(), 128)
    tokens = max((sector // b) * page_size for b in block_bytes.values())
    return PagedGeometry(page_size, groups, block_bytes, sector, tokens, len(inv.layers) * page)


def blocks_per_sequence(inv, geo: PagedGeometry, context: int) -> dict:
    """Blocks one sequence of `context` tokens takes in each group (sliding groups stop at the window)."""
    window = min((layer.window for layer in inv.layers if layer.attention == "sliding" and layer.window), default=None)
    need = {}
    for name in geo.group_layers:
        tokens = min(context, window) if name == "sliding" and window else context
        need[name] = ceil(tokens / geo.page_size)
    return need


def sectors_needed(inv, geo: PagedGeometry, context: int, sessions: int) -> int:
    """Sectors that hold `sessions` sequences of `context` tokens at once (each group rounds up to sectors)."""
    need = blocks_per_sequence(inv, geo, context)
    return sum(
        ceil(sessions * need[name] / (geo.bytes_per_sector // geo.group_block_bytes[name])) for name in geo.group_layers
    )


def paged_footprint(
    inv,
    geo: PagedGeometry,
    *,
    dtype_bytes: int,
    num_sectors: int,
    max_batch_tokens: int,
    max_requests_per_batch: int,
    flash: bool,
    logits_to_keep: bool = True,
    async_io: bool = False,
    max_blocks_per_request: int = 0,
) -> int:
    """Bytes transformers reserves for the paged cache and everything that scales with it (see module docstring)."""
    a = dtype_bytes
    d = inv.head_dim
    heads, kv_heads = inv.num_attention_heads, inv.num_kv_heads
    groups = geo.num_groups
    # flash reads grouped KV heads directly; sdpa/eager repeat K and V to every query head (plus V itself)
    kv_heads_at_peak = 2 * kv_heads if flash else 2 * heads + kv_heads
    masks = 0 if flash else (2 if "sliding" in geo.group_layers else 1)
    io_multiplier = 2 if async_io else 1
    lm_head_row = inv.hidden_size * a + inv.vocab_size * FP32

    lm_head_peak = 0 if logits_to_keep else lm_head_row
    attention_peak = a * (inv.hidden_size + heads * d + 2 * kv_heads * d + kv_heads_at_peak * d)
    io = io_multiplier * (7 * INT32 + INT32 + groups * max_blocks_per_request * INT32 + groups * INT64 * 2)
    per_batch_token = max(lm_head_peak, attention_peak) + io

    per_cache_token = kv_heads_at_peak * d * a + io_multiplier * groups * INT64
    per_sector = geo.bytes_per_sector + geo.tokens_per_sector * per_cache_token

    fixed = TRASH_SECTORS * geo.bytes_per_sector + (max_requests_per_batch * lm_head_row if logits_to_keep else 0)
    readable = num_sectors * geo.tokens_per_sector
    mask_bytes = io_multiplier * masks * a * max_batch_tokens * (readable + max_batch_tokens)
    return fixed + max_batch_tokens * per_batch_token + num_sectors * per_sector + mask_bytes


def page_size_for(context: int, flash: bool) -> int:
    """256-token pages for flash, 64 otherwise, or the smallest power of two >= 16 that holds a shorter context."""
    page = FLASH_PAGE_TOKENS if flash else PAGE_TOKENS
    if context >= page:
        return page
    return max(MIN_PAGE_TOKENS, 1 << max(0, context - 1).bit_length())


def sequential_reason(inv, strategy: str, attn: str) -> str | None:
    """Why this layout cannot use continuous batching (None when it can)."""
    if strategy == "offload":
        return (
            "layers are offloaded to CPU/disk: transformers' paged cache lives on one device beside every layer; "
            "serving one request at a time"
        )
    if strategy == "pipeline":
        return (
            "layers span several GPUs: transformers 5.25 allocates the paged cache on the model's first device only; "
            "serving one request at a time"
        )
    if strategy == "tensor_parallel":
        return (
            "tensor-parallel ranks run turns through the rank worker one at a time "
            "(transformers' distributed continuous batching is not wired into the worker yet)"
        )
    if attn == "eager":
        return (
            "eager attention: continuous batching would switch the model to paged|eager, which the sequential turns "
            "(seeded sampling, penalties) cannot share; plan policy.attn_implementation=sdpa to batch"
        )
    kinds = {layer.attention for layer in inv.layers}
    if not inv.layers or not kinds <= {"full", "sliding"}:
        return f"layer kinds {sorted(kinds)}: transformers' paged cache holds only full and sliding attention"
    shapes = {(layer.num_kv_heads, layer.head_dim) for layer in inv.layers}
    if shapes != {(inv.num_kv_heads, inv.head_dim)}:
        return "layers differ in KV heads or head size: transformers' paged cache sizes every layer alike"
    windows = {layer.window for layer in inv.layers if layer.attention == "sliding"}
    if len(windows) > 1 or None in windows:
        return "sliding layers with different windows: transformers' paged cache takes one sliding window"
    return None


def plan_serving(
    inv,
    *,
    dtype_bytes: int,
    attn: str,
    strategy: str,
    context: int,
    sessions: int,
    on_gpu: bool,
) -> Serving:
    """The serving block for `sessions` concurrent sequences of `context` tokens."""
    reason = sequential_reason(inv, strategy, attn)
    if reason is not None:
        return Serving(mode="sequential", reason=reason)
    flash = "flash" in attn
    page = page_size_for(context, flash)
    geo = geometry(inv, dtype_bytes, page)
    sectors = sectors_needed(inv, geo, context, sessions)
    num_blocks = ceil(sectors * geo.bytes_per_sector / geo.bytes_per_block)
    sectors = geo.sectors_for(num_blocks)  # what transformers will allocate for that many blocks
    max_batch_tokens = max(sessions, min(context, MAX_BATCH_TOKENS))
    footprint = paged_footprint(
        inv,
        geo,
        dtype_bytes=dtype_bytes,
        num_sectors=sectors,
        max_batch_tokens=max_batch_tokens,
        max_requests_per_batch=min(sessions, max_batch_tokens),
        flash=flash,
        async_io=flash and on_gpu,  # transformers turns async batching on with CUDA graphs, i.e. flash on a GPU
    )
    cache_bytes = (sectors + TRASH_SECTORS) * geo.bytes_per_sector
    return Serving(
        mode="batched",
        reason=(
            f"continuous batching: {sessions} sequence(s) of {context} tokens in {num_blocks} blocks of {page} tokens "
            f"(paged cache {human_bytes(cache_bytes)}, {human_bytes(footprint)} with batch buffers and masks)"
        ),
        page_size_tokens=page,
        num_blocks=num_blocks,
        max_batch_tokens=max_batch_tokens,
        max_concurrent=sessions,
        cache_bytes=cache_bytes,
        footprint_bytes=footprint,
        attn_implementation="sdpa" if attn in ("auto", "") else attn,
    )
