"""Alembic's migrations build exactly the tables db.py describes (the code's queries are written
against db.py), on SQLite and on PostgreSQL, and the newest one can be undone and redone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

import nanogen.migrate
from nanogen.db import metadata
from tests.databases import migrated_engine


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    with migrated_engine(request.param, tmp_path, "migrations") as eng:
        yield eng


def _differences(engine: sa.Engine) -> list[object]:
    """What autogenerate would change to make the database match db.py (nanogen's tables only:
    DBOS's own live in the same database, and Alembic's version table is not in db.py)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": lambda name, kind, _parent: (
                    kind != "table" or (name.startswith("nanogen_") and name != "nanogen_alembic_version")
                ),
                "compare_type": True,
            },
        )
        return list(compare_metadata(context, metadata))


def _alembic(conn: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(nanogen.migrate.__file__).parent / "migrations"))
    config.attributes["connection"] = conn
    return config


def test_the_migrated_schema_is_the_one_the_code_describes(engine: sa.Engine) -> None:
    assert _differences(engine) == []


def test_the_newest_migration_downgrades_and_upgrades_again(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        command.downgrade(_alembic(conn), "-1")
    assert _differences(engine) != []  # the step back is visible...
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "head")
    assert _differences(engine) == []  # ...and undone
