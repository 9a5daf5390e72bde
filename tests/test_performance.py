"""The speed model: roofline arithmetic on hand-computed cases, its properties, and the plan's performance block."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.speed.roofline import (
    AttentionLayer,
    Efficiency,
    Link,
    SpeedInputs,
    Stage,
    Stream,
    attention_pairs,
    predict,
    prefill_seconds,
    routed_fraction,
    step_time,
)

EFF = Efficiency(bandwidth=0.5, compute=0.5, link=0.5, layer_overhead_s=1e-3, step_overhead_s=0.01)
TWO_LAYERS = (AttentionLayer(kv_bytes_per_token=1000, window=None, qk_width=64),) * 2


def dense_stage(**changes) -> Stage:
    stage = Stage(
        label="GPU 0",
        memory_bytes_per_s=100e9,
        flops_per_s=1e12,
        dense_weight_bytes=10_000_000_000,
        dense_params=5_000_000_000,
        layers=TWO_LAYERS,
        efficiency=EFF,
    )
    return replace(stage, **changes)


def one_stage(**changes) -> SpeedInputs:
    return SpeedInputs(stages=(dense_stage(**changes),), hidden_bytes=8192)


def test_decode_step_is_weights_plus_kv_over_effective_bandwidth_plus_fixed_costs():
    # weights 10e9 B + KV read 2 layers x 1000 B x 512 tokens + KV write 2 x 1000 B, at 100 GB/s x 0.5
    memory = (10e9 + 2 * 1000 * 512 + 2 * 1000) / 50e9
    fixed = 2 * 1e-3 + 0.01
    step = step_time(one_stage(), 1, 1, 512, "decode")
    assert step.seconds == pytest.approx(memory + fixed, rel=1e-12)
    assert step.terms["compute"] == 0.0  # 1e10 FLOPs at 0.5 TFLOPs (0.02 s) hide under 0.2 s of memory
    assert step.binding == "decode is bound by reading 9.3 GiB of weights per token at 100.0 GB/s"


def test_prefill_is_compute_bound_flops_over_effective_compute():
    # 2 FLOPs x 5e9 params x 512 tokens + attention 4 x 64 x (512 x 513 / 2 pairs) x 2 layers, at 1 TFLOPs x 0.5
    flops = 2 * 5e9 * 512 + 4 * 64 * (512 * 513 // 2) * 2
    assert prefill_seconds(one_stage(), 512) == pytest.approx(flops / 0.5e12 + 2 * 1e-3 + 0.01, rel=1e-12)
    assert step_time(one_stage(), 1, 512, 0, "prefill").binding == (
        "prefill is bound by compute: 512 token(s) per pass at 1.0 dense TFLOPs"
    )


def test_prefill_in_chunks_reads_the_weights_once_per_chunk():
    inputs = one_stage(flops_per_s=1e15)  # compute no longer binds: each pass is a weight read
    one_pass = prefill_seconds(inputs, 512)
    four_passes = prefill_seconds(inputs, 512, chunk_tokens=128)
    assert four_passes == pytest.approx(4 * one_pass, rel=0.01)


def test_attention_pairs_count_causal_and_sliding_keys():
    assert attention_pairs(10, None) == 55
    assert attention_pairs(10, 4) == 1 + 2 + 3 + 4 * 7
    assert attention_pairs(3, 4, cached=2) == 3 + 4 + 4
    assert attention_pairs(1, None, cached=511) == 512
    assert attention_pairs(1, 128, cached=4096) == 128


def test_routed_fraction_of_experts():
    assert routed_fraction(8, 2, 1) == 0.25
    assert routed_fraction(8, 2, 2) == pytest.approx(1 - 0.75**2)
    assert routed_fraction(0, 0, 5) == 1.0


def test_tensor_parallel_all_reduce_term_is_two_ring_all_reduces_per_layer():
    link = Link("NVLink", 100e9, latency_s=10e-6)
    inputs = SpeedInputs(stages=(dense_stage(),), hidden_bytes=8192, tp_size=2, tp_link=link)
    per_call = 10e-6 + 8192 * 2 * (2 - 1) / 2 / (100e9 * 0.5)
    assert step_time(inputs, 1, 1, 512, "decode").terms["tp"] == pytest.approx(2 * 2 * per_call)


def test_offloaded_weights_stream_over_their_link():
    inputs = one_stage(streams=(Stream(4_000_000_000, 25e9, "host RAM over PCIe"),))
    step = step_time(inputs, 1, 1, 512, "decode")
    assert step.terms["stream:host RAM over PCIe"] == pytest.approx(4e9 / (25e9 * 0.5))
    assert step.binding == "decode is bound by streaming 3.7 GiB of offloaded weights per pass from host RAM over PCIe"


def test_pipeline_stages_run_in_turn_with_a_hand_off_between():
    half = dense_stage(dense_weight_bytes=5_000_000_000, dense_params=2_500_000_000, layers=TWO_LAYERS[:1])
    hop = Link("PCIe", 25e9, latency_s=10e-6)
    piped = SpeedInputs(stages=(half, half), hidden_bytes=8192, hops=(hop,))
    step = step_time(piped, 1, 1, 512, "decode")
    assert step.terms["hop"] == pytest.approx(10e-6 + 8192 / (25e9 * 0.5))
    whole = step_time(one_stage(), 1, 1, 512, "decode")
    assert step.seconds == pytest.approx(whole.seconds + step.terms["hop"], rel=1e-9)
    assert step.binding.endswith("(2 stages in turn)")


def test_predict_reports_one_sequence_aggregate_and_both_ttfts():
    p = predict(one_stage(), context_tokens=8192, sessions=8, prompt_tokens=512)
    assert p.decode_tokens_per_s == pytest.approx(1 / step_time(one_stage(), 1, 1, 512, "decode").seconds)
    assert p.aggregate_tokens_per_s == pytest.approx(8 / step_time(one_stage(), 8, 1, 512, "decode").seconds)
    assert p.ttft_s == pytest.approx(prefill_seconds(one_stage(), 512))
    assert p.ttft_full_s == pytest.approx(prefill_seconds(one_stage(), 8192))
    assert p.ttft_full_s > p.ttft_s
    assert p.to_dict()["binding"].startswith("decode is bound by reading")


# ---- properties ------------------------------------------------------------------------------
sizes = st.integers(min_value=10**6, max_value=10**11)
rates = st.floats(min_value=1e9, max_value=1e13)


@settings(max_examples=60, deadline=None)
@given(weights=sizes, bandwidth=rates, factor=st.floats(min_value=1.0, max_value=10.0), sessions=st.integers(1, 64))
def test_more_bandwidth_is_never_slower(weights, bandwidth, factor, sessions):
    slow = one_stage(dense_weight_bytes=weights, memory_bytes_per_s=bandwidth)
    fast = one_stage(dense_weight_bytes=weights, memory_bytes_per_s=bandwidth * factor)
    a = predict(slow, context_tokens=4096, sessions=sessions)
    b = predict(fast, context_tokens=4096, sessions=sessions)
    assert b.decode_tokens_per_s >= a.decode_tokens_per_s
    assert b.aggregate_tokens_per_s >= a.aggregate_tokens_per_s
    assert b.ttft_s <= a.ttft_s


@settings(max_examples=60, deadline=None)
@given(weights=sizes, sessions=st.integers(1, 256), prompt=st.integers(1, 4096))
def test_aggregate_is_at_least_one_sequence(weights, sessions, prompt):
    p = predict(one_stage(dense_weight_bytes=weights), context_tokens=4096, sessions=sessions, prompt_tokens=prompt)
    assert p.aggregate_tokens_per_s >= p.decode_tokens_per_s * (1 - 1e-12)


@settings(max_examples=40, deadline=None)
@given(total=sizes, experts=st.sampled_from([8, 32, 128]), top_k=st.sampled_from([1, 2, 4]))
def test_moe_decodes_faster_than_a_dense_model_of_the_same_total_size(total, experts, top_k):
    shared = total // 10
    moe = SpeedInputs(
        stages=(
            dense_stage(
                dense_weight_bytes=shared,
                dense_params=shared // 2,
                expert_weight_bytes=total - shared,
                expert_params=(total - shared) // 2,
            ),
        ),
        hidden_bytes=8192,
        num_experts=experts,
        experts_per_token=top_k,
    )
    dense = one_stage(dense_weight_bytes=total, dense_params=total // 2)
    assert (
        predict(moe, context_tokens=4096, sessions=1).decode_tokens_per_s
        > predict(dense, context_tokens=4096, sessions=1).decode_tokens_per_s
    )


@settings(max_examples=40, deadline=None)
@given(offloaded=sizes, link=rates)
def test_offload_is_slower(offloaded, link):
    resident = one_stage()
    streamed = one_stage(streams=(Stream(offloaded, link, "host RAM over PCIe"),))
    assert (
        predict(streamed, context_tokens=4096, sessions=1).decode_tokens_per_s
        < predict(resident, context_tokens=4096, sessions=1).decode_tokens_per_s
    )


@settings(max_examples=40, deadline=None)
@given(fast=st.floats(min_value=50e9, max_value=1e12), ratio=st.floats(min_value=1.5, max_value=50))
def test_tensor_parallel_over_a_slower_link_is_slower(fast, ratio):
    def tp(bandwidth):
        link = Link("link", bandwidth, latency_s=10e-6)
        return SpeedInputs(stages=(dense_stage(),), hidden_bytes=16384, tp_size=4, tp_link=link)

    quick = predict(tp(fast), context_tokens=4096, sessions=8)
    slow = predict(tp(fast / ratio), context_tokens=4096, sessions=8)
    assert slow.aggregate_tokens_per_s < quick.aggregate_tokens_per_s
    assert slow.ttft_s > quick.ttft_s


# ---- in the plan -----------------------------------------------------------------------------
def test_every_fitting_plan_carries_a_performance_block_that_survives_plan_json(tmp_path):
    from planner.config.compose import make_plan
    from planner.planfile.plan import Plan

    plan = make_plan("llama-3.1-70b", "h100_80gb", ["hardware.count=2", "policy.sessions=4"])
    perf = plan.performance
    assert plan.fits and perf["available"]
    for key in ("decode_tokens_per_s", "aggregate_tokens_per_s", "ttft_s", "ttft_full_s", "binding"):
        assert key in perf
    assert perf["aggregate_tokens_per_s"] > perf["decode_tokens_per_s"] > 0
    # 70B in bf16 on two H100s: every token reads both halves of the weights in turn
    weights_read = plan.model.weight_bytes - 128256 * 8192 * 2  # the input embedding is a lookup
    read = f"{weights_read / 2**30:.1f} GiB"
    assert perf["binding"] == f"decode is bound by reading {read} of weights per token at 3.35 TB/s (2 stages in turn)"
    assert Plan.load(plan.save(tmp_path / "plan.json")).performance == perf


def test_cpu_plan_decode_is_the_weights_read_at_the_given_bandwidth():
    """Neutral factors: tokens/s = bandwidth / bytes read per token; gpt2's wte is read whole (tied to lm_head)."""
    from planner.config.compose import make_plan

    overrides = [
        "policy.dtype=float32",
        "policy.context_tokens=1",
        "policy.min_context_tokens=1",
        "policy.performance.prompt_tokens=1",
        "policy.performance.cpu.bandwidth_efficiency=1",
        "policy.performance.cpu.layer_overhead_us=0",
        "policy.performance.cpu.step_overhead_ms=0",
    ]
    plan = make_plan("gpt2", "cpu_only", overrides)
    position_table = 1024 * 768 * 4  # wpe: a lookup, never read whole
    read = plan.model.weight_bytes - position_table
    kv = plan.limits.kv_bytes_per_token * 2  # one cached token read, one written
    assert plan.performance["decode_tokens_per_s"] == pytest.approx(
        40e9 / (read + kv), rel=1e-4
    )  # the block rounds to 3 decimals


