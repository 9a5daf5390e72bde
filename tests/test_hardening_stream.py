"""A streaming client that keeps its connection open but stops reading (issue 10): after
serve.stream_stall_timeout_s the request is cancelled, its batch slot serves the next request, /metrics counts
it, and generation never runs ahead of the client by more than a bounded number of deltas."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from background_server import BackgroundServer
from server_fakes import FakeSession
from test_server import MODEL, wait_for

from runner.openai.app import ModelSource, ServeSettings, create_app
from runner.openai.queue import MAX_PENDING_DELTAS, Job

STALL_S = 0.5


class CountingSession(FakeSession):
    """The fake session, remembering how many tokens each finished generation produced."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.generated: list[int] = []

    def generate(self, messages, params, *, cancel=None, on_delta=None):
        completion = super().generate(messages, params, cancel=cancel, on_delta=on_delta)
        self.generated.append(completion.usage.completion_tokens)
        return completion


@contextmanager
def small_buffer_server(session):
    """A live server whose connections have a small kernel send buffer (set on the listening socket, which
    accepted sockets inherit), so a client that stops reading holds a send after a few dozen KB."""
    source = ModelSource(MODEL, load=lambda: session)
    server = BackgroundServer(create_app([source], ServeSettings(stream_stall_timeout_s=STALL_S)))
    server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    with server:
        wait_for(lambda: httpx.get(server.url + "/health").status_code == 200, timeout_s=60)
        yield server


