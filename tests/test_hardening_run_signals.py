"""Ctrl+C and SIGTERM (issue 18, item 15): an interrupt during planning, model loading or a one-shot generation
ends with one line, no traceback and exit 130 (SIGTERM: 143), never an abort from a C++ thread, and leaves no
empty run directory behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import tiny_gpt2

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return tiny_gpt2(tmp_path_factory.mktemp("models"))


def start(args, cwd) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "shardwise", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float = 120) -> list[str]:
    """Read stderr until a line holds `needle`; the lines read so far."""
    lines = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never came: {''.join(lines)[-2000:]}")


def stop(proc: subprocess.Popen, signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def assert_clean(code: int, err: str, expected: int) -> None:
    assert code == expected, err[-3000:]
    assert "Traceback" not in err and "terminate called" not in err, err[-3000:]


def test_ctrl_c_during_planning_exits_130_in_one_line(tmp_path):
    proc = start(["plan", "model=gpt-oss-120b", "hardware=cpu"], tmp_path)
    time.sleep(0.5)  # Hydra composing or the planner measuring this host: the interrupt lands mid-work
    code, err = stop(proc, signal.SIGINT)
    if code == 0:
        pytest.skip("the plan finished before the interrupt")
    assert_clean(code, err, 130)
    assert err.strip().splitlines()[-1] == "shardwise plan: interrupted"


def test_a_ctrl_c_after_the_verb_ended_does_not_kill_the_finished_run(tmp_path):
    """The interpreter's shutdown restores the default SIGINT action; a late Ctrl+C then was a death by signal
    (-2) for a plan that had finished. shardwise.cli.program ignores it once the verb has ended."""
    script = (
        "import os, signal, sys\n"
        "import shardwise.cli as cli\n"
        "def verb_then_ctrl_c(argv=None):\n"
        "    print('done', flush=True)\n"
        "    return None\n"
        "cli.main = verb_then_ctrl_c\n"
        "cli.program()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"  # after program(): where a Ctrl+C during shutdown lands
        "print('still here', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout == "done\nstill here\n" and "Traceback" not in proc.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_during_loading_ends_cleanly_and_leaves_no_run_directory(gpt2, tmp_path, signum, code):
    proc = start(["chat", f"model.path={gpt2}", "hardware=cpu", "prompt=hi"], tmp_path)
    wait_for_line(proc, "loading tiny-gpt2")
    rc, err = stop(proc, signum)
    assert_clean(rc, err, code)
    leftovers = [p for p in (tmp_path / "outputs").rglob("*")] if (tmp_path / "outputs").exists() else []
    assert not [p for p in leftovers if p.is_dir() and not any(p.iterdir())], leftovers


def test_ctrl_c_during_a_one_shot_generation_exits_130_without_an_abort(gpt2, tmp_path):
    for _ in range(3):  # the abort came 2 times out of 3 before: try a few times
        proc = start(
            ["chat", f"model.path={gpt2}", "hardware=cpu", "prompt=hi", "generation.max_tokens=200", "stream=true"],
            tmp_path,
        )
        wait_for_line(proc, "loading tiny-gpt2")
        proc.stdout.read(1)  # the first streamed character: generation is running
        code, err = stop(proc, signal.SIGINT)
        if code == 0:
            continue  # finished before the interrupt arrived
        assert_clean(code, err, 130)
        assert err.strip().splitlines()[-1] == "shardwise chat: interrupted"


def test_sigterm_is_handled_from_before_the_verbs_module_is_imported(monkeypatch):
    """Importing chat's or launch's module takes a second or more on a busy machine; a SIGTERM then was a death by
    signal (-15), not exit 143 with one line. The handler is in place before the import."""
    from shardwise import cli

    seen = {}

    def runner_of(verb):
        seen["handler"] = signal.getsignal(signal.SIGTERM)
        return lambda rest: None

    monkeypatch.setattr(cli, "verb_runner", runner_of)
    before = signal.getsignal(signal.SIGTERM)
    cli.main(["launch"])
    assert seen["handler"] not in (signal.SIG_DFL, signal.SIG_IGN, None) and callable(seen["handler"])
    assert signal.getsignal(signal.SIGTERM) == before
