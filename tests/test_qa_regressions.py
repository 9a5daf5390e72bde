"""Regressions found by trying shardwise as a newcomer: bad input is one line and exit 2, nothing is lost.

Each test names the input that used to give a traceback, a Hydra multi-line report with exit 1,
a silently accepted bad value, or a crash that lost a REPL conversation.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli_runner import shardwise as run_cli

REPO = Path(__file__).resolve().parents[1]


def shardwise(*args: str, cwd: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, verb: str, needle: str) -> str:
    """The single stderr line `shardwise <verb>: error: ...` containing `needle`, with exit status 2."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # the server's own log lines ("[time][shardwise.serve][WARNING] ...") go to stderr too; the error is one line
    lines = [line for line in result.stderr.splitlines() if line.strip() and "][shardwise." not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"shardwise {verb}: error: ") and needle in lines[0], lines[0]
    return lines[0]


# --- what Hydra refuses before a verb runs -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["policy.foo=1"], "unknown key policy.foo: PolicyConfig has"),
        (["foo=1"], "unknown key foo"),
        (["policy.sessions=abc"], "bad value for policy.sessions"),
        (["policy.strategy=bogus"], "expected one of [auto, single_gpu, pipeline, tensor_parallel]"),
        (["policy=nonexistent"], "could not find 'policy/nonexistent': choose one of default"),
        (["model="], "model= is empty: choose one of"),
        (["hardware="], "hardware= is empty: choose one of"),
        (["~model"], "~model would remove the model settings"),
        (["gpt2"], "'gpt2' is not an override: write KEY=VALUE, e.g. model=gpt2"),
        (["model.path=~/x"], "cannot parse the override 'model.path=~/x'"),
        (["hydra.run.dir=/proc/no/such/dir"], "cannot create '/proc/no' (No such file or directory)"),
    ],
)
def test_hydra_refusals_are_one_line_with_exit_2(tmp_path, args, needle):
    one_line_error(shardwise("plan", *args, cwd=tmp_path), "plan", needle)


def test_list_option_given_a_word_says_to_write_a_list(tmp_path):
    one_line_error(
        shardwise("launch", "launch.prompt=hello", "launch.dry_run=true", cwd=tmp_path),
        "launch",
        "write a list, e.g. launch.prompt='[a, b]'",
    )


