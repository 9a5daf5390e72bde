"""A live `shardwise serve` app for tests and benchmarks: uvicorn on a loopback port in a daemon thread.

    with BackgroundServer(create_app([...], ServeSettings())) as server:
        OpenAI(base_url=server.url + "/v1", api_key="-")

The socket is bound here (port 0: the system picks a free one) and handed to uvicorn, so the
port is never released between choosing and serving it.
"""

from __future__ import annotations

import socket
import threading
import time


class BackgroundServer:
    """uvicorn on a loopback port in a daemon thread; a context manager for tests and benchmarks."""

    def __init__(
        self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", startup_timeout_s: float = 20.0
    ):
        from runner.openai.app import RequestLog, ServeSettings
        from runner.openai.connections import make_server

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        # the server's own connection handling (read timeouts, connection cap), as `shardwise serve` runs it
        settings = app.app.state.server.settings if isinstance(app, RequestLog) else ServeSettings()
        self.server = make_server(app, settings, log_level=log_level, timeout_graceful_shutdown=2)
        self.startup_timeout_s = startup_timeout_s
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="shardwise-uvicorn", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url} within {self.startup_timeout_s} s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
