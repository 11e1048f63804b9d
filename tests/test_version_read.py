"""DBOS's newest-version read with its SQL kept (tasks/version_read.py), on a real SQLite file and a
real PostgreSQL database: as versions of several applications are registered and retimed, it must
answer what DBOS's own read answers, after the first read without building DBOS's query again."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOSClient
from dbos._sys_db import SystemDatabase

from nanogen.migrate import migrate
from nanogen.tasks import version_read
from tests.databases import postgres_database

# Applications whose newest version is read: two named ones, every application's (None), and a
# name with a percent sign (a driver placeholder's, were the value written into the SQL).
NAMES: list[str | None] = ["nanogen", "other", None, "100%"]


@pytest.fixture(params=["sqlite", "postgres"])
def sys_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SystemDatabase]:
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'nanogen.sqlite'}"
        else:
            url = stack.enter_context(postgres_database("versions"))
        migrate(url)
        client = DBOSClient(system_database_url=url)
        stack.callback(client.destroy)
        yield client._sys_db


def register(sys_db: SystemDatabase, version: str, application: str | None, at_ms: int) -> None:
    sys_db.create_application_version(version, application)
    sys_db.update_application_version_timestamp(version, at_ms)


def test_the_kept_read_answers_as_dbos_does_and_builds_once(sys_db: SystemDatabase) -> None:
    dbos_own = sys_db._latest_application_version
    built: list[str | None] = []

    def counted(c: Any, application_name: str | None) -> Any:
        built.append(application_name)
        return dbos_own(c, application_name)

    sys_db._latest_application_version = counted  # type: ignore[method-assign]
    kept = version_read.LatestVersionRead(sys_db)

    def newest() -> dict[str | None, tuple[Any, ...] | None]:
        """Each application's newest version, read both ways (DBOS's own first)."""
        answers: dict[str | None, tuple[Any, ...] | None] = {}
        with sys_db.engine.begin() as c:
            for name in NAMES:
                ours = kept(c, name)
                theirs = dbos_own(c, name)
                assert (ours and tuple(ours)) == (theirs and tuple(theirs)), name
                answers[name] = None if ours is None else tuple(ours)
        return answers

    def names(answers: dict[str | None, tuple[Any, ...] | None]) -> list[str | None]:
        return [None if row is None else row[1] for row in answers.values()]

    steps: list[tuple[Callable[[], None], list[str | None]]] = [
        (lambda: None, [None, None, None, None]),
        (lambda: register(sys_db, "n1", "nanogen", 1_000), ["n1", None, "n1", None]),
        (lambda: register(sys_db, "o1", "other", 2_000), ["n1", "o1", "o1", None]),
        # An unclaimed version (from before versions had owners) is every application's.
        (lambda: register(sys_db, "u1", None, 1_500), ["u1", "o1", "o1", "u1"]),
        (lambda: register(sys_db, "n2", "nanogen", 3_000), ["n2", "o1", "n2", "u1"]),
        (lambda: sys_db.update_application_version_timestamp("u1", 4_000), ["u1", "u1", "u1", "u1"]),
        (lambda: register(sys_db, "p1", "100%", 5_000), ["u1", "u1", "p1", "p1"]),
    ]
    for change, expected in steps:
        change()
        assert names(newest()) == expected
    # DBOS built its query once per application.
    assert built.count("nanogen") == built.count("other") == built.count(None) == built.count("100%") == 1


def test_installed_the_newest_version_is_noticed_at_the_next_read(sys_db: SystemDatabase) -> None:
    assert version_read.install(sys_db)
    assert isinstance(sys_db._latest_application_version, version_read.LatestVersionRead)
    register(sys_db, "v1", sys_db.app_name, 1_000)
    assert sys_db._is_latest_version("v1")
    register(sys_db, "v2", sys_db.app_name, 2_000)
    assert not sys_db._is_latest_version("v1")
    assert sys_db._is_latest_version("v2")
