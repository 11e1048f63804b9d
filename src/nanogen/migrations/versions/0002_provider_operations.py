"""Tasks record the provider's operation and the provider cost estimate.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nanogen_tasks") as batch:
        batch.add_column(sa.Column("provider_operation", sa.String(500), nullable=True))
        batch.add_column(sa.Column("provider_cost_micros", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nanogen_tasks") as batch:
        batch.drop_column("provider_cost_micros")
        batch.drop_column("provider_operation")