def test_report_and_sweep_show_the_predicted_speed():
    from planner.config.sweep import _tokens_per_s
    from planner.explain.report import performance_line

    perf = predict(one_stage(), context_tokens=8192, sessions=4).to_dict() | {"available": True}
    line = performance_line(perf)
    assert line.startswith(f"speed (predicted): {perf['decode_tokens_per_s']:,.1f} tokens/s per sequence")
    assert "decode is bound by reading" in line
    assert _tokens_per_s(perf) == f"{perf['decode_tokens_per_s']:,.1f} ({perf['aggregate_tokens_per_s']:,.0f} x4)"
    assert performance_line({"available": False, "reason": "no bandwidth"}) == "speed: not predicted (no bandwidth)"


def test_a_probed_gpu_plans_with_the_speeds_its_tier_publishes():
    """A tier GPU whose numbers were left out (as NVML leaves them out) gets them back by name when planned."""
    from planner.config.compose import make_plan

    bare = make_plan("gpt2", "h100_80gb", ["hardware.memory_bandwidth_gb_per_s=0", "hardware.bf16_tflops=0"])
    full = make_plan("gpt2", "h100_80gb")
    assert bare.hardware["devices"][0]["memory_bandwidth_gb_per_s"] == 3350
    assert bare.performance == full.performance


