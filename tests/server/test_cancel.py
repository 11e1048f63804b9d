"""``POST /api/generations/{generationId}/cancel``: work not yet done stops and is refunded exactly once,
what completed is kept, on SQLite and PostgreSQL.

The server here has few executor threads (12) and its deadline watchdog effectively off (an hour between
sweeps): a job still running after a cancel would hold its thread, and only the cancel itself can stop
it. So the engine's running-jobs gauge falling to 0, and 12 new jobs all running at once afterwards,
prove the cancel stopped the work and freed every slot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nanogen import errors
from nanogen.client import AsyncClient, Client
from tests.conftest import Account, Server, assert_envelope, nanogen_cli, wait_for
from tests.databases import postgres_admin, postgres_database

METRICS_TOKEN = "metrics-token-for-the-cancel-tests"
IMAGE = "/api/nano-banana-2"
VIDEO = "/api/veo-3"
SHOT_CREDITS = 10  # 720p
IMAGE_CREDITS = 4  # 1K
FAST, SLOW = "[sandbox:slow=0]", "[sandbox:slow=600]"
# For canceled jobs to stop or new ones to start: well below SLOW's 600 s and the hourly sweep.
JOBS_SETTLE_S = 120
THREADS = 12  # the 11 slow shots of the big test hold 11; the fast ones go through the last one


@pytest.fixture(scope="module")
def canceling(tmp_path_factory: pytest.TempPathFactory, database_url: str | None) -> Iterator[Server]:
    """A server of the module's own (on PostgreSQL a database of its own: a second process may not
    share the session server's executor id)."""
    env = {
        "NANOGEN_MAX_EXECUTOR_THREADS": str(THREADS),
        "NANOGEN_VIDEO_CONCURRENCY": str(THREADS),
        "NANOGEN_IMAGE_CONCURRENCY": str(THREADS),
        "NANOGEN_WATCHDOG_INTERVAL_S": "3600",
        "NANOGEN_METRICS_TOKEN": METRICS_TOKEN,
    }
    with contextlib.ExitStack() as stack:
        url = None if database_url is None else stack.enter_context(postgres_database("cancel"))
        server = Server(tmp_path_factory.mktemp("cancel"), extra_env=env, database_url=url).start()
        yield server
        server.stop()


def _video(c: httpx.Client, prompts: list[str]) -> dict[str, Any]:
    shots = [{"id": f"s{i}", "prompt": p, "generationType": "TEXT_2_VIDEO"} for i, p in enumerate(prompts)]
    r = c.post(f"{VIDEO}/generate", json={"shots": shots})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _image(c: httpx.Client, prompt: str) -> str:
    r = c.post(f"{IMAGE}/generate", json={"prompt": prompt, "imageQuality": "1K"})
    assert r.status_code == 200, r.text
    generation_id: str = r.json()["generationId"]
    return generation_id


