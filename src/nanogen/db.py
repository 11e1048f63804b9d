"""The project's tables (SQLAlchemy Core) and the engine they live in.

The tables share one database with DBOS's system tables (one SQLite file by default), so that a
request's debit, its task rows and the enqueue of their workflows commit in one transaction.
Schema changes go through Alembic (``nanogen/migrations``); this module is the model they match.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Self

import psycopg
import sqlalchemy as sa
from sqlalchemy import event

metadata = sa.MetaData()

TERMINAL_STATUSES = ("completed", "failed")

accounts = sa.Table(
    "nanogen_accounts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.CheckConstraint("balance >= 0", name="ck_accounts_balance_nonnegative"),
)

api_keys = sa.Table(
    "nanogen_api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_prefix", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

# Append-only: triggers (see the migration) refuse UPDATE and DELETE. One debit and at most one
# refund per task, enforced by the unique constraint, so a replayed step cannot pay twice.
ledger = sa.Table(
    "nanogen_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("task_id", sa.String(40), nullable=True),
    sa.Column("generation_id", sa.String(40), nullable=True),
    sa.Column("memo", sa.String(500), nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.CheckConstraint("amount > 0", name="ck_ledger_amount_positive"),
    sa.CheckConstraint("kind IN ('grant', 'debit', 'refund')", name="ck_ledger_kind"),
    sa.CheckConstraint("kind = 'grant' OR task_id IS NOT NULL", name="ck_ledger_task_required"),
    sa.UniqueConstraint("task_id", "kind", name="uq_ledger_task_kind"),
    sa.Index("ix_ledger_account", "account_id"),
)

generations = sa.Table(
    "nanogen_generations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), nullable=False),
    sa.Column("product", sa.String(10), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("credits", sa.BigInteger, nullable=False),
    sa.Column("task_count", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # Multi-shot videos: the concatenated result (pending -> completed | failed).
    sa.Column("concat_status", sa.String(10), nullable=True),
    sa.Column("concat_url", sa.String(2000), nullable=True),
    sa.Column("concat_key", sa.String(500), nullable=True),
    sa.Column("concat_error", sa.String(2000), nullable=True),
    # Retention: when this generation's files were deleted on purpose (NANOGEN_RETENTION_DAYS).
    sa.Column("files_expired_at", sa.Float, nullable=True),
    # Webhooks: the URL the request named (webhookUrl); none: the account's default when it ends.
    sa.Column("webhook_url", sa.String(2000), nullable=True),
    sa.Index("ix_generations_account", "account_id"),
    sa.Index("ix_generations_retention", "files_expired_at", "created_at"),
)

# One row per file deleted by retention, so that its URL answers 410 GONE rather than 404.
expired_files = sa.Table(
    "nanogen_expired_files",
    metadata,
    sa.Column("key", sa.String(500), primary_key=True),
    sa.Column("generation_id", sa.String(40), nullable=False),
    sa.Column("expired_at", sa.Float, nullable=False),
)

tasks = sa.Table(
    "nanogen_tasks",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("generation_id", sa.String(40), sa.ForeignKey("nanogen_generations.id"), nullable=False),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), nullable=False),
    sa.Column("product", sa.String(10), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("shot_id", sa.String(200), nullable=True),
    sa.Column("engine", sa.String(50), nullable=False),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    sa.Column("credits", sa.BigInteger, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("output_url", sa.String(2000), nullable=True),
    sa.Column("output_key", sa.String(500), nullable=True),
    sa.Column("error", sa.String(2000), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("deadline_at", sa.Float, nullable=False),
    # Engines that spend money: the provider's operation (recorded before waiting on it) and the
    # list-price estimate of what the task cost at the provider, in millionths of a USD.
    sa.Column("provider_operation", sa.String(500), nullable=True),
    sa.Column("provider_cost_micros", sa.BigInteger, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'generating', 'completed', 'failed')", name="ck_tasks_status"),
    sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_tasks_progress"),
    sa.Index("ix_tasks_generation_position", "generation_id", "position"),  # polls read in order
    sa.Index("ix_tasks_open_deadline", "status", "deadline_at"),
)


# Idempotency-Key (docs/api.md): one row per (account, key). Claimed (``response`` NULL) before a
# request's pre-debit work; ``response`` written in the transaction of its debit and generation; a
# refused request's claim deleted. Rows older than 24 h are ignored and overwritten.
idempotency_keys = sa.Table(
    "nanogen_idempotency_keys",
    metadata,
    sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("generation_id", sa.String(40), nullable=False),  # the claim's owner
    sa.Column("response", sa.JSON, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Webhooks (docs/api.md, nanogen/webhooks): an account's default URL and the version of its signing
# secret. The secret itself is never stored: it is derived from the server's master key, the account
# and the version (webhooks/secrets.py). A rotation bumps the version; the one before it still signs
# for 24 h after ``rotated_at``.
webhook_accounts = sa.Table(
    "nanogen_webhook_accounts",
    metadata,
    sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), primary_key=True),
    sa.Column("url", sa.String(2000), nullable=True),
    sa.Column("secret_version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("rotated_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# One row per event: written (with its exact body) in the transaction that ended the generation, and
# delivered by the DBOS workflow of the same id (the ``webhook-id`` header).
webhook_deliveries = sa.Table(
    "nanogen_webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), nullable=False),
    sa.Column("generation_id", sa.String(40), sa.ForeignKey("nanogen_generations.id"), nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(10), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_attempt_at", sa.Float, nullable=True),
    sa.Column("next_attempt_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_state"),
    sa.Index("ix_webhook_deliveries_account", "account_id", "created_at", "id"),
    sa.Index("ix_webhook_deliveries_generation", "generation_id"),
)

# A process's PostgreSQL connection budget (docs/deploy.md, "PostgreSQL connections"); settable with
# NANOGEN_DB_POOL_SIZE, NANOGEN_DB_READ_CONNECTIONS and NANOGEN_DB_SYSTEM_POOL_SIZE. Every pool is a hard
# cap (no overflow): a thread that finds its pool exhausted waits for a connection (POOL_TIMEOUT_S), and
# no code path holds a connection of a pool while asking that pool for a second one.
PG_POOL_SIZE = 5  # nanogen's tables: the submit writer, workflow steps (short transactions), sweepers
READ_CONNECTIONS = 5  # request handlers' reads on the event loop (asyncio, see Reads); 3 cost 30% of polls/s
SYSTEM_POOL_SIZE = 4  # DBOS's system tables: queue polling (half of it at most), workflow and step records
CLIENT_POOL_SIZE = 1  # the DBOSClient's own, used only to enqueue a concatenation (lazy)
POOL_TIMEOUT_S = 30.0


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for ``url``. SQLite gets WAL, a busy timeout and explicit BEGIN handling."""
    if not url.startswith("sqlite"):
        # Connections are made as needed up to pool_size and kept: when the pool was smaller than
        # the threads asking for connections, each overflow connection was opened for one query and
        # closed again (a PostgreSQL backend per request). No pre-ping (a round trip per checkout):
        # a connection found dead raises a disconnect error, and SQLAlchemy then discards every
        # connection of the pool made before it, so after a database restart the first statement
        # fails (503) and the next ones reconnect.
        # A hard cap (no overflow), named in pg_stat_activity.
        kwargs.setdefault("pool_size", PG_POOL_SIZE)
        kwargs.setdefault("max_overflow", 0)
        kwargs.setdefault("pool_timeout", POOL_TIMEOUT_S)
        kwargs.setdefault("connect_args", {"application_name": "nanogen"})
        return sa.create_engine(url, **kwargs)
    # A pool as large as the request thread pool: opening a SQLite connection (pragmas, schema
    # parse) costs more than the query, and churn under load was a quarter of the request CPU.
    kwargs.setdefault("pool_size", 40)
    kwargs.setdefault("max_overflow", 24)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
    _tune_sqlite(engine)
    _SQLITE_WRITERS[engine] = _file_writer_lock(engine.url)
    return engine


