"""`shardwise serve` as users run it: conf/serve.yaml, the serve block's checks, the real CLI process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hydra import compose, initialize_config_dir
from openai import OpenAI

from planner.config.reader import conf_dir
from planner.errors import ShardwiseError
from runner.openai import served
from shardwise.verbs import serve as serve_cli
from shardwise.verbs.app import remote_code_consent

try:
    from tests.tiny_models import tiny_llama
except ImportError:
    from tiny_models import tiny_llama

REPO = Path(__file__).resolve().parents[1]


def compose_serve(overrides: list[str]):
    from planner.config import schema

    schema.register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("serve", overrides=overrides)


def test_default_serve_config_binds_loopback_port_8000_without_key(monkeypatch):
    monkeypatch.delenv("SHARDWISE_API_KEY", raising=False)
    settings, block = serve_cli.settings_from_config(compose_serve(["hardware=cpu"]))
    assert (settings.host, settings.port, settings.api_key) == ("127.0.0.1", 8000, None)
    assert (settings.max_queue, settings.max_body_bytes, block.models) == (8, 1048576, [])
    assert settings.defaults.max_tokens == compose_serve(["hardware=cpu"]).generation.max_tokens


def test_api_key_comes_from_the_environment_when_the_config_has_none(monkeypatch):
    monkeypatch.setenv("SHARDWISE_API_KEY", "from-env")
    assert serve_cli.settings_from_config(compose_serve(["hardware=cpu"]))[0].api_key == "from-env"
    assert (
        serve_cli.settings_from_config(compose_serve(["hardware=cpu", "serve.api_key=from-conf"]))[0].api_key
        == "from-conf"
    )


@pytest.mark.parametrize(
    "block,fragment",
    [
        ({"port": 70000}, "serve.port=70000"),
        ({"max_queue": -1}, "serve.max_queue=-1"),
        ({"log_level": "loud"}, "serve.log_level='loud'"),
        ({"prot": 8000}, "prot"),
        ({"max_queue": "many"}, "max_queue"),
    ],
)
def test_bad_serve_block_is_one_line_error_naming_the_key(block, fragment):
    with pytest.raises(ShardwiseError) as caught:
        serve_cli.read_serve_block(block)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_busy_port_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ShardwiseError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_cli.listen_socket("127.0.0.1", port)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("models"))


def test_model_path_is_served_under_its_directory_name(model_dir):
    sources = served.model_sources(compose_serve(["hardware=cpu", f"model.path={model_dir}"]), consent=False)
    assert [(s.name, s.aliases) for s in sources] == [("tiny-llama", ())]


def test_serve_plans_auto_sessions_by_default_and_says_so(model_dir):
    """serve's own config sizes the paged cache for as many sequences as fit (bounded), and the plan says why."""
    from planner.driver.sessions import MAX_SESSIONS_CPU

    cfg = compose_serve(["hardware=cpu", f"model.path={model_dir}"])
    plan = served.plan_for(cfg, cfg.model)
    assert plan.limits.sessions == plan.serving.max_concurrent == MAX_SESSIONS_CPU
    assert plan.serving.mode == "batched"
    reason = next(d.reason for d in plan.decisions if d.what == "sessions")
    assert reason.startswith("policy.sessions=auto (serve's default; plan and chat size for 1): 16 sequence(s)")
    asked = compose_serve(["hardware=cpu", f"model.path={model_dir}", "policy.sessions=3"])
    assert served.plan_for(asked, asked.model).serving.max_concurrent == 3


def test_several_served_models_or_no_batching_plan_one_session_by_default(model_dir):
    """With serve.models the first model's cache must not take the memory the next ones are planned in; without
    batching nothing would use more sessions."""
    cfg = compose_serve(["hardware=cpu", f"model.path={model_dir}", f"serve.models=[{model_dir}]"])
    plan = served.plan_for(cfg, cfg.model)
    assert plan.limits.sessions == plan.serving.max_concurrent == 1
    reason = next(d.reason for d in plan.decisions if d.what == "sessions")
    assert reason.startswith("policy.sessions=1, not serve's default auto: the first of several served models")
    cfg = compose_serve(["hardware=cpu", f"model.path={model_dir}", "serve.batching=false"])
    plan = served.plan_for(cfg, cfg.model)
    assert plan.limits.sessions == 1
    assert "serve.batching=false serves one request at a time" in next(
        d.reason for d in plan.decisions if d.what == "sessions"
    )


