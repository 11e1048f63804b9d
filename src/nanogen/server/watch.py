"""The process-wide watcher: one read per tick for every generation someone is waiting on.

Event streams (``GET /api/generations/{id}/events``) and check-status with ``Prefer: wait=N`` wait
for a generation to change. None of them reads the database itself while it waits: each subscribes
here, and one task on the server's event loop, every ``NANOGEN_WATCH_INTERVAL_S``, reads the state
number (tasks/progress.py) of **all** watched generations in one statement (chunked past
``progress.CHUNK`` ids), then the records of those whose number moved (two statements), and wakes
their subscribers. A thousand streams cost what one does; with nothing watched the task sleeps
without ticking. The reads go through the API's own read path (``db.Reads``: on SQLite the loop's
own connection, on PostgreSQL the shared asyncio read pool), so no connection is added.

The watcher also ends the waits when the server shuts down: uvicorn waits for open responses
before the application's shutdown, so a stream or a wait must end on the exit signal itself
(``sse_starlette``'s ``AppStatus.should_exit``, set by uvicorn's signal handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from sse_starlette.sse import AppStatus

from nanogen import metrics
from nanogen.db import Reads
from nanogen.tasks import progress, store
from nanogen.tasks.status import TaskStatus

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """A generation as read at one moment: the records check-status reads, and their state number."""

    generation: store.GenerationRecord
    tasks: list[store.TaskRecord]
    number: int
    memo: dict[str, Any] = field(default_factory=dict)  # what consumers derive once per snapshot

    @classmethod
    def of(cls, generation: store.GenerationRecord, tasks: list[store.TaskRecord]) -> Snapshot:
        return cls(generation, tasks, progress.state_number(tasks, generation.concat_status))

    @property
    def ended(self) -> bool:
        """What check-status calls terminal: every task ended, and a multi-shot video whose shots
        all completed has its concatenation settled."""
        if not all(t.status.is_terminal for t in self.tasks):
            return False
        all_completed = all(t.status is TaskStatus.COMPLETED for t in self.tasks)
        return not (all_completed and self.generation.concat_status == store.CONCAT_PENDING)


async def read_snapshot(reads: Reads, generation_id: str) -> Snapshot | None:
    """One generation's snapshot, read now (a subscriber's first answer)."""
    found, _ = await progress.read_records(reads, [generation_id])
    if generation_id not in found:
        return None
    return Snapshot.of(*found[generation_id])


class _Entry:
    __slots__ = ("snapshot", "subscriptions")

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.subscriptions: set[Subscription] = set()


class Subscription:
    """Some generations watched by one waiter: ``wait()`` returns once one of them moved."""

    def __init__(self, watcher: Watcher, generation_ids: tuple[str, ...]) -> None:
        self._watcher = watcher
        self.generation_ids = generation_ids
        self._changed = asyncio.Event()

    def latest(self, generation_id: str) -> Snapshot | None:
        return self._watcher._entries[generation_id].snapshot

    def offer(self, snapshot: Snapshot) -> None:
        """A snapshot the subscriber read itself: kept if newer than the watcher's (saves a read)."""
        self._watcher._offer(snapshot)

    def notify(self) -> None:
        self._changed.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Until a watched generation moves after the previous wait returned (True), ``timeout``
        seconds pass, or the server shuts down (False)."""
        if self._watcher.closing:
            return False
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        self._changed.clear()
        return not self._watcher.closing


class Watcher:
    def __init__(self, reads: Reads, interval_s: float) -> None:
        self._reads = reads
        self.interval_s = interval_s
        self._entries: dict[str, _Entry] = {}
        self._watching = asyncio.Event()  # set while anything is watched
        self._task: asyncio.Task[None] | None = None
        self.closing = False
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nanogen-watcher")

    async def stop(self) -> None:
        self._close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, generation_ids: Iterable[str]) -> Iterator[Subscription]:
        subscription = Subscription(self, tuple(dict.fromkeys(generation_ids)))
        for generation_id in subscription.generation_ids:
            self._entries.setdefault(generation_id, _Entry()).subscriptions.add(subscription)
        self._watching.set()
        try:
            yield subscription
        finally:
            for generation_id in subscription.generation_ids:
                entry = self._entries.get(generation_id)
                if entry is not None:
                    entry.subscriptions.discard(subscription)
                    if not entry.subscriptions:
                        del self._entries[generation_id]
            if not self._entries:
                self._watching.clear()

    @property
    def watched(self) -> int:
        return len(self._entries)

    def _offer(self, snapshot: Snapshot) -> None:
        entry = self._entries.get(snapshot.generation.id)
        if entry is None or (entry.snapshot is not None and entry.snapshot.number >= snapshot.number):
            return
        entry.snapshot = snapshot
        for subscription in entry.subscriptions:
            subscription.notify()

    def _close(self) -> None:
        if not self.closing:
            self.closing = True
            for entry in self._entries.values():
                for subscription in entry.subscriptions:
                    subscription.notify()

    async def _run(self) -> None:
        while True:
            await self._watching.wait()
            await asyncio.sleep(self.interval_s)
            if AppStatus.should_exit:  # the server is shutting down: end every wait now
                self._close()
            if self._entries and not self.closing:
                await self._tick()

    async def _tick(self) -> None:
        metrics.WATCH_TICKS.inc()
        statements = 0
        try:
            ids = list(self._entries)
            numbers, statements = await progress.read_numbers(self._reads, ids)
            moved = []
            for generation_id, number in numbers.items():
                entry = self._entries.get(generation_id)
                if entry is not None and (entry.snapshot is None or entry.snapshot.number < number):
                    moved.append(generation_id)
            if moved:
                found, more = await progress.read_records(self._reads, moved)
                statements += more
                for generation, tasks in found.values():
                    self._offer(Snapshot.of(generation, tasks))
        except Exception as exc:  # the database unreachable: waiters keep waiting, the next tick retries
            if not self._failing:
                log.warning("watcher: reading generations failed (retrying every tick): %s", exc)
            self._failing = True
        else:
            if self._failing:
                log.info("watcher: reading generations works again")
            self._failing = False
        finally:
            metrics.WATCH_QUERIES.inc(statements)


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]


def with_watcher(inner: Lifespan, interval_s: float) -> Lifespan:
    """``inner`` (the services' lifespan), with the watcher running on the server's loop beside them;
    requests find it in their lifespan state as ``watcher``."""

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with inner(app) as state:
            watcher = Watcher(state["services"].reads, interval_s)
            watcher.start()
            try:
                yield {**state, "watcher": watcher}
            finally:
                await watcher.stop()

    return run
