"""A generation's status as history reads it from its task rows (tasks/history.py's rules), and the
listing's status filter, on both databases: every combination the rules distinguish."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from nanogen import ledger
from nanogen.db import generations, tasks, write_transaction
from nanogen.tasks import history
from tests.databases import migrated_engine


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    with migrated_engine(request.param, tmp_path_factory.mktemp("history"), "history") as eng:
        yield eng


# (task statuses, with "canceled" meaning failed with the cancel error; concat_status) -> status
CASES = [
    ((["pending"], None), "pending"),
    ((["pending"] * 21, "pending"), "pending"),
    ((["generating"], None), "generating"),
    ((["completed", "pending"], "pending"), "generating"),
    ((["completed", "failed", "pending"], "pending"), "generating"),
    ((["completed"], None), "completed"),
    ((["completed"] * 21, "pending"), "generating"),  # the shots are done, the joining is not
    ((["completed"] * 21, "completed"), "completed"),
    ((["failed"], None), "failed"),
    ((["completed"] * 20 + ["failed"], "failed"), "failed"),
    ((["canceled", "failed", "completed"], "failed"), "failed"),
    ((["canceled"], None), "canceled"),
    ((["completed"] * 10 + ["canceled"] * 11, "failed"), "canceled"),
]


def test_status_rules_and_the_filter(engine: sa.Engine) -> None:
    now = time.time()
    with write_transaction(engine) as conn:
        account = ledger.create_account(conn, f"history-{time.monotonic_ns()}")
        expected: dict[str, str] = {}
        for i, ((statuses, concat), status) in enumerate(CASES):
            generation_id = ledger.new_id("gen")
            expected[generation_id] = status
            conn.execute(
                sa.insert(generations).values(
                    id=generation_id,
                    account_id=account.id,
                    product="video",
                    params={"shots": [{"prompt": f"case {i}"}]},
                    credits=len(statuses),
                    task_count=len(statuses),
                    created_at=now + i,
                    concat_status=concat,
                )
            )
            conn.execute(
                sa.insert(tasks),
                [
                    {
                        "id": ledger.new_id("task"),
                        "generation_id": generation_id,
                        "account_id": account.id,
                        "product": "video",
                        "position": p,
                        "engine": "sandbox",
                        "status": "failed" if s == "canceled" else s,
                        "error": history.CANCELED_ERROR
                        if s == "canceled"
                        else ("boom" if s == "failed" else None),
                        "credits": 1,
                        "params": {},
                        "created_at": now + i,
                        "deadline_at": now + i + 600,
                    }
                    for p, s in enumerate(statuses)
                ],
            )
    with engine.connect() as conn:
        for generation_id, status in expected.items():
            found = history.get_generation(conn, account.id, generation_id)
            assert found is not None and found.status == status, (generation_id, CASES)
        listed, next_key = history.list_generations(conn, account.id, limit=100)
        assert next_key is None
        assert [(g.id, g.status) for g in listed] == list(expected.items())[::-1]
        for status in history.STATUSES:
            page, _ = history.list_generations(conn, account.id, limit=100, statuses=[status])
            assert [g.id for g in page] == [g for g, s in list(expected.items())[::-1] if s == status]
        assert history.get_generation(conn, "acct_someone_else", next(iter(expected))) is None
