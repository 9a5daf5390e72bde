"""The out-of-memory ladder by fault injection: free and retry, halve max_tokens, fall back, keep the conversation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import cpu_plan, tiny_gpt2, tiny_llama

from runner.engine.loader import load
from runner.engine.memory import is_out_of_memory
from runner.engine.recovery import MemoryExhaustedError, RecoveryPolicy, default_plan_fallback, load_with_fallbacks
from runner.engine.session import ChatSession
from runner.engine.types import SamplingParams

GREEDY = SamplingParams(max_tokens=64, temperature=0)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": tiny_llama(root), "gpt2": tiny_gpt2(root)}


def _quiet_load(plan):
    return load(plan, log=lambda line: None)


def flaky_session(dirs, failures: int, policy=None, fallbacks=()):
    """A session whose model.generate raises CUDA OOM `failures` times, recording max_new_tokens per call."""
    loaded = _quiet_load(cpu_plan(dirs["llama"], fallbacks=fallbacks))
    real = loaded.model.generate
    calls = []

    def generate(*args, **kwargs):
        calls.append(kwargs["generation_config"].max_new_tokens)
        if len(calls) <= failures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    loaded.model.generate = generate
    notices = []
    s = ChatSession(loaded, defaults=GREEDY, recovery=policy or RecoveryPolicy(), on_notice=notices.append)
    return s, calls, notices


def test_one_oom_is_recovered_by_freeing_memory_and_retrying(dirs):
    s, calls, notices = flaky_session(dirs, failures=1)
    completion = s.send("hello")
    assert calls == [64, 64] and completion.usage.completion_tokens >= 1
    assert any("freed cached memory" in n for n in notices)


def test_repeated_oom_halves_max_tokens(dirs):
    s, calls, notices = flaky_session(dirs, failures=3)
    s.send("hello")
    assert calls == [64, 64, 32, 16]
    assert any("max_tokens=16" in n for n in notices)


def test_exhausted_ladder_without_fallbacks_raises_and_keeps_no_dangling_turn(dirs):
    s, calls, _ = flaky_session(dirs, failures=99)
    with pytest.raises(MemoryExhaustedError, match="out of memory"):
        s.send("hello")
    assert calls == [64, 64, 32, 16] and s.history == []


@pytest.mark.slow
def test_fallback_model_continues_the_conversation(dirs):
    fallback = {"model": str(dirs["gpt2"]), "hardware": "cpu", "reason": "smaller model"}
    policy = RecoveryPolicy(plan_fallback=lambda entry: cpu_plan(entry["model"]), load=_quiet_load)
    s, calls, notices = flaky_session(dirs, failures=99, policy=policy, fallbacks=(fallback,))
    s.history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"}]
    completion = s.send("second")
    assert s.loaded.name == "tiny-gpt2" and completion.usage.completion_tokens >= 1
    assert [m["content"] for m in s.history[:3]] == ["first", "reply", "second"]
    assert completion.usage.prompt_tokens == s.prompt_token_count(s.history[:3])
    assert any("falling back to" in n and "tiny-gpt2" in n for n in notices)


@pytest.mark.slow
def test_a_fallback_asking_for_remote_code_is_skipped_without_the_runs_consent(dirs):
    """Issue 10 item 5: an out-of-memory fallback never runs the model directory's Python unasked."""
    fallback = {"model": str(dirs["gpt2"]), "hardware": "cpu", "reason": "smaller model"}
    loaded_plans = []

    def remote_code_plan(entry):
        plan = cpu_plan(entry["model"])  # as a profile or config asking for auto_map code would plan it:
        return dataclasses.replace(plan, model=dataclasses.replace(plan.model, trust_remote_code=True))

    def load(plan):
        loaded_plans.append(plan)
        return _quiet_load(plan)

    for consent in (False, True):
        loaded_plans.clear()
        policy = RecoveryPolicy(plan_fallback=remote_code_plan, load=load, remote_code_consent=consent)
        s, _, notices = flaky_session(dirs, failures=99, policy=policy, fallbacks=(fallback,))
        if consent:
            assert s.send("hello").usage.completion_tokens >= 1 and s.loaded.name == "tiny-gpt2"
        else:
            with pytest.raises(MemoryExhaustedError):
                s.send("hello")
            assert any("trust_remote_code" in n and "skipping" in n for n in notices)
        fallbacks_loaded = [p for p in loaded_plans if p.model.trust_remote_code]  # not the ladder's reload
        assert len(fallbacks_loaded) == (1 if consent else 0)


def test_oom_after_streamed_tokens_raises_instead_of_retrying(dirs):
    loaded = _quiet_load(cpu_plan(dirs["llama"]))
    real = loaded.model.generate
    calls = []

    def generate(*args, **kwargs):
        calls.append(1)

        class ExplodeLater:
            steps = 0

            def __call__(self, input_ids, scores, **kw):
                self.steps += 1
                if self.steps > 6:
                    raise torch.OutOfMemoryError("CUDA out of memory.")
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        kwargs["stopping_criteria"].append(ExplodeLater())
        return real(*args, **kwargs)

    loaded.model.generate = generate
    s = ChatSession(loaded, defaults=GREEDY, on_notice=lambda line: None)
    stream = s.stream([{"role": "user", "content": "hello"}])
    with pytest.raises(MemoryExhaustedError, match="streamed"):
        for _ in stream:
            pass
    assert calls == [1]


def load_failing_for(name: str):
    """A loader that runs out of memory for the model `name` and loads every other one."""

    def load(plan):
        if plan.model.name == name:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return _quiet_load(plan)

    return load


