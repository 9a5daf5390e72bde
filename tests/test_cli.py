"""The `shardwise` CLI in subprocesses: the plan verb, Hydra flags, sweeps, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cli_runner import shardwise as run_cli

REPO = Path(__file__).resolve().parents[1]


def shardwise(*args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env_extra=env_extra, timeout=timeout, offline=False, stdin=None)


def assert_clean_error(result: subprocess.CompletedProcess, needle: str, code: int = 2) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert needle in result.stderr, result.stderr


def test_plan_prints_the_report_and_writes_plan_json_with_the_contract_keys(tmp_path):
    result = shardwise(
        "plan", "model=gpt-oss-120b", "hardware=h100_80gb", f"out={tmp_path / 'plan.json'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "FITS" in result.stdout and "mxfp4 kept" in result.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    for key in (
        "model",
        "hardware",
        "strategy",
        "device_map",
        "max_memory",
        "budget",
        "limits",
        "fits",
        "decisions",
        "warnings",
        "fallbacks",
        "launch",
        "schema_version",
    ):
        assert key in plan
    assert {
        "name",
        "source",
        "model_type",
        "params_total",
        "weight_bytes",
        "checkpoint_bytes",
        "dtype",
        "quantization",
    } <= set(plan["model"])
    assert {"source", "fingerprint", "devices", "host_ram_bytes"} <= set(plan["hardware"])
    assert {"weights", "kv_cache", "activations", "overhead", "planned", "usable", "free_after"} <= set(
        plan["budget"][0]
    )
    assert {"context_tokens", "sessions", "max_new_tokens", "kv_bytes_per_token"} <= set(plan["limits"])
    run_dirs = list((tmp_path / "outputs" / "plan").glob("*/plan.json"))
    assert len(run_dirs) == 1 and json.loads(run_dirs[0].read_text()) == plan


def test_plan_on_this_gpu_less_machine_plans_for_the_cpu(tmp_path):
    result = shardwise("plan", "model=gpt2", "hardware=auto", "json=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert plan["strategy"] == "cpu" and plan["device_map"] == {"": "cpu"}


def test_a_plan_that_does_not_fit_says_which_device_and_term_bind(tmp_path):
    result = shardwise("plan", "model=gpt-oss-120b", "hardware=a100_40gb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "DOES NOT FIT" in result.stdout and "weights binds" in result.stdout
    assert "hardware.count=2" in result.stdout


def test_hydra_flags_work(tmp_path):
    cfg = shardwise("plan", "model=openai/gpt-oss-20b", "--cfg", "job", cwd=tmp_path)
    assert cfg.returncode == 0 and "name: gpt-oss-20b" in cfg.stdout
    helped = shardwise("plan", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "hardware" in helped.stdout and "model" in helped.stdout
    info = shardwise("plan", "--info", cwd=tmp_path)
    assert info.returncode == 0 and "Config search path" in info.stdout


@pytest.mark.slow
def test_multirun_ends_with_a_summary_table(tmp_path):
    result = shardwise("plan", "-m", "model=gpt2,gpt-oss-20b", "hardware=t4,a100_80gb", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    table = result.stdout[result.stdout.index("shardwise plan sweep") :]
    assert table.count("gpt-oss-20b") == 2 and table.count("gpt2") >= 2
    assert "single_gpu" in table


def test_no_verb_or_an_unknown_verb_prints_usage(tmp_path):
    none = shardwise(cwd=tmp_path)
    assert none.returncode == 2 and "usage: shardwise <verb>" in none.stdout
    unknown = shardwise("plna", cwd=tmp_path)
    assert_clean_error(unknown, "unknown verb 'plna'")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["model=gpt-7"], "unknown model 'gpt-7'"),
        (["hardware=h1000"], "unknown hardware 'h1000'"),
        (["hardware=h100_80gb", "hardware.count=0"], "count"),
        (["hardware=h100_80gb", "hardware.nodes=-1"], "nodes"),
        (["hardware=h100_80gb", "hardware.memory_mib=-5"], "memory_mib"),
        (["policy.sessions=0"], "policy.sessions"),
        (["policy.context_tokens=lots"], "policy.context_tokens"),
        (["model=gpt2", "policy.context_tokens=4096"], "maximum of 1024"),
        (["model.path=/nonexistent/model"], "does not exist"),
        (["hardware=snapshot"], "hardware.path"),
        (["hardware=snapshot", "hardware.path=/nonexistent.json"], "/nonexistent.json"),
        (["hardware=t4", "policy.dtype=bfloat16"], "bfloat16 needs compute capability >= 8.0"),
        (["hardware=t4", "policy.strategy=tensor_parallel"], "tensor"),
        (["+model.hub_idd=x"], "hub_idd"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(tmp_path, args, needle):
    assert_clean_error(shardwise("plan", *args, cwd=tmp_path), needle)


def test_typod_keys_are_refused_by_hydra_naming_the_key(tmp_path):
    result = shardwise("plan", "policy.sesions=2", cwd=tmp_path)
    assert result.returncode != 0 and "sesions" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_malformed_config_json_and_unsizable_architecture(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert_clean_error(shardwise("plan", f"model.path={bad}", cwd=tmp_path), "not valid JSON")
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"model_type": "definitely_not_a_model", "hidden_size": 8}))
    assert_clean_error(shardwise("plan", f"model.path={alien}", cwd=tmp_path), "definitely_not_a_model")
    snapshot = tmp_path / "snap.json"
    snapshot.write_text("[1, 2")
    assert_clean_error(shardwise("plan", "hardware=snapshot", f"hardware.path={snapshot}", cwd=tmp_path), "snap.json")


def test_model_path_plans_any_local_config(tmp_path):
    arch = json.loads((REPO / "tests" / "data" / "reference_models" / "openai-community__gpt2-medium.json").read_text())
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(arch))
    result = shardwise("plan", f"model.path={model_dir}", "hardware=t4", "json=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert plan["model"]["params_total"] == 354_823_168 and plan["model"]["name"] == "my-model"


@pytest.mark.slow
def test_probe_snapshot_replays_as_hardware(tmp_path):
    snap = tmp_path / "box.json"
    assert shardwise("probe", f"probe.save={snap}", cwd=tmp_path).returncode == 0
    result = shardwise("plan", "hardware=snapshot", f"hardware.path={snap}", "json=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout[: result.stdout.rindex("}") + 1])["hardware"]["source"] == str(snap)


def test_planning_imports_neither_torch_nor_transformers_nor_the_runner(tmp_path):
    code = (
        "import sys, planner.plan_cli, planner.probe_cli\n"
        "from planner.config.compose import make_plan\n"
        "make_plan('gpt-oss-120b', 'h100_80gb', ['hardware.count=8'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'accelerate', 'runner') if m in sys.modules]\n"
        "import runner.cli\n"  # the dispatcher sits above the planner and loads no heavy module either
        "heavy += [m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_wheel_ships_conf_and_plans_from_any_directory(tmp_path):
    wheel_dir = tmp_path / "wheel"
    # built from a copy without build outputs: setuptools reuses a checkout's build/lib, stale modules included
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "outputs", "*.egg-info", "__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("shardwise-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert "planner/conf/plan.yaml" in names and "planner/conf/model/gpt-oss-120b.yaml" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import sys; from runner.cli import main; from planner.config.app import conf_dir; print(conf_dir()); main()"
    import os

    result = subprocess.run(
        [sys.executable, "-c", code, "plan", "model=gpt2", "hardware=t4"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(site)) and "FITS" in result.stdout
    # the meta-device descriptions of the profiles ship too: a model outside the fast path plans from them
    assert any(n.startswith("planner/model/descriptions/") and n.endswith(".json") for n in names)
    code = (
        "import sys; from planner.config.compose import make_plan; import planner; print(planner.__file__); "
        "plan = make_plan('deepseek-v3', 'h100_80gb', ['hardware.count=8']); "
        "print([d.value for d in plan.decisions if d.what == 'architecture'], 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(site), "HF_HOME": str(tmp_path / "hf")},  # no earlier plan's cache
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(site))
    assert result.stdout.splitlines()[-1] == "['shipped description'] False"
