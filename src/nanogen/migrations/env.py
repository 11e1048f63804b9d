"""Alembic environment: runs on the connection nanogen hands it (see nanogen.migrate)."""

from __future__ import annotations

from alembic import context

from nanogen.db import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    version_table="nanogen_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
