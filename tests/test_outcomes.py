"""DBOS's workflow outcomes written through the task writer (tasks/outcomes.py) on a real SQLite file:
for the same workflow states they must equal what DBOS's own ``update_workflow_outcome`` writes,
column by column (a DBOS upgrade that changes its rows fails here), land only on a PENDING row its
execution owns, and commit many at once from many threads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbos import DBOSClient

from nanogen.db import make_engine, write_transaction
from nanogen.migrate import migrate
from nanogen.tasks import outcomes
from nanogen.tasks.runtime import RUN_TASK
from nanogen.tasks.task_writer import TaskWriter

QUEUE = "nanogen.image.sandbox"
# Set by the call, not by the outcome: compared apart.
PER_CALL = {"workflow_uuid", "owner_xid", "creator_xid", "created_at", "updated_at", "completed_at", "inputs"}


@dataclass
class Database:
    engine: sa.Engine
    client: DBOSClient
    writer: TaskWriter
    status: sa.Table
    output: sa.Table

    def pending(self, owner: str) -> str:
        """A workflow as DBOS leaves it while an execution runs it: PENDING, owned by ``owner``."""
        workflow_id = f"task_{uuid.uuid4().hex}"
        options: Any = {"workflow_name": RUN_TASK, "queue_name": QUEUE, "workflow_id": workflow_id}
        with write_transaction(self.engine) as conn:
            self.client.enqueue_in_transaction(conn, options, workflow_id)
            conn.execute(
                sa.update(self.status)
                .where(self.status.c.workflow_uuid == workflow_id)
                .values(status="PENDING", owner_xid=owner, deduplication_id=f"dedup-{workflow_id}")
            )
        return workflow_id

    def rows(self, workflow_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        with self.engine.connect() as conn:
            status = conn.execute(
                sa.select(self.status).where(self.status.c.workflow_uuid == workflow_id)
            ).one()
            output = conn.execute(
                sa.select(self.output).where(self.output.c.workflow_uuid == workflow_id)
            ).one_or_none()
        return dict(status._mapping), None if output is None else dict(output._mapping)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'nanogen.sqlite'}"
    migrate(url)
    engine = make_engine(url)
    client = DBOSClient(system_database_url=url)
    writer = TaskWriter(engine)
    meta = sa.MetaData()
    try:
        yield Database(
            engine,
            client,
            writer,
            sa.Table("workflow_status", meta, autoload_with=engine),
            sa.Table("workflow_output", meta, autoload_with=engine),
        )
    finally:
        writer.stop()
        client.destroy()
        engine.dispose()


def batched_only(db: Database) -> outcomes.BatchedOutcomes:
    """Outcomes through the task writer, with DBOS's own write (the fallback) out of reach."""
    batched = outcomes.BatchedOutcomes(db.client._sys_db, db.writer)

    def not_here(*args: object, **kwargs: object) -> bool:
        raise AssertionError("the outcome fell back to DBOS's own write")

    batched._dbos_own = not_here
    return batched


def test_an_outcome_is_written_as_dbos_writes_it(db: Database) -> None:
    batched = batched_only(db)
    for status, output, error in [("SUCCESS", '{"status": "completed"}', None), ("ERROR", None, "boom")]:
        ours, theirs = db.pending("owner-a"), db.pending("owner-b")
        assert batched.update_workflow_outcome(ours, status, output=output, error=error, owner_xid="owner-a")
        assert db.client._sys_db.update_workflow_outcome(
            theirs, status, output=output, error=error, owner_xid="owner-b"
        )
        (our_status, our_output), (their_status, their_output) = db.rows(ours), db.rows(theirs)
        assert {k: v for k, v in our_status.items() if k not in PER_CALL} == {
            k: v for k, v in their_status.items() if k not in PER_CALL
        }
        assert our_status["status"] == status and our_status["owner_xid"] is None
        assert our_status["deduplication_id"] is None, "a finished workflow frees its deduplication id"
        assert our_status["completed_at"] == our_status["updated_at"]
        assert abs(our_status["completed_at"] - their_status["completed_at"]) < 60_000  # ms, the database's
        assert our_output is not None and their_output is not None
        assert (our_output["output"], our_output["error"]) == (their_output["output"], their_output["error"])
        assert (our_output["output"], our_output["error"]) == (output, error)


def test_an_outcome_lands_only_on_a_pending_row_its_execution_owns(db: Database) -> None:
    batched = batched_only(db)
    taken = db.pending("owner-now")
    assert not batched.update_workflow_outcome(taken, "SUCCESS", output="late", owner_xid="owner-before")
    status, output = db.rows(taken)
    assert (status["status"], status["owner_xid"], output) == ("PENDING", "owner-now", None), (
        "no orphan output"
    )
    assert batched.update_workflow_outcome(taken, "SUCCESS", output="first", owner_xid="owner-now")
    assert not batched.update_workflow_outcome(taken, "ERROR", error="second", owner_xid="owner-now")
    status, output = db.rows(taken)
    assert status["status"] == "SUCCESS" and output is not None and output["output"] == "first"


def test_outcomes_from_many_threads_all_commit(db: Database) -> None:
    assert outcomes.install(db.client._sys_db, db.writer)
    dbos_own = db.client._sys_db.update_workflow_outcome.__self__  # type: ignore[attr-defined]
    assert isinstance(dbos_own, outcomes.BatchedOutcomes), "installed"
    dbos_own._dbos_own = batched_only(db)._dbos_own
    ids = [db.pending(f"owner-{i}") for i in range(40)]
    landed: list[bool] = []
    go = threading.Barrier(len(ids))

    def finish(i: int, workflow_id: str) -> None:
        go.wait()
        landed.append(
            db.client._sys_db.update_workflow_outcome(
                workflow_id, "SUCCESS", output=f'"{i}"', owner_xid=f"owner-{i}"
            )
        )

    threads = [threading.Thread(target=finish, args=(i, w)) for i, w in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert landed == [True] * len(ids)
    for i, workflow_id in enumerate(ids):
        status, output = db.rows(workflow_id)
        assert status["status"] == "SUCCESS" and output is not None and output["output"] == f'"{i}"'
