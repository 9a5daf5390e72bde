"""The seed-shaped Python API (OpenAIChat, create_chat_completion) and `shardwise chat` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_gpt2, tiny_llama

import runner
from runner.api import _UNSET, OpenAIChat, create_chat_completion
from runner.plan_fitting import parse_max_memory, plan_that_fits

REPO = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": tiny_llama(root), "gpt2": tiny_gpt2(root)}


@pytest.fixture(scope="module")
def chat(dirs):
    return OpenAIChat(model_path=str(dirs["llama"]), use_cpu=True, notice=lambda line: None)


def test_package_exports_the_seed_names():
    assert runner.OpenAIChat is OpenAIChat and runner.create_chat_completion is create_chat_completion
    assert callable(runner.clear_memory)


def test_chat_returns_the_reply_text(chat):
    reply = chat.chat(MESSAGES, max_tokens=5, temperature=0)
    assert isinstance(reply, str)
    assert reply == chat.completion(MESSAGES, max_tokens=5, temperature=0).text
    assert chat.plan.strategy == "cpu" and chat.model_name == "tiny-llama"
    chat.clear_memory()


def test_create_returns_an_openai_chat_completion(chat):
    result = chat.create(MESSAGES, max_tokens=6, temperature=0)
    assert result["id"].startswith("chatcmpl-") and result["object"] == "chat.completion"
    assert isinstance(result["created"], int) and result["model"] == "tiny-llama"
    (choice,) = result["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = result["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 6


def test_openai_keywords_on_a_loaded_chat_are_taken_or_refused_by_name(chat):
    """max_completion_tokens is max_tokens (as the server takes it), fields without effect are taken, and what the
    chat cannot honour or does not know is a ShardwiseError naming it: a stream never ignores a typo silently."""
    from runner import ShardwiseError

    assert chat.create(MESSAGES, max_completion_tokens=3, temperature=0)["usage"]["completion_tokens"] <= 3
    assert chat.chat(MESSAGES, max_completion_tokens=2, temperature=0, user="u", logprobs=False) == chat.chat(
        MESSAGES, max_tokens=2, temperature=0
    )
    for call in (chat.chat, chat.create, chat.stream):
        with pytest.raises(ShardwiseError, match="did you mean temperature"):
            call(MESSAGES, max_tokens=2, temprature=0)
        with pytest.raises(ShardwiseError, match="tools is not supported"):
            call(MESSAGES, max_tokens=2, tools=[{"type": "function"}])


def test_create_chat_completion_streams_chunks_that_add_up(dirs):
    kwargs = dict(model_path=str(dirs["llama"]), use_cpu=True, messages=MESSAGES, max_tokens=8, temperature=0)
    whole = create_chat_completion(**kwargs)
    chunks = list(create_chat_completion(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == whole["choices"][0]["message"]["content"]
    # as OpenAI streams: one chunk with the finish_reason and an empty delta, then usage with no choices
    finish = whole["choices"][0]["finish_reason"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    without_usage = list(create_chat_completion(stream=True, **kwargs))
    assert "usage" not in without_usage[-1] and without_usage[-1]["choices"][0]["finish_reason"]


def test_a_stream_generates_nothing_until_it_is_read(dirs):
    from runner.api import OpenAIChat

    chat = OpenAIChat(model_path=str(dirs["llama"]), use_cpu=True)
    chunks = chat.stream(MESSAGES, max_tokens=4)
    assert chat.session.last_completion is None  # the generator has not started the model
    list(chunks)
    assert chat.session.last_completion is not None


def test_the_default_seed_applies_when_a_call_gives_none(dirs):
    from runner.api import OpenAIChat

    chat = OpenAIChat(
        model_path=str(dirs["llama"]), use_cpu=True, overrides=["generation.seed=7", "generation.temperature=1.0"]
    )
    assert chat._params(*([_UNSET] * 7)).seed == 7


def test_model_that_does_not_fit_plans_the_first_fallback_that_does():
    from planner.config.compose import make_plan

    notices = []
    plan = plan_that_fits(make_plan(model="openai/gpt-oss-120b", hardware="cpu"), notice=notices.append)
    assert plan.fits and plan.model.name != "gpt-oss-120b"
    assert len(notices) == 1 and "gpt-oss-120b does not fit" in notices[0]


def test_max_memory_cap_below_the_plan_marks_it_not_fitting(dirs):
    from planner.config.compose import make_plan
    from runner.plan_fitting import apply_max_memory

    plan = make_plan(model_path=str(dirs["llama"]), hardware="cpu")
    planned = {b.device: b.planned for b in plan.budget}
    assert apply_max_memory(plan, {"cpu": planned["cpu"]}).fits
    capped = apply_max_memory(plan, {"cpu": planned["cpu"] - 1})
    assert not capped.fits and capped.binding["term"] == "max_memory"
    assert parse_max_memory({0: "20GiB", "cpu": 1024}) == {"0": 20 << 30, "cpu": 1024}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "nanGiB", "garbage", -1])
def test_max_memory_values_that_are_no_size_are_one_line(value):
    """`max_memory={cpu: nan}` (YAML's .nan, 1e999) reached int() and raised ValueError/OverflowError."""
    from planner.errors import ShardwiseError

    with pytest.raises(ShardwiseError) as caught:
        parse_max_memory({"cpu": value})
    assert "max_memory['cpu']" in str(caught.value) and "\n" not in str(caught.value)


def _shardwise(args, cwd, stdin=None, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(cwd))
    return subprocess.run(
        [sys.executable, "-m", "shardwise.cli", "chat", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_shardwise_chat_answers_a_prompt_once_and_writes_metrics(dirs, tmp_path):
    result = _shardwise(
        [
            f"model.path={dirs['gpt2']}",
            "hardware=cpu",
            "prompt=hello",
            "generation.max_tokens=5",
            "hydra.run.dir=run",
            "metrics=true",  # telemetry is written only when asked for (issue 10: no run directory otherwise)
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "loading tiny-gpt2" in result.stderr and "tokens" in result.stderr.splitlines()[-1]
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["model"] == "tiny-gpt2" and record["completion_tokens"] <= 5


@pytest.mark.slow
def test_shardwise_chat_refuses_a_stale_plan_file_in_one_line(dirs, tmp_path):
    from tiny_models import cpu_plan

    cpu_plan(dirs["gpt2"], fingerprint="hw-stale", hardware_source="probe").save(tmp_path / "plan.json")
    result = _shardwise(["plan_file=plan.json", "prompt=hi"], tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        "shardwise chat: error: plan file 'plan.json' was made for hardware hw-stale"
    )
    assert "replan=true" in result.stderr and len(result.stderr.strip().splitlines()) == 1
