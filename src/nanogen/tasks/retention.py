"""Retention: the files of generations that ended long ago (``NANOGEN_RETENTION_DAYS``, off by
default), and uploads past their expiry (always), are deleted on purpose, and only those.

A generation is due when its files are not yet expired, every one of its tasks is terminal and
finished before the cutoff, and no concatenation is pending. Its files are exactly the keys the
database records for it (task outputs, stored input images, the concatenated video); nothing else in
storage is looked up for it. Objects are deleted first, then the generation is marked and a
tombstone written per file, in one transaction: a crash in between leaves the generation unmarked,
and the next sweep deletes again (deleting is idempotent). Task rows, their URLs and the ledger stay,
so check-status still answers; a deleted file's URL answers 410 GONE (files route).

Uploads (``POST /api/uploads``, keys ``up/<token>/<unix expiry>.<ext>``) are recorded nowhere but in
their key, so the upload sweep lists the ``up`` kind, and only it, and deletes the keys whose expiry
has passed. A generation never depends on an upload's file: the request copied the bytes into its
own stored inputs (``in/...``, the generation's, covered above) before any credit moved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from nanogen.db import expired_files, generations, read_connection, tasks, write_transaction
from nanogen.storage import Storage, is_valid_key
from nanogen.tasks import store
from nanogen.tasks.periodic import Periodic
from nanogen.tasks.runtime import Runtime
from nanogen.tasks.status import OPEN

log = logging.getLogger(__name__)

BATCH = 100
DAY_S = 86_400.0
UPLOAD_KIND = "up"  # server/inputs.py's upload keys
DELETE_BATCH = 1000


def is_expired(conn: sa.Connection, key: str) -> bool:
    return conn.execute(sa.select(expired_files.c.key).where(expired_files.c.key == key)).first() is not None


def due(conn: sa.Connection, cutoff: float, limit: int = BATCH) -> dict[str, list[str]]:
    """Generations whose files may go, each with the storage keys recorded for it (oldest first)."""
    unfinished = (
        sa.select(tasks.c.id)
        .where(
            tasks.c.generation_id == generations.c.id,
            sa.or_(
                tasks.c.status.in_(OPEN),
                tasks.c.finished_at.is_(None),
                tasks.c.finished_at >= cutoff,
            ),
        )
        .exists()
    )
    rows = conn.execute(
        sa.select(generations.c.id, generations.c.concat_key)
        .where(
            generations.c.files_expired_at.is_(None),
            generations.c.created_at < cutoff,  # implied by the tasks' age; lets the index narrow it
            sa.or_(
                generations.c.concat_status.is_(None), generations.c.concat_status != store.CONCAT_PENDING
            ),
            ~unfinished,
        )
        .order_by(generations.c.created_at)
        .limit(limit)
    ).all()
    keys: dict[str, list[str]] = {r.id: [r.concat_key] if r.concat_key else [] for r in rows}
    if not keys:
        return {}
    for task in conn.execute(
        sa.select(tasks.c.generation_id, tasks.c.output_key, tasks.c.params).where(
            tasks.c.generation_id.in_(list(keys))
        )
    ):
        keys[task.generation_id].extend(_task_keys(task.output_key, task.params))
    return {gid: list(dict.fromkeys(k for k in found if is_valid_key(k))) for gid, found in keys.items()}


def _task_keys(output_key: str | None, params: dict[str, Any]) -> list[str]:
    inputs = [item["key"] for item in params.get("inputs", []) if isinstance(item, dict) and "key" in item]
    return ([output_key] if output_key else []) + inputs


def mark_expired(conn: sa.Connection, generation_id: str, keys: list[str], now: float) -> bool:
    """Mark once (conditional, so racing sweepers write one set of tombstones)."""
    result = conn.execute(
        sa.update(generations)
        .where(generations.c.id == generation_id, generations.c.files_expired_at.is_(None))
        .values(files_expired_at=now)
    )
    if result.rowcount != 1:
        return False
    if keys:
        conn.execute(
            sa.insert(expired_files),
            [{"key": k, "generation_id": generation_id, "expired_at": now} for k in keys],
        )
    return True


class RetentionSweeper(Periodic):
    """Runs :meth:`sweep` at start and then every ``retention_sweep_interval_s``. Any number of
    processes may run one: deletes are idempotent and marking is conditional."""

    def __init__(self, rt: Runtime, days: float) -> None:
        super().__init__("nanogen-retention", rt.settings.retention_sweep_interval_s, run_at_start=True)
        self._rt = rt
        self._max_age_s = days * DAY_S

    def sweep(self) -> int:
        """Expire every due generation, a batch at a time; the number expired. First settles the
        concatenations that earlier versions left pending after a shot failed, so that those
        generations are due too."""
        with write_transaction(self._rt.db) as conn:
            settled = store.settle_concats_of_failed_shots(conn, time.time() - self._max_age_s)
        if settled:
            log.info("retention: settled %d concatenations left pending after a failed shot", settled)
        expired = 0
        while not self._stop.is_set():
            with read_connection(self._rt.db) as conn:
                batch = due(conn, time.time() - self._max_age_s)
            if not batch:
                break
            keys = [key for found in batch.values() for key in found]
            self._rt.storage.delete_many(keys)
            now = time.time()
            with write_transaction(self._rt.db) as conn:
                marked = sum(mark_expired(conn, gid, found, now) for gid, found in batch.items())
            expired += marked
            log.info("retention: deleted %d files of %d generations", len(keys), marked)
        return expired


# -- uploads -----------------------------------------------------------------------------------------
def upload_expiry(key: str) -> float | None:
    """The expiry an upload's key carries (``up/<token>/<unix seconds>.<ext>``, server/inputs.py's
    ``upload_key``; or ``.<unix seconds>.<ext>.<hex>.tmp``, a local write a crash left behind);
    None for any other key."""
    kind, _, rest = key.partition("/")
    stem = rest.rpartition("/")[2].lstrip(".").partition(".")[0]
    return float(stem) if kind == UPLOAD_KIND and stem.isdigit() else None


def expired_uploads(storage: Storage, now: float) -> Iterator[str]:
    for key in storage.keys(UPLOAD_KIND):
        expiry = upload_expiry(key)
        if expiry is not None and expiry <= now:
            yield key


def sweep_uploads(storage: Storage, now: float) -> int:
    """Delete every upload whose expiry is ``now`` or earlier (its URL already answers 404); the
    number deleted. Deleting is idempotent, so sweepers in several processes may race."""
    deleted = 0
    batch: list[str] = []
    for key in expired_uploads(storage, now):
        batch.append(key)
        if len(batch) == DELETE_BATCH:
            storage.delete_many(batch)
            deleted, batch = deleted + len(batch), []
    if batch:
        storage.delete_many(batch)
        deleted += len(batch)
    return deleted


class UploadSweeper(Periodic):
    """Deletes expired uploads at start and then every ``retention_sweep_interval_s``. Runs in every
    process that runs generations, whatever ``NANOGEN_RETENTION_DAYS`` says: uploads always expire."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__("nanogen-uploads", rt.settings.retention_sweep_interval_s, run_at_start=True)
        self._rt = rt

    def sweep(self) -> int:
        deleted = sweep_uploads(self._rt.storage, time.time())
        if deleted:
            log.info("uploads: deleted %d expired uploads", deleted)
        return deleted