def _video_status(c: httpx.Client, generation_id: str) -> dict[str, Any]:
    r = c.post(f"{VIDEO}/check-status", json={"generationId": generation_id})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _image_status(c: httpx.Client, generation_id: str) -> dict[str, Any]:
    r = c.post(f"{IMAGE}/check-status", json={"generationId": generation_id})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _cancel(c: httpx.Client, generation_id: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return c.post(f"/api/generations/{generation_id}/cancel", json=body)


def _refunds(account: Account) -> dict[str, int]:
    """Refund entries per task of the account."""
    with account.server.db() as db:
        rows = db.execute(
            "SELECT task_id, COUNT(*) FROM nanogen_ledger WHERE account_id=? AND kind='refund' "
            "GROUP BY task_id",
            (account.id,),
        ).fetchall()
    return {task_id: int(count) for task_id, count in rows}


def _task_ids(account: Account, generation_ids: list[str]) -> list[str]:
    with account.server.db() as db:
        marks = ",".join("?" for _ in generation_ids)
        rows = db.execute(
            f"SELECT id FROM nanogen_tasks WHERE generation_id IN ({marks})", tuple(generation_ids)
        ).fetchall()
    return [r[0] for r in rows]


def _jobs_running(server: Server) -> float:
    with server.client(METRICS_TOKEN) as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    return sum(
        s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == "nanogen_jobs_running"
    )


def test_a_21_shot_video_canceled_with_10_done_keeps_10_and_refunds_11_once(canceling: Server) -> None:
    account = canceling.new_account(1000)
    with account.client() as c:
        accepted = _video(c, [f"kept {i} {FAST}" for i in range(10)] + [f"cut {i} {SLOW}" for i in range(11)])
        generation_id = accepted["generationId"]
        assert account.balance() == 1000 - 21 * SHOT_CREDITS

        def ten_done_and_slow_ones_running() -> dict[str, Any] | None:
            state = _video_status(c, generation_id)
            shots = state["shots"]
            done = sum(s["status"] == "completed" for s in shots)
            # The queue takes shots in no set order: every slow one runs once the fast ones are done.
            return state if done == 10 and _jobs_running(canceling) == 11 else None

        wait_for(ten_done_and_slow_ones_running)

        r = _cancel(c, generation_id)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["generationId"] == generation_id and answer["product"] == "video"
        assert answer["status"] == "failed"
        assert answer["creditsRefunded"] == 11 * SHOT_CREDITS
        cut_ids = [s["taskId"] for s in accepted["shots"][10:]]
        assert sorted(answer["canceledTaskIds"]) == sorted(cut_ids)

        state = _video_status(c, generation_id)
        assert state["status"] == "failed" and "concatenatedVideoUrl" not in state
        for shot in state["shots"][:10]:
            assert shot["status"] == "completed" and shot["videoUrl"], shot
        for shot in state["shots"][10:]:
            assert shot["status"] == "failed" and shot["error"] == "Canceled", shot

        # Stopped by the cancel itself (the watchdog sweeps once an hour here, and the slow jobs would
        # run ten minutes): every thread is free again, so as many new jobs as there are threads all
        # run at once. The bounds are generous (a slow day's loaded machine took over 10 s), and still
        # far below either.
        wait_for(lambda: _jobs_running(canceling) == 0, JOBS_SETTLE_S)
        fresh = [_image(c, f"after the cancel {i} {SLOW}") for i in range(THREADS)]
        wait_for(lambda: _jobs_running(canceling) == THREADS, JOBS_SETTLE_S)
        for generation_id in fresh:
            assert _cancel(c, generation_id).json()["creditsRefunded"] == IMAGE_CREDITS
        wait_for(lambda: _jobs_running(canceling) == 0, JOBS_SETTLE_S)

        # A second cancel: nothing left. Each canceled task refunded once, the kept ones never.
        assert_envelope(_cancel(c, generation_id), 409, "ALREADY_ENDED")
    assert _refunds(account) == {task_id: 1 for task_id in cut_ids} | {
        task_id: 1 for task_id in _task_ids(account, fresh)
    }
    assert account.balance() == 1000 - 10 * SHOT_CREDITS
    account.assert_books_balance()


def test_cancel_some_shots_then_the_rest(canceling: Server) -> None:
    account = canceling.new_account(1000)
    with account.client() as c:
        accepted = _video(c, [f"shot {i} {SLOW}" for i in range(3)])
        generation_id = accepted["generationId"]
        r = _cancel(c, generation_id, {"shotIds": ["s1"]})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["creditsRefunded"] == SHOT_CREDITS and answer["status"] == "processing"
        assert answer["canceledTaskIds"] == [accepted["shots"][1]["taskId"]]
        assert [s["status"] for s in answer["shots"]] == ["processing", "failed", "processing"]
        assert answer["shots"][1]["error"] == "Canceled"

        assert_envelope(_cancel(c, generation_id, {"shotIds": ["s1"]}), 409, "ALREADY_ENDED")
        assert_envelope(_cancel(c, generation_id, {"shotIds": ["s9"]}), 400, "INVALID_PARAMETER")
        assert_envelope(_cancel(c, generation_id, {"shotIds": []}), 400, "INVALID_PARAMETER")
        assert_envelope(_cancel(c, generation_id, {"shotIds": "s0"}), 400, "INVALID_PARAMETER")
        assert_envelope(_cancel(c, "gen_unknown"), 404, "NOT_FOUND")
        with canceling.new_account(10).client() as other:
            assert_envelope(_cancel(other, generation_id), 404, "NOT_FOUND")

        r = c.post(f"/api/generations/{generation_id}/cancel")  # no body: everything left
        assert r.status_code == 200, r.text
        assert r.json()["creditsRefunded"] == 2 * SHOT_CREDITS and r.json()["status"] == "failed"
    assert account.balance() == 1000
    assert sorted(_refunds(account)) == sorted(s["taskId"] for s in accepted["shots"])
    assert set(_refunds(account).values()) == {1}
    account.assert_books_balance()


def test_an_image_cancel_and_shot_ids_refused_for_images(canceling: Server) -> None:
    account = canceling.new_account(100)
    with account.client() as c:
        generation_id = _image(c, f"a long picture {SLOW}")
        assert_envelope(_cancel(c, generation_id, {"shotIds": ["s0"]}), 400, "INVALID_PARAMETER")
        r = _cancel(c, generation_id)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "generationId": generation_id,
            "product": "image",
            "status": "failed",
            "creditsRefunded": IMAGE_CREDITS,
            "canceledTaskIds": r.json()["canceledTaskIds"],
        }
        state = _image_status(c, generation_id)
        assert state["status"] == "failed" and state["error"] == "Canceled"
        done = _image(c, f"a quick one {FAST}")
        wait_for(lambda: _image_status(c, done)["status"] == "completed")
        assert_envelope(_cancel(c, done), 409, "ALREADY_ENDED")
    assert account.balance() == 100 - IMAGE_CREDITS
    account.assert_books_balance()


