"""Half-open connections (issue 18, item 3): a client that sends part of its headers, or a Content-Length whose
body never comes, is closed after serve.request_read_timeout_s; past serve.max_connections the longest-waiting
idle socket makes room, so /health keeps answering; at the process's descriptor limit the cap is lowered to fit
and the server keeps serving, with rate-limited log lines. Loopback only, bounded counts and times."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from server_fakes import FakeSession
from test_server import live_server

from runner.openai.connections import RateLimitedLog, connection_cap

READ_TIMEOUT_S = 0.6
# an answer "at once", on a machine shared with other test runs: far below the 20-30 s read timeouts the tests that
# need to tell eviction from timing out use, far above the milliseconds it takes on an idle machine
ANSWER_S = 8


def half_open(url: str, kind: str) -> socket.socket:
    """A raw socket holding an unfinished request: `headers` stops mid-header, `body` sends a short body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    if kind == "headers":
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    else:
        sock.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"model"')
    return sock


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_half_open_sockets_are_closed_after_the_read_timeout_and_health_answers_meanwhile():
    with live_server(FakeSession(), request_read_timeout_s=READ_TIMEOUT_S) as server:
        socks = [half_open(server.url, "headers" if i % 2 else "body") for i in range(40)]
        start = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=ANSWER_S).status_code == 200
        assert time.monotonic() - start < ANSWER_S
        # every one is closed by the server, the body-less POST as well as the partial headers
        closed = [closed_by_server(s, within_s=READ_TIMEOUT_S + ANSWER_S) for s in socks]
        assert all(closed), f"{closed.count(False)} of {len(socks)} half-open sockets still open"
        assert time.monotonic() - start < READ_TIMEOUT_S + 2 * ANSWER_S
        for s in socks:
            s.close()
        # a keep-alive client that finished its request is not cut by the read clock
        with httpx.Client(timeout=5) as client:
            assert client.get(server.url + "/health").status_code == 200
            time.sleep(READ_TIMEOUT_S * 1.5)
            assert client.get(server.url + "/health").status_code == 200


def test_past_max_connections_the_longest_waiting_socket_makes_room_for_a_real_request():
    with live_server(FakeSession(), request_read_timeout_s=30, max_connections=8) as server:
        socks = [half_open(server.url, "headers") for _ in range(20)]
        start = time.monotonic()
        for _ in range(3):  # every fresh request gets in although 20 sockets wait to finish theirs
            assert httpx.get(server.url + "/health", timeout=ANSWER_S).status_code == 200
        assert time.monotonic() - start < ANSWER_S
        # the oldest were closed to make room (the 30 s read timeout has not passed)
        assert closed_by_server(socks[0], within_s=ANSWER_S)
        for s in socks:
            s.close()


def test_the_connection_cap_fits_the_descriptor_limit():
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap, reason = connection_cap(10**9)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no descriptor limit here")
    assert cap < soft and "ulimit -n" in reason
    assert connection_cap(1) == (1, None)


def test_a_rate_limited_log_folds_repeats_into_a_count(caplog):
    import logging

    logger = logging.getLogger("shardwise.test.ratelimit")
    folded = RateLimitedLog(logger, interval_s=0.3)
    with caplog.at_level(logging.INFO, logger=logger.name):
        printed = [folded(logging.INFO, "same thing") for _ in range(1000)]
        time.sleep(0.35)
        folded(logging.INFO, "same thing")
    assert printed.count(True) == 1
    assert len(caplog.records) == 2
    assert "999 more" in caplog.records[1].getMessage()


SERVER_AT_FD_LIMIT = textwrap.dedent(
    """
    import resource, sys, time, logging
    sys.path.insert(0, "tests")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))
    from server_fakes import FakeSession
    from background_server import BackgroundServer
    from runner.openai.app import ModelSource, ServeSettings, create_app
    app = create_app([ModelSource("fake-chat", load=FakeSession)], ServeSettings(request_read_timeout_s=20))
    with BackgroundServer(app, log_level="info") as server:
        print(server.url, flush=True)
        time.sleep(60)
    """
)


