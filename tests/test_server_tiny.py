"""`shardwise serve` with a real model: a tiny Llama (random weights, chat template) on the CPU.

The server path (runner.engine.loader.load -> ChatSession -> create_app) is the one `shardwise serve`
runs; the official `openai` client talks to it on loopback. Replies are gibberish but
deterministic, so the server's output is compared with the session's own, called directly.
"""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from background_server import BackgroundServer
from openai import OpenAI

from runner.engine.types import SamplingParams
from runner.openai.app import ModelSource, ServeSettings, create_app

try:
    from tests.tiny_models import cpu_plan, cpu_serving, tiny_llama
except ImportError:
    from tiny_models import cpu_plan, cpu_serving, tiny_llama

HELLO = [{"role": "user", "content": "hello world, how are you today?"}]
CONTEXT_TOKENS = 128
TIMEOUT_S = 30


@pytest.fixture(scope="module", params=["sequential", "batched"])
def session(request, tmp_path_factory):
    """Every test runs twice: one request at a time, and on the continuous batching engine."""
    from runner.engine.batching import attach
    from runner.engine.loader import load
    from runner.engine.session import ChatSession

    model_dir = tiny_llama(tmp_path_factory.mktemp("models"))
    plan = cpu_plan(model_dir, context_tokens=CONTEXT_TOKENS, max_new_tokens=32)
    loaded = load(plan, log=lambda line: None)
    if request.param == "batched":
        assert attach(loaded, cpu_serving(model_dir, context_tokens=CONTEXT_TOKENS), log=lambda line: None)
    yield ChatSession(loaded, defaults=SamplingParams(max_tokens=16), plan=plan, on_notice=lambda line: None)
    if loaded.batching is not None:
        loaded.batching.close()


@pytest.fixture(scope="module")
def server(session):
    app = create_app(
        [ModelSource(session.plan.model.name, load=lambda: session, fingerprint=session.plan.fingerprint)],
        ServeSettings(),
    )
    with BackgroundServer(app) as server:
        ready = threading.Event()
        for _ in range(500):
            if httpx.get(server.url + "/health", timeout=TIMEOUT_S).status_code == 200:
                ready.set()
                break
            ready.wait(0.02)
        assert ready.is_set()
        yield server


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def model(session):
    return session.plan.model.name


def test_greedy_reply_matches_the_session_and_stream_matches_reply(client, session, model):
    direct = session.generate(HELLO, SamplingParams(max_tokens=12, temperature=0))
    reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == direct.text
    assert reply.usage.prompt_tokens == session.prompt_token_count(HELLO) == direct.usage.prompt_tokens
    assert reply.usage.completion_tokens == direct.usage.completion_tokens
    assert reply.system_fingerprint == "hw-test-cpu"
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=HELLO,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.text
    assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens


def test_seeded_sampling_is_reproducible_and_n2_choices_follow_seed_plus_index(client, session, model):
    def ask(**kwargs):
        return client.chat.completions.create(model=model, messages=HELLO, max_tokens=10, temperature=1.0, **kwargs)

    first, again = ask(seed=11), ask(seed=11)
    assert first.choices[0].message.content == again.choices[0].message.content
    pair = ask(seed=11, n=2)
    assert [c.message.content for c in pair.choices] == [
        first.choices[0].message.content,
        ask(seed=12).choices[0].message.content,
    ]


