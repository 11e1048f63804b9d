"""The account's generations, read back: ``GET /api/generations`` (newest first, keyset pages),
``GET /api/generations/{id}`` and ``DELETE /api/generations/{id}`` (its files, as retention deletes them).

A generation's status is read from its task rows, in SQL so that a listing can filter on it:

- ``pending``: no task has started;
- ``generating``: a task is open (pending or generating) while another started or ended, or a
  concatenation is pending;
- ``completed``: every task completed (and the concatenation, if any, is no longer pending);
- ``failed``: every task ended and one failed (other than canceled);
- ``canceled``: every task ended, one was canceled by its client and none failed otherwise.

A canceled task is stored ``failed`` with the error ``"Canceled"`` (check-status's vocabulary stays
closed); here it reads ``canceled``.

Pages are keyed on ``(created_at, id)``, descending: a generation submitted while a client pages
sorts before its first page and never shifts the pages after it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from nanogen.db import generations, ledger, tasks
from nanogen.products import Product
from nanogen.storage import is_valid_key
from nanogen.tasks import store
from nanogen.tasks.status import OPEN, TaskStatus

CANCELED_ERROR = store.CANCELED_ERROR  # the error of a task its client canceled (check-status reads it)
CANCELED = "canceled"
STATUSES = ("pending", "generating", "completed", "failed", "canceled")
PROCESSING = "processing"  # a filter only: the video answer's word for pending or generating
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


def task_status(status: str, error: str | None) -> str:
    """A task's status as history shows it."""
    return CANCELED if status == TaskStatus.FAILED.value and error == CANCELED_ERROR else status


def _status_column() -> sa.ColumnElement[str]:
    t = tasks.alias("t")

    def has(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return sa.exists().where(t.c.generation_id == generations.c.id, condition)

    failed = t.c.status == TaskStatus.FAILED.value
    canceled = sa.and_(failed, t.c.error == CANCELED_ERROR)
    return sa.case(
        (~has(t.c.status != TaskStatus.PENDING.value), "pending"),
        (
            sa.or_(has(t.c.status.in_(OPEN)), generations.c.concat_status == store.CONCAT_PENDING),
            "generating",
        ),
        (~has(t.c.status != TaskStatus.COMPLETED.value), "completed"),
        (has(sa.and_(failed, sa.or_(t.c.error.is_(None), t.c.error != CANCELED_ERROR))), "failed"),
        (has(canceled), CANCELED),
        else_="failed",
    )


_SUMMARY = (
    sa.select(
        generations.c.id,
        generations.c.product,
        generations.c.params,
        generations.c.credits,
        generations.c.task_count,
        generations.c.created_at,
        generations.c.concat_url,
        generations.c.files_expired_at,
        _status_column().label("status"),
    )
    .where(generations.c.account_id == sa.bindparam("account_id"))
    .subquery("g")
)


@dataclass(frozen=True)
class Generation:
    id: str
    product: Product
    params: dict[str, Any]
    credits: int
    task_count: int
    created_at: float
    concat_url: str | None
    files_expired_at: float | None
    status: str

    @property
    def prompt(self) -> str | None:
        """The image's prompt, or a video's first shot's."""
        if "prompt" in self.params:
            return str(self.params["prompt"])
        shots = self.params.get("shots") or []
        return str(shots[0].get("prompt")) if shots and isinstance(shots[0], dict) else None


def _generation(row: Any) -> Generation:
    return Generation(
        id=row.id,
        product=Product(row.product),
        params=store._json(row.params),
        credits=int(row.credits),
        task_count=int(row.task_count),
        created_at=float(row.created_at),
        concat_url=row.concat_url,
        files_expired_at=row.files_expired_at,
        status=row.status,
    )


# -- cursors: opaque to clients; base64url of the last row's sort key --------------------------------
def encode_cursor(*parts: object) -> str:
    text = "|".join(repr(p) if isinstance(p, float) else str(p) for p in parts)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, count: int) -> list[str] | None:
    """The cursor's ``count`` parts, or None for one this server did not make."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    parts = text.split("|")
    return parts if len(parts) == count and all(parts) else None


def generation_cursor(cursor: str) -> tuple[float, str] | None:
    parts = decode_cursor(cursor, 2)
    if parts is None:
        return None
    try:
        created_at = float(parts[0])
    except ValueError:
        return None
    return (created_at, parts[1]) if created_at == created_at else None  # not NaN


def list_generations(
    conn: sa.Connection,
    account_id: str,
    *,
    limit: int,
    product: Product | None = None,
    statuses: Sequence[str] = (),
    after: tuple[float, str] | None = None,
) -> tuple[list[Generation], tuple[float, str] | None]:
    """A page of the account's generations, newest first, and the key of the next page (None: last)."""
    g = _SUMMARY.c
    query = sa.select(_SUMMARY)
    if product is not None:
        query = query.where(g.product == product.value)
    if statuses:
        query = query.where(g.status.in_(list(statuses)))
    if after is not None:
        created_at, generation_id = after
        query = query.where(
            sa.or_(g.created_at < created_at, sa.and_(g.created_at == created_at, g.id < generation_id))
        )
    query = query.order_by(g.created_at.desc(), g.id.desc()).limit(limit + 1)
    rows = [_generation(r) for r in conn.execute(query, {"account_id": account_id})]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, ((rows[-1].created_at, rows[-1].id) if more else None)


def get_generation(conn: sa.Connection, account_id: str, generation_id: str) -> Generation | None:
    """The account's generation (None for an unknown id or another account's)."""
    row = conn.execute(
        sa.select(_SUMMARY).where(_SUMMARY.c.id == generation_id), {"account_id": account_id}
    ).first()
    return None if row is None else _generation(row)


def credits_refunded(conn: sa.Connection, generation_id: str) -> int:
    """The credits refunded for the generation's tasks (refunds are recorded per task)."""
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(ledger.c.amount), 0))
        .select_from(ledger.join(tasks, tasks.c.id == ledger.c.task_id))
        .where(tasks.c.generation_id == generation_id, ledger.c.kind == "refund")
    ).scalar()
    return int(total or 0)


def file_keys(conn: sa.Connection, generation_id: str) -> list[str]:
    """The storage keys recorded for the generation: task outputs, stored inputs, the concatenated
    video (what retention deletes; see tasks/retention.py)."""
    concat = conn.execute(
        sa.select(generations.c.concat_key).where(generations.c.id == generation_id)
    ).scalar()
    keys: list[str] = [concat] if concat else []
    for row in conn.execute(
        sa.select(tasks.c.output_key, tasks.c.params).where(tasks.c.generation_id == generation_id)
    ):
        keys.extend([row.output_key] if row.output_key else [])
        params = store._json(row.params)
        keys.extend(i["key"] for i in params.get("inputs", []) if isinstance(i, dict) and "key" in i)
    return list(dict.fromkeys(k for k in keys if is_valid_key(k)))
