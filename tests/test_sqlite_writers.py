"""On SQLite, DBOS's engine (db.make_system_engine) and nanogen's take turns on one writer lock per
file: a write transaction holds it from its first write to its COMMIT or ROLLBACK, reads never take
it. Real SQLite files; the lock's state is read from another thread (acquire without blocking)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from nanogen import db


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'writers.sqlite'}"


@pytest.fixture
def system(url: str) -> Iterator[sa.Engine]:
    engine = db.make_system_engine(url)
    assert engine is not None
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    yield engine
    engine.dispose()


def lock_free(url: str) -> bool:
    """Whether another thread could take the file's writer lock now."""
    lock = db._file_writer_lock(sa.make_url(url))
    result: list[bool] = []

    def probe() -> None:
        taken = lock.acquire(blocking=False)
        if taken:
            lock.release()
        result.append(taken)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return result[0]


def test_one_lock_per_file_for_both_engines(url: str, system: sa.Engine, tmp_path: Path) -> None:
    nanogen_engine = db.make_engine(url)
    other = db.make_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
    try:
        assert db._writer(nanogen_engine) is db._file_writer_lock(system.url)
        assert db._writer(other) is not db._writer(nanogen_engine)
    finally:
        nanogen_engine.dispose()
        other.dispose()


def test_a_write_holds_the_lock_until_commit(url: str, system: sa.Engine) -> None:
    with system.begin() as conn:
        conn.exec_driver_sql("SELECT COUNT(*) FROM t").scalar()
        assert lock_free(url)  # reads do not take it
        conn.exec_driver_sql("INSERT INTO t (v) VALUES ('a')")
        assert not lock_free(url)
        conn.exec_driver_sql("UPDATE t SET v = 'b'")  # the same transaction: taken once
    assert lock_free(url)
    with system.connect() as conn:
        assert conn.exec_driver_sql("SELECT v FROM t").scalar() == "b"


def test_rollback_and_a_failed_write_give_it_back(url: str, system: sa.Engine) -> None:
    with pytest.raises(RuntimeError), system.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t (v) VALUES ('gone')")
        assert not lock_free(url)
        raise RuntimeError("the caller gives up")
    assert lock_free(url)
    with pytest.raises(sa.exc.OperationalError), system.begin() as conn:
        conn.exec_driver_sql("INSERT INTO missing (v) VALUES ('x')")
    assert lock_free(url)
    with system.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 0


def test_nanogen_writer_waits_its_turn_behind_dbos(url: str, system: sa.Engine) -> None:
    nanogen_engine = db.make_engine(url)
    order: list[str] = []
    dbos_writing = threading.Event()
    try:
        with system.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t (v) VALUES ('dbos')")
            dbos_writing.set()

            def nanogen_write() -> None:
                with db.write_transaction(nanogen_engine) as other:
                    other.exec_driver_sql("INSERT INTO t (v) VALUES ('nanogen')")
                order.append("nanogen")

            writer = threading.Thread(target=nanogen_write)
            writer.start()
            writer.join(timeout=0.5)
            assert writer.is_alive()  # waiting on the lock, not failed by SQLite's busy handler
            order.append("dbos")
        writer.join(timeout=30)
        assert not writer.is_alive()
    finally:
        nanogen_engine.dispose()
    assert order == ["dbos", "nanogen"]
    with system.connect() as conn:
        assert [r[0] for r in conn.exec_driver_sql("SELECT v FROM t ORDER BY id")] == ["dbos", "nanogen"]


def test_postgres_keeps_dbos_own_engine() -> None:
    assert db.make_system_engine("postgresql+psycopg://127.0.0.1:5432/nanogen") is None
