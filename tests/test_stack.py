"""The software stack: transformers' own kernels requirement, the plan's `software` block, drift lines."""

from __future__ import annotations

from importlib import metadata

import pytest

from planner.config.compose import make_plan
from planner.decide import stack


@pytest.fixture
def fake_requires(monkeypatch):
    """Replace transformers' metadata requirement lines; the lru_cache is cleared around each use."""

    def use(lines):
        stack.transformers_requirement.cache_clear()
        monkeypatch.setattr(stack.metadata, "requires", lambda name: lines if name == "transformers" else [])

    yield use
    stack.transformers_requirement.cache_clear()


def test_the_kernels_range_is_transformers_own_plain_requirement(fake_requires):
    fake_requires(["kernels<0.20,>=0.19.1", 'kernels<0.18; extra == "kernels"', "torch>=2.6; extra == 'torch'"])
    assert stack.requirement_text("kernels") == "kernels>=0.19.1,<0.20"
    assert stack.minimum_version("kernels") == "0.19.1"
    assert stack.satisfies("kernels", "0.19.1") and not stack.satisfies("kernels", "0.20.0")
    assert not stack.satisfies("kernels", None)


def test_an_extra_only_requirement_is_taken_when_there_is_no_plain_one(fake_requires):
    fake_requires(['kernels<0.19,>=0.18.2; extra == "kernels"', 'numpy; extra == "kernels"'])
    assert stack.requirement_text("kernels") == "kernels>=0.18.2,<0.19"
    assert stack.satisfies("kernels", "0.18.3") and not stack.satisfies("kernels", "0.19.1")


def test_no_range_named_means_any_release(fake_requires):
    fake_requires(["numpy>=1.17"])
    assert stack.requirement_text("kernels") == "kernels"
    assert stack.satisfies("kernels", "0.1.0") and stack.minimum_version("kernels") is None


def test_the_installed_transformers_names_a_kernels_range():
    spec = stack.transformers_requirement("kernels")
    assert spec is not None and not spec.contains("0.0.1")


def test_a_plan_records_the_stack_it_assumed():
    plan = make_plan("gpt-oss-120b", "h100_80gb")
    software = plan.to_dict()["software"]
    assert software["transformers"] == metadata.version("transformers")
    assert software["torch"] == metadata.version("torch")
    assert software["kernels"] is None and "not probed" in software["source"]  # a tier says nothing of kernels
    assert software["kernels_required"] == stack.requirement_text("kernels")
    reason = next(d.reason for d in plan.decisions if d.what == "quantization")
    assert stack.requirement_text("kernels") in reason  # the MXFP4 decision quotes transformers' own range


def test_drift_names_another_transformers_minor_and_nothing_for_the_same_stack():
    here = {"transformers": metadata.version("transformers")}
    assert stack.drift(here, None) == []
    lines = stack.drift({"transformers": "4.57.1"}, None)
    assert len(lines) == 1 and "4.57.1" in lines[0] and metadata.version("transformers") in lines[0]
    assert stack.drift({}, "mxfp4") == []  # a plan from before the software block: nothing to compare


def test_drift_warns_that_kept_mxfp4_will_be_dequantized_without_kernels(monkeypatch):
    versions = {"transformers": metadata.version("transformers"), "kernels": None, "triton": None}
    monkeypatch.setattr(stack, "installed_version", lambda name: versions.get(name))
    assumed = {"transformers": versions["transformers"], "kernels": stack.minimum_version("kernels")}
    (line,) = stack.drift(assumed, "mxfp4")
    assert "dequantize" in line and stack.requirement_text("kernels") in line
    assert stack.drift(assumed, None) == []  # nothing kept packed: kernels do not change the plan
