"""What the engine tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.fakes.google_server import FakeGoogle


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGoogle]:
    """The fake Google that a module's tests share; every request nanogen sent it was readable."""
    fake = FakeGoogle()
    yield fake
    assert fake.failures == [], "every request nanogen sent was readable"
    fake.close()
