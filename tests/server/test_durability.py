"""Durable tasks: kill -9 mid-generation and restart; deadlines; nothing stays pending forever."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import Account, Server, wait_for
from tests.databases import postgres_database


def task_rows(server: Server, account: Account) -> list[tuple[str, str, int, str | None]]:
    with server.db() as db:
        return db.execute(
            "SELECT id, status, attempts, error FROM nanogen_tasks WHERE account_id=? ORDER BY position",
            (account.id,),
        ).fetchall()


def test_kill_9_mid_generation_then_restart_finishes_every_task(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    account = server.new_account(1000)
    with account.client() as c:
        image = c.post("/api/nano-banana-2/generate", json={"prompt": "survivor [sandbox:slow=3]"}).json()
        video = c.post(
            "/api/veo-3/generate",
            json={
                "shots": [
                    {"id": f"s{i}", "prompt": f"shot {i} [sandbox:slow=3]", "generationType": "TEXT_2_VIDEO"}
                    for i in range(3)
                ]
            },
        ).json()
        failing = c.post(
            "/api/nano-banana-2/generate", json={"prompt": "x [sandbox:slow=3] [sandbox:fail]"}
        ).json()
    assert account.balance() == 1000 - 4 - 30 - 4
    # Mid-generation: every task started and its engine running (the attempt is counted first).
    wait_for(lambda: all(s == "generating" and n >= 1 for _, s, n, _ in task_rows(server, account)))
    server.kill()
    assert all(status == "generating" for _, status, _, _ in task_rows(server, account)), (
        "killed mid-generation"
    )

    server.start()  # same home, same executor id: DBOS recovers the interrupted workflows
    try:
        wait_for(lambda: all(s in ("completed", "failed") for _, s, _, _ in task_rows(server, account)))
        rows = {task_id: (status, attempts) for task_id, status, attempts, _ in task_rows(server, account)}
        assert rows[image["taskId"]] == ("completed", 2), "the interrupted render ran again, once"
        assert rows[failing["taskId"]][0] == "failed"
        assert all(rows[s["taskId"]][0] == "completed" for s in video["shots"])
        assert account.balance() == 1000 - 4 - 30, "only the failed task was refunded"
        assert account.ledger_sums() == {"grant": 1000, "debit": 38, "refund": 4}
        with account.client() as c:
            status = c.post("/api/veo-3/check-status", json={"taskIds": video["shots"]}).json()
        wait_for(lambda: _concatenated(account, video["shots"]))
        assert status["status"] in ("processing", "completed")
    finally:
        server.stop()


def _concatenated(account: Account, shots: list[dict[str, Any]]) -> bool:
    with account.client() as c:
        body = c.post("/api/veo-3/check-status", json={"taskIds": shots}).json()
    return body["status"] == "completed" and bool(body.get("concatenatedVideoUrl"))


def test_a_task_past_its_deadline_fails_and_is_refunded(tmp_path: Path) -> None:
    server = Server(tmp_path, extra_env={"NANOGEN_IMAGE_DEADLINE_S": "1.5"}).start()
    try:
        account = server.new_account(100)
        with account.client() as c:
            accepted = c.post(
                "/api/nano-banana-2/generate", json={"prompt": "never ends [sandbox:slow=600]"}
            ).json()

            def failed() -> dict[str, Any] | None:
                body: dict[str, Any] = c.post(
                    "/api/nano-banana-2/check-status", json={"generationId": accepted["generationId"]}
                ).json()
                return body if body["status"] == "failed" else None

            final = wait_for(failed)
        assert "deadline" in final["error"]
        assert account.balance() == 100
        assert account.ledger_sums() == {"grant": 100, "debit": 4, "refund": 4}
    finally:
        server.stop()


def test_a_task_whose_deadline_passed_while_the_server_was_down_is_refunded_on_start(tmp_path: Path) -> None:
    server = Server(tmp_path, extra_env={"NANOGEN_IMAGE_DEADLINE_S": "2"}).start()
    account = server.new_account(100)
    with account.client() as c:
        c.post("/api/nano-banana-2/generate", json={"prompt": "stuck [sandbox:slow=600]"})
    wait_for(lambda: task_rows(server, account)[0][1] == "generating")
    server.kill()
    server.start()
    try:
        wait_for(lambda: task_rows(server, account)[0][1] == "failed")
        assert account.balance() == 100
        account.assert_books_balance()
    finally:
        server.stop()


def test_sigterm_lets_a_running_generation_finish_within_the_grace_period(tmp_path: Path) -> None:
    # A stop closes the queues at once and gives the jobs already running the grace period
    # (NANOGEN_SHUTDOWN_GRACE_S, looked at every 50 ms): the running image completes before the
    # process exits, charged once.
    server = Server(tmp_path, extra_env={"NANOGEN_SHUTDOWN_GRACE_S": "60"}).start()
    account = server.new_account(100)
    with account.client() as c:
        image = {"prompt": "finish me [sandbox:slow=3]"}
        c.post("/api/nano-banana-2/generate", json=image).raise_for_status()
        wait_for(lambda: task_rows(server, account)[0][1] == "generating")
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    # uvicorn raises the signal again once it has shut down (0 where the shell ignores SIGTERM).
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM), "the server stops on SIGTERM"
    assert [status for _, status, _, _ in task_rows(server, account)] == ["completed"]
    server.start()
    try:
        assert account.balance() == 96
        account.assert_books_balance()
    finally:
        server.stop()


def test_api_only_server_with_a_separate_worker_process(tmp_path: Path) -> None:
    # Several processes on one database is PostgreSQL's job (one SQLite data directory takes one process).
    with postgres_database("split") as url:
        _api_and_worker(tmp_path, url)


def _api_and_worker(tmp_path: Path, url: str) -> None:
    server = Server(tmp_path, database_url=url, args=("--no-worker",)).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        account = server.new_account(100)
        with account.client() as c:
            accepted = c.post(
                "/api/veo-3/generate",
                json={
                    "shots": [
                        {"id": "a", "prompt": "worker one", "generationType": "TEXT_2_VIDEO"},
                        {"id": "b", "prompt": "worker two", "generationType": "TEXT_2_VIDEO"},
                    ]
                },
            ).json()
        time.sleep(1.0)
        assert {s for _, s, _, _ in task_rows(server, account)} == {"pending"}, "the API process runs nothing"
        env = server.env | {"NANOGEN_EXECUTOR_ID": "test-worker"}
        with open(tmp_path / "worker.log", "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "nanogen", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: _concatenated(account, accepted["shots"]))
        assert account.balance() == 80
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, "the worker stops cleanly on SIGTERM"
        server.stop()
