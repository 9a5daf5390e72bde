"""Loading exactly what a plan says: cpu and disk-offload plans, stale-plan refusal, kwargs, env."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import cpu_plan, tiny_gpt_oss, tiny_llama

from planner.errors import ShardwiseError
from planner.planfile.plan import Quantization
from runner.engine.loader import check_fresh, from_pretrained_kwargs, load, set_runtime_env
from runner.engine.session import ChatSession
from runner.engine.types import SamplingParams


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": tiny_llama(root), "gpt_oss": tiny_gpt_oss(root)}


def test_cpu_plan_loads_every_weight_on_cpu_in_plan_dtype(models):
    loaded = load(cpu_plan(models["llama"]), log=lambda line: None)
    devices = {p.device.type for p in loaded.model.parameters()}
    dtypes = {p.dtype for p in loaded.model.parameters()}
    assert devices == {"cpu"} and dtypes == {torch.float32}
    assert loaded.model.config._attn_implementation == "sdpa"


def test_plan_dtype_bfloat16_is_honoured(models):
    loaded = load(cpu_plan(models["llama"], dtype="bfloat16"), log=lambda line: None)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_offload_plan_puts_a_layer_on_disk_and_still_matches_cpu_ids(models, tmp_path):
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    folder = tmp_path / "offload"
    offload = load(
        cpu_plan(models["llama"], device_map=device_map, strategy="offload", offload_folder=str(folder)),
        log=lambda line: None,
    )
    # transformers reads disk-offloaded weights straight from the safetensors file: they stay on "meta".
    assert offload.model.hf_device_map["model.layers.1"] == "disk" and folder.is_dir()
    layer1 = {p.device.type for n, p in offload.model.named_parameters() if n.startswith("model.layers.1.")}
    assert layer1 == {"meta"}
    plain = load(cpu_plan(models["llama"]), log=lambda line: None)
    messages = [{"role": "user", "content": "hello world"}]
    greedy = SamplingParams(max_tokens=8, temperature=0)
    ids_offload = ChatSession(offload, defaults=greedy).generate(messages).token_ids
    ids_plain = ChatSession(plain, defaults=greedy).generate(messages).token_ids
    assert ids_offload == ids_plain and len(ids_plain) > 0


def test_stale_plan_is_refused_naming_both_fingerprints_and_the_fix(models):
    from planner.config.compose import current_fingerprint

    plan = cpu_plan(models["llama"], fingerprint="hw-0000stale0000", hardware_source="probe")
    now = current_fingerprint("probe")
    with pytest.raises(ShardwiseError) as err:
        check_fresh(plan, "plan.json")
    message = str(err.value)
    assert "hw-0000stale0000" in message and now in message and "replan=true" in message and "\n" not in message


def test_fresh_plan_passes_the_fingerprint_check(models):
    from planner.config.compose import current_fingerprint

    check_fresh(cpu_plan(models["llama"], fingerprint=current_fingerprint("probe"), hardware_source="probe"))


def test_dequantized_mxfp4_plan_asks_transformers_to_dequantize(models):
    plan = cpu_plan(models["gpt_oss"], quantization=Quantization("mxfp4", kept=False, reason="cpu"))
    config = from_pretrained_kwargs(plan)["quantization_config"]
    assert type(config).__name__ == "Mxfp4Config" and config.dequantize is True


def test_kept_mxfp4_plan_leaves_the_checkpoint_quantization_alone(models):
    plan = cpu_plan(models["gpt_oss"], quantization=Quantization("mxfp4", kept=True, reason="cc 9.0"))
    kwargs = from_pretrained_kwargs(plan)
    assert "quantization_config" not in kwargs and kwargs["trust_remote_code"] is False
    assert kwargs["device_map"] == {"": "cpu"}


def test_a_hub_plan_loads_the_revision_it_was_planned_from(models):
    from dataclasses import replace

    plan = cpu_plan(models["llama"])
    assert "revision" not in from_pretrained_kwargs(plan)
    pinned = replace(plan, model=replace(plan.model, revision="0123abcd" * 5))
    assert from_pretrained_kwargs(pinned)["revision"] == "0123abcd" * 5


@pytest.mark.parametrize(
    "quantization,config_class,settings",
    [
        (Quantization("fp8", kept=False, reason="cc 8.0"), "FineGrainedFP8Config", {"dequantize": True}),
        (Quantization(None, kept=True, reason="on load", on_load="fp8"), "FineGrainedFP8Config", {"dequantize": False}),
        (
            Quantization(None, kept=True, reason="on load", on_load="bnb4"),
            "BitsAndBytesConfig",
            {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
        ),
        (Quantization(None, kept=True, reason="on load", on_load="bnb8"), "BitsAndBytesConfig", {"load_in_8bit": True}),
    ],
)
def test_plans_that_quantize_or_dequantize_on_load_pass_that_config(models, quantization, config_class, settings):
    config = from_pretrained_kwargs(cpu_plan(models["llama"], quantization=quantization))["quantization_config"]
    assert type(config).__name__ == config_class
    assert {k: getattr(config, k) for k in settings} == settings


def test_gpt_oss_moe_with_sliding_window_loads_and_generates(models):
    # transformers has no sdpa path for gpt-oss: the planner says eager, and so does this plan.
    loaded = load(cpu_plan(models["gpt_oss"], attn_implementation="eager"), log=lambda line: None)
    assert loaded.model.config.layer_types == ["sliding_attention", "full_attention"]
    completion = ChatSession(loaded, defaults=SamplingParams(max_tokens=5, temperature=0)).generate(
        [{"role": "user", "content": "one two three"}]
    )
    assert completion.usage.completion_tokens >= 1


def test_runtime_env_sets_allocator_and_device_order_but_keeps_user_values(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    set_now = set_runtime_env("expandable_segments:True")
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert os.environ["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST" and "CUDA_DEVICE_ORDER" not in set_now


def test_runtime_env_lets_torch_threads_wait_asleep_unless_the_user_chose(monkeypatch):
    """OpenMP's wait policy defaults to PASSIVE (spinning helpers starved the server's own threads on a shared host);
    a policy the user exported is kept."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert set_runtime_env(None)["OMP_WAIT_POLICY"] == os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "OMP_WAIT_POLICY" not in set_runtime_env(None) and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
