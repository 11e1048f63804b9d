"""Idempotency-Key: a generate request's key, the hash of its body and its stored response.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nanogen_idempotency_keys",
        sa.Column("account_id", sa.String(40), sa.ForeignKey("nanogen_accounts.id"), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("generation_id", sa.String(40), nullable=False),
        sa.Column("response", sa.JSON, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("nanogen_idempotency_keys")
