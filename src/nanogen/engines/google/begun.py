"""Image calls begun when their request was accepted, kept until the task's job takes up the answer.

The process that will run an image task may send its call to Google as soon as the submission
commits (tasks/early.py says when), before the queue hands the task to a worker slot; the job,
when it starts, waits on that call instead of making one. This is what keeps them:

* one entry per task, made (``reserve``) before the submission's transaction, so that a job that
  starts the instant the task is committed finds it and waits for its call, never making a second
  one; then sent, or given up (``drop``) if the transaction did not commit;
* taken (``claim``) by the task's job, once;
* never more image calls in flight than the engine's image slots (``room``): those begun here and
  those the jobs make themselves, so that a burst opens no more connections than the slots allow;
* an answer nobody took up (its task ended before its job started: cancelled, failed at its
  deadline) is dropped ``keep_s`` after it came, at the next reserve or claim: a task whose job came
  that late calls Google again, as a job does after a crash.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 10.0


@dataclass
class Begun:
    future: concurrent.futures.Future[httpx.Response]
    began_at: float  # time.perf_counter(), for the call's duration
    # When the answer came (the clock's time), set by the future's callback: a list that callback
    # holds rather than this object, which holds the future (a cycle would keep each answer in
    # memory until the cyclic collector ran).
    answered: list[float] = field(default_factory=list)


class BegunCalls:
    def __init__(self, capacity: int, keep_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.keep_s = keep_s
        self._clock = clock
        self._lock = threading.Lock()
        self._begun: dict[str, Begun] = {}
        self._running = 0  # jobs making or awaiting a call (``running``)
        self._next_sweep = clock() + SWEEP_EVERY_S

    def room(self) -> int:
        """How many more calls may begin now."""
        self._sweep()
        with self._lock:
            return self._room()

    def reserve(self, task_ids: Sequence[str]) -> dict[str, concurrent.futures.Future[httpx.Response]]:
        """An entry for each of ``task_ids`` that the room allows, in order: its future, not yet
        running, for the caller to send or to ``drop``."""
        self._sweep()
        began_at = time.perf_counter()
        made: dict[str, Begun] = {}
        with self._lock:
            for task_id in task_ids[: self._room()]:
                made[task_id] = self._begun[task_id] = Begun(concurrent.futures.Future(), began_at)
        for begun in made.values():
            begun.future.add_done_callback(functools.partial(self._answered, begun.answered))
        return {task_id: begun.future for task_id, begun in made.items()}

    def drop(self, task_ids: Sequence[str]) -> None:
        """Give up the entries of tasks that were not committed (no job will ask for them)."""
        with self._lock:
            dropped = [self._begun.pop(task_id, None) for task_id in task_ids]
        for begun in dropped:
            if begun is not None:
                begun.future.cancel()

    def claim(self, task_id: str) -> Begun | None:
        """The call begun for ``task_id``, if any, now the caller's alone."""
        self._sweep()
        with self._lock:
            return self._begun.pop(task_id, None)

    @contextmanager
    def running(self) -> Iterator[None]:
        """A job's call, begun here or its own, counted against the room while it lasts."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._begun)

    def _room(self) -> int:  # with the lock held
        return max(0, self.capacity - len(self._begun) - self._running)

    def _answered(self, answered: list[float], _: concurrent.futures.Future[httpx.Response]) -> None:
        answered.append(self._clock())

    def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        with self._lock:
            self._next_sweep = now + SWEEP_EVERY_S
            stale = [
                task_id
                for task_id, begun in self._begun.items()
                if begun.answered and now - begun.answered[0] >= self.keep_s
            ]
            for task_id in stale:
                del self._begun[task_id]
        if stale:
            log.info("dropped %d image answer(s) no job took up within %.0fs", len(stale), self.keep_s)