def test_probed_gpus_get_their_published_speeds_by_name():
    from planner.config.gpu_speeds import with_published_speeds
    from planner.hardware.devices import Device, Hardware

    probed = Hardware(
        source="probe",
        devices=(
            Device(0, "NVIDIA H100 80GB HBM3", 80 * 2**30, 80 * 2**30, "9.0"),
            Device(1, "Some Future GPU", 80 * 2**30, 80 * 2**30, "9.0"),
        ),
        interconnect="nvlink",
        probed=True,
    )
    hw = with_published_speeds(probed)
    h100, unknown = hw.devices
    assert (h100.memory_bandwidth_gb_per_s, h100.bf16_tflops, h100.fp8_tflops) == (3350, 989, 1979)
    assert hw.nvlink_gb_per_s == 450 and hw.pcie_gb_per_s == 63
    assert unknown.memory_bandwidth_gb_per_s == 0
    assert any("'Some Future GPU'" in note for note in hw.notes)


def test_a_gpu_without_published_speeds_gets_no_prediction_and_says_why():
    from planner.config.compose import make_plan

    plan = make_plan("gpt2", "t4", ["hardware.name=Some Future GPU", "hardware.memory_bandwidth_gb_per_s=0"])
    assert plan.fits
    assert plan.performance == {
        "available": False,
        "reason": "no published bandwidth or float16 TFLOPs for 'Some Future GPU': "
        "add them to its tier in conf/hardware/",
    }
    assert any("no published speeds for 'Some Future GPU'" in warning for warning in plan.warnings)


