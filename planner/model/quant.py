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
from planner.model.quant_fields import PACKED_INT_BITS, QuantFields

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


# compressed-tensors' QuantizationStrategy values a weight may use
_CT_STRATEGIES = ("tensor", "channel", "group", "block", "tensor_group")


def _compressed(cfg: QuantFields) -> QuantFormat:
    groups = cfg.section("config_groups", required=True)
    if not groups.cfg:
        raise ShardwiseError("compressed-tensors quantization_config has no config_groups; fix config.json")
    name = next(iter(groups.cfg))
    group = groups.section(name, required=True)
    weights = group.section("weights") or QuantFields({}, f"{group.where}.weights")
    bits = weights.count("num_bits", 8, minimum=2, maximum=8)
    strategy = weights.choice("strategy", "tensor", _CT_STRATEGIES)
    group_size = weights.count("group_size", 0) if strategy == "group" else 0
    if strategy == "group" and not group_size:
        raise ShardwiseError(f"{weights.where} has strategy 'group' without a group_size: fix config.json")
    block = weights.pair("block_structure")
    if strategy == "block" and block is None:
        raise ShardwiseError(f"{weights.where} has strategy 'block' without a block_structure: fix config.json")
    is_float = weights.choice("type", "int", ("int", "float")) == "float"
    scheme = "block" if strategy == "block" else ("int" if not is_float else strategy)
    acts = group.section("input_activations")
    return QuantFormat(
        "compressed-tensors",
        scheme,
        bits=bits,
        group_size=group_size,
        block=block,
        symmetric=weights.flag("symmetric", True),
        static_input_scale=acts is not None and not acts.flag("dynamic", False),
        exclude=cfg.names("ignore"),
    )


def parse_format(cfg: dict | None) -> QuantFormat | None:
    """QuantFormat for a `quantization_config` dict (None: not quantized); every field read is checked."""
    if not cfg:
        return None
    fields = QuantFields(cfg, "quantization_config")
    method = fields.text("quant_method").lower()
    if method == "fp8":
        block = fields.pair("weight_block_size")
        return QuantFormat("fp8", "block" if block else "tensor", block=block, exclude=_skips(fields))
    if method == "compressed-tensors":
        return _compressed(fields)
    if method == "modelopt":
        algo = fields.text("quant_algo").upper()
        if algo not in ("FP8", "NVFP4"):
            raise ShardwiseError(f"modelopt quant_algo {algo!r} is not one shardwise sizes; FP8 and NVFP4 are")
        return QuantFormat(
            "modelopt",
            algo.lower(),
            bits=8 if algo == "FP8" else 4,
            group_size=fields.count("group_size", 16) if algo == "NVFP4" else 0,
            exclude=fields.names("exclude_modules"),
        )
    if method in ("awq", "gptq"):
        # GPTQConfig's rules: bits in [2, 3, 4, 8], group_size > 0 or -1 (one group per column: per channel)
        bits = fields.choice("bits" if "bits" in cfg else "w_bit", 4, PACKED_INT_BITS)
        group = fields.count("group_size", 128, also=(-1,), aliases=("q_group_size",))
        return QuantFormat(method, "int", bits=bits, group_size=group, symmetric=False, exclude=_skips(fields))
    if method == "bitsandbytes":
        skips = fields.names("llm_int8_skip_modules")
        four, eight = fields.flag("load_in_4bit"), fields.flag("load_in_8bit")
        if four and eight:
            raise ShardwiseError("bitsandbytes quantization_config sets both load_in_4bit and load_in_8bit; fix it")
        if four:
            return QuantFormat(
                "bitsandbytes",
                fields.choice("bnb_4bit_quant_type", "fp4", ("fp4", "nf4")),
                bits=4,
                double_quant=fields.flag("bnb_4bit_use_double_quant"),
                exclude=skips,
            )
        if eight:
            return QuantFormat("bitsandbytes", "int8", bits=8, exclude=skips)
        raise ShardwiseError("bitsandbytes quantization_config sets neither load_in_4bit nor load_in_8bit")
    if method == "mxfp4":
        return QuantFormat("mxfp4", "mxfp4", bits=4, experts_only=True, exclude=_skips(fields))
    raise ShardwiseError(
        f"quantization {method or cfg!r:.80} is not one shardwise can size; sized formats: {', '.join(METHODS)}"
    )


def _skips(fields: QuantFields) -> tuple[str, ...]:
    return fields.names("modules_to_not_convert")


def hf_quant_config(model_dir: str | None) -> dict | None:
    """ModelOpt's `hf_quant_config.json` beside config.json, as a quantization_config dict (None: absent)."""
    if model_dir is None:
        return None
    directory = Path(model_dir)
    path = (directory if directory.is_dir() else directory.parent) / "hf_quant_config.json"
    if not path.exists():
        return None
    from planner.jsonfile import read_json

    return modelopt_quantization_config(read_json(path, "hf_quant_config.json", dict, "fix or re-download it"))


def modelopt_quantization_config(data: dict) -> dict:
    """The quantization_config a ModelOpt `hf_quant_config.json` stands for (its `quantization` object)."""
    section = QuantFields(data, "hf_quant_config.json").section("quantization")
    return {"quant_method": "modelopt", **(section.cfg if section else {})}


def shipped_config(arch: dict, model_dir: str | None = None) -> dict | None:
    """The quantization a checkpoint ships: config.json's quantization_config, else hf_quant_config.json."""
    return arch.get("quantization_config") or hf_quant_config(model_dir)
