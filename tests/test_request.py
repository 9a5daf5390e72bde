"""The typed request: token counts parsed in one place, the Policy validated once, the same plan for 8000, 8e3."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from planner.config.compose import compose, make_plan
from planner.config.request import parse_tokens, policy_from_config, request_from_config
from planner.decide.policy import Policy
from planner.errors import ShardwiseError


@pytest.mark.parametrize(
    "written,tokens",
    [("8000", 8000), (8000, 8000), ("8e3", 8000), (8000.0, 8000), ("8k", 8192), ("8K", 8192), ("1.5k", 1536)],
)
def test_token_counts_are_read_as_people_write_them(written, tokens):
    assert parse_tokens(written, "policy.context_tokens", allow_auto=True) == tokens


def test_auto_means_no_count_only_where_auto_is_allowed():
    assert parse_tokens("auto", "policy.context_tokens", allow_auto=True) is None
    with pytest.raises(ShardwiseError, match=r"^policy.min_context_tokens='auto' is not a number of tokens"):
        parse_tokens("auto", "policy.min_context_tokens")


@pytest.mark.parametrize(
    "written,needle",
    [("lots", "is neither a number nor auto"), ("8.5", "is not a whole number"), ("0.3k", "is not a whole number")],
)
def test_a_bad_token_count_is_one_line_that_quotes_it_and_shows_the_forms(written, needle):
    with pytest.raises(ShardwiseError) as caught:
        parse_tokens(written, "policy.context_tokens", allow_auto=True)
    message = str(caught.value)
    assert needle in message and repr(written) in message and "8k" in message and "\n" not in message


def test_every_token_count_of_the_policy_goes_through_the_same_parser():
    cfg = compose(
        "plan",
        ["policy.context_tokens=16k", "policy.prefill_chunk_tokens=2k", "policy.min_context_tokens=1e3"],
    )
    policy = policy_from_config(cfg.policy)
    assert (policy.context_tokens, policy.prefill_chunk_tokens, policy.min_context_tokens) == (16384, 2048, 1000)


@pytest.mark.parametrize("written,tokens", [("8e3", 8000), ("8k", 8192)])
def test_a_context_written_as_8e3_or_8k_plans_like_the_integer(written, tokens):
    args = ("llama-3.1-8b", "rtx4090")
    spelled = make_plan(*args, [f"policy.context_tokens={written}"])
    plain = make_plan(*args, [f"policy.context_tokens={tokens}"])
    assert spelled.limits.context_tokens == tokens
    assert spelled.budget == plain.budget and spelled.device_map == plain.device_map


def test_model_auto_compares_a_context_written_as_8e3_with_each_candidates_maximum():
    """gpt2's 1024-token maximum is short of 8e3: no candidate fits at 8000 tokens (it once passed as a fit)."""
    plan = make_plan("auto", "h100_80gb", ["policy.candidates=[gpt2-medium,gpt2]", "policy.context_tokens=8e3"])
    assert not plan.fits and plan.binding["term"] == "context"
    assert plan.decisions[0].what == "model" and "at 8000 tokens" in plan.decisions[0].reason


def test_the_request_is_typed_and_model_auto_has_no_spec():
    request = request_from_config(compose("plan", ["model=auto"]))
    assert request.model is None and isinstance(request.policy, Policy)
    assert request.policy.candidates == ("gpt-oss-120b", "gpt-oss-20b", "gpt2-medium", "gpt2")
    gpt2 = request_from_config(compose("plan", ["model=gpt2", "policy.strategy=pipeline"]))
    assert gpt2.model.name == "gpt2" and gpt2.policy.strategy == "pipeline"  # a plain string, not an Enum


def test_a_changed_policy_is_validated_again():
    policy = Policy(context_tokens=4096)
    with pytest.raises(ShardwiseError, match=r"^policy.sessions=0 must be >= 1"):
        replace(policy, sessions=0)
    with pytest.raises(ShardwiseError, match="policy.strategy='sideways' is not one of"):
        replace(policy, strategy="sideways")


def test_the_offload_room_is_measured_when_the_request_is_built_not_in_the_core(tmp_path):
    given = policy_from_config(compose("plan", ["policy.offload_disk_gib=2"]).policy)
    assert given.offload_disk_bytes == 2 * (1 << 30)
    measured = policy_from_config(compose("plan", [f"policy.offload_folder={tmp_path / 'not' / 'yet'}"]).policy)
    assert measured.offload_disk_bytes > 0  # the free space of the nearest existing parent


def test_a_bad_context_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shardwise", "plan", "hardware=t4", "policy.context_tokens=8kb"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "shardwise plan: error: policy.context_tokens='8kb' is neither a number nor auto: "
        "use e.g. policy.context_tokens=8192, policy.context_tokens=8e3 or policy.context_tokens=8k "
        "or policy.context_tokens=auto"
    ]
