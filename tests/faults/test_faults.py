"""Fault injection on the scaled-out topology (PostgreSQL; API and worker processes apart).

Each round ends with ``check_invariants``: every task terminal or progressing before its deadline;
per account, balance = grants - debits + refunds; no task charged, refunded or completed twice; no
money moved without a task. The sandbox spends no money at a provider, so the only thing a crash
may repeat is a local render: those re-runs are counted (``Books.rerenders``) and printed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Account, Server, wait_for
from tests.databases import postgres_database
from tests.faults.cluster import PrivatePostgres, Worker, all_terminal, available, check_invariants

FAST = {
    "NANOGEN_SANDBOX_LATENCY_S": "0.6",
    "NANOGEN_IMAGE_QUEUE_POLLING_INTERVAL_S": "0.1",
    "NANOGEN_VIDEO_QUEUE_POLLING_INTERVAL_S": "0.1",
    "NANOGEN_RATE_LIMIT_GENERATE": "100000/hour",
}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database("faults") as url:
        yield url


def image(c: httpx.Client, prompt: str) -> httpx.Response:
    return c.post("/api/nano-banana-2/generate", json={"prompt": prompt})


def video(c: httpx.Client, prompt: str, shots: int = 2) -> httpx.Response:
    body = {
        "shots": [
            {"id": f"s{i}", "prompt": f"{prompt} {i}", "generationType": "TEXT_2_VIDEO"} for i in range(shots)
        ]
    }
    return c.post("/api/veo-3/generate", json=body)


def test_kill_9_a_worker_at_random_points_20_rounds(tmp_path: Path, pg_url: str) -> None:
    api = Server(tmp_path, database_url=pg_url, args=("--no-worker",), extra_env=FAST).start()
    worker = Worker(api, "faults-worker-1").start()
    rng = random.Random(20261123)
    try:
        account = api.new_account(100_000)
        with account.client() as c:
            for round_no in range(20):
                assert image(c, f"round {round_no} image").status_code == 200
                assert video(c, f"round {round_no} video").status_code == 200
                if round_no % 4 == 3:  # some fail: their refunds must survive the crashes too
                    assert image(c, f"round {round_no} [sandbox:fail]").status_code == 200
                time.sleep(rng.uniform(0.2, 2.0))
                worker.kill()
                worker.start()  # same executor id: DBOS recovers what the killed one had
        all_terminal(api.db)
        with api.db() as db:
            books = check_invariants(db)
        assert books.tasks == 20 * 3 + 5
        assert books.failed == 5, "only the marked tasks failed"
        print(f"\n20 kill -9 rounds: {books}")
    finally:
        worker.stop()
        api.stop()


def test_kill_9_an_api_process_with_requests_in_flight(tmp_path: Path, pg_url: str) -> None:
    """A client either got an answer (and its task exists and is paid for), or got none. A request
    whose transaction committed just before the kill is paid for and runs although its answer was
    lost (no server can prevent that); no money ever moves without a task. Eight clients send back to
    back until the server has answered a few dozen requests, so nearly every one has a request in flight
    at the kill. (The kill waits for answers, not for a clock: on a loaded machine a fixed second once
    went by before the first answer. Two seconds of load made ~1,500 images, half a minute of rendering
    for the worker after the test's point, hence the small count.)"""
    api = Server(tmp_path, database_url=pg_url, args=("--no-worker",), extra_env=FAST).start()
    worker = Worker(api, "faults-worker-api").start()
    try:
        account = api.new_account(100_000)
        answered: list[dict[str, Any]] = []
        cut: list[str] = []  # requests sent before the kill that got no answer
        after: list[str] = []  # requests sent after it (refused, or on a connection it closed)
        killing, stop = threading.Event(), threading.Event()

        def client_loop(n: int) -> None:
            with account.client() as c:
                while not stop.is_set():
                    before_the_kill = not killing.is_set()
                    try:
                        r = image(c, f"in flight {n} {time.monotonic_ns()}")
                    except httpx.HTTPError as exc:
                        (cut if before_the_kill else after).append(type(exc).__name__)
                        time.sleep(0.05)
                        continue
                    if r.status_code == 200:
                        answered.append(r.json())

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client_loop, n) for n in range(8)]
            try:
                wait_for(lambda: len(answered) >= 40, interval=0.01)
            except AssertionError:
                stop.set()  # the clients stop, so the failed wait is what is reported
                raise
            killing.set()
            api.kill()
            time.sleep(0.5)
            stop.set()
            for f in futures:
                f.result()
        assert cut, f"the kill broke requests in flight ({len(after)} sent after it failed)"
        api.start()
        all_terminal(api.db)
        with api.db() as db:
            books = check_invariants(db)
            known = {r[0] for r in db.execute("SELECT generation_id FROM nanogen_tasks").fetchall()}
        assert answered, "requests were answered before the kill"
        assert {a["generationId"] for a in answered} <= known, "every answered request has its task"
        print(
            f"\nAPI kill: {len(answered)} answered, {len(cut)} cut in flight ({sorted(set(cut))}), "
            f"{len(after)} sent after the kill failed, {books.tasks - len(answered)} committed without an "
            "answer reaching the client; books balance"
        )
    finally:
        worker.stop()
        api.stop()


