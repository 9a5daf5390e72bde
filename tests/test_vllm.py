"""vLLM as the plan's engine (planner/vllm): vLLM's memory accounting, verdict, flags and speed.

Hand-computed numbers follow vLLM's startup arithmetic (planner/vllm/memory.py docstring); the
constants come from planner/vllm/rules.py so a retuned constant moves the expectation with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from planner.config.compose import make_plan
from planner.errors import ShardwiseError
from planner.units import GIB, MIB
from planner.vllm import memory as vm
from planner.vllm.rules import CUDA_RESERVED_BYTES, V0_19
from runner.launch import render as L

VLLM = ["launch.engine=vllm"]
H100_NVML_BYTES = 81559 * MIB


def vllm_plan(model: str, *overrides: str, hardware: str = "h100_80gb"):
    return make_plan(model, hardware, [*VLLM, *overrides])


def test_engine_contract_keys_are_present_and_typed():
    plan = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192")
    engine = plan.to_dict()["engine"]
    assert engine["name"] == "vllm" and isinstance(engine["version"], str)
    assert isinstance(engine["gpu_memory_utilization"], float)
    assert isinstance(engine["max_num_batched_tokens"], int)
    for key in ("weights_bytes", "non_torch_bytes", "activation_peak_bytes", "cudagraph_bytes", "kv_cache_bytes"):
        assert isinstance(engine["per_gpu"][key], int) and engine["per_gpu"][key] > 0, key
    assert isinstance(engine["kv_cache_tokens"], int) and engine["kv_cache_tokens"] > 0
    assert isinstance(engine["max_concurrency"], float) and isinstance(engine["fits"], bool)
    assert all(isinstance(flag, str) for flag in engine["flags"])
    assert isinstance(plan.performance["tpot_ms"], float) and isinstance(plan.performance["ttft_ms"], float)
    assert json.loads(plan.to_json())["engine"] == engine


def test_kv_cache_of_llama_8b_on_one_h100_is_vllms_arithmetic_by_hand():
    plan = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192", "launch.gpu_memory_utilization=0.95")
    per_gpu = plan.engine["per_gpu"]
    total = H100_NVML_BYTES - CUDA_RESERVED_BYTES
    budget = int(0.95 * total)
    activation = 2 * 8192 * 4096 * 2 + int(14.4 * 1024 * 128256)  # hidden states + sampler over 1024 seqs
    kv = budget - 16_060_523_008 - V0_19.non_torch_single_bytes - activation
    assert per_gpu["activation_peak_bytes"] == activation
    assert per_gpu["kv_cache_bytes"] == kv
    blocks = kv // (16 * 2 * 8 * 128 * 2 * 32)  # 16 tokens x K,V x 8 heads x 128 x bf16, 32 layers
    assert plan.engine["kv_cache_tokens"] == blocks * 16
    assert plan.engine["max_concurrency"] == round(blocks / (8192 // 16), 2)
    # and vLLM 0.19's own log for this launch: 58.11 GiB, 476,016 tokens, 58.11x
    assert abs(kv / GIB - 58.11) < 0.1 and abs(plan.engine["kv_cache_tokens"] - 476_016) < 1000


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    plan = vllm_plan("llama-3.1-70b", "hardware.count=8", "policy.strategy=tensor_parallel", "policy.context_tokens=8k")
    assert plan.tp_size == 8
    per_token_per_gpu = 80 * 2 * 1 * 128 * 2  # 8 KV heads over 8 ranks: one each
    kv = plan.engine["per_gpu"]["kv_cache_bytes"]
    assert plan.engine["kv_cache_tokens"] == kv // (per_token_per_gpu * 16) * 16
    with_16 = vllm_plan("qwen3-8b", "hardware.count=8", "policy.strategy=tensor_parallel", "policy.context_tokens=8k")
    assert with_16.tp_size == 8  # 8 KV heads: exact split, no replication needed


def test_sliding_layers_count_window_plus_one_batch_in_the_concurrency():
    groups = vm.KvGroups(
        block_size=16, page_bytes=1, group_size=23, num_groups=2, specs=(("full", None, 23), ("sliding", 4096, 23))
    )
    # gemma-2-27b at 8192: full 512 blocks + sliding cdiv(min(4095 + 8192, 8192), 16) + 1 = 513
    assert groups.blocks_per_request(8192, 8192) == 512 + 513
    # a long context with a small batch: the sliding group keeps window - 1 + 2048 tokens
    assert groups.blocks_per_request(32768, 2048) == 2048 + math.ceil((4095 + 2048) / 16) + 1


def test_fp8_kv_cache_doubles_the_tokens():
    base = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192")
    fp8 = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192", "policy.kv_cache_dtype=fp8")
    assert fp8.engine["per_gpu"]["kv_cache_bytes"] == base.engine["per_gpu"]["kv_cache_bytes"]
    assert abs(fp8.engine["kv_cache_tokens"] / base.engine["kv_cache_tokens"] - 2) < 0.001
    assert "--kv-cache-dtype=fp8" in fp8.engine["flags"]


def test_gpt_oss_20b_starts_at_0_90_and_fails_after_graph_capture_at_0_95():
    ok = vllm_plan("gpt-oss-20b", "launch.gpu_memory_utilization=0.90")
    bad = vllm_plan("gpt-oss-20b", "launch.gpu_memory_utilization=0.95")
    assert ok.fits and ok.engine["fits"]
    assert not bad.fits and bad.binding["term"] == "cudagraph"
    assert "graph" in bad.engine["refusal"]
    assert ok.model.quantization.kept  # MXFP4 as shipped: vLLM's kernels
    util_fix = next(f for f in bad.binding["fixes"] if "gpu_memory_utilization" in f["text"])
    value = util_fix["overrides"][0].split("=")[1]
    assert 0.90 <= float(value) < 0.95
    assert vllm_plan("gpt-oss-20b", util_fix["overrides"][0]).fits  # the fix, re-planned, starts


def test_a_context_the_kv_cache_cannot_hold_does_not_fit_with_fixes_that_do():
    plan = vllm_plan(
        "llama-3.1-70b", "hardware.count=2", "policy.strategy=tensor_parallel", "policy.context_tokens=131072"
    )
    assert not plan.fits and plan.binding["term"] == "kv_cache"
    assert "max seq len (131072)" in plan.engine["refusal"]
    texts = [f["text"] for f in plan.binding["fixes"]]
    assert any(t.startswith("policy.context_tokens=") for t in texts)
    assert any(t.startswith("hardware.count=") for t in texts)
    for fix in plan.binding["fixes"]:
        assert vllm_plan(
            "llama-3.1-70b",
            "hardware.count=2",
            "policy.strategy=tensor_parallel",
            "policy.context_tokens=131072",
            *fix["overrides"],
        ).fits, fix


def test_weights_larger_than_the_gpu_do_not_fit():
    plan = vllm_plan("llama-3.1-70b", "policy.strategy=single_gpu", "policy.context_tokens=4096")
    assert not plan.fits and plan.binding["term"] == "weights"


def test_flags_rendered_into_vllm_serve():
    plan = vllm_plan(
        "qwen3-30b-a3b",
        "hardware.count=2",
        "policy.strategy=tensor_parallel",
        "policy.context_tokens=16384",
        "launch.gpu_memory_utilization=0.92",
        "launch.max_num_batched_tokens=4096",
        "launch.enable_expert_parallel=true",
    )
    assert plan.engine["flags"] == [
        "--tensor-parallel-size=2",
        "--pipeline-parallel-size=1",
        "--max-model-len=16384",
        "--max-num-seqs=1024",
        "--max-num-batched-tokens=4096",
        "--gpu-memory-utilization=0.92",
        "--dtype=bfloat16",
        "--kv-cache-dtype=auto",
        "--enable-expert-parallel",
    ]
    commands, notes = L.vllm_commands(plan, L.LaunchSettings())
    assert commands[-1].argv[:4] == ("vllm", "serve", "Qwen/Qwen3-30B-A3B", "--served-model-name=qwen3-30b-a3b")
    assert list(commands[-1].argv[4 : 4 + len(plan.engine["flags"])]) == plan.engine["flags"]
    assert notes == []


def test_smaller_batch_means_a_smaller_profile_peak_and_more_kv():
    big = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192")
    small = vllm_plan(
        "llama-3.1-8b", "policy.context_tokens=8192", "launch.max_num_batched_tokens=2048", "launch.max_num_seqs=256"
    )
    assert small.engine["per_gpu"]["activation_peak_bytes"] < big.engine["per_gpu"]["activation_peak_bytes"]
    assert small.engine["kv_cache_tokens"] > big.engine["kv_cache_tokens"]


def test_a_plan_without_launch_engine_vllm_is_the_runners():
    plan = make_plan("llama-3.1-8b", "h100_80gb", ["policy.context_tokens=8192"])
    assert plan.engine["name"] == "transformers"
    assert "per_gpu" not in plan.engine
    assert plan.performance["engine"] == "transformers" and plan.performance["tpot_ms"] > 0
    assert not any(d.what == "engine" for d in plan.decisions)
    with pytest.raises(ShardwiseError, match="launch.engine=vllm"):
        make_plan("llama-3.1-8b", "h100_80gb", ["policy.kv_cache_dtype=fp8"])


def test_modelopt_checkpoints_plan_under_vllm_but_not_transformers(tmp_path):
    from planner.config.reader import profile_spec

    arch = dict(profile_spec("llama-3.1-8b").architecture)
    arch["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8"}
    (tmp_path / "config.json").write_text(json.dumps(arch))
    with pytest.raises(ShardwiseError, match="ModelOpt"):
        make_plan("auto", "h100_80gb", ["policy.context_tokens=8192"], model_path=str(tmp_path))
    plan = make_plan("auto", "h100_80gb", [*VLLM, "policy.context_tokens=8192"], model_path=str(tmp_path))
    assert plan.fits and plan.model.quantization.kept
    assert plan.engine["per_gpu"]["weights_bytes"] < 10 * GIB  # FP8 weights, not bf16's 15 GiB


def test_speed_grows_with_sessions_and_falls_with_tensor_parallel():
    one = vllm_plan("llama-3.1-70b", "hardware.count=4", "policy.strategy=tensor_parallel", "policy.context_tokens=8k")
    many = vllm_plan(
        "llama-3.1-70b",
        "hardware.count=4",
        "policy.strategy=tensor_parallel",
        "policy.context_tokens=8k",
        "policy.sessions=64",
    )
    wide = vllm_plan("llama-3.1-70b", "hardware.count=8", "policy.strategy=tensor_parallel", "policy.context_tokens=8k")
    assert many.performance["tpot_ms"] > one.performance["tpot_ms"]
    assert many.performance["aggregate_tokens_per_s"] > one.performance["aggregate_tokens_per_s"]
    assert wide.performance["tpot_ms"] < one.performance["tpot_ms"]


def test_launch_with_vllm_sizes_sessions_and_max_num_seqs_like_serve(capsys, tmp_path, monkeypatch):
    from shardwise.cli import main

    monkeypatch.chdir(tmp_path)  # the launch verb writes its plan under outputs/
    try:
        main(
            [
                "launch",
                "model=llama-3.1-8b",
                "hardware=h100_80gb",
                "launch.engine=vllm",
                "launch.dry_run=true",
                "policy.context_tokens=8192",
            ]
        )
    except SystemExit as done:
        assert done.code in (0, None)
    line = next(x for x in capsys.readouterr().out.splitlines() if "vllm serve" in x)
    seqs = int(line.split("--max-num-seqs=")[1].split()[0])
    assert 40 < seqs < 64  # the ~54 sequences of 8,192 tokens the KV cache holds at 0.9, not 1


def test_bad_engine_settings_are_one_line_errors():
    with pytest.raises(ShardwiseError, match="vllm_version"):
        vllm_plan("gpt2", "launch.vllm_version=0.9.2")
    with pytest.raises(ShardwiseError, match="max_num_batched_tokens"):
        vllm_plan("gpt2", "launch.max_num_batched_tokens=0")


def test_vllm_version_follows_its_rules():
    old = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192", "launch.vllm_version=0.10.1")
    new = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192")
    assert old.engine["rules"] == "0.10" and new.engine["rules"] == "0.19"
    assert old.engine["per_gpu"]["non_torch_bytes"] != new.engine["per_gpu"]["non_torch_bytes"]


def test_calibration_records_are_within_tolerance():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import vllm_calibration

    rows = vllm_calibration.memory_rows()
    assert rows and all(r["ok"] for r in rows)
    assert all(r["verdict"][0] == r["verdict"][1] for r in rows)


def test_unchanged_plan_dataclass_round_trips_with_engine():
    from planner.planfile.plan import Plan

    plan = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192")
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again.engine == plan.engine
    assert replace(again, engine={}).engine == {}


def test_objective_latency_takes_the_fastest_tp_and_auto_the_fewest():
    base = ["hardware.count=8", "policy.context_tokens=8192"]
    fewest = vllm_plan("llama-3.1-70b", *base)
    fastest = vllm_plan("llama-3.1-70b", *base, "policy.objective=latency")
    assert fewest.tp_size == 2  # the fewest GPUs (dividing the heads) on which vLLM starts
    assert fastest.tp_size == 8 and fastest.performance["tpot_ms"] < fewest.performance["tpot_ms"]
    assert any(d.what == "objective" and "TP 2" in d.reason for d in fastest.decisions)


def test_quantization_on_load_renders_vllms_in_flight_method():
    plan = vllm_plan("llama-3.1-8b", "policy.context_tokens=8192", "policy.quantization=fp8")
    assert "--quantization=fp8" in plan.engine["flags"]
    assert plan.engine["per_gpu"]["weights_bytes"] < 9 * GIB  # FP8 linears, bf16 embeddings and head
    with pytest.raises(ShardwiseError, match="bnb8"):
        vllm_plan("llama-3.1-8b", "policy.context_tokens=8192", "policy.quantization=bnb8")


def test_report_shows_vllms_view_and_its_refusal(capsys):
    from rich.console import Console

    from planner.explain.report import render

    console = Console(width=200, force_terminal=False)
    render(vllm_plan("gpt-oss-20b", "launch.gpu_memory_utilization=0.95"), console=console)
    out = capsys.readouterr().out
    assert "GPU KV cache size:" in out and "Maximum concurrency for 131,072 tokens per request" in out
    assert "vLLM would not start" in out and "would fit with: launch.gpu_memory_utilization=0.9" in out


@pytest.mark.parametrize(
    ("model", "overrides", "kinds"),
    [
        ("gemma-3-1b", [], {"full", "sliding"}),
        ("deepseek-v3", ["hardware.count=8", "policy.strategy=tensor_parallel"], {"full"}),
        ("qwen3-next-80b-a3b", ["hardware.count=2", "policy.strategy=tensor_parallel"], {"full", "mamba"}),
    ],
)
def test_layer_kinds_get_vllms_groups(model, overrides, kinds):
    from planner.config.reader import profile_spec
    from planner.model.inventory import build_inventory

    plan = vllm_plan(model, *overrides, "policy.context_tokens=32k", hardware="h200")
    spec = profile_spec(model)
    inv = build_inventory(spec.architecture, dtype="bfloat16", quantization=spec.quantization, keep_quantized=True)
    shape = vm.Shape(plan.tp_size, 1, 32768, 8192, plan.engine["max_num_seqs"], 0.9, 2, 2)
    groups = vm.kv_groups(inv, shape, 16)
    assert {kind for kind, _, _ in groups.specs} == kinds
    assert groups.block_size % 16 == 0 and plan.engine["block_size"] == groups.block_size
    if "mamba" in kinds:  # attention blocks grow until one page holds a sequence's Mamba state
        state = max(layer.state_bytes(2) for layer in inv.layers) // plan.tp_size
        assert groups.page_bytes >= state and groups.block_size > 16
    assert plan.engine["kv_cache_tokens"] == plan.engine["num_gpu_blocks"] // groups.num_groups * groups.block_size