def test_stop_string_from_the_middle_of_a_reply_is_trimmed(client, session, model):
    full = session.generate(HELLO, SamplingParams(max_tokens=20, temperature=0)).text
    assert len(full) >= 6, full
    stop = full[3:6]
    prefix = full[: full.find(stop)]
    reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=20, temperature=0, stop=[stop])
    assert reply.choices[0].message.content == prefix
    assert reply.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(
            model=model, messages=HELLO, max_tokens=20, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == prefix


def test_prompt_longer_than_context_is_context_length_exceeded(client, model, server):
    long = [{"role": "user", "content": "one two three four five six seven " * 40}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=long, max_tokens=4)
    assert caught.value.code == "context_length_exceeded"
    assert str(CONTEXT_TOKENS) in caught.value.message
    assert httpx.get(server.url + "/health", timeout=TIMEOUT_S).status_code == 200


PROMPTS = ["hello world", "the quick brown fox", "one two three four", "what is the capital of France?"]


def test_concurrent_streams_equal_the_direct_replies_and_metrics_count_them(client, session, model, server):
    """Four streaming clients at once (one batch under batching); /metrics counts their tokens, vLLM-style."""
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    direct = [session.generate(m, SamplingParams(max_tokens=10, temperature=0)) for m in messages]
    texts = [None] * len(messages)

    def ask(i):
        stream = client.chat.completions.create(
            model=model, messages=messages[i], max_tokens=10, temperature=0, stream=True
        )
        texts[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(messages))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT_S)
    assert texts == [d.text for d in direct]
    text = httpx.get(server.url + "/metrics", timeout=TIMEOUT_S).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")
    }
    label = f'{{model_name="{model}"}}'
    assert samples[f"shardwise:generation_tokens_total{label}"] >= sum(d.usage.completion_tokens for d in direct)
    assert samples[f"shardwise:time_to_first_token_seconds_count{label}"] >= len(messages)
    assert samples[f"shardwise:num_requests_running{label}"] == 0
    engine = session.loaded.batching
    assert samples[f"shardwise:kv_cache_blocks{label}"] == (engine.serving.num_blocks if engine else 0)
    assert "# TYPE shardwise:e2e_request_latency_seconds histogram" in text


def test_a_small_request_is_answered_at_once_after_an_abandoned_three_thousand_message_request(server, client, model):
    """Issue 10: fitting a huge conversation is linear and cancellable, so it cannot hold the queue."""
    import time

    def small_request_s() -> float:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=4, temperature=0)
        assert reply.choices[0].message.content is not None
        return time.perf_counter() - started

    unloaded_s = small_request_s()  # the same request on the same machine, just before
    huge = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(3001)]
    body = {"model": model, "messages": huge, "max_tokens": 4, "temperature": 0}
    try:
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.05)  # the client gives up
    except httpx.TimeoutException:
        pass
    after_s = small_request_s()
    # Relative, not absolute: a machine's load slows both requests alike. Holding the queue for the whole
    # huge request (fitting 3001 messages one by one took minutes) would be far beyond this.
    assert after_s < 10 * unloaded_s + 1.0, f"{after_s:.2f} s after, {unloaded_s:.2f} s before"


def _sequential_reply(session, max_tokens: int):
    """The greedy reply on the sequential path (generate() alone), whichever way the server runs."""
    engine, session.loaded.batching = session.loaded.batching, None
    try:
        return session.generate(HELLO, SamplingParams(max_tokens=max_tokens, temperature=0))
    finally:
        session.loaded.batching = engine


def test_n3_greedy_choices_each_equal_the_direct_reply_and_run_in_one_batch(client, session, model):
    """n=3 greedy: every choice is the sequential path's greedy reply (under batching the three share the batch),
    in index order, usage summed."""
    direct = _sequential_reply(session, 32)
    turns = session.telemetry.totals["turns"]
    reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=32, temperature=0, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == [direct.text] * 3
    assert reply.usage.prompt_tokens == direct.usage.prompt_tokens
    assert reply.usage.completion_tokens == 3 * direct.usage.completion_tokens
    assert session.telemetry.totals["turns"] == turns + 3
    sizes = [t["batch_size"] for t in list(session.telemetry.turns)[-3:]]
    if session.loaded.batching is not None:
        assert max(sizes) > 1  # the choices generated together
    else:
        assert sizes == [1, 1, 1]


