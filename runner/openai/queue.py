"""Per-model job line: first come first served, a bounded wait line, long-lived generation threads.

Each served model has a `ModelWorker`. With a sequential model it runs one job at a time; once the
model has a batching engine (runner.engine.batching), `resize(n)` lets n jobs run at once (the plan's
serving.max_concurrent), each on one of n long-lived threads, so their turns join one continuous batch
(requests never start model work on a fresh thread: the batching loop owns the forward passes).
`submit` refuses a job (QueueFull, the server's 429) once `slots + max_queue` jobs are admitted. A job
reports back to the event loop through an asyncio queue of events; cancelling a job sets its `cancel`
event (the session stops at the next token) and, if it is still waiting, removes it at once so its
slot frees. A job hands over at most MAX_PENDING_DELTAS text deltas the stream has not taken yet: a
client that reads slowly slows its own generation instead of growing a buffer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

MAX_PENDING_DELTAS = 64  # deltas a job may have handed to the event loop that its stream has not taken yet


class QueueFull(Exception):
    """The model already has its running job and `max_queue` waiting ones."""


class Job:
    """A unit of work for a ModelWorker: `work(job)` runs on the worker thread and calls `emit`."""

    def __init__(self, work: Callable[[Job], None], loop: asyncio.AbstractEventLoop):
        self.work = work
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self._room = threading.BoundedSemaphore(MAX_PENDING_DELTAS)
        self._beyond = 0  # deltas handed over past the bound (a generation that must not wait), not yet taken
        self._beyond_lock = threading.Lock()
        self.submitted_s = time.perf_counter()
        self.started_s: float | None = None
        self.finished_s: float | None = None

    def emit(self, *event) -> None:
        """Hand an event tuple to the event loop (thread-safe; dropped once the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            pass  # the loop closed (server shutting down): nobody is listening

    def emit_delta(self, *event, wait: bool = True) -> bool:
        """`emit` for a text delta, waiting while MAX_PENDING_DELTAS are not taken; False (dropped) once cancelled.

        wait=False hands it over past the bound instead: a generation that holds the model (a sequential turn,
        the batch paused) must never wait on one client's reading, or every other request would wait too.
        """
        if wait:
            while not self._room.acquire(timeout=0.05):
                if self.cancel.is_set():
                    return False
        elif not self._room.acquire(blocking=False):
            with self._beyond_lock:
                self._beyond += 1
        self.emit(*event)
        return True

    def taken(self, event: tuple) -> None:
        """The stream took `event` off the queue: a delta's place is free again."""
        if event and event[0] == "delta":
            with self._beyond_lock:
                if self._beyond:
                    self._beyond -= 1
                    return
            self._room.release()

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
    """Runs one model's jobs in arrival order on `slots` long-lived threads; holds at most slots + max_queue."""

    def __init__(self, name: str, max_queue: int, slots: int = 1):
        self.name = name
        self.max_queue = max_queue
        self.slots = 0
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: set[Job] = set()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.rejected = 0
        self.resize(slots)

    def resize(self, slots: int) -> None:
        """Run up to `slots` jobs at once (never fewer threads than before)."""
        with self._cond:
            while len(self._threads) < slots:
                thread = threading.Thread(
                    target=self._loop, name=f"shardwise-generate-{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self.slots = max(self.slots, slots)
            self._cond.notify_all()

    @property
    def admitted(self) -> int:
        with self._cond:
            return len(self._waiting) + len(self._running)

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise QueueFull(f"model {self.name!r} is shutting down")
            if len(self._waiting) + len(self._running) >= self.slots + self.max_queue:
                self.rejected += 1
                raise QueueFull(
                    f"model {self.name!r} has {len(self._running)} request(s) generating and {len(self._waiting)} "
                    f"waiting (serve.max_queue={self.max_queue})"
                )
            self._waiting.append(job)
            self._cond.notify_all()

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
            for job in self._running:
                job.cancel.set()
            self._cond.notify_all()
        for job in pending:
            job.cancel.set()
            job.emit("cancelled")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._waiting or len(self._running) >= self.slots):
                    self._cond.wait()
                if self._closed and not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running.add(job)
            try:
                job.run()
            finally:
                with self._cond:
                    self._running.discard(job)
                    self._cond.notify_all()
