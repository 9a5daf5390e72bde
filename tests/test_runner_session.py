"""ChatSession on tiny random models: templates, context window, stops, sampling, usage, streaming."""

from __future__ import annotations

import threading
import time

import pytest
from tiny_models import cpu_plan, tiny_gpt2, tiny_llama

from runner.engine.loader import load
from runner.engine.session import FALLBACK_TEMPLATE, ChatSession, ContextLengthError
from runner.engine.types import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0)
HELLO = [{"role": "user", "content": "hello world, how are you today?"}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": tiny_llama(root), "gpt2": tiny_gpt2(root)}


@pytest.fixture(scope="module")
def llama(dirs):
    return load(cpu_plan(dirs["llama"]), log=lambda line: None)


@pytest.fixture(scope="module")
def gpt2(dirs):
    return load(cpu_plan(dirs["gpt2"]), log=lambda line: None)


def session(loaded, plan=None, **kw):
    return ChatSession(loaded, defaults=GREEDY, plan=plan, on_notice=lambda line: None, **kw)


def test_model_chat_template_renders_the_prompt(llama):
    s = session(llama)
    expected = llama.tokenizer.apply_chat_template(HELLO, tokenize=True, add_generation_prompt=True)
    expected = list(expected["input_ids"]) if hasattr(expected, "keys") else list(expected)
    assert s.fit_prompt(HELLO, 8)[0] == expected
    assert s.template_stops == ()


def test_model_without_template_gets_the_plain_fallback(gpt2):
    s = session(gpt2)
    assert s.template == FALLBACK_TEMPLATE
    ids, _ = s.fit_prompt([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], 8)
    assert gpt2.tokenizer.decode(ids) == "System: be brief\n\nUser: hi\n\nAssistant:"
    assert "\nUser:" in s.template_stops


def test_profile_chat_template_wins_over_the_fallback(dirs, gpt2):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    s = session(gpt2, plan=cpu_plan(dirs["gpt2"], chat_template=template))
    assert gpt2.tokenizer.decode(s.fit_prompt([{"role": "user", "content": "hi"}], 8)[0]) == "<user>hi<assistant>"


def test_system_prompt_is_prepended_once(llama):
    s = session(llama, system_prompt="be brief")
    with_system = [{"role": "system", "content": "be brief"}, *HELLO]
    assert s.prompt_token_count(HELLO) == s.prompt_token_count(with_system)


def test_oldest_turns_are_dropped_to_fit_the_context(dirs, llama):
    s = session(llama, plan=cpu_plan(dirs["llama"], context_tokens=96))
    long_turns = []
    for i in range(6):
        long_turns += [
            {"role": "user", "content": f"question {i}: the quick brown fox jumps over the lazy dog"},
            {"role": "assistant", "content": "one two three four five six seven eight nine ten"},
        ]
    messages = [{"role": "system", "content": "be brief"}, *long_turns, {"role": "user", "content": "last one"}]
    ids, dropped = s.fit_prompt(messages, 16)
    assert dropped >= 2 and len(ids) + 16 <= 96
    text = llama.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nbe brief") and "last one" in text and "question 0" not in text
    completion = s.generate(messages, SamplingParams(max_tokens=16, temperature=0))
    assert completion.usage.prompt_tokens == len(ids) and any("dropped" in n for n in completion.notices)


def test_single_message_longer_than_the_context_raises(dirs, llama):
    s = session(llama, plan=cpu_plan(dirs["llama"], context_tokens=32))
    with pytest.raises(ContextLengthError, match="context window holds 32"):
        s.generate([{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 8}])


def test_max_tokens_is_capped_by_the_room_left_in_the_context(dirs, llama):
    s = session(llama, plan=cpu_plan(dirs["llama"], context_tokens=40, max_new_tokens=1000))
    prompt = s.prompt_token_count(HELLO)
    completion = s.generate(HELLO, SamplingParams(max_tokens=500, temperature=0))
    assert completion.usage.total_tokens <= 40 and completion.usage.prompt_tokens == prompt


def _clean_substring(text: str, start: int, length: int) -> str:
    """The first `length` characters from `start` on without a replacement character (random weights emit bytes)."""
    for at in range(start, len(text) - length + 1):
        piece = text[at : at + length]
        if "\ufffd" not in piece and text.find(piece) == at:
            return piece
    raise AssertionError(f"no usable stop string in the reference text {text!r}")


def test_stop_string_trims_the_reply_and_reports_stop(llama):
    s = session(llama)
    reference = s.generate(HELLO, SamplingParams(max_tokens=20, temperature=0)).text
    stop = _clean_substring(reference, 6, 2)
    stopped = s.generate(HELLO, SamplingParams(max_tokens=20, temperature=0, stop=[stop]))
    assert stopped.text == reference[: reference.find(stop)]
    assert stopped.finish_reason == "stop"


def test_stop_string_straddling_the_prompt_boundary_does_not_trigger(llama):
    s = session(llama)
    reference = s.generate(HELLO, SamplingParams(max_tokens=20, temperature=0))
    straddling = "assistant\n" + reference.text[:2]  # prompt ends with "<|im_start|>assistant\n"
    assert straddling not in reference.text
    again = s.generate(HELLO, SamplingParams(max_tokens=20, temperature=0, stop=[straddling]))
    assert again.token_ids == reference.token_ids and again.finish_reason == reference.finish_reason


def test_streamed_deltas_equal_the_non_streamed_text_with_a_stop(llama):
    s = session(llama)
    reference = s.generate(HELLO, SamplingParams(max_tokens=20, temperature=0)).text
    params = SamplingParams(max_tokens=20, temperature=0, stop=[_clean_substring(reference, 9, 3)])
    plain = s.generate(HELLO, params)
    stream = s.stream(HELLO, params)
    joined = "".join(stream)
    assert joined == plain.text and stream.completion.token_ids == plain.token_ids


def test_streaming_and_non_streaming_produce_the_same_ids(llama):
    s = session(llama)
    params = SamplingParams(max_tokens=16, temperature=0)
    stream = s.stream(HELLO, params)
    deltas = list(stream)
    assert stream.completion.token_ids == s.generate(HELLO, params).token_ids
    assert "".join(deltas) == stream.completion.text


def test_streams_generate_on_one_long_lived_thread_of_the_session(llama):
    """Issue 13: a thread per stream left OpenMP threads parked across many Python threads, and once another
    thread had generated, every later streamed turn ran ~1.5x slower. After a non-streaming turn (on the
    caller's thread), a session's streams all generate on one thread that outlives them."""
    s = session(llama)
    generating: set[threading.Thread] = set()
    embeddings = llama.model.get_input_embeddings()  # a submodule: called on every forward pass
    hook = embeddings.register_forward_pre_hook(lambda module, args: generating.add(threading.current_thread()))
    try:
        s.generate(HELLO, SamplingParams(max_tokens=4, temperature=0))
        assert generating == {threading.current_thread()}
        for _ in range(3):
            list(s.stream(HELLO, SamplingParams(max_tokens=4, temperature=0)))
        "".join(s.send("hello", stream=True))
    finally:
        hook.remove()
    streamed = generating - {threading.current_thread()}
    assert len(streamed) == 1, [t.name for t in streamed]
    assert all(thread.is_alive() for thread in streamed)


def test_stream_threads_run_up_to_size_jobs_at_once_and_reuse_their_threads():
    from runner.engine.session import StreamThreads

    pool = StreamThreads("test")
    release = threading.Event()
    started: list[threading.Thread] = []
    lock = threading.Lock()

    def job():
        with lock:
            started.append(threading.current_thread())
        release.wait(10)

    for _ in range(4):
        pool.submit(job, 3)
    deadline = time.monotonic() + 5
    while len(started) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert len(started) == 3, "three jobs run at once, the fourth waits for a free thread"
    release.set()
    while len(started) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(started) == 4
    for _ in range(20):  # later jobs, one at a time: the same threads take them, none is added
        done = threading.Event()
        pool.submit(done.set, 3)
        assert done.wait(5)
    assert len(set(started)) == 3 and len(pool._threads) == 3


def test_same_seed_same_sample_other_seed_other_sample(llama):
    s = session(llama)
    sample = lambda seed: s.generate(HELLO, SamplingParams(max_tokens=16, temperature=1.0, seed=seed)).token_ids  # noqa: E731
    assert sample(123) == sample(123)
    assert sample(123) != sample(124)


def test_usage_counts_prompt_and_generated_tokens(llama):
    s = session(llama)
    completion = s.generate(HELLO, SamplingParams(max_tokens=7, temperature=0))
    usage = completion.usage
    assert usage.prompt_tokens == s.prompt_token_count(HELLO)
    eos = 0 if completion.finish_reason == "length" else 1
    assert usage.completion_tokens == len(completion.token_ids) + eos
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.finish_reason == "length" and usage.completion_tokens == 7


def test_frequency_penalty_changes_a_repetitive_greedy_reply(gpt2):
    s = session(gpt2)
    plain = s.generate(HELLO, SamplingParams(max_tokens=16, temperature=0)).token_ids
    assert len(set(plain)) < len(plain), "the reference reply should repeat a token"
    penalised = s.generate(HELLO, SamplingParams(max_tokens=16, temperature=0, frequency_penalty=2.0)).token_ids
    assert len(set(penalised)) > len(set(plain))


def test_exception_in_the_generation_thread_surfaces_instead_of_hanging(dirs):
    loaded = load(cpu_plan(dirs["llama"]), log=lambda line: None)

    def broken(*args, **kwargs):
        raise ValueError("kernel exploded")

    loaded.model.generate = broken
    s = session(loaded)
    outcome = {}

    def consume():
        try:
            list(s.stream(HELLO))
        except ValueError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the stream reader hung"
    assert outcome == {"error": "kernel exploded"}


def test_closing_a_stream_cancels_the_generation(llama):
    s = session(llama)
    params = SamplingParams(max_tokens=200, temperature=0)
    uncancelled = s.generate(HELLO, params)
    assert uncancelled.usage.completion_tokens > 20, "the greedy reply must run long enough to be cancelled"
    stream = s.stream(HELLO, params)
    next(stream)
    stream.close()
    assert stream.completion.finish_reason == "cancelled"
    assert stream.completion.usage.completion_tokens < uncancelled.usage.completion_tokens


def test_preset_cancel_event_stops_after_the_first_token(llama):
    cancel = threading.Event()
    cancel.set()
    completion = session(llama).generate(HELLO, SamplingParams(max_tokens=50, temperature=0), cancel=cancel)
    assert completion.finish_reason == "cancelled" and completion.usage.completion_tokens == 1


def test_send_keeps_history_and_clear_forgets_it(llama):
    s = session(llama)
    first = s.send("hello")
    stream = s.send("and again", stream=True)
    second = "".join(stream)
    assert [m["role"] for m in s.history] == ["user", "assistant", "user", "assistant"]
    assert s.history[1]["content"] == first.text and s.history[3]["content"] == second
    assert stream.completion.usage.prompt_tokens > first.usage.prompt_tokens
    s.clear()
    assert s.history == []


def test_failed_send_does_not_leave_an_unanswered_user_turn(dirs, llama):
    s = session(llama, plan=cpu_plan(dirs["llama"], context_tokens=32))
    with pytest.raises(ContextLengthError):
        s.send("the quick brown fox jumps over the lazy dog " * 8)
    assert s.history == []


def test_telemetry_appends_one_json_line_per_turn(llama, tmp_path):
    import json

    from runner.engine.telemetry import Telemetry

    s = session(llama, telemetry=Telemetry(tmp_path / "metrics.jsonl"))
    s.generate(HELLO)
    s.generate(HELLO)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert records[0]["completion_tokens"] + records[0]["prompt_tokens"] == records[0]["total_tokens"]
    assert records[0]["peak_bytes"]["cpu"] > 0 and records[0]["time_to_first_token_s"] > 0


def test_telemetry_records_predicted_next_to_measured_tokens_per_s(dirs, llama, tmp_path):
    from dataclasses import replace

    from runner.engine.telemetry import Telemetry

    plan = replace(cpu_plan(dirs["llama"]), performance={"available": True, "decode_tokens_per_s": 1234.5})
    s = session(llama, plan=plan, telemetry=Telemetry(tmp_path / "metrics.jsonl"))
    s.generate(HELLO)
    record = s.telemetry.turns[-1]
    assert record["predicted_tokens_per_s"] == 1234.5
    assert record["measured_over_predicted"] == round(record["tokens_per_s"] / 1234.5, 3)
    unpredicted = session(llama, plan=cpu_plan(dirs["llama"]), telemetry=Telemetry())
    unpredicted.generate(HELLO)
    assert "predicted_tokens_per_s" not in unpredicted.telemetry.turns[-1]


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_oss"])
def test_chunked_prefill_gives_the_same_greedy_ids_as_one_pass(dirs, tmp_path_factory, name):
    """A plan's prefill_chunk_tokens feeds the prompt in chunks; the reply must not change."""
    from dataclasses import replace

    from tiny_models import tiny_gpt_oss

    model_dir = dirs.get(name) or tiny_gpt_oss(tmp_path_factory.mktemp("oss"))
    whole = cpu_plan(model_dir, attn_implementation="eager" if name == "gpt_oss" else "sdpa")
    chunked = replace(whole, limits=replace(whole.limits, prefill_chunk_tokens=3))
    loaded = load(whole, log=lambda line: None)
    long_prompt = [{"role": "user", "content": "count the words in this rather long sentence, one by one, please"}]
    params = SamplingParams(max_tokens=8, temperature=0)
    one_pass = session(loaded, whole).generate(long_prompt, params)
    in_chunks = session(loaded, chunked).generate(long_prompt, params)
    assert in_chunks.usage.prompt_tokens > 3 * 3  # several chunks really ran
    assert in_chunks.token_ids == one_pass.token_ids


def test_seeded_sampling_holds_the_process_wide_seed_lock(llama):
    """torch.manual_seed is process-wide: a seeded sampled reply must not interleave with another model's."""
    from runner.engine.session import SEEDED_SAMPLING

    seen = []
    original = llama.model.generate

    def spy(*args, **kwargs):
        seen.append(SEEDED_SAMPLING.locked())
        return original(*args, **kwargs)

    llama.model.generate = spy
    try:
        session(llama).generate(HELLO, SamplingParams(max_tokens=2, temperature=1.0, seed=3))
        session(llama).generate(HELLO, SamplingParams(max_tokens=2, temperature=0))
    finally:
        llama.model.generate = original
    assert seen == [True, False]
