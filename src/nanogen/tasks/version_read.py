"""DBOS's read of the newest application version, compiled once instead of built at every queue poll.

Every dequeue (each queue's poll: 20 a second for the sandbox's images, idle or not) asks whether
this process runs the newest registered application version (``SystemDatabase._is_latest_version``).
DBOS builds that query through SQLAlchemy on each call: a union of two ordered, limited subqueries
whose construction (column proxies, coercions) and cache key took 1.1 ms of CPU of the 2.3 ms an
empty poll costs, measured on an idle server, for a statement that depends only on the
application's name.

Here the statement DBOS builds the first time is compiled once per application name, with its
values, and that SQL is executed after: the same query, read from the database at every poll as
before, so a newer version registered by another process is seen at the next poll.
``tests/test_version_read.py`` checks that both ways answer alike as versions are registered.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from dbos._schemas import SCHEMA_PLACEHOLDER
from dbos._sys_db import SystemDatabase
from sqlalchemy.sql.compiler import SQLCompiler


class _Recording:
    """A connection that notes what DBOS executes through it."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self.executed: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        self.executed.append((statement, args, kwargs))
        return self._conn.execute(statement, *args, **kwargs)


class LatestVersionRead:
    """``SystemDatabase._latest_application_version`` with its SQL and values kept per application."""

    def __init__(self, sys_db: SystemDatabase) -> None:
        self._dbos_own = sys_db._latest_application_version
        # DBOS's tables are named under a placeholder schema that its engine translates.
        self._schema_map = {SCHEMA_PLACEHOLDER: sys_db.schema}
        self._kept: dict[str | None, tuple[str, Any]] = {}

    def __call__(self, c: sa.Connection, application_name: str | None) -> sa.Row[Any] | None:
        kept = self._kept.get(application_name)
        if kept is not None:
            row: sa.Row[Any] | None = c.exec_driver_sql(*kept).fetchone()
            return row
        recording = _Recording(c)
        row = self._dbos_own(recording, application_name)  # type: ignore[arg-type]
        compiled = self._compiled(recording, c.dialect)
        if compiled is not None:  # two threads that both built it keep the same SQL
            self._kept[application_name] = compiled
        return row

    def _compiled(self, recording: _Recording, dialect: sa.Dialect) -> tuple[str, Any] | None:
        """DBOS's read as SQL and its values, bound as the driver wants them, when it was one
        statement with nothing bound beside it: anything else (a DBOS upgrade that reads
        differently) keeps calling DBOS's own."""
        if len(recording.executed) != 1:
            return None
        statement, args, kwargs = recording.executed[0]
        if args or kwargs or not isinstance(statement, sa.sql.ClauseElement):
            return None
        compiled = statement.compile(
            dialect=dialect,
            schema_translate_map=self._schema_map,
            render_schema_translate=True,
            compile_kwargs={"render_postcompile": True},  # the LIMITs as plain parameters
        )
        if not isinstance(compiled, SQLCompiler):
            return None
        values = compiled.construct_params()
        if compiled.positional:  # SQLite's qmarks; psycopg binds by name
            return compiled.string, tuple(values[name] for name in compiled.positiontup or ())
        return compiled.string, values


def install(sys_db: SystemDatabase) -> bool:
    """Replace ``sys_db``'s version read where that applies (one unsharded system database, whose
    version rows need no per-shard predicate); True if it did."""
    if sys_db.sharded:
        return False
    sys_db._latest_application_version = LatestVersionRead(sys_db)  # type: ignore[method-assign]
    return True
