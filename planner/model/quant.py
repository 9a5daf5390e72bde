"""Quantized checkpoint formats: which weight matrices each packs, and the exact bytes of what it ships.

`parse_format(quantization_config)` reads config.json's `quantization_config` (or the
`hf_quant_config.json` that NVIDIA ModelOpt writes beside it) into a `QuantFormat`. For a Linear
weight of `rows` (out) x `cols` (in) elements, `QuantFormat.matrix_bytes` gives the bytes of the
tensors the format stores for it, written by each quantizer as follows (checked against
safetensors files with these layouts in tests/test_quant.py):

- fp8 (fine-grained, DeepSeek-V3 / Qwen3-FP8): `weight` float8 [rows, cols] and
  `weight_scale_inv` float32, one per `weight_block_size` block (one per tensor without blocks).
- compressed-tensors, float-quantized: `weight` float8 plus `weight_scale` in the checkpoint
  dtype, per tensor [1], per channel [rows, 1], per group [rows, cols/g] or per block;
  `input_scale` [1] when activations are quantized statically.
- compressed-tensors, pack-quantized: `weight_packed` int32 [rows, cols x bits / 32],
  `weight_scale` [rows, groups], `weight_zero_point` int32 [rows x bits / 32, groups] when
  asymmetric, `weight_shape` int64 [2].
- modelopt FP8: `weight` float8, `weight_scale` and `input_scale` float32 scalars; NVFP4:
  `weight` uint8 [rows, cols / 2], `weight_scale` float8 [rows, cols / 16], `weight_scale_2`
  and `input_scale` float32 scalars.
- AWQ (GEMM; GEMV holds the same elements): `qweight` int32 [cols, rows x bits / 32],
  `qzeros` int32 [groups, rows x bits / 32], `scales` float16 [groups, rows].
- GPTQ: `qweight` int32 [cols x bits / 32, rows], `qzeros` int32 [groups, rows x bits / 32],
  `scales` float16 [groups, rows], `g_idx` int32 [cols].
- bitsandbytes 4-bit: `weight` uint8 [rows x cols / 2, 1], per block of 64 an absmax (float32;
  with double quantization uint8 plus a float32 `nested_absmax` per 256 blocks and the 256-entry
  `nested_quant_map`), the 16-entry `quant_map` and the packed JSON `quant_state`; 8-bit:
  `weight` int8 [rows, cols] and `SCB` float32 [rows].
- mxfp4: FP4 pairs per byte plus one E8M0 scale byte per 32 values (gpt-oss experts only).

Every format leaves alone what its exclusion list names (`modules_to_not_convert`, `ignore`,
`exclude_modules`, `llm_int8_skip_modules`) and lm_head, as transformers does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from planner.errors import ShardwiseError

FP32 = 4
INT32 = 4
FP16 = 2
MXFP4_BLOCK = 32
BNB_BLOCK = 64  # bitsandbytes' 4-bit block size as transformers quantizes and ships it
BNB_NESTED_BLOCK = 256
METHODS = ("fp8", "compressed-tensors", "modelopt", "awq", "gptq", "bitsandbytes", "mxfp4")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class QuantFormat:
    """One shipped quantization, read from its config."""

    method: str  # one of METHODS
    scheme: str  # "block" | "tensor" | "channel" | "group" | "nvfp4" | "int" | "nf4" | "fp4" | "int8" | "mxfp4"
    bits: int = 8
    group_size: int = 0  # values per scale along the input width (0: per channel / tensor)
    block: tuple[int, int] | None = None  # (rows, cols) of a scale block
    symmetric: bool = True  # False: zero points are shipped too
    double_quant: bool = False  # bitsandbytes 4-bit nested absmax
    static_input_scale: bool = False  # a per-tensor input (activation) scale per Linear
    experts_only: bool = False  # MXFP4 packs only the MoE experts
    exclude: tuple[str, ...] = field(default_factory=tuple)

    @property
    def unquantized_dtype(self) -> str | None:
        """dtype of the tensors the format leaves unquantized, when config.json does not say.

        MXFP4 is defined against bfloat16: transformers' integration (integrations/mxfp4.py) quantizes
        from bfloat16 and dequantizes to it, and the checkpoints ship their other tensors beside the
        packed experts in that dtype. Other formats give no such rule (None).
        """
        return "bfloat16" if self.method == "mxfp4" else None

    @property
    def label(self) -> str:
        if self.method == "fp8":
            return f"fp8 ({self.block[0]}x{self.block[1]} block scales)" if self.block else "fp8 (per-tensor scales)"
        if self.method in ("awq", "gptq") or self.scheme == "int":
            return f"{self.method} int{self.bits}, group size {self.group_size or 'per channel'}"
        if self.method == "bitsandbytes":
            return f"bitsandbytes {self.scheme}" + (" (double quantization)" if self.double_quant else "")
        return f"{self.method} {self.scheme}"

    def excludes(self, module_name: str) -> bool:
        """transformers' rule: a pattern matches from the start up to a module boundary, as a regex, or as a suffix."""
        for pattern in ("lm_head", *self.exclude):
            key = pattern[3:] if pattern.startswith("re:") else pattern.replace("*", ".*")
            try:
                if re.match(rf"(?:{key})(?:(?<=\.)|(?=\.|$))", module_name) or module_name.endswith(pattern):
                    return True
            except re.error:
                if module_name.endswith(pattern):
                    return True
        return False

    def covers(self, module_name: str, is_expert: bool) -> bool:
        if self.experts_only and not is_expert:
            return False
        return not self.excludes(module_name)

    def matrix_bytes(self, rows: int, cols: int, float_bytes: int) -> int:
        """Bytes the format ships (and a kept model holds) for one rows x cols Linear weight.

        float_bytes: bytes of the checkpoint's float dtype (scales that follow it).
        """
        n = rows * cols
        if self.method == "mxfp4":
            return rows * _ceil(cols, MXFP4_BLOCK) * (MXFP4_BLOCK // 2 + 1)
        if self.method == "fp8":
            scales = _ceil(rows, self.block[0]) * _ceil(cols, self.block[1]) if self.block else 1
            return n + scales * FP32
        if self.method == "modelopt":
            if self.scheme == "nvfp4":
                return n // 2 + rows * _ceil(cols, self.group_size) + 2 * FP32
            return n + 2 * FP32
        if self.method == "awq":
            groups = _ceil(cols, self.group_size) if self.group_size > 0 else 1
            packed_rows = _ceil(rows * self.bits, 32)
            return cols * packed_rows * INT32 + groups * packed_rows * INT32 + groups * rows * FP16
        if self.method == "gptq":
            groups = _ceil(cols, self.group_size) if self.group_size > 0 else 1
            return (
                _ceil(cols * self.bits, 32) * rows * INT32
                + groups * _ceil(rows * self.bits, 32) * INT32
                + groups * rows * FP16
                + cols * INT32
            )
        if self.method == "bitsandbytes":
            if self.scheme == "int8":
                return n + rows * FP32
            blocks = _ceil(n, BNB_BLOCK)
            absmax = (
                blocks + _ceil(blocks, BNB_NESTED_BLOCK) * FP32 + 256 * FP32 if self.double_quant else blocks * FP32
            )
            return _ceil(n, 2) + absmax + 16 * FP32 + len(bnb_quant_state(self, rows, cols))
        if self.method == "compressed-tensors":
            return self._compressed_bytes(rows, cols, float_bytes)
        raise AssertionError(self.method)

    def _compressed_bytes(self, rows: int, cols: int, float_bytes: int) -> int:
        if self.scheme == "block" and self.block:
            scales = _ceil(rows, self.block[0]) * _ceil(cols, self.block[1])
        elif self.group_size > 0:
            scales = rows * _ceil(cols, self.group_size)
        elif self.scheme == "channel":
            scales = rows
        else:
            scales = 1
        extra = float_bytes if self.static_input_scale else 0
        if self.scheme == "int" or self.bits < 8:  # pack-quantized
            groups = _ceil(cols, self.group_size) if self.group_size > 0 else 1
            zeros = 0 if self.symmetric else _ceil(rows * self.bits, 32) * groups * INT32
            return rows * _ceil(cols * self.bits, 32) * INT32 + scales * float_bytes + zeros + 2 * 8 + extra
        return rows * cols * self.bits // 8 + scales * float_bytes + extra


def bnb_quant_state(fmt: QuantFormat, rows: int, cols: int) -> bytes:
    """The JSON bitsandbytes packs into `weight.quant_state.bitsandbytes__<type>` (its length is shipped)."""
    state = {"quant_type": fmt.scheme, "blocksize": BNB_BLOCK, "dtype": "bfloat16", "shape": [rows, cols]}
    if fmt.double_quant:
        # the nested offset is a float32 mean written as a Python float: ~18 digits
        state.update(nested_blocksize=BNB_NESTED_BLOCK, nested_dtype="float32", nested_offset=0.031234567891234567)
    return json.dumps(state).encode()


def _strategy_of(weights: dict) -> tuple[str, int, tuple | None]:
    strategy = str(weights.get("strategy") or "tensor")
    group = int(weights.get("group_size") or 0)
    block = tuple(weights["block_structure"]) if weights.get("block_structure") else None
    return strategy, group, block


def _compressed(cfg: dict) -> QuantFormat:
    groups = cfg.get("config_groups") or {}
    if not groups:
        raise ShardwiseError("compressed-tensors quantization_config has no config_groups; fix config.json")
    group = next(iter(groups.values()))
    weights = group.get("weights") or {}
    bits = int(weights.get("num_bits") or 8)
    strategy, group_size, block = _strategy_of(weights)
    is_float = str(weights.get("type") or "int") == "float"
    scheme = "block" if strategy == "block" else ("int" if not is_float else strategy)
    acts = group.get("input_activations") or {}
    exclude = tuple(cfg.get("ignore") or ())
    return QuantFormat(
        "compressed-tensors",
        scheme,
        bits=bits,
        group_size=group_size if strategy == "group" else 0,
        block=block,
        symmetric=bool(weights.get("symmetric", True)),
        static_input_scale=bool(acts) and not acts.get("dynamic", False),
        exclude=exclude,
    )


def parse_format(cfg: dict | None) -> QuantFormat | None:
    """QuantFormat for a `quantization_config` dict (None: not quantized)."""
    if not cfg:
        return None
    if not isinstance(cfg, dict):
        raise ShardwiseError(f"quantization_config is {cfg!r}, not an object: fix config.json")
    method = str(cfg.get("quant_method") or "").lower()
    if method == "fp8":
        block = cfg.get("weight_block_size")
        return QuantFormat(
            "fp8", "block" if block else "tensor", block=tuple(block) if block else None, exclude=_skips(cfg)
        )
    if method == "compressed-tensors":
        return _compressed(cfg)
    if method == "modelopt":
        algo = str(cfg.get("quant_algo") or "").upper()
        if algo not in ("FP8", "NVFP4"):
            raise ShardwiseError(f"modelopt quant_algo {algo!r} is not one shardwise sizes; FP8 and NVFP4 are")
        return QuantFormat(
            "modelopt",
            algo.lower(),
            bits=8 if algo == "FP8" else 4,
            group_size=int(cfg.get("group_size") or 16) if algo == "NVFP4" else 0,
            exclude=tuple(cfg.get("exclude_modules") or ()),
        )
    if method == "awq":
        bits = int(cfg.get("bits") or cfg.get("w_bit") or 4)
        group = int(cfg.get("group_size") or cfg.get("q_group_size") or 128)
        return QuantFormat("awq", "int", bits=bits, group_size=group, symmetric=False, exclude=_skips(cfg))
    if method == "gptq":
        bits, group = int(cfg.get("bits") or 4), int(cfg.get("group_size") or 128)
        return QuantFormat("gptq", "int", bits=bits, group_size=group, symmetric=False, exclude=_skips(cfg))
    if method == "bitsandbytes":
        skips = tuple(cfg.get("llm_int8_skip_modules") or ())
        if cfg.get("load_in_4bit"):
            return QuantFormat(
                "bitsandbytes",
                str(cfg.get("bnb_4bit_quant_type") or "fp4"),
                bits=4,
                double_quant=bool(cfg.get("bnb_4bit_use_double_quant")),
                exclude=skips,
            )
        if cfg.get("load_in_8bit"):
            return QuantFormat("bitsandbytes", "int8", bits=8, exclude=skips)
        raise ShardwiseError("bitsandbytes quantization_config sets neither load_in_4bit nor load_in_8bit")
    if method == "mxfp4":
        return QuantFormat("mxfp4", "mxfp4", bits=4, experts_only=True, exclude=_skips(cfg))
    raise ShardwiseError(
        f"quantization {method or cfg!r} is not one shardwise can size; sized formats: {', '.join(METHODS)}"
    )


def _skips(cfg: dict) -> tuple[str, ...]:
    return tuple(cfg.get("modules_to_not_convert") or ())


def hf_quant_config(model_dir: str | None) -> dict | None:
    """ModelOpt's `hf_quant_config.json` beside config.json, as a quantization_config dict (None: absent)."""
    if model_dir is None:
        return None
    directory = Path(model_dir)
    path = (directory if directory.is_dir() else directory.parent) / "hf_quant_config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ShardwiseError(f"{path} is not valid JSON ({err}): fix or re-download it") from None
    return modelopt_quantization_config(data)


def modelopt_quantization_config(data: dict) -> dict:
    """The quantization_config a ModelOpt `hf_quant_config.json` stands for."""
    return {"quant_method": "modelopt", **(data.get("quantization") or {})}


def shipped_config(arch: dict, model_dir: str | None = None) -> dict | None:
    """The quantization a checkpoint ships: config.json's quantization_config, else hf_quant_config.json."""
    return arch.get("quantization_config") or hf_quant_config(model_dir)
