"""A worker's queue pollers are woken by what the process enqueues and by its workflows' ends
(tasks/wakeups.py), and on PostgreSQL by what other processes enqueue (tasks/pg_wakeups.py): with
the idle wait set far past every wait of these tests, an image, a slot freed for queued work, a
concatenation and a webhook delivery each happen only if the wake-up that announces them works."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from dbos._core import ActiveWorkflowById

from nanogen.db import make_engine, write_transaction
from nanogen.migrate import migrate
from nanogen.tasks import pg_wakeups, wakeups
from tests.conftest import OUTCOME_WAIT_S, Server, wait_for
from tests.databases import PG_ADMIN_URL, postgres_database
from tests.faults.cluster import Worker
from tests.server.webhook_receiver import Receiver

# Longer than any wait below: what these tests see happen was woken, not found by an idle poll.
IDLE_S = OUTCOME_WAIT_S * 10


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("wakeups"),
        extra_env={
            "NANOGEN_QUEUE_IDLE_POLLING_INTERVAL_S": str(IDLE_S),
            "NANOGEN_IMAGE_CONCURRENCY": "1",  # a burst of images waits for slots
            "NANOGEN_SANDBOX_LATENCY_S": "0.2",
        },
    ).start()
    yield server
    server.stop()


def _post(c: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _image(c: httpx.Client, prompt: str, **extra: Any) -> str:
    body = {"prompt": prompt, "imageQuality": "1K", **extra}
    return str(_post(c, "/api/nano-banana-2/generate", body)["generationId"])


def _ended(c: httpx.Client, product: str, generation_id: str) -> dict[str, Any] | None:
    body = _post(c, f"/api/{product}/check-status", {"generationId": generation_id})
    return body if body["status"] in ("completed", "failed") else None


def test_a_burst_of_images_runs_through_one_slot_each_end_waking_the_queue(sleepy: Server) -> None:
    account = sleepy.new_account(100)
    with account.client() as c:
        generations = [_image(c, f"picture {i}") for i in range(4)]
        finals = [wait_for(lambda g=g: _ended(c, "nano-banana-2", g)) for g in generations]
    assert [f["status"] for f in finals] == ["completed"] * 4, finals
    assert account.balance() == 100 - 4 * 4


def test_a_video_is_joined_and_its_webhook_delivered_when_their_queues_are_woken(sleepy: Server) -> None:
    receiver = Receiver(hang_s=0)
    try:
        url = receiver.url()
        account = sleepy.new_account(100)
        shots = [{"id": f"s{i}", "prompt": p, "generationType": "TEXT_2_VIDEO"} for i, p in enumerate("ab")]
        with account.client() as c:
            answer = _post(c, "/api/veo-3/generate", {"shots": shots, "webhookUrl": url})
            generation_id = answer["generationId"]
            final = wait_for(lambda: _ended(c, "veo-3", generation_id))
            assert final["status"] == "completed" and final["concatenatedVideoUrl"], final  # the join ran
            [delivery] = wait_for(lambda: receiver.at(url))  # the webhook queue ran the delivery
        assert delivery.event()["data"]["generationId"] == generation_id
    finally:
        receiver.close()


def test_a_stopping_worker_does_not_wait_out_its_idle_pollers(tmp_path: Any) -> None:
    server = Server(tmp_path, extra_env={"NANOGEN_QUEUE_IDLE_POLLING_INTERVAL_S": str(IDLE_S)}).start()
    assert server.process is not None
    with server.new_account(100).client() as c:  # the image queue's poller has started, then waits
        generation_id = _image(c, "one picture")
        assert wait_for(lambda: _ended(c, "nano-banana-2", generation_id))["status"] == "completed"
    server.process.send_signal(signal.SIGTERM)
    try:
        # uvicorn ends a clean stop by raising the signal it caught again.
        assert server.process.wait(timeout=120) in (0, -signal.SIGTERM), server.log_tail()
    except subprocess.TimeoutExpired:
        server.kill()
        raise
    # DBOS joins its queue thread for 10 s, which joins each poller: a poller still waiting for work
    # would leave it running past that, and DBOS says so.
    assert "did not exit within timeout" not in server.log_tail()


def test_a_waiting_poller_returns_at_a_wake_up_and_at_the_stop_not_at_its_idle_wait() -> None:
    wakes = wakeups.QueueWakeups(idle_s=IDLE_S)
    wakes.wake("nanogen.image.sandbox")  # before its poller started: kept
    stop = threading.Event()
    waiter = wakes.waiter(stop, "nanogen.image.sandbox")
    assert waiter.wait(0.01) is False  # a new poller polls at once
    results: list[bool] = []

    def poller() -> None:
        for _ in range(2):
            results.append(waiter.wait(0.01))

    thread = threading.Thread(target=poller)
    thread.start()
    wakes.wake("nanogen.image.other")  # another queue's wake-up leaves this one waiting
    time.sleep(0.2)
    assert thread.is_alive() and results == []
    wakes.wake("nanogen.image.sandbox")
    wait_for(lambda: len(results) == 1, timeout=60, interval=0.01)
    assert results == [False]  # woken to poll, not stopped
    stop.set()
    wakes.wake_all()
    thread.join(timeout=60)
    assert results == [False, True]


def test_a_held_queue_s_poll_waits_out_the_hold_never_past_max_hold_and_not_past_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tasks/early.py holds the image queue while a burst's calls are begun at acceptance."""
    queue = "nanogen.image.google"
    wakes = wakeups.QueueWakeups(idle_s=IDLE_S)
    stop = threading.Event()
    waiter = wakes.waiter(stop, queue)  # a new poller's wake-up is set: only the hold delays it
    started = time.monotonic()  # before the hold, whose 0.3 s count from its own call
    wakes.hold(queue, 0.3)
    assert waiter.wait(0.0) is False
    assert time.monotonic() - started >= 0.3, "held until the hold ended"

    monkeypatch.setattr(wakeups, "MAX_HOLD_S", 0.2)
    wakes.hold(queue, IDLE_S)  # a stream of holds: one poll waits at most MAX_HOLD_S for them
    wakes.wake(queue)
    started = time.monotonic()
    assert waiter.wait(0.0) is False
    assert 0.2 <= time.monotonic() - started < IDLE_S

    monkeypatch.setattr(wakeups, "MAX_HOLD_S", IDLE_S)
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(waiter.wait(0.0)))
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive() and results == []
    stop.set()
    thread.join(timeout=60)
    assert results == [True], "a stopping process does not wait out a hold"


