"""Webhooks: a generation's webhook URL, each account's default URL and secret version, the deliveries.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nanogen_generations", sa.Column("webhook_url", sa.String(2000), nullable=True))
    op.create_table(
        "nanogen_webhook_accounts",
        sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), primary_key=True),
        sa.Column("url", sa.String(2000), nullable=True),
        sa.Column("secret_version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("rotated_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "nanogen_webhook_deliveries",
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
    )
    op.create_index(
        "ix_webhook_deliveries_account", "nanogen_webhook_deliveries", ["account_id", "created_at", "id"]
    )
    op.create_index("ix_webhook_deliveries_generation", "nanogen_webhook_deliveries", ["generation_id"])


def downgrade() -> None:
    op.drop_table("nanogen_webhook_deliveries")
    op.drop_table("nanogen_webhook_accounts")
    with op.batch_alter_table("nanogen_generations") as batch:
        batch.drop_column("webhook_url")
