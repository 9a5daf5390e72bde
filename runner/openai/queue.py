"""One generation at a time per model, first come first served, with a bounded wait line.

Each served model has a `ModelWorker`: a thread that runs jobs in arrival order, so the event
loop never blocks on a forward pass and outputs never mix. `submit` refuses a job (QueueFull,
the server's 429) once `1 + max_queue` jobs are admitted. A job reports back to the event loop
through an asyncio queue of events; cancelling a job sets its `cancel` event (the session stops
at the next token) and, if it is still waiting, removes it at once so its slot frees.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable


class QueueFull(Exception):
    """The model already has its running job and `max_queue` waiting ones."""


class Job:
    """A unit of work for a ModelWorker: `work(job)` runs on the worker thread and calls `emit`."""

    def __init__(self, work: Callable[[Job], None], loop: asyncio.AbstractEventLoop):
        self.work = work
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.submitted_s = time.perf_counter()
        self.started_s: float | None = None
        self.finished_s: float | None = None

    def emit(self, *event) -> None:
        """Hand an event tuple to the event loop (thread-safe; dropped once the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            pass  # the loop closed (server shutting down): nobody is listening

    def run(self) -> None:
        self.started_s = time.perf_counter()
        try:
            if self.cancel.is_set():
                self.emit("cancelled")
                return
            self.work(self)
        except BaseException as exc:  # the handler turns it into an HTTP error; the worker lives on
            self.emit("error", exc)
        finally:
            self.finished_s = time.perf_counter()


class ModelWorker:
    """Runs one model's jobs on its own thread, in order; holds at most 1 + max_queue of them."""

    def __init__(self, name: str, max_queue: int):
        self.name = name
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"shardwise-generate-{name}", daemon=True)
        self._thread.start()

    @property
    def admitted(self) -> int:
        with self._cond:
            return len(self._waiting) + (self._running is not None)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise QueueFull(f"model {self.name!r} is shutting down")
            if len(self._waiting) + (self._running is not None) >= 1 + self.max_queue:
                raise QueueFull(
                    f"model {self.name!r} has 1 request generating and {len(self._waiting)} waiting "
                    f"(serve.max_queue={self.max_queue})"
                )
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: a waiting one leaves the line now, a running one stops at its next token."""
        job.cancel.set()
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return
        job.emit("cancelled")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._waiting)
            self._waiting.clear()
            if self._running is not None:
                self._running.cancel.set()
            self._cond.notify_all()
        for job in pending:
            job.cancel.set()
            job.emit("cancelled")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed and not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running = job
            try:
                job.run()
            finally:
                with self._cond:
                    self._running = None
