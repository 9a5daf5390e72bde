"""The planning engine on worked cases, invariants over a grid, and device maps against meta builds."""

from __future__ import annotations

import itertools
from functools import cache

import pytest

from planner import stack
from planner.config.app import profile_names
from planner.config.compose import compose, make_plan
from planner.config.request import plan_from_config
from planner.errors import ShardwiseError
from planner.hardware.tiers import resolve_hardware
from planner.units import GIB


def decision(plan, what):
    found = [d for d in plan.decisions if d.what == what]
    assert found, f"no {what} decision in {[d.what for d in plan.decisions]}"
    return found[0]


# ---- worked cases -----------------------------------------------------------------------------


def test_gpt_oss_120b_fits_one_h100_with_mxfp4_kept_at_full_context():
    plan = make_plan("gpt-oss-120b", "h100_80gb")
    assert plan.fits and plan.strategy == "single_gpu"
    assert plan.model.quantization.kept and plan.model.quantization.method == "mxfp4"
    assert plan.model.checkpoint_bytes == 65_248_815_744
    assert 0 <= plan.model.weight_bytes - plan.model.checkpoint_bytes <= 1024  # + float32 rotary buffers
    assert plan.limits.context_tokens == 131_072
    assert "maximum" in decision(plan, "context_tokens").reason  # the model's own limit binds, not memory
    assert plan.limits.kv_bytes_per_token == 36 * 2048
    (row,) = plan.budget
    assert row.planned <= row.usable and row.weights == plan.model.weight_bytes


def test_gpt_oss_120b_on_one_a100_40gb_does_not_fit_and_says_why():
    plan = make_plan("gpt-oss-120b", "a100_40gb")
    assert not plan.fits
    assert plan.binding["device"] == "0" and plan.binding["term"] == "weights"
    assert plan.binding["needed"] > plan.binding["usable"]
    assert [fix["overrides"] for fix in plan.binding["fixes"]] == [["hardware.count=2"]]
    # offloading is no fix here: kept MXFP4 experts may never leave the GPU, so it is not offered


def test_gpt_oss_20b_on_t4_keeps_mxfp4_in_float16_at_a_stated_context():
    plan = make_plan("gpt-oss-20b", "t4")
    assert plan.fits and plan.strategy == "single_gpu"
    assert plan.model.dtype == "float16" and "7.5" in decision(plan, "dtype").reason
    assert plan.model.quantization.kept
    assert 4096 <= plan.limits.context_tokens < 131_072
    assert plan.attn_implementation == "eager"
    assert plan.binding["device"] == "0" and plan.binding["term"] in ("kv_cache", "activations")


def test_gpt_oss_20b_on_v100_dequantizes_to_float16_and_needs_three_gpus():
    one = make_plan("gpt-oss-20b", "v100_16gb")
    assert not one.fits
    assert not one.model.quantization.kept and one.model.dtype == "float16"
    # dequantized 2-byte weights, plus the norms transformers keeps in float32 for float16 loads
    assert 0 < one.model.weight_bytes - 41_829_514_368 < 1 << 20
    assert ["hardware.count=3"] in [fix["overrides"] for fix in one.binding["fixes"]]
    four = make_plan("gpt-oss-20b", "v100_16gb", ["hardware.count=4", "policy.context_tokens=4096"])
    assert four.fits and four.strategy == "pipeline" and four.pp_size == 3
    assert len(four.budget) == 3  # the fewest GPUs that reach the context asked for, not all four
    longest = make_plan("gpt-oss-20b", "v100_16gb", ["hardware.count=4"])
    assert longest.pp_size == 4  # no context asked: three stop short of the maximum, so the fourth is used too


def test_llama_70b_needs_two_h100s_split_evenly():
    one = make_plan("llama-3.1-70b", "h100_80gb")
    assert not one.fits and one.binding["term"] == "weights"
    two = make_plan("llama-3.1-70b", "h100_80gb", ["hardware.count=2"])
    assert two.fits and two.strategy == "pipeline"
    assert [row.layers for row in two.budget] == [(0, 39), (40, 79)]
    assert two.limits.context_tokens > 32_768
    assert two.device_map["model.embed_tokens"] == 0 and two.device_map["lm_head"] == 1


