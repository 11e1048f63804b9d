"""The project's tables (SQLAlchemy Core) and the engine they live in.

The tables share one database with DBOS's system tables (one SQLite file by default), so that a
request's debit, its task rows and the enqueue of their workflows commit in one transaction.
Schema changes go through Alembic (``nanogen/migrations``); this module is the model they match.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
    sa.Index("ix_generations_account", "account_id"),
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
    sa.Index("ix_tasks_generation", "generation_id"),
    sa.Index("ix_tasks_open_deadline", "status", "deadline_at"),
)


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for ``url``. SQLite gets WAL, a busy timeout and explicit BEGIN handling."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, **kwargs)
    # A pool as large as the request thread pool: opening a SQLite connection (pragmas, schema
    # parse) costs more than the query, and churn under load was a quarter of the request CPU.
    kwargs.setdefault("pool_size", 40)
    kwargs.setdefault("max_overflow", 24)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
    _tune_sqlite(engine)
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


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that will write: committed on success, rolled back on error."""
    with engine.connect().execution_options(nanogen_write=True) as conn, conn.begin():
        yield conn


@contextmanager
def read_connection(engine: sa.Engine) -> Iterator[sa.Connection]:
    with engine.connect() as conn, conn.begin():
        yield conn


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"
