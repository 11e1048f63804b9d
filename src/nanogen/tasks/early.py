"""Image calls begun as their submission commits, before a worker slot takes the task.

A hosted engine's image job is one provider call of seconds to tens of seconds. Made by the task's
workflow, that call waits for the queue's next poll, for DBOS to hand the workflow to a thread and for
the task's start to be written; in a burst, all of that for the tasks already accepted shares the
interpreter lock with the acceptances of the rest, so the last call of 2,000 went out seconds after
the first. Here the process that will run the tasks sends their calls right after the commit that
accepted them (one hand-off to the engine's HTTP loop per batch) and holds its image queue's polls
while the burst lasts (``QUIET_S`` after the last batch; tasks/wakeups.py bounds a hold); each task's
workflow then starts as before and its job waits on the call already under way. The calls are
reserved before the batch's transaction (``Engine.prepare_image_calls``), so that a job that starts
the instant its task commits waits for its call rather than making a second one, and given up if
the transaction does not commit. The task reads ``pending`` until its job starts, as it did while
queued.

Only where the task's job is sure to be this process's: on the embedded SQLite default (one
process owns the data directory and runs every task); on PostgreSQL any worker may take a task, and
a call begun here would be made again there. Not with a per-account cap (NANOGEN_ACCOUNT_CONCURRENCY),
which calls begun before a slot is taken would pass. The engine decides the rest (the Google engine:
not an edit, not while its image quota's gate is closed, within its image slots).

Durability is the workflow's, as before: the submission, its debit and its workflow committed
first; a crash before the job takes up the answer loses the answer, and the recovered workflow calls
again (as a crash during a call always has).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Sequence

from nanogen.products import Product
from nanogen.tasks import jobs, wakeups
from nanogen.tasks.runtime import Runtime
from nanogen.tasks.submit import AfterCommit, Submission

# A burst has ended when no batch began a call for this long: until then the image queue is not polled.
QUIET_S = 0.3


class EarlyImageCalls:
    """``ahead`` for the SubmitWriter of a process that runs its own image tasks."""

    def __init__(self, rt: Runtime) -> None:
        self._engine = rt.engines[Product.IMAGE]
        self._queue = rt.queue_for(Product.IMAGE)

    @classmethod
    def for_process(cls, rt: Runtime, queues: Collection[str]) -> EarlyImageCalls | None:
        """The hook for a process that polls ``queues``, or None where calls may not begin early."""
        if (
            not rt.settings.resolved_database_url.startswith("sqlite")
            or rt.settings.account_concurrency is not None
            or rt.queue_for(Product.IMAGE) not in queues
            or not rt.engines[Product.IMAGE].begins_image_calls
        ):
            return None
        return cls(rt)

    def prepare(self, submissions: Sequence[Submission]) -> AfterCommit | None:
        now = time.time()
        image_jobs = [
            dataclasses.replace(jobs.image_job(task.id, task.params, ()), deadline=now + s.deadline_s)
            for s in submissions
            if s.queue == self._queue
            for task in s.tasks
            if not task.params.get("inputs")  # an edit's input images are read by its job
        ]
        prepared = self._engine.prepare_image_calls(image_jobs) if image_jobs else None
        if prepared is None:
            return None

        def send(committed: Sequence[Submission]) -> None:
            if prepared({task.id for s in committed for task in s.tasks}):
                wakeups.hold(self._queue, QUIET_S)

        return send
