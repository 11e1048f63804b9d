"""What a write holding SQLite's one write lock costs while other threads want the interpreter lock.

pysqlite gives the interpreter lock away around every step of a statement: an ``executemany`` steps
once a row, and each time the writer (holding the file's write lock, so every other writer waits on
it) must take the interpreter lock back behind the threads that want it. This bench inserts 130 rows
(a submit batch's ledger, generation, task and workflow rows) in one transaction, row by row with
``executemany`` (the baseline) and as one multi-row INSERT (what ``nanogen.db.Prepared.run_many`` does
on SQLite), with 0, 50 and 500 other threads each running a little Python and sleeping half a
millisecond, in turns, and prints the median and p90 of each and the ratio.

    .venv/bin/python bench/bench_sqlite_steps.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

COLUMNS = 8
ROWS = 130


def busy(stop: threading.Event) -> None:
    total = 0
    while not stop.is_set():
        for i in range(200):
            total += i
        time.sleep(0.0005)


@contextlib.contextmanager
def busy_threads(count: int) -> Iterator[None]:
    """``count`` threads running ``busy`` until the block ends (bench/bench_task_ends.py uses them too)."""
    stop = threading.Event()
    threads = [threading.Thread(target=busy, args=(stop,), daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def measure(db: sqlite3.Connection, multi_row: bool, reps: int, first_id: int) -> list[float]:
    values = "(" + ", ".join("?" * COLUMNS) + ")"
    single = f"INSERT INTO t VALUES {values}"
    many = "INSERT INTO t VALUES " + ", ".join([values] * ROWS)
    seconds = []
    for rep in range(reps):
        base = first_id + rep * ROWS
        rows = [(f"id{base + i}", "acct", 5, 1.5, "pending", '{"p": 1}', 0, "x") for i in range(ROWS)]
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        if multi_row:
            db.execute(many, [value for row in rows for value in row])
        else:
            db.executemany(single, rows)
        db.execute("COMMIT")
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="0,50,500", help="busy threads, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "steps.sqlite", check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE t (id TEXT PRIMARY KEY, a TEXT, b INTEGER, c REAL, d TEXT, e TEXT, f INTEGER,"
            " g TEXT)"
        )
        next_id = 0
        table = []
        for count in (int(n) for n in args.threads.split(",")):
            reps = 10 if count >= 200 else 30
            result = {}
            with busy_threads(count):
                time.sleep(0.5)
                for multi_row in (False, True):
                    seconds = measure(db, multi_row, reps, next_id)
                    next_id += reps * ROWS
                    result["multi_row" if multi_row else "executemany"] = {
                        "p50_ms": round(seconds[len(seconds) // 2] * 1e3, 2),
                        "p90_ms": round(seconds[int(len(seconds) * 0.9)] * 1e3, 2),
                    }
            ratio = result["executemany"]["p50_ms"] / max(1e-6, result["multi_row"]["p50_ms"])
            print(json.dumps({"bench": "sqlite_steps", "busy_threads": count, "rows": ROWS, **result}))
            table.append((count, result, ratio))
        print()
        header = f"{'busy threads':>12}  {'executemany p50 / p90':>24}  {'one INSERT p50 / p90':>22}"
        print(f"{header}  {'ratio':>7}")
        for count, result, ratio in table:
            e, m = result["executemany"], result["multi_row"]
            print(
                f"{count:>12}  {e['p50_ms']:>10.2f} / {e['p90_ms']:>8.2f} ms  "
                f"{m['p50_ms']:>9.2f} / {m['p90_ms']:>7.2f} ms  {ratio:>6.1f}x"
            )


if __name__ == "__main__":
    main()
