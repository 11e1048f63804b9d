"""DBOS's record of a workflow's end, committed with the jobs' task writes on SQLite.

On SQLite DBOS records each workflow's outcome in a transaction of its own: an UPDATE of the
workflow's status row and an upsert of its output, both built through SQLAlchemy on every call
(``SystemDatabase._update_workflow_outcome_in_transaction``). With 2,000 image calls ending within
a few seconds, those 2,000 transactions queued for SQLite's one writer, each holder one thread among
thousands on the interpreter lock: traced on the writer lock (bench/bench_google.py, case c), 1.4 ms
of lock hold per outcome, 2.7 s in all, a third of the run's write time.

Here the same two statements, compiled once, go through the task writer (task_writer.py): the
outcomes of every workflow ending at that moment commit in one transaction, in the same file as
DBOS's own (on SQLite nanogen's tables and DBOS's share it), and a workflow goes on only once its
outcome has committed, as before. The outcome lands only on a PENDING row its execution still owns,
as DBOS's does, and the answer (landed or not) is DBOS's to act on. A write that fails falls back
to DBOS's own method, with its retries. PostgreSQL keeps DBOS's own: one statement in autocommit,
many writers at once. ``tests/test_outcomes.py`` checks that both ways write equal rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from dbos._context import current_owner_xid
from dbos._schemas import SCHEMA_PLACEHOLDER
from dbos._schemas.system_database import SystemSchema
from dbos._sys_db import SystemDatabase
from sqlalchemy.dialects import sqlite

from nanogen.db import Prepared
from nanogen.tasks.task_writer import TaskWriter

log = logging.getLogger(__name__)

PENDING = "PENDING"


class BatchedOutcomes:
    """``SystemDatabase.update_workflow_outcome`` through a :class:`TaskWriter`."""

    def __init__(self, sys_db: SystemDatabase, writes: TaskWriter) -> None:
        self._writes = writes
        self._dbos_own: Callable[..., bool] = sys_db.update_workflow_outcome
        translate: dict[str, Any] = {
            "schema_translate_map": {SCHEMA_PLACEHOLDER: sys_db.schema},
            "render_schema_translate": True,
        }
        status = SystemSchema.workflow_status
        # The database's clock, as DBOS stamps it: DBOS's own expression, its constants inlined.
        now_ms: sa.ColumnElement[Any] = sa.literal_column(
            str(
                sys_db._now_ms_sql().compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
            )
        )

        def update(owned: bool) -> Prepared:
            statement = (
                sa.update(status)
                .values(
                    status=sa.bindparam("new_status"),
                    deduplication_id=sa.null(),
                    owner_xid=sa.null(),
                    updated_at=now_ms,
                    completed_at=now_ms,
                )
                .where(
                    status.c.workflow_uuid == sa.bindparam("wf_id"),
                    status.c.status == sa.bindparam("pending"),
                )
            )
            if owned:
                statement = statement.where(status.c.owner_xid == sa.bindparam("owner"))
            return Prepared(statement, **translate)

        self._update_owned, self._update_any = update(True), update(False)
        output = sqlite.insert(SystemSchema.workflow_output).values(
            workflow_uuid=sa.bindparam("wf_id"), output=sa.bindparam("output"), error=sa.bindparam("error")
        )
        self._output = Prepared(
            output.on_conflict_do_update(
                index_elements=["workflow_uuid"],
                set_={"output": output.excluded.output, "error": output.excluded.error},
            ),
            **translate,
        )

    def update_workflow_outcome(
        self,
        workflow_id: str,
        status: str,
        *,
        output: str | None = None,
        error: str | None = None,
        owner_xid: str | None = None,
    ) -> bool:
        if owner_xid is None:
            owner_xid = current_owner_xid(workflow_id)  # the calling execution's token (a context var)
        values: dict[str, Any] = {
            "wf_id": workflow_id,
            "new_status": status,
            "owner": owner_xid,
            "pending": PENDING,
        }

        def write(conn: sa.Connection) -> bool:
            update = self._update_owned if owner_xid is not None else self._update_any
            cursor = update.run(conn, values)
            landed: bool = cursor.rowcount > 0
            cursor.close()
            if landed:  # the outcome was this execution's to write: its output too, else no orphan
                self._output.run(conn, {"wf_id": workflow_id, "output": output, "error": error}).close()
            return landed

        try:
            return self._writes.write(write)
        except sa.exc.DBAPIError as exc:  # the database's trouble: DBOS's own write retries it
            log.warning(
                "workflow %s: outcome not written with the task writes (%s); DBOS writes it", workflow_id, exc
            )
            return self._dbos_own(workflow_id, status, output=output, error=error, owner_xid=owner_xid)


def install(sys_db: SystemDatabase, writes: TaskWriter) -> bool:
    """Route ``sys_db``'s outcome writes through ``writes`` where that applies (SQLite, one
    unsharded system database); True if it did."""
    if sys_db.engine.dialect.name != "sqlite" or sys_db.sharded:
        return False
    batched = BatchedOutcomes(sys_db, writes)
    sys_db.update_workflow_outcome = batched.update_workflow_outcome  # type: ignore[method-assign]
    return True
