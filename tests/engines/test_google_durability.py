"""Money at Google: a shot's operation is submitted once and survives kill -9; deadlines end waiting
(and refund); a call that may have been billed is not repeated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import Server, nanogen_cli, wait_for
from tests.engines.google_support import (
    admin_task,
    generate_image,
    generate_video,
    shot,
    wait_image,
    wait_video,
)
from tests.fakes.google_server import SLOW_S, FakeGoogle, Operation


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    fake = FakeGoogle()
    yield fake
    assert fake.failures == []
    fake.close()


def task_row(server: Server, task_id: str) -> tuple[str, str | None, int]:
    with server.db() as db:
        status, operation, attempts = db.execute(
            "SELECT status, provider_operation, attempts FROM nanogen_tasks WHERE id=?", (task_id,)
        ).fetchone()
    return status, operation, attempts


def test_kill_9_mid_operation_then_restart_polls_the_same_operation(fake: FakeGoogle, tmp_path: Path) -> None:
    server = Server(tmp_path, extra_env=fake.env()).start()
    account = server.new_account(100)
    prompt = "A ship in a bottle, macro shot [google:hold]"
    accepted = generate_video(account, [shot("s", prompt)])
    task_id = accepted["shots"][0]["taskId"]

    wait_for(lambda: task_row(server, task_id)[1] and len(fake.operations_for(prompt)) == 1)
    [operation] = fake.operations_for(prompt)
    wait_for(lambda: operation.polls >= 2)
    assert task_row(server, task_id)[1] == operation.name, "recorded before waiting on it"
    server.kill()
    polls_at_kill = operation.polls

    server.start()  # same home and executor id: DBOS recovers the workflow
    try:
        wait_for(lambda: operation.polls > polls_at_kill)  # polling resumed...
        assert len(fake.operations_for(prompt)) == 1, "...of the same operation"
        fake.release(prompt)
        final, _ = wait_video(account, accepted)
        assert final["status"] == "completed", final
        assert len(fake.requests_for(prompt, ":predictLongRunning")) == 1, "Google was asked exactly once"
        status, recorded, attempts = task_row(server, task_id)
        assert (status, recorded, attempts) == ("completed", operation.name, 2), "the wait ran twice"
        assert admin_task(server, task_id)["providerCostUsd"] == "3.200000", "one shot's cost, once"
        assert account.balance() == 90
        account.assert_books_balance()
        shown = nanogen_cli("credits", "show", account.id, env=server.env | {"COLUMNS": "200"})
        [row] = [line for line in shown.stdout.splitlines() if account.id in line]
        assert [cell.strip() for cell in row.split("│")[3:8]] == ["90", "100", "10", "0", "3.200000"], row
    finally:
        server.stop()


def test_an_operation_that_never_finishes_fails_at_the_deadline_and_is_refunded(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    env = {
        "NANOGEN_VIDEO_DEADLINE_S": "3",
        "NANOGEN_IMAGE_DEADLINE_S": "60",
        "NANOGEN_GOOGLE_REQUEST_TIMEOUT_S": "1",
    }
    server = Server(tmp_path, extra_env=fake.env(**env)).start()
    try:
        account = server.new_account(100)
        prompt = "An endless corridor [google:never]"
        accepted = generate_video(account, [shot("s", prompt)])
        final, _ = wait_video(account, accepted)
        [failed] = final["shots"]
        assert failed["status"] == "failed" and "deadline" in failed["error"], failed
        assert account.balance() == 100
        assert account.ledger_sums() == {"grant": 100, "debit": 10, "refund": 10}
        [operation] = fake.operations_for(prompt)
        wait_for(lambda: _settled(operation))  # nanogen stops polling once the task is over
        assert admin_task(server, failed["taskId"])["providerCostUsd"] == "3.200000", (
            "the operation was started: its cost is counted although the credits went back"
        )

        # A call that may have been billed is not made twice: Google answers after the 1 s timeout.
        slow = f"A slow answer that times out [google:slow] (after {SLOW_S}s)"
        accepted = generate_image(account, {"prompt": slow})
        final_image, _ = wait_image(account, accepted["generationId"])
        assert final_image["status"] == "failed"
        assert "not repeated, as Google may have billed it" in final_image["error"], final_image
        assert len(fake.requests_for(slow, ":generateContent")) == 1
        assert account.balance() == 100
    finally:
        server.stop()


def _settled(operation: Operation) -> bool:
    """True once nobody polled the operation for a second."""
    before = operation.polls
    time.sleep(1.0)
    return operation.polls == before
