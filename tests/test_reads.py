"""db.Reads, the request handlers' reads, on a real SQLite file and a real PostgreSQL database: a
poll's one statement (the caller and the tasks), errors as SQLAlchemy's, and on PostgreSQL a
connection pool that survives failed statements and cancelled reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from nanogen import ledger
from nanogen.db import Prepared, Query, Reads, write_transaction
from nanogen.products import Product
from nanogen.tasks import store
from nanogen.tasks.submit import NewTask, Submission, write_submissions
from tests.databases import migrated_engine

_SLEEP = Prepared(sa.select(sa.func.pg_sleep(sa.bindparam("seconds"))))
_MISSING = Prepared(sa.text("SELECT no_such_column FROM nanogen_accounts"))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    with migrated_engine(request.param, Path(tmp_path_factory.mktemp("reads")), "reads") as eng:
        yield eng


def _key(engine: sa.Engine) -> tuple[str, str]:
    with write_transaction(engine) as conn:
        account = ledger.create_account(conn, ledger.new_id("reads"), 100)
        return account.id, ledger.create_key(conn, account.id)[1]


def _video(engine: sa.Engine, account_id: str, shots: int) -> tuple[str, list[str]]:
    """A paid request of ``shots`` tasks, written as the submit path writes them (no workflows);
    returns its id and the task ids in the order they were made."""
    generation_id = ledger.new_id("gen")
    task_ids = [ledger.new_id("task") for _ in range(shots)]
    sub = Submission(
        account_id=account_id,
        generation_id=generation_id,
        product=Product.VIDEO,
        engine="sandbox",
        queue="reads-test",
        params={},
        # Positions against the ids' order: a poll must answer in position order, not by id.
        tasks=tuple(
            NewTask(t, shots - 1 - i, 10, {"prompt": f"shot {i}"}, f"s{i}") for i, t in enumerate(task_ids)
        ),
        deadline_s=60,
    )
    with write_transaction(engine) as conn:
        assert write_submissions(conn, [sub], lambda _conn, _workflows: None) == [True]
    return generation_id, task_ids


def _poll(engine: sa.Engine, query: Query) -> list[tuple[object, ...]]:
    async def read() -> list[tuple[object, ...]]:
        reads = Reads(engine)
        try:
            return await reads.rows(*query)
        finally:
            await reads.aclose()

    return asyncio.run(read())


def test_a_poll_is_the_caller_and_the_tasks_asked_about_in_one_statement(engine: sa.Engine) -> None:
    account_id, key = _key(engine)
    generation_id, task_ids = _video(engine, account_id, 3)
    key_hash = ledger.hash_key(key)

    rows = _poll(engine, store.poll_generation(key_hash, generation_id))
    caller = ledger.caller(rows)
    assert caller is not None
    assert caller.account_id == account_id
    assert [t.id for t in store.polled(rows)] == task_ids[::-1]  # in position order
    assert [t.params for t in store.polled(rows)] == [{"prompt": f"shot {i}"} for i in (2, 1, 0)]

    asked = [task_ids[2], task_ids[0]]
    rows = _poll(engine, store.poll_tasks(key_hash, asked))
    assert sorted(t.id for t in store.polled(rows)) == sorted(asked)

    # A live key and nothing found: the caller, and no tasks (404, not 401).
    for nothing in (
        store.poll_generation(key_hash, "gen_unknown"),
        store.poll_tasks(key_hash, ["task_unknown"]),
    ):
        rows = _poll(engine, nothing)
        assert ledger.caller(rows) is not None
        assert store.polled(rows) == []

    # An unknown or revoked key: no rows at all (401), whatever the tasks.
    assert _poll(engine, store.poll_generation(ledger.hash_key("ng_unknown"), generation_id)) == []
    with write_transaction(engine) as conn:
        key_id = ledger.authenticate(conn, key).key_id  # type: ignore[union-attr]
        assert ledger.revoke_key(conn, key_id)
    assert _poll(engine, store.poll_tasks(key_hash, task_ids)) == []
    assert _poll(engine, ledger.authentication(key_hash)) == []


def test_a_failed_statement_raises_sqlalchemys_error_and_the_next_read_works(engine: sa.Engine) -> None:
    _, key = _key(engine)

    async def read() -> list[tuple[object, ...]]:
        reads = Reads(engine)
        try:
            for _ in range(3):  # more than once: the pool's connection must stay usable
                with pytest.raises(sa.exc.DBAPIError):
                    await reads.rows(_MISSING, {})
            return await reads.rows(*ledger.authentication(ledger.hash_key(key)))
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
            slow = asyncio.ensure_future(reads.rows(_SLEEP, {"seconds": 30}))
            await asyncio.sleep(0.3)  # the query is on the server now
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            return await asyncio.wait_for(
                reads.rows(*ledger.authentication(ledger.hash_key(key))), timeout=10
            )
        finally:
            await reads.aclose()

    assert len(asyncio.run(read())) == 1
