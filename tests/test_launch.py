"""Golden command lines for `shardwise launch`: torchrun, SLURM (submitit) and `vllm serve` from plans.

The hand-built plans carry the numbers the planner gives for the same scenarios (checked in
`test_planner_agrees_*`), so each golden follows from plan fields, not from a special case.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from planner.errors import ShardwiseError
from planner.planfile.plan import DeviceBudget, Limits, ModelInfo, Plan, Quantization
from runner.launch import render as L

H100 = "NVIDIA H100 80GB HBM3"
H100_TOTAL_BYTES = 85_520_809_984  # 81559 MiB as nvidia-smi prints it
H100_USABLE_BYTES = 83_810_393_785  # what the planner leaves usable on an idle H100 tier GPU
ENV = "CUDA_DEVICE_ORDER=PCI_BUS_ID PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
LLAMA_70B = {"num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80}


def h100_plan(
    name,
    source,
    model_type,
    *,
    strategy,
    nodes=1,
    gpus=1,
    tp=1,
    pp=1,
    context,
    sessions=1,
    quantization=None,
    device_map=None,
) -> Plan:
    devices = [
        {
            "id": i,
            "uuid": "",
            "name": H100,
            "total_bytes": H100_TOTAL_BYTES,
            "free_bytes": H100_TOTAL_BYTES,
            "compute_capability": "9.0",
            "node": n,
        }
        for n in range(nodes)
        for i in range(gpus)
    ]
    budget = tuple(
        DeviceBudget(
            device=str(i),
            weights=0,
            kv_cache=0,
            activations=0,
            overhead=0,
            planned=0,
            usable=H100_USABLE_BYTES,
            free_after=0,
            node=n,
        )
        for n in range(nodes)
        for i in range(gpus)
    )
    return Plan(
        model=ModelInfo(
            name=name,
            source=source,
            model_type=model_type,
            params_total=0,
            weight_bytes=0,
            checkpoint_bytes=None,
            dtype="bfloat16",
            quantization=quantization or Quantization(method=None, kept=False, reason="shipped unquantized"),
        ),
        hardware={
            "source": "h100_80gb",
            "fingerprint": "hw-h100",
            "devices": devices,
            "nodes": nodes,
            "cpu_count": 32,
            "host_ram_bytes": 256 << 30,
        },
        strategy=strategy,
        nodes=nodes,
        tp_size=tp,
        pp_size=pp,
        device_map=device_map if device_map is not None else {},
        max_memory={},
        budget=budget,
        limits=Limits(context_tokens=context, sessions=sessions, max_new_tokens=256, kv_bytes_per_token=0),
        fits=True,
        kv_cache_dtype="bfloat16",
    )


@pytest.fixture
def gpt_oss_120b_1x() -> Plan:
    mxfp4 = Quantization(method="mxfp4", kept=True, reason="kept")
    return h100_plan(
        "gpt-oss-120b",
        "openai/gpt-oss-120b",
        "gpt_oss",
        strategy="single_gpu",
        context=131072,
        quantization=mxfp4,
        device_map={"": 0},
    )


@pytest.fixture
def llama70b_2x() -> Plan:
    return h100_plan(
        "llama-3.1-70b",
        "meta-llama/Llama-3.1-70B-Instruct",
        "llama",
        strategy="tensor_parallel",
        gpus=2,
        tp=2,
        context=46159,
    )


@pytest.fixture
def llama70b_2x8() -> Plan:
    return h100_plan(
        "llama-3.1-70b",
        "meta-llama/Llama-3.1-70B-Instruct",
        "llama",
        strategy="tensor_parallel",
        nodes=2,
        gpus=8,
        tp=8,
        pp=2,
        context=131072,
        sessions=16,
    )


def lines(commands) -> list[str]:
    return [c.line() for c in commands]


# --- torchrun ---------------------------------------------------------------------------------


def test_single_gpu_plan_runs_one_chat_process(gpt_oss_120b_1x):
    command = L.single_process_command(gpt_oss_120b_1x, "plan.json", L.LaunchSettings())
    assert command.line() == "CUDA_DEVICE_ORDER=PCI_BUS_ID shardwise chat plan_file=plan.json"
    assert not L.needs_torchrun(gpt_oss_120b_1x)


def test_torchrun_golden_for_llama70b_on_two_h100(llama70b_2x):
    plan = replace(
        llama70b_2x, launch=replace(llama70b_2x.launch, env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
    )
    assert L.check_distributed(plan, LLAMA_70B) == []
    assert lines(L.torchrun_commands(plan, "plan.json", L.LaunchSettings())) == [
        f"{ENV} torchrun --nproc-per-node=2 --standalone -m runner.launch.worker --plan=plan.json"
    ]


def test_torchrun_golden_for_llama70b_on_two_nodes_of_eight_h100_static_master(llama70b_2x8):
    settings = L.LaunchSettings(master_addr="10.0.0.1", master_port=29501)
    generation = {"max_tokens": 128, "temperature": 0.0, "top_p": 1.0, "seed": 7, "system_prompt": None}
    got = lines(L.torchrun_commands(llama70b_2x8, "plan.json", settings, generation))
    worker = "-m runner.launch.worker --plan=plan.json --max-tokens=128 --temperature=0.0 --top-p=1.0 --seed=7"
    assert got == [
        f"CUDA_DEVICE_ORDER=PCI_BUS_ID torchrun --nproc-per-node=8 --nnodes=2 --node-rank={r} "
        f"--master-addr=10.0.0.1 --master-port=29501 {worker}"
        for r in (0, 1)
    ]
    only_node_1 = L.torchrun_commands(llama70b_2x8, "plan.json", settings, generation, node_rank=1)
    assert [c.where for c in only_node_1] == ["node 1"]


def test_torchrun_golden_with_c10d_rendezvous_is_one_line_for_every_node(llama70b_2x8):
    settings = L.LaunchSettings(rdzv_endpoint="head:29400", prompt=["hi there"])
    assert lines(L.torchrun_commands(llama70b_2x8, "plan.json", settings)) == [
        "CUDA_DEVICE_ORDER=PCI_BUS_ID torchrun --nproc-per-node=8 --nnodes=2 --rdzv-backend=c10d "
        "--rdzv-endpoint=head:29400 --rdzv-id=shardwise -m runner.launch.worker --plan=plan.json '--prompt=hi there'"
    ]


def test_process_shape_puts_tensor_parallel_inside_a_node_and_pipeline_across(llama70b_2x8):
    shape = L.process_shape(llama70b_2x8)
    assert (shape.nodes, shape.procs_per_node, shape.world_size) == (2, 8, 16)
    with pytest.raises(ShardwiseError, match="tensor parallel must stay inside a node"):
        L.process_shape(replace(llama70b_2x8, tp_size=16, pp_size=1))
    with pytest.raises(ShardwiseError, match="does not divide evenly"):
        L.process_shape(replace(llama70b_2x8, nodes=3))


# --- vLLM -------------------------------------------------------------------------------------


def test_vllm_golden_for_gpt_oss_120b_on_one_h100(gpt_oss_120b_1x):
    commands, notes = L.vllm_commands(gpt_oss_120b_1x, L.LaunchSettings())
    assert lines(commands) == [
        "CUDA_DEVICE_ORDER=PCI_BUS_ID vllm serve openai/gpt-oss-120b --served-model-name=gpt-oss-120b "
        "--tensor-parallel-size=1 --pipeline-parallel-size=1 --max-model-len=131072 --max-num-seqs=1 "
        "--gpu-memory-utilization=0.98 --dtype=bfloat16 --kv-cache-dtype=auto --host=127.0.0.1 --port=8000"
    ]
    assert notes == []


def test_vllm_golden_for_llama70b_on_two_h100(llama70b_2x):
    commands, _ = L.vllm_commands(llama70b_2x, L.LaunchSettings(port=8001, vllm_args=["--enable-prefix-caching"]))
    assert lines(commands) == [
        "CUDA_DEVICE_ORDER=PCI_BUS_ID vllm serve meta-llama/Llama-3.1-70B-Instruct --served-model-name=llama-3.1-70b "
        "--tensor-parallel-size=2 --pipeline-parallel-size=1 --max-model-len=46159 --max-num-seqs=1 "
        "--gpu-memory-utilization=0.98 --dtype=bfloat16 --kv-cache-dtype=auto --host=127.0.0.1 --port=8001 "
        "--enable-prefix-caching"
    ]


def test_vllm_golden_for_llama70b_on_two_nodes_starts_a_ray_cluster(llama70b_2x8):
    commands, _ = L.vllm_commands(llama70b_2x8, L.LaunchSettings(master_addr="10.0.0.1"))
    assert [(c.where, c.line()) for c in commands] == [
        ("node 0", "CUDA_DEVICE_ORDER=PCI_BUS_ID ray start --head --port=6379"),
        ("every node but node 0", "CUDA_DEVICE_ORDER=PCI_BUS_ID ray start --address=10.0.0.1:6379"),
        (
            "node 0",
            "CUDA_DEVICE_ORDER=PCI_BUS_ID vllm serve meta-llama/Llama-3.1-70B-Instruct "
            "--served-model-name=llama-3.1-70b "
            "--tensor-parallel-size=8 --pipeline-parallel-size=2 --max-model-len=131072 --max-num-seqs=16 "
            "--gpu-memory-utilization=0.98 --dtype=bfloat16 --kv-cache-dtype=auto --distributed-executor-backend=ray "
            "--host=127.0.0.1 --port=8000",
        ),
    ]


def test_vllm_memory_share_is_the_tightest_gpus_usable_over_total(llama70b_2x):
    budget = (llama70b_2x.budget[0], replace(llama70b_2x.budget[1], usable=H100_TOTAL_BYTES // 2))
    value, reason = L.gpu_memory_utilization(replace(llama70b_2x, budget=budget))
    assert value == 0.5
    assert "GPU 1" in reason


def test_vllm_notes_a_dequantized_plan_and_a_kv_dtype_it_cannot_follow(gpt_oss_120b_1x):
    plan = replace(
        gpt_oss_120b_1x,
        kv_cache_dtype="float16",
        model=replace(gpt_oss_120b_1x.model, quantization=Quantization("mxfp4", False, "no triton")),
    )
    commands, notes = L.vllm_commands(plan, L.LaunchSettings())
    assert "--kv-cache-dtype=auto" in commands[-1].argv
    assert len(notes) == 2 and "dequantizes mxfp4" in notes[1] and "float16" in notes[0]


# --- SLURM ------------------------------------------------------------------------------------


def test_slurm_launcher_golden_for_two_nodes_of_eight_h100(llama70b_2x8):
    config, reasons = L.slurm_launcher(llama70b_2x8, L.SlurmSettings(partition="gpu", timeout_min=60))
    assert config == {
        "nodes": 2,
        "tasks_per_node": 1,
        "gpus_per_node": 8,
        "cpus_per_task": 32,
        "mem_gb": 256,
        "timeout_min": 60,
        "partition": "gpu",
        "account": None,
        "name": "shardwise",
    }
    assert any("capped at the node's 32 cores (asked 64)" in r for r in reasons)
    assert L.slurm_overrides(config) == [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.nodes=2",
        "hydra.launcher.tasks_per_node=1",
        "hydra.launcher.gpus_per_node=8",
        "hydra.launcher.cpus_per_task=32",
        "hydra.launcher.mem_gb=256",
        "hydra.launcher.timeout_min=60",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.name=shardwise",
    ]


def test_slurm_launcher_for_one_h100_and_two_h100(gpt_oss_120b_1x, llama70b_2x):
    one, _ = L.slurm_launcher(gpt_oss_120b_1x, L.SlurmSettings())
    two, _ = L.slurm_launcher(llama70b_2x, L.SlurmSettings())
    assert (one["nodes"], one["gpus_per_node"], one["cpus_per_task"], one["mem_gb"]) == (1, 1, 8, 64)
    assert (two["nodes"], two["gpus_per_node"], two["cpus_per_task"], two["mem_gb"]) == (1, 2, 16, 128)


def test_shipped_slurm_presets_are_what_the_renderer_writes():
    launcher_dir = Path(__file__).resolve().parents[1] / "conf" / "hydra" / "launcher"
    for name in L.SLURM_PRESETS:
        assert (launcher_dir / f"{name}.yaml").read_text() == L.preset_text(name), (
            f"regenerate with python -m runner.launch.render ({name})"
        )


# --- refusals (in process; the CLI versions are in test_launch_cli.py) --------------------------


def test_refuses_tensor_parallel_for_gpt2_which_has_no_tp_plan(llama70b_2x):
    gpt2 = replace(llama70b_2x, model=replace(llama70b_2x.model, name="gpt2", model_type="gpt2"))
    with pytest.raises(ShardwiseError, match="'gpt2' .* has no tensor parallel plan"):
        L.check_distributed(gpt2, {"n_head": 12})


def test_refuses_head_counts_not_divisible_by_tp(llama70b_2x8):
    with pytest.raises(ShardwiseError, match="has 6 key/value heads, not divisible by tensor parallel size 8"):
        L.check_distributed(llama70b_2x8, {"num_attention_heads": 48, "num_key_value_heads": 6})
    with pytest.raises(ShardwiseError, match="has 12 attention heads, not divisible by tensor parallel size 8"):
        L.check_distributed(llama70b_2x8, {"num_attention_heads": 12, "num_key_value_heads": 4})


def test_refuses_tensor_parallel_with_a_device_map(llama70b_2x):
    with pytest.raises(ShardwiseError, match="with a device_map of 1 entries"):
        L.check_distributed(replace(llama70b_2x, device_map={"": 0}), LLAMA_70B)


def test_hardware_mismatch_compares_fingerprints_on_one_node_and_gpu_kinds_across_nodes(llama70b_2x, llama70b_2x8):
    assert L.hardware_mismatch(llama70b_2x, {"fingerprint": "hw-h100", "devices": []}) is None
    why = L.hardware_mismatch(llama70b_2x, {"fingerprint": "hw-laptop", "devices": []})
    assert "hw-h100 (2x NVIDIA H100 80GB HBM3" in why and "hw-laptop (no GPU)" in why
    node1 = [d for d in llama70b_2x8.hardware["devices"] if d["node"] == 1]
    assert L.hardware_mismatch(llama70b_2x8, {"fingerprint": "other", "devices": node1}, node_rank=1) is None
    assert "this machine has 4x" in L.hardware_mismatch(llama70b_2x8, {"devices": node1[:4]}, node_rank=1)


def test_engine_choice_is_refused_where_it_cannot_run_the_plan(gpt_oss_120b_1x, llama70b_2x):
    with pytest.raises(ShardwiseError, match="launch.engine=accelerate runs one process"):
        L.check_engine(llama70b_2x, L.Engine.accelerate, L.LaunchTask.chat)
    with pytest.raises(ShardwiseError, match="launch.engine=torchrun needs a tensor_parallel or multi-node plan"):
        L.check_engine(gpt_oss_120b_1x, L.Engine.torchrun, L.LaunchTask.chat)
    L.check_engine(gpt_oss_120b_1x, L.Engine.vllm, L.LaunchTask.serve)


# --- the planner gives these plans ------------------------------------------------------------


SCENARIOS = {
    "gpt_oss_120b_1x": ("gpt-oss-120b", []),
    "llama70b_2x": ("llama-3.1-70b", ["hardware.count=2", "policy.strategy=tensor_parallel"]),
    "llama70b_2x8": (
        "llama-3.1-70b",
        ["hardware.count=8", "hardware.nodes=2", "policy.context_tokens=131072", "policy.sessions=16"],
    ),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_planner_agrees_with_the_hand_built_plan_shape(scenario, request):
    from planner.config.compose import make_plan

    model, overrides = SCENARIOS[scenario]
    real = make_plan(model, "h100_80gb", overrides)
    hand = request.getfixturevalue(scenario)
    assert (real.strategy, real.nodes, real.tp_size, real.pp_size) == (
        hand.strategy,
        hand.nodes,
        hand.tp_size,
        hand.pp_size,
    )
    assert (real.model.source, real.model.model_type, real.model.dtype) == (
        hand.model.source,
        hand.model.model_type,
        hand.model.dtype,
    )
    vllm = L.vllm_commands(real, L.LaunchSettings())[0][-1].argv
    share, _ = L.gpu_memory_utilization(real)
    for flag in (
        f"--tensor-parallel-size={real.tp_size}",
        f"--pipeline-parallel-size={real.pp_size}",
        f"--max-model-len={real.limits.context_tokens}",
        f"--max-num-seqs={real.limits.sessions}",
        f"--gpu-memory-utilization={share:.2f}",
        f"--dtype={real.model.dtype}",
    ):
        assert flag in vllm
    if L.needs_torchrun(real):
        L.check_distributed(real, L.plan_architecture(real))
        argv = L.torchrun_commands(real, "plan.json", L.LaunchSettings(master_addr="h"))[0].argv
        assert f"--nproc-per-node={real.tp_size * real.pp_size // real.nodes}" in argv


def test_torchrun_ranks_get_remote_code_consent_only_from_the_launch_and_refuse_without_it(llama70b_2x, tmp_path):
    """Issue 10 item 5: printed or run, a torchrun command never loads a remote-code plan without the consent
    typed on launch's command line; the rank worker refuses such a plan on its own in one line, exit 2."""
    from runner.launch import worker

    asking = replace(llama70b_2x, model=replace(llama70b_2x.model, trust_remote_code=True))

    def worker_argv(plan, consent):
        return L.torchrun_commands(plan, "plan.json", L.LaunchSettings(), trust_remote_code=consent)[0].argv

    assert "--trust-remote-code" in worker_argv(asking, True)
    assert "--trust-remote-code" not in worker_argv(asking, False)
    assert "--trust-remote-code" not in worker_argv(llama70b_2x, True)  # a plan that does not ask gets nothing
    path = asking.save(tmp_path / "plan.json")
    with pytest.raises(SystemExit) as refused:
        worker.main(["--plan", str(path)])
    assert refused.value.code == 2
    assert worker.parse_args(["--plan", str(path), "--trust-remote-code"]).trust_remote_code is True
