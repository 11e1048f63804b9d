"""The jobs' progress reports, written together: one transaction every ``FLUSH_S`` for every job of
the process that reported meanwhile, instead of one transaction per report.

A thousand Veo shots waiting on Google reported about six times each, and those write transactions
were a tenth of the worker's CPU (bench/bench_google.py, case a, profiled with py-spy). Progress is
advisory: a report is at most ``FLUSH_S`` late, a report that arrives after its task ended changes
nothing (``store.set_progress_many`` only raises the progress of a running task), and a batch lost to
a database outage is skipped, as a single report was.
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from nanogen.db import transient, write_transaction
from nanogen.tasks import store

log = logging.getLogger(__name__)

# How long reports gather before they are written: well under the few seconds between a client's
# check-status polls.
FLUSH_S = 0.25


class ProgressWriter:
    """Collects ``report(task_id, progress)`` from any thread; a thread of its own writes them.
    The thread starts with the first report and sleeps while nothing is reported."""

    def __init__(self, db: sa.Engine, flush_s: float = FLUSH_S) -> None:
        self._db = db
        self._flush_s = flush_s
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._reported = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def report(self, task_id: str, progress: int) -> None:
        with self._lock:
            if self._stopping.is_set():  # the process is going: its tasks' ends say the rest
                return
            if progress > self._pending.get(task_id, -1):
                self._pending[task_id] = progress
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nanogen-progress", daemon=True)
                self._thread.start()
        self._reported.set()

    def forget(self, task_id: str) -> None:
        """Drop the task's report not yet written: the task has ended, and its end says the rest.
        (An image's last report comes moments before its end: with thousands ending together, half
        the progress rows written were of tasks already done.)"""
        with self._lock:
            self._pending.pop(task_id, None)

    def flush(self) -> int:
        """Write what was reported since the last flush; returns how many tasks it covered."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            with write_transaction(self._db) as conn:
                store.set_progress_many(conn, batch)
        except Exception as exc:
            if transient(exc):
                log.debug("progress of %d task(s) not recorded: %s", len(batch), exc)
            else:
                log.exception("progress of %d task(s) not recorded", len(batch))
        return len(batch)

    def stop(self) -> None:
        """Write what is left and end the thread (idempotent)."""
        with self._lock:
            self._stopping.set()
            thread = self._thread
        self._reported.set()
        if thread is not None:
            thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while True:
            self._reported.wait()
            if self._stopping.wait(self._flush_s):  # let the reports of the next moment join
                return
            self._reported.clear()
            self.flush()
