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


@pytest.mark.parametrize(
    "typed, meant", [("PLAN", "plan"), ("Probe", "probe"), ("serv", "serve"), ("calib", "calibrate")]
)
def test_an_unknown_verb_suggests_the_nearest_in_any_case(capsys, typed, meant):
    """`shardwise PLAN` suggested nothing: verbs now use the rule every unknown name uses (any case, prefixes)."""
    from shardwise.cli import main

    with pytest.raises(SystemExit) as ended:
        main([typed])
    assert ended.value.code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == f"shardwise: error: unknown verb {typed!r} (did you mean {meant!r}?)"


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


def test_model_takes_a_directory_in_hydras_quotes(tmp_path):
    """`model='./my model'` (Hydra's quoting, which its own errors advise) kept the quotes: "unknown model"."""
    from planner.config.overrides import model_option

    for name in ("my model", "a,b", "it's", "x=y"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    hydra_quoted = "\\'".join(f"{tmp_path}/it's".split("'"))  # Hydra's escape of a quote inside quotes
    for value, names in [
        (f"'{tmp_path}/my model'", [f"{tmp_path}/my model"]),
        (f'"{tmp_path}/a,b"', [f"{tmp_path}/a,b"]),
        (f"'{hydra_quoted}'", [f"{tmp_path}/it's"]),
        (f"'{tmp_path}/x=y',gpt2", [f"{tmp_path}/x=y", "gpt2"]),
        (f"choice('{tmp_path}/my model','gpt2')", [f"{tmp_path}/my model", "gpt2"]),
    ]:
        (arg,) = normalize_overrides([f"model={value}"])
        chosen = arg.partition("=")[2].removeprefix("choice(").removesuffix(")").split(",")
        assert chosen == [model_option(name) for name in names], (value, arg)


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


# --- widths, suggestions and pipes (item 16) -----------------------------------------------------


def _plan_lines(model: str, hardware: str, overrides: list[str], width: int) -> list[str]:
    from rich.console import Console

    from planner.config.compose import make_plan
    from planner.explain.report import render

    out = io.StringIO()
    render(make_plan(model, hardware, overrides), console=Console(file=out, width=width, highlight=False))
    return out.getvalue().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,hardware,overrides",
    [
        ("llama-3.1-70b", "t4", []),  # negative free memory: the widest numbers
        ("gpt-oss-120b", "h100_80gb", ["hardware.count=2"]),
        ("qwen3-8b", "h100_80gb", ["launch.engine=vllm"]),
    ],
)
@pytest.mark.parametrize("width", [80, 100])
def test_the_memory_table_gives_its_bar_what_the_numbers_leave_of_the_width(model, hardware, overrides, width):
    lines = _plan_lines(model, hardware, overrides, width)
    table = [line for line in lines if line.startswith(("device ", "GPU ", "each of", "cpu "))]
    assert table and max(len(line) for line in table) <= width, table
    bars = [line for line in table if "█" in line or "·" in line]
    assert bars  # the bar is still drawn, at least 4 cells
    wider = _plan_lines(model, hardware, overrides, width + 20)
    assert max(len(x) for x in wider if x.startswith(("GPU ", "each of"))) > max(len(x) for x in bars)


def test_help_fits_the_pipe_or_the_columns_it_is_given(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    for columns, expected in ((None, 80), ("100", 100)):
        run = subprocess.run(
            [sys.executable, "-m", "runner", "launch", "--help"],
            env={**env, **({"COLUMNS": columns} if columns else {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert max(len(line) for line in lines) <= expected
        assert max(len(line) for line in lines) > expected - 10  # it uses the room it has
        assert not [line for line in lines if line != line.rstrip()]
        # a long key keeps its meaning aligned under itself, never split mid-word
        assert any(line.startswith("  launch.gpu_memory_utilization") for line in lines)


def test_a_help_read_by_head_ends_without_a_traceback():
    import subprocess
    import sys

    reader = subprocess.run(
        f"{sys.executable} -m runner plan --help | head -c 20 > /dev/null; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "40"},  # long enough help that the pipe fills before head leaves
    )
    assert "Traceback" not in reader.stderr, reader.stderr
    assert reader.stdout.strip() in ("0", "141")


@pytest.mark.parametrize(
    "override,hint",
    [
        ("model=gpt-oss-12b", "did you mean 'gpt-oss-120b'"),
        ("model=llama3.1-8b", "did you mean 'llama-3.1-8b'"),
        ("hardware=h100", "did you mean 'h100_80gb'"),  # typed short: the longer name, not h200
        ("policy.sesions=2", "did you mean 'policy.sessions'"),
        ("+policy.contxt_tokens=2", "did you mean 'policy.context_tokens'"),
        ("hardwar=t4", "did you mean 'hardware'"),
    ],
)
def test_unknown_models_hardware_and_keys_suggest_the_nearest(override, hint):
    from planner.config.compose import make_plan
    from planner.errors import ShardwiseError

    key, _, value = override.partition("=")
    model = value if key == "model" else "gpt2"
    hardware = value if key == "hardware" else "cpu"
    rest = [] if key in ("model", "hardware") else [override]
    with pytest.raises(ShardwiseError, match=hint.replace("(", r"\(").replace(".", r"\.")) as caught:
        make_plan(model, hardware, rest)
    assert "\n" not in str(caught.value)


def test_a_name_far_from_every_option_gets_no_suggestion():
    from planner.errors import did_you_mean

    assert did_you_mean("xyzzy", ["a100_80gb", "t4", "h200"]) == ""
    assert did_you_mean("T4", ["a100_80gb", "t4"]) == " (did you mean 't4'?)"


@pytest.mark.parametrize("name", ["x" * 300, "a" * 200 + "/" + "b" * 300, "gpt2\x00"])
def test_a_model_name_no_file_system_could_hold_is_an_unknown_model(name):
    from planner.config.compose import make_plan
    from planner.errors import ShardwiseError

    with pytest.raises(ShardwiseError) as caught:
        make_plan(name, "cpu")
    assert "\n" not in str(caught.value)
