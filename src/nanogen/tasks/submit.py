"""The submit path: a request's debit, its generation and task rows and their workflows, in one commit.

Many concurrent requests each opening a write transaction on one SQLite file queue up behind its
lock (measured: ~200 req/s, 1.4 s p99). Instead one writer thread commits whatever submissions have
arrived while it was busy in one transaction (group commit); if a
statement fails, the batch is retried one submission per transaction, so one request's failure
cannot touch another's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from dbos import DBOSClient

from nanogen import ledger, metrics
from nanogen.db import conflict, pipelined, unavailable, write_transaction
from nanogen.errors import (
    APIError,
    CreditReservationFailed,
    IdempotencyKeyInUse,
    InsufficientCredits,
    ServiceUnavailable,
)
from nanogen.products import Product
from nanogen.tasks import store
from nanogen.tasks.batches import BatchQueue
from nanogen.tasks.enqueue import PreparedEnqueue
from nanogen.tasks.runtime import RUN_TASK
from nanogen.tasks.status import TaskStatus

log = logging.getLogger(__name__)


class Workflow(NamedTuple):
    """A task's workflow to enqueue: its id is the task's, in the account's partition of the queue
    (the per-account concurrency cap)."""

    task_id: str
    queue: str
    account_id: str


# Tries of a batch's transaction that the database rolled back for a conflict.
ATTEMPTS = 3

# Enqueue workflows inside the caller's transaction.
Enqueue = Callable[[sa.Connection, Sequence[Workflow]], None]


def dbos_enqueue(client: DBOSClient, app_version: str) -> Enqueue:
    """Enqueue through DBOS, in the caller's transaction (DBOS's rows, statements compiled once, two
    statements per batch: tasks/enqueue.py)."""
    prepared = PreparedEnqueue(client)

    def enqueue(conn: sa.Connection, workflows: Sequence[Workflow]) -> None:
        prepared(
            conn,
            [
                (
                    {
                        "workflow_name": RUN_TASK,
                        "queue_name": w.queue,
                        "workflow_id": w.task_id,
                        "app_version": app_version,
                        "queue_partition_key": w.account_id,
                    },
                    (w.task_id,),
                )
                for w in workflows
            ],
        )

    return enqueue


@dataclass(frozen=True)
class NewTask:
    id: str
    position: int
    credits: int
    params: dict[str, Any]
    shot_id: str | None = None


@dataclass(frozen=True)
class Submission:
    account_id: str
    generation_id: str
    product: Product
    engine: str
    queue: str
    params: dict[str, Any]
    tasks: tuple[NewTask, ...]
    deadline_s: float
    concatenate: bool = False
    # Idempotency-Key: the key this request claimed and the response stored on it, in this
    # submission's transaction (docs/api.md, "Idempotent retries").
    idempotency_key: str | None = None
    response: dict[str, Any] | None = None
    # The webhook URL the request named (already checked); None: the account's default, if any.
    webhook_url: str | None = None

    @property
    def credits(self) -> int:
        return sum(t.credits for t in self.tasks)


def write_submissions(conn: sa.Connection, subs: Sequence[Submission], enqueue: Enqueue) -> list[bool]:
    """The body of a batch's transaction. Each submission is charged in order; for each, whether it
    was (False: its credits don't cover it, and nothing of it is written). Then the charged ones'
    rows, one statement per table for the whole batch, pipelined: on PostgreSQL a statement per row,
    each a trip to the server, was most of a submission's time."""
    with pipelined(conn):  # PostgreSQL: a trip for the debits, one for all the rows, then COMMIT
        charged = ledger.debit_many(
            conn,
            [
                ledger.Debit(s.account_id, s.generation_id, [ledger.Charge(t.id, t.credits) for t in s.tasks])
                for s in subs
            ],
        )
        accepted = [s for s, ok in zip(subs, charged, strict=True) if ok]
        if accepted:
            _write_rows(conn, accepted, enqueue)
        keyed = [
            dict(
                account_id=s.account_id,
                key=s.idempotency_key,
                generation_id=s.generation_id,
                response=s.response,
            )
            for s in accepted
            if s.idempotency_key is not None
        ]
        if keyed and not store.complete_idempotency_keys(conn, keyed):
            raise IdempotencyKeyInUse()  # its claim was given up and taken: roll back (see _write)
    return charged


def _write_rows(conn: sa.Connection, accepted: Sequence[Submission], enqueue: Enqueue) -> None:
    now = time.time()
    store.insert_generations(
        conn,
        [
            dict(
                id=s.generation_id,
                account_id=s.account_id,
                product=s.product.value,
                params=s.params,
                credits=s.credits,
                task_count=len(s.tasks),
                created_at=now,
                concat_status="pending" if s.concatenate else None,
                webhook_url=s.webhook_url,
            )
            for s in accepted
        ],
    )
    store.insert_tasks(
        conn,
        [
            dict(
                id=t.id,
                generation_id=s.generation_id,
                account_id=s.account_id,
                product=s.product.value,
                position=t.position,
                shot_id=t.shot_id,
                engine=s.engine,
                status=TaskStatus.PENDING.value,
                progress=0,
                credits=t.credits,
                params=t.params,
                created_at=now,
                deadline_at=now + s.deadline_s,
            )
            for s in accepted
            for t in s.tasks
        ],
    )
    enqueue(conn, [Workflow(t.id, s.queue, s.account_id) for s in accepted for t in s.tasks])


@dataclass
class _Pending:
    submission: Submission
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    error: APIError | None = field(default=None)


# Calls to make after a batch's transaction, with the submissions it committed (none: rolled back).
AfterCommit = Callable[[Sequence[Submission]], None]


class CallsAhead(Protocol):
    """Work a SubmitWriter's owner begins around each batch's commit (tasks/early.py)."""

    def prepare(self, submissions: Sequence[Submission]) -> AfterCommit | None:
        """Before the batch's transaction. What it returns is called exactly once after it."""
        ...


class SubmitWriter:
    """One thread that commits submissions in batches. ``await submit(...)`` returns once committed.
    ``ahead``, if given, prepares work for each batch before its transaction and is told, once the
    batch's requests have been answered, which submissions committed (tasks/early.py)."""

    def __init__(
        self,
        engine: sa.Engine,
        enqueue: Enqueue,
        max_batch: int = 64,
        ahead: CallsAhead | None = None,
    ) -> None:
        self._engine = engine
        self._enqueue = enqueue
        self._ahead = ahead
        self._batches: BatchQueue[_Pending] = BatchQueue(max_batch)
        self._thread = threading.Thread(target=self._run, name="nanogen-submit-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._batches.close()
            self._thread.join(timeout=30)

    async def submit(self, submission: Submission) -> None:
        """Debit and create the request's tasks; raises InsufficientCredits, CreditReservationFailed
        or IdempotencyKeyInUse."""
        loop = asyncio.get_running_loop()
        pending = _Pending(submission, loop, loop.create_future())
        self._batches.put(pending)
        await pending.future

    def _run(self) -> None:
        while (batch := self._batches.take()) is not None:
            self._write(batch)

    def _write(self, batch: list[_Pending], attempts: int = ATTEMPTS) -> None:
        """One transaction for the batch, its accounts' rows locked in one order (so that writers in
        several processes cannot deadlock each other). A conflict the database resolved by rolling
        the batch back is retried; a statement that fails (rare: a database error, not a short
        balance) rolls the batch back, and then each submission gets a transaction of its own, so one
        request's failure never touches another's (cheaper than a savepoint per request). While the
        database is unreachable every request of the batch gets 503 (retry), nothing written."""
        ordered = sorted(batch, key=lambda i: i.submission.account_id)
        after = self._prepare([i.submission for i in ordered])
        accepted: list[Submission] = []
        again: list[tuple[list[_Pending], int]] = []  # written anew once this try's work is given up
        try:
            with write_transaction(self._engine) as conn:
                charged = write_submissions(conn, [i.submission for i in ordered], self._enqueue)
            for item, ok in zip(ordered, charged, strict=True):
                item.error = None if ok else InsufficientCredits(item.submission.credits)
            accepted = [i.submission for i, ok in zip(ordered, charged, strict=True) if ok]
            _count_submitted(accepted)
        except Exception as exc:
            if conflict(exc) and attempts > 1:
                log.info("submit batch of %d rolled back by a conflict; again", len(batch))
                again = [(batch, attempts - 1)]
            elif unavailable(exc):
                log.warning("submit of %d request(s): database unavailable: %s", len(batch), exc)
                for item in batch:
                    item.error = ServiceUnavailable()
            elif len(batch) > 1:
                log.warning("submit batch of %d failed; writing each on its own", len(batch))
                again = [([item], ATTEMPTS) for item in batch]
            elif isinstance(exc, APIError):  # refused on purpose (IdempotencyKeyInUse)
                batch[0].error = exc
            else:
                log.exception("submit of generation %s failed", batch[0].submission.generation_id)
                batch[0].error = CreditReservationFailed()
        if again:
            _after_commit(after, [])
            for items, tries in again:
                self._write(items, tries)
            return
        # One wake-up per event loop, not per request: each call_soon_threadsafe writes to the loop's
        # self-pipe (a tenth of the writer thread's time when done per request).
        loops: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for item in batch:
            loops.setdefault(item.loop, []).append(item)
        for loop, settled in loops.items():
            loop.call_soon_threadsafe(_settle_all, settled)
        _after_commit(after, accepted)

    def _prepare(self, submissions: Sequence[Submission]) -> AfterCommit | None:
        if self._ahead is None:
            return None
        try:
            return self._ahead.prepare(submissions)
        except Exception:  # nothing begun: the tasks' workflows do the work
            log.exception("preparing the calls of %d submission(s)", len(submissions))
            return None


def _after_commit(after: AfterCommit | None, committed: Sequence[Submission]) -> None:
    if after is None:
        return
    try:
        after(committed)
    except Exception:  # committed and answered already: the tasks' workflows do the work
        log.exception("after committing %d submission(s)", len(committed))


def _count_submitted(committed: Sequence[Submission]) -> None:
    """Metrics (one update per product and engine) and, at INFO, a log line per task, for the
    submissions just committed."""
    totals: dict[tuple[Product, str], list[int]] = {}
    for s in committed:
        total = totals.setdefault((s.product, s.engine), [0, 0])
        total[0] += len(s.tasks)
        total[1] += s.credits
    for (product, engine), (count, credits) in totals.items():
        metrics.tasks_submitted(product, engine, count, credits)
    if metrics.log.isEnabledFor(logging.INFO):
        for s in committed:
            name = s.product.value
            for t in s.tasks:
                metrics.transition(t.id, s.generation_id, name, s.engine, None, "pending", t.credits)


def _settle_all(settled: list[_Pending]) -> None:
    for item in settled:
        if item.future.done():  # the client went away; the outcome stands in the database either way
            continue
        if item.error is None:
            item.future.set_result(None)
        else:
            item.future.set_exception(item.error)
