"""Every SQL statement on generations and tasks.

Transitions are conditional UPDATEs on the current status, so each one happens at most once no
matter how many workflows, replays or watchdogs race for it; the first terminal transition wins and
settles the money (a failure refunds in the same transaction).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa

from nanogen import ledger
from nanogen.db import Prepared, Query, Reads, generations, idempotency_keys, row_chunks, tasks
from nanogen.products import Product
from nanogen.tasks.status import OPEN, TaskStatus

# A multi-shot video's concatenation (``concat_status``): pending -> completed | failed. Failed with
# ``concat_error`` when joining failed; failed without one when a shot failed (nothing to join).
CONCAT_PENDING = "pending"
CONCAT_COMPLETED = "completed"
CONCAT_FAILED = "failed"
# The error of a task canceled by its client (POST /api/generations/{id}/cancel): check-status reads
# ``failed`` with this error, history shows such a task as ``canceled``.
CANCELED_ERROR = "Canceled"


class TaskRecord(NamedTuple):
    """A task row. A tuple, not a frozen dataclass: every poll builds these, and a frozen dataclass's
    ``__init__`` (``object.__setattr__`` per field) cost a twentieth of a check-status."""

    id: str
    generation_id: str
    account_id: str
    product: Product
    position: int
    shot_id: str | None
    engine: str
    status: TaskStatus
    progress: int
    credits: int
    params_column: str | dict[str, Any]  # as the driver gives it (JSON text on SQLite): see ``params``
    output_url: str | None
    output_key: str | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    deadline_at: float
    attempts: int = 0
    provider_operation: str | None = None
    provider_cost_micros: int | None = None

    @property
    def params(self) -> dict[str, Any]:
        """Decoded when asked for, not on every poll (which never needs them)."""
        params: dict[str, Any] = _json(self.params_column)
        return params

    @property
    def generation_seconds(self) -> int | None:
        """Seconds from submission to completion, as the Veo page's ``generationTime``."""
        if self.finished_at is None or self.status != TaskStatus.COMPLETED:
            return None
        return max(0, round(self.finished_at - self.created_at))


@dataclass(frozen=True)
class GenerationRecord:
    id: str
    account_id: str
    product: Product
    params: dict[str, Any]
    credits: int
    task_count: int
    created_at: float
    concat_status: str | None
    concat_url: str | None
    concat_error: str | None


# The columns in the records' field order (``params_column`` is ``params``): the hot reads build
# records from plain tuples.
_TASK_COLUMNS = [tasks.c[name.removesuffix("_column")] for name in TaskRecord._fields]
_GENERATION_COLUMNS = [generations.c[name] for name in GenerationRecord.__dataclass_fields__]