# DBOS's engine on SQLite, sized as DBOS sizes its own (pool of 20, no overflow).
SQLITE_SYSTEM_POOL_SIZE = 20


def libpq_conninfo(url: str | sa.URL) -> str:
    """A PostgreSQL SQLAlchemy URL (``postgresql+psycopg://...``) as libpq takes it, for the
    connections psycopg makes directly."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_system_engine(url: str) -> sa.Engine | None:
    """The engine DBOS is given for its tables on SQLite (None on PostgreSQL: DBOS makes its own).

    It is made as DBOS makes its own (a BEGIN IMMEDIATE before a transaction's first write, a 30 s
    busy timeout, foreign keys on), except that its writers take turns with this process's other
    writers on the file's writer lock (``_writer``): DBOS records every workflow's end, and every
    dequeue, in a write transaction of its own, and with thousands of jobs ending at once those
    writers and nanogen's sat in SQLite's busy handler (sleeps of up to 100 ms) while the file's lock
    was free, stalling every completion for a second or more. And no pre-ping: a file is not a
    connection that a server can drop."""
    if not url.startswith("sqlite"):
        return None
    lock = _file_writer_lock(sa.make_url(url))
    factory = type("TurnTakingConnection", (_TurnTakingConnection,), {"writer_lock": lock})
    engine = sa.create_engine(
        url,
        pool_size=SQLITE_SYSTEM_POOL_SIZE,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={"timeout": 30, "check_same_thread": False, "factory": factory},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"  # pysqlite: BEGIN IMMEDIATE before a write
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return engine


def _tune_sqlite(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling cannot do BEGIN IMMEDIATE; take it over.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A writer must take the lock up front: a deferred transaction that reads and then
        # writes fails with "database is locked" instead of waiting its turn.
        immediate = conn.get_execution_options().get("nanogen_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_AFTER_COMMIT = "nanogen.after_commit"


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that will write: committed on success, rolled back on error. What its
    statements asked for with ``after_commit`` runs once it has committed."""
    with _writer(engine), engine.connect().execution_options(nanogen_write=True) as conn:
        conn.info.pop(_AFTER_COMMIT, None)  # left by a transaction of this connection that rolled back
        with conn.begin():
            yield conn
        callbacks: list[Callable[[], object]] = conn.info.pop(_AFTER_COMMIT, [])
    for callback in callbacks:
        callback()