def test_a_thousand_concurrent_submits_from_several_processes_exactly_100_accepted(
    tmp_path: Path, pg_url: str
) -> None:
    env = FAST | {"NANOGEN_SANDBOX_LATENCY_S": "3600"}  # nothing finishes, nothing is refunded
    first = Server(tmp_path / "a", database_url=pg_url, args=("--no-worker",), extra_env=env).start()
    second = Server(
        tmp_path / "b",
        database_url=pg_url,
        args=("--no-worker",),
        extra_env=env | {"NANOGEN_EXECUTOR_ID": "api-b"},
    ).start()
    try:
        account = first.new_account(100 * 4)  # exactly 100 one-K images

        def burst(server: Server) -> list[int]:
            with (
                httpx.Client(
                    base_url=server.base_url,
                    headers={"Authorization": f"Bearer {account.key}"},
                    timeout=120,
                    # Idle connections are dropped before the server's keep-alive timeout (5 s) would
                    # close them: reusing one the server is closing just then reads a reset, on a
                    # machine loaded enough that a connection sits idle that long.
                    limits=httpx.Limits(max_connections=64, keepalive_expiry=2),
                ) as c,
                ThreadPoolExecutor(32) as pool,
            ):
                return list(pool.map(lambda i: image(c, f"burst {i}").status_code, range(250)))

        # Four client processes' worth of load (threads here), over two API processes.
        with ThreadPoolExecutor(4) as clients:
            statuses = [s for batch in clients.map(burst, [first, second, first, second]) for s in batch]
        assert len(statuses) == 1000
        assert statuses.count(200) == 100
        assert statuses.count(402) == 900
        assert account.balance() == 0
        with first.db() as db:
            check_invariants(db, allow_open=True)
            (tasks,) = db.execute(
                "SELECT COUNT(*) FROM nanogen_tasks WHERE account_id = ?", (account.id,)
            ).fetchone()
        assert int(tasks) == 100
    finally:
        second.stop()
        first.stop()