def test_a_workflow_s_end_wakes_its_queue_and_only_its_own() -> None:
    woken: list[str] = []
    active: ActiveWorkflowById = wakeups._ReleasingActiveWorkflows(woken.append)
    entry = active.add("wf-1", "nanogen.video.sandbox")
    unqueued = active.add("wf-2")
    assert active.count_for_queue("nanogen.video.sandbox") == 1
    entry.release()
    entry.release()  # DBOS may release twice (before a park and in a finally): counted once
    unqueued.release()
    assert woken == ["nanogen.video.sandbox"]
    assert active.activeList() == []


def _listeners(url: str) -> list[int]:
    """The backends of the database at ``url`` that listen for queue wake-ups."""
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (database, pg_wakeups.APPLICATION_NAME),
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def test_a_worker_runs_what_an_api_process_accepted_woken_over_postgres(tmp_path: Path) -> None:
    """The API process's enqueues NOTIFY; the worker, idle far past the test, LISTENs and starts them."""
    with postgres_database("wakeups") as url:
        api = Server(tmp_path, database_url=url, args=("--no-worker",)).start()
        idle = {"NANOGEN_QUEUE_IDLE_POLLING_INTERVAL_S": str(IDLE_S), "NANOGEN_SANDBOX_LATENCY_S": "0.2"}
        worker = Worker(api, "test-wakeups-worker", extra_env=idle)
        try:
            assert _listeners(url) == [], "an API process runs no queue, so it listens for none"
            worker.start()
            wait_for(lambda: _listeners(url))
            account = api.new_account(100)
            shots = [{"id": s, "prompt": s, "generationType": "TEXT_2_VIDEO"} for s in ("one", "two")]
            with account.client() as c:
                # A worker's pollers start within a second of its launch and look at once: the first
                # image may be found that way. Once it has run, and the polls that its end woke are
                # long done, the pollers wait (a busy machine could only make this test pass unfairly).
                first = _image(c, "a first picture")
                assert wait_for(lambda: _ended(c, "nano-banana-2", first))["status"] == "completed"
                time.sleep(2)
                image = _image(c, "a picture from another process")
                video = _post(c, "/api/veo-3/generate", {"shots": shots})["generationId"]
                assert wait_for(lambda: _ended(c, "nano-banana-2", image))["status"] == "completed"
                final = wait_for(lambda: _ended(c, "veo-3", video))
                assert final["status"] == "completed" and final["concatenatedVideoUrl"], final
                assert account.balance() == 100 - 2 * 4 - 20
        finally:
            worker.stop()
            api.stop()
        assert "Traceback" not in worker.log_path.read_text()


class _Heard:
    def __init__(self) -> None:
        self.queues: list[str] = []
        self.connects = 0

    def wake(self, queues: Iterable[str]) -> None:
        self.queues.extend(queues)

    def wake_all(self) -> None:
        self.connects += 1


def test_notices_arrive_when_the_enqueue_commits_and_after_the_listener_reconnects(tmp_path: Path) -> None:
    with postgres_database("notices") as url:
        migrate(url)
        engine = make_engine(url)
        heard = _Heard()
        listener = pg_wakeups.Listener(url, heard.wake, heard.wake_all)
        listener.start()
        try:
            wait_for(lambda: heard.connects == 1 and _listeners(url))
            with pytest.raises(RuntimeError), write_transaction(engine) as conn:
                pg_wakeups.notify(conn, {"nanogen.image.sandbox"})
                raise RuntimeError("the enqueue failed")  # rolled back: never announced
            with write_transaction(engine) as conn:
                pg_wakeups.notify(conn, {"nanogen.video.sandbox", "nanogen.media"})
            wait_for(lambda: heard.queues)
            assert sorted(heard.queues) == ["nanogen.media", "nanogen.video.sandbox"]
            # The listening connection cut: it reconnects, and wakes every poller for what it missed.
            [before] = _listeners(url)
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (before,))
            wait_for(lambda: heard.connects == 2 and (now := _listeners(url)) and now != [before])
            with write_transaction(engine) as conn:
                pg_wakeups.notify(conn, {"nanogen.image.sandbox"})
            wait_for(lambda: "nanogen.image.sandbox" in heard.queues)
        finally:
            listener.stop()
            engine.dispose()
        assert _listeners(url) == [], "a stopped listener leaves no connection"