def _json(value: Any) -> Any:
    """A JSON column's value as the driver gives it: text on SQLite, decoded on PostgreSQL."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


# Enum members by value: a dict lookup is a tenth of calling the enum class.
_PRODUCTS = {p.value: p for p in Product}
_STATUSES = {s.value: s for s in TaskStatus}


def _task(r: Sequence[Any]) -> TaskRecord:
    # Positional, in _TASK_COLUMNS' order: every poll builds these, and keywords cost a third more.
    return TaskRecord(
        r[0],
        r[1],
        r[2],
        _PRODUCTS[r[3]],
        r[4],
        r[5],
        r[6],
        _STATUSES[r[7]],
        r[8],
        int(r[9]),
        *r[10:],
    )


def _generation(row: Sequence[Any]) -> GenerationRecord:
    m = dict(zip(GenerationRecord.__dataclass_fields__, row, strict=True))
    return GenerationRecord(
        **m | {"product": Product(m["product"]), "credits": int(m["credits"]), "params": _json(m["params"])}
    )


# -- writes at submission (inside the debit's transaction; prepared, they run on every submit) -------
_INSERT_GENERATION = Prepared(
    sa.insert(generations).values({c.name: sa.bindparam(c.name) for c in generations.c})
)
_INSERT_TASK = Prepared(sa.insert(tasks).values({c.name: sa.bindparam(c.name) for c in tasks.c}))
# What an insert leaves out: NULL where the column allows it, the server default's value otherwise
# (a prepared INSERT binds every column).
_GENERATION_DEFAULTS: dict[str, Any] = {c.name: None for c in generations.c if c.nullable}
_TASK_DEFAULTS: dict[str, Any] = {c.name: None for c in tasks.c if c.nullable} | {
    "attempts": 0,
    "progress": 0,
}


def insert_generations(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    _INSERT_GENERATION.run_many(
        conn, [_GENERATION_DEFAULTS | r | {"params": orjson.dumps(r["params"]).decode()} for r in rows]
    )


def insert_tasks(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    _INSERT_TASK.run_many(
        conn, [_TASK_DEFAULTS | r | {"params": orjson.dumps(r["params"]).decode()} for r in rows]
    )


# -- reads -------------------------------------------------------------------------------------------
_TASK_BY_ID = Prepared(sa.select(*_TASK_COLUMNS).where(tasks.c.id == sa.bindparam("task_id")))
_GENERATION_TASKS = Prepared(
    sa.select(*_TASK_COLUMNS)
    .where(tasks.c.generation_id == sa.bindparam("generation_id"))
    .order_by(tasks.c.position)
)
_GENERATION_BY_ID = Prepared(
    sa.select(*_GENERATION_COLUMNS).where(generations.c.id == sa.bindparam("generation_id"))
)


def get_task(conn: sa.Connection, task_id: str) -> TaskRecord | None:
    rows = _TASK_BY_ID.all(conn, {"task_id": task_id})
    return _task(rows[0]) if rows else None


def get_tasks(conn: sa.Connection, task_ids: Iterable[str]) -> dict[str, TaskRecord]:
    ids = list(dict.fromkeys(task_ids))
    if not ids:
        return {}
    return {r.id: _task(r) for r in conn.execute(sa.select(*_TASK_COLUMNS).where(tasks.c.id.in_(ids)))}


def generation_tasks(conn: sa.Connection, generation_id: str) -> list[TaskRecord]:
    return [_task(r) for r in _GENERATION_TASKS.all(conn, {"generation_id": generation_id})]


_CONCAT_DUE = Prepared(
    sa.select(generations.c.id).where(
        generations.c.id == sa.bindparam("generation_id"),
        generations.c.concat_status == sa.bindparam("pending"),
        ~sa.exists().where(
            tasks.c.generation_id == generations.c.id, tasks.c.status != sa.bindparam("completed")
        ),
    )
)


def concat_due(conn: sa.Connection, generation_id: str) -> bool:
    """Every shot of the generation completed and its concatenation is still pending (one indexed
    read: every shot of a burst asks it as it ends)."""
    values = {
        "generation_id": generation_id,
        "pending": CONCAT_PENDING,
        "completed": TaskStatus.COMPLETED.value,
    }
    return bool(_CONCAT_DUE.all(conn, values))


def get_generation(conn: sa.Connection, generation_id: str) -> GenerationRecord | None:
    rows = _GENERATION_BY_ID.all(conn, {"generation_id": generation_id})
    return _generation(rows[0]) if rows else None


def get_generations(conn: sa.Connection, generation_ids: Iterable[str]) -> dict[str, GenerationRecord]:
    ids = sorted(set(generation_ids))
    if not ids:
        return {}
    rows = conn.execute(sa.select(*_GENERATION_COLUMNS).where(generations.c.id.in_(ids)))
    return {g.id: g for g in map(_generation, rows)}


# -- polls: the caller's key lookup and the tasks asked about, in one statement (ledger.with_caller) --
_POLL_GENERATION = Prepared(
    ledger.with_caller(_TASK_COLUMNS, tasks, tasks.c.generation_id == sa.bindparam("generation_id")).order_by(
        tasks.c.position
    )
)


@functools.cache  # bounded: a check-status body names at most schemas.VideoStatusRequest's taskIds limit
def _poll_tasks(count: int) -> Prepared:
    """The poll of ``count`` task ids (one prepared statement per count, binds ``t0``, ``t1``...)."""
    ids: list[sa.BindParameter[str]] = [sa.bindparam(f"t{i}") for i in range(count)]
    return Prepared(ledger.with_caller(_TASK_COLUMNS, tasks, tasks.c.id.in_(ids)))


def poll_generation(key_hash: str, generation_id: str) -> Query:
    """A generation's tasks, in position order, with the caller (read by ``polled``)."""
    return _POLL_GENERATION, {"key_hash": key_hash, "generation_id": generation_id}


