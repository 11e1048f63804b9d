"""Accounts, API keys, the append-only ledger, generations and tasks.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_APPEND_ONLY_SQLITE = """
CREATE TRIGGER nanogen_ledger_no_{op} BEFORE {OP} ON nanogen_ledger
BEGIN SELECT RAISE(ABORT, 'nanogen_ledger is append-only'); END
"""

_APPEND_ONLY_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION nanogen_ledger_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'nanogen_ledger is append-only'; END $$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "nanogen_accounts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.CheckConstraint("balance >= 0", name="ck_accounts_balance_nonnegative"),
    )
    op.create_table(
        "nanogen_api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "nanogen_ledger",
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
    )
    op.create_index("ix_ledger_account", "nanogen_ledger", ["account_id"])
    op.create_table(
        "nanogen_generations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), nullable=False),
        sa.Column("product", sa.String(10), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("credits", sa.BigInteger, nullable=False),
        sa.Column("task_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("concat_status", sa.String(10), nullable=True),
        sa.Column("concat_url", sa.String(2000), nullable=True),
        sa.Column("concat_key", sa.String(500), nullable=True),
        sa.Column("concat_error", sa.String(2000), nullable=True),
    )
    op.create_index("ix_generations_account", "nanogen_generations", ["account_id"])
    op.create_table(
        "nanogen_tasks",
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
        sa.CheckConstraint(
            "status IN ('pending', 'generating', 'completed', 'failed')", name="ck_tasks_status"
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_tasks_progress"),
    )
    op.create_index("ix_tasks_generation", "nanogen_tasks", ["generation_id"])
    op.create_index("ix_tasks_open_deadline", "nanogen_tasks", ["status", "deadline_at"])
    _ledger_append_only()


def _ledger_append_only() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("update", "delete"):
            op.execute(_APPEND_ONLY_SQLITE.format(op=name, OP=name.upper()))
        return
    op.execute(_APPEND_ONLY_PG_FUNCTION)
    op.execute(
        "CREATE TRIGGER nanogen_ledger_append_only BEFORE UPDATE OR DELETE ON nanogen_ledger "
        "FOR EACH ROW EXECUTE FUNCTION nanogen_ledger_append_only()"
    )


def downgrade() -> None:
    for table in ("nanogen_tasks", "nanogen_generations", "nanogen_ledger", "nanogen_api_keys"):
        op.drop_table(table)
    op.drop_table("nanogen_accounts")
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION IF EXISTS nanogen_ledger_append_only()")
