"""Server hardening (issue 10, item 9): odd roles and lone surrogates are 400s, request paths cannot forge log
lines, and an empty serve.host is refused instead of binding every interface."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from server_fakes import FakeSession
from test_server import MODEL, live_server

from planner.errors import ShardwiseError


@pytest.fixture(scope="module")
def server():
    with live_server(FakeSession()) as server:
        yield server


@pytest.mark.parametrize("role", [["user"], {"r": "user"}, 7, None])
def test_a_role_that_is_not_a_string_is_a_400_naming_the_field(server, role):
    body = {"model": MODEL, "messages": [{"role": role, "content": "hi"}], "max_tokens": 2}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[0].role"


def test_a_lone_surrogate_in_content_is_a_400(server):
    raw = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi \ud800"}], "max_tokens": 2})
    assert "\\ud800" in raw  # json.dumps writes the lone surrogate as an escape
    response = httpx.post(
        server.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[0].content" and "surrogate" in error["message"]


@pytest.mark.parametrize(
    "field, value",
    [("model", "\ud800"), ("model", "x\udfffy"), ("stop", ["a", 5, "\ud800"]), ("response_format", {"type": "\ud800"})],
)
def test_an_error_that_quotes_a_lone_surrogate_is_still_an_openai_error_body(server, field, value, caplog):
    """An error message quoting the request (an unknown model's name, a bad stop) renders even when what it quotes
    cannot be encoded as UTF-8: the right 4xx with the surrogate escaped, no 500 and nothing in the log."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
    with caplog.at_level(logging.ERROR):
        response = httpx.post(
            server.url + "/v1/chat/completions",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
            timeout=10,
        )
    assert response.status_code in (400, 404), response.text
    assert "\\ud" in response.json()["error"]["message"]  # written as its escape, readable
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_request_path_cannot_forge_a_log_line(server, caplog):
    with caplog.at_level(logging.INFO, logger="shardwise.serve"):
        httpx.get(server.url + "/v1/x%0A[forged] GET /health status=200", timeout=10)
        httpx.get(server.url + "/health", timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "shardwise.serve"]
    assert lines and all("\n" not in line for line in lines)
    assert any("\\n[forged]" in line for line in lines)


def test_an_empty_serve_host_is_refused(monkeypatch):
    from test_server_cli import compose_serve

    from shardwise.verbs import serve as serve_cli

    with pytest.raises(ShardwiseError, match="serve.host is empty"):
        serve_cli.settings_from_config(compose_serve(["hardware=cpu", "serve.host="]))


def test_more_messages_than_serve_max_messages_is_a_400_naming_messages(server):
    many = [{"role": "user", "content": "hi"}] * 4097  # the default bound is 4096
    response = httpx.post(
        server.url + "/v1/chat/completions", json={"model": MODEL, "messages": many, "max_tokens": 2}, timeout=10
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and error["code"] == "too_many_messages" and "4097" in error["message"]


def test_serve_max_messages_sets_the_bound():
    from test_server import live_server

    with live_server(FakeSession(context_tokens=1000), max_messages=3) as small:
        url = small.url + "/v1/chat/completions"
        three = [{"role": "user", "content": "hi"}] * 3
        assert httpx.post(url, json={"model": MODEL, "messages": three, "max_tokens": 2}, timeout=10).status_code == 200
        response = httpx.post(url, json={"model": MODEL, "messages": [*three, three[0]], "max_tokens": 2}, timeout=10)
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_serve_config_reads_and_range_checks_the_message_and_stall_bounds():
    from test_server_cli import compose_serve

    from shardwise.verbs import serve as serve_cli

    settings, _ = serve_cli.settings_from_config(
        compose_serve(["hardware=cpu", "serve.max_messages=10", "serve.stream_stall_timeout_s=2.5"])
    )
    assert settings.max_messages == 10 and settings.stream_stall_timeout_s == 2.5
    defaults, _ = serve_cli.settings_from_config(compose_serve(["hardware=cpu"]))
    assert defaults.max_messages == 4096 and defaults.stream_stall_timeout_s == 30.0
    with pytest.raises(ShardwiseError, match="serve.max_messages=0 is out of range"):
        serve_cli.settings_from_config(compose_serve(["hardware=cpu", "serve.max_messages=0"]))
    with pytest.raises(ShardwiseError, match="serve.stream_stall_timeout_s=-1.0 is out of range"):
        serve_cli.settings_from_config(compose_serve(["hardware=cpu", "serve.stream_stall_timeout_s=-1"]))


def test_with_a_key_set_unknown_urls_and_methods_and_doubled_keys_are_401_without_the_key():
    """Without the key a client cannot map the server (404 for unknown URLs, 405 for wrong methods were answered
    before the key was checked), and two Authorization headers, which a proxy and this server may read differently,
    are refused even when one holds the key. With the key, 404 and 405 answer as before; /health stays open."""
    with live_server(FakeSession(), api_key="k3y") as keyed:
        good = {"authorization": "Bearer k3y"}
        for method, path in [("GET", "/nope"), ("POST", "/v1/completions"), ("DELETE", "/v1/models")]:
            keyless = httpx.request(method, keyed.url + path, timeout=10)
            assert keyless.status_code == 401 and keyless.json()["error"]["code"] == "invalid_api_key", keyless.text
            keyed_answer = httpx.request(method, keyed.url + path, headers=good, timeout=10)
            assert keyed_answer.status_code in (404, 405) and "error" in keyed_answer.json()
        doubled = [("authorization", "Bearer k3y"), ("authorization", "Bearer other")]
        for headers in (doubled, doubled[::-1]):
            response = httpx.get(keyed.url + "/v1/models", headers=headers, timeout=10)
            assert response.status_code == 401 and "2 Authorization headers" in response.json()["error"]["message"]
        assert httpx.get(keyed.url + "/v1/models", headers=good, timeout=10).status_code == 200
        assert httpx.get(keyed.url + "/health", timeout=10).status_code == 200
