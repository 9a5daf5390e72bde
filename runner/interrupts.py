"""Ctrl+C and SIGTERM end a shardwise process with one line and its exit status, whatever it was doing.

Used around every verb by the dispatcher (shardwise/cli.py) and around each torchrun rank (runner/launch/worker.py).
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl+C so `finally` blocks (run-directory clean-up) still run."""

    exit_code = 143


@contextmanager
def interrupts_end_cleanly(prog: str):
    """Ctrl+C (exit 130) or SIGTERM (exit 143) ends the run with one line and no traceback, whatever it was doing.

    The exception unwinds the verb first (its `finally` blocks remove a run directory it did not use); then the
    process leaves with os._exit after the atexit handlers: a normal interpreter shutdown would destroy C++ thread
    objects that torch, tokenizers or the batching loop still run, which aborts ("terminate called without an
    active exception", SIGABRT)."""
    import atexit
    import signal

    def terminate(signum, frame):
        raise Terminated()

    previous = (
        signal.signal(signal.SIGTERM, terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        yield
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", 130)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not interrupt the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            print(f"\n{prog}: {'terminated' if code == 143 else 'interrupted'}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            atexit._run_exitfuncs()
        except BaseException:  # a closed pipe, a failing handler: the exit code still says what happened
            pass
        os._exit(code)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