def after_commit(conn: sa.Connection, callback: Callable[[], object]) -> None:
    """Call ``callback()`` once the ``write_transaction`` of ``conn`` has committed; never if it
    rolls back."""
    conn.info.setdefault(_AFTER_COMMIT, []).append(callback)


# SQLite has one writer at a time, and a writer that finds the file locked sleeps in SQLite's busy
# handler (1, 2, 5 ... 100 ms) before it tries again, so that with dozens of threads writing the
# lock sat free while they slept: a thousand Veo shots starting at once spent most of their start in
# BEGIN IMMEDIATE. This process's writers take turns on a lock of its own instead, woken the moment
# it is free.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[sa.Engine, threading.RLock] = weakref.WeakKeyDictionary()
# One lock per database file, shared by every engine of this process on it (nanogen's and DBOS's).
_FILE_WRITER_LOCKS: dict[str, threading.RLock] = {}
_FILE_WRITER_LOCKS_GUARD = threading.Lock()


def _file_writer_lock(url: sa.URL) -> threading.RLock:
    database = url.database or ""
    key = database if database in ("", ":memory:") else os.path.realpath(database)
    with _FILE_WRITER_LOCKS_GUARD:
        return _FILE_WRITER_LOCKS.setdefault(key, threading.RLock())


# pysqlite begins a transaction (BEGIN IMMEDIATE here) before these statements and no others.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class _TurnTakingConnection(sqlite3.Connection):
    """A pysqlite connection that takes ``writer_lock`` before the statement that begins a write
    transaction and gives it back once the transaction has ended (COMMIT, ROLLBACK or close), so the
    file's lock is handed from one writer of the process to the next without a busy-handler sleep."""

    writer_lock: threading.RLock
    _holding = False

    # Every cursor of the connection is a turn-taking one (what SQLAlchemy asks for is a plain one).
    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _TurnTakingCursor)

    def take_turn(self, statement: str) -> None:
        if not self._holding and not self.in_transaction and statement.lstrip().upper().startswith(_WRITES):
            self.writer_lock.acquire()
            self._holding = True

    def give_back(self) -> None:
        if self._holding and not self.in_transaction:
            self._holding = False
            self.writer_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give_back()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give_back()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._holding:
                self._holding = False
                self.writer_lock.release()


