"""Prompt building and fitting (runner.engine.prompt), shared by ChatSession and the tensor-parallel rank."""

from __future__ import annotations

import threading

import pytest
from tiny_models import tiny_gpt2, tiny_llama, train_tokenizer

from runner.engine.prompt import FALLBACK_TEMPLATE, ChatPrompt, ContextLengthError, PromptCancelled


@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def gpt2_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_gpt2(tmp_path_factory.mktemp("models")))


def one_at_a_time(prompt: ChatPrompt, messages: list[dict], context: int, max_tokens: int) -> tuple[list[int], int]:
    """The reference rule, quadratic: drop the oldest droppable message (and an orphaned reply), re-encode."""
    room = max(1, min(max_tokens, context // 4))
    kept, dropped = prompt.with_system(messages), 0
    ids = prompt.encode(kept)
    while len(ids) + room > context:
        droppable = [i for i, m in enumerate(kept[:-1]) if m["role"] != "system"]
        if not droppable:
            break
        del kept[droppable[0]]
        dropped += 1
        first = next((i for i, m in enumerate(kept[:-1]) if m["role"] != "system"), None)
        if first is not None and kept[first]["role"] == "assistant":
            del kept[first]
            dropped += 1
        ids = prompt.encode(kept)
    return ids, dropped


def conversation(turns: int, words: int = 6) -> list[dict]:
    text = "the quick brown fox jumps over the lazy dog one two three".split()
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: " + " ".join(text[: 1 + (i * 7) % words])})
        messages.append({"role": "assistant", "content": " ".join(text[: 1 + (i * 3) % words])})
    return [*messages, {"role": "user", "content": "last one"}]


@pytest.mark.parametrize("which", ["llama", "gpt2"])
@pytest.mark.parametrize("context", [64, 96, 160, 400])
@pytest.mark.parametrize("turns", [12, 40])
def test_fitting_keeps_what_dropping_one_message_at_a_time_keeps(
    which, context, turns, llama_tokenizer, gpt2_tokenizer
):
    tokenizer = llama_tokenizer if which == "llama" else gpt2_tokenizer
    prompt = ChatPrompt(tokenizer)
    messages = conversation(turns)
    assert prompt.fit(messages, context_tokens=context, max_tokens=16) == one_at_a_time(prompt, messages, context, 16)


def test_gpt2_gets_the_plain_template_and_its_stop(gpt2_tokenizer):
    prompt = ChatPrompt(gpt2_tokenizer, system_prompt="be brief")
    assert prompt.template == FALLBACK_TEMPLATE and prompt.template_stops == ("\nUser:",)
    ids, dropped = prompt.fit([{"role": "user", "content": "hi"}], context_tokens=1024, max_tokens=8)
    assert gpt2_tokenizer.decode(ids) == "System: be brief\n\nUser: hi\n\nAssistant:" and dropped == 0


def test_three_thousand_short_messages_fit_with_a_logarithmic_number_of_renders(llama_tokenizer):
    """Fitting is linear in the messages: each is costed once, then a bisection renders the template a few
    times (about log2 of the count), never once per message dropped."""
    prompt = ChatPrompt(llama_tokenizer)
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(3001)]
    renders = []
    real_encode = prompt.encode_with_media  # every render of the template (text, and images when there are any)
    prompt.encode_with_media = lambda kept, *args, **kwargs: (
        renders.append(len(kept)) or real_encode(kept, *args, **kwargs)
    )
    ids, dropped = prompt.fit(messages, context_tokens=256, max_tokens=16)
    assert 1 <= len(renders) <= 2 * 12 + 4, renders  # log2(3001) < 12
    assert len(ids) + 16 <= 256 and dropped > 2900
    assert ids == prompt.encode(messages[dropped:])  # what is kept is the newest tail, rendered exactly


def test_a_cancelled_request_stops_fitting(llama_tokenizer):
    prompt = ChatPrompt(llama_tokenizer)
    messages = [{"role": "user", "content": "hi"}] * 3000
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PromptCancelled):
        prompt.fit(messages, context_tokens=256, max_tokens=16, cancel=cancel)


