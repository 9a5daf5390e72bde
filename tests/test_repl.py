"""The REPL driven through a pseudo-terminal: slash commands, \"\"\" blocks, Ctrl+C stops only the reply."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from tiny_models import tiny_llama

REPO = Path(__file__).resolve().parents[1]

# Runs the real Repl on a tiny model whose forward pass is slowed down, so a reply lasts long
# enough to be interrupted.
DRIVER = """
import sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
from tiny_models import cpu_plan
from runner.engine.loader import load
from runner.repl import Repl
from runner.engine.session import ChatSession
from runner.engine.types import SamplingParams
loaded = load(cpu_plan({model!r}, max_new_tokens=200), log=lambda line: None)
forward = loaded.model.forward
def slow_forward(*args, **kwargs):
    time.sleep(float({delay!r}))
    return forward(*args, **kwargs)
loaded.model.forward = slow_forward
session = ChatSession(loaded, defaults=SamplingParams(max_tokens=4, temperature=0), on_notice=print)
Repl(session, history_file={history!r}).run()
print("REPL-ENDED")
"""


class Terminal:
    def __init__(self, argv, cwd):
        self.master, slave = os.openpty()

        def controlling_tty():  # after setsid: make the pty this session's terminal, so ^C is SIGINT
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=controlling_tty,
            env=dict(os.environ, TERM="dumb", HOME=str(cwd)),
        )
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.seen)
            if match:
                before, self.seen = self.seen[: match.end()], self.seen[match.end() :]
                return before
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; the terminal shows {self.seen[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"process ended waiting for {pattern!r}: {self.seen[-2000:]!r}")
                self.seen += chunk.decode(errors="replace").replace("\r", "")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def terminal(tmp_path_factory, tmp_path):
    model = tiny_llama(tmp_path_factory.mktemp("models"))
    script = tmp_path / "driver.py"
    script.write_text(
        DRIVER.format(
            repo=str(REPO), tests=str(REPO / "tests"), model=str(model), delay=0.05, history=str(tmp_path / "history")
        )
    )
    term = Terminal([sys.executable, str(script)], tmp_path)
    yield term
    term.close()


@pytest.mark.slow
def test_repl_commands_multiline_and_ctrl_c(terminal, tmp_path):
    t = terminal
    t.expect(r">>> ")
    t.send("/help\n")
    assert "/set KEY VALUE" in t.expect(r">>> ")
    t.send("/set max_tokens 3\n")
    assert "max_tokens = 3" in t.expect(r">>> ")
    t.send("/set temperature warm\n")
    assert "is not a float" in t.expect(r">>> ")
    t.send("/system be brief\n")
    t.expect(r">>> ")
    t.send('"""\nfirst line\nsecond line\n"""\n')
    stats = t.expect(r">>> ")
    assert re.search(r"\d+ tokens · prompt \d+ · first token [\d.]+s", stats), stats
    t.send("/save conv.json\n")
    t.expect(r">>> ")
    saved = json.loads((tmp_path / "conv.json").read_text())
    assert saved["system_prompt"] == "be brief"
    assert saved["messages"][0] == {"role": "user", "content": "first line\nsecond line"}
    assert saved["params"]["max_tokens"] == 3 and len(saved["messages"]) == 2

    # A long reply (about 10 s at 0.05 s per token) stopped by Ctrl+C: the session goes on.
    t.send("/set max_tokens 200\n")
    t.expect(r">>> ")
    t.send("tell me a long story\n")
    time.sleep(1.5)
    t.send("\x03")
    stopped = t.expect(r">>> ", timeout=15)
    assert "[stopped]" in stopped and "cancelled" in stopped
    t.send("/stats\n")
    stats = t.expect(r">>> ")
    assert "2 turns" in stats and "4 messages" in stats

    t.send("/clear\n")
    assert "conversation cleared" in t.expect(r">>> ")
    t.send("/load conv.json\n")
    assert "loaded 2 messages" in t.expect(r">>> ")
    t.send("/exit\n")
    t.expect("REPL-ENDED")
    assert t.proc.wait(timeout=10) == 0
    assert "/set max_tokens 3" in (tmp_path / "history").read_text()