def test_moe_plan_reads_only_the_routed_experts():
    """gpt-oss-120b keeps MXFP4 on an H100: a token reads 4 of 128 experts, so decode beats reading all weights."""
    from planner.config.compose import make_plan

    neutral = [
        "policy.performance.gpu.bandwidth_efficiency=1",
        "policy.performance.gpu.layer_overhead_us=0",
        "policy.performance.gpu.step_overhead_ms=0",
        "policy.context_tokens=4096",
    ]
    plan = make_plan("gpt-oss-120b", "h100_80gb", neutral)
    all_weights = plan.model.weight_bytes / 3.35e12
    assert 1 / plan.performance["decode_tokens_per_s"] < all_weights / 5


# ---- calibration ------------------------------------------------------------------------------
def test_fit_factors_recovers_the_factors_samples_were_made_with():
    from planner.speed.calibration import Sample, fit_factors

    bandwidth, compute, per_layer, per_pass = 0.6, 0.8, 500e-6, 2e-3
    shapes = [(4, 0.002, 0.01), (12, 0.010, 0.05), (8, 0.030, 0.20), (24, 0.050, 0.31), (16, 0.120, 0.90)]
    samples = [
        Sample(
            layers=layers,
            ideal_step_s=step,
            measured_step_s=step / bandwidth + layers * per_layer + per_pass,
            ideal_prefill_s=prefill,
            measured_prefill_s=prefill / compute + layers * per_layer + per_pass,
        )
        for layers, step, prefill in shapes
    ]
    assert fit_factors(samples) == {
        "bandwidth_efficiency": 0.6,
        "compute_efficiency": 0.8,
        "layer_overhead_us": 500.0,
        "step_overhead_ms": 2.0,
    }


def test_a_calibrated_snapshot_plans_with_its_measured_factors(tmp_path):
    """`speed_factors` recorded in a snapshot win over policy.performance for plans on that snapshot."""
    from planner.config.compose import make_plan
    from planner.hardware.devices import Hardware
    from planner.hardware.snapshot import save_snapshot

    factors = {
        "bandwidth_efficiency": 0.5,
        "compute_efficiency": 0.5,
        "layer_overhead_us": 100.0,
        "step_overhead_ms": 1.0,
    }
    box = Hardware(
        source="probe",
        host_ram_bytes=32 * 2**30,
        cpu_count=4,
        interconnect="none",
        probed=True,
        host_memory_bandwidth_gb_per_s=20.0,
        host_fp32_tflops=0.2,
        host_bf16_tflops=0.4,
        speed_factors={"cpu": factors},
    )
    path = save_snapshot(box, tmp_path / "box.json")
    overrides = [
        f"hardware.path={path}",
        "policy.dtype=float32",
        "policy.context_tokens=1",
        "policy.min_context_tokens=1",
    ]
    plan = make_plan("gpt2", "snapshot", [*overrides, "policy.performance.prompt_tokens=1"])
    read = plan.model.weight_bytes - 1024 * 768 * 4 + 2 * plan.limits.kv_bytes_per_token  # wpe is a lookup
    step = read / (20e9 * 0.5) + 12 * 100e-6 + 1e-3
    assert plan.performance["decode_tokens_per_s"] == pytest.approx(1 / step, rel=1e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("policy.performance.cpu.bandwidth_efficiency=1.5", "policy.performance.cpu.bandwidth_efficiency=1.5 must be"),
        ("policy.performance.link_efficiency=0", "policy.performance.link_efficiency=0.0 must be a fraction"),
        ("policy.performance.cpu.layer_overhead_us=-1", "policy.performance.cpu.layer_overhead_us=-1.0 must be a cost"),
        ("policy.performance.prompt_tokens=0", "policy.performance.prompt_tokens=0 must be >= 1"),
    ],
)
def test_bad_speed_factors_are_one_line_errors(override, message):
    from planner.config.compose import make_plan
    from planner.errors import ShardwiseError

    with pytest.raises(ShardwiseError) as caught:
        make_plan("gpt2", "cpu_only", [override])
    assert str(caught.value).startswith(message)
