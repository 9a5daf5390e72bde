"""Hardening (issue 10): plans written atomically, run directories unique and only where something was written,
hostile files and values refused in one line with exit 2, remote code only with consent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import shardwise
from tiny_models import TINY_LLAMA_CONFIG

REPO = Path(__file__).resolve().parents[1]


def one_line_error(result, verb: str, needle: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"shardwise {verb}: error: ") and needle in lines[0], lines[0]
    return lines[0]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- item 3: plans written atomically ------------------------------------------------------------


def _a_plan():
    from planner.config.compose import make_plan

    return make_plan("gpt2", "t4")


def test_a_failed_plan_write_leaves_the_old_plan_whole_and_no_temp_file(tmp_path, monkeypatch):
    import planner.files as files

    plan = _a_plan()
    target = tmp_path / "plan.json"
    plan.save(target)
    before = target.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)  # the write fails after part of the text went out
    with pytest.raises(OSError):
        plan.save(target)
    assert target.read_bytes() == before and json.loads(before)["model"]["name"] == "gpt2"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_out_to_a_full_disk_is_one_line_and_keeps_the_old_plan(tmp_path, monkeypatch):
    from planner import plan_cli
    from planner.errors import ShardwiseError

    plan = _a_plan()
    target = tmp_path / "plan.json"
    target.write_text('{"old": true}\n')

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("planner.files.os.replace", failing_replace)
    with pytest.raises(ShardwiseError, match="No space left on device"):
        plan_cli.save_to(plan, target)
    assert target.read_text() == '{"old": true}\n' and [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_a_saved_plan_is_readable_by_others_like_any_file_the_user_writes(tmp_path):
    path = _a_plan().save(tmp_path / "plan.json")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


# --- item 4: run directories unique per process, and only when something was written ---------------


def test_two_plans_started_together_get_their_own_run_directories(tmp_path):
    env = {**os.environ, "COLUMNS": "400", "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "runner", "plan", f"model={model}", "hardware=t4"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for model in ("gpt2", "gpt2-medium")
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    run_plans = sorted((tmp_path / "outputs" / "plan").glob("*/plan.json"))
    assert len(run_plans) == 2
    for model, out in zip(("gpt2", "gpt2-medium"), outs):
        named = out.split("plan_file=", 1)[1].split()[0]
        assert json.loads(Path(named).read_text())["model"]["name"] == model


@pytest.mark.parametrize(
    "args",
    [
        ("probe",),
        ("plan", "model=gpt2", "hardware=t4", "json=true"),
        ("plan", "model=gpt-7"),
        ("probe", "--cfg", "job"),
    ],
)
def test_verbs_not_asked_to_write_leave_nothing_in_the_current_directory(tmp_path, args):
    result = shardwise(*args, cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert tree(tmp_path) == []


def test_plan_json_and_out_writes_only_the_file_asked_for(tmp_path):
    result = shardwise("plan", "model=gpt2", "hardware=t4", "json=true", "out=mine.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == ["mine.json"]
    assert json.loads((tmp_path / "mine.json").read_text()) == json.loads(result.stdout)


def test_log_lines_never_reach_stdout_and_no_log_file_is_written(tmp_path):
    result = shardwise("plan", "-m", "model=gpt2,gpt2-medium", "hardware=t4", "json=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line)["model"]["name"] for line in lines] == ["gpt2", "gpt2-medium"]  # JSON Lines only
    assert "Launching 2 jobs locally" in result.stderr
    assert not list(tmp_path.rglob("*.log"))


# --- item 6: hostile files and values: one line, exit 2 ---------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = '{"model_type": "llama", "hidden_size": ' + "9" * 5000 + "}"


def _tiny_llama_config(**changes) -> dict:
    return {**TINY_LLAMA_CONFIG, **changes}


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw,needle",
    [
        (DEEP, "nests deeper than"),
        (HUGE_INT, "is not valid JSON"),
        (b"\xff\xfe{not utf8", "is not UTF-8"),
        ("[1, 2]", "holds a list at the top"),
    ],
)
def test_hostile_config_json_is_one_line(tmp_path, raw, needle):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    one_line_error(shardwise("plan", f"model.path={model}", "hardware=t4", cwd=tmp_path), "plan", needle)


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"num_key_value_heads": 0}, "num_key_value_heads=0"),
        ({"num_key_value_heads": -2}, "num_key_value_heads in config.json is -2"),
        ({"num_key_value_heads": 3}, "does not divide"),
        ({"hidden_size": 66}, "not divisible by 4 attention heads"),
        ({"num_hidden_layers": 1_000_000_000}, "num_hidden_layers=1000000000"),
    ],
)
def test_impossible_architecture_numbers_are_refused(tmp_path, changes, needle):
    from planner.config.compose import make_plan
    from planner.errors import ShardwiseError

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(_tiny_llama_config(**changes)))
    with pytest.raises(ShardwiseError, match=needle):
        make_plan("gpt2", "t4", model_path=str(model))


def _safetensors(path: Path, header, data_bytes: int = 16) -> None:
    import struct

    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_bytes)


@pytest.mark.parametrize(
    "header,needle",
    [
        ([1, 2, 3], "holds a list at the top"),
        ({"w": [1]}, "is described by list"),
        ({"w": {"dtype": "F32", "shape": [2]}}, "data_offsets None"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, "outside the 16 data bytes"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "outside the 16 data bytes"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 10**30]}}, "outside the 16 data bytes"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1e999]}}, "not [start, end]"),
        ({"w": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}}, "dtype 7"),
        ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, "shape '2'"),
    ],
)
def test_hostile_safetensors_headers_are_refused(tmp_path, header, needle):
    from planner.errors import ShardwiseError
    from planner.model.headers import read_index

    _safetensors(tmp_path / "model.safetensors", header)
    with pytest.raises(ShardwiseError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        read_index(str(tmp_path))


@pytest.mark.parametrize(
    "index,needle",
    [
        ('{"weight_map": ["a.safetensors"]}', "no weight_map of tensor -> shard file name"),
        (b'{"weight_map": {"w": "\xff.safetensors"}}', "is not UTF-8"),
        ('{"weight_map": {"w": "../../etc/passwd"}}', "no weight_map"),
    ],
)
def test_hostile_index_files_are_refused(tmp_path, index, needle):
    from planner.errors import ShardwiseError
    from planner.model.headers import read_index

    (tmp_path / "model.safetensors.index.json").write_bytes(index if isinstance(index, bytes) else index.encode())
    with pytest.raises(ShardwiseError, match=needle):
        read_index(str(tmp_path))


SNAPSHOT_DEVICE = {
    "id": 0,
    "name": "NVIDIA H100 80GB HBM3",
    "total_bytes": 85899345920,
    "free_bytes": 84000000000,
    "compute_capability": "9.0",
}


@pytest.mark.parametrize(
    "snapshot,needle",
    [
        (
            {
                "snapshot_version": 1,
                "devices": [{**SNAPSHOT_DEVICE, "compute_capability": 8.0}],
                "host_ram_bytes": 1 << 36,
            },
            "compute_capability = 8.0",
        ),
        (
            {"snapshot_version": 1, "devices": [SNAPSHOT_DEVICE], "host_ram_bytes": 1 << 36, "nodes": 1_000_000},
            "nodes = 1000000",
        ),
        (DEEP, "nests deeper than"),
    ],
)
def test_hostile_snapshots_are_one_line(tmp_path, snapshot, needle):
    (tmp_path / "box.json").write_text(snapshot if isinstance(snapshot, str) else json.dumps(snapshot))
    result = shardwise("plan", "hardware=snapshot", "hardware.path=box.json", cwd=tmp_path)
    one_line_error(result, "plan", needle)


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda p: p.update(hardware=[1]), "hardware must be an object"),
        (lambda p: p.update(device_map=["cpu"]), "device_map must be an object"),
        (lambda p: p["limits"].update(context_tokens="lots"), "limits.context_tokens must be an integer"),
        (lambda p: p["model"].update(params_total=True), "model.params_total must be an integer"),
        (lambda p: p["device_map"].update(x=[0]), "device_map['x'] must be an integer or a string"),
        (lambda p: p.update(budget=[5]), "budget[0] must be an object"),
    ],
)
def test_plan_file_fields_of_the_wrong_type_are_refused_naming_the_field(tmp_path, change, needle):
    from planner.errors import ShardwiseError
    from planner.plan import Plan

    data = _a_plan().to_dict()
    change(data)
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(ShardwiseError) as caught:
        Plan.load(tmp_path / "plan.json")
    assert needle in str(caught.value) and "plan.json" in str(caught.value)


def test_plan_file_nested_too_deep_is_one_line_for_chat(tmp_path):
    (tmp_path / "plan.json").write_text(DEEP)
    one_line_error(shardwise("chat", "plan_file=plan.json", "prompt=hi", cwd=tmp_path), "chat", "nests deeper")


def test_repl_load_of_a_hostile_file_keeps_the_conversation(tmp_path):
    from test_qa_regressions import _repl, _StubSession

    session = _StubSession()
    repl, out = _repl(session)
    for i, raw in enumerate([DEEP, '{"messages": ' + "1" * 5000 + "}", "\udcff"]):
        path = tmp_path / f"conv{i}.json"
        path.write_bytes(raw.encode("utf-8", "surrogateescape"))
        assert repl.command(f"/load {path}") is True
    text = out.getvalue()
    assert text.count("cannot load") == 3 and "nests deeper" in text and "not UTF-8" in text
    assert session.history == [{"role": "user", "content": "keep me"}]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["hardware=cpu", "hardware.host_ram_gib=nan"], "hardware.host_ram_gib=nan is not a finite number"),
        (["hardware=cpu", "hardware.host_ram_gib=inf"], "hardware.host_ram_gib=inf is not a finite number"),
        (["hardware=t4", "out=${oc.env:SHARDWISE_SURELY_UNSET}"], "cannot resolve the value of out"),
        (["hardware=t4", "out=${out}"], "Recursive interpolation"),
        (["hardware=snapshot", "hardware.path=" + "a" * 300], "File name too long"),
        (["hardware=t4", "out=" + "b" * 300], "File name too long"),
        (["hardware=t4", "policy.overhead.cpu_runtime_mib=-1"], "policy.overhead.cpu_runtime_mib=-1 must be >= 0"),
        (["hardware=t4", "policy.overhead.workspace_mib=-100000"], "must be >= 0"),
        (["hardware=t4", "policy.offload_disk_gib=nan"], "policy.offload_disk_gib=nan is not a finite number"),
        (["hardware=t4", "policy.offload_disk_gib=-5"], "policy.offload_disk_gib=-5.0 must be >= 0"),
        (["hardware=t4", "+foo=1"], "unknown key foo"),
        (["hardware=t4", "++bar=2"], "unknown key bar"),
        (["hardware=h100_80gb", "hardware.count=100000"], "hardware.count=100000 is more than"),
        (["hardware=t4", "policy.sessions=1000000"], "policy.sessions=1000000 is more than"),
    ],
)
def test_bad_values_are_refused_in_one_line(tmp_path, args, needle):
    one_line_error(shardwise("plan", *args, cwd=tmp_path), "plan", needle)


def test_an_ascii_only_stdout_degrades_the_report_instead_of_crashing(tmp_path):
    result = shardwise("plan", "model=gpt2", "hardware=t4", cwd=tmp_path, env_extra={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "FITS" in result.stdout and "Traceback" not in result.stderr
    bar_row = next(line for line in result.stdout.splitlines() if line.startswith("GPU 0"))
    assert "#" in bar_row and "?" not in bar_row  # the bars are drawn in ASCII, not replaced by '?'


# --- launch: environment and settings that cannot work are one line -------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,env,needle",
    [
        (["-m", "hydra/launcher=slurm_1node_1gpu", "model=gpt2", "hardware=cpu"], {}, "has no `srun`"),
        (["model=gpt2", "hardware=cpu", "launch.prompt=[hi]"], {"SLURM_NODEID": "abc"}, "SLURM_NODEID='abc'"),
        (
            ["model=gpt2", "hardware=cpu", "launch.node_rank=3", "launch.dry_run=true"],
            {},
            "launch.node_rank=3 is outside",
        ),
        (
            [
                "model=llama-3.2-1b",
                "hardware=cpu",
                "launch.cpu_tp_size=2",
                "launch.record_dir=/dev/full",
                "launch.prompt=[hi]",
            ],
            {},
            "launch.record_dir='/dev/full' cannot be used as a directory",
        ),
    ],
)
def test_launch_settings_and_environment_that_cannot_work_are_one_line(tmp_path, args, env, needle):
    result = shardwise("launch", *args, cwd=tmp_path, env_extra=env)
    one_line_error(result, "launch", needle)


def test_the_slurm_comment_names_the_engine_each_task_starts():
    from planner.config.compose import make_plan
    from runner.launch import render as L

    plan = make_plan("llama-3.1-70b", "h100_80gb", ["hardware.count=2"])
    assert plan.strategy == "pipeline" and plan.nodes == 1
    _, auto = L.slurm_launcher(plan, L.SlurmSettings())
    _, vllm = L.slurm_launcher(plan, L.SlurmSettings(), engine=L.Engine.vllm)
    assert "one accelerate process loads the plan" in auto[0] and "torchrun" not in auto[0]
    assert "vllm serve runs the model" in vllm[0]


# --- the report at 80 columns and in pipes ---------------------------------------------------------


def test_the_run_it_command_has_its_own_unwrapped_line_at_80_columns(tmp_path):
    result = shardwise("plan", "model=gpt-oss-20b", "hardware=t4", cwd=tmp_path, env_extra={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    command = lines[lines.index(next(line for line in lines if line.endswith("Run it:"))) + 1]
    assert command.startswith("shardwise chat plan_file=") and command.endswith("/plan.json")
    assert Path(command.split("plan_file=", 1)[1]).is_file()
    table = [line for line in lines if line.startswith("GPU 0") or line.startswith("device")]
    assert all(len(line) <= 80 for line in table)
    assert any(line.startswith("GiB. wts weights") for line in lines)
    assert any("sliding-window" in line for line in lines)  # gpt-oss: KV < KV B/token x context


def test_a_does_not_fit_without_fixes_says_nothing_here_would_fit():
    import io
    from dataclasses import replace

    from rich.console import Console

    from planner.config.compose import make_plan
    from planner.report import render

    plan = make_plan("gpt-oss-120b", "a100_40gb")
    assert not plan.fits and plan.binding["fixes"]
    for fixes, needle in ((plan.binding["fixes"], "would fit with:"), ([], "nothing here would fit")):
        out = io.StringIO()
        render(replace(plan, binding={**plan.binding, "fixes": fixes}), console=Console(file=out, width=80))
        assert needle in out.getvalue()


def test_an_offload_fix_states_and_sets_the_context_it_was_planned_at():
    from planner.config.compose import make_plan

    plan = make_plan("llama-3.1-8b", "rtx3080", ["policy.context_tokens=auto"])
    offload = [f for f in plan.binding.get("fixes", []) if "allow_cpu_offload" in f["text"]]
    assert not plan.fits and offload
    (fix,) = offload[:1]
    context = next(o for o in fix["overrides"] if o.startswith("policy.context_tokens="))
    assert context in fix["text"]
    applied = make_plan("llama-3.1-8b", "rtx3080", fix["overrides"])
    assert applied.fits and applied.limits.context_tokens == int(context.split("=")[1])


def test_the_fewer_sessions_fix_is_the_largest_count_that_fits_and_found_by_bisection(monkeypatch):
    import planner.sizing as sizing
    from planner.config.compose import make_plan

    placements = [0]
    real = sizing._place_on

    def counted(*args, **kwargs):
        placements[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sizing, "_place_on", counted)
    plan = make_plan("gpt-oss-120b", "a100_80gb", ["policy.sessions=10000", "policy.context_tokens=8192"])
    searched = placements[0]
    (fix,) = [f for f in plan.binding["fixes"] if f["text"].startswith("fewer concurrent sessions")]
    n = int(fix["overrides"][0].split("=")[1])
    assert make_plan("gpt-oss-120b", "a100_80gb", [f"policy.sessions={n}", "policy.context_tokens=8192"]).fits
    assert not make_plan("gpt-oss-120b", "a100_80gb", [f"policy.sessions={n + 1}", "policy.context_tokens=8192"]).fits
    # every fix bisects: a few dozen placements in all, where a linear walk down from 10,000 makes thousands
    assert searched <= 64, searched
