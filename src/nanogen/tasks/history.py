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
from nanogen.products import MAX_SHOTS, Product
from nanogen.storage import is_valid_key
from nanogen.tasks import store
from nanogen.tasks.status import TaskStatus

CANCELED_ERROR = store.CANCELED_ERROR  # the error of a task its client canceled (check-status reads it)
CANCELED = "canceled"
STATUSES = ("pending", "generating", "completed", "failed", "canceled")
PROCESSING = "processing"  # a filter only: the video answer's word for pending or generating
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


def task_status(status: str, error: str | None) -> str:
    """A task's status as history shows it."""
    return CANCELED if status == TaskStatus.FAILED.value and error == CANCELED_ERROR else status


# A generation's tasks counted by status in one aggregate over its own rows (the generation index:
# ``ix_tasks_generation_position``), packed into one integer, two decimal digits per status (at most
# MAX_SHOTS tasks, so no digit pair overflows). An EXISTS per status let SQLite probe the tasks'
# status index instead: a page of 20 out of 20,000 generations took 11 s.
_DIGITS = 100
_PENDING, _GENERATING, _COMPLETED, _FAILED, _CANCELED = (_DIGITS**i for i in range(5))
assert MAX_SHOTS < _DIGITS


def _packed_counts(generation_id: sa.ColumnElement[str]) -> sa.ScalarSelect[Any]:
    t = tasks.alias("t")
    # Integer literals, not bound parameters: PostgreSQL typed those numeric.
    weight = sa.case(
        (t.c.status == TaskStatus.PENDING.value, sa.literal_column(str(_PENDING), sa.Integer)),
        (t.c.status == TaskStatus.GENERATING.value, sa.literal_column(str(_GENERATING), sa.Integer)),
        (t.c.status == TaskStatus.COMPLETED.value, sa.literal_column(str(_COMPLETED), sa.Integer)),
        (t.c.error == CANCELED_ERROR, sa.literal_column(str(_CANCELED), sa.Integer)),
        else_=sa.literal_column(str(_FAILED), sa.Integer),
    )
    counts = sa.select(sa.func.coalesce(sa.func.sum(weight), 0)).where(t.c.generation_id == generation_id)
    return counts.scalar_subquery()


def _status(packed: sa.ColumnElement[Any], concat_status: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """The rules of the module's docstring, on the packed counts."""
    return sa.case(
        (packed < _GENERATING, "pending"),  # every task pending
        (sa.or_(packed % _COMPLETED > 0, concat_status == store.CONCAT_PENDING), "generating"),
        (packed < _FAILED, "completed"),  # none open, none failed or canceled
        (packed % _CANCELED >= _FAILED, "failed"),  # a failed count: no division (numeric on PostgreSQL)
        else_=CANCELED,
    )


_COLUMNS = (
    generations.c.id,
    generations.c.product,
    generations.c.params,
    generations.c.credits,
    generations.c.task_count,
    generations.c.created_at,
    generations.c.concat_url,
    generations.c.files_expired_at,
    generations.c.concat_status,
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
    """A page of the account's generations, newest first, and the key of the next page (None: last).
    Without a status filter the page is chosen first and the statuses read for its rows only."""
    where = [generations.c.account_id == account_id]
    if product is not None:
        where.append(generations.c.product == product.value)
    if after is not None:
        created_at, generation_id = after
        where.append(
            sa.or_(
                generations.c.created_at < created_at,
                sa.and_(generations.c.created_at == created_at, generations.c.id < generation_id),
            )
        )
    if statuses:
        rows = sa.select(*_COLUMNS, _packed_counts(generations.c.id).label("packed")).where(*where).subquery()
    else:
        page = (
            sa.select(*_COLUMNS)
            .where(*where)
            .order_by(generations.c.created_at.desc(), generations.c.id.desc())
            .limit(limit + 1)
            .subquery()
        )
        rows = sa.select(page, _packed_counts(page.c.id).label("packed")).subquery()
    status = _status(rows.c.packed, rows.c.concat_status)
    query = sa.select(rows, status.label("status"))
    if statuses:
        query = query.where(status.in_(list(statuses)))
    query = query.order_by(rows.c.created_at.desc(), rows.c.id.desc()).limit(limit + 1)
    found = [_generation(r) for r in conn.execute(query)]
    more = len(found) > limit
    found = found[:limit]
    return found, ((found[-1].created_at, found[-1].id) if more else None)


def get_generation(conn: sa.Connection, account_id: str, generation_id: str) -> Generation | None:
    """The account's generation (None for an unknown id or another account's)."""
    rows = (
        sa.select(*_COLUMNS, _packed_counts(generations.c.id).label("packed"))
        .where(generations.c.id == generation_id, generations.c.account_id == account_id)
        .subquery()
    )
    status = _status(rows.c.packed, rows.c.concat_status)
    row = conn.execute(sa.select(rows, status.label("status"))).first()
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