def poll_tasks(key_hash: str, task_ids: Sequence[str]) -> Query:
    """These tasks (distinct ids; rows in any order), with the caller."""
    params = {f"t{i}": task_id for i, task_id in enumerate(task_ids)}
    return _poll_tasks(len(task_ids)), params | {"key_hash": key_hash}


def polled(rows: Sequence[Sequence[Any]]) -> list[TaskRecord]:
    """The task records of a poll's rows (``ledger.caller`` reads the caller from the same rows)."""
    return [_task(r[2:]) for r in rows if r[2] is not None]


async def read_generation_tasks(reads: Reads, generation_id: str) -> list[TaskRecord]:
    return [_task(r) for r in await reads.rows(_GENERATION_TASKS, {"generation_id": generation_id})]


async def read_generation(reads: Reads, generation_id: str) -> GenerationRecord | None:
    row = await reads.first(_GENERATION_BY_ID, {"generation_id": generation_id})
    return None if row is None else _generation(row)


def provider_costs(conn: sa.Connection) -> dict[str, int]:
    """Each account's provider cost estimate so far (millionths of a USD), for operators."""
    rows = conn.execute(
        sa.select(tasks.c.account_id, sa.func.sum(tasks.c.provider_cost_micros))
        .where(tasks.c.provider_cost_micros.is_not(None))
        .group_by(tasks.c.account_id)
    )
    return {account_id: int(total) for account_id, total in rows}


def overdue_task_ids(conn: sa.Connection, now: float, limit: int = 100) -> list[str]:
    rows = conn.execute(
        sa.select(tasks.c.id)
        .where(tasks.c.status.in_(OPEN), tasks.c.deadline_at < now)
        .order_by(tasks.c.deadline_at)
        .limit(limit)
    )
    return [r.id for r in rows]


def ended_task_ids(conn: sa.Connection, task_ids: list[str]) -> list[str]:
    """Those of ``task_ids`` whose task is terminal (the watchdog stops their jobs)."""
    rows = conn.execute(sa.select(tasks.c.id).where(tasks.c.id.in_(task_ids), tasks.c.status.not_in(OPEN)))
    return [r.id for r in rows]


# -- transitions -------------------------------------------------------------------------------------
_OPEN_BINDS = {f"open_{s}": s for s in OPEN}


def _open_tasks_update(count: int) -> sa.Update:
    """An UPDATE of the ``count`` tasks ``task_id_0`` ... while they are open: bind ``_OPEN_BINDS`` too."""
    return sa.update(tasks).where(
        tasks.c.id.in_([sa.bindparam(f"task_id_{i}") for i in range(count)]),
        tasks.c.status.in_([sa.bindparam(f"open_{s}") for s in OPEN]),
    )


def start(conn: sa.Connection, task_id: str) -> TaskRecord | None:
    """pending -> generating, counting the engine's attempt (a re-run after a crash counts again):
    the task as it now is, or None once terminal."""
    return start_many(conn, [task_id]).get(task_id)


