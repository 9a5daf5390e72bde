"""Newcomer habits (issue 18, items 16 and 19): piped output fits 80 columns, hardware notes are notes, unknown verbs
and /set keys suggest the nearest, /set takes KEY=VALUE; `model=` takes directories with commas and non-ASCII names,
a read-only working directory does not stop `plan json=true` or `probe`, hardware.count=-1 is exit 2, and /metrics
asks for the API key the README says it needs."""

from __future__ import annotations

import io
import os
import shutil

import httpx
import pytest
from cli_runner import shardwise
from server_fakes import FakeSession
from test_server import live_server
from tiny_models import tiny_gpt2

from planner.config.overrides import normalize_overrides
from shardwise.verbs.app import writable_run_dirs


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return tiny_gpt2(tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_a_piped_plan_report_fits_80_columns_and_hardware_notes_are_notes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "shardwise", "plan", "model=gpt2", "hardware=cpu"],
        cwd=tmp_path,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # the "Run it:" command and the plan.json path stay whole on purpose (copied as they are): every other line fits
    lines = [line for line in result.stdout.splitlines() if not line.startswith(("shardwise chat ", "plan.json: "))]
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert not [line for line in lines if line != line.rstrip()]
    assert not [line for line in lines if line.startswith("warning:") and "measured" in line]


def test_an_unknown_verb_suggests_the_nearest(tmp_path):
    result = shardwise("chta", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'chat'" in result.stderr


def test_repl_set_takes_key_equals_value_and_suggests_keys():
    from runner.repl import Repl

    out = io.StringIO()
    repl = Repl.__new__(Repl)
    from rich.console import Console

    from runner.engine.sampling import SamplingParams

    repl.console = Console(file=out, highlight=False, width=80)
    repl.params = SamplingParams()
    repl._set("temperature=0.25")
    assert repl.params.temperature == 0.25
    repl._set("top_p 0.5")
    assert repl.params.top_p == 0.5
    repl._set("stop a=b")
    assert repl.params.stop[-1] == "a=b"
    repl._set("temprature=1")
    assert "did you mean temperature" in out.getvalue()


def test_model_takes_a_directory_with_a_comma_or_non_ascii_name(gpt2, tmp_path):
    from planner.config.compose import make_plan

    for name in ("naïve model", "a,b"):
        where = tmp_path / name
        shutil.copytree(gpt2, where)
        (arg,) = normalize_overrides([f"model={where}"])
        assert arg.startswith("model=dir/") and arg.isascii()
        plan = make_plan(model_path=str(where), hardware="cpu")
        assert plan.model.name == name and plan.model.source == str(where)


def test_a_read_only_working_directory_moves_hydras_run_dir_to_the_temp_dir(monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    args = writable_run_dirs(["json=true"], "plan", cwd="/somewhere")
    assert any(a.startswith("hydra.run.dir='") and "shardwise-outputs" in a for a in args)
    assert writable_run_dirs(["hydra.run.dir=x"], "plan", cwd="/somewhere") == ["hydra.run.dir=x"]
    monkeypatch.undo()
    assert writable_run_dirs(["json=true"], "plan", cwd=os.getcwd()) == ["json=true"]


def test_hardware_count_below_one_is_exit_2_whatever_the_kind(tmp_path):
    result = shardwise("plan", "model=gpt2", "hardware=auto", "hardware.count=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "shardwise plan: error: hardware.count=-1 must be >= 1"


def test_metrics_needs_the_api_key_as_the_readme_says():
    with live_server(FakeSession(), api_key="k") as server:
        assert httpx.get(server.url + "/metrics").status_code == 401
        ok = httpx.get(server.url + "/metrics", headers={"authorization": "Bearer k"})
        assert ok.status_code == 200 and "shardwise:" in ok.text
        assert httpx.get(server.url + "/health").status_code == 200
    readme = (os.path.dirname(__file__) + "/../README.md").replace("tests/../", "")
    assert "`/metrics` needs the key" in open(readme).read()
