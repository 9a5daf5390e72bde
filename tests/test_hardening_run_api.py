"""The Python API under threads (issue 18, item 13): calls beyond the batch wait their turn, bounded by
OpenAIChat(queue_timeout_s=...), and a call that cannot get in names what an API user can change, never the
server's serve.max_queue."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tiny_models import tiny_gpt2

from planner.errors import ShardwiseError
from runner.engine.batching import Admission, QueueFull

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_a_full_line_waits_for_room_up_to_its_bound():
    admission = Admission(1, 1, full_wait_s=5.0, bound="OpenAIChat(queue_timeout_s=5)")
    never = threading.Event()
    assert admission.enter(never)  # the one slot
    waiter = threading.Thread(target=lambda: admission.enter(never) and admission.leave())
    waiter.start()
    while admission.waiting < 1:  # the line (one place) is full now
        time.sleep(0.01)
    got_in = []
    third = threading.Thread(target=lambda: got_in.append(admission.enter(never)))
    third.start()
    time.sleep(0.3)
    assert not got_in  # still waiting for room, no QueueFull
    admission.leave()  # the slot frees: the waiter runs, then the third
    third.join(timeout=5)
    waiter.join(timeout=5)
    assert got_in == [True]


def test_a_line_that_stays_full_raises_naming_the_callers_setting():
    admission = Admission(1, 0, full_wait_s=0.2, bound="OpenAIChat(queue_timeout_s=0.2): pass a larger one")
    assert admission.enter(threading.Event())
    start = time.monotonic()
    with pytest.raises(QueueFull) as caught:
        admission.enter(threading.Event())
    assert 0.15 < time.monotonic() - start < 3
    assert "queue_timeout_s" in str(caught.value) and "serve.max_queue" not in str(caught.value)
    # the server's line still answers at once, naming its own setting
    server = Admission(1, 0)
    assert server.enter(threading.Event())
    with pytest.raises(QueueFull, match="serve.max_queue=0"):
        server.enter(threading.Event())


def test_queue_timeout_must_be_seconds():
    from runner import OpenAIChat

    for bad in (-1, float("nan"), "10", True):
        with pytest.raises(ShardwiseError, match="queue_timeout_s"):
            OpenAIChat(model="gpt2", use_cpu=True, queue_timeout_s=bad)


@pytest.mark.slow
def test_48_threads_on_a_4_session_chat_all_get_answers(tmp_path):
    from runner import OpenAIChat

    chat = OpenAIChat(
        model_path=str(tiny_gpt2(tmp_path)), use_cpu=True, overrides=["policy.sessions=4"], notice=lambda line: None
    )
    assert chat.session.loaded.batching is not None

    def ask(i: int) -> str:
        return chat.chat([{"role": "user", "content": f"hello {i}"}], max_tokens=4, temperature=0)

    with chat, ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(ask, range(48)))
    assert len(answers) == 48 and all(isinstance(a, str) for a in answers)
    assert not chat.session.loaded.batching.usable  # the with-block closed the batching loop
    assert not [t for t in threading.enumerate() if "generation_loop" in t.name and t.is_alive()]
    assert isinstance(chat.chat([{"role": "user", "content": "after"}], max_tokens=2, temperature=0), str)


@pytest.mark.slow
def test_a_script_that_never_closes_its_batching_chat_still_exits(tmp_path):
    """transformers' generation loop must not hold the interpreter open after the script's last line."""
    model = tiny_gpt2(tmp_path)
    script = (
        "from runner import OpenAIChat\n"
        f"chat = OpenAIChat(model_path={str(model)!r}, use_cpu=True, overrides=['policy.sessions=2'],"
        " notice=lambda line: None)\n"
        "assert chat.session.loaded.batching is not None\n"
        "print(repr(chat.chat([{'role': 'user', 'content': 'hi'}], max_tokens=2, temperature=0)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env={**os.environ, **OFFLINE}
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("'")
