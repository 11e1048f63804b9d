"""Retention: when a generation's files were deleted, and a tombstone per deleted file (410 GONE).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nanogen_generations", sa.Column("files_expired_at", sa.Float, nullable=True))
    op.create_index("ix_generations_retention", "nanogen_generations", ["files_expired_at", "created_at"])
    op.create_table(
        "nanogen_expired_files",
        sa.Column("key", sa.String(500), primary_key=True),
        sa.Column("generation_id", sa.String(40), nullable=False),
        sa.Column("expired_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("nanogen_expired_files")
    op.drop_index("ix_generations_retention", "nanogen_generations")
    with op.batch_alter_table("nanogen_generations") as batch:
        batch.drop_column("files_expired_at")
