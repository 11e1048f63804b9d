"""db.Reads, the request handlers' reads, on a real SQLite file and a real PostgreSQL database: rows in
order, errors as SQLAlchemy's, and on PostgreSQL a connection pool that survives failed statements
and cancelled reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from nanogen import ledger
from nanogen.db import Prepared, Reads, write_transaction
from tests.databases import migrated_engine

_SLEEP = Prepared(sa.select(sa.func.pg_sleep(sa.bindparam("seconds"))))
_MISSING = Prepared(sa.text("SELECT no_such_column FROM nanogen_accounts"))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    with migrated_engine(request.param, Path(tmp_path_factory.mktemp("reads")), "reads") as eng:
        yield eng


def _key(engine: sa.Engine) -> tuple[str, str]:
    with write_transaction(engine) as conn:
        account = ledger.create_account(conn, ledger.new_id("reads"), 5)
        return account.id, ledger.create_key(conn, account.id)[1]


def test_together_answers_each_query_in_order(engine: sa.Engine) -> None:
    account_id, key = _key(engine)

    async def read() -> list[list[tuple[object, ...]]]:
        reads = Reads(engine)
        try:
            return await reads.together(ledger.authentication(key), ledger.authentication("ng_unknown"))
        finally:
            await reads.aclose()

    found, unknown = asyncio.run(read())
    caller = ledger.caller(found)
    assert caller is not None
    assert caller.account_id == account_id
    assert unknown == []


def test_a_failed_statement_raises_sqlalchemys_error_and_the_next_read_works(engine: sa.Engine) -> None:
    _, key = _key(engine)

    async def read() -> list[tuple[object, ...]]:
        reads = Reads(engine)
        try:
            for _ in range(3):  # more than once: the pool's connection must stay usable
                with pytest.raises(sa.exc.DBAPIError):
                    await reads.all(_MISSING)
            statement, params = ledger.authentication(key)
            return await reads.all(statement, **params)
        finally:
            await reads.aclose()

    assert len(asyncio.run(read())) == 1


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """SQLite reads run inline on the event loop: only PostgreSQL's can be cancelled mid-query."""
    with migrated_engine("postgres", Path(tmp_path_factory.mktemp("reads")), "reads") as eng:
        yield eng


def test_a_read_cancelled_mid_query_does_not_poison_the_pool(postgres: sa.Engine) -> None:
    engine = postgres
    _, key = _key(engine)

    async def read() -> list[tuple[object, ...]]:
        reads = Reads(engine)
        try:
            slow = asyncio.ensure_future(reads.all(_SLEEP, seconds=30))
            await asyncio.sleep(0.3)  # the query is on the server now
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            statement, params = ledger.authentication(key)
            return await asyncio.wait_for(reads.all(statement, **params), timeout=10)
        finally:
            await reads.aclose()

    assert len(asyncio.run(read())) == 1
