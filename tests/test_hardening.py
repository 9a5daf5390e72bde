"""Hardening (issue 10): plans written atomically, run directories unique and only where something was written,
hostile files and values refused in one line with exit 2, remote code only with consent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shardwise(*args: str, cwd: Path, timeout: int = 120, env_extra: dict | None = None, **kw):
    env = {**os.environ, "COLUMNS": "160", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        **kw,
    )


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
    import planner.jsonfile as jsonfile

    plan = _a_plan()
    target = tmp_path / "plan.json"
    plan.save(target)
    before = target.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonfile.os, "fsync", disk_full)  # the write fails after part of the text went out
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

    monkeypatch.setattr("planner.jsonfile.os.replace", failing_replace)
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