def test_gpt2_on_cpu_runs_float32_at_its_full_context():
    plan = make_plan("gpt2", "cpu")
    assert plan.fits and plan.strategy == "cpu"
    assert plan.device_map == {"": "cpu"}
    assert plan.model.dtype == "float32" and plan.limits.context_tokens == 1024
    assert plan.model.params_total == 124_439_808


def test_a_small_model_on_eight_gpus_stays_on_one():
    plan = make_plan("llama-3.1-8b", "h100_80gb", ["hardware.count=8"])
    assert plan.fits and plan.strategy == "single_gpu" and len(plan.budget) == 1
    assert plan.device_map == {"": 0}
    assert "never spread" in decision(plan, "strategy").reason


@pytest.mark.slow
def test_without_a_context_asked_the_gpus_given_are_used_up_to_the_models_maximum():
    """The fewest GPUs that reach the full context, not the fewest that hold the weights with whatever is left."""
    two = make_plan("llama-3.1-70b", "a100_80gb", ["hardware.count=2"])
    assert two.fits and two.limits.context_tokens < 131_072  # two GPUs hold it, at a shorter context
    for count in (4, 8):
        plan = make_plan("llama-3.1-70b", "a100_80gb", [f"hardware.count={count}"])
        assert plan.limits.context_tokens == 131_072 and len(plan.budget) == 3, count  # three reach it: never four
        assert f"fewer give at most {two.limits.context_tokens:,}" in decision(plan, "strategy").reason


def test_a_requested_context_that_does_not_fit_names_the_kv_cache_and_a_shorter_context():
    plan = make_plan("llama-3.1-8b", "rtx4090", ["policy.context_tokens=131072"])
    assert not plan.fits
    assert plan.binding["term"] in ("kv_cache", "activations")
    assert any("shorter context" in fix["text"] for fix in plan.binding["fixes"])


def test_sessions_multiply_the_kv_cache():
    one = make_plan("llama-3.1-8b", "rtx4090", ["policy.context_tokens=8192"])
    four = make_plan("llama-3.1-8b", "rtx4090", ["policy.context_tokens=8192", "policy.sessions=4"])
    assert four.budget[0].kv_cache == 4 * one.budget[0].kv_cache
    assert one.budget[0].kv_cache == 8192 * one.limits.kv_bytes_per_token


def test_sliding_window_layers_cap_the_kv_cache():
    plan = make_plan("gpt-oss-20b", "h100_80gb", ["policy.context_tokens=65536"])
    full_layers, sliding_layers, per_layer_token = 12, 12, 2048
    expected = full_layers * 65536 * per_layer_token + sliding_layers * 128 * per_layer_token
    assert abs(plan.budget[0].kv_cache - expected) <= sliding_layers * per_layer_token  # window vs window-1 convention


def test_model_auto_takes_the_largest_candidate_that_fits():
    assert make_plan("auto", "a100_80gb").model.name == "gpt-oss-120b"
    assert make_plan("auto", "t4").model.name == "gpt-oss-20b"
    cpu = make_plan("auto", "cpu")
    assert cpu.model.name == "gpt2-medium" and cpu.fits
    assert "did not fit" in cpu.decisions[0].reason


def test_every_plan_carries_its_fallback_chain_ending_on_cpu():
    plan = make_plan("gpt-oss-120b", "a100_40gb")
    assert [f["model"] for f in plan.fallbacks] == ["gpt-oss-20b", "gpt2-medium", "gpt2", "gpt2"]
    assert plan.fallbacks[0]["fits"] is True and plan.fallbacks[-1]["hardware"] == "cpu"


def test_hub_ids_name_the_same_profiles():
    assert make_plan("openai/gpt-oss-120b", "h100_80gb").to_dict() == make_plan("gpt-oss-120b", "h100_80gb").to_dict()


def test_tensor_parallel_on_request_uses_the_smallest_tp_that_fits():
    args = ["hardware.count=8", "policy.strategy=tensor_parallel"]
    plan = make_plan("llama-3.1-70b", "h100_80gb", [*args, "policy.context_tokens=32768"])
    assert plan.fits and plan.strategy == "tensor_parallel" and plan.tp_size == 2
    assert plan.device_map == {} and "launch" in plan.launch.command
    longest = make_plan(
        "llama-3.1-70b", "h100_80gb", args
    )  # no context asked: the smallest tp that reaches the maximum
    assert longest.tp_size == 4 and longest.limits.context_tokens == 131_072


