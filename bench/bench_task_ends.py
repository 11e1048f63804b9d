"""What the task writer's batch of starts or ends costs: one statement a task against one for the batch.

A job's start and end are written by the task writer (nanogen/tasks/task_writer.py) in a transaction
shared with the other jobs' writes of the moment, up to 64. Each start used to be its own UPDATE
(returning the task's row), each end its own UPDATE of the task and a SELECT of its generation's webhook
target; now a batch's starts are one UPDATE returning their rows (``store.start_many``), and its ends
one UPDATE (``store.complete_many``) and one SELECT of the generations a webhook applies to
(``generations_with_webhook``). This bench starts 64 submitted tasks, and completes 64 started ones,
in one transaction both ways, on a SQLite file (with 0 and 50 other threads each
running a little Python and sleeping half a millisecond, as the jobs do while the writer holds the
file's write lock) and on a PostgreSQL database made for the run, and prints the median and p90 of
each and the ratio.

    .venv/bin/python bench/bench_task_ends.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_submit_writer import Database, _account, _run, _submission, open_database  # noqa: E402

from bench_sqlite_steps import busy_threads  # noqa: E402
from nanogen.db import write_transaction  # noqa: E402 - after the path is set
from nanogen.storage import new_key  # noqa: E402
from nanogen.tasks import store  # noqa: E402
from nanogen.webhooks import store as webhooks_store  # noqa: E402

BATCH = 64


def submitted_tasks(db: Database, count: int, start: bool) -> list[tuple[str, str]]:
    """``count`` tasks submitted as the server submits them (one generation each), and started if
    ``start``: ``(task id, generation id)``."""
    account = _account(db, 10 * count)
    submissions = [_submission(account, 10) for _ in range(count)]
    assert _run(db, submissions) == [None] * count
    made = [(s.tasks[0].id, s.generation_id) for s in submissions]
    if start:
        with write_transaction(db.engine) as conn:
            store.start_many(conn, [t for t, _ in made])
    return made


def starts_one_by_one(conn: sa.Connection, tasks: list[tuple[str, str]]) -> None:
    """The batch's starts as each was written before: the task's UPDATE returning its row."""
    for task_id, _ in tasks:
        store.start(conn, task_id)


def starts_batched(conn: sa.Connection, tasks: list[tuple[str, str]]) -> None:
    store.start_many(conn, [t for t, _ in tasks])


def ends_one_by_one(conn: sa.Connection, tasks: list[tuple[str, str]]) -> None:
    """The batch's ends as each was written before: the task's UPDATE, then its webhook target."""
    for task_id, generation_id in tasks:
        store.complete(conn, task_id, f"http://x.invalid/{task_id}", new_key("out", f"{task_id}.png"), 39_000)
        webhooks_store.lock_generation_target(conn, generation_id)


def ends_batched(conn: sa.Connection, tasks: list[tuple[str, str]]) -> None:
    ends = [
        store.Completion(t, f"http://x.invalid/{t}", new_key("out", f"{t}.png"), 39_000) for t, _ in tasks
    ]
    store.complete_many(conn, ends)
    webhooks_store.generations_with_webhook(conn, {g for _, g in tasks})


Write = Callable[[sa.Connection, list[tuple[str, str]]], None]
WRITES: dict[str, tuple[Write, Write]] = {
    "starts": (starts_one_by_one, starts_batched),
    "ends": (ends_one_by_one, ends_batched),
}


def measure(db: Database, reps: int, write: str) -> dict[str, dict[str, float]]:
    """Both ways in turns, each on fresh tasks: p50 and p90 of the transaction's wall time."""
    seconds: dict[str, list[float]] = {"one_by_one": [], "batched": []}
    for _ in range(reps):
        for name, run in zip(seconds, WRITES[write], strict=True):
            tasks = submitted_tasks(db, BATCH, start=write == "ends")
            began = time.perf_counter()
            with write_transaction(db.engine) as conn:
                run(conn, tasks)
            seconds[name].append(time.perf_counter() - began)
    return {
        name: {
            "p50_ms": round(sorted(s)[len(s) // 2] * 1e3, 2),
            "p90_ms": round(sorted(s)[int(len(s) * 0.9)] * 1e3, 2),
        }
        for name, s in seconds.items()
    }


class _Folders:
    """What ``open_database`` asks of pytest's tmp_path_factory: a new folder."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name, dir=self._root))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=20, help="transactions each way per row")
    parser.add_argument("--threads", default="0,50", help="SQLite: busy threads, comma-separated")
    args = parser.parse_args()
    table: list[tuple[str, int, str, dict[str, Any], float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sqlite", "postgres"):
            opened = open_database(kind, _Folders(Path(tmp)), "bench_task_ends")  # type: ignore[arg-type]
            db = next(opened)
            try:
                for count in [int(n) for n in args.threads.split(",")] if kind == "sqlite" else [0]:
                    for write in WRITES:
                        with busy_threads(count):
                            result = measure(db, args.reps, write)
                        ratio = result["one_by_one"]["p50_ms"] / max(1e-6, result["batched"]["p50_ms"])
                        row = {"database": kind, "busy_threads": count, "write": write, **result}
                        print(json.dumps({"bench": "task_ends", **row}))
                        table.append((kind, count, write, result, ratio))
            finally:
                opened.close()  # the database's engine disposed, PostgreSQL's dropped
    print()
    print(f"{BATCH} task starts or ends in one transaction: a statement or two a task, or one or two a batch")
    head = f"{'database':>9}  {'busy threads':>12}  {'write':>6}  {'one by one p50 / p90':>22}"
    head += f"  {'batched p50 / p90':>20}"
    print(f"{head}  ratio")
    for kind, count, write, result, ratio in table:
        one, many = result["one_by_one"], result["batched"]
        print(
            f"{kind:>9}  {count:>12}  {write:>6}  {one['p50_ms']:>9.2f} / {one['p90_ms']:>7.2f} ms  "
            f"{many['p50_ms']:>8.2f} / {many['p90_ms']:>6.2f} ms  {ratio:>5.1f}x"
        )


if __name__ == "__main__":
    main()
