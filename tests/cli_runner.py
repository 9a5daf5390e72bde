"""Run the `shardwise` CLI in a subprocess as tests need it: this interpreter, a wide terminal, no hub by default."""

from __future__ import annotations

import os
import subprocess
import sys


def shardwise(
    *args: str, cwd=None, timeout: int = 120, env_extra: dict | None = None, offline: bool = True, **kw
) -> subprocess.CompletedProcess:
    """`python -m shardwise ARGS` with captured text output; stdin is empty unless `input=` is given."""
    env = {**os.environ, "COLUMNS": "160", **({"HF_HUB_OFFLINE": "1"} if offline else {}), **(env_extra or {})}
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "shardwise", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a process that must be told its port in advance.

    Between this socket's close and the child's bind another process may take the port (the
    bind-release-reuse race), so a caller retries with a fresh port when its child says the port
    was taken (PORT_TAKEN); where the child can pick one itself (`serve.port=0`), let it.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORT_TAKEN = ("address already in use", "eaddrinuse", "errno 98")


def port_was_taken(output: str) -> bool:
    """The child's output says the port it was given is in use (then: retry with another)."""
    return any(marker in output.lower() for marker in PORT_TAKEN)