def test_across_nodes_tensor_parallel_inside_pipeline_across():
    plan = make_plan("llama-3.1-70b", "a10g", ["hardware.count=4", "hardware.interconnect=nvlink", "hardware.nodes=2"])
    assert plan.fits and plan.strategy == "tensor_parallel"
    assert plan.tp_size == 4 and plan.pp_size == 2 and plan.nodes == 2


def test_offload_only_when_allowed_and_states_the_slowdown():
    denied = make_plan("llama-3.1-8b", "rtx3080")
    assert not denied.fits
    allowed = make_plan("llama-3.1-8b", "rtx3080", ["policy.allow_cpu_offload=true", "policy.context_tokens=4096"])
    assert allowed.fits and allowed.strategy == "offload"
    assert "cpu" in set(allowed.device_map.values())
    assert any("tokens/s" in w for w in allowed.warnings)


def test_offload_never_moves_kept_mxfp4_experts_to_cpu():
    plan = make_plan("gpt-oss-120b", "a100_40gb", ["policy.allow_cpu_offload=true"])
    assert not plan.fits or "cpu" not in set(plan.device_map.values())


FIX_CASES = [
    ("gemma-2-9b", "t4", ["policy.context_tokens=8192"]),
    ("llama-3.1-70b", "h100_80gb", ["policy.context_tokens=131072", "policy.sessions=4"]),
    ("mixtral-8x7b", "rtx4090", ["policy.context_tokens=32768", "policy.sessions=2"]),
    ("gpt-oss-20b", "v100_16gb", []),
    ("llama-3.1-8b", "rtx4090", ["policy.context_tokens=131072", "policy.sessions=3"]),
    ("llama-3.1-8b", "rtx3080", ["policy.dtype=float32"]),
    ("gpt-oss-20b", "t4", ["policy.quantization=none"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("model,tier,overrides", FIX_CASES)
def test_every_suggested_fix_fits_when_applied(model, tier, overrides):
    plan = make_plan(model, tier, overrides)
    assert not plan.fits and plan.binding["fixes"], "the case must not fit and must suggest something"
    for fix in plan.binding["fixes"]:
        if fix["overrides"]:
            assert make_plan(model, tier, [*overrides, *fix["overrides"]]).fits, fix["text"]


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model=gpt2", "hardware=t4", "policy.dtype=bfloat16"], "bfloat16 needs compute capability >= 8.0"),
        (["model=gpt2", "hardware=t4", "policy.strategy=tensor_parallel"], "tensor_parallel"),
        (
            ["model=gpt2", "hardware=h100_80gb", "hardware.count=2", "policy.strategy=tensor_parallel"],
            "no tensor-parallel plan",
        ),
        (["model=gpt2", "hardware=h100_80gb", "policy.context_tokens=4096"], "maximum of 1024"),
        (["model=gpt2", "hardware=h100_80gb", "policy.sessions=0"], "policy.sessions"),
        (["model=gpt-oss-20b", "hardware=v100_16gb", "policy.quantization=keep"], "cannot be honoured"),
    ],
)
def test_conflicting_options_are_refused_with_the_reason(overrides, needle):
    cfg = compose("plan", overrides)
    with pytest.raises(ShardwiseError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        plan_from_config(cfg, resolve_hardware(cfg.hardware, name=overrides[1].split("=")[1]))


# ---- invariants over a grid -------------------------------------------------------------------

GRID_MODELS = [
    "gpt2-xl",
    "llama-3.2-1b",
    "llama-3.1-8b",
    "mixtral-8x7b",
    "gemma-2-9b",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "qwen3-30b-a3b",
]
GRID_TIERS = ["t4", "rtx4090", "a100_40gb", "a100_80gb", "h100_80gb"]
GRID_COUNTS = [1, 2, 4]
GRID_CONTEXTS = ["auto", "8192"]


@cache
def grid_plan(model, tier, count, context):
    cfg = compose(
        "plan", [f"model={model}", f"hardware={tier}", f"hardware.count={count}", f"policy.context_tokens={context}"]
    )
    if context != "auto" and int(context) > cfg.model.architecture.get(
        "max_position_embeddings", cfg.model.architecture.get("n_positions", 0)
    ):
        context = "auto"  # gpt2-xl's 1024-token maximum: a larger request is an error, tested elsewhere
        cfg.policy.context_tokens = "auto"
    return plan_from_config(cfg, resolve_hardware(cfg.hardware, name=tier))


@pytest.mark.slow
@pytest.mark.parametrize("model", GRID_MODELS)
def test_grid_invariants(model):
    for tier, count, context in itertools.product(GRID_TIERS, GRID_COUNTS, GRID_CONTEXTS):
        plan = grid_plan(model, tier, count, context)
        where = f"{model} on {count}x {tier} at {context}"
        assert all(d.reason for d in plan.decisions), f"{where}: a decision without a reason"
        if plan.fits:
            for row in plan.budget:
                assert row.planned <= row.usable, f"{where}: device {row.device} over budget"
                assert row.planned == row.weights + row.kv_cache + row.activations + row.overhead
            assert sum(row.weights for row in plan.budget) == plan.model.weight_bytes
        if count > 1 and plan.fits and plan.strategy in ("single_gpu", "pipeline"):
            fewer = grid_plan(model, tier, count // 2, context)
            if fewer.fits:  # more GPUs never shrink the context, and spread a model only to reach more of it
                assert plan.limits.context_tokens >= fewer.limits.context_tokens, where
                if plan.limits.context_tokens == fewer.limits.context_tokens:
                    assert len(plan.budget) == len(fewer.budget), where
        if count > 1:
            fewer = grid_plan(model, tier, count // 2, context)
            assert plan.fits or not fewer.fits, f"{where}: more GPUs made it stop fitting"


@pytest.mark.parametrize("model", GRID_MODELS)
def test_more_memory_per_gpu_never_makes_a_plan_worse(model):
    for count, context in itertools.product(GRID_COUNTS, GRID_CONTEXTS):
        small, big = grid_plan(model, "a100_40gb", count, context), grid_plan(model, "a100_80gb", count, context)
        assert big.fits or not small.fits
        if small.fits and context == "auto":
            assert big.limits.context_tokens >= small.limits.context_tokens


MONOTONE_CONTEXTS = [2048, 4096, 8192, 16384, 32768, 65536, 131072]


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,tier,count",
    [("gpt-oss-120b", "h100_80gb", 1), ("llama-3.1-70b", "a100_80gb", 2), ("mixtral-8x7b", "a100_80gb", 2)]
    + [("gemma-2-9b", "l4", 1), ("gpt-oss-20b", "t4", 1), ("qwen3-30b-a3b", "a100_40gb", 2)],
)
def test_planned_memory_grows_with_the_context(model, tier, count):
    """Prefill is chunked the same way at every context, so a longer context never plans less memory.

    The one exception is where the usual chunk stops fitting and a smaller one is planned: there a
    longer context may plan less than a shorter one prefilled in larger pieces, which is why the
    property is stated for prefill passes that do not shrink.
    """
    plans = []
    for context in MONOTONE_CONTEXTS:
        if context > grid_max_context(model):
            break
        plan = make_plan(model, tier, [f"hardware.count={count}", f"policy.context_tokens={context}"])
        if plan.fits:
            plans.append(plan)
    assert len(plans) >= 3
    for short, long in itertools.combinations(plans, 2):
        short_pass = short.limits.prefill_chunk_tokens or short.limits.context_tokens
        long_pass = long.limits.prefill_chunk_tokens or long.limits.context_tokens
        if short_pass <= long_pass:
            assert sum(b.planned for b in short.budget) <= sum(b.planned for b in long.budget), (
                f"{model}: {short.limits.context_tokens} plans more than {long.limits.context_tokens}"
            )


def test_a_long_context_is_not_planned_below_a_shorter_one_on_the_same_gpu():
    """gpt-oss-120b on one H100 once planned 71.27 GiB at 65,536 tokens and 70.60 GiB at 131,072."""
    half = make_plan("gpt-oss-120b", "h100_80gb", ["policy.context_tokens=65536"])
    full = make_plan("gpt-oss-120b", "h100_80gb", ["policy.context_tokens=131072"])
    assert half.limits.prefill_chunk_tokens == full.limits.prefill_chunk_tokens == 8192
    assert half.budget[0].planned < full.budget[0].planned


def grid_max_context(model: str) -> int:
    arch = compose("plan", [f"model={model}"]).model.architecture
    return arch.get("max_position_embeddings", arch.get("n_positions", 0))


# ---- device maps against transformers' own modules ---------------------------------------------


@cache
def meta_names(profile: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    from planner.config.reader import load_profile

    arch = OmegaConf.to_container(load_profile(profile).architecture, resolve=True)
    arch.pop("quantization_config", None)
    config = AutoConfig.for_model(**arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    params = tuple(name for name, _ in model.named_parameters(remove_duplicate=False))
    buffers = tuple(name for name, _ in model.named_buffers())
    return params, buffers


PROFILES = [p for p in profile_names("model") if p != "auto"]


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_device_map_covers_every_parameter_and_buffer_exactly_once(profile):
    # Small GPUs force a multi-device map (fits or not, the layout is what is checked).
    plan = make_plan(profile, "rtx3080", ["hardware.count=4", "policy.context_tokens=512"])
    keys = list(plan.device_map)
    assert len(plan.budget) >= 1
    params, buffers = meta_names(profile)
    for name in params + buffers:
        owners = [k for k in keys if k == "" or name == k or name.startswith(k + ".")]
        assert len(owners) == 1, f"{profile}: {name} is placed by {owners}"
    assert set(plan.device_map.values()) <= {0, 1, 2, 3}


def test_offload_keeps_gpu_layers_contiguous_and_spills_ram_then_disk():
    plan = make_plan(
        "llama-3.1-8b",
        "rtx3080",
        [
            "policy.allow_cpu_offload=true",
            "policy.allow_disk_offload=true",
            "hardware.host_ram_gib=8",
            "policy.context_tokens=4096",
            "policy.offload_disk_gib=100",
        ],
    )
    assert plan.fits and plan.strategy == "offload"
    rows = {row.device: row for row in plan.budget}
    assert set(rows) == {"0", "cpu", "disk"}
    gpu, ram, disk = rows["0"], rows["cpu"], rows["disk"]
    assert (
        gpu.layers[0] == 0
        and ram.layers[0] == gpu.layers[1] + 1
        and disk.layers[0] == ram.layers[1] + 1
        and disk.layers[1] == 31
    )
    assert gpu.planned <= gpu.usable and ram.planned <= ram.usable
    assert (
        ram.kv_cache == 0 and gpu.kv_cache == 4096 * plan.limits.kv_bytes_per_token
    )  # offloaded layers keep KV on the GPU
    order = [plan.device_map[f"model.layers.{i}"] for i in range(32)]
    assert order == sorted(order, key=lambda d: {0: 0, "cpu": 1, "disk": 2}[d])


def test_mixed_gpus_plan_on_the_ones_that_keep_bf16_and_mxfp4():
    from planner.config.reader import profile_spec
    from planner.config.request import policy_from_config
    from planner.hardware.devices import Device, Hardware
    from planner.planning import plan_model

    cfg = compose("plan", ["model=gpt-oss-20b"])
    hw = Hardware(
        source="probe",
        probed=True,
        host_ram_bytes=128 * GIB,
        installed={"triton": "3.4.0", "kernels": stack.minimum_version("kernels")},
        devices=(
            Device(0, "NVIDIA A100-SXM4-80GB", 80 * GIB, 80 * GIB, "8.0"),
            Device(1, "Tesla V100-SXM2-16GB", 16 * GIB, 16 * GIB, "7.0"),
        ),
    )
    plan = plan_model(profile_spec("gpt-oss-20b"), hw, policy_from_config(cfg.policy), load_profile=profile_spec)
    assert plan.fits and plan.device_map == {"": 0}
    assert plan.model.dtype == "bfloat16" and plan.model.quantization.kept
    assert plan.decisions[0].what == "gpus" and "GPU 1" in plan.decisions[0].reason
    assert len(plan.hardware["devices"]) == 2  # the fingerprint still covers the whole machine


def test_tensor_parallel_ranks_hold_the_residual_stream_whole():
    plan = make_plan(
        "llama-3.1-70b",
        "h100_80gb",
        ["hardware.count=4", "policy.strategy=tensor_parallel", "policy.context_tokens=131072", "policy.sessions=2"],
    )
    assert plan.fits and plan.tp_size == 4
    chunk = plan.limits.prefill_chunk_tokens or plan.limits.context_tokens
    hidden_bytes = chunk * 8192 * 2
    assert plan.budget[0].activations >= 3 * hidden_bytes  # residual (2x) + incoming hidden state, not divided by 4


def test_pcie_nodes_without_tensor_parallel_pipeline_across_nodes():
    plan = make_plan("llama-3.1-70b", "t4", ["hardware.count=4", "hardware.nodes=4", "policy.context_tokens=4096"])
    assert plan.fits and plan.strategy == "pipeline" and plan.tp_size == 1
    assert plan.nodes > 1 and plan.pp_size % plan.nodes == 0 and len(plan.budget) == plan.pp_size
    assert plan.device_map == {}  # ranks load their own stages: no single-process device_map
    assert any(d.what == "tensor_parallel" and "pcie" in d.reason for d in plan.decisions)


def test_quantization_keep_applies_to_the_asked_model_not_its_unquantized_fallbacks():
    plan = make_plan("gpt-oss-120b", "h100_80gb", ["policy.quantization=keep"])
    assert plan.fits and plan.model.quantization.kept
    assert [f["model"] for f in plan.fallbacks][:3] == ["gpt-oss-20b", "gpt2-medium", "gpt2"]


def test_a_forced_strategy_a_fallback_cannot_honour_rules_out_that_fallback_not_the_plan():
    """gpt-oss has a TP plan, its fallback gpt2 has none: the plan is tensor parallel, gpt2 is listed with why not."""
    plan = make_plan("gpt-oss-120b", "h100_80gb", ["hardware.count=8", "policy.strategy=tensor_parallel"])
    assert plan.fits and plan.strategy == "tensor_parallel" and plan.tp_size >= 2
    by_model = {f["model"]: f for f in plan.fallbacks if f["hardware"] == "same"}
    assert by_model["gpt2"]["fits"] is False
    assert "gpt2 has no tensor-parallel plan" in by_model["gpt2"]["reason"]
    assert plan.fallbacks[-1]["hardware"] == "cpu"


def test_model_auto_skips_a_candidate_that_cannot_honour_a_forced_strategy():
    forced = ["hardware.count=8", "policy.strategy=tensor_parallel", "policy.candidates=[gpt2,qwen3-8b]"]
    plan = make_plan("auto", "h100_80gb", forced)
    assert plan.model.name == "qwen3-8b" and plan.strategy == "tensor_parallel"
    assert "gpt2 (policy.strategy=tensor_parallel is not possible" in decision(plan, "model").reason


def test_a_whole_number_context_written_as_a_float_is_accepted():
    assert make_plan("llama-3.1-8b", "h100_80gb", ["policy.context_tokens=8e3"]).limits.context_tokens == 8000


def test_flash_attention_2_is_refused_below_ampere():
    cfg = compose("plan", ["model=gpt2", "hardware=t4", "policy.attn_implementation=flash_attention_2"])
    with pytest.raises(ShardwiseError, match="flash_attention_2 needs compute capability >= 8.0"):
        plan_from_config(cfg, resolve_hardware(cfg.hardware, name="t4"))


def test_a_reply_may_use_the_whole_context_the_prompt_leaves():
    plan = make_plan("llama-3.1-8b", "h100_80gb", ["policy.context_tokens=8192", "generation.max_tokens=16"])
    assert plan.limits.max_new_tokens == 8192  # generation.max_tokens is only the default per request


def test_a_split_that_fits_only_one_layer_off_proportional_is_found():
    """48 + 24 GiB: the proportional 24/12 split overflows GPU 1 at 32k; moving a boundary layer fits."""
    from planner.config.reader import profile_spec
    from planner.config.request import policy_from_config
    from planner.hardware.devices import Device, Hardware
    from planner.planning import plan_model

    cfg = compose("plan", ["model=gpt-oss-120b", "policy.context_tokens=32768"])
    hw = Hardware(
        source="probe",
        probed=True,
        host_ram_bytes=256 * GIB,
        installed={"triton": "3.4.0", "kernels": stack.minimum_version("kernels")},
        devices=(Device(0, "GPU-48", 48 * GIB, 48 * GIB, "8.6"), Device(1, "GPU-24", 24 * GIB, 24 * GIB, "8.6")),
    )
    plan = plan_model(profile_spec("gpt-oss-120b"), hw, policy_from_config(cfg.policy), load_profile=profile_spec)
    assert plan.fits and plan.strategy == "pipeline"
    first, second = plan.budget
    assert first.layers[1] + 1 == second.layers[0] and second.layers[1] == 35
    assert all(row.planned <= row.usable for row in plan.budget)