def start_many(conn: sa.Connection, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
    """``start`` for each of these (distinct) tasks, as one UPDATE per chunk of them that returns the
    rows it changed: the tasks it started, by id (a terminal one is not there). Every job's start
    goes through the task writer's one thread, and the writer's batch starts its jobs' tasks at once:
    one statement where there was one a task (each a round trip on PostgreSQL)."""
    if len(set(task_ids)) != len(task_ids):
        raise ValueError("a task started twice in one call")
    started: dict[str, TaskRecord] = {}
    now = time.time()
    for first, count in row_chunks(len(task_ids)):
        values: dict[str, Any] = {"now": now, "generating": TaskStatus.GENERATING.value, **_OPEN_BINDS}
        values |= {f"task_id_{i}": task_id for i, task_id in enumerate(task_ids[first : first + count])}
        for row in _start_rows(count).all(conn, values):
            record = _task(row)
            started[record.id] = record
    return started


@functools.cache
def _start_rows(count: int) -> Prepared:
    return Prepared(
        _open_tasks_update(count)
        .values(
            status=sa.bindparam("generating"),
            started_at=sa.func.coalesce(tasks.c.started_at, sa.bindparam("now")),
            attempts=tasks.c.attempts + sa.literal_column("1"),
        )
        .returning(*_TASK_COLUMNS)
    )


_RAISE_PROGRESS = Prepared(
    sa.update(tasks)
    .where(
        tasks.c.id == sa.bindparam("task_id"),
        tasks.c.status == sa.bindparam("running"),
        tasks.c.progress < sa.bindparam("value"),
    )
    .values(progress=sa.bindparam("value"))
)


def set_progress_many(conn: sa.Connection, progress: dict[str, int]) -> None:
    """Raise the progress of many tasks (task id: 0-100) in one statement. Progress only moves
    forward, and only while the task runs. Rows are taken in id order (writers in several
    processes then lock rows in one order)."""
    running = TaskStatus.GENERATING.value
    rows = [
        {"task_id": t, "value": min(100, max(0, v)), "running": running} for t, v in sorted(progress.items())
    ]
    if conn.dialect.name != "sqlite":
        if rows:
            _RAISE_PROGRESS.run_many(conn, rows)
        return
    # SQLite: one statement for up to 256 tasks, not one step each (an executemany gives the
    # interpreter lock away around every row while this writer holds the file's write lock).
    for first, count in row_chunks(len(rows)):
        chunk = rows[first : first + count]
        binds: dict[str, Any] = {"running": running}
        for i, row in enumerate(chunk):
            binds[f"task_{i}"], binds[f"value_{i}"] = row["task_id"], row["value"]
        _raise_progress_of(len(chunk)).run(conn, binds).close()


_RAISE_PROGRESS_OF: dict[int, Prepared] = {}


def _raise_progress_of(count: int) -> Prepared:
    """SQLite's ``_RAISE_PROGRESS`` for ``count`` tasks at once: an UPDATE ... FROM a VALUES list."""
    found = _RAISE_PROGRESS_OF.get(count)
    if found is None:
        pairs = ", ".join(f"(:task_{i}, :value_{i})" for i in range(count))
        t = tasks.name
        found = _RAISE_PROGRESS_OF[count] = Prepared(
            sa.text(
                f"UPDATE {t} SET progress = v.column2 FROM (VALUES {pairs}) AS v"
                f" WHERE {t}.id = v.column1 AND {t}.status = :running AND {t}.progress < v.column2"
            )
        )
    return found


def record_operation(conn: sa.Connection, task_id: str, operation: str, cost_micros: int | None) -> str:
    """Remember the provider operation a task started (the first one recorded wins, whatever the
    task's status: the money is spent either way). Returns the task's operation as recorded."""
    conn.execute(
        sa.update(tasks)
        .where(tasks.c.id == task_id, tasks.c.provider_operation.is_(None))
        .values(provider_operation=operation, provider_cost_micros=cost_micros)
    )
    recorded = conn.execute(sa.select(tasks.c.provider_operation).where(tasks.c.id == task_id)).scalar()
    return str(recorded or operation)


_SET_PROVIDER_COST = Prepared(
    sa.update(tasks)
    .where(tasks.c.id == sa.bindparam("task_id"))
    .values(provider_cost_micros=sa.bindparam("cost"))
)


def set_provider_cost(conn: sa.Connection, task_id: str, cost_micros: int) -> None:
    _SET_PROVIDER_COST.run(conn, {"task_id": task_id, "cost": cost_micros}).close()


def record_seed(conn: sa.Connection, task_id: str, seed: int) -> None:
    """The seed a local engine drew the task's output with, kept in its params ("seed")."""
    params = _json(conn.execute(sa.select(tasks.c.params).where(tasks.c.id == task_id)).scalar())
    if isinstance(params, dict):
        conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(params={**params, "seed": seed}))


def complete(
    conn: sa.Connection, task_id: str, output_url: str, output_key: str, cost_micros: int | None = None
) -> bool:
    """generating -> completed with its output, and what the provider charged for it when known
    (None keeps what was recorded): False if the task had ended. A task that ended meanwhile still
    owes the provider its charge: ``set_provider_cost``."""
    return complete_many(conn, [Completion(task_id, output_url, output_key, cost_micros)])[0]


class Completion(NamedTuple):
    task_id: str
    output_url: str
    output_key: str  # new for every output: the task holds it afterwards only if this completed it
    cost_micros: int | None = None


