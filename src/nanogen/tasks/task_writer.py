"""Group commit for the jobs' task writes: a task's start, its recorded provider operation, its end.

Each job used to write in a transaction of its own. With a thousand jobs starting at once on SQLite
(one writer at a time), dozens of threads queued for the write lock and each holder, one thread
among a thousand on one interpreter lock, kept it long; on PostgreSQL every one of them held a
connection. Here a job hands its write (a function of the connection) to one thread, which runs
every write waiting at that moment in one transaction and hands each job its result once that
transaction has committed: a job never goes on believing a write was kept that was not.

Writes of one kind can also be given as an argument to a function that runs them all at once
(``write_in(group, arg)``): the batch calls ``group(conn, args)`` once for all of them, so that its
transaction runs one statement for many tasks. On SQLite each statement gives the interpreter lock
away, and the writer, holding the file's write lock, takes it back behind every thread that wants it;
on PostgreSQL each is a round trip (64 ends: bench/bench_task_ends.py).

A write that raises rolls the whole batch back, and then each write of the batch runs again in a
transaction of its own, so one job's failure never touches another's (the SubmitWriter does the
same). Every write given here is a conditional transition of the task (store.py), safe to run again
after a rollback. A conflict the database resolved by rolling the batch back is retried; a database
that cannot be reached fails every write of the batch, and the jobs retry as they would their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from nanogen.db import conflict, write_transaction
from nanogen.tasks.batches import BatchQueue

log = logging.getLogger(__name__)
A = TypeVar("A")
R = TypeVar("R")

# Writes per transaction at most: a batch holds SQLite's write lock (PostgreSQL: its rows' locks) for
# as long as its writes take, about a millisecond each.
MAX_BATCH = 64
CONFLICT_ATTEMPTS = 3


# A function that runs many writes of one kind in the caller's transaction: each argument's result,
# in order. It must be safe to run again for the same arguments (after a rollback), as every write is.
Group = Callable[[sa.Connection, Sequence[A]], Sequence[R]]


@dataclass
class _Write(Generic[R]):
    write: Callable[[sa.Connection], R] | None  # None: ``group(conn, [arg, ...])`` gives its result
    group: Group[Any, R] | None = None
    arg: Any = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class TaskWriter:
    """``write(fn)`` runs ``fn(conn)`` in a transaction shared with the other jobs' writes of the
    moment and returns its result once committed (or raises what it, or the commit, raised);
    ``write_in(group, arg)`` the same for a write that its batch runs with the others of its group.
    The thread starts with the first write; after ``stop()`` a write runs in its own transaction."""

    def __init__(self, db: sa.Engine, max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._batches: BatchQueue[_Write[Any]] = BatchQueue(max_batch)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def write(self, fn: Callable[[sa.Connection], R]) -> R:
        return self._wait(_Write(fn))

    def write_in(self, group: Group[A, R], arg: A) -> R:
        """``group(conn, [arg])[0]``, run once for the ``arg`` of every write of this group in the
        batch (``group`` is compared by identity: give the same function each time)."""
        return self._wait(_Write(None, group, arg))

    def _wait(self, item: _Write[R]) -> R:
        with self._lock:  # queued before stop() closes the queue, or not at all
            alone = self._stopped
            if not alone:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="nanogen-task-writer", daemon=True)
                    self._thread.start()
                self._batches.put(item)
        if alone:  # the process is stopping: the jobs still finishing write on their own
            with write_transaction(self._db) as conn:
                alone_result: R = _run_writes(conn, [item])[0]
                return alone_result
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
        results: list[Any] | None = None
        writing = False  # past the connection and BEGIN: an error now may be one write's
        try:
            with write_transaction(self._db) as conn:
                writing = True
                results = _run_writes(conn, batch)
        except Exception as exc:
            if conflict(exc) and attempts > 1:
                self._commit(batch, attempts - 1)
                return
            if writing and len(batch) > 1 and results is None:  # a write raised: each alone
                for item in batch:
                    self._commit([item], attempts)
                return
            # The database (no connection, BEGIN or the commit failed, or one write alone raised):
            # every job of the batch hears of it at once, rather than each after a try of its own.
            for item in batch:
                item.error = exc
                item.done.set()
            return
        assert results is not None
        for item, result in zip(batch, results, strict=True):
            item.result = result
            item.done.set()


def _run_writes(conn: sa.Connection, batch: Sequence[_Write[Any]]) -> list[Any]:
    """Each write's result, in the batch's order: the plain ones one by one, then each group's
    arguments in one call of it."""
    results: list[Any] = [None] * len(batch)
    groups: dict[Group[Any, Any], list[int]] = {}
    for index, item in enumerate(batch):
        if item.write is not None:
            results[index] = item.write(conn)
        else:
            assert item.group is not None
            groups.setdefault(item.group, []).append(index)
    for group, indexes in groups.items():
        answers = group(conn, [batch[i].arg for i in indexes])
        if len(answers) != len(indexes):
            raise RuntimeError(f"{group!r} answered {len(answers)} writes of {len(indexes)}")
        for index, answer in zip(indexes, answers, strict=True):
            results[index] = answer
    return results
