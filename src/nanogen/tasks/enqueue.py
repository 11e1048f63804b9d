"""Enqueueing a task's workflow in the submitting transaction, with DBOS's statements compiled once.

``DBOSClient.enqueue_in_transaction`` builds its INSERT through SQLAlchemy on every call: on SQLite
always, and on PostgreSQL whenever the connection is not one of DBOS's own engine (ours is not). That
took ~0.7 ms of CPU per task here, more than the rest of a submission's transaction together, in the
one thread that commits every submission (see submit.py).

``PreparedEnqueue`` writes the same two rows, the workflow's status and its inputs (for a batch of
workflows, two statements in all): DBOS builds the
row (``_build_enqueue_status``: options checked, inputs serialised), the columns are DBOS's own
table definitions, and the statements are compiled once per dialect. It covers what nanogen
enqueues: a new workflow id (an existing one is an IntegrityError rather than DBOS's conflict
checks), no deduplication, no delay, an unsharded system database. Once the caller's
``write_transaction`` commits, this process's pollers of the queues are woken (tasks/wakeups.py), and on
PostgreSQL those of every other process that works (tasks/pg_wakeups.py).
``tests/test_submit_writer.py`` checks that both ways write equal rows, column by column, and every
workflow the contract tests see run was enqueued here, so a DBOS upgrade that changes them fails
there first.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from dbos import DBOSClient, EnqueueOptions
from dbos._schemas import SCHEMA_PLACEHOLDER
from dbos._schemas.system_database import SystemSchema

from nanogen.db import Prepared, after_commit
from nanogen.tasks import pg_wakeups, wakeups

# DBOS's own columns for a new ENQUEUED workflow (see SystemDatabase._insert_workflow_status).
_STATUS_COLUMNS: dict[str, str] = {  # column -> key of DBOS's status dict
    "workflow_uuid": "workflow_uuid",
    "status": "status",
    "name": "name",
    "class_name": "class_name",
    "config_name": "config_name",
    "executor_id": "executor_id",
    "application_version": "app_version",
    "application_id": "app_id",
    "authenticated_user": "authenticated_user",
    "authenticated_roles": "authenticated_roles",
    "assumed_role": "assumed_role",
    "queue_name": "queue_name",
    "workflow_timeout_ms": "workflow_timeout_ms",
    "workflow_deadline_epoch_ms": "workflow_deadline_epoch_ms",
    "deduplication_id": "deduplication_id",
    "priority": "priority",
    "serialization": "serialization",
    "queue_partition_key": "queue_partition_key",
    "parent_workflow_id": "parent_workflow_id",
    "delay_until_epoch_ms": "delay_until_epoch_ms",
    "attributes": "attributes",
    "schedule_name": "schedule_name",
    "debounce_deadline_epoch_ms": "debounce_deadline_epoch_ms",
    "is_debounced": "is_debounced",
    "application_name": "application_name",
}
_FIXED = {"recovery_attempts": 0, "owner_xid": None}


def _insert(table: sa.Table, columns: list[str], schema: str | None) -> Prepared:
    statement = sa.insert(table).values({name: sa.bindparam(name) for name in columns})
    return Prepared(
        statement, schema_translate_map={SCHEMA_PLACEHOLDER: schema}, render_schema_translate=True
    )


class PreparedEnqueue:
    """``enqueue_in_transaction`` for a new workflow, its two INSERTs compiled once per dialect."""

    def __init__(self, client: DBOSClient) -> None:
        self._client = client
        schema = client._sys_db.schema
        status_columns = [*_STATUS_COLUMNS, *_FIXED, "creator_xid"]
        self._status = _insert(SystemSchema.workflow_status, status_columns, schema)
        self._inputs = _insert(SystemSchema.workflow_input, ["workflow_uuid", "inputs"], schema)
        types = {c.name: c.type for c in SystemSchema.workflow_status.columns}
        self._types = {name: types[name] for name in status_columns}
        self._processors: dict[str, dict[str, Callable[[Any], Any]]] = {}

    def __call__(
        self, conn: sa.Connection, workflows: Sequence[tuple[EnqueueOptions, tuple[Any, ...]]]
    ) -> None:
        """Enqueue each ``(options, args)``: two statements however many workflows."""
        processors = self._bind_processors(conn.dialect).items()
        statuses, inputs, queues = [], [], set()
        for options, args in workflows:
            workflow_id, status = self._client._build_enqueue_status(options, *args)
            if status["deduplication_id"] is not None or status["delay_until_epoch_ms"] is not None:
                raise ValueError("PreparedEnqueue takes no deduplication id and no delay")
            row = {column: status[key] for column, key in _STATUS_COLUMNS.items()}  # type: ignore[literal-required]
            row.update(_FIXED, creator_xid=str(uuid.uuid4()))  # as DBOS stamps an enqueue in a transaction
            for column, process in processors:
                row[column] = process(row[column])
            statuses.append(row)
            inputs.append({"workflow_uuid": workflow_id, "inputs": status["inputs"]})
            queues.add(row["queue_name"])
        if statuses:
            self._status.run_many(conn, statuses)
            self._inputs.run_many(conn, inputs)
            # Once it is committed this process's pollers of those queues look (tasks/wakeups.py), and
            # on PostgreSQL every other worker's (tasks/pg_wakeups.py).
            after_commit(conn, lambda: wakeups.wake(queues))
            pg_wakeups.notify(conn, queues)

    def _bind_processors(self, dialect: sa.Dialect) -> dict[str, Callable[[Any], Any]]:
        """What SQLAlchemy does to each value on its way to the driver (JSON, booleans ...)."""
        found = self._processors.get(dialect.name)
        if found is None:
            found = {}
            for name, type_ in self._types.items():
                process = type_.dialect_impl(dialect).bind_processor(dialect)
                if process is not None:
                    found[name] = process
            self._processors[dialect.name] = found
        return found
