"""Per-device memory terms: weights, KV cache, activations and runtime overhead, in bytes.

planned(d) = weights(d) + kv(d) + activations(d) + overhead(d) <= usable(d) = free(d) - headroom(d)

Weights come from the inventory (exact). KV cache is per layer on the device that holds the
layer (window-aware, see planner.memory.kv); Mamba / linear-attention layers hold a fixed state per
sequence instead, priced as its own term (`group_state`). Activations are the prefill peak of the attention kernel
that will really run, for one sequence in flight (the runner serves one prefill at a time),
plus the sampling logits of every concurrent session on the lm_head device. Overhead is the
CUDA context and library workspaces plus an allocator fragmentation share; the constants come
from `policy.overhead` so measured runs can calibrate them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.errors import ShardwiseError
from planner.hardware.devices import Device
from planner.memory.kv import layer_kv_bytes, layer_state_bytes
from planner.model.inventory import DTYPE_BYTES, Inventory, LayerSpec
from planner.units import MIB

# Eager attention holds the score matrix in the compute dtype while the softmax (float32 in most
# families) is taken from it: about dtype + 4 bytes per score element at the peak. Measured on an
# H200 for gpt-oss-20b at 8192 tokens: ~6 bytes per element in bf16 (benchmarks/gpu_memory_check.py).
FP32_BYTES = 4
INDEX_BYTES = 8  # int64 routing masks in the MoE expert loops


@dataclass(frozen=True)
class Overheads:
    """Runtime memory outside weights, KV cache and activations (policy.overhead, in bytes)."""

    cuda_context_bytes: int = 500 * MIB
    workspace_bytes: int = 256 * MIB
    fragmentation_fraction: float = 0.03
    cpu_runtime_bytes: int = 1024 * MIB

    def __post_init__(self) -> None:
        if self.fragmentation_fraction < 0:
            raise ShardwiseError(f"policy.overhead.fragmentation_fraction={self.fragmentation_fraction} must be >= 0")
        if min(self.cuda_context_bytes, self.workspace_bytes, self.cpu_runtime_bytes) < 0:
            raise ShardwiseError("policy.overhead sizes must be >= 0: set each *_mib to 0 or more")


@dataclass(frozen=True)
class CostModel:
    """Everything needed to price a layer or a device at a given context."""

    inv: Inventory
    dtype: str
    kv_dtype: str
    attn: str  # "eager" | "sdpa" | flash kernels
    sessions: int
    overheads: Overheads
    images: int = 1  # images per request (policy.images_per_request), for models that take them
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @staticmethod
    def _kind(layer: LayerSpec) -> tuple:
        """Layers of one kind cost the same: price each kind once per context (the search asks a lot)."""
        return (
            layer.attention,
            layer.window,
            layer.num_kv_heads,
            layer.head_dim,
            layer.moe,
            layer.kv_width,
            layer.state_elems,
            layer.state_fp32_elems,
            layer.cross_kv_elems_per_token,
        )

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_elem_bytes(self) -> int:
        return 1 if self.kv_dtype.startswith("fp8") else DTYPE_BYTES[self.kv_dtype]  # fp8: vLLM plans only

    @property
    def eager(self) -> bool:
        return self.attn == "eager"

    def kv_by_layer(self, context_tokens: int) -> list[int]:
        """KV bytes of every decoder layer at `context_tokens`, indexed by layer."""
        key = ("kv-all", context_tokens)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = [self.layer_kv(layer, context_tokens) for layer in self.inv.layers]
        return found

    def cache_by_layer(self, context_tokens: int) -> list[int]:
        """KV plus fixed state of every decoder layer: what a layer's device must hold besides its weights."""
        key = ("cache-all", context_tokens)
        found = self._cache.get(key)
        if found is None:
            kv_all = self.kv_by_layer(context_tokens)
            found = self._cache[key] = [kv + self.layer_state(layer) for kv, layer in zip(kv_all, self.inv.layers)]
        return found

    def least_gpu_bytes(self, context_tokens: int, gpus: int) -> tuple[int, int]:
        """Floors under what `gpus` GPUs holding the model unsharded plan at a context: (all together, the fullest one).

        Each GPU plans its tensors plus gpu_fixed_overhead() plus int(fragmentation x tensors), and
        its tensors hold at least its modules' weights and its layers' KV and state. Summed over the
        GPUs that is every module and every layer, whatever the split; and some GPU holds the
        heaviest module with its KV (placement never splits one). A layout fits only when each GPU's
        plan fits its usable memory, so GPUs with less usable memory together, or none with room
        for that module, can never fit: the search skips them without laying anything out
        (planner.place.search.Attempt.fits_at).
        """
        key = ("least", context_tokens)
        found = self._cache.get(key)
        if found is None:
            cache = self.cache_by_layer(context_tokens)
            held = [m.bytes + (cache[m.layer_index] if m.kind == "layer" else 0) for m in self.inv.modules]
            found = self._cache[key] = (sum(held), max(held, default=0))
        frac, fixed = self.overheads.fragmentation_fraction, self.gpu_fixed_overhead()
        together, heaviest = found
        # int() in overhead() rounds down: at most one byte a GPU
        return int(together * (1 + frac)) + gpus * (fixed - 1), int(heaviest * (1 + frac)) + fixed - 1

    def layer_state(self, layer: LayerSpec) -> int:
        """Fixed per-sequence cache of one layer for every session: conv + recurrent state, and the encoder
        tokens of `images` images a cross-attention layer holds (0 for self-attention layers)."""
        cross = self.images * self.inv.encoder_tokens * layer.cross_kv_elems_per_token * self.kv_elem_bytes
        return layer_state_bytes(layer, self.sessions, self.dtype_bytes) + self.sessions * cross

    def encoder_activations(self) -> int:
        """Peak of the vision encoder's pass over one request's images, on the device that holds it.

        Its residual stream and one block's attention and MLP inputs over every patch token, and
        the patch-by-patch score matrix under eager attention (sdpa/flash keep none), as for a
        decoder layer in the prefill; the images of one request are encoded together.
        """
        inv, b = self.inv, self.dtype_bytes
        tokens = self.images * inv.image_patches
        if not tokens or not inv.encoder_hidden:
            return 0
        width = 4 * tokens * inv.encoder_hidden * b  # residual, normed input, attention output, MLP input
        scores = inv.encoder_heads * inv.image_patches**2 * (b + FP32_BYTES) if self.eager else 0
        return self.sessions * (width + scores)

    def group_state(self, ids: tuple) -> int:
        return sum(self.layer_state(self.inv.layers[i]) for i in ids)

    def layer_kv(self, layer: LayerSpec, context_tokens: int) -> int:
        key = ("kv", self._kind(layer), context_tokens)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = layer_kv_bytes(layer, context_tokens, self.sessions, self.kv_elem_bytes)
        return found

    def _keys_in_pass(self, layer: LayerSpec, chunk: int, context_tokens: int) -> int:
        """Key length attended to in the worst prefill pass of `chunk` query tokens."""
        if chunk >= context_tokens or layer.window is None:
            return context_tokens  # full attention (and linear layers, priced like it: an upper bound)
        # chunked prefill: a sliding layer's cache holds at most its window before the new chunk
        return min(context_tokens, chunk + layer.window)

    def layer_transient(self, layer: LayerSpec, chunk: int, context_tokens: int) -> int:
        """Peak temporary bytes while one layer runs a prefill pass of `chunk` tokens."""
        key = ("act", self._kind(layer), chunk, context_tokens)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._layer_transient(layer, chunk, context_tokens)
        return found

    def _layer_transient(self, layer: LayerSpec, chunk: int, context_tokens: int) -> int:
        inv, b = self.inv, self.dtype_bytes
        heads, kv_heads, head_dim, hidden = inv.num_attention_heads, layer.num_kv_heads, layer.head_dim, inv.hidden_size
        keys = self._keys_in_pass(layer, chunk, context_tokens)
        qkv = chunk * (heads + 2 * kv_heads) * head_dim * b
        # GQA repeats K/V to every query head; MLA expands its cached latent to every head for all keys
        repeated_kv = 2 * heads * keys * head_dim * b if (kv_heads < heads or layer.attention == "mla") else 0
        scores = heads * chunk * keys * (b + FP32_BYTES) if self.eager else 0  # sdpa/flash: no score matrix
        attention = qkv + repeated_kv + scores + chunk * heads * head_dim * b
        if layer.moe and inv.num_experts:
            routing = (
                chunk * inv.num_experts * FP32_BYTES + chunk * inv.experts_per_token * inv.num_experts * INDEX_BYTES
            )
            mlp = routing + 3 * chunk * inv.intermediate_size * b + chunk * hidden * b
        else:
            mlp = 3 * chunk * inv.intermediate_size * b
        residual = 2 * chunk * hidden * b
        return residual + max(attention, mlp)

    def logits_bytes(self) -> int:
        """Last-position logits of every session plus their float32 sampling copies."""
        return self.sessions * self.inv.vocab_size * (self.dtype_bytes + 2 * FP32_BYTES)

    def prefill_kv_extra(self, layer: LayerSpec, chunk: int, context_tokens: int) -> int:
        """KV a sliding layer holds beyond its decode state right after a prefill pass of `chunk` tokens.

        transformers' sliding (and chunked) cache keeps the whole pass's keys alive until the next step, so a
        one-shot prefill of T tokens briefly costs full-attention KV on every sliding layer.
        """
        if layer.window is None:
            return 0
        key = ("prefill-kv", self._kind(layer), chunk, context_tokens)
        found = self._cache.get(key)
        if found is None:
            after_prefill = layer_kv_bytes(layer, context_tokens, 1, self.kv_elem_bytes, new_tokens=chunk)
            decoding = layer_kv_bytes(layer, context_tokens, 1, self.kv_elem_bytes)
            found = self._cache[key] = max(after_prefill - decoding, 0)
        return found

    def forward_state(self, layers: list[LayerSpec], chunk: int, context_tokens: int) -> int:
        """What lives through a whole forward pass beside the layers: attention masks and rotary tables.

        transformers builds one mask per attention kind before the first layer (float for eager,
        boolean for sdpa; measured on an H200: sdpa keeps a full causal mask too) and the rotary
        cos/sin once per pass; flash kernels take no mask.
        """
        attention_kinds = {(layer.attention, layer.window) for layer in layers}
        state = 0
        for attention, window in attention_kinds:
            keys = (
                context_tokens if (chunk >= context_tokens or window is None) else min(context_tokens, chunk + window)
            )
            if self.eager:
                state += chunk * keys * self.dtype_bytes
            elif self.attn == "sdpa":
                state += chunk * keys
            head_dim = max(layer.head_dim for layer in layers if (layer.attention, layer.window) == (attention, window))
            state += 2 * chunk * head_dim * self.dtype_bytes
        return state

    def activations(
        self,
        layers: list[LayerSpec],
        has_head: bool,
        chunk: int,
        context_tokens: int,
        shard: int = 1,
        has_encoder: bool = False,
    ) -> int:
        """Prefill peak on one device (one tensor-parallel rank when shard > 1).

        Tensor parallelism splits the heads and the MLP (and so the per-layer transients and the
        extra prefill KV) but every rank holds the residual stream, the masks and the logits whole.
        """
        b, hidden = self.dtype_bytes, self.inv.hidden_size
        kinds = {self._kind(layer): layer for layer in layers}
        residual = 2 * chunk * hidden * b
        transient = max(
            (self.layer_transient(layer, chunk, context_tokens) - residual for layer in kinds.values()), default=0
        )
        extra_kv = sum(self.prefill_kv_extra(layer, chunk, context_tokens) for layer in layers)
        peak = -(-(transient + extra_kv) // shard)
        if layers:
            peak += residual + self.forward_state(list(kinds.values()), chunk, context_tokens)
        if layers or has_head:
            peak += chunk * hidden * b  # the hidden state entering the device
        # the encoder runs before the first layer, its output kept until the prefill merges it in
        encoder = self.encoder_activations() if has_encoder else 0
        return max(peak, encoder + chunk * hidden * b) + (self.logits_bytes() if has_head else 0)

    def group_kv(self, ids: tuple, context_tokens: int) -> int:
        """KV bytes of the layers `ids` (cached: the search prices the same ranges many times)."""
        key = ("group-kv", ids, context_tokens)
        found = self._cache.get(key)
        if found is None:
            kv_all = self.kv_by_layer(context_tokens)
            found = self._cache[key] = sum(kv_all[i] for i in ids)
        return found

    def group_activations(
        self, ids: tuple, has_head: bool, chunk: int, context_tokens: int, shard: int = 1, has_encoder: bool = False
    ) -> int:
        """activations() for the layers `ids`, cached."""
        key = ("group-act", ids, has_head, chunk, context_tokens, shard, has_encoder)
        found = self._cache.get(key)
        if found is None:
            layers = [self.inv.layers[i] for i in ids]
            found = self._cache[key] = self.activations(layers, has_head, chunk, context_tokens, shard, has_encoder)
        return found

    def gpu_fixed_overhead(self) -> int:
        return self.overheads.cuda_context_bytes + self.overheads.workspace_bytes

    def overhead(self, device: Device | None, tensors: int) -> int:
        """Runtime overhead for a GPU (context, workspaces, fragmentation) or the CPU process."""
        if device is None:
            return self.overheads.cpu_runtime_bytes
        return self.gpu_fixed_overhead() + int(self.overheads.fragmentation_fraction * tensors)


def headroom(free_bytes: int, fraction: float, extra_bytes: int) -> int:
    return int(free_bytes * fraction) + extra_bytes
