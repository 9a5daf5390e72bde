"""Connection hygiene for `shardwise serve`: half-open sockets are dropped, connections are capped below the
file-descriptor limit, and the event loop's resource errors are logged at a sane rate.

uvicorn (0.29-0.55) arms a timer only between keep-alive requests; a client that sends part of its headers, or a
Content-Length whose body never comes, holds its socket forever, and enough of them exhaust the descriptors so that
`accept()` fails (asyncio logs each failure). Its `limit_concurrency` answers 503 to *complete* requests, which
would lock /health out while idle sockets hold the slots. So this module subclasses uvicorn's h11 protocol:

- each request must arrive whole (headers and body) within `serve.request_read_timeout_s`, else the socket closes;
- at most `serve.max_connections` sockets are open (lowered to fit the process's descriptor limit); one more
  closes the longest-waiting socket that has not sent a complete request, so a real client still gets in;
- asyncio's "socket.accept() out of system resource" and our own drop notices are logged once per interval with
  a count, never once per event;
- every connection sends without Nagle's delay (TCP_NODELAY), which streamed tokens need (`no_delay`);
- a request h11 cannot parse (a bad Content-Length, a broken chunk, a header with NUL) is answered with an OpenAI
  error body naming what was wrong (uvicorn's own answer is a text/plain "Invalid HTTP request received."), and
  uvicorn's per-request warnings for such requests and for `Upgrade:` headers are folded into rate-limited lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("shardwise.serve")

# Descriptors kept free for everything that is not a client socket: model files, the tokenizer, log files,
# pipes of worker threads' libraries. accept() must fail on our cap, never on the kernel's.
FD_RESERVE = 64
# A request still being read is in one of these states of h11's view of the client.
READING = (h11.IDLE, h11.SEND_BODY)


class RateLimitedLog:
    """Log a recurring event at most once per `interval_s`, with how many were folded into each line."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0):
        self.logger = logger
        self.interval_s = interval_s
        self._last_s = float("-inf")
        self._folded = 0

    def __call__(self, level: int, message: str) -> bool:
        now = time.monotonic()
        if now - self._last_s < self.interval_s:
            self._folded += 1
            return False
        more = f" (and {self._folded} more like it in the last {self.interval_s:g} s)" if self._folded else ""
        self.logger.log(level, "%s%s", message, more)
        self._last_s, self._folded = now, 0
        return True


def open_fd_count() -> int:
    """Descriptors this process holds now (Linux /proc; elsewhere 0, the reserve then covers them)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def connection_cap(requested: int) -> tuple[int, str | None]:
    """The number of client sockets to allow: `requested`, lowered to fit RLIMIT_NOFILE (with the reason)."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return requested, None
    if soft == resource.RLIM_INFINITY:
        return requested, None
    room = soft - open_fd_count() - FD_RESERVE
    if room >= requested:
        return requested, None
    cap = max(1, room)
    return cap, (
        f"serve.max_connections={requested} lowered to {cap}: this process may open {soft} files (ulimit -n) and "
        f"keeps {FD_RESERVE} for itself; raise `ulimit -n` to allow more"
    )


