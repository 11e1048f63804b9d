"""The money rules, on real databases: a SQLite file and the PostgreSQL server at 127.0.0.1:5432.

Every rule is checked twice: once through ``nanogen.ledger`` / ``nanogen.tasks.store`` (what the code
does) and once by the database itself (what a buggy caller could not do anyway: the CHECK on the
balance, the append-only triggers, the unique (task_id, kind)).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from nanogen import ledger
from nanogen.db import accounts, api_keys, generations, metadata, tasks, write_transaction
from nanogen.db import ledger as ledger_table
from nanogen.products import Product
from nanogen.tasks import store
from nanogen.tasks.status import TaskStatus
from tests.databases import migrated_engine


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """A migrated database (its own SQLite file, or its own PostgreSQL database) for this module."""
    with migrated_engine(request.param, tmp_path_factory.mktemp("ledger"), "ledger") as eng:
        yield eng


def _name() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"


def _ledger_rows(engine: sa.Engine, account_id: str) -> list[tuple[str, int, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger_table.c.kind, ledger_table.c.amount, ledger_table.c.task_id)
            .where(ledger_table.c.account_id == account_id)
            .order_by(ledger_table.c.id)
        ).all()
    return [(r.kind, int(r.amount), r.task_id) for r in rows]


def _balance(engine: sa.Engine, account_id: str) -> int:
    with engine.connect() as conn:
        value = ledger.balance(conn, account_id)
    assert value is not None
    return value


def _account(engine: sa.Engine, credits: int) -> ledger.Account:
    with write_transaction(engine) as conn:
        return ledger.create_account(conn, _name(), credits)


def _task(engine: sa.Engine, account_id: str, credits: int) -> str:
    """A debited, pending task as the submit path writes it (debit, generation row, task row)."""
    generation_id, task_id = ledger.new_id("gen"), ledger.new_id("task")
    now = time.time()
    with write_transaction(engine) as conn:
        assert ledger.debit(conn, account_id, generation_id, [ledger.Charge(task_id, credits)])
        store.insert_generations(
            conn,
            [
                dict(
                    id=generation_id,
                    account_id=account_id,
                    product=Product.IMAGE.value,
                    params={"prompt": "a lighthouse"},
                    credits=credits,
                    task_count=1,
                    created_at=now,
                )
            ],
        )
        store.insert_tasks(
            conn,
            [
                dict(
                    id=task_id,
                    generation_id=generation_id,
                    account_id=account_id,
                    product=Product.IMAGE.value,
                    position=0,
                    shot_id=None,
                    engine="sandbox",
                    status=TaskStatus.PENDING.value,
                    progress=0,
                    credits=credits,
                    params={"prompt": "a lighthouse"},
                    created_at=now,
                    deadline_at=now + 600,
                )
            ],
        )
    return task_id


# -- accounts and grants -----------------------------------------------------------------------------
def test_new_ids_are_unique_and_sort_in_the_order_they_were_made() -> None:
    first = [ledger.new_id("task") for _ in range(5_000)]
    time.sleep(0.002)  # the next millisecond
    later = ledger.new_id("task")
    assert len(set(first)) == len(first)
    assert all(re.fullmatch(r"task_[0-9a-f]{24}", i) for i in [*first, later])
    assert all(later > i for i in first)
    made_at_ms = int(later[len("task_") : len("task_") + 12], 16)
    assert abs(made_at_ms / 1000 - time.time()) < 60


def test_create_account_with_credits_records_a_grant(engine: sa.Engine) -> None:
    account = _account(engine, 120)
    assert account.balance == 120
    assert _balance(engine, account.id) == 120
    assert _ledger_rows(engine, account.id) == [("grant", 120, None)]
    with engine.connect() as conn:
        found = ledger.find_account(conn, account.name)
        assert found == ledger.Account(account.id, account.name, 120)
        assert ledger.find_account(conn, account.id) == found
        assert ledger.find_account(conn, "no-such-account") is None


def test_create_account_without_credits_writes_no_ledger_row(engine: sa.Engine) -> None:
    account = _account(engine, 0)
    assert _balance(engine, account.id) == 0
    assert _ledger_rows(engine, account.id) == []


def test_grant_adds_and_returns_the_new_balance(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    with write_transaction(engine) as conn:
        assert ledger.grant(conn, account.id, 5, memo="top-up") == 15
    assert _balance(engine, account.id) == 15
    assert _ledger_rows(engine, account.id) == [("grant", 10, None), ("grant", 5, None)]


@pytest.mark.parametrize("amount", [0, -1, -100])
def test_grant_rejects_non_positive_amounts(engine: sa.Engine, amount: int) -> None:
    account = _account(engine, 10)
    with pytest.raises(ValueError), write_transaction(engine) as conn:
        ledger.grant(conn, account.id, amount)
    assert _balance(engine, account.id) == 10
    assert _ledger_rows(engine, account.id) == [("grant", 10, None)]


def test_account_names_are_unique(engine: sa.Engine) -> None:
    account = _account(engine, 0)
    with pytest.raises(sa.exc.IntegrityError), write_transaction(engine) as conn:
        ledger.create_account(conn, account.name, 5)


# -- debits ------------------------------------------------------------------------------------------
def test_debit_with_enough_credits_writes_one_row_per_task(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    charges = [
        ledger.Charge("task_a" + uuid.uuid4().hex[:8], 3),
        ledger.Charge("task_b" + uuid.uuid4().hex[:8], 4),
    ]
    with write_transaction(engine) as conn:
        assert ledger.debit(conn, account.id, "gen_x", charges) is True
    assert _balance(engine, account.id) == 3
    assert _ledger_rows(engine, account.id) == [
        ("grant", 10, None),
        ("debit", 3, charges[0].task_id),
        ("debit", 4, charges[1].task_id),
    ]


def test_debit_of_exactly_the_balance_leaves_zero(engine: sa.Engine) -> None:
    account = _account(engine, 7)
    with write_transaction(engine) as conn:
        assert ledger.debit(conn, account.id, "gen_y", [ledger.Charge(ledger.new_id("task"), 7)])
    assert _balance(engine, account.id) == 0


def test_debit_without_enough_credits_writes_nothing(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    before = _ledger_rows(engine, account.id)
    charges = [ledger.Charge(ledger.new_id("task"), 6), ledger.Charge(ledger.new_id("task"), 5)]
    with write_transaction(engine) as conn:
        # 11 > 10: all or nothing, even though the first charge alone would fit.
        assert ledger.debit(conn, account.id, "gen_z", charges) is False
    assert _balance(engine, account.id) == 10
    assert _ledger_rows(engine, account.id) == before
    with engine.connect() as conn:
        task_rows = conn.execute(
            sa.select(sa.func.count())
            .select_from(ledger_table)
            .where(ledger_table.c.task_id.in_([c.task_id for c in charges]))
        ).scalar_one()
    assert task_rows == 0


def test_debit_many_charges_in_order_each_seeing_the_balance_the_ones_before_left(engine: sa.Engine) -> None:
    first, second = _account(engine, 10), _account(engine, 3)
    requests = [
        (first.id, 6),
        (first.id, 5),  # 5 > 4 left: refused, nothing of it written
        (second.id, 3),
        (first.id, 4),  # fits what the refused one did not take
        ("acct_missing", 1),
        (second.id, 1),
    ]
    debits = [
        ledger.Debit(account_id, ledger.new_id("gen"), [ledger.Charge(ledger.new_id("task"), amount)])
        for account_id, amount in requests
    ]
    with write_transaction(engine) as conn:
        assert ledger.debit_many(conn, debits) == [True, False, True, True, False, False]
    assert (_balance(engine, first.id), _balance(engine, second.id)) == (0, 0)
    assert _ledger_rows(engine, first.id) == [
        ("grant", 10, None),
        ("debit", 6, debits[0].charges[0].task_id),
        ("debit", 4, debits[3].charges[0].task_id),
    ]
    assert _ledger_rows(engine, second.id) == [("grant", 3, None), ("debit", 3, debits[2].charges[0].task_id)]


def test_debit_many_of_no_requests_charges_nothing(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        assert ledger.debit_many(conn, []) == []


def test_debit_of_an_unknown_account_is_refused(engine: sa.Engine) -> None:
    with write_transaction(engine) as conn:
        assert ledger.debit(conn, "acct_missing", "gen_q", [ledger.Charge(ledger.new_id("task"), 1)]) is False


def test_the_same_task_cannot_be_debited_twice(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    task_id = ledger.new_id("task")
    with write_transaction(engine) as conn:
        assert ledger.debit(conn, account.id, "gen_1", [ledger.Charge(task_id, 2)])
    with pytest.raises(sa.exc.IntegrityError), write_transaction(engine) as conn:
        ledger.debit(conn, account.id, "gen_1", [ledger.Charge(task_id, 2)])
    # The failed transaction rolled back its balance update too.
    assert _balance(engine, account.id) == 8
    assert _ledger_rows(engine, account.id) == [("grant", 10, None), ("debit", 2, task_id)]


# -- what the database itself refuses ----------------------------------------------------------------
def test_database_refuses_a_negative_balance(engine: sa.Engine) -> None:
    account = _account(engine, 3)
    with pytest.raises(sa.exc.IntegrityError), write_transaction(engine) as conn:
        conn.execute(
            sa.update(accounts).where(accounts.c.id == account.id).values(balance=accounts.c.balance - 4)
        )
    assert _balance(engine, account.id) == 3


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE nanogen_ledger SET amount = amount + 1000 WHERE account_id = :a",
        "UPDATE nanogen_ledger SET memo = 'rewritten' WHERE account_id = :a",
        "DELETE FROM nanogen_ledger WHERE account_id = :a",
    ],
    ids=["update-amount", "update-memo", "delete"],
)
def test_ledger_is_append_only(engine: sa.Engine, statement: str) -> None:
    account = _account(engine, 25)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), write_transaction(engine) as conn:
        conn.execute(sa.text(statement), {"a": account.id})
    assert _ledger_rows(engine, account.id) == [("grant", 25, None)]


@pytest.mark.parametrize(
    "values",
    [
        {"kind": "grant", "amount": 0},
        {"kind": "grant", "amount": -5},
        {"kind": "gift", "amount": 5},
        {"kind": "debit", "amount": 5, "task_id": None},
        {"kind": "refund", "amount": 5, "task_id": None},
    ],
    ids=["zero", "negative", "unknown-kind", "debit-without-task", "refund-without-task"],
)
def test_ledger_checks_refuse_malformed_rows(engine: sa.Engine, values: dict[str, object]) -> None:
    account = _account(engine, 1)
    row = {"account_id": account.id, "memo": "", "created_at": time.time(), **values}
    with pytest.raises(sa.exc.IntegrityError), write_transaction(engine) as conn:
        conn.execute(sa.insert(ledger_table).values(**row))
    assert _ledger_rows(engine, account.id) == [("grant", 1, None)]


# -- refunds and task transitions --------------------------------------------------------------------
def test_a_task_cannot_be_refunded_twice(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    task_id = _task(engine, account.id, 4)
    with write_transaction(engine) as conn:
        ledger.refund(conn, account.id, task_id, 4, memo="engine failed")
    assert _balance(engine, account.id) == 10
    with pytest.raises(sa.exc.IntegrityError), write_transaction(engine) as conn:
        ledger.refund(conn, account.id, task_id, 4, memo="engine failed again")
    assert _balance(engine, account.id) == 10
    assert [r for r in _ledger_rows(engine, account.id) if r[0] == "refund"] == [("refund", 4, task_id)]


def test_fail_and_refund_happens_once(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    task_id = _task(engine, account.id, 4)
    assert _balance(engine, account.id) == 6
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, task_id, "the engine exploded") is True
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, task_id, "and again") is False
    assert _balance(engine, account.id) == 10
    assert _ledger_rows(engine, account.id) == [
        ("grant", 10, None),
        ("debit", 4, task_id),
        ("refund", 4, task_id),
    ]
    with engine.connect() as conn:
        record = store.get_task(conn, task_id)
    assert record is not None
    assert record.status is TaskStatus.FAILED
    assert record.error == "the engine exploded"
    assert record.finished_at is not None


def test_complete_after_fail_is_refused(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    task_id = _task(engine, account.id, 4)
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, task_id, "deadline passed")
    with write_transaction(engine) as conn:
        assert store.complete(conn, task_id, "http://example.invalid/x.png", "x.png") is False
    with engine.connect() as conn:
        record = store.get_task(conn, task_id)
    assert record is not None
    assert record.status is TaskStatus.FAILED
    assert record.output_url is None
    assert _balance(engine, account.id) == 10


def test_fail_after_complete_is_refused_and_refunds_nothing(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    task_id = _task(engine, account.id, 4)
    with write_transaction(engine) as conn:
        assert store.start(conn, task_id) is not None
        assert store.complete(conn, task_id, "http://example.invalid/y.png", "y.png") is True
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, task_id, "too late") is False
        assert store.start(conn, task_id) is None
    assert _balance(engine, account.id) == 6
    assert [r[0] for r in _ledger_rows(engine, account.id)] == ["grant", "debit"]
    with engine.connect() as conn:
        record = store.get_task(conn, task_id)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED
    assert record.output_url == "http://example.invalid/y.png"


# -- API keys ----------------------------------------------------------------------------------------
def test_authenticate_live_unknown_and_revoked_keys(engine: sa.Engine) -> None:
    account = _account(engine, 0)
    with write_transaction(engine) as conn:
        key_id, key = ledger.create_key(conn, account.id, "laptop")
    assert key.startswith(ledger.KEY_PREFIX)
    with engine.connect() as conn:
        assert ledger.authenticate(conn, key) == ledger.Caller(account.id, key_id)
        assert ledger.authenticate(conn, key + "x") is None
        assert ledger.authenticate(conn, ledger.KEY_PREFIX + "not-a-key") is None
        assert ledger.authenticate(conn, "") is None
        listed = ledger.list_keys(conn, account.id)
    assert [(k.id, k.name, k.prefix, k.revoked_at) for k in listed] == [(key_id, "laptop", key[:10], None)]
    with write_transaction(engine) as conn:
        assert ledger.revoke_key(conn, key_id) is True
    with write_transaction(engine) as conn:
        assert ledger.revoke_key(conn, key_id) is False  # already revoked
        assert ledger.revoke_key(conn, "key_missing") is False
    with engine.connect() as conn:
        assert ledger.authenticate(conn, key) is None
        assert ledger.list_keys(conn, account.id)[0].revoked_at is not None


def test_keys_are_distinct_per_account(engine: sa.Engine) -> None:
    first, second = _account(engine, 0), _account(engine, 0)
    with write_transaction(engine) as conn:
        k1_id, k1 = ledger.create_key(conn, first.id)
        k2_id, k2 = ledger.create_key(conn, second.id)
        k3_id, k3 = ledger.create_key(conn, first.id)
    assert len({k1, k2, k3}) == 3
    with engine.connect() as conn:
        assert ledger.authenticate(conn, k1) == ledger.Caller(first.id, k1_id)
        assert ledger.authenticate(conn, k2) == ledger.Caller(second.id, k2_id)
        assert ledger.authenticate(conn, k3) == ledger.Caller(first.id, k3_id)
        assert {k.id for k in ledger.list_keys(conn, first.id)} == {k1_id, k3_id}


def test_plaintext_key_is_not_stored(engine: sa.Engine) -> None:
    account = _account(engine, 0)
    with write_transaction(engine) as conn:
        key_id, key = ledger.create_key(conn, account.id, "scan-me")
    secret_part = key[10:]  # everything past the displayed prefix
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()._mapping
        assert row["key_hash"] == ledger.hash_key(key)
        assert row["key_prefix"] == key[:10]
        text_columns = [c for c in api_keys.c if isinstance(c.type, sa.String)]
        assert {c.name for c in text_columns} >= {"id", "account_id", "name", "key_hash", "key_prefix"}
        for column in text_columns:
            values = conn.execute(sa.select(column)).scalars().all()
            for value in values:
                assert key not in (value or ""), column.name
                assert secret_part not in (value or ""), column.name
        # Nor anywhere else in nanogen's tables.
        for table in metadata.sorted_tables:
            for column in table.c:
                if isinstance(column.type, sa.String):
                    hits = conn.execute(
                        sa.select(sa.func.count())
                        .select_from(table)
                        .where(column.contains(secret_part, autoescape=True))
                    ).scalar_one()
                    assert hits == 0, f"{table.name}.{column.name}"


def test_plaintext_key_is_nowhere_in_the_database(engine: sa.Engine) -> None:
    """Every text column of every table (DBOS's included) and, for SQLite, the file's bytes."""
    account = _account(engine, 0)
    with write_transaction(engine) as conn:
        _key_id, key = ledger.create_key(conn, account.id)
    secret_part = key[10:]
    inspector = sa.inspect(engine)
    schemas = [None, "dbos"] if engine.dialect.name == "postgresql" else [None]
    scanned = 0
    with engine.connect() as conn:
        for schema in schemas:
            for table_name in inspector.get_table_names(schema=schema):
                table = sa.Table(table_name, sa.MetaData(), schema=schema, autoload_with=conn)
                for column in table.c:
                    if isinstance(column.type, sa.String):
                        scanned += 1
                        hits = conn.execute(
                            sa.select(sa.func.count())
                            .select_from(table)
                            .where(column.contains(secret_part, autoescape=True))
                        ).scalar_one()
                        assert hits == 0, f"{table_name}.{column.name}"
    assert scanned > 20  # nanogen's and DBOS's tables were all there to scan
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database or "")
        blobs = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert ledger.hash_key(key).encode() in blobs  # the scan does see what was written
        assert secret_part.encode() not in blobs


# -- totals ------------------------------------------------------------------------------------------
def test_totals_match_the_balance_after_a_mix(engine: sa.Engine) -> None:
    account = _account(engine, 50)
    with write_transaction(engine) as conn:
        ledger.grant(conn, account.id, 30)
    debited = [_task(engine, account.id, n) for n in (5, 7, 11, 13)]
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, debited[1], "failed")
        assert store.fail_and_refund(conn, debited[3], "failed")
    with write_transaction(engine) as conn:
        assert not ledger.debit(conn, account.id, "gen_big", [ledger.Charge(ledger.new_id("task"), 10_000)])
        ledger.grant(conn, account.id, 2)
    with engine.connect() as conn:
        totals = ledger.totals(conn, account.id)
        bal = ledger.balance(conn, account.id)
    assert totals == ledger.Totals(granted=82, debited=36, refunded=20)
    assert totals.expected_balance == bal == 66
    with engine.connect() as conn:
        assert ledger.totals(conn, "acct_nobody") == ledger.Totals(0, 0, 0)
        assert ledger.balance(conn, "acct_nobody") is None


def test_every_account_balances(engine: sa.Engine) -> None:
    """Whatever the tests before did (including the refused writes), the books balance everywhere."""
    account = _account(engine, 9)
    failed = _task(engine, account.id, 3)
    _task(engine, account.id, 2)
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, failed, "failed")
    with engine.connect() as conn:
        every = ledger.list_accounts(conn)
        assert account.id in {a.id for a in every}
        for each in every:
            assert each.balance >= 0
            assert ledger.totals(conn, each.id).expected_balance == each.balance, each
        open_rows = conn.execute(
            sa.select(tasks.c.id, generations.c.id).join(
                generations, generations.c.id == tasks.c.generation_id
            )
        ).all()
    assert open_rows  # tasks were created and hang off their generations


def test_complete_records_the_providers_charge_and_none_keeps_what_was_recorded(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    charged, unknown = _task(engine, account.id, 2), _task(engine, account.id, 2)
    with write_transaction(engine) as conn:
        store.set_provider_cost(conn, unknown, 7)  # e.g. recorded with the operation at submission
        for task_id in (charged, unknown):
            assert store.start(conn, task_id) is not None
        assert store.complete(conn, charged, "http://example.invalid/a.png", "a.png", 39_000) is True
        assert store.complete(conn, unknown, "http://example.invalid/b.png", "b.png", None) is True
    with engine.connect() as conn:
        costs = dict(
            conn.execute(
                sa.text("SELECT id, provider_cost_micros FROM nanogen_tasks WHERE id IN (:a, :b)"),
                {"a": charged, "b": unknown},
            ).all()
        )
    assert costs == {charged: 39_000, unknown: 7}


def test_start_returns_the_task_as_updated_and_none_once_it_ended(engine: sa.Engine) -> None:
    account = _account(engine, 10)
    task_id = _task(engine, account.id, 3)
    with write_transaction(engine) as conn:
        first = store.start(conn, task_id)
        again = store.start(conn, task_id)  # a re-run after a crash counts another attempt
    assert first is not None and again is not None
    assert (first.status, first.attempts, again.attempts) == (TaskStatus.GENERATING, 1, 2)
    assert first.started_at is not None and again.started_at == first.started_at
    assert (first.id, first.account_id, first.credits) == (task_id, account.id, 3)
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, task_id, "canceled")
        assert store.start(conn, task_id) is None


def test_progress_only_rises_and_only_while_the_task_runs(engine: sa.Engine) -> None:
    account = _account(engine, 1_000)
    # More tasks than one SQLite statement takes (500): the second statement must apply too.
    task_ids = [_task(engine, account.id, 1) for _ in range(503)]
    low, high, ended, pending = task_ids[0], task_ids[1], task_ids[2], task_ids[3]
    with write_transaction(engine) as conn:
        for task_id in task_ids:
            if task_id != pending:
                assert store.start(conn, task_id) is not None
        store.set_progress_many(conn, {high: 60})
        assert store.fail_and_refund(conn, ended, "canceled")
    with write_transaction(engine) as conn:
        store.set_progress_many(conn, {t: 40 for t in task_ids} | {low: 250})
    with engine.connect() as conn:
        progress = dict(
            conn.execute(
                sa.text("SELECT id, progress FROM nanogen_tasks WHERE account_id = :a"), {"a": account.id}
            ).all()
        )
    assert progress[low] == 100  # clamped
    assert progress[high] == 60  # never backwards
    assert progress[ended] == 0 and progress[pending] == 0  # only while generating
    assert all(progress[t] == 40 for t in task_ids[4:])
