"""How many tokens one image costs a vision-language model, from its vision config.

A fixed-size encoder (SigLIP in Gemma 3, LFM2-VL, Pixtral-style towers with an `image_size`) sees
the processor's default square of `image_size` pixels: (image_size / patch_size)^2 patches, merged
`spatial_merge_size`^2 (or `downsample_factor`^2) to one decoder token each; a config that states
its count (`mm_tokens_per_image`) is taken at its word. Dynamic-resolution towers (Qwen-VL:
no `image_size`) are priced for a DEFAULT_IMAGE_SIDE_PX square image. Cross-attention models
(mllama) put one placeholder token in the text and give their cross-attention layers every tile's
patches plus a class token: `encoder_tokens`. Written by hand because transformers has no
config-level API for this count (each processor computes it its own way at call time); the
reason string says which rule applied.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_IMAGE_SIDE_PX = 1024  # a dynamic-resolution tower is priced for one 1024 x 1024 image
_STATED = "config mm_tokens_per_image"
_MERGE_KEYS = ("spatial_merge_size", "downsample_factor")  # patches merged per side into one decoder token


def _get(config, key: str):
    try:
        value = getattr(config, key, None)
    except Exception:  # noqa: BLE001 - heterogeneous configs raise for ambiguous keys
        return None
    return value


def _side(vision) -> tuple[int, str]:
    size = _get(vision, "image_size")
    if isinstance(size, (list, tuple)) and size:
        size = max(int(s) for s in size)
    if isinstance(size, int) and size > 0:
        return size, f"the encoder's {size}x{size} input"
    return DEFAULT_IMAGE_SIDE_PX, f"a {DEFAULT_IMAGE_SIDE_PX}x{DEFAULT_IMAGE_SIDE_PX} image (dynamic resolution)"


@dataclass(frozen=True)
class ImageCost:
    """What one image costs a request, beside the text."""

    tokens: int = 0  # decoder tokens the image becomes in the prompt (0: the model takes no images)
    encoder_tokens: int = 0  # encoder tokens cross-attention layers cache per image (0: no cross-attention)
    patches: int = 0  # tokens the vision encoder itself runs on
    encoder_hidden: int = 0  # the vision encoder's width
    encoder_heads: int = 0  # its attention heads
    reason: str = ""  # which rule gave the count


def image_cost(config) -> ImageCost:
    """ImageCost of one image at the processor's default size; an empty one for a text-only model."""
    vision = _get(config, "vision_config")
    if vision is None:
        return ImageCost()
    hidden = _get(vision, "hidden_size") or 0
    heads = _get(vision, "num_attention_heads") or _get(vision, "num_heads") or _get(vision, "attention_heads") or 0
    patch = _get(vision, "patch_size") or _get(vision, "spatial_patch_size")
    if isinstance(patch, (list, tuple)) and patch:
        patch = max(patch)
    stated = _get(config, "mm_tokens_per_image")
    if not isinstance(patch, int) or patch <= 0:
        if isinstance(stated, int) and stated > 0:
            return ImageCost(stated, 0, stated, hidden, heads, f"{stated} tokens per image ({_STATED})")
        return ImageCost(reason="no patch_size in vision_config: image tokens not priced")
    side, what = _side(vision)
    patches = (side // patch) ** 2
    text = _get(config, "text_config") or config
    if _get(text, "cross_attention_layers") or _get(config, "cross_attention_layers"):
        tiles = _get(vision, "max_num_tiles") or 1
        encoder = tiles * (patches + 1)  # each tile's patches plus its class token
        why = f"{encoder} encoder tokens per image ({tiles} tiles of {what}, patch {patch}), one placeholder token"
        return ImageCost(1, encoder, encoder, hidden, heads, why)
    if isinstance(stated, int) and stated > 0:
        return ImageCost(stated, 0, patches, hidden, heads, f"{stated} tokens per image ({_STATED})")
    merge = next((m for m in (_get(vision, k) or _get(config, k) for k in _MERGE_KEYS) if m), None)
    merge = merge if isinstance(merge, int) and merge > 0 else 1
    tokens = max(1, patches // (merge * merge))
    why = f"{tokens} tokens per image ({what}, patch {patch}, merge {merge}x{merge})"
    return ImageCost(tokens, 0, patches, hidden, heads, why)
