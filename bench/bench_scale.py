"""Scale-out benchmarks on PostgreSQL (127.0.0.1:5432, a database of the run's own), each against a
baseline measured in the same run. Run with ``bench/run`` or ``.venv/bin/python bench/bench_scale.py``.

1. submit (image generate, submit-only) and check-status, ``nanogen serve`` on PostgreSQL side by
   side with the same benchmark on the embedded SQLite default.
2. submits/s with 2 API processes (``nanogen serve --no-worker``) against 1, on PostgreSQL: the same
   load both times, two clients of 16 connections with an account each (one hot account serialises
   on its balance row whatever the number of processes), the load generator on the same 2 cores
   (goal >= 1.5x). Per-process server CPU per submit is printed, which is what a
   bigger machine divides among more cores.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from bench_server import (
    HOST,
    IMAGE_BODY,
    SUBMIT_LATENCY_S,
    Report,
    Row,
    Service,
    WrkResult,
    client,
    measured,
    nanogen_server,
    new_account,
    terminated_on_sigterm,
    timed,
    wait_image,
    wrk,
)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WARMUP_S = 2


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


def bench_two_apis(tmp: Path, pg_url: str, report: Report) -> None:
    """Two clients (an account each, 16 connections each) against one API process, then each against
    its own. One account's submits serialise on its balance row (the conditional debit that keeps
    credits exact holds it until commit), so one hot key does not scale with processes: the
    benchmark uses two, as a deployment with many clients has many."""
    settings = {"DATABASE_URL": pg_url, "SANDBOX_LATENCY_S": str(SUBMIT_LATENCY_S)}
    servers = [api_only(nanogen_server(tmp / f"api{i}", **settings)).start() for i in range(2)]
    try:
        keys = [new_account(servers[0], 10**12).key for _ in range(2)]

        def clients(targets: list[Service], seconds: int = 0) -> list[WrkResult]:
            def run(i: int) -> WrkResult:
                url = f"{targets[i].url}/api/nano-banana-2/generate"
                if seconds:
                    return wrk(url, IMAGE_BODY, keys[i], tmp, seconds, connections=16)
                return measured(targets[i], lambda: wrk(url, IMAGE_BODY, keys[i], tmp, connections=16))

            with ThreadPoolExecutor(2) as pool:
                return list(pool.map(run, range(2)))

        clients([servers[0], servers[0]], WARMUP_S)
        one_pair = clients([servers[0], servers[0]])
        clients(servers, WARMUP_S)
        two = clients(servers)
    finally:
        for s in servers:
            s.stop()
    one = one_pair[0]  # both measured the same process: its CPU counts once
    one_rps = sum(r.rps for r in one_pair)
    total = sum(r.rps for r in two)
    ratio = total / one_rps
    report.emit(
        bench="two_api_processes",
        one=[r.summary() for r in one_pair],
        two=[r.summary() for r in two],
        ratio=round(ratio, 3),
    )
    report.add(
        Row("2. submits/s, 2 API processes vs 1 (PG)", f"{total:.0f}/s", f"{one_rps:.0f}/s", f"{ratio:.2f}x",
            ">= 1.5x", ratio >= 1.5 and all(r.non2xx == 0 for r in [*one_pair, *two]))
    )  # fmt: skip
    cpu = sum(r.server_cpu_s for r in two) / max(1, sum(r.requests for r in two)) * 1e3
    one_cpu = one.server_cpu_s / max(1, sum(r.requests for r in one_pair)) * 1e3
    report.add(Row("   server CPU per submit (2 vs 1)", f"{cpu:.2f} ms", f"{one_cpu:.2f} ms", "", ""))


def main() -> None:
    report = Report()
    with terminated_on_sigterm(), tempfile.TemporaryDirectory(prefix="nanogen-bench-scale-") as name:
        tmp = Path(name)
        try:
            database, url = postgres_database()
        except psycopg.OperationalError as exc:
            sys.exit(f"PostgreSQL at 127.0.0.1:5432 is needed: {exc}")
        try:
            timed("1 PostgreSQL vs SQLite", lambda: bench_side_by_side(tmp, url, report))
        finally:
            drop_database(database)
        database, url = postgres_database()
        try:
            timed("2 two API processes", lambda: bench_two_apis(tmp, url, report))
        finally:
            drop_database(database)
    report.table()
    print(f"\n(on {HOST}; wrk on this machine; submit-only: sandbox latency {SUBMIT_LATENCY_S:.0f} s)")


if __name__ == "__main__":
    main()
