"""What the engine tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tests.engines.google_support import fake_google
from tests.engines.scripted_server import Reply, ScriptedServer
from tests.fakes.google_server import FakeGoogle


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGoogle]:
    """The fake Google that a module's tests share."""
    with fake_google() as fake:
        yield fake


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    """``scripted(*replies)``: a started ScriptedServer, closed after the test."""
    made: list[ScriptedServer] = []

    def make(*replies: Reply) -> ScriptedServer:
        made.append(ScriptedServer(*replies))
        return made[-1]

    yield make
    for server in made:
        server.close()