def test_cancel_racing_completion_never_refunds_a_completed_task(canceling: Server) -> None:
    """Cancels sent while fast images are finishing: each task ends exactly one way, and only a
    canceled one is refunded (once)."""
    account = canceling.new_account(1000)
    with account.client() as c:
        ids = [_image(c, f"race {i} {FAST}") for i in range(THREADS)]
        # Once the first has completed, the others are finishing: cancel them all at once.
        wait_for(lambda: any(_image_status(c, g)["status"] == "completed" for g in ids))
        with ThreadPoolExecutor(len(ids)) as pool:
            answers = dict(zip(ids, pool.map(lambda g: _cancel(c, g), ids), strict=True))
        finals = {g: wait_for(lambda g=g: _finished(c, g)) for g in ids}  # type: ignore[misc]
    refunds = _refunds(account)
    completed = [g for g, s in finals.items() if s["status"] == "completed"]
    canceled = [g for g, s in finals.items() if s["status"] == "failed"]
    assert len(completed) + len(canceled) == len(ids) and completed
    for g in canceled:
        assert finals[g]["error"] == "Canceled"
        assert answers[g].status_code == 200 and answers[g].json()["creditsRefunded"] == IMAGE_CREDITS
    for g in completed:
        assert answers[g].status_code == 409, answers[g].text
        assert answers[g].json()["errorCode"] == "ALREADY_ENDED"
    assert len(refunds) == len(canceled) and set(refunds.values()) <= {1}
    assert account.balance() == 1000 - IMAGE_CREDITS * len(completed)
    account.assert_books_balance()


def _finished(c: httpx.Client, generation_id: str) -> dict[str, Any] | None:
    state = _image_status(c, generation_id)
    return state if state["status"] in ("completed", "failed") else None


def test_sdk_cancel_sync_and_async(canceling: Server) -> None:
    account = canceling.new_account(1000)
    with Client(api_key=account.key, base_url=canceling.base_url) as client:
        video = client.videos.generate([f"one {SLOW}", f"two {SLOW}"])
        assert video.id is not None
        first = video.shots[0].shotId
        done = client.cancel(video.id, shot_ids=[first])
        assert done.creditsRefunded == SHOT_CREDITS and done.status == "processing"
        assert done.shots is not None and done.shots[0].error == "Canceled"
        with pytest.raises(errors.AlreadyEnded):
            client.cancel(video.id, shot_ids=[first])

    async def rest() -> None:
        async with AsyncClient(api_key=account.key, base_url=canceling.base_url) as client:
            assert video.id is not None
            done = await client.cancel(video.id)
            assert done.creditsRefunded == SHOT_CREDITS and done.status == "failed"
            with pytest.raises(errors.NotFound):
                await client.cancel("gen_nope")

    asyncio.run(rest())
    assert account.balance() == 1000


