"""Scale-out benchmarks on PostgreSQL (127.0.0.1:5432, a database of the run's own), each against a
baseline measured in the same run. Run with ``bench/run`` or ``.venv/bin/python bench/bench_scale.py``.

1. submit (image generate, submit-only) and check-status, ``nanogen serve`` on PostgreSQL side by
   side with the same benchmark on the embedded SQLite default.
2. scale-out: 2 API processes (``nanogen serve --no-worker``) against 1 on PostgreSQL, the same load
   both times (two clients of 16 connections with an account each: one hot account serialises on its
   balance row whatever the number of processes). What scale-out needs, measured: server CPU per
   submit with two processes within 1.15x of one; no lock waits (``pg_locks`` sampled every 50 ms for
   waits not granted) and no conflict retries (``pg_stat_database`` rollbacks and deadlocks) on the
   hot path; PostgreSQL's backend CPU per submit. From those, the expected submits/s of a 16-core box
   (its assumptions printed with it). The requests/s ratio is printed without a goal: on 2 cores wrk,
   PostgreSQL and the API processes share the machine, so it measures the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench_server import (
    HOST,
    IMAGE_BODY,
    SUBMIT_LATENCY_S,
    WRK_SECONDS,
    Report,
    Row,
    Service,
    WrkResult,
    client,
    measured,
    nanogen_server,
    new_account,
    process_cpu_s,
    terminated_on_sigterm,
    timed,
    wait_image,
    wrk,
)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WARMUP_S = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")


def postgres_database() -> tuple[str, str]:
    name = f"nanogen_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def api_only(server: Service) -> Service:
    server.argv.append("--no-worker")
    return server


def submit_and_status(home: Path, tmp: Path, **settings: str) -> tuple[WrkResult, WrkResult]:
    """wrk on submit (submit-only) and on check-status of a completed image, on one server."""
    server = nanogen_server(home, SANDBOX_LATENCY_S="0", **settings).start()
    try:
        account = new_account(server, 10**12)
        with client(server, account) as c:
            r = c.post("/api/nano-banana-2/generate", json=IMAGE_BODY)
            r.raise_for_status()
            generation_id = r.json()["generationId"]
            wait_image(c, generation_id, 0.05)
        status_url = f"{server.url}/api/nano-banana-2/check-status"
        body = {"generationId": generation_id}
        wrk(status_url, body, account.key, tmp, WARMUP_S)
        status = measured(server, lambda: wrk(status_url, body, account.key, tmp))
    finally:
        server.stop()
    server = nanogen_server(home, SANDBOX_LATENCY_S=str(SUBMIT_LATENCY_S), **settings).start()
    try:
        account = new_account(server, 10**12)
        url = f"{server.url}/api/nano-banana-2/generate"
        wrk(url, IMAGE_BODY, account.key, tmp, WARMUP_S)
        submit = measured(server, lambda: wrk(url, IMAGE_BODY, account.key, tmp))
    finally:
        server.stop()
    return submit, status


def bench_side_by_side(tmp: Path, pg_url: str, report: Report) -> None:
    sqlite_submit, sqlite_status = submit_and_status(tmp / "sqlite", tmp)
    pg_submit, pg_status = submit_and_status(tmp / "pg", tmp, DATABASE_URL=pg_url)
    for name, sqlite, pg in (
        ("submit", sqlite_submit, pg_submit),
        ("check-status", sqlite_status, pg_status),
    ):
        report.emit(bench=f"{name}_postgres_vs_sqlite", postgres=pg.summary(), sqlite=sqlite.summary())
        report.add(
            Row(
                f"1. {name} req/s, PostgreSQL (vs SQLite)",
                f"{pg.rps:.0f}/s",
                f"{sqlite.rps:.0f}/s",
                f"{pg.rps / sqlite.rps:.2f}x",
                "",
            )
        )
        report.add(
            Row(
                f"   {name} p50 / p99",
                f"{pg.p50_ms:.1f}/{pg.p99_ms:.1f} ms",
                f"{sqlite.p50_ms:.1f}/{sqlite.p99_ms:.1f} ms",
                "",
                "",
            )
        )
        report.add(
            Row(
                f"   {name} server CPU per request",
                f"{pg.cpu_ms_per_request:.2f} ms",
                f"{sqlite.cpu_ms_per_request:.2f} ms",
                "",
                "",
            )
        )


@dataclass
class LockSampler:
    """Samples, every ``interval`` s, the backends of the run's database: heavyweight locks waited for
    (``pg_locks.granted = false``: row locks appear as ``transactionid`` waits) and what each active
    backend waits on (``pg_stat_activity.wait_event_type``). One connection of its own."""

    url: str
    interval: float = 0.05
    samples: int = 0
    samples_waiting: int = 0
    max_waiting: int = 0
    waits: Counter[str] = field(default_factory=Counter)  # locktype/mode/relation -> samples seen
    wait_events: Counter[str] = field(default_factory=Counter)  # wait_event_type:wait_event -> samples
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LockSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            mine = conn.execute("SELECT pg_backend_pid()").fetchone()
            me = mine[0] if mine else 0
            while not self._stop.wait(self.interval):
                waiting = conn.execute(
                    "SELECT l.locktype, l.mode, COALESCE(l.relation::regclass::text, '')"
                    " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE NOT l.granted AND a.datname = current_database()"
                ).fetchall()
                events = conn.execute(
                    "SELECT COALESCE(wait_event_type, 'CPU'), COALESCE(wait_event, '') FROM pg_stat_activity"
                    " WHERE datname = current_database() AND state = 'active' AND pid <> %s",
                    (me,),
                ).fetchall()
                self.samples += 1
                self.samples_waiting += bool(waiting)
                self.max_waiting = max(self.max_waiting, len(waiting))
                self.waits.update("/".join(w) for w in waiting)
                self.wait_events.update(f"{kind}:{name}" for kind, name in events)

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "samples_with_a_lock_wait": self.samples_waiting,
            "max_waiting_at_once": self.max_waiting,
            "lock_waits": dict(self.waits.most_common(10)),
            "active_backend_wait_events": dict(self.wait_events.most_common(12)),
        }


def database_counters(url: str) -> dict[str, int]:
    """The run database's pg_stat_database counters: commits, rollbacks (a conflict retried by the
    submit writer is a rollback), deadlocks, and recovery conflicts (standbys only; 0 here)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, deadlocks, conflicts FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return dict(zip(("commits", "rollbacks", "deadlocks", "conflicts"), (int(v) for v in row), strict=True))