def complete_many(conn: sa.Connection, ends: Sequence[Completion]) -> list[bool]:
    """``complete`` for each of ``ends`` (distinct tasks), as one UPDATE per chunk of them: whether
    each completed its task. On SQLite every statement gives the interpreter lock away and the task
    writer, holding the file's write lock, waits to take it back behind the threads that want it; on
    PostgreSQL each is a round trip. 64 ends beside 50 busy threads: 137 ms one UPDATE each, 12.5 ms
    as one; on PostgreSQL 18.8 and 5.2 ms (bench/bench_task_ends.py)."""
    if len({e.task_id for e in ends}) != len(ends):
        raise ValueError("a task completed twice in one call")
    done: list[bool] = []
    now = time.time()
    for first, count in row_chunks(len(ends)):
        chunk = ends[first : first + count]
        values: dict[str, Any] = {
            "completed": TaskStatus.COMPLETED.value,
            "progress": 100,
            "now": now,
            **_OPEN_BINDS,
        }
        for i, end in enumerate(chunk):
            values |= {
                f"task_id_{i}": end.task_id,
                f"output_url_{i}": end.output_url,
                f"output_key_{i}": end.output_key,
                f"cost_{i}": end.cost_micros,
            }
        cursor = _complete_rows(count).run(conn, values)
        try:
            updated = cursor.rowcount
        finally:
            cursor.close()
        if updated == count:
            done += [True] * count
            continue
        # Some had ended meanwhile (a deadline, a cancel, an earlier try of this write whose COMMIT's
        # answer was lost): the ones this UPDATE completed hold its key and its time.
        held = {
            t.id: (t.output_key, t.finished_at) for t in get_tasks(conn, [e.task_id for e in chunk]).values()
        }
        done += [held.get(e.task_id) == (e.output_key, now) for e in chunk]
    return done


@functools.cache
def _complete_rows(count: int) -> Prepared:
    """The UPDATE that completes ``count`` tasks, each with its own output and charge (row_chunks keeps
    ``count`` a power of two, so a few of these exist)."""

    def each(name: str, cast: bool = False) -> sa.Case[Any]:
        # Only the charge is cast (PostgreSQL reads a CASE of bare parameters as text); a cast to
        # VARCHAR(n) would cut a long value where the column refuses it.
        whens: list[tuple[sa.ColumnElement[bool], sa.ColumnElement[Any]]] = []
        for i in range(count):
            value: sa.ColumnElement[Any] = sa.bindparam(f"{name}_{i}")
            whens.append(
                (tasks.c.id == sa.bindparam(f"task_id_{i}"), sa.cast(value, sa.BigInteger) if cast else value)
            )
        return sa.case(*whens)

    return Prepared(
        _open_tasks_update(count).values(
            status=sa.bindparam("completed"),
            progress=sa.bindparam("progress"),
            output_url=each("output_url"),
            output_key=each("output_key"),
            finished_at=sa.bindparam("now"),
            provider_cost_micros=sa.func.coalesce(each("cost", cast=True), tasks.c.provider_cost_micros),
        )
    )


def clip(text: str, column: sa.Column[Any]) -> str:
    """Exception or provider text made storable in a VARCHAR ``column``: cut to its length (PostgreSQL
    refuses a longer value, and the write that records a failure must never itself fail), NUL
    characters (which PostgreSQL refuses in text) and lone surrogates (which no driver can encode)
    replaced."""
    length = getattr(column.type, "length", None)
    cleaned = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return cleaned[:length] if length else cleaned


def fail_and_refund(conn: sa.Connection, task_id: str, error: str) -> bool:
    """Fail an open task and refund its credits, in the caller's transaction. False if it had ended.

    A failed shot also settles its generation's pending concatenation as failed (there is nothing to
    join: the shots can no longer all complete), in the same transaction, so that no multi-shot
    video stays ``pending`` forever whichever path failed the shot (its workflow, the deadline
    watchdog). The error stays NULL: the client's answer names no ``concatenationError``."""
    error = clip(error, tasks.c.error)
    result = conn.execute(
        sa.update(tasks)
        .where(tasks.c.id == task_id, tasks.c.status.in_(OPEN))
        .values(status=TaskStatus.FAILED.value, progress=0, error=error, finished_at=time.time())
        .returning(tasks.c.account_id, tasks.c.credits, tasks.c.generation_id, tasks.c.product)
    ).first()
    if result is None:
        return False
    ledger.refund(conn, result.account_id, task_id, int(result.credits), memo=error)
    if result.product == Product.VIDEO.value:
        conn.execute(
            sa.update(generations)
            .where(generations.c.id == result.generation_id, generations.c.concat_status == CONCAT_PENDING)
            .values(concat_status=CONCAT_FAILED)
        )
    return True