def stalled_stream(url: str, max_tokens: int) -> socket.socket:
    """A raw client with a tiny receive buffer that sends a streaming request and never reads the answer."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": True}
    ).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    sock.connect((host, int(port)))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def _read_until(sock: socket.socket, marker: bytes, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    prefix = f'shardwise:{name}{{model_name="{MODEL}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


def _second_request_answered(server, within_s: float) -> None:
    started = time.monotonic()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "next"}], "max_tokens": 3, "temperature": 0}
    answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=90)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 3
    assert time.monotonic() - started < within_s


def test_a_stream_whose_client_stops_reading_is_cancelled_and_frees_its_slot(caplog):
    # 1 ms a token: without the stall limit the stalled request would hold the only slot for 100 s
    session = CountingSession(context_tokens=10**6, token_delay_s=0.001)
    with caplog.at_level(logging.WARNING, logger="shardwise.serve"), small_buffer_server(session) as server:
        sock = stalled_stream(server.url, max_tokens=100000)
        try:
            wait_for(session.cancel_seen.is_set, timeout_s=30)
            _second_request_answered(server, within_s=60)  # the stalled one would hold the slot for 100 s
            assert _metric(server, "request_stalled_total") == 1.0
            # a client that reads again gets what was sent, then the reason its stream ended, then [DONE]
            received = _read_until(sock, b"data: [DONE]", timeout_s=20)
            assert b'"code":"stream_stalled"' in received
        finally:
            sock.close()
    stalled = [r.getMessage() for r in caplog.records if "serve.stream_stall_timeout_s" in r.getMessage()]
    assert len(stalled) == 1 and f"accepted no data for {STALL_S} s" in stalled[0]
    # generation ran ahead of the client by what the socket buffers and MAX_PENDING_DELTAS hold, not to max_tokens
    assert session.generated[0] < 2000, session.generated


def test_a_job_hands_over_a_bounded_number_of_deltas_and_stops_waiting_when_cancelled():
    loop = asyncio.new_event_loop()
    try:
        job = Job(lambda job: None, loop)
        handed = [job.emit_delta("delta", 0, "x") for _ in range(MAX_PENDING_DELTAS)]
        assert all(handed)
        blocked = threading.Thread(target=lambda: handed.append(job.emit_delta("delta", 0, "y")))
        blocked.start()
        blocked.join(timeout=0.3)
        assert blocked.is_alive()  # no room until the stream takes one
        job.taken(("delta", 0, "x"))
        blocked.join(timeout=5)
        assert not blocked.is_alive() and handed[-1] is True
        late = threading.Thread(target=lambda: handed.append(job.emit_delta("delta", 0, "z")))
        late.start()
        job.cancel.set()
        late.join(timeout=5)
        assert not late.is_alive() and handed[-1] is False  # dropped: nobody will read it
    finally:
        loop.close()


def test_a_turn_that_holds_the_model_never_waits_on_its_client_and_the_bound_still_counts_right():
    """A sequential turn (seeded sampling, penalties: the batch paused, the model's lock held) hands deltas over
    past the bound rather than wait: one slow reader must not stall every other request. Deltas taken later
    give back only the places they used, so the bound holds again for what follows."""
    loop = asyncio.new_event_loop()
    try:
        job = Job(lambda job: None, loop)
        extra = 10
        assert all(job.emit_delta("delta", 0, "x", wait=False) for _ in range(MAX_PENDING_DELTAS + extra))
        for _ in range(extra + 1):  # the ten past the bound, then one place of the bound itself
            job.taken(("delta", 0, "x"))
        assert job.emit_delta("delta", 0, "y")  # exactly one place is free again
        blocked = threading.Thread(target=lambda: job.emit_delta("delta", 0, "z"))
        blocked.start()
        blocked.join(timeout=0.3)
        assert blocked.is_alive()  # the bound holds: the over-the-bound deltas did not add places
        job.cancel.set()
        blocked.join(timeout=5)
        assert not blocked.is_alive()
    finally:
        loop.close()


def test_a_batched_request_keeps_only_the_newest_output_while_its_reader_waits():
    from runner.engine.batching import Inbox

    inbox = Inbox()
    for snapshot in ([1], [1, 2], [1, 2, 3]):  # transformers streams cumulative snapshots
        inbox.put(snapshot)
    assert inbox.get(timeout=0.1) == [1, 2, 3]
    with pytest.raises(queue.Empty):
        inbox.get(timeout=0.05)


def test_a_batched_generation_whose_stream_takes_nothing_waits_bounded_and_frees_its_slot_on_cancel(tmp_path):
    """The server's producer chain on the batched path (generation_work -> session -> batching engine): with no
    event taken, generation stops after MAX_PENDING_DELTAS deltas instead of running to max_tokens, and the
    cancel a stall sends frees the batch slot at once."""
    from tiny_models import cpu_plan, cpu_serving, tiny_llama

    from runner.engine.batching import attach
    from runner.engine.loader import load
    from runner.engine.session import ChatSession
    from runner.engine.types import SamplingParams
    from runner.openai.protocol import parse_chat_request
    from runner.openai.responses import generation_work

    model_dir = tiny_llama(tmp_path, max_position_embeddings=1024)
    loaded = load(cpu_plan(model_dir, max_new_tokens=1000), log=lambda line: None)
    engine = attach(loaded, cpu_serving(model_dir, sessions=1, context_tokens=1024), log=lambda line: None)
    assert engine is not None
    session = ChatSession(loaded, defaults=SamplingParams())
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 900, "stream": True}
    chat = parse_chat_request(body, SamplingParams(temperature=0), 1)
    loop = asyncio.new_event_loop()
    try:
        job = Job(generation_work(session, chat), loop)
        worker = threading.Thread(target=job.run)
        worker.start()
        wait_for(lambda: job._room._value == 0, timeout_s=120)  # every place taken: the generation waits
        assert engine.admission.running == 1 and worker.is_alive()
        job.cancel.set()  # what a stall (or a disconnect) does
        worker.join(timeout=10)
        assert not worker.is_alive() and engine.admission.running == 0
        loop.run_until_complete(asyncio.sleep(0))  # deliver the events the worker handed over
        events = []
        while not job.events.empty():
            events.append(job.events.get_nowait())
        deltas = [e for e in events if e[0] == "delta"]
        assert len(deltas) == MAX_PENDING_DELTAS
        choice = next(e[2] for e in events if e[0] == "choice")
        assert choice.finish_reason == "cancelled" and choice.usage.completion_tokens < 900 // 2
    finally:
        engine.close()
        loop.close()
