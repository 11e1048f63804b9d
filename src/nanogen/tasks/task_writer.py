"""Group commit for the jobs' task writes: a task's start, its recorded provider operation, its end.

Each job used to write in a transaction of its own. With a thousand jobs starting at once on SQLite
(one writer at a time), dozens of threads queued for the write lock and each holder, one thread
among a thousand on one interpreter lock, kept it long; on PostgreSQL every one of them held a
connection. Here a job hands its write (a function of the connection) to one thread, which runs
every write waiting at that moment in one transaction and hands each job its result once that
transaction has committed: a job never goes on believing a write was kept that was not.

A write that raises rolls the whole batch back, and then each write of the batch runs again in a
transaction of its own, so one job's failure never touches another's (the SubmitWriter does the
same). Every write given here is a conditional transition of the task (store.py), safe to run again
after a rollback. A conflict the database resolved by rolling the batch back is retried; a database
that cannot be reached fails every write of the batch, and the jobs retry as they would their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from nanogen.db import conflict, write_transaction
from nanogen.tasks.batches import BatchQueue

log = logging.getLogger(__name__)
R = TypeVar("R")

# Writes per transaction at most: a batch holds SQLite's write lock (PostgreSQL: its rows' locks) for
# as long as its writes take, about a millisecond each.
MAX_BATCH = 64
CONFLICT_ATTEMPTS = 3


@dataclass
class _Write(Generic[R]):
    write: Callable[[sa.Connection], R]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class TaskWriter:
    """``write(fn)`` runs ``fn(conn)`` in a transaction shared with the other jobs' writes of the
    moment and returns its result once committed (or raises what it, or the commit, raised).
    The thread starts with the first write; after ``stop()`` a write runs in its own transaction."""

    def __init__(self, db: sa.Engine, max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._batches: BatchQueue[_Write[Any]] = BatchQueue(max_batch)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def write(self, fn: Callable[[sa.Connection], R]) -> R:
        item: _Write[R] = _Write(fn)
        with self._lock:  # queued before stop() closes the queue, or not at all
            alone = self._stopped
            if not alone:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="nanogen-task-writer", daemon=True)
                    self._thread.start()
                self._batches.put(item)
        if alone:  # the process is stopping: the jobs still finishing write on their own
            with write_transaction(self._db) as conn:
                return fn(conn)
        item.done.wait()
        if item.error is not None:
            raise item.error
        result: R = item.result
        return result

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is not None:
            self._batches.close()
            thread.join(timeout=30)

    def _run(self) -> None:
        while (batch := self._batches.take()) is not None:
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a job waiting
                log.exception("task writes failed")
                for item in batch:
                    if not item.done.is_set():
                        item.error = exc
                        item.done.set()

    def _commit(self, batch: list[_Write[Any]], attempts: int = CONFLICT_ATTEMPTS) -> None:
        results: list[Any] = []
        writing = False  # past the connection and BEGIN: an error now may be one write's
        try:
            with write_transaction(self._db) as conn:
                writing = True
                for item in batch:
                    results.append(item.write(conn))
        except Exception as exc:
            if conflict(exc) and attempts > 1:
                self._commit(batch, attempts - 1)
                return
            if writing and len(batch) > 1 and len(results) < len(batch):  # a write raised: each alone
                for item in batch:
                    self._commit([item], attempts)
                return
            # The database (no connection, BEGIN or the commit failed, or one write alone raised):
            # every job of the batch hears of it at once, rather than each after a try of its own.
            for item in batch:
                item.error = exc
                item.done.set()
            return
        for item, result in zip(batch, results, strict=True):
            item.result = result
            item.done.set()
