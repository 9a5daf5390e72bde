"""Hardening of the runner verbs (issue 10): bad plan files are exit 2 with what is wrong, remote code runs only
with consent, and `launch` forwards generation settings, prompts and signals to the process it starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cli_runner import free_port, port_was_taken, shardwise
from tiny_models import cpu_plan, tiny_gpt2

pytestmark = pytest.mark.slow


def error_line(result, verb: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"shardwise {verb}: error: "), result.stderr
    return line


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return tiny_gpt2(tmp_path_factory.mktemp("models"))


def here_plan(model_dir, **kw):
    """A CPU plan for `model_dir` made for this machine (so the hardware check passes)."""
    from planner.config.compose import current_fingerprint

    return cpu_plan(model_dir, fingerprint=current_fingerprint("cpu"), **kw)


def _without_tokenizer(model_dir: Path, where: Path) -> Path:
    import shutil

    shutil.copytree(model_dir, where)
    for f in where.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
            f.unlink()
    return where


CASES = ["gpu 97", "cuda:98", "missing source", "int64", "no tokenizer", "source is config.json", "source /dev/null"]


@pytest.mark.parametrize("case", CASES)
def test_plan_files_wrong_for_this_machine_exit_2_with_what_is_wrong(gpt2, tmp_path, case):
    plan = here_plan(gpt2)
    needle = {
        "gpu 97": "places weights on GPU 97 but this machine has",  # an index no machine has, GPU or not
        "cuda:98": "places weights on GPU 98",
        "missing source": "model source '/nonexistent/model' does not exist",
        "int64": "model.dtype is 'int64'",
        "no tokenizer": "has no tokenizer",
        "source is config.json": "config.json' is a file, not a model directory",  # was exit 3, memory advice
        "source /dev/null": "'/dev/null' is a file, not a model directory",
    }[case]
    if case == "gpu 97":
        plan = replace(plan, device_map={"": 97})
    elif case == "cuda:98":
        plan = replace(plan, device_map={"": "cuda:98"})
    elif case == "missing source":
        plan = replace(plan, model=replace(plan.model, source="/nonexistent/model"))
    elif case == "int64":
        plan = replace(plan, model=replace(plan.model, dtype="int64"))
    elif case.startswith("source"):
        source = str(gpt2 / "config.json") if "config.json" in case else "/dev/null"
        plan = replace(plan, model=replace(plan.model, source=source))
    else:
        plan = here_plan(_without_tokenizer(gpt2, tmp_path / "no-tokenizer"))
    plan.save(tmp_path / "plan.json")
    line = error_line(shardwise("chat", "plan_file=plan.json", "prompt=hi", cwd=tmp_path), "chat")
    assert needle in line and "fallback" not in line and "offload" not in line


def _remote_code_model(gpt2: Path, where: Path) -> Path:
    """The tiny gpt2 with an auto_map pointing at Python that leaves a marker file when it is imported."""
    import shutil

    shutil.copytree(gpt2, where)
    config = json.loads((where / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_marker.MarkerModel"}
    (where / "config.json").write_text(json.dumps(config))
    marker = where.parent / "REMOTE_CODE_RAN"
    (where / "modeling_marker.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return where


def test_a_plan_file_asking_for_remote_code_is_refused_without_consent_and_runs_nothing(gpt2, tmp_path):
    model = _remote_code_model(gpt2, tmp_path / "remote")
    plan = here_plan(model)
    plan = replace(plan, model=replace(plan.model, trust_remote_code=True))
    plan.save(tmp_path / "plan.json")
    for verb, extra in (("chat", ["prompt=hi"]), ("serve", ["serve.port=1"]), ("launch", ["launch.prompt=[hi]"])):
        line = error_line(shardwise(verb, "plan_file=plan.json", *extra, cwd=tmp_path), verb)
        assert "model.trust_remote_code=true" in line and "add trust_remote_code=true" in line
    assert not (tmp_path / "REMOTE_CODE_RAN").exists()


def test_the_report_shows_that_a_plan_runs_remote_code(tmp_path):
    from planner.config.compose import make_plan

    result = shardwise("plan", "model=gpt2", "hardware=t4", "model.trust_remote_code=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "remote code: yes" in result.stdout and "trust_remote_code=true" in result.stdout
    plain = shardwise("plan", "model=gpt2", "hardware=t4", cwd=tmp_path)
    assert "remote code" not in plain.stdout
    assert make_plan("gpt2", "t4", ["model.trust_remote_code=true"]).model.trust_remote_code is True


def test_launch_forwards_generation_settings_and_every_prompt_to_the_one_process_chat(gpt2, tmp_path):
    here_plan(gpt2).save(tmp_path / "plan.json")
    result = shardwise(
        "launch",
        "plan_file=plan.json",
        'launch.prompt=["Hello!", "And in French?"]',
        "generation.max_tokens=2",
        "generation.temperature=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    stats = [line for line in result.stderr.splitlines() if " tokens · prompt " in line]
    assert len(stats) == 2 and all(line.startswith("2 tokens") for line in stats), result.stderr
    first, second = (int(line.split("prompt ")[1].split()[0]) for line in stats)
    assert second > first  # the second turn carries the first exchange: one conversation


def test_launch_dry_run_prints_the_forwarded_overrides(gpt2, tmp_path):
    here_plan(gpt2).save(tmp_path / "plan.json")
    result = shardwise(
        "launch",
        "plan_file=plan.json",
        'launch.prompt=["it\'s", x]',
        "generation.seed=7",
        "launch.dry_run=true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "generation.seed=7" in result.stdout and '\'prompt=["it\'"\'"\'s","x"]\'' in result.stdout


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_to_launch_serve_stops_the_server_it_started(gpt2, tmp_path):
    here_plan(gpt2).save(tmp_path / "plan.json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for attempt in range(3):  # another process may take the free port before the server binds it: retry
        port = free_port()
        log = (tmp_path / f"launch{attempt}.log").open("w+")
        parent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runner",
                "launch",
                "plan_file=plan.json",
                "launch.task=serve",
                f"launch.port={port}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 300  # a hang guard: the tiny model listens within seconds
        while not _listening(port) and parent.poll() is None:
            assert time.time() < deadline, "the server never listened"
            time.sleep(0.3)
        if parent.poll() is None:
            break
        log.seek(0)
        output = log.read()
        assert attempt < 2 and port_was_taken(output), output[-3000:]
    try:
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.time() + 15
        while _listening(port) and time.time() < deadline:
            time.sleep(0.3)
        assert not _listening(port), "the server outlived `shardwise launch`"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_chat_stdout_holds_only_the_answer_and_nothing_is_left_behind(gpt2, tmp_path):
    result = shardwise(
        "chat", f"model.path={gpt2}", "hardware=cpu", "prompt=hi", "generation.max_tokens=3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    # the reply alone (random weights may write any character, line breaks too); notes and stats go to stderr
    assert result.stdout.endswith("\n") and "loading" not in result.stdout and " tokens · " not in result.stdout
    assert "loading tiny-gpt2" in result.stderr and " tokens · prompt " in result.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/chat/<time>/ and no log


def test_memory_that_stays_exhausted_through_the_recovery_ladder_exits_3(gpt2, tmp_path):
    """An out-of-memory error on every generate call (injected at interpreter start through sitecustomize):
    the ladder frees and retries, halves max_tokens, finds no fallback, and `shardwise chat` exits 3 with one
    line, not 2 (bad input) and not a traceback."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import torch, transformers\n"
        "def _oom(*args, **kwargs):\n"
        "    raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB (injected)')\n"
        "transformers.GenerationMixin.generate = _oom\n"
    )
    path = os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")])
    result = shardwise(
        "chat",
        f"model.path={gpt2}",
        "hardware=cpu",
        "prompt=hi",
        "generation.max_tokens=64",
        cwd=tmp_path,
        env_extra={"PYTHONPATH": path},
        timeout=600,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("shardwise chat: error: out of memory on") and "every fallback" in last, last
    assert "Traceback" not in result.stderr
    assert "retrying with max_tokens=32" in result.stderr  # the ladder ran before giving up
