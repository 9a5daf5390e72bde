"""`shardwise launch launch.target=kubernetes` as a real CLI: YAML alone on stdout, one-line refusals, kubectl apply.

kubectl itself is a stand-in script on PATH here: these tests check what launch asks of it, not a cluster.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_runner import shardwise as run_cli
from test_kubernetes import PLANS, RUNNER_2X8, assert_numbers_are_the_plans, h100_plan

pytestmark = pytest.mark.slow


def launch(*args: str, cwd: Path, path_dirs: list[Path] | None = None) -> subprocess.CompletedProcess:
    env = {}
    if path_dirs is not None:  # only these directories on PATH (the interpreter runs by its full path)
        env["PATH"] = os.pathsep.join(str(p) for p in path_dirs)
    return run_cli("launch", *args, cwd=cwd, timeout=120, env_extra=env)


def plan_file(tmp_path: Path, case: str = "llama70b_2x8", plan=None) -> Path:
    path = tmp_path / "plan.json"
    (plan or PLANS[case]()).save(path)
    return path


def fake_kubectl(bin_dir: Path, context_ok: bool = True, apply_rc: int = 0) -> Path:
    """A kubectl stand-in that logs its arguments; `config current-context` and `apply` answer as told."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "kubectl.log"
    script = bin_dir / "kubectl"
    context = 'echo "kind-test"' if context_ok else 'echo "error: current-context is not set" >&2; exit 1'
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{log}"\n'
        'if [ "$1" = config ]; then ' + context + "; fi\n"
        f'if [ "$1" = apply ]; then exit {apply_rc}; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return log


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_dry_run_is_the_default_and_stdout_is_only_the_yaml_also_written_beside_the_plan(tmp_path):
    path = plan_file(tmp_path)
    result = launch(f"plan_file={path}", "launch.target=kubernetes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in docs] == ["LeaderWorkerSet", "Service"]
    assert (tmp_path / "plan.k8s.yaml").read_text() == result.stdout
    assert "plan.k8s.yaml" in result.stderr and "note:" in result.stderr


def test_fresh_plan_for_one_gpu_renders_a_deployment_sized_by_vllm(tmp_path):
    """No launch.engine given: the target plans with vLLM's rules and sessions=auto, as launch.engine=vllm does."""
    from planner.planfile.plan import Plan

    result = launch("model=llama-3.1-8b", "hardware=h100_80gb", "launch.target=kubernetes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    written = list(tmp_path.glob("outputs/launch/*/plan.k8s.yaml"))
    assert len(written) == 1 and written[0].read_text() == result.stdout
    plan = Plan.load(written[0].with_name("plan.json"))
    assert plan.engine["name"] == "vllm"
    assert any(d.what == "sessions" and "policy.sessions=auto" in d.reason for d in plan.decisions)
    assert_numbers_are_the_plans(plan, objects)
    assert "not vLLM" not in result.stderr


def test_a_plan_file_sized_for_the_runner_renders_with_a_note(tmp_path):
    from dataclasses import replace

    plan = RUNNER_2X8()
    plan = replace(plan, launch=replace(plan.launch, env={"LD_PRELOAD": "/tmp/x.so"}))
    result = launch(f"plan_file={plan_file(tmp_path, plan=plan)}", "launch.target=kubernetes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "note: the plan was sized for shardwise's runner, not vLLM" in result.stderr
    assert "note: the plan's launch.env sets LD_PRELOAD: not passed on" in result.stderr
    assert "LD_PRELOAD" not in result.stdout
    assert [d["kind"] for d in yaml.safe_load_all(result.stdout)] == ["LeaderWorkerSet", "Service"]


def test_a_vllm_plan_file_missing_engine_keys_is_one_line_with_exit_2(tmp_path):
    import json

    path = plan_file(tmp_path)
    data = json.loads(path.read_text())
    del data["engine"]["kv_cache_tokens"]
    path.write_text(json.dumps(data))
    result = launch(f"plan_file={path}", "launch.target=kubernetes", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "the plan's vLLM engine block lacks kv_cache_tokens" in one_line(result)


def test_mixed_request_the_plan_refuses_is_one_line_with_exit_2(tmp_path):
    """gpt2 tensor parallel over 2 nodes of 8: vLLM's planner refuses it (12 heads / 8), fresh; a plan file
    sized for the runner is refused by the runner's rule (gpt2 has no tensor-parallel plan in transformers)."""
    fresh = launch(
        "model=gpt2",
        "hardware=h100_80gb",
        "hardware.count=8",
        "hardware.nodes=2",
        "policy.strategy=tensor_parallel",
        "launch.target=kubernetes",
        cwd=tmp_path,
    )
    assert fresh.returncode == 2 and fresh.stdout == ""
    assert "vLLM needs the 12 attention heads to divide by the tensor-parallel size 8" in one_line(fresh)
    mixed = h100_plan(
        "gpt2", "openai-community/gpt2", "gpt2", strategy="tensor_parallel", nodes=2, gpus=8, tp=8, pp=2, context=1024
    )
    from_file = launch(f"plan_file={plan_file(tmp_path, plan=mixed)}", "launch.target=kubernetes", cwd=tmp_path)
    assert from_file.returncode == 2 and from_file.stdout == ""
    assert "has no tensor-parallel plan in transformers" in one_line(from_file)
    assert not (tmp_path / "plan.k8s.yaml").exists()


def test_an_engine_other_than_vllm_is_refused(tmp_path):
    result = launch(
        f"plan_file={plan_file(tmp_path)}", "launch.target=kubernetes", "launch.engine=torchrun", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "launch.target=kubernetes renders vLLM" in one_line(result)


def test_apply_without_kubectl_says_so_and_exits_2(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    path = plan_file(tmp_path)
    result = launch(
        f"plan_file={path}", "launch.target=kubernetes", "launch.dry_run=false", cwd=tmp_path, path_dirs=[empty]
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "kubectl is not on PATH" in result.stderr.splitlines()[-1]


def test_apply_without_a_kubectl_context_says_so_and_exits_2(tmp_path):
    log = fake_kubectl(tmp_path / "bin", context_ok=False)
    path = plan_file(tmp_path)
    result = launch(
        f"plan_file={path}",
        "launch.target=kubernetes",
        "launch.dry_run=false",
        cwd=tmp_path,
        path_dirs=[tmp_path / "bin"],
    )
    assert result.returncode == 2
    assert "kubectl has no current context (error: current-context is not set)" in result.stderr.splitlines()[-1]
    assert "apply" not in log.read_text()


@pytest.mark.parametrize("apply_rc", [0, 1])
def test_apply_runs_kubectl_apply_on_the_written_file_and_passes_its_exit_status_on(tmp_path, apply_rc):
    log = fake_kubectl(tmp_path / "bin", apply_rc=apply_rc)
    path = plan_file(tmp_path)
    result = launch(
        f"plan_file={path}",
        "launch.target=kubernetes",
        "launch.dry_run=false",
        cwd=tmp_path,
        path_dirs=[tmp_path / "bin"],
    )
    assert result.returncode == apply_rc, result.stderr
    assert log.read_text().splitlines() == ["config current-context", f"apply -f {tmp_path / 'plan.k8s.yaml'}"]
    assert yaml.safe_load_all((tmp_path / "plan.k8s.yaml").read_text())
