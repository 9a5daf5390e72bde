"""Dtype, quantization and attention decisions, and the transformers facts they mirror."""

from __future__ import annotations

import inspect
import re

import pytest

from planner.decide import decisions as dtypes
from planner.decide import stack
from planner.errors import ShardwiseError
from planner.hardware.devices import Device, Hardware
from planner.units import GIB


def gpu(cc: str, name: str = "GPU") -> Device:
    return Device(id=0, name=name, total_bytes=80 * GIB, free_bytes=80 * GIB, compute_capability=cc)


def probed(cc: str | None, **installed) -> Hardware:
    devices = (gpu(cc),) if cc else ()
    return Hardware(source="probe", devices=devices, host_ram_bytes=64 * GIB, installed=installed, probed=True)


def test_mirrored_kernel_requirements_match_the_installed_transformers():
    from transformers.quantizers import quantizer_mxfp4
    from transformers.utils import import_utils

    from planner.decide import stack

    def as_tuple(text):
        return tuple(int(x) for x in text.split("."))

    # the planner reads the kernels range from transformers' metadata: it must be the range its code checks
    required = stack.transformers_requirement("kernels")
    assert required.contains(import_utils.KERNELS_MIN_VERSION)
    assert not required.contains(import_utils.KERNELS_MAX_VERSION)
    assert stack.minimum_version("kernels") == import_utils.KERNELS_MIN_VERSION
    source = inspect.getsource(quantizer_mxfp4)
    cuda = re.search(r"torch\.cuda\.is_available\(\):.*?is_triton_available\(\"([\d.]+)\"\)", source, re.S).group(1)
    cpu = re.search(r"device\.type == \"cpu\":.*?is_triton_available\(\"([\d.]+)\"\)", source, re.S).group(1)
    assert as_tuple(cuda)[:2] == dtypes.TRITON_MIN_CUDA and as_tuple(cpu)[:2] == dtypes.TRITON_MIN_CPU
    assert "compute_capability >= (7, 5)" in source and dtypes.MXFP4_MIN_CC == (7, 5)


KERNELS_OK = stack.minimum_version("kernels")  # the lowest release the installed transformers accepts


@pytest.mark.parametrize(
    "hw,kept,needle",
    [
        (probed("9.0", triton="3.4.0", kernels=KERNELS_OK), True, "installed"),
        (probed("9.0", triton="3.4.0", kernels="0.9.0"), False, stack.requirement_text("kernels")),
        (probed("9.0", triton="3.3.1", kernels=KERNELS_OK), False, "triton >= 3.4"),
        (probed("9.0"), False, "found none"),
        (probed("7.0", triton="3.4.0", kernels=KERNELS_OK), False, "< 7.5"),
        (probed(None, triton="3.5.0", kernels=KERNELS_OK), True, "on CPU"),
        (probed(None, triton="3.4.0", kernels=KERNELS_OK), False, "triton >= 3.5"),
        (Hardware(source="h100_80gb", devices=(gpu("9.0"),)), True, "the target needs"),
        (Hardware(source="cpu"), False, "CPU tier"),
    ],
)
def test_mxfp4_is_kept_only_where_transformers_keeps_it(hw, kept, needle):
    got, reason = dtypes.decide_quantization("mxfp4", "auto", hw, "bfloat16")
    assert got is kept and needle in reason


def test_quantization_keep_is_refused_where_it_cannot_be_kept():
    with pytest.raises(ShardwiseError, match="cannot be honoured"):
        dtypes.decide_quantization("mxfp4", "keep", probed("9.0"), "bfloat16")


def test_flash_attention_3_only_with_kernels_on_hopper():
    assert (
        dtypes.decide_attention("auto", "gpt_oss", probed("9.0", triton="3.4.0", kernels=KERNELS_OK), True).value
        == dtypes.FLASH_ATTN3_HUB
    )
    assert (
        dtypes.decide_attention("auto", "gpt_oss", probed("8.0", triton="3.4.0", kernels=KERNELS_OK), True).value
        == "eager"
    )
    assert dtypes.decide_attention("auto", "llama", probed("9.0"), False).value == "sdpa"


def test_bfloat16_needs_ampere():
    assert dtypes.decide_dtype("auto", "bfloat16", probed("7.5")).value == "float16"
    with pytest.raises(ShardwiseError, match="7.5"):
        dtypes.decide_dtype("bfloat16", "bfloat16", probed("7.5"))
