"""`shardwise launch` as a real CLI: one-line refusals with exit 2, dry runs, and a submitit_local job."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from cli_runner import shardwise as run_cli
from tiny_models import cpu_plan, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.slow


def shardwise(*args: str, cwd: Path, timeout: int = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_cli("launch", *args, cwd=cwd, timeout=timeout, offline=False, input=stdin)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": tiny_llama(root), "gpt2": tiny_gpt2(root)}


def write(plan, path: Path) -> str:
    plan.save(path)
    return str(path)


def refusals(models, tmp_path):
    llama_tp = replace(cpu_plan(models["llama"]), strategy="tensor_parallel", tp_size=2, device_map={})
    return {
        "gpt2 has no tp plan": (
            replace(cpu_plan(models["gpt2"]), strategy="tensor_parallel", tp_size=2, device_map={}),
            ["launch.dry_run=true"],
            "model_type 'gpt2' (tiny-gpt2) has no tensor parallel plan in transformers",
        ),
        "kv heads do not divide": (
            replace(llama_tp, tp_size=4),
            ["launch.dry_run=true"],
            "tiny-llama has 2 key/value heads, not divisible by tensor parallel size 4",
        ),
        "attention heads do not divide": (
            replace(llama_tp, tp_size=3),
            ["launch.dry_run=true"],
            "tiny-llama has 4 attention heads, not divisible by tensor parallel size 3",
        ),
        "tp with a device_map": (
            replace(llama_tp, device_map={"": "cpu"}),
            ["launch.dry_run=true"],
            "combines tensor_parallel (tp 2, 1 node(s)) with a device_map of 1 entries",
        ),
        "other hardware": (
            cpu_plan(models["llama"], fingerprint="hw-0000000000000000"),
            [],
            "plan was made for hardware hw-0000000000000000",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "gpt2 has no tp plan",
        "kv heads do not divide",
        "attention heads do not divide",
        "tp with a device_map",
        "other hardware",
    ],
)
def test_refusal_is_one_line_with_exit_2(case, models, tmp_path):
    plan, args, expected = refusals(models, tmp_path)[case]
    result = shardwise(
        f"plan_file={write(plan, tmp_path / 'plan.json')}", *args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("shardwise launch: error: ") and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_prints_torchrun_for_a_cpu_tensor_parallel_rehearsal(models, tmp_path):
    plan_file = write(cpu_plan(models["llama"]), tmp_path / "plan.json")
    result = shardwise(
        f"plan_file={plan_file}",
        "launch.cpu_tp_size=2",
        "launch.dry_run=true",
        "generation.seed=5",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    written = tmp_path / "run" / "plan.json"
    assert (
        f"torchrun --nproc-per-node=2 --standalone -m runner.launch.worker --plan={written} --max-tokens=256 "
        "--temperature=0.7 --top-p=1.0 --seed=5" in result.stdout
    )
    assert '"tp_size": 2' in written.read_text() and '"strategy": "tensor_parallel"' in written.read_text()


def test_dry_run_of_a_fresh_plan_writes_plan_json_and_the_single_process_command(tmp_path):
    result = shardwise(
        "model=gpt2", "hardware=h100_80gb", "launch.dry_run=true", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"shardwise chat plan_file={tmp_path}/run/plan.json" in result.stdout
    assert (
        "hydra/launcher=submitit_slurm hydra.launcher.nodes=1 hydra.launcher.tasks_per_node=1 "
        "hydra.launcher.gpus_per_node=1" in result.stdout
    )


def test_vllm_without_vllm_installed_prints_the_command_and_exits_2_having_started_nothing(tmp_path):
    """Issue 18 item 17: a launch that started nothing is not a success; the command is still shown."""
    result = shardwise(
        "model=gpt-oss-120b", "hardware=h100_80gb", "launch.engine=vllm", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert "vllm serve openai/gpt-oss-120b --served-model-name=gpt-oss-120b --tensor-parallel-size=1" in result.stdout
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("shardwise launch: error: launch.engine=vllm needs vllm") and "nothing was started" in line


def test_submitit_local_launcher_runs_a_dry_run_launch_job(tmp_path):
    result = shardwise(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=2",
        "model=gpt2",
        "hardware=cpu",
        "launch.dry_run=true",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    job_dir = tmp_path / "sweep" / "0_hardware=cpu,launch.dry_run=True,model=gpt2"
    assert (job_dir / "plan.json").is_file()
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    # the job directory's name holds `=` and `,`: the command quotes it for Hydra and the shell (issue 18 item 10)
    from planner.config.quoting import shell_override

    command = f"shardwise chat {shell_override('plan_file', f'{job_dir}/plan.json')}"
    assert command in logs
    assert "Job completed successfully" in logs
    # the job's own output (the dry run's command) is shown on this terminal too (issue 18 item 17)
    assert command in result.stdout


def test_slurm_preset_composes_into_hydra_launcher_config(tmp_path):
    result = shardwise("hydra/launcher=slurm_2nodes_8gpu", "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in (
        "nodes: 2",
        "gpus_per_node: 8",
        "tasks_per_node: 1",
        "cpus_per_task: 64",
        "mem_gb: 512",
        "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    ):
        assert line in result.stdout.splitlines()
