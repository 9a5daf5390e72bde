"""The batching engine (transformers' continuous batching under a ChatSession): it changes nothing but speed.

Greedy replies equal the sequential path token for token, per-request sampling settings hold inside one
batch, a cancelled request leaves the batch and frees its blocks at once, and a full line is refused.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from tiny_models import cpu_plan, cpu_serving, tiny_llama

from runner.engine.batching import QueueFull, attach, cannot_attach
from runner.engine.session import ChatSession
from runner.engine.types import SamplingParams

PROMPTS = [
    "hello world",
    "the quick brown fox jumps",
    "one two three",
    "what is the capital of France?",
    "memory tokens context",
    "STOP stop END",
]


def serving_for(model_dir, sessions: int, context: int = 256):
    return cpu_serving(model_dir, sessions=sessions, context_tokens=context)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("batching-models"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    from runner.engine.loader import load

    loaded = load(cpu_plan(model_dir, max_new_tokens=256), log=lambda line: None)
    yield loaded
    if loaded.batching is not None:
        loaded.batching.close()


@pytest.fixture
def engine(loaded, model_dir):
    engine = attach(loaded, serving_for(model_dir, sessions=4), max_waiting=8, log=lambda line: None)
    assert engine is not None
    yield engine
    engine.close()
    loaded.batching = None


def _ask(session, prompt, params):
    return session.generate([{"role": "user", "content": prompt}], params)


def _concurrently(calls):
    results = [None] * len(calls)
    errors = []

    def run(i):
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


@pytest.mark.slow
def test_greedy_batched_equals_sequential_token_for_token(loaded, model_dir):
    session = ChatSession(loaded, defaults=SamplingParams(max_tokens=40, temperature=0))
    sequential = [_ask(session, p, None) for p in PROMPTS]
    engine = attach(loaded, serving_for(model_dir, sessions=4), log=lambda line: None)
    try:
        batched = _concurrently([lambda p=p: _ask(session, p, None) for p in PROMPTS])
    finally:
        engine.close()
        loaded.batching = None
    for alone, together in zip(sequential, batched):
        assert together.token_ids == alone.token_ids
        assert together.text == alone.text
        assert together.usage == alone.usage
        assert together.finish_reason == alone.finish_reason
    assert max(c.batch_size for c in batched) > 1  # they really ran together


def test_mixed_sampling_settings_in_one_batch(loaded, engine):
    """Greedy, near-greedy top_p and hot sampling share a batch; each request keeps its own settings."""
    session = ChatSession(loaded, defaults=SamplingParams(max_tokens=32, temperature=0))
    engine_off = loaded.batching
    loaded.batching = None
    greedy = _ask(session, PROMPTS[0], None)
    loaded.batching = engine_off
    calls = [
        lambda: _ask(session, PROMPTS[0], SamplingParams(max_tokens=32, temperature=0)),
        lambda: _ask(session, PROMPTS[0], SamplingParams(max_tokens=32, temperature=1.0, top_p=1e-6)),
        lambda: _ask(session, PROMPTS[0], SamplingParams(max_tokens=32, temperature=5.0, top_p=1.0)),
        lambda: _ask(session, PROMPTS[0], SamplingParams(max_tokens=32, temperature=5.0, top_p=1.0)),
    ]
    plain, narrow, hot1, hot2 = _concurrently(calls)
    assert plain.token_ids == greedy.token_ids
    assert narrow.token_ids == greedy.token_ids  # top_p keeps only the most likely token
    assert hot1.token_ids != greedy.token_ids and hot2.token_ids != greedy.token_ids
    assert hot1.token_ids != hot2.token_ids
    assert max(c.batch_size for c in (plain, narrow, hot1, hot2)) > 1


@pytest.mark.parametrize("temperature", [1e-320, 1e-40, 5e-6])
def test_a_tiny_positive_temperature_is_greedy_on_both_paths_and_leaves_the_batch_up(loaded, engine, temperature):
    """A temperature that passes the 0..2 range yet overflows the logits when divided by (1e-320) samples greedily,
    batched and alone (seeded), instead of failing with NaN probabilities and stopping the batch under everyone."""
    session = ChatSession(loaded, defaults=SamplingParams(max_tokens=12, temperature=0))
    engine_off, loaded.batching = loaded.batching, None
    greedy = _ask(session, PROMPTS[3], None)
    loaded.batching = engine_off
    batched = _ask(session, PROMPTS[3], SamplingParams(max_tokens=12, temperature=temperature))
    alone = _ask(session, PROMPTS[3], SamplingParams(max_tokens=12, temperature=temperature, seed=3))
    assert batched.token_ids == greedy.token_ids and alone.token_ids == greedy.token_ids
    assert engine.usable and engine._restarts == 0  # the loop never died


def test_seeded_sampling_runs_alone_and_repeats(loaded, engine):
    """A seed cannot be honoured inside a shared batch, so it takes the sequential path and is reproducible."""
    session = ChatSession(loaded, defaults=SamplingParams(max_tokens=24, temperature=1.0))
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=7)
    assert "seed" in engine.batchable(params)
    first, second = _ask(session, PROMPTS[1], params), _ask(session, PROMPTS[1], params)
    assert first.token_ids == second.token_ids
    assert first.batch_size == 1
    assert engine.batchable(SamplingParams(presence_penalty=0.5)) is not None


def test_stop_string_under_batching(loaded, engine):
    session = ChatSession(loaded, defaults=SamplingParams(max_tokens=40, temperature=0))
    engine_off, loaded.batching = loaded.batching, None
    reference = _ask(session, PROMPTS[2], None)
    loaded.batching = engine_off
    stop = reference.text[6:9]
    assert stop and reference.text.find(stop) == 6
    stream = session.stream(
        [{"role": "user", "content": PROMPTS[2]}], SamplingParams(max_tokens=40, temperature=0, stop=[stop])
    )
    text = "".join(stream)
    assert text == reference.text[:6]
    assert stream.completion.finish_reason == "stop"


def _block_owners(engine) -> set[str]:
    cache = engine._manager.batch_processor.cache
    return {rid for allocator in cache.cache_allocators.values() for rid in allocator.block_table}


def test_cancel_mid_batch_frees_blocks_and_the_rest_finish(loaded, engine):
    session = ChatSession(loaded, defaults=SamplingParams(max_tokens=200, temperature=0))
    engine_off, loaded.batching = loaded.batching, None
    reference = _ask(session, PROMPTS[3], SamplingParams(max_tokens=200, temperature=0))
    loaded.batching = engine_off
    keeper = []
    worker = threading.Thread(
        target=lambda: keeper.append(_ask(session, PROMPTS[3], SamplingParams(max_tokens=200, temperature=0)))
    )
    worker.start()
    stream = session.stream([{"role": "user", "content": PROMPTS[0]}], SamplingParams(max_tokens=200, temperature=0))
    for _ in range(3):
        next(stream)
    stream.close()
    assert stream.completion.finish_reason == "cancelled"
    assert stream.completion.usage.completion_tokens < 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _block_owners(engine) <= set(engine._routes):
        time.sleep(0.005)
    assert _block_owners(engine) <= set(engine._routes)  # the cancelled request holds no block any more
    worker.join(timeout=60)
    assert keeper[0].token_ids == reference.token_ids
    assert engine.stats()["running"] == 0


def test_full_line_is_refused(loaded, model_dir):
    engine = attach(loaded, serving_for(model_dir, sessions=1), max_waiting=1, log=lambda line: None)
    try:
        session = ChatSession(loaded, defaults=SamplingParams(max_tokens=200, temperature=0))
        running = session.stream([{"role": "user", "content": PROMPTS[0]}])
        next(running)  # holds the only slot
        waiting = session.stream([{"role": "user", "content": PROMPTS[1]}])
        deadline = time.monotonic() + 5
        while engine.admission.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.admission.waiting == 1
        with pytest.raises(QueueFull, match="serve.max_queue=1"):
            _ask(session, PROMPTS[2], None)
        assert engine.stats()["rejected"] == 1
        running.close()
        assert "".join(waiting)  # the waiting request gets the slot and finishes
    finally:
        engine.close()
        loaded.batching = None


def test_plans_that_cannot_batch_are_served_sequentially(loaded, model_dir):
    serving = serving_for(model_dir, sessions=2)
    assert cannot_attach(loaded, None).startswith("the plan has no serving block")
    assert "offloaded" in cannot_attach(loaded, replace(serving, mode="sequential", reason="layers are offloaded"))
    assert "eager" in cannot_attach(loaded, replace(serving, attn_implementation="eager"))
    assert attach(loaded, None, log=lambda line: None) is None
    assert loaded.batching is None


@pytest.mark.slow
def test_python_api_submits_concurrently_into_one_batch(model_dir):
    """OpenAIChat with a plan for 4 sessions batches calls from several threads; replies equal one-at-a-time ones."""
    from runner.api import OpenAIChat

    chat = OpenAIChat(
        model_path=str(model_dir), use_cpu=True, overrides=["policy.sessions=4"], notice=lambda line: None
    )
    engine = chat.session.loaded.batching
    try:
        assert engine is not None and engine.admission.slots == 4
        chat.session.loaded.batching = None
        alone = [chat.completion([{"role": "user", "content": p}], max_tokens=16, temperature=0) for p in PROMPTS[:4]]
        chat.session.loaded.batching = engine
        together = _concurrently(
            [
                lambda p=p: chat.completion([{"role": "user", "content": p}], max_tokens=16, temperature=0)
                for p in PROMPTS[:4]
            ]
        )
        assert [c.token_ids for c in together] == [c.token_ids for c in alone]
        assert max(c.batch_size for c in together) > 1
    finally:
        engine.close()


@pytest.mark.parametrize(
    "failure,status,code",
    [
        (QueueFull("1 request(s) generating and 1 waiting (serve.max_queue=1)"), 429, "queue_full"),
        ("batching_stopped", 503, "batching_stopped"),
    ],
)
def test_server_answers_a_full_batch_line_429_and_a_dead_loop_503(failure, status, code):
    """Over real HTTP: the batch's own line refusing a request is a 429, a batching loop that died is a 503,
    each with an OpenAI error body, and the server keeps answering."""
    import httpx
    from background_server import BackgroundServer
    from server_fakes import FakeSession

    from runner.engine.batching import BatchingStopped
    from runner.openai.app import ModelSource, ServeSettings, create_app

    if failure == "batching_stopped":
        failure = BatchingStopped("the batching loop died 3 times: serving sequentially")
    session = FakeSession(fail_with=failure)
    app = create_app([ModelSource("fake-chat", load=lambda: session)], ServeSettings())
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with BackgroundServer(app) as server:
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the fake model never loaded"
            time.sleep(0.02)
        answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["code"] == code and str(failure) in error["message"]
        assert set(error) >= {"message", "type", "param", "code"}
        assert httpx.get(server.url + "/health/live", timeout=10).status_code == 200


def test_python_api_create_and_stream_from_four_threads_share_the_batch(model_dir):
    """OpenAIChat.create / .stream called from four threads at once on one instance (a plan for auto sessions):
    every answer equals its one-at-a-time answer, the calls generate together, and the telemetry counts each turn."""
    from runner.api import OpenAIChat

    chat = OpenAIChat(
        model_path=str(model_dir), use_cpu=True, overrides=["policy.sessions=auto"], notice=lambda line: None
    )
    engine = chat.session.loaded.batching
    try:
        assert engine is not None and engine.admission.slots == chat.plan.limits.sessions > 1
        asks = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
        chat.session.loaded.batching = None
        alone = [chat.create(m, max_tokens=24, temperature=0) for m in asks]
        chat.session.loaded.batching = engine
        turns = chat.session.telemetry.totals["turns"]

        def streamed(messages) -> str:
            return "".join(
                c["choices"][0]["delta"].get("content") or ""
                for c in chat.stream(messages, 24, temperature=0)
                if c["choices"]
            )

        started = time.monotonic()
        together = _concurrently(
            [
                lambda: chat.create(asks[0], max_tokens=24, temperature=0),
                lambda: streamed(asks[1]),
                lambda: chat.create(asks[2], max_tokens=24, temperature=0),
                lambda: streamed(asks[3]),
            ]
        )
        assert time.monotonic() - started < 300  # a hang guard: a deadlocked batch never returns
        texts = [a["choices"][0]["message"]["content"] for a in alone]
        assert [
            together[0]["choices"][0]["message"]["content"],
            together[1],
            together[2]["choices"][0]["message"]["content"],
            together[3],
        ] == texts
        assert chat.session.telemetry.totals["turns"] == turns + 4
        assert max(t["batch_size"] for t in list(chat.session.telemetry.turns)[-4:]) > 1
        assert engine.stats()["running"] == 0
    finally:
        engine.close()


def test_python_api_without_batching_serializes_concurrent_calls_safely(model_dir):
    """A plan for one session has no batching engine: calls from four threads run one at a time, each as alone."""
    from runner.api import OpenAIChat

    chat = OpenAIChat(model_path=str(model_dir), use_cpu=True, notice=lambda line: None)
    assert chat.plan.limits.sessions == 1 and chat.session.loaded.batching is None
    asks = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
    alone = [chat.completion(m, max_tokens=16, temperature=0) for m in asks]
    together = _concurrently([lambda m=m: chat.completion(m, max_tokens=16, temperature=0) for m in asks])
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [c.batch_size for c in together] == [1, 1, 1, 1]