def test_sweep_reports_a_bad_job_runs_the_others_and_exits_2(tmp_path):
    result = shardwise("plan", "-m", "model=gpt2", "hardware=t4", "policy.sessions=1,0,2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "policy.sessions=0 must be >= 1" in result.stderr and "1 job(s) of the sweep failed" in result.stderr
    assert len(list((tmp_path / "multirun").glob("*/*/*/plan.json"))) == 2  # jobs 0 and 2 still wrote their plans
    assert "shardwise plan sweep" in result.stdout


# --- plan output and model sources ---------------------------------------------------------


@pytest.mark.slow
def test_out_to_an_unwritable_path_is_one_line_and_out_to_a_directory_writes_plan_json_inside(tmp_path):
    one_line_error(
        shardwise("plan", "out=/proc/no/such/plan.json", cwd=tmp_path),
        "plan",
        "cannot write the plan to '/proc/no/such/plan.json'",
    )
    target = tmp_path / "plans"
    target.mkdir()
    result = shardwise("plan", "model=gpt2", "hardware=t4", f"out={target}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((target / "plan.json").read_text())["model"]["name"] == "gpt2"


def test_json_flag_that_is_not_a_bool_is_refused(tmp_path):
    one_line_error(shardwise("plan", "json=maybe", cwd=tmp_path), "plan", "json='maybe' is not true or false")


def test_config_json_with_a_string_quantization_config_is_one_line(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": "x"}))
    one_line_error(
        shardwise("plan", f"model.path={model}", cwd=tmp_path), "plan", "quantization_config in config.json is 'x'"
    )


def test_candidates_accept_hub_ids_and_name_a_missing_profile_as_a_candidate(tmp_path):
    ok = shardwise(
        "plan", "model=auto", "hardware=t4", "policy.candidates=[openai/gpt-oss-20b,gpt2]", "json=true", cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["model"]["name"] == "gpt-oss-20b"
    one_line_error(
        shardwise("plan", "model=auto", "hardware=t4", "policy.candidates=[nope]", cwd=tmp_path),
        "plan",
        "model profile 'nope' (in policy.candidates or a profile's fallback) does not exist",
    )


def test_tier_knobs_on_hardware_cpu_carry_a_no_effect_warning(tmp_path):
    result = shardwise("plan", "model=gpt2", "hardware=cpu", "hardware.count=2", "json=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert any("hardware.count=2 has no effect with hardware kind cpu" in n for n in plan["hardware"]["notes"])


# --- snapshots -----------------------------------------------------------------------------

DEVICE = {
    "id": 0,
    "name": "X",
    "total_bytes": 85_000_000_000,
    "free_bytes": 80_000_000_000,
    "compute_capability": "8.0",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"host_ram_bytes": "x"}, "has host_ram_bytes = 'x', not an integer from 0 to"),
        ({"nodes": "two"}, "has nodes = 'two', not an integer >= 1"),
        ({"nvlink_pairs": [[0]]}, "not a list of [i, j] device id pairs"),
        ({"devices": [DEVICE, DEVICE]}, "has two devices with id 0 on node 0"),
        ({"devices": [{**DEVICE, "free_bytes": DEVICE["total_bytes"] + 1}]}, "above its total_bytes"),
        ({"devices": [{**DEVICE, "processes": "x"}]}, "devices[0].processes = 'x', not a list"),
    ],
)
def test_snapshot_with_wrong_shapes_is_one_line(tmp_path, extra, needle):
    snapshot = {"snapshot_version": 1, "devices": [DEVICE], "host_ram_bytes": 1 << 30, **extra}
    (tmp_path / "box.json").write_text(json.dumps(snapshot))
    one_line_error(shardwise("plan", "hardware=snapshot", "hardware.path=box.json", cwd=tmp_path), "plan", needle)


def test_snapshot_path_that_is_a_directory_says_so(tmp_path):
    one_line_error(
        shardwise("plan", "hardware=snapshot", f"hardware.path={tmp_path}", cwd=tmp_path), "plan", "is a directory"
    )


# --- launch --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["launch.port=70000", "launch.engine=vllm", "hardware=t4"], "launch.port=70000 is out of range"),
        (
            ["launch.gpu_memory_utilization=5", "launch.engine=vllm", "hardware=t4"],
            "launch.gpu_memory_utilization=5.0 is out of range",
        ),
        (["launch.slurm.timeout_min=-5", "hardware=t4"], "launch.slurm.timeout_min=-5 is out of range"),
        (["launch.rdzv_endpoint=nocolon", "hardware=t4"], "is not HOST:PORT"),
        (["generation.max_tokens=0", "hardware=cpu"], "generation.max_tokens=0 must be an integer >= 1"),
        (["model=llama-3.1-70b", "hardware=t4"], "llama-3.1-70b does not fit this plan (weights on device 0)"),
    ],
)
def test_launch_dry_run_refuses_unusable_settings_in_one_line(tmp_path, args, needle):
    one_line_error(shardwise("launch", *args, "launch.dry_run=true", cwd=tmp_path), "launch", needle)


# --- chat and serve: checked before any model loads ----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["generation.max_tokens=0"], "generation.max_tokens=0 must be an integer >= 1"),
        (["generation.temperature=-1"], "generation.temperature=-1.0 must be a number from 0 (greedy) to 2"),
        (["generation.top_p=2"], "generation.top_p=2.0 must be a number above 0 and at most 1"),
        (["max_memory=5"], "max_memory=5 is not a per-device mapping"),
        (["replan=maybe"], "replan='maybe' is not true or false"),
    ],
)
def test_chat_refuses_bad_settings_before_loading(tmp_path, args, needle):
    one_line_error(shardwise("chat", "hardware=cpu", "prompt=hi", *args, cwd=tmp_path), "chat", needle)


def test_serve_refuses_bad_generation_defaults_at_start(tmp_path):
    one_line_error(
        shardwise("serve", "hardware=cpu", "serve.port=18931", "generation.max_tokens=0", cwd=tmp_path),
        "serve",
        "generation.max_tokens=0 must be an integer >= 1",
    )


def test_serve_on_an_unknown_host_names_serve_host_not_the_port(tmp_path):
    line = one_line_error(
        shardwise("serve", "hardware=cpu", "serve.port=18932", "serve.host=nonexistent.invalid", cwd=tmp_path),
        "serve",
        "cannot listen on nonexistent.invalid:18932",
    )
    assert "set serve.host" in line and "serve.port" not in line


def test_serve_stale_plan_file_does_not_suggest_replan_which_serve_lacks(tmp_path):
    assert shardwise("plan", "model=gpt2", "hardware=h100_80gb", "out=h100.json", cwd=tmp_path).returncode == 0
    line = one_line_error(
        shardwise("serve", "plan_file=h100.json", "serve.port=18933", cwd=tmp_path), "serve", "was made for hardware"
    )
    assert "replan" not in line and "without plan_file=" in line


