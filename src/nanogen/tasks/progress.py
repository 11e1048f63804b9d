"""Generations' progress, read in bulk: what the process-wide watcher (server/watch.py) reads each tick.

A generation's **state number** sums what only moves forward: per task, ``pending`` 0, ``generating``
1 + its progress (0-100), ended (completed or failed) 102; plus 1 once a multi-shot video's
concatenation has settled (completed or failed), plus 1. Status and progress never move back (the
transitions are conditional, ``store.set_progress_many`` only raises it, a failure's progress of 0 counts
as ended), so the number grows whenever anything a check-status answer shows changes, and two reads
with the same number show the same state. It is the events' ``id`` (no column of its own).

One statement reads the numbers of many generations (a correlated sum per generation over the
``ix_tasks_generation_position`` index); a second pair reads the full records of those that moved.
Each takes up to ``CHUNK`` ids; the list is padded to a power of two so that a few prepared
statements serve every count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from nanogen.db import Prepared, Reads, generations, tasks
from nanogen.tasks import store
from nanogen.tasks.status import TaskStatus

CHUNK = 512  # ids per statement (SQLite and PostgreSQL take far more bound parameters)
ENDED_WEIGHT = 102  # a task's weight once ended: above any generating task's (1 + 100)
_SETTLED_CONCAT = (store.CONCAT_COMPLETED, store.CONCAT_FAILED)


def task_weight(status: TaskStatus, progress: int) -> int:
    if status.is_terminal:
        return ENDED_WEIGHT
    return 0 if status is TaskStatus.PENDING else 1 + progress


def state_number(task_rows: Sequence[store.TaskRecord], concat_status: str | None) -> int:
    """The generation's state number (the module's docstring), from its records."""
    settled = 1 if concat_status in _SETTLED_CONCAT else 0
    return 1 + settled + sum(task_weight(t.status, t.progress) for t in task_rows)


def _weight_sql() -> sa.ColumnElement[int]:
    """``task_weight`` in SQL. Literals, not bound parameters: a prepared statement binds only the ids
    (and PostgreSQL typed bound integers numeric)."""
    t = tasks.c

    def literal(value: object) -> sa.ColumnElement[Any]:
        text = f"'{value}'" if isinstance(value, str) else str(value)
        return sa.literal_column(text, sa.String if isinstance(value, str) else sa.Integer)

    return sa.case(
        (t.status == literal(TaskStatus.PENDING.value), literal(0)),
        (t.status == literal(TaskStatus.GENERATING.value), literal(1) + t.progress),
        else_=literal(ENDED_WEIGHT),
    )


def _ids(count: int) -> list[sa.BindParameter[str]]:
    return [sa.bindparam(f"g{i}") for i in range(count)]


@functools.cache  # one per power of two up to CHUNK
def _numbers(count: int) -> Prepared:
    total = sa.func.coalesce(sa.func.sum(_weight_sql()), sa.literal_column("0", sa.Integer))
    weights = sa.select(total).where(tasks.c.generation_id == generations.c.id)
    return Prepared(
        sa.select(generations.c.id, generations.c.concat_status, weights.scalar_subquery()).where(
            generations.c.id.in_(_ids(count))
        )
    )


@functools.cache
def _task_records(count: int) -> Prepared:
    return Prepared(
        sa.select(*store._TASK_COLUMNS)
        .where(tasks.c.generation_id.in_(_ids(count)))
        .order_by(tasks.c.generation_id, tasks.c.position)
    )


@functools.cache
def _generation_records(count: int) -> Prepared:
    return Prepared(sa.select(*store._GENERATION_COLUMNS).where(generations.c.id.in_(_ids(count))))


def chunks(ids: Sequence[str]) -> list[dict[str, str]]:
    """The parameters of each statement: up to CHUNK ids, padded (with the last) to a power of two."""
    out = []
    for start in range(0, len(ids), CHUNK):
        part = list(ids[start : start + CHUNK])
        size = 1 << (len(part) - 1).bit_length()
        part += [part[-1]] * (size - len(part))
        out.append({f"g{i}": value for i, value in enumerate(part)})
    return out


async def read_numbers(reads: Reads, generation_ids: Sequence[str]) -> tuple[dict[str, int], int]:
    """The state number of each of ``generation_ids`` that exists, and the statements it took."""
    found: dict[str, int] = {}
    params = chunks(generation_ids)
    for chunk in params:
        for generation_id, concat_status, weights in await reads.rows(_numbers(len(chunk)), chunk):
            settled = 1 if concat_status in _SETTLED_CONCAT else 0
            found[generation_id] = 1 + settled + int(weights)
    return found, len(params)


async def read_records(
    reads: Reads, generation_ids: Sequence[str]
) -> tuple[dict[str, tuple[store.GenerationRecord, list[store.TaskRecord]]], int]:
    """Each existing generation of ``generation_ids`` with its tasks in position order (the records
    check-status reads), and the statements it took."""
    found: dict[str, tuple[store.GenerationRecord, list[store.TaskRecord]]] = {}
    by_generation: dict[str, list[store.TaskRecord]] = {}
    params = chunks(generation_ids)
    for chunk in params:
        for row in await reads.rows(_generation_records(len(chunk)), chunk):
            record = store._generation(row)
            by_generation.setdefault(record.id, [])
            found[record.id] = (record, by_generation[record.id])
        task_rows: list[Any] = await reads.rows(_task_records(len(chunk)), chunk)
        for row in task_rows:
            task = store._task(row)
            by_generation.setdefault(task.generation_id, []).append(task)
    return found, 2 * len(params)
