"""A worker's queue pollers are woken by what the process enqueues and by its workflows' ends
(tasks/wakeups.py): with the idle wait set far past every wait of these tests, an image, a slot
freed for queued work, a concatenation and a webhook delivery each happen only if the wake-up that
announces them works."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from dbos._core import ActiveWorkflowById

from nanogen.settings import Settings
from nanogen.tasks import lifecycle, wakeups
from tests.conftest import OUTCOME_WAIT_S, Server, wait_for
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


def test_the_idle_wait_is_the_setting_else_one_second_where_submissions_arrive() -> None:
    assert lifecycle.idle_polling_s(Settings(), "serve") == lifecycle.SERVE_IDLE_POLLING_S == 1.0
    assert lifecycle.idle_polling_s(Settings(), "worker") == 0.0  # a worker's work is enqueued elsewhere
    configured = Settings(queue_idle_polling_interval_s=5)
    assert lifecycle.idle_polling_s(configured, "worker") == 5
    assert lifecycle.idle_polling_s(configured, "serve") == 5


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
