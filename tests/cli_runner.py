"""Run the `shardwise` CLI in a subprocess as tests need it: this interpreter, a wide terminal, no hub by default."""

from __future__ import annotations

import os
import subprocess
import sys


def shardwise(
    *args: str, cwd=None, timeout: int = 120, env_extra: dict | None = None, offline: bool = True, **kw
) -> subprocess.CompletedProcess:
    """`python -m runner ARGS` with captured text output; stdin is empty unless `input=` is given."""
    env = {**os.environ, "COLUMNS": "160", **({"HF_HUB_OFFLINE": "1"} if offline else {}), **(env_extra or {})}
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kw
    )
