"""lifecycle.start_threads_ahead: a worker's DBOS thread pool is started before a burst needs it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from nanogen.tasks import lifecycle


def pool_threads(prefix: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix))


def test_every_thread_is_started_and_then_free() -> None:
    with ThreadPoolExecutor(max_workers=40, thread_name_prefix="ahead-all") as executor:
        lifecycle.start_threads_ahead(executor, 40).join(timeout=30)
        assert pool_threads("ahead-all") == 40
        # All free again: 40 jobs that wait for each other all run at once.
        barrier = threading.Barrier(40)
        results = [executor.submit(barrier.wait, 30) for _ in range(40)]
        assert sorted(f.result(timeout=30) for f in results) == list(range(40))


def test_work_runs_while_threads_start_and_busy_threads_count() -> None:
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="ahead-busy") as executor:
        busy = executor.submit(release.wait, 30)  # a workflow recovered at launch, running for long
        warm = lifecycle.start_threads_ahead(executor, 8)
        # No job holds the new threads: work that arrives during the warm-up runs at once.
        assert executor.submit(lambda: "ran").result(timeout=30) == "ran"
        warm.join(timeout=30)
        assert not warm.is_alive()
        assert pool_threads("ahead-busy") == 8
        # The 7 threads besides the busy one are all free: 7 jobs that wait for each other run at once.
        barrier = threading.Barrier(7)
        results = [executor.submit(barrier.wait, 30) for _ in range(7)]
        assert sorted(f.result(timeout=30) for f in results) == list(range(7))
        release.set()
        assert busy.result(timeout=30) is True


def test_never_more_than_the_pool_allows_nor_after_shutdown() -> None:
    with ThreadPoolExecutor(max_workers=5, thread_name_prefix="ahead-cap") as executor:
        lifecycle.start_threads_ahead(executor, 50).join(timeout=30)
        assert pool_threads("ahead-cap") == 5
    stopped = ThreadPoolExecutor(max_workers=5, thread_name_prefix="ahead-stopped")
    stopped.shutdown()
    lifecycle.start_threads_ahead(stopped, 5).join(timeout=30)
    assert pool_threads("ahead-stopped") == 0


def test_an_exiting_interpreter_ends_the_warm_up_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exiting(ThreadPoolExecutor):
        def _adjust_thread_count(self) -> None:
            raise RuntimeError("can't create new thread at interpreter shutdown")

    uncaught: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(args.exc_value))
    with Exiting(max_workers=4, thread_name_prefix="ahead-exiting") as executor:
        warm = lifecycle.start_threads_ahead(executor, 4)
        warm.join(timeout=30)
        assert not warm.is_alive()
        assert pool_threads("ahead-exiting") == 0
    assert uncaught == []