class _TurnTakingCursor(sqlite3.Cursor):
    connection: _TurnTakingConnection

    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        self.connection.take_turn(sql)
        try:
            return super().execute(sql, parameters)
        finally:
            self.connection.give_back()  # only if no transaction began (the write failed)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Self:
        self.connection.take_turn(sql)
        try:
            return super().executemany(sql, seq_of_parameters)
        finally:
            self.connection.give_back()


def _writer(engine: sa.Engine) -> AbstractContextManager[object]:
    return _SQLITE_WRITERS.get(engine) or nullcontext()


@contextmanager
def read_connection(engine: sa.Engine) -> Iterator[sa.Connection]:
    with engine.connect() as conn, conn.begin():
        yield conn


def conflict(exc: BaseException) -> bool:
    """A transaction the database rolled back to resolve a conflict (deadlock, serialization
    failure: SQLSTATE class 40): running it again is the remedy."""
    return isinstance(exc, sa.exc.DBAPIError) and str(getattr(exc.orig, "sqlstate", "") or "")[:2] == "40"


def unavailable(exc: BaseException) -> bool:
    """A lost or refused connection (the database down, restarting, or locked past the busy
    timeout; or no connection of the pool freed within its timeout), not a bad statement nor a
    conflict: worth retrying later, or answering 503."""
    if conflict(exc):
        return False
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    )


# How work that failed on a transient database error is tried again (DBOS database steps, and a
# task's end written in place): up to 10 tries, 1 s apart and half as long again each time (75 s).
RETRY_ATTEMPTS = 10
RETRY_INTERVAL_S = 1.0
RETRY_BACKOFF = 1.5


def transient(exc: BaseException) -> bool:
    """Worth running the same work again: a conflict, or a database briefly unreachable."""
    return conflict(exc) or unavailable(exc)


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


# -- the hot paths: compiled once, run on the driver ---------------------------------------------------
# SQLAlchemy's per-execution work (cache key, parameter processing, result wrapping) costs ~100-200 µs
# a statement; the same statement on the driver's cursor costs ~10 µs on SQLite. The statements that
# run per request (authentication, status reads, the debit and its rows) are still written with
# SQLAlchemy Core, once, and compiled once per dialect; callers pass values the driver takes as they
# are (JSON already serialised).


# SQLite's bound on a statement's parameters (32,766 since 3.32), and rows per INSERT statement.
SQLITE_MAX_VARIABLES = 32_766
MULTI_ROW_MAX = 256


def row_chunks(total: int, most: int = MULTI_ROW_MAX) -> Iterator[tuple[int, int]]:
    """``(start, count)`` over ``total`` rows, each count a power of two of at most ``most``: a
    statement per chunk, and so a few distinct statements (and cached plans) per table, not one per
    batch size (63 rows: 32 + 16 + 8 + 4 + 2 + 1)."""
    largest = 1 << (max(1, most).bit_length() - 1)
    start = 0
    while start < total:
        count = min(largest, 1 << ((total - start).bit_length() - 1))
        yield start, count
        start += count


def _split_values(sql: str) -> tuple[str, str, str] | None:
    """``INSERT ... VALUES (?, ...) <tail>`` as ``(head, "(?, ...)", tail)``, or None when the
    statement has no VALUES row of parameters (a quoted literal there: not taken apart)."""
    at = sql.find(" VALUES (")
    if at < 0:
        return None
    start = at + len(" VALUES ")
    depth = 0
    for end in range(start, len(sql)):
        char = sql[end]
        if char == "'":
            return None
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return sql[:start], sql[start : end + 1], sql[end + 1 :]
    return None


