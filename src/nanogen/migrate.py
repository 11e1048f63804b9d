"""Bring a database to the schema this version needs: nanogen's tables (Alembic) and DBOS's."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from nanogen.db import make_engine


def migrate(database_url: str) -> None:
    """Create or upgrade every table nanogen uses in ``database_url``. Safe to run repeatedly."""
    _migrate_dbos(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def _migrate_dbos(database_url: str) -> None:
    # DBOS creates its system tables at launch too; doing it here lets an API-only process, the
    # CLI and the enqueue-in-transaction path rely on them before any worker has started.
    from dbos._serialization import DefaultSerializer
    from dbos._sys_db import SystemDatabase

    sys_db = SystemDatabase.create(
        system_database_url=database_url,
        engine_kwargs={},
        engine=None,
        schema=None,
        serializer=DefaultSerializer(),
        executor_id=None,
    )
    try:
        sys_db.run_migrations()
    finally:
        sys_db.destroy()