def test_cli_cancel(canceling: Server) -> None:
    account = canceling.new_account(1000)
    with account.client() as c:
        accepted = _video(c, [f"a {SLOW}", f"b {SLOW}"])
    generation_id = accepted["generationId"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGEN_")}
    env |= {"NANOGEN_API_KEY": account.key, "NANOGEN_BASE_URL": canceling.base_url}
    result = nanogen_cli("cancel", generation_id, "--shot", "s0", env=env)
    assert result.returncode == 0, result.stderr
    assert "1 task canceled, 10 credits refunded" in result.stdout
    assert "Canceled" in result.stdout
    result = nanogen_cli("cancel", generation_id, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["creditsRefunded"] == SHOT_CREDITS
    result = nanogen_cli("cancel", generation_id, env=env)
    assert result.returncode == 2 and "ALREADY_ENDED" in result.stderr
    assert account.balance() == 1000


def _running_tasks(server: Server, account: Account, generation_id: str) -> int:
    """Tasks whose engine job has started (status generating, an attempt counted)."""
    with server.db() as db:
        row = db.execute(
            "SELECT COUNT(*) FROM nanogen_tasks WHERE generation_id=? AND status='generating' AND attempts>0",
            (generation_id,),
        ).fetchone()
    return int(row[0])


def test_a_cancel_in_the_api_process_stops_jobs_in_a_worker_process(tmp_path: Path) -> None:
    """The API process runs nothing; the worker (4 threads) runs 4 slow shots. After the cancel, the
    worker's watchdog stops them, so 4 new shots all run there."""
    with postgres_database("cancel_split") as url:
        server = Server(tmp_path, database_url=url, args=("--no-worker",)).start()
        worker: subprocess.Popen[bytes] | None = None
        try:
            env = server.env | {
                "NANOGEN_EXECUTOR_ID": "test-worker",
                "NANOGEN_MAX_EXECUTOR_THREADS": "4",
                "NANOGEN_VIDEO_CONCURRENCY": "4",
            }
            with open(tmp_path / "worker.log", "ab") as log:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "nanogen", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            account = server.new_account(1000)
            with account.client() as c:
                first = _video(c, [f"held {i} {SLOW}" for i in range(4)])["generationId"]
                wait_for(lambda: _running_tasks(server, account, first) == 4)
                answer = _cancel(c, first).json()
                assert answer["creditsRefunded"] == 4 * SHOT_CREDITS and answer["status"] == "failed"
                second = _video(c, [f"next {i} {SLOW}" for i in range(4)])["generationId"]
                # Only if the worker stopped the canceled jobs are its 4 threads free for these.
                wait_for(lambda: _running_tasks(server, account, second) == 4, JOBS_SETTLE_S)
                assert _cancel(c, second).json()["creditsRefunded"] == 4 * SHOT_CREDITS
            assert account.balance() == 1000
            account.assert_books_balance()
        finally:
            # Killed: on SIGTERM the worker stops its watchdog first, then waits for the jobs canceled
            # since its last sweep to end by themselves.
            if worker is not None:
                worker.kill()
                worker.wait(timeout=30)
            server.stop()


def test_a_cancel_rolled_back_by_a_deadlock_runs_again(tmp_path: Path) -> None:
    """PostgreSQL: a cancel that loses a deadlock (here against a transaction of the test's own that
    holds the generation's row and then writes the task's) is run again, and answers as if it had
    come second (409 ALREADY_ENDED: the task completed meanwhile), never 503.

    The server's sessions detect deadlocks after 2 s, the test's after 60 s: the cycle is complete
    long before the server's check, so the server's transaction is the one PostgreSQL rolls back."""
    with postgres_database("cancel_deadlock") as url:
        database = url.rsplit("/", 1)[1]
        with postgres_admin() as admin:
            admin.execute(f"ALTER DATABASE \"{database}\" SET deadlock_timeout = '2s'")
        server = Server(tmp_path, extra_env={"NANOGEN_WATCHDOG_INTERVAL_S": "3600"}, database_url=url)
        server.start()
        try:
            account = server.new_account(100)
            with account.client() as c:
                accepted = c.post(f"{IMAGE}/generate", json={"prompt": f"held {SLOW}", "imageQuality": "1K"})
                assert accepted.status_code == 200, accepted.text
                generation_id, task_id = accepted.json()["generationId"], accepted.json()["taskId"]
                wait_for(lambda: _image_status(c, generation_id)["status"] == "generating")
                plain = url.replace("postgresql+psycopg://", "postgresql://")
                with psycopg.connect(plain) as mine, ThreadPoolExecutor(1) as pool:
                    mine.execute("SET deadlock_timeout = '60s'")
                    mine.execute(
                        "SELECT 1 FROM nanogen_generations WHERE id = %s FOR UPDATE", (generation_id,)
                    )
                    answer = pool.submit(_cancel, c, generation_id)
                    # The cancel has failed the task and refunded it, and waits for the generation's row.
                    wait_for(lambda: _waiting_for_a_lock(mine, "nanogen_generations"))
                    mine.execute(
                        "UPDATE nanogen_tasks SET status = 'completed', progress = 100, finished_at = 1,"
                        " output_url = 'http://127.0.0.1/x.png' WHERE id = %s",
                        (task_id,),
                    )
                    mine.commit()
                    r = answer.result(timeout=60)
            assert_envelope(r, 409, "ALREADY_ENDED")
            assert account.balance() == 100 - IMAGE_CREDITS, "the task completed: nothing refunded"
            assert _refunds(account) == {}
            assert "rolled back by a conflict" in server.log_tail()
        finally:
            server.stop()


def _waiting_for_a_lock(mine: psycopg.Connection[Any], query_part: str) -> bool:
    """Another session of the database waits for a row lock while running a query naming ``query_part``."""
    with psycopg.connect(mine.info.dsn, autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> %s AND query LIKE %s",
            (mine.info.backend_pid, f"%{query_part}%"),
        ).fetchone()
    return bool(row and row[0])
