"""Live progress on PostgreSQL: the watcher reads through the asyncio read pool there (db.AsyncReadPool),
not SQLite's in-process connection. The rest of the behaviour is tested on SQLite (test_events.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server
from tests.databases import postgres_database
from tests.server.test_events import ENV, IMAGE, _check, _image, image_streams_to_completion


@pytest.fixture(scope="module")
def live_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with postgres_database("events") as url:
        server = Server(tmp_path_factory.mktemp("events-pg"), extra_env=ENV, database_url=url).start()
        yield server
        server.stop()


def test_an_image_streams_to_completion_on_postgres(live_postgres: Server) -> None:
    image_streams_to_completion(live_postgres)


def test_prefer_wait_on_postgres(live_postgres: Server) -> None:
    with live_postgres.new_account(100).client() as c:
        generation_id = _image(c, "waited for [sandbox:slow=0.5]")
        r = _check(c, IMAGE, {"generationId": generation_id}, Prefer="wait=30")
        assert r.json()["status"] == "completed" and r.headers["Preference-Applied"] == "wait=30"