class Prepared:
    """A Core statement compiled per dialect and executed on the DBAPI cursor, bound by name."""

    def __init__(self, statement: sa.Executable, **compile_options: Any) -> None:
        self.statement = statement
        self._compile_options = compile_options  # e.g. a schema_translate_map
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}
        self._values: dict[str, tuple[str, str, str] | None] = {}
        self._rows_sql: dict[int, str] = {}  # SQLite's multi-row INSERT by its rows (powers of two)

    def compiled(self, dialect: sa.Dialect) -> tuple[str, tuple[str, ...] | None]:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect, **self._compile_options)  # type: ignore[attr-defined]
            order = tuple(compiled.positiontup) if compiled.positional else None
            found = self._compiled[dialect.name] = (compiled.string, order)
        return found

    def bind(self, dialect: sa.Dialect, params: Mapping[str, Any]) -> tuple[str, Any]:
        sql, order = self.compiled(dialect)
        return sql, (tuple(map(params.__getitem__, order)) if order is not None else params)

    def run(self, conn: sa.Connection, params: Mapping[str, Any]) -> Any:
        """Execute inside ``conn``'s transaction; returns the DBAPI cursor."""
        sql, bound = self.bind(conn.dialect, params)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with driver_errors(conn.dialect, sql, bound):
            cursor.execute(sql, bound)
        return cursor

    def bind_many(self, dialect: sa.Dialect, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]]:
        sql, order = self.compiled(dialect)
        return sql, ([tuple(map(r.__getitem__, order)) for r in rows] if order is not None else list(rows))

    def run_many(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        values = self._values_group(conn.dialect)
        if values is not None and rows:
            self._insert_rows(conn, values, rows)
            return
        sql, bound = self.bind_many(conn.dialect, rows)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with driver_errors(conn.dialect, sql, bound):
            cursor.executemany(sql, bound)
        cursor.close()

    # SQLite: an INSERT of many rows as one statement with a VALUES row each, not ``executemany``.
    # pysqlite gives the interpreter lock away around every step of a statement, a row each in an
    # executemany, and the writer, holding the file's write lock, waits to take it back behind every
    # runnable thread: 130 rows took 25-40 ms with 50 busy threads (one statement: 1.0-1.6 ms) and
    # ~1.8 s with 500 (one statement: 40-50 ms; bench/bench_sqlite_steps.py).

    def _values_group(self, dialect: sa.Dialect) -> tuple[str, str, str] | None:
        """``(head, "(?, ?, ...)", tail)`` of this INSERT on SQLite; None for anything else."""
        if dialect.name != "sqlite" or not isinstance(self.statement, sa.Insert):
            return None
        if dialect.name not in self._values:
            sql, order = self.compiled(dialect)
            self._values[dialect.name] = _split_values(sql) if order is not None else None
        return self._values[dialect.name]

    def _insert_rows(
        self, conn: sa.Connection, values: tuple[str, str, str], rows: Sequence[Mapping[str, Any]]
    ) -> None:
        _, order = self.compiled(conn.dialect)
        assert order is not None
        most = min(MULTI_ROW_MAX, SQLITE_MAX_VARIABLES // max(1, len(order)))
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        for first, count in row_chunks(len(rows), most):
            chunk = rows[first : first + count]
            sql = self._rows_sql.get(len(chunk))
            if sql is None:
                head, group, tail = values
                sql = self._rows_sql[len(chunk)] = head + ", ".join([group] * len(chunk)) + tail
            bound = [row[name] for row in chunk for name in order]
            with driver_errors(conn.dialect, sql, bound):
                cursor.execute(sql, bound)
        cursor.close()

    def each(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> list[list[tuple[Any, ...]]]:
        """Execute once per parameter set, in order, and return each execution's rows (a statement
        with RETURNING). On PostgreSQL one pipelined ``executemany``: one trip to the server for
        all of them; on SQLite, in-process, one execute each."""
        if not rows:  # psycopg has no result to fetch after an empty executemany
            return []
        sql, bound = self.bind_many(conn.dialect, rows)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        results: list[list[tuple[Any, ...]]] = []
        with driver_errors(conn.dialect, sql, bound):
            if conn.dialect.driver == "psycopg":
                cursor.executemany(sql, bound, returning=True)
                results.append(cursor.fetchall())
                while cursor.nextset():
                    results.append(cursor.fetchall())
            else:
                for params in bound:
                    results.append(cursor.execute(sql, params).fetchall())
        cursor.close()
        return [[tuple(row) for row in rows_] for rows_ in results]

    def all(self, conn: sa.Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cursor = self.run(conn, params)
        try:
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()


@contextmanager
def pipelined(conn: sa.Connection) -> Iterator[None]:
    """Statements run inside are sent without waiting for each answer (psycopg's pipeline mode): on
    PostgreSQL one round trip for all of them, up to the first whose rows are read; errors are raised
    on reading or on leaving. On SQLite (in-process) nothing changes."""
    if conn.dialect.driver != "psycopg":
        yield
        return
    pipeline = conn.connection.driver_connection.pipeline  # type: ignore[union-attr]
    with driver_errors(conn.dialect, "(pipeline)", None), pipeline():
        yield


@contextmanager
def driver_errors(dialect: sa.Dialect, sql: str, params: Any) -> Iterator[None]:
    """Raise the driver's errors as SQLAlchemy's (IntegrityError, OperationalError, ...), as the
    rest of the code and the error handlers expect."""
    dbapi = dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, params, exc, dbapi.Error, dialect=dialect) from exc


Query = tuple["Prepared", Mapping[str, Any]]  # a prepared statement and its parameters


class Reads:
    """Short indexed reads for request handlers, on the event loop itself: no thread hop.

    On SQLite (WAL: readers never wait for the writer) a primary-key lookup takes microseconds, less
    than handing it to a worker thread, so it runs on the loop's own read-only connection. On
    PostgreSQL the reads go through psycopg's asyncio connections (:class:`AsyncReadPool`): handing
    them to worker threads cost the event loop's thread more CPU than the request itself (GIL
    hand-offs; measured: 0.84 ms of server CPU per check-status).
    """

    def __init__(self, engine: sa.Engine, connections: int = READ_CONNECTIONS) -> None:
        self._dialect = engine.dialect
        self._sqlite: sqlite3.Connection | None = None
        self._pool: AsyncReadPool | None = None
        if is_sqlite(engine):
            path = engine.url.database or ""
            self._sqlite = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._sqlite.execute("PRAGMA query_only=ON")
        else:
            self._pool = AsyncReadPool(engine.url, connections)

    async def rows(self, statement: Prepared, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        if self._pool is not None:
            return await self._pool.run(self._dialect, statement, params)
        return self._inline(statement, params)

    async def first(self, statement: Prepared, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        rows = await self.rows(statement, params)
        return rows[0] if rows else None

    def _inline(self, statement: Prepared, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        assert self._sqlite is not None
        sql, bound = statement.bind(self._dialect, params)
        try:  # not driver_errors(): a context manager per read was a tenth of a poll's time
            return self._sqlite.execute(sql, bound).fetchall()
        except sqlite3.Error as exc:
            raise sa.exc.DBAPIError.instance(sql, bound, exc, sqlite3.Error, dialect=self._dialect) from exc

    async def aclose(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._pool is not None:
            await self._pool.aclose()


class AsyncReadPool:
    """A few psycopg asyncio connections in autocommit (each read one statement, no transaction),
    made as needed and kept; a broken one is dropped, and the next read connects afresh. Errors leave
    as SQLAlchemy's, like every other database error (a lost connection: 503)."""

    def __init__(self, url: sa.URL, size: int) -> None:
        self._conninfo = libpq_conninfo(url)
        self._slots = asyncio.Semaphore(size)
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    async def run(
        self, dialect: sa.Dialect, statement: Prepared, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        async with self._slots:
            sql, bound = "(connect)", None
            try:
                conn = self._idle.pop() if self._idle else await self._connect()
            except psycopg.Error as exc:
                raise sa.exc.DBAPIError.instance(sql, bound, exc, psycopg.Error, dialect=dialect) from exc
            reusable = False
            try:
                sql, bound = statement.bind(dialect, params)
                cursor = await conn.execute(sql, bound)
                rows = await cursor.fetchall()
                reusable = True
                return rows
            except psycopg.Error as exc:
                reusable = not conn.broken  # a failed statement leaves an autocommit connection usable
                raise sa.exc.DBAPIError.instance(sql, bound, exc, psycopg.Error, dialect=dialect) from exc
            finally:  # also when cancelled mid-query: that connection's state is unknown
                if reusable:
                    self._idle.append(conn)
                else:
                    await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=5, application_name="nanogen-reads"
        )

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