def cancel(conn: sa.Connection, task_id: str) -> TaskRecord | None:
    """Cancel an open task: failed with :data:`CANCELED_ERROR` and refunded, in the caller's
    transaction (one per task). The task as it was before, or None when it had ended (completed or
    failed meanwhile: the conditional transition decides, so a completed task is never refunded)."""
    before = get_task(conn, task_id)
    if before is None or before.status.is_terminal:
        return None
    return before if fail_and_refund(conn, task_id, CANCELED_ERROR) else None


def settle_concats_of_failed_shots(conn: sa.Connection, created_before: float) -> int:
    """Settle as failed the concatenations still ``pending`` although a shot failed (left so by
    versions before ``fail_and_refund`` settled them), of generations made before ``created_before``
    whose files are not yet expired. Idempotent; the number settled."""
    failed_shot = (
        sa.select(tasks.c.id)
        .where(tasks.c.generation_id == generations.c.id, tasks.c.status == TaskStatus.FAILED.value)
        .exists()
    )
    result = conn.execute(
        sa.update(generations)
        .where(
            generations.c.files_expired_at.is_(None),
            generations.c.created_at < created_before,
            generations.c.concat_status == CONCAT_PENDING,
            failed_shot,
        )
        .values(concat_status=CONCAT_FAILED)
    )
    return int(result.rowcount)


def set_concat(
    conn: sa.Connection,
    generation_id: str,
    status: str,
    *,
    url: str | None = None,
    key: str | None = None,
    error: str | None = None,
) -> bool:
    """Settle a pending concatenation (``completed`` with its url and key, or ``failed`` with why).
    Conditional: once settled (joined, failed, or a shot failed) it never changes again; False then."""
    result = conn.execute(
        sa.update(generations)
        .where(generations.c.id == generation_id, generations.c.concat_status == CONCAT_PENDING)
        .values(
            concat_status=status,
            concat_url=url,
            concat_key=key,
            concat_error=None if error is None else clip(error, generations.c.concat_error),
        )
    )
    return result.rowcount == 1


# -- Idempotency-Key (docs/api.md, "Idempotent retries") ----------------------------------------------
IDEMPOTENCY_TTL_S = 24 * 3600.0  # a key answers the first response again for this long
# A claim whose request never finished (its process stopped between the claim and the debit) is given
# up after this long; a request still holding it then cannot commit (``complete_idempotency_keys``).
IDEMPOTENCY_ABANDONED_S = 600.0

_IK = idempotency_keys.c


class IdempotencyClaim(NamedTuple):
    """What a claim found: ``claimed`` (this request now holds the key), ``replay`` (``response`` is
    the first request's answer), ``reused`` (another body had the key) or ``in_use`` (still running)."""

    outcome: str
    response: dict[str, Any] | None = None


def claim_idempotency_key(
    conn: sa.Connection, account_id: str, key: str, request_hash: str, generation_id: str, now: float
) -> IdempotencyClaim:
    """Claim ``key`` for a request (its owner: ``generation_id``) in the caller's write transaction.
    Two claims racing on PostgreSQL: the second INSERT fails (IntegrityError) or its conditional
    UPDATE matches nothing; the caller runs the transaction again (``claim_again``)."""
    where = sa.and_(_IK.account_id == account_id, _IK.key == key)
    row = conn.execute(
        sa.select(_IK.request_hash, _IK.generation_id, _IK.response, _IK.created_at).where(where)
    ).first()
    # sa.null(): None would be stored as JSON ``null``, not SQL NULL (the "still running" mark)
    values = dict(request_hash=request_hash, generation_id=generation_id, response=sa.null(), created_at=now)
    if row is None:
        conn.execute(sa.insert(idempotency_keys).values(account_id=account_id, key=key, **values))
        return IdempotencyClaim("claimed")
    response = _json(row.response) if row.response is not None else None
    expired = row.created_at < now - IDEMPOTENCY_TTL_S
    abandoned = response is None and row.created_at < now - IDEMPOTENCY_ABANDONED_S
    if expired or abandoned:
        taken = conn.execute(
            sa.update(idempotency_keys).where(where, _IK.generation_id == row.generation_id).values(**values)
        )
        if taken.rowcount != 1:
            raise ClaimRaced()
        return IdempotencyClaim("claimed")
    if row.request_hash != request_hash:
        return IdempotencyClaim("reused")
    if response is None:
        return IdempotencyClaim("in_use")
    return IdempotencyClaim("replay", response)


