"""The group-commit submit path on real databases, with real DBOS enqueues in the same transaction.

No DBOS launch: ``DBOSClient.enqueue_in_transaction`` writes the workflow's row into DBOS's
``workflow_status`` table (created by ``nanogen.migrate``), inside the SubmitWriter's transaction,
exactly as the server does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from dbos import DBOSClient, EnqueueOptions

from nanogen import ledger
from nanogen.db import generations, make_engine, tasks, write_transaction
from nanogen.db import ledger as ledger_table
from nanogen.errors import CreditReservationFailed, InsufficientCredits
from nanogen.migrate import migrate
from nanogen.products import Product
from nanogen.tasks.enqueue import PreparedEnqueue
from nanogen.tasks.runtime import RUN_TASK
from nanogen.tasks.submit import Enqueue, NewTask, Submission, SubmitWriter, Workflow, dbos_enqueue
from tests.databases import postgres_database

QUEUE = "nanogen.image.sandbox"


@dataclass
class Database:
    engine: sa.Engine
    client: DBOSClient
    workflow_status: sa.Table

    def enqueue(self, conn: sa.Connection, workflows: Sequence[Workflow]) -> None:
        dbos_enqueue(self.client, "test")(conn, workflows)

    def workflows(self, ids: list[str]) -> list[tuple[str, str, str]]:
        ws = self.workflow_status.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ws.workflow_uuid, ws.queue_name, ws.status).where(ws.workflow_uuid.in_(ids))
            )
            return sorted((r.workflow_uuid, r.queue_name, r.status) for r in rows)

    def count(self, table: sa.Table, column: sa.Column[str], ids: list[str]) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(column.in_(ids))
                ).scalar_one()
            )


def _open(url: str, schema: str | None) -> Iterator[Database]:
    migrate(url)
    engine = make_engine(url)
    client = DBOSClient(system_database_url=url, lazy=True)
    workflow_status = sa.Table("workflow_status", sa.MetaData(), schema=schema, autoload_with=engine)
    try:
        yield Database(engine, client, workflow_status)
    finally:
        client.destroy()
        engine.dispose()


def open_database(kind: str, tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Database]:
    """A migrated database of ``kind`` ("sqlite": a file; "postgres": one made for this run)."""
    if kind == "sqlite":
        yield from _open(f"sqlite:///{tmp_path_factory.mktemp(name) / 'nanogen.sqlite'}", None)
        return
    with postgres_database(name) as url:
        yield from _open(url, "dbos")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from open_database(request.param, tmp_path_factory, "submit")


def _account(db: Database, credits: int) -> str:
    with write_transaction(db.engine) as conn:
        return ledger.create_account(conn, f"acct-{uuid.uuid4().hex[:10]}", credits).id


def _submission(account_id: str, *task_credits: int, task_ids: list[str] | None = None) -> Submission:
    ids = task_ids or [ledger.new_id("task") for _ in task_credits]
    return Submission(
        account_id=account_id,
        generation_id=ledger.new_id("gen"),
        product=Product.IMAGE,
        engine="sandbox",
        queue=QUEUE,
        params={"prompt": "a red bicycle"},
        tasks=tuple(
            NewTask(tid, i, c, {"prompt": "a red bicycle"})
            for i, (tid, c) in enumerate(zip(ids, task_credits, strict=True))
        ),
        deadline_s=600,
    )


async def _submit_all(
    writer: SubmitWriter, subs: list[Submission], *, start_after_queued: bool = False
) -> list[BaseException | None]:
    """Submit concurrently from one loop; with ``start_after_queued`` every submission is queued before
    the writer thread starts, so they are committed together (one batch, when it fits max_batch)."""
    pending = [asyncio.ensure_future(writer.submit(s)) for s in subs]
    if start_after_queued:
        await asyncio.sleep(0)  # each submit() puts its request on the queue before its first await
        writer.start()
    results = await asyncio.gather(*pending, return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]


def _run(
    db: Database, subs: list[Submission], enqueue: Enqueue | None = None, **kwargs: object
) -> list[BaseException | None]:
    writer = SubmitWriter(db.engine, enqueue or db.enqueue)
    start_after_queued = bool(kwargs.get("start_after_queued"))
    if not start_after_queued:
        writer.start()
    try:
        return asyncio.run(_submit_all(writer, subs, start_after_queued=start_after_queued))
    finally:
        writer.stop()


def _task_ids(subs: list[Submission]) -> list[str]:
    return [t.id for s in subs for t in s.tasks]


def test_a_submission_writes_debit_generation_tasks_and_workflows(db: Database) -> None:
    account = _account(db, 10)
    sub = _submission(account, 2, 3)
    assert _run(db, [sub]) == [None]
    ids = _task_ids([sub])
    with db.engine.connect() as conn:
        assert ledger.balance(conn, account) == 5
        gen = conn.execute(sa.select(generations).where(generations.c.id == sub.generation_id)).one()
        rows = conn.execute(
            sa.select(tasks).where(tasks.c.generation_id == sub.generation_id).order_by(tasks.c.position)
        ).all()
        debits = conn.execute(
            sa.select(ledger_table.c.task_id, ledger_table.c.amount, ledger_table.c.generation_id).where(
                ledger_table.c.kind == "debit", ledger_table.c.account_id == account
            )
        ).all()
    assert (gen.credits, gen.task_count, gen.product) == (5, 2, "image")
    assert [(r.id, r.status, r.credits, r.position) for r in rows] == [
        (ids[0], "pending", 2, 0),
        (ids[1], "pending", 3, 1),
    ]
    assert sorted((d.task_id, int(d.amount), d.generation_id) for d in debits) == sorted(
        [(ids[0], 2, sub.generation_id), (ids[1], 3, sub.generation_id)]
    )
    assert db.workflows(ids) == sorted((i, QUEUE, "ENQUEUED") for i in ids)


def test_one_thousand_concurrent_submissions_on_one_hundred_credits(db: Database) -> None:
    account = _account(db, 100)
    subs = [_submission(account, 1) for _ in range(1000)]
    results = _run(db, subs)

    succeeded = [s for s, r in zip(subs, results, strict=True) if r is None]
    failed = [r for r in results if r is not None]
    refused = [r for r in failed if isinstance(r, InsufficientCredits)]
    assert len(succeeded) == 100
    assert len(failed) == 900
    assert len(refused) == 900, {type(r) for r in failed}
    assert all(r.required_credits == 1 and r.body()["requiredCredits"] == 1 for r in refused)
    assert all(r.body()["errorCode"] == "INSUFFICIENT_CREDITS" for r in refused)

    ok_ids, all_ids = _task_ids(succeeded), _task_ids(subs)
    with db.engine.connect() as conn:
        assert ledger.balance(conn, account) == 0
        totals = ledger.totals(conn, account)
        negative = conn.execute(
            sa.text("SELECT count(*) FROM nanogen_accounts WHERE balance < 0")
        ).scalar_one()
    assert totals == ledger.Totals(granted=100, debited=100, refunded=0)
    assert totals.expected_balance == 0
    assert negative == 0
    assert db.count(ledger_table, ledger_table.c.task_id, all_ids) == 100
    assert db.count(ledger_table, ledger_table.c.task_id, ok_ids) == 100
    assert db.count(tasks, tasks.c.id, all_ids) == 100
    assert db.count(tasks, tasks.c.id, ok_ids) == 100
    assert db.count(generations, generations.c.id, [s.generation_id for s in subs]) == 100
    assert [w[0] for w in db.workflows(all_ids)] == sorted(ok_ids)


def test_a_failing_submission_fails_alone_in_its_batch(db: Database) -> None:
    account = _account(db, 100)
    earlier = _submission(account, 1)
    assert _run(db, [earlier]) == [None]
    taken = earlier.tasks[0].id

    shared_id = ledger.new_id("task")
    batch = [
        _submission(account, 2),
        _submission(account, 5, task_ids=[taken]),  # a task id that is already debited
        _submission(account, 3),
        _submission(account, 7, task_ids=[shared_id]),
        _submission(account, 11, task_ids=[shared_id]),  # the same id twice in one batch: second fails
        _submission(account, 4),
    ]
    results = _run(db, batch, start_after_queued=True)
    assert [r is None for r in results] == [True, False, True, True, False, True]
    assert isinstance(results[1], CreditReservationFailed)
    assert isinstance(results[4], CreditReservationFailed)

    with db.engine.connect() as conn:
        assert ledger.balance(conn, account) == 100 - 1 - 2 - 3 - 7 - 4
        assert ledger.totals(conn, account).expected_balance == ledger.balance(conn, account)
    assert db.count(generations, generations.c.id, [s.generation_id for s in batch]) == 4
    assert db.count(generations, generations.c.id, [batch[1].generation_id, batch[4].generation_id]) == 0
    # The duplicate's debit was rolled back with its transaction; the original rows stand untouched.
    with db.engine.connect() as conn:
        by_task = conn.execute(
            sa.select(ledger_table.c.task_id, ledger_table.c.amount, ledger_table.c.generation_id).where(
                ledger_table.c.task_id.in_([taken, shared_id])
            )
        ).all()
    assert sorted((r.task_id, int(r.amount), r.generation_id) for r in by_task) == sorted(
        [(taken, 1, earlier.generation_id), (shared_id, 7, batch[3].generation_id)]
    )
    ok_ids = _task_ids([batch[0], batch[2], batch[3], batch[5]])
    assert [w[0] for w in db.workflows([*ok_ids, taken])] == sorted([*ok_ids, taken])


def test_insufficient_credits_leaves_no_rows_and_no_workflow(db: Database) -> None:
    account = _account(db, 4)
    too_big = _submission(account, 3, 2)  # 5 > 4: all or nothing
    fits = _submission(account, 4)
    results = _run(db, [too_big, fits], start_after_queued=True)
    assert isinstance(results[0], InsufficientCredits)
    assert results[0].required_credits == 5
    assert results[1] is None
    ids = _task_ids([too_big])
    assert db.workflows(ids) == []
    assert db.count(tasks, tasks.c.id, ids) == 0
    assert db.count(ledger_table, ledger_table.c.task_id, ids) == 0
    assert db.count(generations, generations.c.id, [too_big.generation_id]) == 0
    assert db.workflows(_task_ids([fits])) == [(fits.tasks[0].id, QUEUE, "ENQUEUED")]
    with db.engine.connect() as conn:
        assert ledger.balance(conn, account) == 0


def test_a_failure_after_the_enqueue_rolls_the_workflow_back(db: Database) -> None:
    """A submission that fails after its workflow row was written leaves nothing behind at all."""
    account = _account(db, 20)
    doomed = _submission(account, 2, 3)
    survivor = _submission(account, 6)
    poisoned = doomed.tasks[1].id
    seen: list[str] = []

    def enqueue_then_fail(conn: sa.Connection, workflows: Sequence[Workflow]) -> None:
        db.enqueue(conn, workflows)
        ids = [w.task_id for w in workflows]
        seen.extend(ids)
        if poisoned in ids:
            raise RuntimeError("the enqueue's caller failed after the workflow rows were written")

    results = _run(db, [doomed, survivor], enqueue_then_fail, start_after_queued=True)
    assert isinstance(results[0], CreditReservationFailed)
    assert results[1] is None
    assert set(_task_ids([doomed])) <= set(seen)  # both of its workflows had been enqueued
    ids = _task_ids([doomed])
    assert db.workflows(ids) == []
    assert db.count(tasks, tasks.c.id, ids) == 0
    assert db.count(ledger_table, ledger_table.c.task_id, ids) == 0
    assert db.count(generations, generations.c.id, [doomed.generation_id]) == 0
    assert db.workflows(_task_ids([survivor])) == [(survivor.tasks[0].id, QUEUE, "ENQUEUED")]
    with db.engine.connect() as conn:
        assert ledger.balance(conn, account) == 14


def test_prepared_enqueue_writes_the_rows_dbos_writes(db: Database) -> None:
    """tasks/enqueue.py writes DBOS's two rows with statements compiled once; for the same options
    they must equal what ``DBOSClient.enqueue_in_transaction`` writes, column by column (a DBOS
    upgrade that changes its rows fails here)."""
    ours, theirs = f"task_{uuid.uuid4().hex}", f"task_{uuid.uuid4().hex}"

    def options(workflow_id: str) -> EnqueueOptions:
        return {
            "workflow_name": RUN_TASK,
            "queue_name": QUEUE,
            "workflow_id": workflow_id,
            "app_version": "test",
            "queue_partition_key": "acct_prepared",
        }

    with write_transaction(db.engine) as conn:
        PreparedEnqueue(db.client)(conn, [(options(ours), (ours,))])
        db.client.enqueue_in_transaction(conn, options(theirs), theirs)

    schema = db.workflow_status.schema
    inputs_table = sa.Table("workflow_input", sa.MetaData(), schema=schema, autoload_with=db.engine)
    with db.engine.connect() as conn:
        status = {
            r.workflow_uuid: dict(r._mapping)
            for r in conn.execute(
                sa.select(db.workflow_status).where(db.workflow_status.c.workflow_uuid.in_([ours, theirs]))
            )
        }
        inputs = {
            r.workflow_uuid: dict(r._mapping)
            for r in conn.execute(
                sa.select(inputs_table).where(inputs_table.c.workflow_uuid.in_([ours, theirs]))
            )
        }
    assert set(status) == set(inputs) == {ours, theirs}
    per_call = {"workflow_uuid", "creator_xid", "created_at", "updated_at"}
    assert {k: v for k, v in status[ours].items() if k not in per_call} == {
        k: v for k, v in status[theirs].items() if k not in per_call
    }
    assert status[ours]["status"] == "ENQUEUED" and status[ours]["queue_partition_key"] == "acct_prepared"
    assert status[ours]["creator_xid"] and status[ours]["creator_xid"] != status[theirs]["creator_xid"]
    assert abs(status[ours]["created_at"] - status[theirs]["created_at"]) < 60_000  # ms, the database's clock
    assert status[ours]["updated_at"] == status[ours]["created_at"]
    serializer = db.client._serializer
    assert serializer.deserialize(inputs[ours]["inputs"]) == {"args": (ours,), "kwargs": {}}
    assert serializer.deserialize(inputs[theirs]["inputs"]) == {"args": (theirs,), "kwargs": {}}
    assert abs(inputs[ours]["retention_timestamp"] - inputs[theirs]["retention_timestamp"]) < 60_000