# --- Python API and REPL (in process) ------------------------------------------------------


def test_api_checks_sampling_values_and_messages_in_one_line():
    from planner.errors import ShardwiseError
    from runner.api_args import checked_messages
    from runner.engine.types import SamplingParams

    with pytest.raises(ShardwiseError, match=r"^max_tokens=0 must be an integer >= 1"):
        SamplingParams(max_tokens=0).checked()
    with pytest.raises(ShardwiseError, match=r"^generation.top_p=2 must be"):
        SamplingParams(top_p=2).checked(prefix="generation.")
    assert SamplingParams(max_tokens=True + 4, temperature=1).checked().temperature == 1.0
    with pytest.raises(ShardwiseError, match=r"messages\[0\].role is 'wizard'"):
        checked_messages([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ShardwiseError, match="got an empty list"):
        checked_messages([])
    assert checked_messages([{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}]) == [
        {"role": "system", "content": "be brief"}
    ]


def test_openai_chat_with_a_bad_override_is_a_shardwise_error_not_a_hydra_exception():
    from planner.errors import ShardwiseError
    from runner import OpenAIChat

    with pytest.raises(ShardwiseError, match="unknown key policy.sesions"):
        OpenAIChat(model="gpt2", use_cpu=True, overrides=["policy.sesions=2"])


def test_plan_that_fits_lists_fix_texts_when_the_fixes_are_dicts():
    from planner.config.compose import make_plan
    from planner.errors import ShardwiseError
    from runner.plan_fitting import plan_that_fits

    plan = make_plan(model="llama-3.1-70b", hardware="t4")
    assert isinstance(plan.binding["fixes"][0], dict)
    with pytest.raises(ShardwiseError, match="no fallback fits either: more GPUs"):
        plan_that_fits(plan, notice=lambda line: None, plan_fallback=lambda entry: plan)


class _StubSession:
    """Just enough of a ChatSession for the REPL's commands; a reply raises what it is given."""

    def __init__(self, failure: BaseException | None = None):
        from runner.engine.types import SamplingParams

        self.defaults = SamplingParams(max_tokens=8)
        self.history = [{"role": "user", "content": "keep me"}]
        self.system_prompt = None
        self.loaded = type("Loaded", (), {"name": "stub"})()
        self.failure = failure

    def send(self, text, params, stream=False):
        raise self.failure


def _repl(session):
    import io

    from rich.console import Console

    from runner.repl import Repl

    out = io.StringIO()
    return Repl(session, out=out, console=Console(file=out, width=400)), out


def test_repl_refuses_out_of_range_set_and_keeps_the_old_value():
    repl, out = _repl(_StubSession())
    repl.command("/set max_tokens 0")
    repl.command("/set top_p 5")
    assert repl.params.max_tokens == 8 and repl.params.top_p == 1.0
    assert "/set max_tokens: max_tokens=0 must be an integer >= 1" in out.getvalue()


def test_repl_save_to_an_unwritable_path_and_a_malformed_load_keep_the_conversation(tmp_path):
    session = _StubSession()
    repl, out = _repl(session)
    assert repl.command("/save /proc/no/such/conv.json") is True
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}], "params": {"max_tokens": "lots"}}))
    repl.command(f"/load {bad}")
    assert "cannot save to /proc/no/such/conv.json" in out.getvalue() and "cannot load" in out.getvalue()
    assert session.history == [{"role": "user", "content": "keep me"}] and repl.params.max_tokens == 8


def test_repl_reply_that_fails_unexpectedly_prints_one_line_and_goes_on():
    session = _StubSession(failure=ValueError("boom"))
    repl, out = _repl(session)
    repl.reply("hello")
    assert "error: this reply failed (ValueError: boom)" in out.getvalue()
    assert session.history == [{"role": "user", "content": "keep me"}]


def test_launch_of_a_fresh_plan_for_hardware_this_machine_lacks_is_refused_before_any_child_starts(tmp_path):
    # A recorded snapshot of a GPU no machine has (name "X"), so this holds on GPU machines too.
    (tmp_path / "box.json").write_text(
        json.dumps({"snapshot_version": 1, "devices": [DEVICE], "host_ram_bytes": 1 << 36})
    )
    result = shardwise("launch", "model=gpt2", "hardware=snapshot", "hardware.path=box.json", cwd=tmp_path)
    line = one_line_error(result, "launch", "plan was made for hardware")
    assert "launch.dry_run=true" in line and "replan" not in line
