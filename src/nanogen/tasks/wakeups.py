"""Queue pollers woken when this process has work for them, instead of polling fast all the time.

DBOS polls each queue every ``polling_interval_sec``, and every poll is a few queries (~1.5-2 ms of
CPU): an idle ``nanogen serve`` on the sandbox spent 52 ms of CPU a second, 36 of it polling the image
queue every 0.05 s so that an image starts soon after it is submitted. Here a queue's poller still
waits the queue's interval between two polls (DBOS's, with its back-off after conflicts), so a burst
is polled as often as before, but then it waits for a wake-up, for at most ``idle_s``:

* a transaction of this process that enqueued a workflow of the queue committed (a submission, a
  webhook event) or DBOS's client enqueued one here (a concatenation);
* a workflow of the queue ended here, freeing a slot that queued work may be waiting for.

A process may also hold a queue's polls for a while (``hold``): the image tasks whose calls it began
at acceptance (tasks/early.py) need no slot until their answers come, and a poll taken in the middle
of a burst spends the interpreter lock on starting workflows that the acceptances need. A hold
delays one poll by at most ``MAX_HOLD_S``, so a stream of holds slows the polls but never stops them.

Work another process enqueues (PostgreSQL, several processes) wakes them through
tasks/pg_wakeups.py, or is found by the next poll, within ``idle_s``. DBOS gives every poller one
shared stop event; each poller of a nanogen queue is given a ``_Waiter`` in its place, and
``wake_all`` (at stop) ends every wait at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import dbos._queue as dbos_queue
from dbos._core import ActiveWorkflowById

QUEUE_PREFIX = "nanogen."  # the queues nanogen names; DBOS's own keep their polling
MAX_HOLD_S = 2.0  # the longest one poll waits for holds


class _Waiter:
    """What a queue's poller sees as its stop event: ``wait`` returns at a wake-up or past
    ``idle_s`` (at least the poller's interval), True once the process stops."""

    def __init__(
        self,
        stop: threading.Event,
        wake: threading.Event,
        idle_s: float,
        held_for: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._stop = stop
        self._wake = wake
        self._idle_s = idle_s
        self._held_for = held_for

    def is_set(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        interval = 0.0 if timeout is None else timeout
        if self._stop.wait(interval):  # the queue's own spacing between two polls
            return True
        held = 0.0
        while held < MAX_HOLD_S and (left := self._held_for()) > 0:
            wait = min(left, MAX_HOLD_S - held)
            if self._stop.wait(wait):
                return True
            held += wait
        if self._idle_s > interval:
            self._wake.wait(self._idle_s - interval)
        # A wake-up set after this clear is kept for the next wait; one set between the wait and
        # the clear is lost, but the poll that follows now sees what it announced (committed first).
        self._wake.clear()
        return self._stop.is_set()


class QueueWakeups:
    """The wake-ups of this process's queue pollers, by queue name."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._events: dict[str, threading.Event] = {}
        self._held_until: dict[str, float] = {}  # time.monotonic()
        self._lock = threading.Lock()

    def wake(self, queue: str) -> None:
        self._event(queue).set()  # kept for a poller that has not started yet

    def wake_all(self) -> None:
        with self._lock:
            events = list(self._events.values())
        for event in events:
            event.set()

    def hold(self, queue: str, seconds: float) -> None:
        """The next polls of ``queue`` wait until ``seconds`` from now (at most MAX_HOLD_S each)."""
        self._held_until[queue] = time.monotonic() + seconds

    def held_for(self, queue: str) -> float:
        return self._held_until.get(queue, 0.0) - time.monotonic()

    def waiter(self, stop: threading.Event, queue: str) -> _Waiter:
        """A new poller's first poll does not wait for a wake-up: work may be queued already."""
        event = self._event(queue)
        event.set()
        return _Waiter(stop, event, self.idle_s, lambda: self.held_for(queue))

    def _event(self, queue: str) -> threading.Event:
        event = self._events.get(queue)
        if event is None:
            with self._lock:
                event = self._events.setdefault(queue, threading.Event())
        return event


class _ReleasingActiveWorkflows(ActiveWorkflowById):
    """DBOS's record of the workflows running here, waking a queue's poller when one of its
    workflows ends (its slot is free)."""

    def __init__(self, released: Callable[[str], None]) -> None:
        super().__init__()
        self._released = released

    def _remove(self, key: str, bucket: Any) -> None:
        super()._remove(key, bucket)
        if bucket is not None:
            self._released(bucket[0])


_installed: QueueWakeups | None = None
_dbos_queue_worker = dbos_queue.queue_worker_thread


def _queue_worker_thread(stop_event: threading.Event, dbos: Any, queue: Any) -> None:
    wakeups = _installed
    if wakeups is not None and queue.name.startswith(QUEUE_PREFIX):
        stop_event = wakeups.waiter(stop_event, queue.name)  # type: ignore[assignment]
    _dbos_queue_worker(stop_event, dbos, queue)


def install(dbos: Any, idle_s: float) -> None:
    """Wake the pollers of ``dbos`` (constructed, not yet launched: the record of running workflows
    is replaced before any is added) and wait at most ``idle_s`` between polls otherwise."""
    global _installed
    _installed = QueueWakeups(idle_s)
    dbos._active_workflows_set = _ReleasingActiveWorkflows(_installed.wake)
    dbos_queue.queue_worker_thread = _queue_worker_thread  # DBOS starts each poller through it


def uninstall() -> None:
    global _installed
    if _installed is not None:
        _installed.wake_all()
    _installed = None


def wake_all() -> None:
    """Every poller here looks now (work may have been enqueued unannounced)."""
    wakeups = _installed
    if wakeups is not None:
        wakeups.wake_all()


def wake(queues: Iterable[str]) -> None:
    """Work was enqueued on ``queues`` and committed: their pollers here look now (no-op in a
    process that polls none)."""
    wakeups = _installed
    if wakeups is not None:
        for queue in queues:
            wakeups.wake(queue)


def hold(queue: str, seconds: float) -> None:
    """Hold this process's polls of ``queue`` for ``seconds`` (no-op in a process that polls none)."""
    wakeups = _installed
    if wakeups is not None:
        wakeups.hold(queue, seconds)
