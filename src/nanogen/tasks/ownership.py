"""Which process owns what: one process per SQLite database, one live process per executor id.

DBOS recovers, at launch, the unfinished workflows of its own executor id. Two live processes with
one id would each re-run the other's work: a second ``nanogen serve`` on the same data directory did
exactly that, taking over the first one's running jobs before it failed to bind the port. So:

* On SQLite (one process by design), ``serve`` and ``worker`` hold an exclusive lock on a file beside
  the database for as long as they run, taken before anything else is touched: a second process
  refuses to start and names the first one's pid.
* On PostgreSQL each process holds a session advisory lock on its executor id. The default id,
  ``<role>-<hostname>``, gets a numbered suffix (``-2``, ``-3``...) while a live process holds it, so
  a restart takes back the id of a dead process (and DBOS recovers that process's work) while two live
  processes never share one. An id set with ``NANOGEN_EXECUTOR_ID`` that a live process holds is
  refused. Either way the lock goes with the process: a ``kill -9`` releases it.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
import sqlalchemy as sa

from nanogen.db import libpq_conninfo
from nanogen.errors import NanogenError
from nanogen.settings import Settings

MAX_SUFFIX = 64  # live processes of one role on one host, on one database
# A process killed a moment ago may hold its lock until PostgreSQL sees its connection close
# (milliseconds when the kernel closes it; the keepalives below bound it to ~11 s when a host died):
# a restart waits this long for its own id before the default takes a suffix or an explicit id is
# refused.
EXPLICIT_WAIT_S = 5.0
DEFAULT_WAIT_S = 2.0
KEEPALIVES = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"


class AlreadyRunning(NanogenError):
    """Another live process owns this SQLite database or this executor id."""


@dataclass
class Claim:
    """What this process owns while the claim is open; :meth:`release` (or exit) ends it."""

    executor_id: str
    handle: IO[str] | psycopg.Connection[Any]

    def release(self) -> None:
        self.handle.close()


def claim(settings: Settings, role: str) -> Claim:
    url = sa.make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        return Claim(settings.executor_id_for(role), _lock_sqlite(Path(url.database or "")))
    return _claim_executor_id(url, settings, role)


def _lock_sqlite(database: Path) -> IO[str]:
    database.parent.mkdir(parents=True, exist_ok=True)
    path = database.with_name(database.name + ".lock")
    handle = open(path, "a+")  # noqa: SIM115 - held open for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(
            f"another nanogen process (pid {holder}) is running on {database.parent}: stop it first, "
            "or give this one its own NANOGEN_HOME. Several processes on one database need PostgreSQL "
            "(NANOGEN_DATABASE_URL; see docs/deploy.md)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _claim_executor_id(url: sa.URL, settings: Settings, role: str) -> Claim:
    conn = psycopg.connect(libpq_conninfo(url), autocommit=True, connect_timeout=10, options=KEEPALIVES)
    try:
        if settings.executor_id:  # set (empty counts as unset, as executor_id_for reads it)
            if _try_lock(conn, settings.executor_id, EXPLICIT_WAIT_S):
                return Claim(settings.executor_id, conn)
            raise AlreadyRunning(
                f"NANOGEN_EXECUTOR_ID={settings.executor_id} is in use by another live process on this "
                "database: give each process its own id (docs/deploy.md)"
            )
        base = settings.executor_id_for(role)
        for n in range(1, MAX_SUFFIX + 1):
            candidate = base if n == 1 else f"{base}-{n}"
            if _try_lock(conn, candidate, DEFAULT_WAIT_S if n == 1 else 0.0):
                return Claim(candidate, conn)
        raise AlreadyRunning(f"{MAX_SUFFIX} live processes already use executor ids {base}[-N]")
    except BaseException:
        conn.close()
        raise


def _try_lock(conn: psycopg.Connection[Any], executor_id: str, wait_s: float) -> bool:
    give_up = time.monotonic() + wait_s
    while True:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"nanogen.executor:{executor_id}",)
        ).fetchone()
        if row and row[0]:
            return True
        if time.monotonic() >= give_up:
            return False
        time.sleep(0.2)