def test_serve_plans_one_session_for_a_layout_it_serves_sequentially(model_dir):
    """Eager attention serves one request at a time here: auto, default or typed, reserves no KV cache for
    sessions that never run, and the plan says why."""
    for typed in ([], ["policy.sessions=auto"]):
        cfg = compose_serve(["hardware=cpu", f"model.path={model_dir}", "policy.attn_implementation=eager", *typed])
        plan = served.plan_for(cfg, cfg.model)
        assert plan.serving.mode == "sequential"
        assert plan.limits.sessions == 1
        reason = next(d.reason for d in plan.decisions if d.what == "sessions")
        assert "this layout serves one request at a time (eager" in reason, reason


def test_serve_on_several_gpus_batches_on_one_rather_than_spreading_for_sessions():
    """More sessions would move the model to a pipeline over GPUs, which this runner serves one request at a
    time: serve keeps the batched one-GPU layout with the most sessions it holds, as on a one-GPU machine."""
    one = compose_serve(["model=llama-3.1-8b", "hardware=h100_80gb", "hardware.count=1"])
    four = compose_serve(["model=llama-3.1-8b", "hardware=h100_80gb", "hardware.count=4"])
    alone, spread = served.plan_for(one, one.model), served.plan_for(four, four.model)
    assert alone.serving.mode == spread.serving.mode == "batched"
    assert spread.strategy == "single_gpu"
    assert spread.serving.max_concurrent == alone.serving.max_concurrent > 1
    assert "on one GPU, which this runner batches" in next(d.reason for d in spread.decisions if d.what == "sessions")


def test_an_extra_served_model_asking_for_remote_code_is_refused_without_consent(model_dir):
    """serve.models entries load through load_session: a profile asking for remote code never consents for you."""
    from dataclasses import replace

    cfg = compose_serve(["hardware=cpu", f"model.path={model_dir}"])
    plan = served.plan_for(cfg, cfg.model)
    asking = replace(plan, model=replace(plan.model, trust_remote_code=True))
    with pytest.raises(ShardwiseError, match="trust_remote_code"):
        served.load_session(cfg, asking, consent=remote_code_consent(cfg))


def test_serve_with_a_plan_file_serves_what_it_planned(model_dir, tmp_path, monkeypatch):
    """A plan from `shardwise plan` (one session) is served as planned, not re-sized by serve's default."""
    from planner.config.compose import make_plan

    path = make_plan(model_path=str(model_dir), hardware="cpu").save(tmp_path / "plan.json")
    loaded = []
    monkeypatch.setattr(served, "load_session", lambda cfg, plan, consent: loaded.append(plan))
    sources = served.model_sources(compose_serve(["hardware=cpu", f"plan_file={path}"]), consent=False)
    sources[0].load()
    assert loaded[0].limits.sessions == loaded[0].serving.max_concurrent == 1


@pytest.mark.slow
def test_shardwise_serve_process_answers_the_openai_client(tmp_path, model_dir):
    """The real CLI: plans, listens on a port the system picks (serve.port=0, no bind-release-reuse race),
    says which in its log line, turns ready, answers, and stops on SIGINT."""
    env = {**os.environ, "SHARDWISE_API_KEY": "k-test"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "serve",
            "hardware=cpu",
            f"model.path={model_dir}",
            "serve.port=0",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        port = None
        while port is None:  # the log line names the bound port; the hang guard is the test timeout
            line = process.stdout.readline()
            assert line, f"serve exited before listening:\n{''.join(lines)}"
            lines.append(line)
            found = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)/v1", line)
            port = int(found.group(1)) if found else None
        assert port != 0
        deadline = time.monotonic() + 300  # a hang guard: loading a tiny model takes seconds
        while True:
            assert process.poll() is None, "".join(lines)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k-test", max_retries=0, timeout=30)
        reply = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )
        assert reply.usage.completion_tokens >= 1 and reply.model == "tiny-llama"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output
    assert "POST /v1/chat/completions status=200" in output


def test_shardwise_serve_with_a_bad_block_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shardwise", "serve", "hardware=cpu", "serve.port=70000", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("shardwise serve: error: serve.port=70000 is out of range")