@pytest.mark.skipif(not available(), reason="needs PostgreSQL's binaries and root to run a private cluster")
def test_database_outage_answers_503_then_recovers_and_loses_nothing(tmp_path: Path) -> None:
    pg = PrivatePostgres()
    try:
        url = pg.create_database("nanogen")
        server = Server(tmp_path, database_url=url, extra_env=FAST).start()
        try:
            account = server.new_account(100_000)
            accepted: list[str] = []
            seen: dict[int, int] = {}
            stop = threading.Event()

            def load() -> None:
                with account.client() as c:
                    while not stop.is_set():
                        try:
                            r = image(c, f"outage {time.monotonic_ns()}")
                        except httpx.HTTPError:
                            continue
                        seen[r.status_code] = seen.get(r.status_code, 0) + 1
                        assert r.headers["content-type"].startswith("application/json"), r.text
                        if r.status_code == 200:
                            accepted.append(r.json()["generationId"])
                        else:
                            assert r.status_code == 503, r.text
                            assert r.json()["errorCode"] == "SERVICE_UNAVAILABLE"
                        time.sleep(0.05)

            threads = [threading.Thread(target=load) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(2)
            pg.stop()
            time.sleep(4)
            pg.start()
            time.sleep(6)
            stop.set()
            for t in threads:
                t.join(60)
            assert seen.get(503, 0) > 0, f"the outage was seen as 503 (statuses: {seen})"
            assert 500 not in seen
            with account.client() as c:
                wait_for(lambda: image(c, "after the outage").status_code == 200)
            all_terminal(server.db)
            with server.db() as db:
                books = check_invariants(db)
                done = {
                    g
                    for (g,) in db.execute(
                        "SELECT generation_id FROM nanogen_tasks WHERE status = 'completed'"
                    ).fetchall()
                }
                failures = db.execute(
                    "SELECT generation_id, error FROM nanogen_tasks WHERE status = 'failed'"
                ).fetchall()
            assert set(accepted) <= done, f"every accepted request completed; failed: {failures}"
            print(f"\ndatabase outage: statuses {seen}; {books}")
        finally:
            server.stop()
    finally:
        pg.close()


@pytest.fixture
def private_pg_url() -> Iterator[str]:
    """A database on a PostgreSQL cluster of the test's own: four processes' connection pools
    need more connections than the shared server's default 100 leaves to one test."""
    if not available():
        pytest.skip("needs PostgreSQL's binaries and root to run a private cluster")
    pg = PrivatePostgres()
    try:
        yield pg.create_database("nanogen")
    finally:
        pg.close()


def test_two_apis_two_workers_mixed_load_loses_nothing(tmp_path: Path, private_pg_url: str) -> None:
    pg_url = private_pg_url
    apis = [
        Server(tmp_path / f"api{i}", database_url=pg_url, args=("--no-worker",),
               extra_env=FAST | {"NANOGEN_EXECUTOR_ID": f"api-{i}"}).start()
        for i in range(2)
    ]  # fmt: skip
    workers = [Worker(apis[0], f"mixed-worker-{i}").start() for i in range(2)]
    try:
        accounts = [apis[0].new_account(100_000) for _ in range(3)]
        accepted: list[str] = []
        # Three seconds of load from six clients (over a hundred requests, a third of them 2-shot
        # videos): enough for both workers and both APIs to interleave (five seconds made a minute of
        # sandbox work, and the test took 150 s of the suite; 3-shot videos left the workers ~37 s of
        # rendering and joining after the load).
        deadline = time.monotonic() + 3

        def run(account: Account, server: Server) -> None:
            with server.client(account.key) as c:
                n = 0
                while time.monotonic() < deadline:
                    r = video(c, f"mixed {n}", shots=2) if n % 3 == 0 else image(c, f"mixed {n}")
                    assert r.status_code == 200, r.text
                    accepted.append(r.json()["generationId"])
                    n += 1
                    time.sleep(0.1)

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: run(accounts[i % 3], apis[i % 2]), range(6)))
        all_terminal(apis[0].db)
        with apis[1].db() as db:
            books = check_invariants(db)
            completed = {
                g for (g,) in db.execute("SELECT generation_id FROM nanogen_tasks WHERE status = 'completed'")
            }
            ran_on = {
                e for (e,) in db.execute("SELECT DISTINCT executor_id FROM dbos.workflow_status").fetchall()
            }
        assert set(accepted) <= completed, "zero lost tasks"
        assert {"mixed-worker-0", "mixed-worker-1"} <= ran_on, "both workers took work"
        print(f"\nmixed load: {len(accepted)} requests; {books}")
    finally:
        for w in workers:
            w.stop()
        for a in apis:
            a.stop()


def test_one_account_cannot_starve_the_others(tmp_path: Path, pg_url: str) -> None:
    env = FAST | {
        "NANOGEN_ACCOUNT_CONCURRENCY": "2",
        "NANOGEN_IMAGE_CONCURRENCY": "4",
        "NANOGEN_SANDBOX_LATENCY_S": "3",
    }
    server = Server(tmp_path, database_url=pg_url, extra_env=env).start()
    try:
        greedy, modest = server.new_account(1000), server.new_account(1000)
        with greedy.client() as c:
            for i in range(8):
                assert image(c, f"greedy {i}").status_code == 200
        with modest.client() as c:
            assert image(c, "modest").status_code == 200

        def generating(account: Account) -> int:
            with server.db() as db:
                (n,) = db.execute(
                    "SELECT COUNT(*) FROM nanogen_tasks WHERE account_id = ? AND status = 'generating'",
                    (account.id,),
                ).fetchone()
            return int(n)

        peak = 0

        def modest_started() -> bool:
            nonlocal peak
            peak = max(peak, generating(greedy))
            with server.db() as db:
                (status,) = db.execute(
                    "SELECT status FROM nanogen_tasks WHERE account_id = ?", (modest.id,)
                ).fetchone()
            return bool(status != "pending")

        wait_for(modest_started, interval=0.2)
        assert peak <= 2, "no more than the per-account cap of one account's tasks run at once"
        all_terminal(server.db)
        with server.db() as db:
            check_invariants(db)
    finally:
        server.stop()
