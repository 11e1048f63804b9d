"""Group commit of the jobs' task writes (tasks/task_writer.py), on real databases: tasks submitted
through the SubmitWriter as the server does, then started, failed and completed from many threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from nanogen import ledger
from nanogen.db import after_commit, read_connection, write_transaction
from nanogen.tasks import store
from nanogen.tasks.status import TaskStatus
from nanogen.tasks.task_writer import TaskWriter
from tests.test_submit_writer import Database, _account, _run, _submission, open_database


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from open_database(request.param, tmp_path_factory, "task_writes")


def _tasks(db: Database, count: int) -> tuple[str, list[str]]:
    account = _account(db, 10 * count)
    sub = _submission(account, *([10] * count))
    assert _run(db, [sub]) == [None]
    return account, [t.id for t in sub.tasks]


def _statuses(db: Database, ids: list[str]) -> dict[str, TaskStatus]:
    with read_connection(db.engine) as conn:
        return {i: t.status for i, t in store.get_tasks(conn, ids).items()}


def test_writes_from_many_threads_each_get_their_own_result_once_committed(db: Database) -> None:
    account, ids = _tasks(db, 60)
    writer = TaskWriter(db.engine, max_batch=16)
    results: dict[str, object] = {}
    committed_when_returned: dict[str, TaskStatus] = {}

    def job(task_id: str, fail: bool) -> None:
        started = writer.write(lambda conn: store.start(conn, task_id))
        assert started is not None and started.id == task_id
        if fail:
            results[task_id] = writer.write(lambda conn: store.fail_and_refund(conn, task_id, "boom"))
        else:
            results[task_id] = writer.write(
                lambda conn: store.complete(conn, task_id, f"http://x.invalid/{task_id}", f"out/{task_id}")
            )
        # What the job was told is already in the database, seen from another connection.
        committed_when_returned[task_id] = _statuses(db, [task_id])[task_id]

    threads = [threading.Thread(target=job, args=(t, i % 3 == 0)) for i, t in enumerate(ids)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        writer.stop()
    assert results == {t: True for t in ids}
    failed = {t for i, t in enumerate(ids) if i % 3 == 0}
    expected = {t: TaskStatus.FAILED if t in failed else TaskStatus.COMPLETED for t in ids}
    assert committed_when_returned == expected
    assert _statuses(db, ids) == expected
    with read_connection(db.engine) as conn:
        balance = ledger.balance(conn, account)
    assert balance == 10 * len(failed), "each failed task refunded once"


def test_a_write_that_raises_fails_alone_and_the_others_of_its_batch_commit(db: Database) -> None:
    _, ids = _tasks(db, 8)
    writer = TaskWriter(db.engine, max_batch=64)
    gate = threading.Event()
    outcomes: dict[str, object] = {}

    def hold(conn: sa.Connection) -> None:  # keeps the writer busy while the next writes queue up
        gate.wait(10)

    def job(task_id: str, bad: bool) -> None:
        def write(conn: sa.Connection) -> bool:
            started = store.start(conn, task_id) is not None
            if bad:
                conn.execute(sa.text("SELECT * FROM no_such_table"))
            return started

        try:
            outcomes[task_id] = writer.write(write)
        except Exception as exc:
            outcomes[task_id] = type(exc).__name__

    holder = threading.Thread(target=writer.write, args=(hold,))
    holder.start()
    threads = [threading.Thread(target=job, args=(t, i == 3)) for i, t in enumerate(ids)]
    try:
        for thread in threads:
            thread.start()
        gate.set()
        for thread in [holder, *threads]:
            thread.join()
    finally:
        writer.stop()
    bad = outcomes.pop(ids[3])
    assert bad in ("OperationalError", "ProgrammingError"), "the failing write hears of its own error"
    assert outcomes == {t: True for i, t in enumerate(ids) if i != 3}
    statuses = _statuses(db, ids)
    assert statuses[ids[3]] is TaskStatus.PENDING, "the failing write's start was rolled back"
    assert all(statuses[t] is TaskStatus.GENERATING for i, t in enumerate(ids) if i != 3)


def test_after_stop_a_write_runs_in_its_own_transaction(db: Database) -> None:
    _, [task_id] = _tasks(db, 1)
    writer = TaskWriter(db.engine)
    writer.stop()
    assert writer.write(lambda conn: store.start(conn, task_id)) is not None
    assert _statuses(db, [task_id]) == {task_id: TaskStatus.GENERATING}


def test_what_a_write_asks_to_run_after_its_commit_runs_once_committed_and_never_after_a_rollback(
    db: Database,
) -> None:
    _, ids = _tasks(db, 2)
    ran: list[str] = []

    def start(task_id: str, then_raise: bool) -> None:
        def write(conn: sa.Connection) -> None:
            store.start(conn, task_id)
            after_commit(conn, lambda: ran.append(task_id))
            if then_raise:
                raise RuntimeError("rolled back")

        with write_transaction(db.engine) as conn:
            write(conn)

    with pytest.raises(RuntimeError):
        start(ids[0], then_raise=True)
    assert ran == [] and _statuses(db, ids)[ids[0]] is TaskStatus.PENDING
    start(ids[1], then_raise=False)  # the pool may hand it the rolled-back transaction's connection
    assert ran == [ids[1]] and _statuses(db, ids)[ids[1]] is TaskStatus.GENERATING
