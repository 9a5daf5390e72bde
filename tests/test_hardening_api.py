"""Python API arguments (issue 10, item 10): every bad argument is one `runner.ShardwiseError` naming it,
raised before anything is planned or loaded (no model is needed to run these)."""

from __future__ import annotations

import math

import pytest

from runner import ShardwiseError, api

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
    ],
)
def test_bad_create_chat_completion_arguments_raise_one_error_type(kwargs, needle):
    with pytest.raises(ShardwiseError) as caught:
        api.create_chat_completion(**{"model": "gpt2", "messages": MESSAGES, "use_cpu": True, **kwargs})
    assert needle in str(caught.value)
