"""Vision-language models run: a tiny random LLaVA (tests/tiny_models.py) through the loader, a session, the
Python API, the server and the CLI, in text and with inline images; a text model refuses images by name."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from background_server import BackgroundServer
from openai import OpenAI

from planner.errors import ShardwiseError
from runner.engine.sampling import SamplingParams
from runner.openai.app import ModelSource, ServeSettings, create_app
from runner.openai.images import ImageLimits
from runner.openai.protocol import parse_messages

try:
    from tests.tiny_models import LLAVA_IMAGE_TOKENS, cpu_plan, cpu_serving, png_data_url, tiny_llama, tiny_llava
except ImportError:
    from tiny_models import LLAVA_IMAGE_TOKENS, cpu_plan, cpu_serving, png_data_url, tiny_llama, tiny_llava

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 30
QUESTION = "what is this?"


def with_image(url: str | None = None, text: str = QUESTION) -> list[dict]:
    """One user message: the text, then an inline image (after the text, so the text tokenizes the same)."""
    image = {"type": "image_url", "image_url": {"url": url or png_data_url()}}
    return [{"role": "user", "content": [{"type": "text", "text": text}, image]}]


TEXT_ONLY = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {"llava": tiny_llava(root), "llama": tiny_llama(root)}


@pytest.fixture(scope="module")
def llava(dirs):
    from runner.engine.loader import load

    lines = []
    loaded = load(cpu_plan(dirs["llava"], context_tokens=256, max_new_tokens=32), log=lines.append)
    loaded.lines = lines
    return loaded


def session_of(loaded):
    from runner.engine.session import ChatSession

    return ChatSession(loaded, defaults=SamplingParams(max_tokens=6, temperature=0), on_notice=lambda line: None)


# ----- which class, which preprocessing ----------------------------------------------------------


def test_the_auto_class_is_the_one_that_builds_the_class_named_in_architectures():
    from transformers import CLIPConfig, Gemma3Config, Gemma3TextConfig, LlamaConfig, LlavaConfig, MllamaConfig

    from planner.model.auto_class import auto_model_class, takes_images

    def picked(config) -> str:
        return auto_model_class(config)[0].__name__

    assert picked(LlamaConfig(architectures=["LlamaForCausalLM"])) == "AutoModelForCausalLM"
    assert picked(LlavaConfig(architectures=["LlavaForConditionalGeneration"])) == "AutoModelForImageTextToText"
    # Llama 3.2 Vision loads whole (vision tower included) when its checkpoint names the whole class ...
    whole = MllamaConfig(architectures=["MllamaForConditionalGeneration"])
    assert picked(whole) == "AutoModelForImageTextToText"
    assert "named in config.json architectures" in auto_model_class(whole)[1]
    # ... and a config naming no class takes the first auto class that knows it, saying so
    auto, reason = auto_model_class(MllamaConfig())
    assert auto.__name__ == "AutoModelForCausalLM" and "config.json names no class" in reason
    # Gemma 3's causal-LM mapping already builds its conditional-generation class
    assert picked(Gemma3Config(architectures=["Gemma3ForConditionalGeneration"])) == "AutoModelForCausalLM"
    with pytest.raises(ShardwiseError, match="no chat .text-generating. class for model_type 'clip'"):
        auto_model_class(CLIPConfig())
    assert takes_images(LlavaConfig()) and takes_images(Gemma3Config())
    assert not takes_images(Gemma3TextConfig()) and not takes_images(LlamaConfig())


def test_a_vision_language_model_loads_its_class_and_processor_and_a_text_model_its_tokenizer(dirs, llava):
    from runner.engine.loader import load

    assert type(llava.model).__name__ == "LlavaForConditionalGeneration"
    assert llava.processor.image_processor is not None and llava.tokenizer is llava.processor.tokenizer
    why = "LlavaForConditionalGeneration (named in config.json architectures) through AutoModelForImageTextToText"
    assert any(line.startswith("loading tiny-llava") and line.endswith(why) for line in llava.lines)
    text = load(cpu_plan(dirs["llama"]), log=lambda line: None)
    assert type(text.model).__name__ == "LlamaForCausalLM" and text.processor is None


def test_a_vlm_directory_without_its_image_processor_chats_in_text_and_says_so(dirs, tmp_path):
    from runner.engine.loader import load

    bare = tmp_path / "tiny-llava-bare"
    shutil.copytree(dirs["llava"], bare)
    (bare / "processor_config.json").unlink()
    lines = []
    loaded = load(cpu_plan(bare), log=lines.append)
    assert loaded.processor is None
    assert any(line.startswith("note: llava takes images but") and "image parts are refused" in line for line in lines)
    session = session_of(loaded)
    assert not session.takes_images
    # the tokenizer's template reads parts only (as LLaVA's does): the text must still reach the prompt
    assert session.prompt.content_as_parts and QUESTION in session.prompt.render(TEXT_ONLY)
    assert session.generate(TEXT_ONLY).usage.completion_tokens >= 1
    with pytest.raises(ShardwiseError, match="this model takes text only"):
        session.generate(parse_messages(with_image()))


# ----- the session ------------------------------------------------------------------------------


def test_an_image_reaches_the_vision_tower_and_counts_its_tokens_in_the_prompt(llava):
    session = session_of(llava)
    seen = []
    tower = next(m for name, m in llava.model.named_modules() if name.endswith("vision_tower"))
    hook = tower.register_forward_hook(lambda module, args, kwargs_or_out: seen.append(tuple(args[0].shape)))
    try:
        text = session.generate(TEXT_ONLY)
        assert seen == []  # text chat never runs the vision tower
        pictured = session.generate(parse_messages(with_image()))
    finally:
        hook.remove()
    assert seen == [(1, 3, 224, 224)]  # the processor's default 224 x 224 crop of the 40 x 30 image
    assert pictured.usage.prompt_tokens == text.usage.prompt_tokens + LLAVA_IMAGE_TOKENS
    assert pictured.usage.completion_tokens >= 1 and pictured.finish_reason in ("stop", "length")


def test_two_images_in_two_turns_each_count_and_reach_the_tower_in_order(llava):
    session = session_of(llava)
    seen = []
    tower = next(m for name, m in llava.model.named_modules() if name.endswith("vision_tower"))
    hook = tower.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    first, second = with_image(png_data_url(20, 20, (0, 0, 255))), with_image(png_data_url(300, 100))
    conversation = [*first, {"role": "assistant", "content": "blue"}, *second]
    try:
        both = session.generate(parse_messages(conversation))
    finally:
        hook.remove()
    text = [*TEXT_ONLY, {"role": "assistant", "content": "blue"}, *TEXT_ONLY]
    assert seen == [(2, 3, 224, 224)]
    assert both.usage.prompt_tokens == session.generate(text).usage.prompt_tokens + 2 * LLAVA_IMAGE_TOKENS


def test_text_that_writes_the_image_placeholder_itself_is_refused(llava):
    session = session_of(llava)
    with pytest.raises(ShardwiseError, match="may not contain '<image>'"):
        session.generate([{"role": "user", "content": "look: <image>"}])
    with pytest.raises(ShardwiseError, match="2 of the model's image placeholder"):
        session.generate(parse_messages(with_image(text="<image> and")))


def test_images_in_dropped_old_messages_leave_with_them(llava):
    session = session_of(llava)
    old = with_image(text="first " * 20)
    conversation = [*old, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and now?"}]
    fitted = session.prompt.fit_inputs(parse_messages(conversation), context_tokens=64, max_tokens=8)
    assert fitted.dropped == 2 and fitted.images == 0 and fitted.media == {}


# ----- the Python API ----------------------------------------------------------------------------


def test_python_api_chats_in_text_and_with_an_image(dirs):
    from runner.api import OpenAIChat, create_chat_completion

    chat = OpenAIChat(model_path=str(dirs["llava"]), use_cpu=True, notice=lambda line: None)
    assert isinstance(chat.chat(TEXT_ONLY, max_tokens=4, temperature=0), str)
    text = chat.create(TEXT_ONLY, max_tokens=4, temperature=0)["usage"]
    pictured = chat.create(with_image(), max_tokens=4, temperature=0)["usage"]
    assert pictured["prompt_tokens"] == text["prompt_tokens"] + LLAVA_IMAGE_TOKENS
    chunks = list(
        create_chat_completion(
            model_path=str(dirs["llava"]),
            use_cpu=True,
            messages=with_image(),
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1]["usage"]["prompt_tokens"] == pictured["prompt_tokens"]


def test_python_api_refuses_an_image_for_a_text_model_naming_the_part(dirs):
    from runner.api import OpenAIChat

    chat = OpenAIChat(model_path=str(dirs["llama"]), use_cpu=True, notice=lambda line: None)
    with pytest.raises(ShardwiseError) as caught:
        chat.chat(with_image(), max_tokens=4)
    assert str(caught.value).startswith("messages[0].content[1] is an image, but the model tiny-llama cannot take")
    with pytest.raises(ShardwiseError, match="never fetches"):
        chat.chat(with_image("https://example.com/cat.png"), max_tokens=4)


# ----- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(dirs, llava):
    """The tiny LLaVA on continuous batching (text batches, an image runs alone) beside the tiny Llama."""
    from runner.engine.batching import attach
    from runner.engine.loader import load

    assert attach(llava, cpu_serving(dirs["llava"], context_tokens=256), log=lambda line: None)
    text_model = load(cpu_plan(dirs["llama"]), log=lambda line: None)
    sources = [
        ModelSource("tiny-llava", load=lambda: session_of(llava)),
        ModelSource("tiny-llama", load=lambda: session_of(text_model)),
    ]
    app = create_app(sources, ServeSettings(images=ImageLimits(max_bytes=4096, max_images=2)))
    try:
        with BackgroundServer(app) as running:
            deadline = time.monotonic() + TIMEOUT_S
            while httpx.get(running.url + "/health", timeout=TIMEOUT_S).status_code != 200:
                assert time.monotonic() < deadline, "models not loaded"
                time.sleep(0.05)
            yield running
    finally:
        llava.batching.close()
        llava.batching = None


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)


def test_server_answers_text_and_images_with_the_sessions_own_reply(client, llava):
    direct_text = session_of(llava).generate(TEXT_ONLY)
    reply = client.chat.completions.create(model="tiny-llava", messages=TEXT_ONLY, max_tokens=6, temperature=0)
    assert reply.choices[0].message.content == direct_text.text
    messages = with_image()
    engine, llava.batching = llava.batching, None  # the direct reply on the sequential path, as the server runs it
    try:
        direct = session_of(llava).generate(parse_messages(messages))
    finally:
        llava.batching = engine
    reply = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=6, temperature=0)
    assert reply.choices[0].message.content == direct.text
    assert reply.usage.prompt_tokens == direct.usage.prompt_tokens == direct_text.usage.prompt_tokens + 49
    chunks = list(
        client.chat.completions.create(
            model="tiny-llava",
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.text
    assert chunks[-1].usage.prompt_tokens == direct.usage.prompt_tokens


def _bad_request(client, model: str, messages) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    body = caught.value.response.json()["error"]
    assert "Traceback" not in body["message"] and "\n" not in body["message"]
    return caught.value


def test_server_refuses_an_image_for_a_text_model_naming_the_part(client):
    error = _bad_request(client, "tiny-llama", with_image())
    assert error.param == "messages[0].content[1]" and error.code == "images_not_supported"


def test_server_refuses_bad_image_parts_with_a_400_naming_them(client, server):
    noise = png_data_url(64, 64, color=None)
    cases = [
        (with_image("https://example.com/cat.png"), "messages[0].content[1].image_url", "unsupported_image_url"),
        (with_image("data:image/png;base64,@@@@"), "messages[0].content[1].image_url", "invalid_image"),
        (with_image("data:image/png;base64,aGVsbG8gd29ybGQ="), "messages[0].content[1].image_url", "invalid_image"),
        (with_image(noise), "messages[0].content[1].image_url", "image_too_large"),
        ([*with_image(), *with_image(), *with_image()], "messages[2].content[1]", "too_many_images"),
    ]
    for messages, param, code in cases:
        error = _bad_request(client, "tiny-llava", messages)
        assert (error.param, error.code) == (param, code), error.message
    placeholder = _bad_request(client, "tiny-llava", [{"role": "user", "content": "<image>"}])
    assert "may not contain '<image>'" in placeholder.message
    assert httpx.get(server.url + "/health", timeout=TIMEOUT_S).status_code == 200


def test_concurrent_text_and_image_requests_all_finish(client):
    """Text requests join the batch while an image request runs alone with the batch paused."""
    results = {}

    def ask(name, messages):
        reply = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=5, temperature=0)
        results[name] = reply.usage.prompt_tokens

    jobs = [("image", with_image()), ("text1", TEXT_ONLY), ("text2", [{"role": "user", "content": "hello"}])]
    threads = [threading.Thread(target=ask, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT_S)
    assert set(results) == {"image", "text1", "text2"}
    assert results["image"] == results["text1"] + LLAVA_IMAGE_TOKENS


def test_an_image_request_runs_alone_and_never_waits_on_its_reader(server, llava):
    """On a batched model an image request holds the model (the batch paused), so its stream must hand deltas over
    without waiting for the client (runner.openai.queue.Job.emit_delta(wait=False)); text requests batch."""
    from runner.openai.protocol import parse_chat_request
    from runner.openai.responses import _choices_together, _in_batch

    session = session_of(llava)

    def request(messages, n=1):
        return parse_chat_request({"model": "tiny-llava", "messages": messages, "n": n}, SamplingParams(), 4)

    text, pictured = request(TEXT_ONLY, n=2), request(with_image(), n=2)
    assert _in_batch(session, text, text.params) and _choices_together(session, text)
    assert not _in_batch(session, pictured, pictured.params) and not _choices_together(session, pictured)


# ----- the CLI -----------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_shardwise_chat_answers_a_vision_language_model_once(dirs, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shardwise.cli", "chat", f"model.path={dirs['llava']}", "hardware=cpu", "prompt=hello"]
        + ["generation.max_tokens=4", "generation.temperature=0"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "through AutoModelForImageTextToText" in result.stderr and "Traceback" not in result.stderr
    assert "tokens" in result.stderr.splitlines()[-1]


@pytest.mark.slow
def test_shardwise_serve_answers_text_and_an_image_on_a_vision_language_model(dirs, tmp_path):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "shardwise", "serve", "hardware=cpu", f"model.path={dirs['llava']}"]
        + [f"serve.port={port}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in 120 s"
            time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=60)
        text = client.chat.completions.create(model="tiny-llava", messages=TEXT_ONLY, max_tokens=4, temperature=0)
        pictured = client.chat.completions.create(
            model="tiny-llava", messages=with_image(), max_tokens=4, temperature=0
        )
        assert pictured.usage.prompt_tokens == text.usage.prompt_tokens + LLAVA_IMAGE_TOKENS
        bad = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "tiny-llava", "messages": with_image("http://example.com/x.png")},
            timeout=30,
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].content[1].image_url"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output
    assert "Traceback" not in output