def backend_cpu_s(url: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to the run's database (from /proc: the server
    runs on this machine), so PostgreSQL's share of a request can be set beside nanogen's."""
    with psycopg.connect(url, autocommit=True) as conn:
        query = (
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        pids = [int(r[0]) for r in conn.execute(query).fetchall()]
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


PG_LOGS = Path("/var/log/postgresql")
CONFLICT_ERRORS = ("could not serialize access", "deadlock detected", "could not obtain lock")


class PostgresLog:
    """ERROR lines of the run's database written to PostgreSQL's own log since ``start()`` (a
    serialization failure or deadlock is logged there as an ERROR), when the log is on this machine and
    readable; None otherwise."""

    def __init__(self, database: str) -> None:
        self.tag = f"@{database} "
        files = sorted(PG_LOGS.glob("postgresql-*.log")) if os.access(PG_LOGS, os.R_OK) else []
        self.path = files[-1] if files and os.access(files[-1], os.R_OK) else None
        self.offset = 0

    def start(self) -> None:
        if self.path is not None:
            self.offset = self.path.stat().st_size

    def errors(self) -> list[str] | None:
        if self.path is None:
            return None
        with self.path.open("rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if self.tag in line and "ERROR:" in line]


@dataclass(frozen=True)
class Load:
    results: list[WrkResult]
    server_cpu_s: float  # every API process of the run, together
    postgres_cpu_s: float  # the database's backends
    counters: dict[str, int]  # pg_stat_database deltas
    locks: dict[str, Any]
    pg_errors: list[str] | None  # the database's ERROR lines in PostgreSQL's log (None: not readable)

    @property
    def conflicts(self) -> int:
        """Transactions PostgreSQL rolled back to resolve a conflict: deadlocks, and serialization
        failures (logged as ERRORs: pg_stat_database does not count them)."""
        logged = sum(1 for line in self.pg_errors or [] if any(e in line for e in CONFLICT_ERRORS))
        return max(self.counters["deadlocks"], logged)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.results)

    @property
    def rps(self) -> float:
        return sum(r.rps for r in self.results)

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu_s / max(1, self.requests) * 1e3

    @property
    def postgres_cpu_ms(self) -> float:
        return self.postgres_cpu_s / max(1, self.requests) * 1e3


def bench_two_apis(tmp: Path, pg_url: str, report: Report) -> None:
    """Two clients (an account each, 16 connections each) against one API process, then each against
    its own: server CPU per submit with two processes against one (what scale-out needs: no extra
    work per request when processes share the database), lock waits and conflict retries on the hot
    path during both runs, and PostgreSQL's own CPU per submit. One account's submits serialise on
    its balance row (the conditional debit that keeps credits exact holds it until commit), so one
    hot key does not scale with processes: the benchmark uses two, as a deployment with many clients
    has many. The requests/s ratio is printed but has no goal: on 2 cores, wrk, PostgreSQL and the
    API processes share them, so it measures the machine."""
    settings = {"DATABASE_URL": pg_url, "SANDBOX_LATENCY_S": str(SUBMIT_LATENCY_S)}
    servers = [api_only(nanogen_server(tmp / f"api{i}", **settings)) for i in range(2)]
    libpq = pg_url.replace("postgresql+psycopg://", "postgresql://")
    pg_log = PostgresLog(libpq.rsplit("/", 1)[1])
    try:
        for s in servers:
            s.start()
        keys = [new_account(servers[0], 10**12).key for _ in range(2)]

        def load(targets: list[Service], seconds: int) -> Load:
            def run(i: int) -> WrkResult:
                url = f"{targets[i].url}/api/nano-banana-2/generate"
                return wrk(url, IMAGE_BODY, keys[i], tmp, seconds, connections=16)

            distinct = list({id(t): t for t in targets}.values())
            pg_log.start()
            counters0, backends0 = database_counters(libpq), backend_cpu_s(libpq)
            cpu0 = sum(process_cpu_s(s) for s in distinct)
            with LockSampler(libpq) as locks, ThreadPoolExecutor(2) as pool:
                results = list(pool.map(run, range(2)))
            cpu = sum(process_cpu_s(s) for s in distinct) - cpu0
            backends = backend_cpu_s(libpq)
            pg_cpu = sum(t - backends0.get(pid, 0.0) for pid, t in backends.items())
            counters = database_counters(libpq)
            delta = {k: counters[k] - counters0[k] for k in counters}
            return Load(results, cpu, pg_cpu, delta, locks.summary(), pg_log.errors())

        load([servers[0], servers[0]], WARMUP_S)
        one = load([servers[0], servers[0]], WRK_SECONDS)
        load(servers, WARMUP_S)
        two = load(servers, WRK_SECONDS)
    finally:
        for s in servers:
            s.stop()
    cpu_ratio = two.cpu_ms / one.cpu_ms
    rps_ratio = two.rps / one.rps
    errors = sum(r.non2xx + r.socket_errors for r in [*one.results, *two.results])
    lock_waits = one.locks["samples_with_a_lock_wait"] + two.locks["samples_with_a_lock_wait"]
    retries = one.conflicts + two.conflicts
    pg_errors = None if one.pg_errors is None or two.pg_errors is None else [*one.pg_errors, *two.pg_errors]
    for name, load in (("one_api_process", one), ("two_api_processes", two)):
        report.emit(
            bench=name,
            clients=[r.summary() for r in load.results],
            submits_per_s=round(load.rps, 1),
            server_cpu_ms_per_submit=round(load.cpu_ms, 3),
            postgres_backend_cpu_ms_per_submit=round(load.postgres_cpu_ms, 3),
            pg_stat_database_delta=load.counters,
            locks=load.locks,
            postgres_log_errors=None if load.pg_errors is None else load.pg_errors[:10],
        )
    report.add(
        Row("2. server CPU per submit, 2 API processes vs 1", f"{two.cpu_ms:.3f} ms", f"{one.cpu_ms:.3f} ms",
            f"{cpu_ratio:.2f}x", "<= 1.15x", cpu_ratio <= 1.15 and errors == 0)
    )  # fmt: skip
    report.add(
        Row("   lock waits sampled (pg_locks, not granted)", str(lock_waits),
            f"{one.locks['samples'] + two.locks['samples']} samples", "", "0", lock_waits == 0)
    )  # fmt: skip
    seen = "PG log unread" if pg_errors is None else f"{len(pg_errors)} ERRORs in PG log"
    report.add(
        Row("   conflicts (deadlocks, serialization fails)", str(retries), seen, "", "0", retries == 0)
    )  # fmt: skip
    rollbacks = one.counters["rollbacks"] + two.counters["rollbacks"]
    commits = one.counters["commits"] + two.counters["commits"]
    report.add(Row("   transactions committed / rolled back", f"{commits} / {rollbacks}", "", "", ""))
    report.add(
        Row("   PostgreSQL backend CPU per submit", f"{two.postgres_cpu_ms:.3f} ms",
            f"{one.postgres_cpu_ms:.3f} ms", "", "")
    )  # fmt: skip
    report.add(
        Row("   submits/s, 2 vs 1 (measures the machine)", f"{two.rps:.0f}/s", f"{one.rps:.0f}/s",
            f"{rps_ratio:.2f}x", "")
    )  # fmt: skip
    estimate = sixteen_cores(two.cpu_ms, two.postgres_cpu_ms)
    report.emit(bench="sixteen_core_estimate", **estimate)
    report.add(
        Row("   expected on a 16-core box (see below)", f"{estimate['submits_per_s']:,.0f}/s",
            f"{estimate['api_processes']} API + {estimate['postgres_cores']} PG cores", "", "")
    )  # fmt: skip


def sixteen_cores(api_cpu_ms: float, postgres_cpu_ms: float, cores: int = 16) -> dict[str, Any]:
    """Submits/s on ``cores`` cores if CPU per request stays what it is here (scale-out adds none:
    the 2-vs-1 figure) and nothing waits on a lock (the counts above): the cores split between API
    processes (one core each) and PostgreSQL in proportion to their CPU per request, the load
    generator elsewhere, requests spread over accounts (one account's debits serialise on its
    balance row), and PostgreSQL's commit rate (one WAL flush per batch) not the bound."""
    per_request = api_cpu_ms + postgres_cpu_ms
    api = max(1, round(cores * api_cpu_ms / per_request))
    return {
        "cores": cores,
        "api_processes": api,
        "postgres_cores": cores - api,
        "submits_per_s": round(cores / per_request * 1e3),
        "assumes": "CPU per request as measured here; one core per API process; no lock waits; "
        "load generator on other machines; many accounts; PostgreSQL's commit rate not the bound",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["side-by-side", "scale-out"], help="run one of the two")
    args = parser.parse_args()
    report = Report()
    with terminated_on_sigterm(), tempfile.TemporaryDirectory(prefix="nanogen-bench-scale-") as name:
        tmp = Path(name)
        for key, label, bench in (
            ("side-by-side", "1 PostgreSQL vs SQLite", bench_side_by_side),
            ("scale-out", "2 two API processes", bench_two_apis),
        ):
            if args.only not in (None, key):
                continue
            try:
                database, url = postgres_database()
            except psycopg.OperationalError as exc:
                sys.exit(f"PostgreSQL at 127.0.0.1:5432 is needed: {exc}")
            try:
                timed(label, lambda bench=bench, url=url: bench(tmp, url, report))
            finally:
                drop_database(database)
    report.table()
    print(f"\n(on {HOST}; wrk on this machine; submit-only: sandbox latency {SUBMIT_LATENCY_S:.0f} s)")
    if args.only != "side-by-side":
        print(
            "16-core estimate: cores / (API + PostgreSQL CPU per submit), the cores split between API"
            " processes (one core each) and PostgreSQL in proportion; it assumes CPU per request as"
            " measured here (the 2-vs-1 figure says scale-out adds none), no lock waits (counted above),"
            " the load generator elsewhere, many accounts (one account's debits serialise on its balance"
            " row), and PostgreSQL's commit rate (one WAL flush per batch) not the bound."
        )


if __name__ == "__main__":
    main()
