"""The OpenAI contract of `shardwise serve`, checked with the official `openai` client and raw HTTP.

A live uvicorn server on a free loopback port serves a fake ChatSession (tests/server_fakes.py)
so every fault (slow model, full queue, exhausted memory, client gone) can be staged exactly.
The real tiny model is served in tests/test_server_tiny.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
from background_server import BackgroundServer
from openai import OpenAI
from server_fakes import FakeSession

from runner.engine.recovery import MemoryExhaustedError
from runner.engine.types import SamplingParams
from runner.openai.app import ModelSource, ServeSettings, create_app
from runner.openai.protocol import APIError, parse_chat_request

MODEL = "fake-chat"
HELLO = [{"role": "user", "content": "hello there"}]
TIMEOUT_S = 10


@contextmanager
def live_server(session, *, load=None, **settings):
    source = ModelSource(MODEL, load=load or (lambda: session), aliases=("org/fake-chat",), fingerprint="fp_test")
    app = create_app([source], ServeSettings(**settings))
    with BackgroundServer(app) as server:
        if load is None:
            wait_for(lambda: httpx.get(server.url + "/health").status_code == 200)
        yield server


def stream_until(server, leave: threading.Event) -> None:
    """A streaming client that reads a long reply until `leave` is set, then hangs up."""
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S) as response:
        for _ in response.iter_lines():
            if leave.is_set():
                return


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def client_for(server, api_key: str = "unused") -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT_S)


def queued(server) -> int:
    return httpx.get(server.url + "/health", timeout=TIMEOUT_S).json()["queued"][MODEL]


def assert_healthy(server) -> None:
    response = httpx.get(server.url + "/health", timeout=TIMEOUT_S)
    assert response.status_code == 200 and response.json()["status"] == "ok"


def expected(messages, **params) -> str:
    """What the fake replies, computed without the server."""
    return FakeSession().generate(messages, SamplingParams(**params)).text


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


@pytest.fixture(scope="module")
def fake():
    return FakeSession()


@pytest.fixture(scope="module")
def server(fake):
    with live_server(fake, max_body_bytes=4096) as server:
        yield server


@pytest.fixture
def client(server):
    yield client_for(server)
    assert_healthy(server)  # the server survives whatever the test sent


# ----- happy path with the openai client ------------------------------------------------------


def test_non_streaming_reply_is_a_chat_completion_with_usage(client, fake):
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL and reply.system_fingerprint == "fp_test"
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert (choice.index, choice.message.role, choice.finish_reason) == (0, "assistant", "length")
    assert choice.message.content == expected(HELLO, max_tokens=5, temperature=0)
    assert reply.usage.prompt_tokens == fake.prompt_token_count(HELLO)
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_streaming_sends_role_first_one_finish_chunk_then_usage_chunk(client, fake):
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(HELLO, max_tokens=6, temperature=0)
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "length"
    assert not finishing[0].choices[0].delta.content
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 6
    assert usage_chunk.usage.prompt_tokens == fake.prompt_token_count(HELLO)
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, temperature=0, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n2_returns_two_choices_and_choice0_matches_n1_with_same_seed(client):
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=1.0, seed=3, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content != reply.choices[1].message.content
    assert reply.usage.completion_tokens == 16
    single = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=1.0, seed=3)
    assert single.choices[0].message.content == reply.choices[0].message.content


def test_streaming_n2_gives_each_choice_a_role_chunk_and_one_finish_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=4, temperature=1.0, seed=5, n=2, stream=True
        )
    )
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["length"]
        text = "".join(c.delta.content or "" for c in mine)
        assert text == expected(HELLO, max_tokens=4, temperature=1.0, seed=5 + index)


def test_stop_string_is_trimmed_from_reply_and_stream(client):
    full = expected(HELLO, max_tokens=6, temperature=0).split(" ")
    stop = " " + full[2]
    reply = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=0, stop=[stop, "never-there"]
    )
    assert reply.choices[0].message.content == " ".join(full[:2])
    assert reply.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0, stop=stop, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " ".join(full[:2])
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_same_seed_gives_same_reply_and_another_seed_differs(client):
    def ask(seed):
        return (
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=1.0, seed=seed)
            .choices[0]
            .message.content
        )

    assert ask(42) == ask(42)
    assert ask(42) != ask(43)


def test_hub_id_alias_answers_under_the_served_name(client):
    reply = client.chat.completions.create(model="org/fake-chat", messages=HELLO, max_tokens=2)
    assert reply.model == MODEL and reply.choices[0].message.content


def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "shardwise"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ----- errors as the openai client raises them ------------------------------------------------

BAD_REQUESTS = [
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages[0].content[0].image_url",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
        "messages[0].content[0]",
    ),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"extra_body": {"seed": "seven"}}, "seed"),
    ({"extra_body": {"temperature": True}}, "temperature"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
]


@pytest.mark.parametrize("kwargs,param", BAD_REQUESTS, ids=[p for _, p in BAD_REQUESTS])
def test_invalid_request_raises_bad_request_error_naming_the_field(client, kwargs, param):
    body = {"model": MODEL, "messages": HELLO, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_400_context_length_exceeded(client, stream):
    long = [{"role": "user", "content": "word " * 100}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=long, stream=stream)
    assert caught.value.code == "context_length_exceeded"
    assert "64" in caught.value.message


def test_unknown_model_is_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-99", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert MODEL in caught.value.message


def test_oversized_body_is_413(client):
    huge = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=huge)
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"


def test_api_key_is_required_when_configured():
    with live_server(FakeSession(), api_key="sekret") as server:
        with pytest.raises(openai.AuthenticationError) as caught:
            client_for(server, api_key="wrong").chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        assert caught.value.code == "invalid_api_key"
        keyless = httpx.post(
            server.url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO}, timeout=TIMEOUT_S
        )
        assert keyless.status_code == 401 and keyless.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client_for(server, api_key="wrong").models.list()
        reply = client_for(server, api_key="sekret").chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        assert reply.usage.completion_tokens == 2
        assert_healthy(server)  # /health needs no key


def test_memory_exhausted_is_503_and_server_stays_up():
    session = FakeSession(fail_with=MemoryExhaustedError("out of memory after freeing and halving"))
    with live_server(session) as server:
        with pytest.raises(openai.InternalServerError) as caught:
            client_for(server).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        assert caught.value.status_code == 503 and caught.value.code == "memory_exhausted"
        assert "out of memory after freeing" in caught.value.message
        assert_healthy(server)


def test_error_mid_stream_is_an_error_event_then_done():
    session = FakeSession(fail_with=MemoryExhaustedError("exhausted mid-reply"), fail_after_tokens=3)
    with live_server(session) as server:
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 10, "temperature": 0, "stream": True}
        response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S)
        assert response.status_code == 200
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "memory_exhausted" and error["type"] == "server_error"
        assert any(json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2])
        with pytest.raises(openai.APIError, match="exhausted mid-reply"):
            list(client_for(server).chat.completions.create(**body))
        assert_healthy(server)


def test_full_queue_answers_429_and_slots_free_after_clients_leave():
    session = FakeSession(token_delay_s=0.05)
    with live_server(session, max_queue=1) as server:
        leave = threading.Event()

        threads = [threading.Thread(target=stream_until, args=(server, leave), daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()
            time.sleep(0.1)
        try:
            wait_for(lambda: queued(server) == 2)
            with pytest.raises(openai.RateLimitError) as caught:
                client_for(server).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
            assert caught.value.code == "queue_full"
        finally:
            leave.set()
        for thread in threads:
            thread.join(timeout=TIMEOUT_S)
        wait_for(lambda: queued(server) == 0)
        reply = client_for(server).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        assert reply.usage.completion_tokens == 2


def test_health_is_503_until_the_model_is_loaded():
    release = threading.Event()
    session = FakeSession()

    def slow_load():
        release.wait(TIMEOUT_S)
        return session

    with live_server(session, load=slow_load) as server:
        health = httpx.get(server.url + "/health", timeout=TIMEOUT_S)
        assert health.status_code == 503 and health.json()["status"] == "loading"
        assert httpx.get(server.url + "/health/live", timeout=TIMEOUT_S).status_code == 200
        with pytest.raises(openai.InternalServerError) as caught:
            client_for(server).chat.completions.create(model=MODEL, messages=HELLO)
        assert caught.value.status_code == 503 and caught.value.code == "model_not_ready"
        release.set()
        wait_for(lambda: httpx.get(server.url + "/health").status_code == 200)
        assert client_for(server).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).choices


def test_request_over_the_time_limit_is_504_and_is_cancelled():
    session = FakeSession(token_delay_s=0.05)
    with live_server(session, request_timeout_s=0.3) as server:
        with pytest.raises(openai.APIStatusError) as caught:
            client_for(server).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
        assert caught.value.status_code == 504 and caught.value.code == "timeout"
        assert session.cancel_seen.wait(TIMEOUT_S)
        wait_for(lambda: queued(server) == 0)


# ----- raw HTTP --------------------------------------------------------------------------------


def test_sse_framing_is_data_lines_ending_with_done(server):
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]].count("length") == 1
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


ERROR_CASES = [
    ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_type"),
    (
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": HELLO, "temperature": "hot"}).encode(),
        400,
        "invalid_type",
    ),
    ("POST", "/v1/chat/completions", json.dumps({"model": "nope", "messages": HELLO}).encode(), 404, "model_not_found"),
    ("POST", "/v1/chat/completions", b"x" * 5000, 413, "request_too_large"),
    ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed"),
    ("GET", "/v1/no-such-route", b"", 404, "unknown_url"),
    ("POST", "/v1/models", b"", 405, "method_not_allowed"),
]


@pytest.mark.parametrize("method,path,content,status,code", ERROR_CASES, ids=[f"{c[3]}-{c[4]}" for c in ERROR_CASES])
def test_every_error_has_an_openai_error_body(server, method, path, content, status, code):
    response = httpx.request(
        method, server.url + path, content=content, headers={"content-type": "application/json"}, timeout=TIMEOUT_S
    )
    assert response.status_code == status
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert_healthy(server)


def test_client_disconnect_mid_stream_cancels_generation_and_frees_slot():
    session = FakeSession(token_delay_s=0.02)
    with live_server(session, max_queue=0) as server:
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 1000, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S) as response:
            for line in response.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # a real token arrived: hang up mid-reply
        assert session.cancel_seen.wait(TIMEOUT_S)
        wait_for(lambda: queued(server) == 0)
        reply = client_for(server).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        assert reply.usage.completion_tokens == 2


def test_unknown_fields_are_ignored(server):
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 2,
        "some_future_field": {"x": 1},
        "user": "u-1",
        "response_format": {"type": "text"},
    }
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2


def test_one_log_line_per_request_with_tokens_and_timing(client, caplog):
    with caplog.at_level(logging.INFO, logger="shardwise.serve"):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=HELLO)
        wait_for(lambda: len([r for r in caplog.records if "/v1/chat/completions" in r.getMessage()]) >= 2)
    lines = [r.getMessage() for r in caplog.records if "/v1/chat/completions" in r.getMessage()]
    ok = next(line for line in lines if "status=200" in line)
    for field in (
        "id=chatcmpl-",
        f"model={MODEL}",
        "prompt_tokens=",
        "completion_tokens=3",
        "ttft_ms=",
        "tokens_per_s=",
        "duration_ms=",
    ):
        assert field in ok, (field, ok)
    assert any("status=404" in line and "error=model_not_found" in line for line in lines)


# ----- request parsing (no server) ------------------------------------------------------------


def test_parse_maps_developer_to_system_and_joins_text_parts():
    chat = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]},
            ],
        },
        SamplingParams(),
    )
    assert chat.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def test_parse_applies_defaults_and_prefers_max_completion_tokens():
    defaults = SamplingParams(max_tokens=77, temperature=0.3, top_p=0.9, stop=["END"])
    chat = parse_chat_request({"model": "m", "messages": HELLO}, defaults)
    assert (chat.params.max_tokens, chat.params.temperature, chat.params.top_p, chat.params.stop) == (
        77,
        0.3,
        0.9,
        ["END"],
    )
    chat = parse_chat_request(
        {"model": "m", "messages": HELLO, "max_completion_tokens": 5, "stop": "x", "temperature": 0}, defaults
    )
    assert (chat.params.max_tokens, chat.params.stop, chat.params.temperature) == (5, ["x"], 0.0)


def test_parse_refuses_disagreeing_max_tokens():
    with pytest.raises(APIError) as caught:
        parse_chat_request(
            {"model": "m", "messages": HELLO, "max_tokens": 5, "max_completion_tokens": 6}, SamplingParams()
        )
    assert caught.value.status == 400 and caught.value.param == "max_tokens"


def test_choice_seeds_are_consecutive_and_wrap_inside_int64():
    chat = parse_chat_request({"model": "m", "messages": HELLO, "seed": 2**63 - 1, "n": 2}, SamplingParams())
    assert chat.params_for_choice(0).seed == 2**63 - 1
    assert chat.params_for_choice(1).seed == -(2**63)


def test_client_leaving_the_queue_frees_its_slot_at_once():
    session = FakeSession(token_delay_s=0.05)
    with live_server(session, max_queue=1) as server:
        leave = threading.Event()

        runner_thread = threading.Thread(target=stream_until, args=(server, leave), daemon=True)
        runner_thread.start()
        try:
            wait_for(lambda: queued(server) == 1)
            outcome = []

            def impatient_client():
                try:
                    httpx.post(
                        server.url + "/v1/chat/completions",
                        json={"model": MODEL, "messages": HELLO, "max_tokens": 2},
                        timeout=0.5,
                    )
                except httpx.ReadTimeout as exc:  # gives up while still waiting in line
                    outcome.append(exc)

            waiting = threading.Thread(target=impatient_client, daemon=True)
            waiting.start()
            wait_for(lambda: queued(server) == 2)
            waiting.join(timeout=TIMEOUT_S)
            assert outcome, "the waiting request should have timed out on the client side"
            wait_for(lambda: queued(server) == 1, timeout_s=2)  # only the running one is left
            assert len(session.calls) == 1  # the one that left never generated
        finally:
            leave.set()
            runner_thread.join(timeout=TIMEOUT_S)


def test_health_says_which_model_answers_after_a_fallback():
    from types import SimpleNamespace

    session = FakeSession()
    with live_server(session) as server:
        assert httpx.get(server.url + "/health", timeout=TIMEOUT_S).json()["serving"] == {}
        session.loaded = SimpleNamespace(name="smaller-model")  # what the recovery ladder's fallback swaps in
        assert httpx.get(server.url + "/health", timeout=TIMEOUT_S).json()["serving"] == {MODEL: "smaller-model"}