def test_a_prompt_that_cannot_fit_raises_the_context_error_instead_of_cutting_its_head(llama_tokenizer):
    prompt = ChatPrompt(llama_tokenizer, system_prompt="be brief")
    long = [{"role": "user", "content": "one two three"}, {"role": "user", "content": "the lazy dog " * 40}]
    with pytest.raises(ContextLengthError, match="context window holds 64"):
        prompt.fit(long, context_tokens=64, max_tokens=8)


@pytest.mark.parametrize("role", ["user", "system"])
def test_a_kept_message_far_past_the_context_is_refused_from_its_prefix_without_tokenizing_it_whole(
    llama_tokenizer, role
):
    """A 1 MB message for a 256-token context is refused from its first characters: tokenizing it whole (three times)
    cost seconds of CPU and hundreds of MB per request. A message that only just misses still gets the exact count."""
    prompt = ChatPrompt(llama_tokenizer)
    longest = []  # the longest text the tokenizer was handed, and the longest rendered prompt
    real_lengths, real_encode = prompt._lengths, prompt.encode_with_media
    prompt._lengths = lambda texts: longest.append(max(map(len, texts), default=0)) or real_lengths(texts)
    prompt.encode_with_media = lambda kept: longest.append(len(prompt.render(kept))) or real_encode(kept)
    huge = [{"role": role, "content": "ab " * 340_000}, {"role": "user", "content": "hi"}][
        : 2 if role == "system" else 1
    ]
    with pytest.raises(ContextLengthError, match="context window holds 256"):
        prompt.fit(huge, context_tokens=256, max_tokens=16)
    assert max(longest) < 20_000, longest  # the prefix only, never the million characters
    longest.clear()  # an old message as long is dropped, judged from its prefix too
    ids, dropped = prompt.fit(
        [
            {"role": "user", "content": "ab " * 340_000},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hi"},
        ],
        context_tokens=256,
        max_tokens=16,
    )
    assert dropped == 2 and ids == prompt.encode([{"role": "user", "content": "hi"}])
    assert max(longest) < 20_000, longest
    near = [{"role": "user", "content": "the lazy dog " * 40}]
    with pytest.raises(ContextLengthError, match=r"the prompt is \d+ tokens \(last message"):
        prompt.fit(near, context_tokens=64, max_tokens=8)


def test_a_template_that_refuses_a_lone_message_still_fits(llama_tokenizer):
    strict = train_tokenizer(
        chat_template=(
            "{% if messages and messages[0]['role'] == 'assistant' %}{{ raise_exception('user first') }}{% endif %}"
            "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}"
        )
    )
    prompt = ChatPrompt(strict)
    messages = conversation(10)[1:]  # no system message: the first kept message must be a user turn
    assert prompt.fit(messages, context_tokens=96, max_tokens=8) == one_at_a_time(prompt, messages, 96, 8)


@pytest.mark.parametrize("long", [False, True])
def test_text_that_is_not_unicode_is_one_line_not_a_tokenizer_type_error(llama_tokenizer, long):
    """A prompt argument holding a byte that is not UTF-8 reaches Python as a lone surrogate ('\\udcff'), which the
    Rust tokenizer refuses with a TypeError (a traceback from `shardwise chat prompt=...`)."""
    from planner.errors import ShardwiseError

    prompt = ChatPrompt(llama_tokenizer, system_prompt="be brief")
    text = ("word " * 2000 if long else "") + "caf\udcff"
    with pytest.raises(ShardwiseError) as caught:
        prompt.fit([{"role": "user", "content": text}], context_tokens=512, max_tokens=16)
    assert "'\\udcff' at character" in str(caught.value) and "not Unicode text" in str(caught.value)
    ids, dropped = prompt.fit([{"role": "user", "content": "café"}], context_tokens=512, max_tokens=16)
    assert ids and dropped == 0
