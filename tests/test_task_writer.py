"""Group commit of the jobs' task writes (tasks/task_writer.py), on real databases: tasks submitted
through the SubmitWriter as the server does, then started, failed and completed from many threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import sqlalchemy as sa

from nanogen import ledger
from nanogen.db import after_commit, generations, read_connection, write_transaction
from nanogen.tasks import store
from nanogen.tasks.status import TaskStatus
from nanogen.tasks.task_writer import TaskWriter
from nanogen.webhooks import store as webhooks_store
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


def _held_batch(writer: TaskWriter, jobs: list[threading.Thread]) -> None:
    """Run ``jobs`` while the writer is held by a write of its own, so that theirs queue into one
    batch behind it; then let it go and wait for all of them."""
    gate, holding = threading.Event(), threading.Event()

    def hold(conn: sa.Connection) -> None:
        holding.set()
        gate.wait(10)

    holder = threading.Thread(target=writer.write, args=(hold,))
    holder.start()
    assert holding.wait(10)
    for thread in jobs:
        thread.start()
    deadline = time.monotonic() + 10
    # Every write queued behind the held one (the queue's own count: nothing else says it).
    while writer._batches._queue.qsize() < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for thread in [holder, *jobs]:
        thread.join()


def test_writes_of_a_group_run_in_one_call_per_batch_and_each_hears_its_own_result(db: Database) -> None:
    _, ids = _tasks(db, 12)
    with write_transaction(db.engine) as conn:
        for task_id in ids:
            store.start(conn, task_id)
    calls: list[list[str]] = []

    def complete_all(conn: sa.Connection, task_ids: Sequence[str]) -> list[str | bool]:
        calls.append(list(task_ids))
        ends = [store.Completion(t, f"http://x.invalid/{t}", f"out/{t}.png") for t in task_ids]
        return [
            t if done else False for t, done in zip(task_ids, store.complete_many(conn, ends), strict=True)
        ]

    writer = TaskWriter(db.engine, max_batch=64)
    results: dict[str, object] = {}

    def grouped(task_id: str) -> None:
        results[task_id] = writer.write_in(complete_all, task_id)

    def plain(task_id: str) -> None:  # a plain write in the same batch runs as before
        results[task_id] = writer.write(lambda conn: store.fail_and_refund(conn, task_id, "boom"))

    jobs = [threading.Thread(target=plain if i == 0 else grouped, args=(t,)) for i, t in enumerate(ids)]
    try:
        _held_batch(writer, jobs)
    finally:
        writer.stop()
    assert len(calls) == 1 and sorted(calls[0]) == sorted(ids[1:]), "one call for the batch's group"
    assert results == {ids[0]: True} | {t: t for t in ids[1:]}
    statuses = _statuses(db, ids)
    assert statuses == {ids[0]: TaskStatus.FAILED} | {t: TaskStatus.COMPLETED for t in ids[1:]}


def test_a_group_that_raises_rolls_its_batch_back_and_each_of_its_writes_runs_alone(db: Database) -> None:
    _, ids = _tasks(db, 6)
    calls: list[list[str]] = []

    def start_all(conn: sa.Connection, task_ids: Sequence[str]) -> list[bool]:
        calls.append(list(task_ids))
        started = [store.start(conn, t) is not None for t in task_ids]
        if ids[2] in task_ids:
            raise RuntimeError(f"no start for {ids[2]}")
        return started

    writer = TaskWriter(db.engine, max_batch=64)
    outcomes: dict[str, object] = {}

    def job(task_id: str) -> None:
        try:
            outcomes[task_id] = writer.write_in(start_all, task_id)
        except RuntimeError as exc:
            outcomes[task_id] = str(exc)

    try:
        _held_batch(writer, [threading.Thread(target=job, args=(t,)) for t in ids])
    finally:
        writer.stop()
    assert sorted(calls[0]) == sorted(ids) and sorted(map(tuple, calls[1:])) == sorted((t,) for t in ids)
    assert outcomes == {t: f"no start for {ids[2]}" if t == ids[2] else True for t in ids}
    statuses = _statuses(db, ids)
    assert statuses[ids[2]] is TaskStatus.PENDING, "the raising write's start was rolled back"
    assert all(statuses[t] is TaskStatus.GENERATING for t in ids if t != ids[2])


def test_complete_many_completes_the_open_tasks_only_and_says_which(db: Database) -> None:
    account, ids = _tasks(db, 7)
    with write_transaction(db.engine) as conn:
        for task_id in ids:
            store.start(conn, task_id)
        store.set_provider_cost(conn, ids[1], 5_000)
        assert store.fail_and_refund(conn, ids[3], "past its deadline")
    ends = [
        store.Completion(t, f"http://x.invalid/{t}.png", f"out/{t}.png", 39_000 if i % 2 == 0 else None)
        for i, t in enumerate(ids)
    ]
    with write_transaction(db.engine) as conn:  # 7 tasks: statements of 4, 2 and 1 rows
        done = store.complete_many(conn, ends)
    assert done == [i != 3 for i in range(len(ids))]
    with read_connection(db.engine) as conn:
        found = store.get_tasks(conn, ids)
        balance = ledger.balance(conn, account)
    for i, task_id in enumerate(ids):
        task = found[task_id]
        if i == 3:
            assert (task.status, task.output_key, task.output_url) == (TaskStatus.FAILED, None, None)
            continue
        assert task.status is TaskStatus.COMPLETED and task.progress == 100
        assert (task.output_url, task.output_key) == (f"http://x.invalid/{task_id}.png", f"out/{task_id}.png")
        expected_cost = 39_000 if i % 2 == 0 else (5_000 if i == 1 else None)
        assert task.provider_cost_micros == expected_cost, "an unknown charge keeps the one recorded"
    assert balance == 10, "only the failed task refunded"
    with write_transaction(db.engine) as conn:
        assert store.complete_many(conn, ends[:2]) == [False, False], "each completes at most once"
        with pytest.raises(ValueError, match="twice"):
            store.complete_many(conn, [ends[0], ends[0]])


def test_the_generations_a_webhook_applies_to_are_found_in_one_statement(db: Database) -> None:
    own, default, neither = (_tasks(db, 1)[0] for _ in range(3))
    gens: dict[str, str] = {}
    with write_transaction(db.engine) as conn:
        for account in (own, default, neither):
            gens[account] = conn.execute(
                sa.select(generations.c.id).where(generations.c.account_id == account)
            ).scalar_one()
        conn.execute(
            sa.update(generations)
            .where(generations.c.id == gens[own])
            .values(webhook_url="https://hooks.invalid/own")
        )
        webhooks_store.set_url(conn, default, "https://hooks.invalid/default")
    with read_connection(db.engine) as conn:
        found = webhooks_store.generations_with_webhook(conn, set(gens.values()) | {"gen_missing"})
        assert webhooks_store.generations_with_webhook(conn, set()) == set()
    assert found == {gens[own], gens[default]}


def test_start_many_starts_the_open_tasks_counts_each_attempt_and_leaves_the_ended_out(db: Database) -> None:
    _, ids = _tasks(db, 7)
    with write_transaction(db.engine) as conn:
        assert store.fail_and_refund(conn, ids[5], "canceled before it started")
        first = store.start_many(conn, ids)  # 7 tasks: statements of 4, 2 and 1 rows
    assert sorted(first) == sorted(t for i, t in enumerate(ids) if i != 5), "an ended task does not start"
    assert all(r.status is TaskStatus.GENERATING and r.attempts == 1 for r in first.values())
    with write_transaction(db.engine) as conn:  # a re-run after a crash starts again: its attempt counts
        again = store.start_many(conn, ids[:2])
        with pytest.raises(ValueError, match="twice"):
            store.start_many(conn, [ids[0], ids[0]])
    assert [again[t].attempts for t in ids[:2]] == [2, 2]
    assert [again[t].started_at for t in ids[:2]] == [first[t].started_at for t in ids[:2]], (
        "first start kept"
    )
    with read_connection(db.engine) as conn:
        assert store.get_tasks(conn, ids)[ids[5]].status is TaskStatus.FAILED
        generations_found = store.get_generations(conn, {r.generation_id for r in first.values()} | {"gen_x"})
    assert set(generations_found) == {r.generation_id for r in first.values()}