def guarded_protocol(read_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """An h11 protocol class for one server: its own registry of sockets still sending a request."""

    class GuardedH11Protocol(_Guarded):
        pass

    GuardedH11Protocol.read_timeout_s = float(read_timeout_s)
    GuardedH11Protocol.max_connections = int(max_connections)
    GuardedH11Protocol.reading = {}  # protocol -> monotonic time its current request started
    GuardedH11Protocol.drop_log = RateLimitedLog(log)
    return GuardedH11Protocol


class _Guarded(H11Protocol):
    read_timeout_s: float
    max_connections: int
    reading: dict
    drop_log: RateLimitedLog

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        no_delay(transport)
        self._read_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections and not self._evict_one():
            self.drop_log(
                logging.WARNING,
                f"refused a connection: serve.max_connections={self.max_connections} sockets are open, "
                "each with a request in progress",
            )
            transport.close()
            return
        self._start_reading()

    def _evict_one(self) -> bool:
        """Close the socket that has waited longest for its request to arrive; False when none is waiting."""
        for other in sorted(self.reading, key=self.reading.get):
            if other is not self:
                other._drop(f"serve.max_connections={self.max_connections} sockets are open")
                return True
        return False

    def _start_reading(self) -> None:
        """A request starts arriving: its clock starts, and the socket may be closed to make room."""
        if self._read_timer is None:
            self.reading[self] = time.monotonic()
            if self.read_timeout_s > 0:
                self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _stop_reading(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self.reading.pop(self, None)

    def _read_timed_out(self) -> None:
        self._read_timer = None
        self._drop(f"no complete request within serve.request_read_timeout_s={self.read_timeout_s:g}")

    def _drop(self, why: str) -> None:
        self._stop_reading()
        if not self.transport.is_closing():
            self.drop_log(logging.INFO, f"closed a connection from {_peer(self.client)}: {why}")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state in READING:  # a new request on a kept-alive socket starts its own clock
            self._start_reading()
        super().data_received(data)
        if self.conn.their_state not in READING:  # the whole request is in (or the connection is over)
            self._stop_reading()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state in READING and self._read_timer is None:
            # idle between keep-alive requests (uvicorn's keep-alive timer closes it): first to make room
            self.reading[self] = time.monotonic()

    def connection_lost(self, exc) -> None:
        self._stop_reading()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 could not parse with an OpenAI error body, then close (as uvicorn does).

        uvicorn calls this only from inside its `except h11.RemoteProtocolError`, so the parser's reason (and its
        status hint: 431 for headers too long to buffer) is the exception being handled."""
        exc = sys.exc_info()[1]
        reason = str(exc) if isinstance(exc, h11.RemoteProtocolError) and str(exc) else "malformed request"
        reason = reason if len(reason) <= 160 else reason[:160] + "..."  # h11 may quote a whole header line
        hint = getattr(exc, "error_status_hint", 400)
        # a Transfer-Encoding h11 does not implement is hinted 501; for the client it is a request to resend plainly
        status = 431 if hint == 431 else 400
        message = f"the request is not valid HTTP/1.1 ({reason})"
        if status == 431:
            message += ": send fewer or shorter headers"
        self.drop_log(logging.INFO, f"answered {status} to {_peer(self.client)}: {message}")
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_http"}}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            # the headers parsed and the app is running (the body is what broke): it must not answer too, or its
            # response meets h11 closed and uvicorn logs a traceback. As connection_lost does: it reads a disconnect.
            cycle.disconnected = True
            cycle.message_event.set()
        with contextlib.suppress(h11.LocalProtocolError):  # the app's response already began: only close
            for event in (
                h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        self.transport.close()


class _FoldUvicornNoise(logging.Filter):
    """Drop uvicorn's per-request warnings that a client can trigger at will: a malformed request (answered and
    logged, rate-limited, by `send_400_response`) and an `Upgrade:` header (this server has no WebSocket routes; the
    request is served as plain HTTP, and uvicorn's advice to install a WebSocket library would mislead)."""

    NOISE = ("Invalid HTTP request received.", "Unsupported upgrade request.", "No supported WebSocket library")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


def fold_uvicorn_noise() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _FoldUvicornNoise) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_FoldUvicornNoise())


def no_delay(transport) -> None:
    """Send each write at once (TCP_NODELAY). asyncio sets it only on sockets whose `proto` is IPPROTO_TCP, and a
    listening socket made as socket(AF_INET, SOCK_STREAM) (proto 0, as the serve command and the tests bind) passes
    proto 0 to every connection it accepts: Nagle's algorithm then holds a stream's small chunks until the client's
    delayed ACK, ~40 ms on Linux, before the first token and between tokens."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # a socket already closed by the client: nothing to speed up
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def install_loop_error_log(loop: asyncio.AbstractEventLoop) -> None:
    """Fold asyncio's repeated errors (accept() out of descriptors, once a second per listener) into rate-limited
    lines; everything else goes to the default handler."""
    folded = RateLimitedLog(log, interval_s=30.0)

    def handler(loop, context) -> None:
        message = str(context.get("message", ""))
        if "out of system resource" in message:
            exc = context.get("exception")
            folded(logging.WARNING, f"{message} ({exc}): new connections wait; `ulimit -n` or serve.max_connections")
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def make_server(app, settings, *, log_level: str, timeout_graceful_shutdown: float):
    """A uvicorn Server for `app` with the guarded protocol and the loop error log of `settings` (ServeSettings)."""
    import uvicorn

    fold_uvicorn_noise()
    cap, lowered = connection_cap(settings.max_connections)
    if lowered:
        log.info("%s", lowered)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        http=guarded_protocol(settings.request_read_timeout_s, cap),
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            install_loop_error_log(asyncio.get_running_loop())
            await super().startup(sockets)

    return Server(config)
