"""The Google engine's behaviour under load, each piece on its own: the defaults that size a worker
from its engine, the quota gate that makes calls wait their turn (in memory and in Redis), and the
poll schedule. End-to-end figures at load are measured by bench/bench_google.py, not asserted here."""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from nanogen.engines.base import Job, JobStopped
from nanogen.engines.google.polling import PollSchedule
from nanogen.engines.google.quota import CallGate
from nanogen.products import MAX_SHOTS, Product
from nanogen.settings import Settings
from nanogen.tasks.lifecycle import (
    SPARE_EXECUTOR_THREADS,
    build_runtime,
    executor_threads,
    worker_queues,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def google_settings(home: Path, **values: object) -> Settings:
    return Settings(
        home=home,
        engine_images="google",
        engine_videos="google",
        google_api_key="AIzaSy-test-key",
        google_base_url="http://127.0.0.1:9",  # never called: nothing here reaches Google
        **values,
    )


def queues_of(settings: Settings) -> dict[Product, tuple[int, int | None, float]]:
    rt = build_runtime(settings)
    try:
        queues = worker_queues(rt)
        return {
            product: (q.concurrency, q.account_concurrency, q.polling_interval_s)
            for product in Product
            for name, q in queues.items()
            if name == rt.queue_for(product)
        }
    finally:
        rt.db.dispose()


def test_a_google_worker_is_sized_for_thousands_of_waiting_jobs(tmp_path: Path) -> None:
    settings = google_settings(tmp_path)
    found = queues_of(settings)
    assert found[Product.IMAGE][0] + found[Product.VIDEO][0] >= 2000, "2,000 provider operations in flight"
    for _concurrency, account_cap, _polling in found.values():
        assert account_cap is None, "by default an account may use what the workers run"
    # Images every 0.1 s (a poll starts the tens of calls that came meanwhile, not hundreds at once),
    # shots, which take minutes, every 0.5 s: neither 20 times a second like the sandbox's.
    assert (found[Product.IMAGE][2], found[Product.VIDEO][2]) == (0.1, 0.5)
    rt = build_runtime(settings)
    try:
        queues = worker_queues(rt)
    finally:
        rt.db.dispose()
    threads = executor_threads(settings, queues)
    assert threads == sum(q.concurrency for q in queues.values()) + SPARE_EXECUTOR_THREADS
    assert executor_threads(google_settings(tmp_path, max_executor_threads=64), queues) == 64


def test_the_account_cap_never_splits_a_video_request(tmp_path: Path) -> None:
    found = queues_of(google_settings(tmp_path, account_concurrency=2))
    assert found[Product.IMAGE][1] == 2
    assert found[Product.VIDEO][1] == MAX_SHOTS, "a 21-shot request's shots all fit under the cap"
    sandbox = queues_of(Settings(home=tmp_path / "sandbox"))
    assert sandbox[Product.IMAGE] == (32, None, 0.05), "the sandbox keeps its quick image queue"


def job(deadline_in: float) -> Job:
    return Job(deadline=time.time() + deadline_in)


def test_a_call_over_the_rate_waits_its_turn_until_its_deadline() -> None:
    gate = CallGate("video submission", "2/minute")
    gate.admit(job(60))
    gate.admit(job(60))
    with pytest.raises(JobStopped, match="deadline"):
        gate.admit(job(0.3))  # the window is full for a minute: it waits, and its deadline comes first
    stopped = Job(deadline=math.inf)
    threading.Timer(0.2, stopped.stop.set).start()
    with pytest.raises(JobStopped, match="stopped"):
        gate.admit(stopped)  # a canceled task stops waiting at once
    assert CallGate("video submission").rate is None, "no rate by default: nothing waits"


def test_one_429_pauses_every_call_of_its_kind() -> None:
    gate = CallGate("image generation")
    gate.admit(job(1))
    gate.pause(30)
    with pytest.raises(JobStopped, match="deadline"):
        gate.admit(job(0.3))
    gate.pause(1)  # a shorter pause never shortens a longer one
    with pytest.raises(JobStopped, match="deadline"):
        gate.admit(job(1.5))
    CallGate("video submission").admit(job(1))  # other kinds are not paused


def test_the_rate_is_shared_by_every_worker_through_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    first = CallGate("video submission", "3/minute", REDIS_URL, prefix)
    second = CallGate("video submission", "3/minute", REDIS_URL, prefix)  # another worker process
    first.admit(job(5))
    second.admit(job(5))
    first.admit(job(5))
    with pytest.raises(JobStopped, match="deadline"):
        second.admit(job(0.3))
    other_project = CallGate("video submission", "3/minute", REDIS_URL, f"{prefix}-other")
    other_project.admit(job(5))


def test_polls_begin_near_the_time_operations_take() -> None:
    schedule = PollSchedule(interval_s=10)
    assert 18 <= schedule.delay(0, first=True) <= 22, "nothing finished yet: twice the interval"
    assert 9 <= schedule.delay(20) <= 11, "then every interval"
    assert schedule.delay(45, first=True) == 0, "a recovered operation past the first poll: now"
    ages = [58, 60, 60, 60, 61, 60, 59, 62, 61, 60]  # operations that take about a minute
    for age in ages:
        schedule.finished(age)
    low, high = statistics.quantiles(ages, n=10, method="inclusive")[::8]
    opens = 0.9 * low
    assert 30 * 0.9 <= schedule.delay(0, first=True) <= 30 * 1.1, "young: three intervals at most at a time"
    assert 0.9 * (opens - 40) <= schedule.delay(40) <= 1.1 * (opens - 40), "then the window opens"
    assert 1.8 <= schedule.delay(opens + 1) <= 2.2, "inside it: every fifth of an interval"
    assert 1.8 <= schedule.delay(high + 1) <= 2.2, "until just past the 90th percentile"
    assert 9 <= schedule.delay(high + 3) <= 11, "then every interval again"

    varied = PollSchedule(interval_s=10)
    spread = [30, 45, 60, 90, 120, 150, 180, 240, 300, 360]  # nothing to learn from: Google's pace
    for age in spread:
        varied.finished(age)
    low, high = statistics.quantiles(spread, n=10, method="inclusive")[::8]
    assert 9 <= varied.delay((low + high) / 2) <= 11, "at most ten polls across a wide window"


def test_before_any_window_a_large_wave_polls_once_a_second_between_its_operations() -> None:
    schedule = PollSchedule(interval_s=10)
    with contextlib.ExitStack() as stack:
        for _ in range(1000):
            stack.enter_context(schedule.awaiting())
        firsts = [schedule.delay(0, first=True) for _ in range(2000)]
        nexts = [schedule.delay(40) for _ in range(2000)]
    # 1,000 operations each every 30 s on average (three intervals, the most): about 33 polls a second
    # between them, spread evenly instead of in step.
    assert min(firsts) >= 15 and max(firsts) <= 45 and 28 <= statistics.mean(firsts) <= 32
    assert min(nexts) >= 15 and max(nexts) <= 45 and 28 <= statistics.mean(nexts) <= 32
    assert sum(1 for d in firsts if d < 25) >= 400, "spread over the whole spacing, not in step"
    assert schedule.delay(50, first=True) == 0, "a recovered operation past the first poll: now"
    assert 18 <= schedule.delay(0, first=True) <= 22, "the wave ended: back to Google's pace"
    with schedule.awaiting():
        assert 9 <= schedule.delay(40) <= 11, "one awaited: every interval"


def test_a_wave_waiting_before_any_window_polls_once_the_first_operations_finish() -> None:
    schedule = PollSchedule(interval_s=1)
    submitted = time.monotonic() - 60  # an operation a minute old, due for its next poll in 60 s
    job = Job(deadline=time.time() + 600)
    waited: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        schedule.wait(job, 60, lambda: time.monotonic() - submitted)
        waited.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait)
    waiter.start()
    schedule.finished(59)  # another operation of the wave, seen done at about its age
    waiter.join(timeout=45)
    assert not waiter.is_alive() and waited[0] < 45, "polled now, not after the 60 s it was told"

    plain = PollSchedule(interval_s=1)
    started = time.monotonic()
    plain.wait(job, 0.5, lambda: 0.0)
    assert time.monotonic() - started >= 0.5, "nothing learned: the wait is the one it was given"

    stopped = Job(deadline=time.time() + 600)
    stopped.stop.set()
    with pytest.raises(JobStopped, match="task ended"):
        schedule.wait(stopped, 60, lambda: 0.0)


def test_a_nudge_wakes_a_waiting_job_without_stopping_it() -> None:
    job = Job(deadline=time.time() + 600)
    woke: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        job.wait(60)
        woke.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait)
    waiter.start()
    give_up = time.monotonic() + 30
    while waiter.is_alive() and time.monotonic() < give_up:  # a nudge before the wait wakes nobody
        job.stop.nudge()
        waiter.join(0.05)
    assert woke and woke[0] < 30, "woken long before its 60 s"
    assert not job.stop.is_set(), "a nudge is not a stop"
    job.wait(0.01)  # and the job goes on
    job.stop.set()
    with pytest.raises(JobStopped, match="task ended"):
        job.wait(60)
