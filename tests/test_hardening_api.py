"""Python API arguments (issue 10, item 10): every bad argument is one `runner.ShardwiseError` naming it,
raised before anything is planned or loaded (no model is needed to run these)."""

from __future__ import annotations

import math

import pytest

from runner import ShardwiseError, api, api_args

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"model": ["gpt2"]}, "model must be a non-empty string"),
        ({"max_memory": [1]}, "max_memory must be a dict"),
        ({"max_memory": {"cpu": math.nan}}, "max_memory['cpu'] must be a finite size"),
        ({"max_memory": {"cpu": [1]}}, "max_memory['cpu'] must be bytes"),
        ({"overrides": "policy.sessions=2"}, "overrides must be a list"),
        ({"overrides": [3]}, "overrides[0] must be a 'key=value' string"),
        ({"use_cpu": "yes"}, "use_cpu must be True or False"),
        ({"hardware": 5}, "hardware must be a non-empty string"),
        ({"model_path": 3}, "model_path must be a non-empty string"),
        ({"system_prompt": [1]}, "system_prompt must be a string"),
    ],
)
def test_bad_openaichat_arguments_raise_one_error_type_naming_the_argument(kwargs, needle):
    with pytest.raises(ShardwiseError) as caught:
        api.OpenAIChat(**{"model": "gpt2", "use_cpu": True, **kwargs})
    assert needle in str(caught.value)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"model": ["x"]}, "model must be a non-empty string"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"stream": True, "stream_options": [1]}, "stream_options must be a dict"),
        ({"stream": "yes"}, "stream must be True or False"),
        ({"messages": "hi"}, "messages must be a non-empty list"),
        # OpenAI's fields this API cannot honour, and names it does not know, are refused by name (not a TypeError
        # from an inner function, and never silently ignored by a stream)
        ({"tools": [{"type": "function"}]}, "tools is not supported"),
        ({"logprobs": True}, "logprobs is not supported"),
        ({"n": 2}, "n=2 is not supported here"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temprature": 0}, "unknown argument 'temprature': did you mean temperature?"),
        ({"stream": True, "temprature": 0}, "unknown argument 'temprature'"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "disagree"),
    ],
)
def test_bad_create_chat_completion_arguments_raise_one_error_type(kwargs, needle):
    with pytest.raises(ShardwiseError) as caught:
        api.create_chat_completion(**{"model": "gpt2", "messages": MESSAGES, "use_cpu": True, **kwargs})
    assert needle in str(caught.value)


# --- item 5: remote code needs the caller's consent in the Python API too ---


def _remote_code_model(tmp_path) -> tuple:
    """A tiny gpt2 whose config.json points auto_map at a module that leaves a marker file when imported."""
    import json

    from tiny_models import tiny_gpt2

    model = tiny_gpt2(tmp_path, name="remote")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_marker.MarkerModel"}
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "REMOTE_CODE_RAN"
    (model / "modeling_marker.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return model, marker


def _asking(plan, asks: bool = True):
    from dataclasses import replace

    return replace(plan, model=replace(plan.model, trust_remote_code=asks))


def test_openaichat_refuses_a_plan_asking_for_remote_code_without_consent_and_runs_nothing(tmp_path):
    from tiny_models import cpu_plan

    model, marker = _remote_code_model(tmp_path)
    with pytest.raises(ShardwiseError) as caught:
        api.OpenAIChat(plan=_asking(cpu_plan(model)), batching=False)
    assert "model.trust_remote_code=true" in str(caught.value) and "pass trust_remote_code=True" in str(caught.value)
    # overrides cannot consent for a plan made elsewhere (the CLI's plan_file rule)
    with pytest.raises(ShardwiseError):
        api.OpenAIChat(plan=_asking(cpu_plan(model)), overrides=["model.trust_remote_code=true"], batching=False)
    assert not marker.exists()


def test_create_chat_completion_refuses_a_profile_asking_for_remote_code_without_consent(tmp_path, monkeypatch):
    from tiny_models import cpu_plan

    model, marker = _remote_code_model(tmp_path)
    monkeypatch.setattr("planner.config.compose.make_plan", lambda **kw: _asking(cpu_plan(model)))
    monkeypatch.setattr(api, "_CACHE", {})
    with pytest.raises(ShardwiseError) as caught:
        api.create_chat_completion(model="asks-for-code", messages=MESSAGES, use_cpu=True)
    assert "pass trust_remote_code=True" in str(caught.value)
    with pytest.raises(ShardwiseError) as caught:
        api.create_chat_completion(model="asks-for-code", messages=MESSAGES, use_cpu=True, trust_remote_code="yes")
    assert "trust_remote_code must be True or False" in str(caught.value)
    assert not marker.exists() and api._CACHE == {}


def test_consent_never_turns_remote_code_on_for_a_plan_that_does_not_ask(tmp_path):
    from tiny_models import cpu_plan

    model, marker = _remote_code_model(tmp_path)
    chat = api.OpenAIChat(plan=_asking(cpu_plan(model), asks=False), trust_remote_code=True, batching=False)
    assert chat.chat(MESSAGES, max_tokens=2, temperature=0) is not None
    assert type(chat.session.loaded.model).__name__ == "GPT2LMHeadModel" and not marker.exists()


def test_the_api_and_the_cli_share_one_consent_rule():
    from runner.engine.preflight import consents_to_remote_code

    assert consents_to_remote_code(True, [], fresh_plan=False) is True
    assert consents_to_remote_code(False, ["model.trust_remote_code=true"], fresh_plan=True) is True
    assert consents_to_remote_code(False, ["model.trust_remote_code=true"], fresh_plan=False) is False
    assert consents_to_remote_code(False, ["model.trust_remote_code=false"], fresh_plan=True) is False


def test_the_python_api_refuses_more_messages_than_the_servers_default_bound():
    from runner.openai.protocol import MAX_MESSAGES

    many = [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)
    with pytest.raises(ShardwiseError) as caught:
        api.create_chat_completion(model="gpt2", messages=many, use_cpu=True)
    assert f"messages holds {MAX_MESSAGES + 1} messages" in str(caught.value)
    assert len(api_args.checked_messages(many[:MAX_MESSAGES])) == MAX_MESSAGES