class ClaimRaced(Exception):
    """Another transaction changed the key's row between this one's read and write: run it again."""


def claim_again(exc: BaseException) -> bool:
    """A claim that lost a race to another (run the transaction again: it then sees the winner's row)."""
    return isinstance(exc, ClaimRaced | sa.exc.IntegrityError)


def release_idempotency_key(conn: sa.Connection, account_id: str, key: str, generation_id: str) -> None:
    """Forget the claim of a request that was refused (only while it still holds it, unanswered)."""
    conn.execute(
        sa.delete(idempotency_keys).where(
            _IK.account_id == account_id,
            _IK.key == key,
            _IK.generation_id == generation_id,
            _IK.response.is_(None),
        )
    )


_COMPLETE_IDEMPOTENCY = Prepared(
    sa.update(idempotency_keys)
    .where(
        _IK.account_id == sa.bindparam("account_id"),
        _IK.key == sa.bindparam("key"),
        _IK.generation_id == sa.bindparam("generation_id"),
        _IK.response.is_(None),
    )
    .values(response=sa.bindparam("response"))
    .returning(_IK.key)
)


def complete_idempotency_keys(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> bool:
    """Store each request's response on the key it claimed, in the transaction of its debit. False
    if a request no longer holds its claim (given up as abandoned and taken by another)."""
    found = _COMPLETE_IDEMPOTENCY.each(
        conn, [r | {"response": orjson.dumps(r["response"]).decode()} for r in rows]
    )
    return all(len(r) == 1 for r in found)


# -- videos as the OpenAI dialect lists them ----------------------------------------------------------
class VideoGeneration(NamedTuple):
    id: str
    created_at: float
    params: dict[str, Any]
    concat_status: str | None
    concat_error: str | None
    concat_key: str | None
    shots: list[TaskRecord]


def video_generations(
    conn: sa.Connection,
    account_id: str,
    *,
    generation_id: str | None,
    after: str | None,
    limit: int,
    descending: bool,
) -> list[VideoGeneration] | None:
    """The account's video generations whose files are not deleted, with their shots: one by id, or a
    page after the generation ``after`` (ordered by creation, then id). None when ``after`` is not one
    of them."""
    mine = sa.and_(
        generations.c.account_id == account_id,
        generations.c.product == Product.VIDEO.value,
        generations.c.files_expired_at.is_(None),
    )
    columns = (
        generations.c.id,
        generations.c.created_at,
        generations.c.params,
        generations.c.concat_status,
        generations.c.concat_error,
        generations.c.concat_key,
    )
    query = sa.select(*columns).where(mine)
    if generation_id is not None:
        query = query.where(generations.c.id == generation_id)
    elif after is not None:
        cursor = conn.execute(
            sa.select(generations.c.created_at, generations.c.id).where(mine, generations.c.id == after)
        ).first()
        if cursor is None:
            return None
        key = sa.tuple_(generations.c.created_at, generations.c.id)
        query = query.where(key < tuple(cursor) if descending else key > tuple(cursor))
    order_by = (generations.c.created_at, generations.c.id)
    query = query.order_by(*(c.desc() if descending else c.asc() for c in order_by)).limit(limit)
    rows = conn.execute(query).all()
    shots: dict[str, list[TaskRecord]] = {r.id: [] for r in rows}
    if shots:
        task_rows = conn.execute(
            sa.select(*_TASK_COLUMNS)
            .where(tasks.c.generation_id.in_(list(shots)))
            .order_by(tasks.c.generation_id, tasks.c.position)
        )
        for r in task_rows:
            record = _task(r)
            shots[record.generation_id].append(record)
    return [
        VideoGeneration(
            r.id, r.created_at, _json(r.params), r.concat_status, r.concat_error, r.concat_key, shots[r.id]
        )
        for r in rows
    ]
