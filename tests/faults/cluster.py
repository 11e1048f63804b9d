"""Processes of a scaled-out nanogen for the fault-injection suite: API processes, workers and a
PostgreSQL server of the test's own (to stop and start at will), plus the invariants every round
ends with, checked on the database itself."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import OUTCOME_WAIT_S, Server, free_port, wait_for
from tests.databases import Database

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/usr/lib/postgresql/bin"))


@dataclass
class Worker:
    """A ``nanogen worker`` process on the server's database, with its own stable executor id."""

    server: Server
    executor_id: str
    args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.server.home / f"{self.executor_id}.log"

    def start(self) -> Worker:
        env = self.server.env | {"NANOGEN_EXECUTOR_ID": self.executor_id} | self.extra_env
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nanogen", "worker", *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own on a free loopback port (trust auth), so that it can be
    stopped and started without touching the machine's shared server."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="nanogen-pg-"))
        # The user's own ids, looked up once: in one run ``shutil.chown(dir, "postgres", "postgres")``
        # failed in two test workers at once with "no such group" (a group lookup that failed for
        # another reason: Python reports every failure of getgrnam_r as "not found").
        postgres = pwd.getpwnam("postgres")
        os.chown(self.dir, postgres.pw_uid, postgres.pw_gid)
        self.data = self.dir / "data"
        self._as_postgres(PG_BIN / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def _as_postgres(self, *argv: str | Path) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, argv)], check=True, capture_output=True, timeout=120
        )

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300"
        self._as_postgres(
            PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "pg.log", "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def available() -> bool:
    return PG_BIN.exists() and shutil.which("runuser") is not None and os.geteuid() == 0


# -- the invariants --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Books:
    tasks: int
    completed: int
    failed: int
    rerenders: int  # engine runs beyond the first: local renders interrupted by a crash ran again


def check_invariants(db: Database, *, allow_open: bool = False) -> Books:
    """Every round ends with these, read from the database:
    - every task is terminal (or, with ``allow_open``, still open before its deadline);
    - per account, balance = grants - debits + refunds;
    - every task was debited exactly its credits, once; a failed task refunded once, any other never;
    - no debit or refund without its task."""
    now = time.time()
    statuses = dict(db.execute("SELECT status, COUNT(*) FROM nanogen_tasks GROUP BY status").fetchall())
    late = db.execute(
        "SELECT id, status FROM nanogen_tasks WHERE status IN ('pending', 'generating') AND deadline_at < ?",
        (now,),
    ).fetchall()
    assert not late, f"tasks open past their deadline: {late}"
    if not allow_open:
        still_open = statuses.get("pending", 0) + statuses.get("generating", 0)
        assert still_open == 0, f"tasks not finished: {statuses}"

    signed = "SUM(CASE WHEN l.kind = 'debit' THEN -l.amount ELSE l.amount END)"
    unbalanced = db.execute(
        f"SELECT a.id, a.balance, COALESCE({signed}, 0) FROM nanogen_accounts a"
        " LEFT JOIN nanogen_ledger l ON l.account_id = a.id"
        f" GROUP BY a.id, a.balance HAVING a.balance != COALESCE({signed}, 0)"
    ).fetchall()
    assert not unbalanced, f"balance != grants - debits + refunds: {unbalanced}"
    assert all(int(b) >= 0 for (b,) in db.execute("SELECT balance FROM nanogen_accounts").fetchall())

    def of(kind: str, what: str) -> str:
        return f"SUM(CASE WHEN l.kind = '{kind}' THEN {what} ELSE 0 END)"

    money = db.execute(
        f"SELECT t.id, t.status, t.credits, {of('debit', '1')}, {of('debit', 'l.amount')},"
        f" {of('refund', '1')}, {of('refund', 'l.amount')}"
        " FROM nanogen_tasks t LEFT JOIN nanogen_ledger l ON l.task_id = t.id"
        " GROUP BY t.id, t.status, t.credits"
    ).fetchall()
    for task_id, status, credits, debits, debited, refunds, refunded in money:
        assert (int(debits), int(debited)) == (1, int(credits)), f"{task_id} debited {debits}x {debited}"
        expected = (1, int(credits)) if status == "failed" else (0, 0)
        assert (int(refunds), int(refunded)) == expected, f"{task_id} ({status}) refunded {refunds}x"
    orphans = db.execute(
        "SELECT l.id, l.kind FROM nanogen_ledger l LEFT JOIN nanogen_tasks t ON t.id = l.task_id"
        " WHERE l.kind != 'grant' AND t.id IS NULL"
    ).fetchall()
    assert not orphans, f"money moved without a task: {orphans}"
    reruns = db.execute(
        "SELECT COALESCE(SUM(attempts - 1), 0) FROM nanogen_tasks WHERE attempts > 1"
    ).fetchone()
    return Books(
        tasks=sum(int(n) for n in statuses.values()),
        completed=int(statuses.get("completed", 0)),
        failed=int(statuses.get("failed", 0)),
        rerenders=int(reruns[0]),
    )


def all_terminal(db_factory: Any, timeout: float = OUTCOME_WAIT_S) -> None:
    """Every task ended, and every generation whose shots all completed has its concatenation
    settled (asked for by the shot that ended last, whatever crashed meanwhile)."""

    def done() -> bool:
        with db_factory() as db:
            (n,) = db.execute(
                "SELECT COUNT(*) FROM nanogen_tasks WHERE status IN ('pending', 'generating')"
            ).fetchone()
            (joins,) = db.execute(
                "SELECT COUNT(*) FROM nanogen_generations g WHERE g.concat_status = 'pending'"
                " AND NOT EXISTS (SELECT 1 FROM nanogen_tasks t"
                " WHERE t.generation_id = g.id AND t.status <> 'completed')"
            ).fetchone()
        return int(n) == 0 and int(joins) == 0

    wait_for(done, timeout, interval=0.5)
