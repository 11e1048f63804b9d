"""The jobs' progress reports written in batches (tasks/progress_writer.py), on real databases: tasks
are submitted through the SubmitWriter as the server does, started, and reported on from threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nanogen.db import read_connection, write_transaction
from nanogen.tasks import store
from nanogen.tasks.progress_writer import ProgressWriter
from nanogen.tasks.status import TaskStatus
from tests.test_submit_writer import Database, _account, _run, _submission, open_database


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from open_database(request.param, tmp_path_factory, "progress")


def _running_tasks(db: Database, count: int) -> list[str]:
    sub = _submission(_account(db, count), *([1] * count))
    assert _run(db, [sub]) == [None]
    ids = [t.id for t in sub.tasks]
    with write_transaction(db.engine) as conn:
        for task_id in ids:
            assert store.start(conn, task_id) is not None
    return ids


def _progress(db: Database, ids: list[str]) -> dict[str, tuple[TaskStatus, int]]:
    with read_connection(db.engine) as conn:
        found = store.get_tasks(conn, ids)
    return {i: (found[i].status, found[i].progress) for i in ids}


def _wait_for(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the reports were not written"
        time.sleep(0.05)


def test_reports_from_many_threads_are_written_together_highest_first(db: Database) -> None:
    ids = _running_tasks(db, 40)
    writer = ProgressWriter(db.engine, flush_s=0.2)
    threads = [threading.Thread(target=lambda t=t: [writer.report(t, v) for v in (10, 55, 30)]) for t in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        _wait_for(lambda: all(p == 55 for _, p in _progress(db, ids).values()))
        writer.report(ids[0], 20)  # lower than what is written: progress never moves back
        time.sleep(0.5)
        assert _progress(db, ids)[ids[0]] == (TaskStatus.GENERATING, 55)
    finally:
        writer.stop()


def test_a_report_after_the_task_ended_changes_nothing_and_stop_writes_the_rest(db: Database) -> None:
    ended, running = _running_tasks(db, 2)
    writer = ProgressWriter(db.engine, flush_s=60)  # nothing is written until stop()
    writer.report(ended, 40)
    writer.report(running, 70)
    with write_transaction(db.engine) as conn:
        assert store.complete(conn, ended, "http://example.invalid/x.png", "out/x.png")
    assert _progress(db, [running])[running] == (TaskStatus.GENERATING, 0), "not written before its flush"
    writer.stop()
    assert _progress(db, [ended, running]) == {
        ended: (TaskStatus.COMPLETED, 100),
        running: (TaskStatus.GENERATING, 70),
    }
    writer.report(running, 90)  # after stop: the process is going, nothing more is written
    writer.stop()
    assert _progress(db, [running])[running] == (TaskStatus.GENERATING, 70)


def test_a_report_of_a_task_that_ended_is_forgotten_before_it_is_written(db: Database) -> None:
    ended, running = _running_tasks(db, 2)
    writer = ProgressWriter(db.engine, flush_s=60)  # nothing is written until flush()
    writer.report(ended, 90)
    writer.report(running, 30)
    writer.forget(ended)
    assert writer.flush() == 1, "only the running task's report is written"
    assert _progress(db, [ended, running]) == {
        ended: (TaskStatus.GENERATING, 0),
        running: (TaskStatus.GENERATING, 30),
    }
    writer.forget(running)  # nothing pending: nothing to drop
    assert writer.flush() == 0
    writer.stop()
