"""A job frees its worker slot when its task ends: at the task's deadline, or when another process
ends the task. A free ``[sandbox:slow=...]`` prompt must not hold a worker thread past its task, or
one key could stall every other account's work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server, wait_for

GENERATE = "/api/nano-banana-2/generate"
STATUS = "/api/nano-banana-2/check-status"


def _submit(c: httpx.Client, prompt: str) -> str:
    r = c.post(GENERATE, json={"prompt": prompt, "imageQuality": "1K"})
    assert r.status_code == 200, r.text
    generation_id: str = r.json()["generationId"]
    return generation_id


def _status(c: httpx.Client, generation_id: str) -> dict[str, Any]:
    body: dict[str, Any] = c.post(STATUS, json={"generationId": generation_id}).json()
    return body


def _ended(c: httpx.Client, generation_id: str) -> dict[str, Any] | None:
    body = _status(c, generation_id)
    return body if body["status"] in ("completed", "failed") else None


def test_slow_jobs_past_their_deadline_free_their_threads_for_other_accounts(tmp_path: Path) -> None:
    server = Server(
        tmp_path, extra_env={"NANOGEN_MAX_EXECUTOR_THREADS": "4", "NANOGEN_IMAGE_DEADLINE_S": "3"}
    ).start()
    try:
        hog, other = server.new_account(100), server.new_account(100)
        with hog.client() as c:
            slow = [_submit(c, f"hog {i} [sandbox:slow=100000]") for i in range(6)]
            # Every executor thread is taken by a job that would sleep for a day.
            wait_for(lambda: sum(_status(c, g)["status"] == "generating" for g in slow) >= 4)
            finals = [wait_for(lambda g=g: _ended(c, g)) for g in slow]  # type: ignore[misc]
        assert all(f["status"] == "failed" and "deadline" in f["error"] for f in finals), finals
        # Submitted after the hog's tasks ended, with a fresh 3 s deadline: it completes only if the
        # threads those jobs held were freed (before the fix they slept on and this one failed).
        with other.client() as c:
            mine = _submit(c, "an ordinary picture")
            final = wait_for(lambda: _ended(c, mine))
        assert final["status"] == "completed", final
        assert hog.balance() == 100 and other.balance() == 96
        hog.assert_books_balance()
    finally:
        server.stop()


def test_a_job_whose_task_another_process_ended_stops_and_frees_its_thread(tmp_path: Path) -> None:
    server = Server(tmp_path, extra_env={"NANOGEN_MAX_EXECUTOR_THREADS": "4"}).start()
    try:
        account = server.new_account(100)
        with account.client() as c:
            slow = [_submit(c, f"long {i} [sandbox:slow=100000]") for i in range(4)]
            wait_for(lambda: all(_status(c, g)["status"] == "generating" for g in slow))
            # What a cancel or a watchdog in another process does: the task row ends, refunded.
            with server.db() as db:
                db.execute(
                    "UPDATE nanogen_tasks SET status='failed', error='Ended elsewhere' "
                    "WHERE generation_id IN (?, ?, ?, ?)",
                    tuple(slow),
                )
            after = _submit(c, "next in line")
            final = wait_for(lambda: _ended(c, after))
        # Completes only if the watchdog stopped the four jobs (their deadline is ten minutes away).
        assert final["status"] == "completed", final
    finally:
        server.stop()
