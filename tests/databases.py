"""Databases of the test run's own: a SQLite file, or a fresh database on the PostgreSQL server that
these machines run at 127.0.0.1:5432 (trust auth), created for the run and dropped after it."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")


@contextmanager
def postgres_database(purpose: str) -> Iterator[str]:
    """A new, empty PostgreSQL database; yields its SQLAlchemy URL and drops it afterwards."""
    admin = postgres_admin()
    name = f"nanogen_test_{purpose}_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def migrated_engine(kind: str, directory: Path, purpose: str) -> Iterator[sa.Engine]:
    """A migrated database of the run's own and an engine on it: ``kind`` "sqlite" (a file in
    ``directory``) or "postgres"."""
    from nanogen.db import make_engine
    from nanogen.migrate import migrate

    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{directory / 'nanogen.sqlite'}"
        else:
            url = stack.enter_context(postgres_database(purpose))
        migrate(url)
        engine = make_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


class Database:
    """A DB-API connection to a server's database for the tests' own checks, SQLite or PostgreSQL,
    taking the same SQL (``?`` placeholders) on both."""

    def __init__(self, url: str | None, sqlite_path: Path) -> None:
        self._postgres = url is not None and url.startswith("postgresql")
        if self._postgres:
            assert url is not None
            self._conn: Any = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
        else:
            self._conn = sqlite3.connect(sqlite_path, timeout=30)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s") if self._postgres else sql, params)

    def iterdump(self) -> Iterator[str]:
        """The whole database as SQL text (SQLite only: what a test greps for secrets)."""
        assert not self._postgres, "iterdump is SQLite's"
        yield from self._conn.iterdump()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._postgres:
            self._conn.commit()
        self._conn.close()
