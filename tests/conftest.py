"""Session-wide guard: a test that leaves a non-daemon thread running would hold pytest open after its summary
(the interpreter waits for such threads at exit), and CI would hang instead of failing. Name them and fail."""

from __future__ import annotations

import sys
import threading
import time


def _lingering() -> list[threading.Thread]:
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]


def pytest_sessionfinish(session, exitstatus):
    deadline = time.monotonic() + 10  # threads that are already finishing get a moment
    while _lingering() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _lingering()
    if left:
        names = ", ".join(sorted(t.name for t in left))
        print(
            f"\nerror: non-daemon threads still running after the tests (the process cannot exit): {names}",
            file=sys.stderr,
            flush=True,
        )
        session.exitstatus = 1