def test_n3_streamed_chunks_carry_their_choice_index(client, session, model):
    direct = _sequential_reply(session, 32)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=HELLO,
            max_tokens=32,
            temperature=0,
            n=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    by_index: dict[int, list] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index.setdefault(choice.index, []).append(choice)
    assert sorted(by_index) == [0, 1, 2]
    for parts in by_index.values():
        assert parts[0].delta.role == "assistant"
        assert "".join(p.delta.content or "" for p in parts) == direct.text
        assert parts[-1].finish_reason in ("stop", "length")
        assert [p for p in parts if p.finish_reason] == [parts[-1]]  # one finish chunk, the choice's last
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3 * direct.usage.completion_tokens


def test_a_client_gone_cancels_every_choice_of_its_n3_request(server, session, model):
    """The batch is paused so all three choices sit inside it; the client leaves: all three leave the batch,
    free their blocks, and end cancelled with no tokens."""
    import json
    import socket
    import time

    engine = session.loaded.batching
    if engine is None:
        pytest.skip("sequential: the choices run one after another (a cancel stops the loop over them)")

    def block_owners() -> set:
        cache = engine._manager.batch_processor.cache
        return {rid for allocator in cache.cache_allocators.values() for rid in allocator.block_table}

    body = json.dumps({"model": model, "messages": HELLO, "max_tokens": 32, "temperature": 0, "n": 3, "stream": True})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {server.host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n{body}"
    ).encode()

    def wait_until(condition) -> bool:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        return condition()

    turns = session.telemetry.totals["turns"]
    with engine.exclusive():
        sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT_S)
        sock.sendall(request)
        assert wait_until(lambda: engine.stats()["running"] == 3)  # all three choices admitted at once
        sock.close()
        assert wait_until(lambda: engine.stats()["running"] == 0)
    assert wait_until(lambda: session.telemetry.totals["turns"] == turns + 3)
    assert wait_until(lambda: not block_owners())
    ended = list(session.telemetry.turns)[-3:]
    assert [(t["finish_reason"], t["completion_tokens"]) for t in ended] == [("cancelled", 0)] * 3
    assert httpx.get(server.url + "/health", timeout=TIMEOUT_S).json()["queued"] == {model: 0}


def test_every_forward_pass_runs_on_a_long_lived_thread_the_engine_owns(client, session, model):
    """Issue 13's slow state: streamed requests generated on a new thread each, and once the worker had run a
    non-streaming request every later stream ran ~1.55x slower (OpenMP threads parked across many Python
    threads). Whatever the request (non-streaming, streaming, seeded sampling that runs alone beside the
    batch, several at once), the model's forward passes run on the same few threads, still alive afterwards:
    the model worker's, and the batching loop's when there is one."""
    generating: set[threading.Thread] = set()
    embeddings = session.loaded.model.get_input_embeddings()  # a submodule: called on every forward pass
    hook = embeddings.register_forward_pre_hook(lambda module, args: generating.add(threading.current_thread()))

    def streamed(**sampling) -> str:
        chunks = client.chat.completions.create(model=model, messages=HELLO, max_tokens=4, stream=True, **sampling)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def round_of_requests() -> None:
        client.chat.completions.create(model=model, messages=HELLO, max_tokens=4, temperature=0)
        for _ in range(3):
            streamed(temperature=0)
        streamed(temperature=0.8, seed=5)  # seeded sampling: the sequential path even on a batching engine
        pair = [threading.Thread(target=streamed, kwargs={"temperature": 0}) for _ in range(2)]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join(timeout=TIMEOUT_S)

    try:
        for _ in range(2):
            round_of_requests()
    finally:
        hook.remove()
    engine = session.loaded.batching
    loop = {engine._manager._generation_thread} if engine is not None else set()  # transformers' batching loop
    workers = {t for t in generating if t.name.startswith(f"shardwise-generate-{model}-")}  # runner.openai.queue
    assert generating == workers | loop, [t.name for t in generating - workers - loop]
    assert 1 <= len(workers) <= (engine.admission.slots if engine is not None else 1)
    assert all(thread.is_alive() for thread in generating), [t.name for t in generating if not t.is_alive()]
