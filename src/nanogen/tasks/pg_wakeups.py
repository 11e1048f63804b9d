"""Queue wake-ups across processes, over PostgreSQL's LISTEN/NOTIFY.

tasks/wakeups.py wakes a process's queue pollers when that process enqueues work. On PostgreSQL
other processes enqueue too (API processes, ``serve --no-worker``, accept the submissions that
workers run), so a transaction that enqueues also sends ``NOTIFY nanogen_queues`` naming the queues:
PostgreSQL delivers it when the transaction commits, and never when it rolls back. Every process that
works listens on a connection of its own and wakes its pollers of those queues, so a worker starts
what an API process accepted at once, and otherwise polls no more often than its idle wait
(``NANOGEN_QUEUE_IDLE_POLLING_INTERVAL_S``).

A notification sent while the listener is not connected (the database restarting) is not delivered
later: at every (re)connection the listener wakes all of its process's pollers, which then find what
was enqueued meanwhile. Until it reconnects, the pollers find work at their idle wait.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable

import psycopg
import sqlalchemy as sa

from nanogen.db import libpq_conninfo
from nanogen.tasks.ownership import KEEPALIVES

log = logging.getLogger(__name__)

CHANNEL = "nanogen_queues"
APPLICATION_NAME = "nanogen-wakeups"  # its pg_stat_activity.application_name
_NOTIFY = sa.text("SELECT pg_notify(:channel, :queues)")
# How often the listener looks whether its process is stopping (a wait for notifications ends then).
STOP_CHECK_S = 0.25
RECONNECT_FIRST_S = 0.5
RECONNECT_MOST_S = 10.0


def notify(conn: sa.Connection, queues: Collection[str]) -> None:
    """Within ``conn``'s transaction: the listeners' pollers of ``queues`` are woken when it commits
    (on PostgreSQL; elsewhere there is no other process to tell)."""
    if queues and conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": CHANNEL, "queues": ",".join(sorted(queues))})


class Listener:
    """A thread that LISTENs on :data:`CHANNEL` and calls ``wake`` with the queues each notification
    names, and ``wake_all`` whenever it (re)connects."""

    def __init__(
        self,
        database_url: str,
        wake: Callable[[Iterable[str]], None],
        wake_all: Callable[[], None],
    ) -> None:
        self._dsn = libpq_conninfo(database_url)
        self._wake = wake
        self._wake_all = wake_all
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nanogen-wakeup-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * STOP_CHECK_S + 1)

    def _run(self) -> None:
        delay = RECONNECT_FIRST_S
        lost = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=10,
                    application_name=APPLICATION_NAME,
                    options=KEEPALIVES,  # a database host that vanished is noticed within ~11 s
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if lost:
                        log.warning("queue wake-ups: listening again")
                    lost, delay = False, RECONNECT_FIRST_S
                    self._wake_all()  # what was enqueued while nobody listened is found now
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=STOP_CHECK_S):
                            self._wake(notice.payload.split(","))
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                if not lost:  # one line per outage, not one per try
                    log.warning(
                        "queue wake-ups: lost the database (%s); pollers look at their idle interval "
                        "until it is back",
                        type(exc).__name__,
                    )
                lost = True
                self._stop.wait(delay)
                delay = min(2 * delay, RECONNECT_MOST_S)
