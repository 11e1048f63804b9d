"""A generation's tasks indexed in position order: a poll reads them sorted without a sort step.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_generation_position", "nanogen_tasks", ["generation_id", "position"])
    op.drop_index("ix_tasks_generation", "nanogen_tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_generation", "nanogen_tasks", ["generation_id"])
    op.drop_index("ix_tasks_generation_position", "nanogen_tasks")
