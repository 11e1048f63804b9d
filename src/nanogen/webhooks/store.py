"""Every SQL statement on webhooks: accounts' defaults and secret versions, and the deliveries."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from nanogen.db import Prepared, generations, webhook_accounts, webhook_deliveries
from nanogen.tasks import store as tasks_store

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

_A = webhook_accounts.c
_D = webhook_deliveries.c


class WebhookAccount(NamedTuple):
    account_id: str
    url: str | None
    secret_version: int
    rotated_at: float | None


class Delivery(NamedTuple):
    id: str
    account_id: str
    generation_id: str
    event_type: str
    url: str
    payload: str
    state: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: float
    last_attempt_at: float | None
    next_attempt_at: float | None
    ended_at: float | None


_ACCOUNT_COLUMNS = [_A[name] for name in WebhookAccount._fields]
_DELIVERY_COLUMNS = [_D[name] for name in Delivery._fields]


def _insert_ignoring_existing(conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> None:
    """INSERT unless the primary key is taken (a concurrent first use made the row)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(table).values(values).on_conflict_do_nothing())


# -- accounts ----------------------------------------------------------------------------------------
def get_account(conn: sa.Connection, account_id: str) -> WebhookAccount | None:
    row = conn.execute(sa.select(*_ACCOUNT_COLUMNS).where(_A.account_id == account_id)).first()
    return None if row is None else WebhookAccount(*row)


def ensure_account(conn: sa.Connection, account_id: str) -> WebhookAccount:
    """The account's row, made on first use (secret version 1, no default URL)."""
    _insert_ignoring_existing(
        conn, webhook_accounts, {"account_id": account_id, "secret_version": 1, "created_at": time.time()}
    )
    found = get_account(conn, account_id)
    assert found is not None
    return found


def set_url(conn: sa.Connection, account_id: str, url: str | None) -> None:
    ensure_account(conn, account_id)
    conn.execute(sa.update(webhook_accounts).where(_A.account_id == account_id).values(url=url))


def rotate(conn: sa.Connection, account_id: str) -> WebhookAccount:
    """A new secret version; the one before it keeps signing for the overlap (secrets.py)."""
    ensure_account(conn, account_id)
    conn.execute(
        sa.update(webhook_accounts)
        .where(_A.account_id == account_id)
        .values(secret_version=_A.secret_version + 1, rotated_at=time.time())
    )
    found = get_account(conn, account_id)
    assert found is not None
    return found


# -- the end of a generation (in the transaction that ended it) --------------------------------------
class Target(NamedTuple):
    account_id: str
    product: str
    url: str | None


# The URL a generation's event goes to: its own, else its account's default (None: no event), read
# with the generation in one statement.
_WITH_ACCOUNT = generations.outerjoin(webhook_accounts, _A.account_id == generations.c.account_id)
_TARGET_URL = sa.func.coalesce(generations.c.webhook_url, _A.url)

# Prepared statements: every task's end runs these on the task writer's one thread.
_LOCK_GENERATION = Prepared(
    sa.select(generations.c.account_id, generations.c.product, _TARGET_URL)
    .select_from(_WITH_ACCOUNT)
    .where(generations.c.id == sa.bindparam("generation_id"))
    .with_for_update(of=generations)
)
_HAS_DELIVERY = Prepared(sa.select(sa.exists().where(_D.generation_id == sa.bindparam("generation_id"))))


def lock_generation_target(conn: sa.Connection, generation_id: str) -> Target | None:
    """The generation's account, product and webhook URL (its own, else the account's default), its
    row locked until the caller's transaction ends. The lock orders the transactions that end a
    video's shots at once on PostgreSQL: each reads its siblings after the one before committed,
    so exactly one of them sees the generation ended. (SQLite: writers are serial already.)"""
    rows = _LOCK_GENERATION.all(conn, {"generation_id": generation_id})
    return Target(*rows[0]) if rows else None


def generations_with_webhook(conn: sa.Connection, generation_ids: Collection[str]) -> set[str]:
    """Which of these generations a webhook URL applies to (their own, else their account's default),
    in one statement: a batch of task ends locks and reads the target of only those."""
    if not generation_ids:
        return set()
    query = (
        sa.select(generations.c.id)
        .select_from(_WITH_ACCOUNT)
        .where(generations.c.id.in_(sorted(generation_ids)), _TARGET_URL.is_not(None))
    )
    return set(conn.execute(query).scalars())


def has_delivery(conn: sa.Connection, generation_id: str) -> bool:
    return bool(_HAS_DELIVERY.all(conn, {"generation_id": generation_id})[0][0])


def insert_delivery(
    conn: sa.Connection,
    *,
    delivery_id: str,
    account_id: str,
    generation_id: str,
    event_type: str,
    url: str,
    payload: str,
    now: float,
) -> None:
    conn.execute(
        sa.insert(webhook_deliveries).values(
            id=delivery_id,
            account_id=account_id,
            generation_id=generation_id,
            event_type=event_type,
            url=url,
            payload=payload,
            state=PENDING,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
    )


# -- delivery ----------------------------------------------------------------------------------------
def get_delivery(conn: sa.Connection, delivery_id: str) -> Delivery | None:
    row = conn.execute(sa.select(*_DELIVERY_COLUMNS).where(_D.id == delivery_id)).first()
    return None if row is None else Delivery(*row)


def record_attempt(
    conn: sa.Connection,
    delivery_id: str,
    *,
    number: int,
    status_code: int | None,
    error: str | None,
    state: str,
    now: float,
    next_attempt_at: float | None,
) -> bool:
    """Record attempt ``number`` of a pending delivery and its new state. Conditional on the attempt
    not being recorded yet (a workflow re-run after a crash records once). False if it was."""
    result = conn.execute(
        sa.update(webhook_deliveries)
        .where(_D.id == delivery_id, _D.state == PENDING, _D.attempts < number)
        .values(
            attempts=number,
            last_status_code=status_code,
            last_error=None if error is None else tasks_store.clip(error, _D.last_error),
            state=state,
            last_attempt_at=now,
            next_attempt_at=next_attempt_at,
            ended_at=None if state == PENDING else now,
        )
    )
    return result.rowcount == 1


def list_deliveries(
    conn: sa.Connection, account_id: str, *, limit: int, after: tuple[float, str] | None
) -> tuple[list[Delivery], tuple[float, str] | None]:
    """A page of the account's deliveries, newest first (keyset on created_at, id), and the key of
    the next page (None: the last)."""
    query = sa.select(*_DELIVERY_COLUMNS).where(_D.account_id == account_id)
    if after is not None:
        query = query.where(sa.tuple_(_D.created_at, _D.id) < sa.tuple_(*after))
    rows = conn.execute(query.order_by(_D.created_at.desc(), _D.id.desc()).limit(limit + 1)).all()
    found = [Delivery(*r) for r in rows[:limit]]
    more = len(rows) > limit
    return found, ((found[-1].created_at, found[-1].id) if more else None)
