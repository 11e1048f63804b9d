"""SQLite writers take turns in the process (db.WriteTurns / SqliteWriters): handed over first come
first served, the API's before the workflow steps', and nobody waits in SQLite's busy handler."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from nanogen.db import DBOS_EXECUTOR_THREADS, WriteTurns, make_engine, make_system_engine, write_transaction


def test_turns_go_first_come_first_served_with_the_api_first() -> None:
    turns = WriteTurns()
    assert turns.acquire(1, urgent=False)
    order: list[str] = []
    queued: list[threading.Thread] = []

    def wait_turn(name: str, urgent: bool) -> None:
        assert turns.acquire(30, urgent=urgent)
        order.append(name)
        turns.release()

    for name, urgent in [("step-1", False), ("step-2", False), ("api", True), ("step-3", False)]:
        thread = threading.Thread(target=wait_turn, args=(name, urgent))
        thread.start()
        queued.append(thread)
        while len(turns._urgent) + len(turns._background) < len(queued):  # queued in this order
            threading.Event().wait(0.005)
    turns.release()
    for thread in queued:
        thread.join(30)
    assert order == ["api", "step-1", "step-2", "step-3"]


def test_a_turn_not_granted_in_time_leaves_the_queue() -> None:
    turns = WriteTurns()
    assert turns.acquire(1, urgent=True)
    assert not turns.acquire(0.05, urgent=False), "held: the wait times out"
    assert not turns._background, "the timed-out waiter is no longer queued"
    turns.release()
    assert turns.acquire(0.05, urgent=False), "free again"
    turns.release()


def test_many_writers_on_both_engines_all_commit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    ours = make_engine(url)
    theirs = make_system_engine(url)  # DBOS's engine for its tables on SQLite
    assert theirs is not None
    with write_transaction(ours) as conn:
        conn.exec_driver_sql("CREATE TABLE t (writer TEXT, n INTEGER)")
    errors: list[BaseException] = []

    def write(engine: sa.Engine, writer: str) -> None:
        try:
            for n in range(20):
                if engine is ours:
                    with write_transaction(engine) as conn:
                        conn.exec_driver_sql("INSERT INTO t VALUES (?, ?)", (writer, n))
                else:  # as DBOS writes: engine.begin(), pysqlite's own BEGIN before the INSERT
                    with engine.begin() as conn:
                        conn.exec_driver_sql("SELECT COUNT(*) FROM t").fetchone()
                        conn.exec_driver_sql("INSERT INTO t VALUES (?, ?)", (writer, n))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(
            target=write,
            args=(ours if i % 2 else theirs, f"w{i}"),
            name=f"{DBOS_EXECUTOR_THREADS}{i}" if i % 3 else f"api-{i}",
        )
        for i in range(40)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    with ours.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 40 * 20
    ours.dispose()
    theirs.dispose()
