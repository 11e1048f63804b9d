"""The SDK's public surface: what ``import nanogen`` exports and loads, and sync/async parity."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import nanogen
from nanogen import client

SERVER_MODULES = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "dbos",
    "uvicorn",
    "PIL",
    "av",
    "numpy",
    "nanogen.server",
)


def test_exports() -> None:
    assert set(nanogen.__all__) == {
        "APIError",
        "AsyncClient",
        "Client",
        "NanogenError",
        "__version__",
        "errors",
    }
    assert nanogen.Client is client.Client and nanogen.AsyncClient is client.AsyncClient
    for name in client.__all__:
        assert hasattr(client, name), name


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("nanogen", ()),
        # The command line's client commands (image, video, status, ...) talk HTTP only: its database
        # commands import the database's modules when they run.
        ("nanogen.cli", ("psycopg", "pydantic_settings", "nanogen.db", "nanogen.ledger", "nanogen.settings")),
    ],
)
def test_importing_the_sdk_or_the_cli_stays_light(module: str, extra: tuple[str, ...]) -> None:
    """A fresh interpreter: the SDK and the command line must not pull in the server, the media stack
    or (but for the database commands, when they run) the database."""
    heavy = SERVER_MODULES + extra
    code = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


PAIRS = [
    (client.Client, client.AsyncClient),
    (client.Images, client.AsyncImages),
    (client.Videos, client.AsyncVideos),
    (client.Uploads, client.AsyncUploads),
    (client.ImageGeneration, client.AsyncImageGeneration),
    (client.VideoGeneration, client.AsyncVideoGeneration),
]
RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}
NO_IO = {"__init__", "__repr__", "get"}  # plain methods in both: they only build a handle


def _public(cls: type) -> dict[str, object]:
    return {
        n: m
        for n, m in inspect.getmembers(cls)
        if not n.startswith("_") or n in RENAMED or n in RENAMED.values()
    }


def test_async_parity() -> None:
    """Every sync method has an async twin with the same parameters, and the twin is a coroutine."""
    for sync_cls, async_cls in PAIRS:
        sync_members, async_members = _public(sync_cls), _public(async_cls)
        for name, member in sync_members.items():
            twin = async_members.get(RENAMED.get(name, name))
            assert twin is not None, f"{async_cls.__name__} lacks {name}"
            if inspect.isfunction(member) and name not in NO_IO:
                # a coroutine, or an async generator where the sync method is a generator (events)
                is_async = inspect.iscoroutinefunction(twin) or (
                    inspect.isgeneratorfunction(member) and inspect.isasyncgenfunction(twin)
                )
                assert is_async, f"{async_cls.__name__}.{name} is not async"
                assert list(inspect.signature(member).parameters) == list(inspect.signature(twin).parameters)