def test_at_the_descriptor_limit_the_server_keeps_serving_and_logs_sanely():
    """Twice as many half-open sockets as `ulimit -n` allows the server: /health still answers at once."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_AT_FD_LIMIT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        socks = []
        for _ in range(320):
            try:
                socks.append(half_open(url, "headers"))
            except OSError:  # the server's backlog is full for a moment: it makes room as it accepts
                time.sleep(0.01)
        time.sleep(1.0)
        start = time.monotonic()
        assert httpx.get(url + "/health", timeout=ANSWER_S).status_code == 200
        assert time.monotonic() - start < ANSWER_S
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "lowered to" in err
    assert "Too many open files" not in err or err.count("Too many open files") < 5
    assert len(err.splitlines()) < 50, err[-3000:]


def test_accepted_connections_send_without_nagles_delay():
    """A listening socket made with proto 0 (as `shardwise serve` and the tests bind) passes proto 0 to the sockets
    it accepts, which asyncio leaves with Nagle's algorithm on: streamed chunks then waited ~40 ms for the client's
    delayed ACK. The server's protocol turns TCP_NODELAY on for every connection (runner.openai.connections)."""
    from runner.openai.connections import no_delay

    class Transport:
        def __init__(self, sock):
            self.sock = sock

        def get_extra_info(self, name):
            return self.sock if name == "socket" else None

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # what asyncio would keep
                no_delay(Transport(accepted))
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@contextlib.contextmanager
def uvicorn_log():
    """The records uvicorn's own logger emits (it does not propagate to the root logger caplog reads); attached
    after the server started, since uvicorn's logging setup replaces that logger's handlers."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _exchange(url: str, request: bytes | tuple[bytes, ...]) -> bytes:
    """Send raw bytes (a tuple: in pieces, 0.2 s apart) and read until the server closes (every case below ends in
    `connection: close`)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=ANSWER_S) as sock:
        for piece in request if isinstance(request, tuple) else (request,):
            sock.sendall(piece)
            time.sleep(0.2)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


MALFORMED = {
    "negative content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    "two content-lengths": b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad chunk size": b"POST /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
    "gzip transfer-encoding": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    "NUL in a header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "no Host": b"GET /v1/models HTTP/1.1\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    # h11 refuses headers that stay incomplete past 16 KiB (sent whole and at once they may be taken)
    "headers too long": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 10_000, b"a" * 10_000),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_request_http_cannot_parse_gets_an_openai_error_body_and_the_server_goes_on(case, caplog):
    """h11's refusals are OpenAI error bodies (400, or 431 for oversized headers) naming what was wrong, logged on
    one rate-limited line, never uvicorn's text/plain body nor a 5xx; a normal request is answered right after."""
    with live_server(FakeSession()) as server, caplog.at_level(logging.INFO), uvicorn_log() as uvicorn_records:
        answer = _exchange(server.url, MALFORMED[case])
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        assert status == (431 if "too long" in case else 400), answer[:300]
        assert b"content-type: application/json" in head.lower()
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_http"
        assert error["message"].startswith("the request is not valid HTTP/1.1 (") and len(error["message"]) < 300
        assert httpx.get(server.url + "/v1/models", timeout=ANSWER_S).status_code == 200
    # nothing else answers or fails: a route that answers without reading the broken body stands down
    assert not uvicorn_records, [r.getMessage() for r in uvicorn_records]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r for r in caplog.records if r.name == "shardwise.serve" and "answered" in r.getMessage()]


def test_an_upgrade_header_is_served_as_plain_http_without_install_advice_in_the_log():
    with live_server(FakeSession()) as server, uvicorn_log() as uvicorn_records:
        answer = _exchange(
            server.url,
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 200")
    assert not uvicorn_records, [r.getMessage() for r in uvicorn_records]
