"""policy.objective: among the layouts that fit at the planned context, the one taken by predicted speed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from planner.config.compose import make_plan
from planner.decide.policy import Policy
from planner.errors import ShardwiseError
from planner.place.objective import Option, choose

# llama-3.1-70b on four NVLinked H100s at 8k tokens: pipelines over 2-4 GPUs and tensor parallel 2 and 4 all fit
FOUR_H100 = ["hardware.count=4", "policy.context_tokens=8192"]


def decision(plan, what):
    return next(d for d in plan.decisions if d.what == what)


def decode(plan) -> float:
    return plan.performance["decode_tokens_per_s"]


# ---- the choice itself, on hand-made speeds --------------------------------------------------


def test_auto_takes_the_fewest_gpus_within_ten_percent_of_the_best_and_says_so():
    options = [
        Option("pipeline over 2 GPUs", 2, 41.2, 41.2),
        Option("tensor_parallel tp=4 over 2 nodes", 4, 44.0, 44.0),
    ]
    index, reason = choose(options, "auto", sessions=1, context=8192)
    assert index == 0
    assert reason == (
        "pipeline over 2 GPUs: 41.2 tok/s, within 10% of the best (tensor_parallel tp=4 over 2 nodes: 44.0 tok/s); "
        "fewer GPUs"
    )


def test_auto_spreads_further_when_the_fewest_gpus_are_more_than_ten_percent_slower():
    options = [
        Option("pipeline over 2 GPUs", 2, 30.0, 30.0),
        Option("tensor_parallel tp=4 over 2 nodes", 4, 44.0, 44.0),
    ]
    index, reason = choose(options, "auto", sessions=1, context=8192)
    assert index == 1 and "the fastest of 2 layouts that fit at 8,192 tokens" in reason


def test_auto_never_adds_tensor_parallel_gpus_inside_a_node_but_names_them():
    options = [Option("pipeline over 2 GPUs", 2, 12.7, 12.7), Option("tensor_parallel tp=4", 4, 24.0, 24.0, False)]
    index, reason = choose(options, "auto", sessions=1, context=8192)
    assert index == 0 and "tensor_parallel tp=4 would decode 24.0 tok/s" in reason


def test_latency_ties_go_to_fewer_gpus_and_throughput_ranks_by_aggregate():
    options = [Option("a", 4, 20.0, 80.0), Option("b", 2, 20.0, 60.0), Option("c", 8, 19.0, 120.0)]
    assert choose(options, "latency", sessions=8, context=4096)[0] == 1
    index, reason = choose(options, "throughput", sessions=8, context=4096)
    assert index == 2 and reason.startswith("c: 120.0 tok/s over 8 session(s)")


def test_an_unknown_objective_is_refused():
    with pytest.raises(ShardwiseError, match="policy.objective='fast' is not one of auto, latency, throughput"):
        Policy(objective="fast")


def test_an_invalid_objective_is_one_line_and_exit_2():
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-m", "shardwise", "plan", "model=gpt2", "hardware=cpu", "policy.objective=fast"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardwise plan: error:") and "policy.objective" in lines[0]


# ---- worked case: llama-3.1-70b on four H100s -------------------------------------------------


def test_latency_takes_tensor_parallel_where_auto_keeps_the_fewest_gpus():
    auto = make_plan("llama-3.1-70b", "h100_80gb", FOUR_H100)
    latency = make_plan("llama-3.1-70b", "h100_80gb", [*FOUR_H100, "policy.objective=latency"])
    tp2 = make_plan("llama-3.1-70b", "h100_80gb", [*FOUR_H100, "hardware.count=2", "policy.strategy=tensor_parallel"])
    assert auto.fits and auto.strategy == "pipeline" and auto.pp_size == 2  # today's fewest-GPUs plan
    assert latency.fits and latency.strategy == "tensor_parallel" and latency.tp_size == 4
    assert tp2.tp_size == 2
    # each rank reads a quarter of the weights per token: tp=4 beats tp=2 beats two pipeline stages in turn
    assert decode(latency) > decode(tp2) > 1.3 * decode(auto)
    assert decision(latency, "objective").reason == (
        f"tensor_parallel tp=4: {decode(latency):.1f} tok/s per sequence, the fastest of 5 layouts that fit at "
        f"8,192 tokens (the fewest GPUs, pipeline over 2 GPUs: {decode(auto):.1f} tok/s)"
    )
    assert "policy.objective=latency" in decision(latency, "strategy").reason
    said = decision(auto, "objective").reason
    assert said.startswith(f"pipeline over 2 GPUs: {decode(auto):.1f} tok/s, the fastest of 3 layouts")
    assert f"tensor_parallel tp=4 would decode {decode(latency):.1f} tok/s" in said


def test_throughput_ranks_layouts_by_aggregate_at_the_planned_sessions():
    sessions = ["policy.sessions=8"]
    auto = make_plan("llama-3.1-70b", "h100_80gb", [*FOUR_H100, *sessions])
    best = make_plan("llama-3.1-70b", "h100_80gb", [*FOUR_H100, *sessions, "policy.objective=throughput"])
    assert best.fits and best.limits.sessions == 8
    aggregate = best.performance["aggregate_tokens_per_s"]
    assert aggregate > auto.performance["aggregate_tokens_per_s"]
    assert aggregate > decode(best)  # eight sequences share each weight read
    assert decision(best, "objective").reason.startswith(f"tensor_parallel tp={best.tp_size}: {aggregate:.1f} tok/s")
    assert "over 8 session(s)" in decision(best, "objective").reason


def test_the_speed_is_computed_once_per_layout_that_fits_not_per_context_probe(monkeypatch):
    import planner.place.sizing as planning
    import planner.speed.block as speed

    calls = []
    real_block, real_decode = planning._speed, speed.decode_speeds

    def counted_block(*args, **kwargs):  # the plan's own performance block
        calls.append(("block", args[2].strategy, args[2].gpus, args[3]))
        return real_block(*args, **kwargs)

    def counted_decode(inv, hw, slots, **kwargs):  # the objective weighing a layout (decode rates only)
        calls.append(("decode", len(slots), kwargs["tp_size"], kwargs["context_tokens"]))
        return real_decode(inv, hw, slots, **kwargs)

    monkeypatch.setattr(planning, "_speed", counted_block)
    monkeypatch.setattr(speed, "decode_speeds", counted_decode)
    plan = make_plan("llama-3.1-70b", "h100_80gb", ["hardware.count=4", "policy.objective=latency"])  # context: auto
    assert plan.limits.context_tokens == 131_072 and plan.tp_size == 4
    # three layouts fit at the context the search found (pipeline over 3 or 4 GPUs, tp=4 on one), then the plan's
    # own block; the rest are the fallback models' plans, each priced the same way
    assert calls[:4] == [
        ("decode", 3, 1, 131_072),
        ("decode", 4, 1, 131_072),
        ("decode", 1, 4, 131_072),
        ("block", "tensor_parallel", 4, 131_072),
    ]
    assert {call[-1] for call in calls} == {131_072}  # never at a context probe of the search


def test_a_model_that_fits_on_one_gpu_stays_there_unless_latency_finds_faster():
    auto = make_plan("llama-3.1-8b", "h100_80gb", ["hardware.count=4", "policy.context_tokens=8192"])
    assert auto.strategy == "single_gpu" and not any(d.what == "objective" for d in auto.decisions)
    latency = make_plan(
        "llama-3.1-8b", "h100_80gb", ["hardware.count=4", "policy.context_tokens=8192", "policy.objective=latency"]
    )
    # a quarter of the 16 GB of weights per rank outweighs the two all-reduces per layer
    assert latency.strategy == "tensor_parallel" and latency.tp_size == 4
    assert decode(latency) > 1.2 * decode(auto)
    assert decision(latency, "objective").reason.endswith(f"(the fewest GPUs, one GPU: {decode(auto):.1f} tok/s)")


def test_without_a_predicted_speed_the_fewest_gpus_are_kept_and_the_reason_stated():
    plan = make_plan(
        "gpt2-xl",
        "t4",
        [
            "hardware.name=Some Future GPU",
            "hardware.memory_bandwidth_gb_per_s=0",
            "hardware.count=3",
            "policy.strategy=pipeline",
            "policy.objective=latency",
            "policy.context_tokens=1024",
        ],
    )
    assert plan.fits and plan.pp_size == 2
    assert plan.performance["available"] is False
    assert decision(plan, "objective").reason == (
        "no predicted speed for pipeline over 2 GPUs (no published bandwidth or float16 TFLOPs for "
        "'Some Future GPU': add them to its tier in conf/hardware/): kept the fewest GPUs that fit, "
        "pipeline over 2 GPUs"
    )


# ---- speeds in fixes and model=auto -----------------------------------------------------------


def test_more_gpus_fix_states_the_re_planned_speed():
    one = make_plan("llama-3.1-70b", "a100_80gb")
    two = make_plan("llama-3.1-70b", "a100_80gb", ["hardware.count=2"])
    fix = next(f for f in one.binding["fixes"] if f["overrides"] == ["hardware.count=2"])
    assert fix["text"].endswith(f"tokens of context, ~{decode(two):.0f} tok/s") or fix["text"].endswith(
        f"tokens of context, ~{decode(two):.2g} tok/s"
    )


def test_model_auto_states_the_chosen_candidates_predicted_speed():
    plan = make_plan("auto", "a100_80gb")
    assert plan.model.name == "gpt-oss-120b"
    assert plan.decisions[0].reason.endswith(f"predicted ~{decode(plan):.0f} tok/s")
