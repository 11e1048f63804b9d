"""Prepared.run_many: on SQLite an INSERT of many rows is a few statements, each of a power of two
rows up to 256 (fewer when the columns are many: SQLite binds at most 32,766 values a statement), so
the writer holding the file's write lock gives the interpreter lock away a few times, not once per
row; anything else, and PostgreSQL, goes row by row (``executemany``). Real SQLite files and the
real PostgreSQL, statements counted as SQLite runs them (its trace callback)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from nanogen.db import (
    MULTI_ROW_MAX,
    SQLITE_MAX_VARIABLES,
    Prepared,
    make_engine,
    row_chunks,
    write_transaction,
)
from tests.databases import postgres_database

metadata = sa.MetaData()
items = sa.Table(
    "prepared_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(40), nullable=False),
    sa.Column("size", sa.Float),
    sa.Column("note", sa.Text, server_default="none"),
)
wide = sa.Table(
    "prepared_wide",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    *(sa.Column(f"c{i}", sa.Integer) for i in range(99)),
)
INSERT_ITEM = Prepared(
    sa.insert(items).values(id=sa.bindparam("id"), name=sa.bindparam("name"), size=sa.bindparam("size"))
)
INSERT_WIDE = Prepared(
    sa.insert(wide).values({"id": sa.bindparam("id"), **{f"c{i}": sa.bindparam(f"c{i}") for i in range(99)}})
)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'prepared.sqlite'}"
        else:
            url = stack.enter_context(postgres_database("prepared"))
        eng = make_engine(url)
        stack.callback(eng.dispose)
        metadata.create_all(eng)
        yield eng


@contextlib.contextmanager
def counted_inserts(conn: sa.Connection) -> Iterator[list[str]]:
    """The INSERT statements SQLite runs on ``conn`` meanwhile (empty on PostgreSQL)."""
    seen: list[str] = []
    driver = conn.connection.driver_connection
    if isinstance(driver, sqlite3.Connection):
        driver.set_trace_callback(lambda sql: seen.append(sql) if sql.startswith("INSERT") else None)
    try:
        yield seen
    finally:
        if isinstance(driver, sqlite3.Connection):
            driver.set_trace_callback(None)


def _rows_per_statement(statements: list[str]) -> list[int]:
    return [sql.count("), (") + 1 for sql in statements]


def _rows(count: int, first: int = 0) -> list[dict[str, object]]:
    return [{"id": first + i, "name": f"item {first + i}", "size": (first + i) / 4} for i in range(count)]


def test_many_rows_are_written_as_they_were_given(engine: sa.Engine) -> None:
    rows = _rows(4 * MULTI_ROW_MAX + 34)
    with write_transaction(engine) as conn, counted_inserts(conn) as seen:
        INSERT_ITEM.run_many(conn, rows)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(items).order_by(items.c.id)).all()
    assert [tuple(r) for r in stored] == [(r["id"], r["name"], r["size"], "none") for r in rows]
    if engine.dialect.name == "sqlite":  # 256 x 4 + 32 + 2 rows
        assert _rows_per_statement(seen) == [MULTI_ROW_MAX] * 4 + [32, 2]


def test_a_statement_binds_no_more_values_than_sqlite_allows(engine: sa.Engine) -> None:
    bound = SQLITE_MAX_VARIABLES // 100  # 100 columns: 327 rows would bind 32,700 values
    rows = [{"id": i, **{f"c{c}": i * c for c in range(99)}} for i in range(2 * bound + 1)]
    with write_transaction(engine) as conn, counted_inserts(conn) as seen:
        INSERT_WIDE.run_many(conn, rows)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count(), sa.func.sum(wide.c.c98))).one() == (
            len(rows),
            sum(i * 98 for i in range(len(rows))),
        )
    if engine.dialect.name == "sqlite":  # 655 rows: 256 + 256 + 128 + 8 + 4 + 2 + 1
        assert _rows_per_statement(seen) == [count for _, count in row_chunks(len(rows), bound)]
        assert max(_rows_per_statement(seen)) * 100 <= SQLITE_MAX_VARIABLES


def test_a_failing_row_fails_the_write_and_nothing_of_it_is_kept(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        INSERT_ITEM.run_many(conn, _rows(3, first=10))
    with pytest.raises(sa.exc.IntegrityError), write_transaction(engine) as conn:
        INSERT_ITEM.run_many(conn, _rows(5, first=20) + _rows(1, first=11))  # id 11 exists
    with engine.connect() as conn:
        assert conn.execute(sa.select(items.c.id).order_by(items.c.id)).scalars().all() == [10, 11, 12]


def test_an_insert_that_ignores_conflicts_keeps_its_clause(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'conflicts.sqlite'}")
    metadata.create_all(eng)
    ignoring = Prepared(
        sqlite_dialect.insert(items)
        .values(id=sa.bindparam("id"), name=sa.bindparam("name"), size=sa.bindparam("size"))
        .on_conflict_do_nothing()
    )
    with write_transaction(eng) as conn:
        ignoring.run_many(conn, _rows(4))
    with write_transaction(eng) as conn, counted_inserts(conn) as seen:
        ignoring.run_many(conn, [{"id": 2, "name": "taken", "size": 0.0}, *_rows(2, first=4)])
    with eng.connect() as conn:
        names = dict(conn.execute(sa.select(items.c.id, items.c.name)).all())
    eng.dispose()
    assert names == {i: f"item {i}" for i in range(6)}
    assert _rows_per_statement(seen) == [2, 1]  # 3 rows: 2 + 1, each keeping the clause
    assert all("ON CONFLICT DO NOTHING" in sql for sql in seen)


def test_a_values_row_with_a_literal_goes_row_by_row(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'literal.sqlite'}")
    metadata.create_all(eng)
    literal = Prepared(
        sa.insert(items).values(
            id=sa.bindparam("id"), name=sa.literal_column("'fixed (x)'"), size=sa.bindparam("size")
        )
    )
    with write_transaction(eng) as conn, counted_inserts(conn) as seen:
        literal.run_many(conn, [{"id": i, "size": 1.0} for i in range(3)])
    with eng.connect() as conn:
        names = conn.execute(sa.select(items.c.name)).scalars().all()
    eng.dispose()
    assert names == ["fixed (x)"] * 3
    assert len(seen) == 3


@pytest.mark.parametrize("total", [0, 1, 63, 256, 257, 1_034])
def test_rows_are_cut_into_powers_of_two_that_cover_them_once(total: int) -> None:
    chunks = list(row_chunks(total))
    assert [start for start, _ in chunks] == [sum(c for _, c in chunks[:i]) for i in range(len(chunks))]
    assert sum(count for _, count in chunks) == total
    assert all(count & (count - 1) == 0 and count <= MULTI_ROW_MAX for _, count in chunks)