def test_failed_load_falls_back_to_the_next_model(dirs):
    load_or_oom = load_failing_for("tiny-llama")
    fallback = {"model": str(dirs["gpt2"]), "hardware": "cpu", "reason": "smaller model"}
    notices = []
    policy = RecoveryPolicy(plan_fallback=lambda entry: cpu_plan(entry["model"]), load=load_or_oom)
    loaded = load_with_fallbacks(cpu_plan(dirs["llama"], fallbacks=(fallback,)), policy=policy, notice=notices.append)
    assert loaded.name == "tiny-gpt2"
    assert len(notices) == 1 and "loading tiny-llama failed" in notices[0]


def test_failed_load_with_no_fallback_left_raises_memory_exhausted(dirs):
    def always_oom(plan):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 999"
        )

    policy = RecoveryPolicy(load=always_oom, plan_fallback=lambda entry: cpu_plan(entry["model"]))
    fallback = {"model": str(dirs["gpt2"]), "hardware": "cpu", "reason": "smaller"}
    with pytest.raises(MemoryExhaustedError, match="nor any of its 1 fallback"):
        load_with_fallbacks(cpu_plan(dirs["llama"], fallbacks=(fallback,)), policy=policy, notice=lambda line: None)


def test_planner_plans_a_local_fallback_directory_on_the_cpu(dirs):
    plan = default_plan_fallback({"model": str(dirs["gpt2"]), "hardware": "cpu"})
    assert plan.model.source == str(dirs["gpt2"]) and plan.strategy == "cpu" and plan.fits


@pytest.mark.parametrize(
    "exc, expected",
    [
        (torch.OutOfMemoryError("CUDA out of memory."), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), True),
        (RuntimeError("[WinError 8] Not enough memory resources"), True),
        (RuntimeError("not enough memory: you tried to allocate 10 GB"), True),
        (MemoryError(), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised_on_gpu_and_cpu(exc, expected):
    assert is_out_of_memory(exc) is expected


@pytest.mark.slow
def test_exhausted_fallback_chain_reloads_the_model_so_the_next_turn_works(dirs):
    load_all_but_gpt2 = load_failing_for("tiny-gpt2")
    fallback = {"model": str(dirs["gpt2"]), "hardware": "cpu", "reason": "smaller model"}
    policy = RecoveryPolicy(plan_fallback=lambda entry: cpu_plan(entry["model"]), load=load_all_but_gpt2)
    s, calls, notices = flaky_session(dirs, failures=4, policy=policy, fallbacks=(fallback,))
    with pytest.raises(MemoryExhaustedError):
        s.send("hello")
    assert s.loaded.name == "tiny-llama" and s.loaded.model is not None
    assert any("reloading tiny-llama" in n for n in notices)
    completion = s.send("hello again")
    assert completion.usage.completion_tokens >= 1 and s.history[-2]["content"] == "hello again"


@pytest.mark.slow
def test_model_that_cannot_be_reloaded_answers_memory_exhausted_not_a_crash(dirs):
    def never_loads(plan):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    fallback = {"model": str(dirs["gpt2"]), "hardware": "cpu", "reason": "smaller model"}
    policy = RecoveryPolicy(plan_fallback=lambda entry: cpu_plan(entry["model"]), load=never_loads)
    s, calls, _ = flaky_session(dirs, failures=4, policy=policy, fallbacks=(fallback,))
    with pytest.raises(MemoryExhaustedError):
        s.send("hello")
    with pytest.raises(MemoryExhaustedError, match="could not be loaded again"):
        s.send("hello again")
    assert len(calls) == 4 and s.history == []


def test_memory_is_freed_after_the_failed_attempt_released_its_tensors(monkeypatch):
    import types
    import weakref

    import runner.engine.recovery as recovery

    class Tensors:  # stands for the failed attempt's prompt ids and KV cache
        pass

    refs, alive_when_freeing = [], []
    monkeypatch.setattr(recovery, "clear_memory", lambda: alive_when_freeing.append(refs[-1]() is not None))

    def attempt(params):
        cache = Tensors()
        refs.append(weakref.ref(cache))
        if len(refs) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return types.SimpleNamespace(notices=[])

    session = types.SimpleNamespace(
        recovery=RecoveryPolicy(), on_notice=lambda line: None, plan=None, loaded=types.SimpleNamespace(name="m")
    )
    recovery.generate_with_recovery(session, attempt, GREEDY, emitted=lambda: 0)
    assert alive_when_freeing == [False]


@pytest.mark.parametrize(
    "error",
    [
        ValueError("Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/dev/null'"),
        ImportError("flash_attn is not installed"),
        RuntimeError("Error(s) in loading state_dict: size mismatch for lm_head.weight"),
    ],
)
def test_a_load_that_fails_for_a_reason_other_than_memory_is_not_exit_3(dirs, error):
    """Exit 3 means memory that stays exhausted; a file or kernel the loader refuses, with no fallback that
    loads, is bad input (exit 2) and its message does not advise a smaller model."""
    from planner.errors import ShardwiseError

    def refuse(plan):
        raise error

    policy = RecoveryPolicy(load=refuse, plan_fallback=lambda entry: cpu_plan(entry["model"]))
    with pytest.raises(ShardwiseError) as caught:
        load_with_fallbacks(cpu_plan(dirs["llama"]), policy=policy, notice=lambda line: None)
    assert not isinstance(caught.value, MemoryExhaustedError)
    assert type(error).__name__ in str(caught.value) and "smaller model" not in str(caught.value)
